"""``hiroml-verify OUT``: is an output folder sound?

Errors (exit 1): the public contract (:func:`hiroml.store.contract.check_tables`); leakage
(a patient group, patient id, SOP Instance UID, source pixel hash or ``data_hash``, i.e.
identical decoded pixels, in two splits); a shard
whose SHA-256 differs from the manifest's ``shard_sha256``; a manifest row whose key is
missing from its shard, or whose stored shape or ``data_hash`` differs from the manifest's
(``deep``: the hash is also recomputed from the stored pixels).

Warnings (exit 0; errors with ``--strict``): near-duplicate radiographs in two splits, found
from the manifest's ``signature`` column (rank correlation >= ``--near-threshold``, default
that of ``splits.near_duplicate_threshold``, :mod:`hiroml.exams.neardup`) by an exact search
of the pairs across splits; with ``--quick``, from the pairs the build recorded and a search
of the signatures they do not cover (:mod:`hiroml.store.nearsplit`).

Warnings (exit 0): shard files the manifest does not name and leftover ``*.tmp`` files,
from an interrupted build (one line each kind, with a count); samples in a shard that the
manifest does not name.

Each version against its ``build.json`` (errors): the SHA-256 of each table file recorded
under ``tables`` at publish (a version published before they were recorded: a warning, "not
recorded"), the ``dataset_hash`` recomputed from its ``manifest.parquet``
(:func:`hiroml.versions.hashing.dataset_hash`, by the ``dataset_hash_scheme`` the version
recorded, 1 where none; with ``--quick``
only where the manifest's checksum is not the recorded one), and the sample and patient
counts. A manifest or shard that cannot be read is an error naming the file. Its
``croissant.json`` against its files (errors): the tables' and shards' SHA-256 and the
manifest's columns (:func:`hiroml.report.croissant.croissant_problems`).

Versions (docs/design.md section 4b): the tables checked are those of one published version,
``--version V`` (default: the latest); ``--all`` checks every kept version, each shard it
names included. Root tables that differ from the latest version's (a build interrupted while
publishing; the next build repairs them) are a warning. Shards named by no kept version are
a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hiroml.exams.neardup import DEFAULT_THRESHOLD
from hiroml.exams.splits import find_leaks
from hiroml.report.croissant import croissant_problems
from hiroml.store import nearsplit
from hiroml.store.contract import check_tables
from hiroml.store.reader import read_manifest
from hiroml.store.shards import (
    array_hash,
    open_shard,
    read_meta,
    read_ref,
    sample_refs,
    sample_shape,
    shard_sha256,
    stored_hash,
    stored_offset,
)
from hiroml.versions.hashing import dataset_hash, table_checksums
from hiroml.vocab import BUILD_JSON, MANIFEST, PATIENTS, SHARDS_DIR


@dataclass
class Findings:
    """What verification found: ``errors`` make the folder unsound, ``warnings`` do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_samples: int = 0
    n_shards: int = 0
    version: str | None = None


def _shape(v: object) -> tuple[int, ...] | None:
    if v is None:
        return None
    try:
        return tuple(int(x) for x in v)  # type: ignore[attr-defined]
    except TypeError:
        return None


