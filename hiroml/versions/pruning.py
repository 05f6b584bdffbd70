"""Pruning: unpinned versions beyond ``versions.keep`` and the shards no retained version names."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from hiroml.pipeline import faults
from hiroml.pipeline.tasks import read_record
from hiroml.versions.listing import Version, VersionError, list_versions, versions_dir
from hiroml.vocab import MANIFEST, SHARDS_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pruned:
    """What a prune removed (with ``dry_run``: what it would remove, nothing deleted)."""

    versions: tuple[str, ...]
    shards: tuple[str, ...]
    task_records: int
    bytes_freed: int = 0  # the files of the versions and shards removed, in bytes
    dry_run: bool = False


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


def _size(path: Path) -> int:
    """Bytes of a file, or of the files under a folder (0 for what vanished meanwhile)."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a prune removes: version folders, then shards (relative paths) nothing kept names."""

    gone: tuple[Version, ...]
    kept: int
    named: frozenset[str]
    shards: tuple[str, ...]


def _plan(out: Path, keep: int, sweep: bool, live_shards: Iterable[str]) -> _Plan:
    # a version that cannot be read might name shards that nothing else names: stop
    found = list_versions(out, strict=True)
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
    if sweep and (out / SHARDS_DIR).is_dir():
        candidates |= {f"shards/{p.name}" for p in (out / SHARDS_DIR).glob("*.h5*")}
    shards = tuple(rel for rel in sorted(candidates - named) if (out / rel).exists())
    return _Plan(tuple(gone), len(kept), frozenset(named), shards)


def prune(
    out: Path | str,
    keep: int,
    *,
    sweep: bool = False,
    live_shards: Iterable[str] = (),
    live_tasks: Iterable[str] = (),
    task_dir: Path | None = None,
    dry_run: bool = False,
) -> Pruned:
    """Remove the versions beyond the newest ``keep`` that are not pinned, then shards.
    Raises :class:`VersionError`, deleting nothing, when a version's ``build.json`` or
    manifest cannot be read.

    Without ``sweep`` (``hiroml-versions --prune``, which may run beside a build) only the
    shards named by a removed version and by no kept one are deleted. With ``sweep`` (a build,
    which holds the output) every shard under ``shards/`` that no kept version names, and
    that is not in ``live_shards``, is deleted, and every task record in ``task_dir`` that is
    not in ``live_tasks`` and whose shards are no longer all there. ``dry_run``: delete
    nothing, return what would be deleted (task records are not counted).
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: keep at least 1 version (versions.keep)")
    out = Path(out)
    plan = _plan(out, keep, sweep, live_shards)
    freed = sum(_size(v.path) for v in plan.gone) + sum(_size(out / s) for s in plan.shards)
    if dry_run:
        return Pruned(tuple(v.name for v in plan.gone), plan.shards, 0, freed, dry_run=True)
    _remove_hidden(out, sweep)
    for v in plan.gone:
        log.info("pruning version %s", v.name)
        _remove_tree(v.path)
        faults.point("during_prune")
    removed = []
    for rel in plan.shards:
        path = out / rel
        if path.exists():
            path.unlink(missing_ok=True)
            removed.append(rel)
            faults.point("during_prune")
    n_tasks = _remove_records(out, plan.named, set(live_tasks), task_dir) if sweep else 0
    if plan.gone or removed:
        log.info(
            "pruned %d version(s) and %d shard(s); %d version(s) kept",
            len(plan.gone),
            len(removed),
            plan.kept,
        )
    return Pruned(tuple(v.name for v in plan.gone), tuple(removed), n_tasks, freed)


def _remove_records(out: Path, named: frozenset[str], live: set[str], task_dir: Path | None) -> int:
    """Remove the task records of the tasks whose shards are gone (a build's sweep): a shard
    writer's ``<task>.done.json`` beside its shards, and the records in ``task_dir``; returns
    how many of the latter went."""
    if (out / SHARDS_DIR).is_dir():
        # a shard writer's record (<task>.done.json) goes with the last of its shards
        for p in (out / SHARDS_DIR).glob("*.done.json"):
            prefix = p.name.removesuffix(".done.json")
            mine = [f"shards/{q.name}" for q in (out / SHARDS_DIR).glob(f"{prefix}*.h5")]
            if prefix not in live and not any(s in named for s in mine):
                p.unlink(missing_ok=True)
    n_tasks = 0
    if task_dir is not None and task_dir.is_dir():
        for p in task_dir.glob("*.json*"):
            if p.name.removesuffix(".json") in live:
                continue
            try:
                shards = read_record(p)[0].get("shards", [])
            except (OSError, ValueError, AttributeError):
                shards = []
            if not shards or not all(str(s) in named for s in shards):
                p.unlink(missing_ok=True)
                n_tasks += 1
    return n_tasks
