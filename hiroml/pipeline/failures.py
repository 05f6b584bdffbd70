"""Failures a build found that no published version shows.

A build whose dataset equals the latest version's publishes nothing, so that version's
``audit.csv`` and report stay as they were. The zips that failed in such a build (a batch of
truncated downloads adds no sample) would then be recorded nowhere. So every build writes its
whole audit to ``<output>/.hiroml/audit-latest-build.csv`` (same columns and escaping as
``audit.csv``), and its summary counts the *new* failed zips: zips with an ``error`` row in
this build that have none in the previous latest version's ``audit.csv``. When a version is
published its own ``audit.csv`` holds the same rows; when none is, the record is the place
to look, and the summary names it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hiroml.store.atomic import copy_atomic, write_atomic
from hiroml.store.csvcells import escape_frame
from hiroml.store.reader import read_audit
from hiroml.vocab import AUDIT, SEQUESTERED_DIR, STATE_DIR, Action

#: the audit of the output's latest build, under ``<output>/.hiroml/``
LATEST_BUILD_AUDIT = "audit-latest-build.csv"


def failed_zips(audit: pd.DataFrame) -> set[tuple[str, str]]:
    """``(batch, zip)`` of the zips with at least one ``error`` row in ``audit``."""
    if not len(audit) or "action" not in audit.columns:
        return set()
    errors = audit[audit["action"].astype(str) == Action.ERROR]
    return {(str(b), str(z)) for b, z in zip(errors["batch"], errors["zip"], strict=True) if z}


def previous_failed_zips(out: Path) -> set[tuple[str, str]]:
    """The failed zips of the latest version's root ``audit.csv`` (none without one), and of
    the sequestered folder's where the test split is sequestered (``splits.sequester``)."""
    failed: set[tuple[str, str]] = set()
    for folder in (Path(out), Path(out) / SEQUESTERED_DIR):
        if (folder / AUDIT).is_file():
            failed |= failed_zips(read_audit(folder))
    return failed


def record(
    out: Path, audit: pd.DataFrame, before: set[tuple[str, str]], written: Path | None = None
) -> tuple[int, str]:
    """Write ``audit`` as the latest build's audit record; return how many zips failed that
    had not failed in ``before``, and the record's path. ``written``: an ``audit.csv`` this
    build wrote from the same ``audit`` (the version it published), copied byte for byte
    instead of written again."""
    path = Path(out) / STATE_DIR / LATEST_BUILD_AUDIT
    path.parent.mkdir(parents=True, exist_ok=True)
    if written is not None:
        copy_atomic(written, path)
    else:
        safe = escape_frame(audit)  # no cell a spreadsheet would run as a formula
        write_atomic(path, lambda tmp: safe.to_csv(tmp, index=False))
    return len(failed_zips(audit) - before), str(path)
