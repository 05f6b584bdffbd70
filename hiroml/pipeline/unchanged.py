"""Re-runs with nothing new: a build whose inputs are those of the build that made
the output's latest version answers at once, without indexing, converting or hashing again.

After every successful build, :func:`remember` writes ``<output>/.hiroml/inputs.json``: a
fingerprint of everything the build's result depends on, taken when the build listed its
inputs (an input edited while the build runs is new to the next run), and the size and
modification time of every file of the output it left (root tables and shards). The next
build compares (:func:`previous_build`) before it reads anything. The fingerprint covers:

- the hiroml version, and the versions of the libraries that decide stored values
  (:func:`hiroml.doctor.libraries.environment`, read from the package metadata): a new environment
  builds once, so the self-check runs and the result is compared with the latest version's;
- the resolved configuration, except the keys that cannot change the result
  (``progress``, ``wait_for_lock``, ``skip_unchanged``, ``executor.kind``,
  ``executor.workers``, ``executor.scheduler``, ``paths.index_db``, ``paths.output``,
  ``doctor.enabled``);
- every batch folder discovery listed, with its status, and every exam zip in it, with its
  size and modification time (nanoseconds), and each problem discovery found;
- the remap sheet, the clinical table and ``splits.test_list``: size and modification time,
  or their absence.

Any difference, a latest version other than the recorded one, or an output file whose size
or time changed, and the build runs as always. ``skip_unchanged=false`` always runs it (for
example after editing a file in place while keeping its size and time, which the
fingerprint cannot see: ``hiroml-verify`` checks the shards' checksums).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from hiroml._version import __version__
from hiroml.config import BuildConfig
from hiroml.doctor.libraries import environment
from hiroml.ingest.discover import REMAP_SHEET_NAME, Discovery
from hiroml.pipeline.summary import BuildSummary, jsonable_summary, now
from hiroml.store.atomic import write_text_atomic
from hiroml.vocab import AUDIT, MANIFEST, PATIENTS, SPLITS, STATE_DIR, VERSIONS_DIR

log = logging.getLogger(__name__)

RECORD = "inputs.json"
_FORMAT = 1
#: a version folder's name (hiroml.versions, which this light module does not import)
_VERSION_NAME = re.compile(r"^(\d{4,})-[0-9a-f]{8}$")
#: the root files a build leaves, besides the shards the manifest names
_ROOT_FILES = (MANIFEST, PATIENTS, AUDIT)
#: configuration keys that change how a build runs, never what it makes
_NOT_IN_RESULT = {
    "": ("progress", "wait_for_lock", "skip_unchanged"),
    "executor": ("kind", "workers", "scheduler"),
    "runtime": ("malloc", "fault"),
    "paths": ("index_db", "output"),
    "doctor": ("enabled",),
}


def record_path(out: Path) -> Path:
    """Where an output folder keeps the fingerprint of its last build."""
    return out / STATE_DIR / RECORD


def _stat(path: str | os.PathLike[str] | None) -> list[Any]:
    """[size, mtime_ns] of a file, or [None] when there is none (or no path)."""
    if not path:
        return [None]
    try:
        st = os.stat(path)
    except OSError:
        return [None]
    return [st.st_size, st.st_mtime_ns]


def _config(cfg: BuildConfig) -> dict[str, Any]:
    conf = dataclasses.asdict(cfg)
    for section, keys in _NOT_IN_RESULT.items():
        part = conf[section] if section else conf
        for key in keys:
            part.pop(key, None)
    return conf


def fingerprint(cfg: BuildConfig, root: Path, found: Discovery) -> str:
    """The SHA-256 of everything a build's result depends on (see the module docstring)."""
    sheet = cfg.paths.remap_sheet or found.remap_sheet or str(root / REMAP_SHEET_NAME)
    parts = {
        "format": _FORMAT,
        "hiroml": __version__,
        "environment": environment(),
        "config": _config(cfg),
        "root": str(root.resolve()),
        "batches": [[b.name, b.status] for b in found.batches],
        "zips": [[z.rel_path, z.size, z.mtime_ns] for z in found.zips],
        "problems": [repr(p) for p in found.problems],
        "remap_sheet": [sheet, *_stat(sheet)],
        "clinical": [cfg.paths.clinical, *_stat(cfg.paths.clinical)],
        "test_list": [cfg.splits.test_list, *_stat(cfg.splits.test_list)],
    }
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _newest_version(out: Path) -> str | None:
    """The name of the newest version folder (by sequence number), or None."""
    try:
        names = [e.name for e in os.scandir(out / VERSIONS_DIR) if e.is_dir()]
    except OSError:
        return None
    seq = {n: int(m.group(1)) for n in names if (m := _VERSION_NAME.match(n))}
    return max(seq, key=lambda n: (seq[n], n)) if seq else None


