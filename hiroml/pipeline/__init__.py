"""The build: a datamart's zips into a versioned dataset (shards, manifest, report).

One job per module: :mod:`~hiroml.pipeline.tasks` plans conversion tasks and keeps their
records, :mod:`~hiroml.pipeline.worker` converts one task in a worker,
:mod:`~hiroml.pipeline.driver` orchestrates the stages under the output's lock,
:mod:`~hiroml.exams.groups` links patient groups and assigns splits,
:mod:`~hiroml.pipeline.samples` assembles the manifest, :mod:`~hiroml.pipeline.audit` makes the
driver's audit rows, :mod:`~hiroml.pipeline.publish` publishes the version,
:mod:`~hiroml.pipeline.summary` reports what a build did and :mod:`~hiroml.pipeline.demo` makes the
synthetic demo datamart. ``hiroml-build`` calls :func:`run`.
"""

from __future__ import annotations

from typing import Any

from hiroml.errors import BuildError
from hiroml.pipeline.summary import BuildSummary

__all__ = ["BuildError", "BuildSummary", "execute", "run"]


def __getattr__(name: str) -> Any:
    # The driver (pandas, pydicom, OpenCV) is imported on first use: a re-run with nothing new
    # (hiroml.pipeline.unchanged) answers without it.
    if name in ("execute", "run"):
        from hiroml.pipeline import driver

        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