def _check_shard(out: Path, shard: str, rows: pd.DataFrame, deep: bool, found: Findings) -> None:
    path = out / shard
    if not path.exists():
        found.errors.append(f"shard {shard}: missing")
        return
    wanted = set(rows["shard_sha256"].astype(str))
    if len(wanted) > 1:
        found.errors.append(f"shard {shard}: manifest rows disagree on shard_sha256")
    actual = shard_sha256(path)
    if actual not in wanted:
        found.errors.append(
            f"shard {shard}: sha256 {actual[:16]}... differs from the manifest's "
            f"{sorted(wanted)[0][:16]}... (corrupt or replaced)"
        )
    try:
        with open_shard(path) as f:
            refs = sample_refs(f)
            names = set(refs)
            for key, shape, digest in zip(
                rows["sample_key"].astype(str),
                rows["shape"],
                rows["data_hash"].astype(str),
                strict=True,
            ):
                ref = refs.get(key)
                if ref is None:
                    found.errors.append(f"sample {key}: not in shard {shard}")
                    continue
                stored_shape = sample_shape(f, ref)
                if _shape(shape) != stored_shape:
                    found.errors.append(
                        f"sample {key}: shape {stored_shape} in {shard}, manifest {_shape(shape)}"
                    )
                if "offsets" in f and (
                    ref.offset != stored_offset(f, ref) or ref.dtype != f[ref.array].dtype
                ):
                    found.errors.append(f"sample {key}: the offset index of {shard} is wrong")
                if stored_hash(f, ref) != digest:
                    found.errors.append(f"sample {key}: data_hash in {shard} differs from manifest")
                elif deep and array_hash(read_ref(f, ref)) != digest:
                    found.errors.append(f"sample {key}: stored pixels do not match data_hash")
                else:
                    read_meta(f, ref)
            extra = names - set(rows["sample_key"].astype(str))
            if extra:
                found.warnings.append(
                    f"shard {shard}: {len(extra)} sample(s) not in the manifest, "
                    f"e.g. {sorted(extra)[0]}"
                )
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:  # h5py raises each
        found.errors.append(f"shard {shard}: unreadable ({_one_line(e)})")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _count_rows(path: Path) -> int | None:
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, ValueError, pa.ArrowException):
        return None


def check_build_json(where: Path, name: str, found: Findings, *, rehash: bool = True) -> bool:
    """Errors where the tables of version ``name`` (folder ``where``) disagree with what its
    ``build.json`` recorded at publish: table checksums, ``dataset_hash``, sample and patient
    counts. Without ``rehash``, a manifest whose recorded checksum matches is trusted to have
    the recorded ``dataset_hash`` (recomputing costs about 20 ms per 1,000 samples by scheme 2,
    0.25 ms a sample by scheme 1). False
    when its manifest cannot be read (nothing more can be checked)."""
    info: dict[str, object] = {}
    try:
        loaded = json.loads((where / BUILD_JSON).read_text(encoding="utf-8"))
        info = loaded if isinstance(loaded, dict) else {}
        if not info:
            found.errors.append(f"version {name}: {BUILD_JSON} holds no JSON object")
    except (OSError, ValueError) as e:
        found.errors.append(f"version {name}: {BUILD_JSON} unreadable ({_one_line(e)})")
    recorded = info.get("tables")
    trusted = False
    if isinstance(recorded, dict):
        actual = table_checksums(where)
        for table, digest in sorted(recorded.items()):
            got = actual.get(str(table))
            if got is None:
                found.errors.append(f"version {name}: {table} is missing")
            elif got == digest:
                trusted |= table == MANIFEST and not rehash and "dataset_hash" in info
            elif got != digest:
                found.errors.append(
                    f"version {name}: {table} has sha256 {got[:16]}..., {BUILD_JSON} recorded "
                    f"{str(digest)[:16]}... (altered since it was published)"
                )
    elif info:
        found.warnings.append(
            f"version {name}: table checksums not recorded in its {BUILD_JSON} (published by "
            "an earlier hiroml)"
        )
    try:
        scheme = int(info.get("dataset_hash_scheme", 1))  # type: ignore[call-overload]
        digest = (
            str(info["dataset_hash"]) if trusted else dataset_hash(where / MANIFEST, scheme=scheme)
        )
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as e:
        found.errors.append(f"version {name}: {MANIFEST} unreadable ({_one_line(e)})")
        return False
    if "dataset_hash" in info and digest != info["dataset_hash"]:
        found.errors.append(
            f"version {name}: dataset_hash of {MANIFEST} is {digest[:16]}..., {BUILD_JSON} "
            f"recorded {str(info['dataset_hash'])[:16]}... (its content was altered)"
        )
    counts = {"samples": _count_rows(where / MANIFEST), "patients": _count_rows(where / PATIENTS)}
    for what, n in counts.items():
        if what in info and n is not None and n != info[what]:
            found.errors.append(
                f"version {name}: {n} {what} in its tables, {BUILD_JSON} recorded {info[what]}"
            )
    if counts["patients"] is None and (where / PATIENTS).is_file():
        found.errors.append(f"version {name}: {PATIENTS} unreadable")
    return True


