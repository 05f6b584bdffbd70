"""Publishing a new immutable version and the root tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from hiroml._version import __version__
from hiroml.doctor.libraries import environment_changes
from hiroml.pipeline import allocator, faults
from hiroml.store.atomic import temp_path
from hiroml.store.filehash import sha256_once
from hiroml.store.reader import read_manifest
from hiroml.versions import keptcolumns
from hiroml.versions.changes import (
    VersionDiff,
    build_info_of,
    changes_html,
    diff_tables,
    identical_earlier,
    settings_changes,
)
from hiroml.versions.hashing import DATASET_HASH_SCHEME, hash_table, table_checksums
from hiroml.versions.listing import (
    _NOT_AT_ROOT,
    Version,
    VersionError,
    _read_version,
    find_version,
    list_versions,
    versions_dir,
)
from hiroml.versions.pruning import Pruned, prune
from hiroml.vocab import BUILD_JSON, CROISSANT_NAME, MANIFEST

log = logging.getLogger(__name__)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _same_file(a: Path, b: Path) -> bool:
    if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
        return False
    return a.read_bytes() == b.read_bytes()


def update_root(out: Path, version: Version) -> bool:
    """Make the root tables copies of ``version``'s, the manifest last; True when anything
    had to be copied. All or nothing: every copy is written to a temporary file first, and
    only once all are there are they renamed into place (a full disk changes nothing)."""
    staged: list[tuple[Path, Path]] = []
    try:
        changed = _stage_root(out, version, staged)
    except BaseException:
        _discard(staged)
        raise
    _commit(staged)
    return changed


def _stage_root(out: Path, version: Version, staged: list[tuple[Path, Path]]) -> bool:
    """Copy each root file of ``version`` that differs into a temporary file beside its
    target, appending (temporary, target) to ``staged``, the manifest last."""
    changed = False
    files = sorted(p for p in version.path.iterdir() if p.is_file() and p.name not in _NOT_AT_ROOT)
    for src in [*files, version.path / MANIFEST]:
        dst = out / src.name
        if src.name == CROISSANT_NAME:  # its shard paths are relative to the root there
            from hiroml.report.croissant import for_root

            text = for_root(src.read_text(encoding="utf-8"))
            if dst.is_file() and dst.read_text(encoding="utf-8") == text:
                continue
            staged.append((temp_path(dst), dst))
            faults.write("root_files")
            staged[-1][0].write_text(text, encoding="utf-8")
            changed = True
        elif not _same_file(src, dst):
            staged.append((temp_path(dst), dst))
            faults.write("root_files")
            shutil.copyfile(src, staged[-1][0])
            changed = True
    return changed


def _discard(staged: list[tuple[Path, Path]]) -> None:
    for tmp, _ in staged:
        tmp.unlink(missing_ok=True)


def _commit(staged: list[tuple[Path, Path]]) -> None:
    """Flush the staged copies to disk, then rename each over its target, in order."""
    for tmp, _ in staged:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    for tmp, dst in staged:
        os.replace(tmp, dst)


def _withdraw(version: Version) -> None:
    """Take back a version just published whose root files could not be staged: hidden
    first (no longer listed), then deleted; the version before it is the latest again."""
    hidden = version.path.with_name(f".{version.name}.tmp")
    os.replace(version.path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)
    log.warning("version %s withdrawn: its root files could not be written", version.name)


@dataclass(frozen=True, slots=True)
class Published:
    """What :func:`publish` did: the latest version afterwards, whether it is new, the diff
    against the version before it (``None`` when nothing new was published) and the prune."""

    version: Version
    new: bool
    diff: VersionDiff | None
    pruned: Pruned


WriteReport = Callable[[Path, str, str, str], None]


def _write_version(
    tmp: Path,
    out: Path,
    latest: Version | None,
    name: str,
    tables: list[Any],
    write_report: WriteReport,
    digest: str,
    build_info: Mapping[str, Any],
) -> tuple[VersionDiff, dict[str, str]]:
    """The tables (``[manifest as an Arrow table, patients, audit]``) and report of a new
    version, into the hidden folder ``tmp``; the diff against the latest version (or the root
    tables of an output without versions), with the settings and environment of
    ``build_info`` against the latest version's ``build.json``, and the tables' SHA-256
    (:func:`~hiroml.versions.hashing.table_checksums`). The manifest's large columns are
    kept for the next build's diff (:mod:`hiroml.versions.keptcolumns`). The Arrow manifest
    is let go (``tables[0] = None``) once written and diffed: the report reads the frame, and
    holding both cost the report's peak about 12 MB at 6,000 samples."""
    from hiroml.store.tables import write_outputs

    manifest, patients, audit = tables
    write_outputs(tmp, manifest, patients, audit)
    allocator.release_all()  # the writer's temporaries, before the diff reads the previous one
    prev_dir = latest.path if latest is not None else (out if (out / MANIFEST).is_file() else None)
    prev_name = latest.name if latest is not None else ("the root tables" if prev_dir else "")
    checksums = table_checksums(tmp)
    kept = keptcolumns.kept_dir(out)
    change = diff_tables(
        prev_dir, tmp, a_name=prev_name, b_name=name, b_manifest=manifest, b_audit=audit,
        kept=kept,
    )  # fmt: skip
    keptcolumns.keep(kept, checksums[MANIFEST], manifest)  # for the next build's diff
    tables[0] = manifest = None
    allocator.release_all()  # the tables written and the previous manifest the diff read
    if latest is not None:  # the settings and environment against the latest's build.json
        before = build_info_of(latest)
        now = json.loads(json.dumps(dict(build_info), default=str))  # as build.json holds it
        env = environment_changes(before.get("environment"), now.get("environment"))
        change = dataclasses.replace(
            change,
            settings=tuple(settings_changes(before.get("config"), now.get("config"))),
            environment=tuple(env),
            identical_to=identical_earlier(list_versions(out), digest, latest.seq + 1),
        )
    write_report(tmp, name, changes_html(change), digest)
    return change, checksums


