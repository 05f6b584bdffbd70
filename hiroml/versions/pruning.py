"""Pruning: unpinned versions beyond ``versions.keep`` and the shards no retained version names."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from hiroml.pipeline import faults
from hiroml.versions.listing import VersionError, list_versions, versions_dir
from hiroml.vocab import MANIFEST, SHARDS_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pruned:
    """What a prune removed."""

    versions: tuple[str, ...]
    shards: tuple[str, ...]
    task_records: int


def _shards_of(folder: Path) -> set[str]:
    try:
        col = pq.read_table(folder / MANIFEST, columns=["shard"]).column("shard").to_pylist()
    except (OSError, KeyError, ValueError) as e:
        raise VersionError(
            f"{folder / MANIFEST} is unreadable ({e}): nothing is pruned, since the shards it "
            "names cannot be told apart"
        ) from e
    return {str(s) for s in col if s}


def _remove_tree(path: Path) -> None:
    """Delete a folder so that no reader ever lists it half-deleted: hide it, then delete."""
    hidden = path.with_name(f".{path.name}.deleting")
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _remove_hidden(out: Path, sweep: bool) -> None:
    """Remove the version folders left hidden by a killed prune, or (with ``sweep``: a build
    holds the output) half written by a killed publish."""
    hidden = [".*.deleting", ".*.tmp"] if sweep else [".*.deleting"]
    for pattern in hidden if versions_dir(out).is_dir() else ():
        for p in versions_dir(out).glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def prune(
    out: Path | str,
    keep: int,
    *,
    sweep: bool = False,
    live_shards: Iterable[str] = (),
    live_tasks: Iterable[str] = (),
    task_dir: Path | None = None,
) -> Pruned:
    """Remove the versions beyond the newest ``keep`` that are not pinned, then shards.
    Raises :class:`VersionError`, deleting nothing, when a version's ``build.json`` or
    manifest cannot be read.

    Without ``sweep`` (``hiroml-versions --prune``, which may run beside a build) only the
    shards named by a removed version and by no kept one are deleted. With ``sweep`` (a build,
    which holds the output) every shard under ``shards/`` that no kept version names, and
    that is not in ``live_shards``, is deleted, and every task record in ``task_dir`` that is
    not in ``live_tasks`` and whose shards are no longer all there.
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: keep at least 1 version (versions.keep)")
    out = Path(out)
    # a version that cannot be read might name shards that nothing else names: stop
    found = list_versions(out, strict=True)
    _remove_hidden(out, sweep)
    newest = {v.name for v in found[-keep:]}
    kept = [v for v in found if v.name in newest or v.pinned]
    gone = [v for v in found if v not in kept]
    named = set(live_shards)
    for v in kept:
        named |= _shards_of(v.path)
    if not found and (out / MANIFEST).is_file():
        named |= _shards_of(out)
    candidates: set[str] = set()
    for v in gone:
        candidates |= _shards_of(v.path)
    for v in gone:
        log.info("pruning version %s", v.name)
        _remove_tree(v.path)
        faults.point("during_prune")
    if sweep and (out / SHARDS_DIR).is_dir():
        candidates |= {f"shards/{p.name}" for p in (out / SHARDS_DIR).glob("*.h5*")}
    removed = []
    for rel in sorted(candidates - named):
        path = out / rel
        if path.exists():
            path.unlink(missing_ok=True)
            removed.append(rel)
            faults.point("during_prune")
    if sweep and (out / SHARDS_DIR).is_dir():
        # a shard writer's record (<task>.done.json) goes with the last of its shards
        live = set(live_tasks)
        for p in (out / SHARDS_DIR).glob("*.done.json"):
            prefix = p.name.removesuffix(".done.json")
            mine = [f"shards/{q.name}" for q in (out / SHARDS_DIR).glob(f"{prefix}*.h5")]
            if prefix not in live and not any(s in named for s in mine):
                p.unlink(missing_ok=True)
    n_tasks = 0
    if sweep and task_dir is not None and task_dir.is_dir():
        live = set(live_tasks)
        for p in task_dir.glob("*.json*"):
            if p.name.removesuffix(".json") in live:
                continue
            try:
                shards = json.loads(p.read_text()).get("shards", [])
            except (OSError, ValueError):
                shards = []
            if not shards or not all(str(s) in named for s in shards):
                p.unlink(missing_ok=True)
                n_tasks += 1
    if gone or removed:
        log.info(
            "pruned %d version(s) and %d shard(s); %d version(s) kept",
            len(gone),
            len(removed),
            len(kept),
        )
    return Pruned(tuple(v.name for v in gone), tuple(removed), n_tasks)