def near_duplicates_across_splits(
    m: pd.DataFrame, *, threshold: float, out: Path | None = None
) -> list[str]:
    """One message per pair of radiographs in two splits whose signatures' rank correlation
    reaches ``threshold`` (identical pixels aside: those are ``data_hash`` leaks). ``out``:
    the output folder whose recorded pairs may be read back (``--quick``); None: the exact
    search across splits (:mod:`hiroml.store.nearsplit`)."""
    (i, j, sim), _ = nearsplit.pairs_across_splits(m, threshold=threshold, out=out)
    if not len(i):
        return []
    keys = m["sample_key"].astype(str).to_numpy()
    splits = m["split"].astype(str).to_numpy()
    hash_of = m["data_hash"].astype(str).to_numpy() if "data_hash" in m else np.full(len(m), "")
    same_pixels = (hash_of[i] == hash_of[j]) & (hash_of[i] != "")
    cross = np.flatnonzero(~same_pixels)
    return [
        f"near duplicate across splits: {keys[a]} ({splits[a]}) ~ {keys[b]} "
        f"({splits[b]}), rank correlation {z:.3f}"
        for a, b, z in zip(i[cross].tolist(), j[cross].tolist(), sim[cross].tolist(), strict=True)
    ]


def examine(
    out_dir: Path | str,
    *,
    deep: bool = True,
    version: str | int | None = None,
    strict: bool = False,
    near_threshold: float = DEFAULT_THRESHOLD,
) -> Findings:
    """Errors and warnings of one output folder, or of one of its versions (default: the
    latest); see the module docstring. :class:`~hiroml.versions.listing.VersionError` when
    ``version`` does not exist. ``strict``: near-duplicate radiographs in two splits are
    errors, not warnings."""
    from hiroml.versions.listing import tables_dir

    out = Path(out_dir)
    where, name = tables_dir(out, version)
    found = Findings(version=name)
    if name is not None and (where / MANIFEST).is_file():
        if not check_build_json(where, name, found, rehash=deep):
            return found
    elif (where / MANIFEST).is_file():
        try:
            pq.read_metadata(where / MANIFEST)
        except (OSError, ValueError, pa.ArrowException) as e:
            found.errors.append(f"{where / MANIFEST} unreadable ({_one_line(e)})")
            return found
    try:
        _examine_tables(out, where, version, found, deep=deep, strict=strict, near=near_threshold)
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as e:
        # values a damaged manifest holds that its checksums may not cover (shard_sha256
        # is not hashed): one line naming the file, never a traceback
        found.errors.append(f"{where / MANIFEST} cannot be checked ({_one_line(e)})")
    return found