def _same_checksums(version: Version, manifest: pd.DataFrame) -> bool:
    """Whether ``version`` names the same shard files with the same checksums as ``manifest``."""
    cols = ["sample_key", "shard", "shard_sha256"]
    try:
        old = read_manifest(version.path, columns=cols)
    except (OSError, ValueError, KeyError):
        return False
    if len(old) != len(manifest):
        return False
    rows = [df[cols].astype(str).sort_values(cols, ignore_index=True) for df in (old, manifest)]
    return bool(rows[0].equals(rows[1]))  # the same rows, in any order


def publish(
    out: Path,
    manifest: pd.DataFrame,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
    *,
    write_report: WriteReport,
    build_info: Mapping[str, Any],
    keep: int,
    live_shards: Iterable[str] = (),
    live_tasks: Iterable[str] = (),
    task_dir: Path | None = None,
) -> Published:
    """Publish the tables of a finished build as a new version, unless the latest version
    already holds the same dataset; then bring the root tables up to date and prune.

    ``write_report(folder, version, changes_html, dataset_hash)`` writes the report of
    ``version`` (and whatever goes beside it) into ``folder``; ``changes_html`` is the body
    of the "What changed since the previous version" section; ``dataset_hash`` is the hash
    computed here (once per build), for the dataset card. ``build_info`` goes into ``build.json``
    (resolved config, inputs, timings), with ``version``, ``dataset_hash``, ``created``,
    ``hiroml_version``, ``samples``, ``patients``, ``previous``, ``changes`` and ``tables`` (the
    SHA-256 of each table file of the version, checked by ``hiroml-verify``) added.
    """
    from hiroml.store.tables import manifest_table

    out = Path(out)
    _check_shards_present(out, manifest)
    table = manifest_table(manifest)  # once: hashed, then written
    digest = hash_table(table)
    # freed pages back to the system after each step here (allocator.release_all): pyarrow's
    # pool (mimalloc) keeps about 130 MB at 6,300 samples once the manifest is converted,
    # hashed, written and read back for the diff, and the heap the hash's and the parquet
    # writer's buffers (about 10 and 20 MB at 6,000 samples): the report's peak otherwise
    allocator.release_all()
    latest = find_version(out)

    def pruned() -> Pruned:
        return prune(
            out, keep, sweep=True, live_shards=live_shards, live_tasks=live_tasks, task_dir=task_dir
        )

    if latest is not None and _same_dataset(latest, table, digest, manifest):
        if update_root(out, latest):
            log.warning(
                "root tables were behind version %s (interrupted publish): repaired", latest.name
            )
        return Published(latest, False, None, pruned())
    tables = [table, patients, audit]
    del table  # _write_version lets the Arrow manifest go before the report (tables[0] = None)
    version, change = _publish_new(out, digest, latest, tables, write_report, build_info)
    log.info("published version %s (%d samples)", version.name, len(manifest))
    faults.point("before_root_tables")
    staged: list[tuple[Path, Path]] = []
    try:
        _stage_root(out, version, staged)
    except BaseException:
        _discard(staged)
        _withdraw(version)  # all or nothing: the previous version stays the latest
        raise
    _commit(staged)
    return Published(version, True, change, pruned())