def _output_files(out: Path, version: str, shards: set[str]) -> dict[str, list[Any]]:
    folder = f"versions/{version}"
    names = [*_ROOT_FILES, f"{folder}/manifest.parquet", f"{folder}/build.json", *sorted(shards)]
    return {name: _stat(out / name) for name in names}


def remember(out: Path, summary: BuildSummary, shards: set[str], *, inputs: str) -> None:
    """Record ``inputs``, the :func:`fingerprint` taken when a build that ended with
    ``summary.version`` listed its inputs (what it read), with that version as the latest
    and the output files as they are now (``shards``: those the manifest names)."""
    record = {
        "format": _FORMAT,
        "fingerprint": inputs,
        "version": summary.version,
        "files": _output_files(out, summary.version, shards),
        "summary": jsonable_summary(summary),
    }
    write_text_atomic(record_path(out), json.dumps(record, indent=1, sort_keys=True))


@dataclasses.dataclass(frozen=True, slots=True)
class Look:
    """What :func:`look` found: the summary of the unchanged build (None when the build has
    to run) and the datamart's listing it made (None when it listed nothing), which the
    build takes instead of listing the datamart again (:func:`hiroml.pipeline.run`)."""

    summary: BuildSummary | None
    found: Discovery | None = None
    seconds: float = 0.0  # how long the listing took
    #: the :func:`fingerprint` of the inputs as listed (None when nothing was listed)
    fingerprint: str | None = None


def answer(cfg: BuildConfig) -> BuildSummary | None:
    """The summary of a run that finds its inputs those of the build that made the latest
    version, and the output as that build left it (checked under the output's lock); None
    when the build has to run. Imports neither pandas nor pydicom nor OpenCV."""
    return look(cfg).summary


def look(cfg: BuildConfig) -> Look:
    """:func:`answer`, with the datamart's listing made on the way (when the output has a
    record of its last build, else none is made)."""
    from hiroml.ingest import discover as datamart
    from hiroml.store.lock import build_lock

    t_start = time.perf_counter()
    out = Path(cfg.paths.output)
    if not record_path(out).is_file():
        return Look(None)
    from hiroml.pipeline.demo import with_demo

    cfg, root = with_demo(cfg)
    summary = BuildSummary(started=now(), datamart=str(root), output=str(out))
    found = datamart.discover(root)  # a missing or empty datamart: the build's own error
    listed = time.perf_counter() - t_start
    summary.stage_seconds["discover"] = listed
    inputs = fingerprint(cfg, root, found)
    with build_lock(out, wait=cfg.wait_for_lock):
        t = time.perf_counter()
        same = previous_build(out, summary, inputs=inputs)
    if same is not None:
        same.stage_seconds["check"] = time.perf_counter() - t
        same.seconds = time.perf_counter() - t_start
    return Look(same, found, listed, inputs)


def previous_build(out: Path, summary: BuildSummary, *, inputs: str) -> BuildSummary | None:
    """The summary of the build that made the latest version, when this build's inputs are
    the same and the output is as that build left it; else None (build as always).
    ``inputs``: their :func:`fingerprint`."""
    try:
        record = json.loads(record_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        return None
    if record.get("fingerprint") != inputs:
        return None
    latest = _newest_version(out)
    if latest is None or latest != record.get("version"):
        return None
    files = record.get("files")
    if not isinstance(files, dict) or any(_stat(out / n) != v for n, v in files.items()):
        log.info("output files changed since version %s: building", latest)
        return None
    return _replayed(record.get("summary"), summary)


def _replayed(saved: Any, summary: BuildSummary) -> BuildSummary | None:
    """``summary`` (this run's start, datamart, output and stage times) with the counts of the
    build recorded in ``saved``, as a run that read nothing and published nothing."""
    if not isinstance(saved, dict):
        return None
    fields = {f.name for f in dataclasses.fields(BuildSummary)}
    keep = {"started", "datamart", "output", "stage_seconds", "seconds"}
    try:
        done = dataclasses.replace(
            summary, **{k: v for k, v in saved.items() if k in fields and k not in keep}
        )
    except TypeError:
        return None
    splits = done.patients_per_split
    done.patients_per_split = {s: splits[s] for s in SPLITS if s in splits}
    done.zips_indexed_now = 0
    done.tasks_reused = done.tasks
    done.read_once = done.read_once_unused = 0
    done.split_moves = done.versions_pruned = 0
    done.shrink = {}
    done.published = False
    done.unchanged = True
    return done