def _examine_tables(
    out: Path,
    where: Path,
    version: str | int | None,
    found: Findings,
    *,
    deep: bool,
    strict: bool,
    near: float,
) -> None:
    """The checks of :func:`examine` on the tables in ``where`` (version ``found.version``)."""
    from hiroml.versions.listing import list_versions

    name = found.version
    found.errors += check_tables(out, version=name)
    if not (where / MANIFEST).exists():
        return
    kept = list_versions(out)
    if name is not None and version is None and kept and kept[-1].name == name:
        root = out / MANIFEST
        if not root.is_file() or root.read_bytes() != (where / MANIFEST).read_bytes():
            found.warnings.append(
                f"the root tables are not those of the latest version {name} (a build was "
                "interrupted while publishing): the next build repairs them"
            )
    m = read_manifest(where)
    found.n_samples = len(m)
    found.errors += [f"version {name}: {p}" if name else p for p in croissant_problems(where, m)]
    found.errors += [f"leak: {msg}" for msg in find_leaks(m)]
    pairs = near_duplicates_across_splits(m, threshold=near, out=None if deep else out)
    (found.errors if strict else found.warnings).extend(pairs)
    missing = [c for c in ("shard", "shard_sha256", "data_hash", "shape") if c not in m.columns]
    if missing:
        found.errors.append(f"manifest.parquet lacks column(s) {', '.join(missing)}")
        return
    named = set()
    for shard, rows in m.groupby("shard", sort=True):
        named.add((out / str(shard)).resolve())
        _check_shard(out, str(shard), rows, deep, found)
    found.n_shards = len(named)
    for v in kept:  # shards of the other kept versions are expected too
        if v.name != name:
            try:
                kept_m = read_manifest(v.path, columns=["shard"])
            except (OSError, ValueError, KeyError, pa.ArrowException) as e:
                found.warnings.append(
                    f"version {v.name}: {MANIFEST} unreadable ({_one_line(e)}): its shards "
                    "are not told apart from stray ones here (hiroml-verify --all checks it)"
                )
                continue
            named |= {(out / str(s)).resolve() for s in kept_m["shard"].unique()}
    found.warnings += stray_shard_lines(out, named)


#: how many stray files a warning names before it gives only their count
STRAY_SHOWN = 3


def stray_shard_lines(out: Path, named: set[Path]) -> list[str]:
    """One warning for the shard files under ``shards/`` that no kept version names (by
    resolved path, ``named``), one for the leftover ``*.tmp`` files: each names up to
    :data:`STRAY_SHOWN` of them and gives the count. An interrupted build leaves them; the
    next build that converts reuses them (or deletes those it does not need), and
    ``hiroml-versions OUT --prune`` deletes them at once."""
    shard_dir = out / SHARDS_DIR
    if not shard_dir.is_dir():
        return []
    files = sorted(shard_dir.rglob("*"))
    stray = [
        str(p.relative_to(out)) for p in files if p.suffix == ".h5" and p.resolve() not in named
    ]
    tmp = [str(p.relative_to(out)) for p in files if p.suffix == ".tmp"]
    fix = (
        "left by an interrupted build: the next build reuses or deletes {it}, "
        f"hiroml-versions {out} --prune deletes {{it}} now"
    )
    lines = []
    if len(stray) == 1:
        lines.append(f"shard {stray[0]} is not named in the manifest ({fix.format(it='it')})")
    elif stray:
        lines.append(
            f"{len(stray)} shards are not named in the manifest ({_some(stray)}; "
            f"{fix.format(it='them')})"
        )
    if len(tmp) == 1:
        lines.append(f"{tmp[0]}: leftover of an interrupted write")
    elif tmp:
        lines.append(f"{len(tmp)} leftovers of an interrupted write ({_some(tmp)})")
    return lines


def _some(names: list[str]) -> str:
    more = f" and {len(names) - STRAY_SHOWN} more" if len(names) > STRAY_SHOWN else ""
    return ", ".join(names[:STRAY_SHOWN]) + more


def verify(
    out_dir: Path | str, *, deep: bool = True, version: str | int | None = None
) -> list[str]:
    """Every error that makes an output folder (or one of its versions) unsound; empty when
    it is sound."""
    return examine(out_dir, deep=deep, version=version).errors


def examine_all(
    out_dir: Path | str,
    *,
    deep: bool = True,
    strict: bool = False,
    near_threshold: float = DEFAULT_THRESHOLD,
) -> list[Findings]:
    """:func:`examine` of every kept version, oldest first (of the root tables when the
    output has no versions)."""
    from hiroml.versions.listing import list_versions

    kept = list_versions(out_dir)
    if not kept:
        return [examine(out_dir, deep=deep, strict=strict, near_threshold=near_threshold)]
    return [
        examine(out_dir, deep=deep, version=v.name, strict=strict, near_threshold=near_threshold)
        for v in kept
    ]