def _same_dataset(latest: Version, table: pa.Table, digest: str, manifest: pd.DataFrame) -> bool:
    """Whether ``latest`` holds the dataset of ``table`` (hash ``digest``) with the same shard
    checksums. A version hashed by an older scheme is compared by that scheme's hash of
    ``table`` (once, on the first build after an upgrade), so an upgrade alone publishes no
    new version."""
    theirs = digest
    if latest.dataset_hash_scheme != DATASET_HASH_SCHEME:
        try:
            theirs = hash_table(table, scheme=latest.dataset_hash_scheme)
        except ValueError:  # a scheme this hiroml does not know: not the same
            return False
    return latest.dataset_hash == theirs and _same_checksums(latest, manifest)


def _check_shards_present(out: Path, manifest: pd.DataFrame) -> None:
    """Raise :class:`VersionError` when a shard the manifest names is not under ``out``."""
    shards = manifest["shard"].astype(str).unique().tolist()
    missing = sorted(s for s in shards if not (out / s).is_file())
    if missing:
        raise VersionError(
            f"{len(missing)} shard(s) this build needs vanished while it ran, e.g. {missing[0]} "
            "(a hiroml-versions --prune beside the build?): nothing was published; run the "
            "build again"
        )


def _publish_new(
    out: Path,
    digest: str,
    latest: Version | None,
    tables: list[Any],
    write_report: WriteReport,
    build_info: Mapping[str, Any],
) -> tuple[Version, VersionDiff]:
    """Write the version of ``tables`` (manifest as :func:`hiroml.store.tables.manifest_table`
    made it, patients, audit) into a hidden folder, with
    its report and ``build.json``, then rename it into ``versions/`` (atomic: a failure
    leaves no half version behind). :func:`_write_version` takes the manifest out of
    ``tables`` once it has written and diffed it."""
    samples, patients = tables[0].num_rows, tables[1]
    seq = max((v.seq for v in list_versions(out)), default=0) + 1
    name = f"{seq:04d}-{digest[:8]}"
    root = versions_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with sha256_once():  # the tables: hashed for build.json, then by the report's croissant
            change, checksums = _write_version(
                tmp, out, latest, name, tables, write_report, digest, build_info
            )
        info = {
            **build_info,
            "version": name,
            "dataset_hash": digest,
            "dataset_hash_scheme": DATASET_HASH_SCHEME,
            "created": _now(),
            "hiroml_version": __version__,
            "samples": samples,
            "patients": len(patients),
            "previous": latest.name if latest is not None else None,
            "changes": _change_counts(change),
            "tables": checksums,
        }
        (tmp / BUILD_JSON).write_text(json.dumps(info, indent=2, default=str) + "\n", "utf-8")
        os.replace(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half version behind
        raise
    version = _read_version(root / name)
    if version is None:  # pragma: no cover - written just above
        raise VersionError(f"{root / name} could not be read back after publishing")
    return version, change


def _change_counts(change: VersionDiff) -> dict[str, Any]:
    """``build.json``'s ``changes``: counts of what changed since the previous version."""
    return {
        "samples_added": len(change.samples_added),
        "samples_removed": len(change.samples_removed),
        "samples_changed": len(change.samples_changed),
        "columns_changed": change.columns_changed,
        "patients_added": len(change.patients_added),
        "patients_removed": len(change.patients_removed),
        "split_moves": [dataclasses.asdict(m) for m in change.moves],
        "decisions_changed": len(change.decisions),
        "settings": list(change.settings),
        "labels_dropped": list(change.labels_dropped),
        "labels_added": list(change.labels_added),
        "identical_to": change.identical_to or None,
    }
