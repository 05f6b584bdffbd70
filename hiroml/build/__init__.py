"""The build: a datamart's zips into a versioned dataset (shards, manifest, report).

One job per module: :mod:`~hiroml.build.tasks` plans conversion tasks and keeps their
records, :mod:`~hiroml.build.convert` converts one task in a worker,
:mod:`~hiroml.build.driver` orchestrates the stages under the output's lock,
:mod:`~hiroml.build.groups` links patient groups and assigns splits,
:mod:`~hiroml.build.samples` assembles the manifest, :mod:`~hiroml.build.audit` makes the
driver's audit rows, :mod:`~hiroml.build.publish` publishes the version,
:mod:`~hiroml.build.summary` reports what a build did and :mod:`~hiroml.build.demo` makes the
synthetic demo datamart. ``hiroml-build`` calls :func:`run`.
"""

from __future__ import annotations

from typing import Any

from hiroml.build.summary import BuildSummary
from hiroml.errors import BuildError

__all__ = ["BuildError", "BuildSummary", "execute", "run"]


def __getattr__(name: str) -> Any:
    # The driver (pandas, pydicom, OpenCV) is imported on first use: a re-run with nothing new
    # (hiroml.build.unchanged) answers without it.
    if name in ("execute", "run"):
        from hiroml.build import driver

        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
