"""Immutable versions of an output folder (docs/design.md section 4b).

Layout::

    <out>/shards/*.h5              immutable, shared by every version that names them
    <out>/versions/<version>/      manifest.parquet, patients.parquet, audit.csv, report.html,
                                   build.json (and PINNED when pinned)
    <out>/manifest.parquet ...     copies of the latest version's tables

``<version>`` is ``NNNN-<first 8 hex digits of the dataset hash>``: a sequence number (so
names sort in publishing order) and the content. The dataset hash is the SHA-256 of the
manifest in a canonical form (rows sorted by ``sample_key``, columns by name, each value as
the canonical JSON of its parquet value), so the same inputs and config give the same hash
on any machine: it holds no absolute path and no timing. The ``shard_sha256`` column is left
out of it: a shard file's bytes depend on how the HDF5 library laid it out (another library
version, or a Dask worker, may lay out identical datasets differently), while what the shard
holds is in ``data_hash``. Nor does it hold the environment (library versions, decoders)
that ``build.json`` records beside it: :func:`diff` names an environment change.

Publishing (:func:`publish`) is crash-safe at every point:

1. the version is written into ``versions/.<version>.tmp/`` and renamed into place once
   complete (a reader lists only complete, renamed folders);
2. the root tables are replaced by copies of the version's, each atomically, manifest last;
3. versions beyond ``versions.keep`` that are not pinned are removed (renamed to a hidden
   name, then deleted), then the shards and task records no kept version needs.

A build whose dataset hash and shard checksums equal the latest version's publishes
nothing; it only repairs the root tables if an interrupted publish left them behind, and
prunes. (Shards rewritten with other bytes but the same content publish a new version, so
that every version's checksums match its files.)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import html
import itertools
import json
import logging
import os
import pickle
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hiroml import faults
from hiroml._version import __version__
from hiroml.atomic import copy_atomic, write_text_atomic
from hiroml.doctor import environment_changes
from hiroml.errors import HiromlError, OutputLockedError

log = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
BUILD_JSON = "build.json"
PIN_FILE = "PINNED"
MANIFEST = "manifest.parquet"
#: audit ``reason`` of a patient whose split changed because its group was joined to another
SPLIT_MOVED = "split moved"
SPLIT_ORDER = ("train", "val", "test")
#: exit status of ``hiroml-versions --prune`` when a build holds the output (as hiroml-build)
EXIT_LOCKED = 3
_NAME = re.compile(r"^(\d{4,})-([0-9a-f]{8})$")
#: files of a version folder that are not copied to the root
_NOT_AT_ROOT = frozenset({BUILD_JSON, PIN_FILE, MANIFEST})


class VersionError(HiromlError):
    """A version that does not exist, or a versions folder that cannot be used."""


@dataclass(frozen=True, slots=True)
class Version:
    """One published version: its folder and what its ``build.json`` says."""

    name: str
    seq: int
    path: Path
    created: str
    dataset_hash: str
    samples: int
    patients: int
    pinned: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.name,
            "created": self.created,
            "samples": self.samples,
            "patients": self.patients,
            "dataset_hash": self.dataset_hash,
            "pinned": self.pinned,
            "path": str(self.path),
        }


# --------------------------------------------------------------------------- listing


def versions_dir(out: Path | str) -> Path:
    return Path(out) / VERSIONS_DIR


def _read_version(path: Path) -> Version | None:
    m = _NAME.match(path.name)
    if m is None or not (path / MANIFEST).is_file():
        return None
    try:
        info = json.loads((path / BUILD_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("version %s has no readable %s (%s): ignored", path, BUILD_JSON, e)
        return None
    return Version(
        name=path.name,
        seq=int(m.group(1)),
        path=path,
        created=str(info.get("created", "")),
        dataset_hash=str(info.get("dataset_hash", "")),
        samples=int(info.get("samples", 0)),
        patients=int(info.get("patients", 0)),
        pinned=(path / PIN_FILE).is_file(),
    )


def list_versions(out: Path | str) -> list[Version]:
    """The complete versions of an output folder, oldest first (hidden and half-written
    folders are skipped)."""
    root = versions_dir(out)
    if not root.is_dir():
        return []
    found = [_read_version(p) for p in root.iterdir() if p.is_dir()]
    return sorted((v for v in found if v is not None), key=lambda v: (v.seq, v.name))


def find_version(out: Path | str, version: str | int | None = None) -> Version | None:
    """The version named ``version``: its full name (``0007-3f9a1c2e``), its sequence number
    (``7``, ``"0007"``) or ``None``/``"latest"`` for the newest. ``None`` when the folder has
    no version and none was named; :class:`VersionError` naming the versions there when the
    one asked for does not exist."""
    found = list_versions(out)
    if version is None or version == "latest":
        return found[-1] if found else None
    text = str(version).strip()
    for v in found:
        if text == v.name or (text.isdigit() and int(text) == v.seq):
            return v
    names = ", ".join(v.name for v in found) or "none"
    raise VersionError(
        f"{out}: no version {text!r} (versions kept: {names}; see hiroml-versions {out})"
    )


def tables_dir(out: Path | str, version: str | int | None = None) -> tuple[Path, str | None]:
    """Where the tables of ``version`` are, and its name: the version folder, or the output
    folder itself (name ``None``) for an output of the first release, which has no versions.
    """
    v = find_version(out, version)
    if v is None:
        return Path(out), None
    return v.path, v.name


# --------------------------------------------------------------------------- the hash


def _canonical(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float):
        return None if v != v else v  # NaN is no JSON value
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return [_canonical(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _canonical(x) for k, x in sorted(v.items())}
    if isinstance(v, bytes):
        return v.hex()
    return v


#: Manifest columns that are not part of the dataset hash (see the module docstring).
UNHASHED_COLUMNS = frozenset({"shard_sha256"})


def _kept_as_is(t: pa.DataType) -> bool:
    """Whether :func:`_canonical` leaves every value of type ``t`` as it is (integers,
    strings, booleans and lists of them)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_boolean(t)


def _column_values(col: pa.ChunkedArray) -> list[Any]:
    """The canonical values of one column, computed column-wise: a list column without
    nulls is cut from one flat ``tolist`` of its values (a 1,024-value signature per row
    costs a slice, not 1,024 calls)."""
    if not _kept_as_is(col.type):
        return [_canonical(v) for v in col.to_pylist()]
    arr = col.combine_chunks()
    lists = isinstance(arr, pa.ListArray | pa.LargeListArray)
    if lists and arr.null_count == 0 and arr.values.null_count == 0:
        flat = arr.flatten().to_numpy(zero_copy_only=False).tolist()
        offsets = arr.offsets.to_numpy()
        cuts = (offsets - offsets[0]).tolist()
        return [flat[a:b] for a, b in itertools.pairwise(cuts)]
    return arr.to_pylist()


def hash_table(table: Any) -> str:
    """The dataset hash of a manifest as a pyarrow table (see the module docstring): the
    SHA-256 of the column names, then of one canonical JSON line per row, by sample key."""
    columns = sorted(c for c in table.column_names if c not in UNHASHED_COLUMNS)
    values = [_column_values(table.column(c)) for c in columns]
    keys = values[columns.index("sample_key")] if "sample_key" in columns else None
    order = sorted(range(table.num_rows), key=lambda i: str(None if keys is None else keys[i]))
    h = hashlib.sha256()
    h.update(json.dumps(columns).encode())
    for i in order:
        line = json.dumps([v[i] for v in values], allow_nan=False, default=str)
        h.update(b"\n" + line.encode())
    return h.hexdigest()


def dataset_hash(manifest: pd.DataFrame | Path | str) -> str:
    """The dataset hash of a manifest frame (as :func:`hiroml.manifest.write_outputs` would
    store it) or of a ``manifest.parquet`` file: equal for equal content on any machine."""
    if isinstance(manifest, pd.DataFrame):
        from hiroml.manifest import _to_table, validate_manifest

        return hash_table(_to_table(validate_manifest(manifest).reset_index(drop=True)))
    return hash_table(pq.read_table(manifest))


_HASH_MEMO = Path(".hiroml") / "dataset-hash.json"


def remembered_dataset_hash(out: Path, manifest: pd.DataFrame) -> str:
    """:func:`dataset_hash` of ``manifest``, remembered between builds of ``out``.

    A weekly re-run with nothing new assembles the same manifest frame again; its canonical
    hash costs about 1 s per 4,000 samples, the SHA-256 of the frame's pickle under 0.1 s.
    Equal pickles are equal frames, so a remembered hash is reused only for the very frame it
    was computed from; any other frame (or a pickle that differs for an equal frame) is
    hashed anew. The memo (``.hiroml/dataset-hash.json``) holds the last frame only."""
    path = out / _HASH_MEMO
    key = hashlib.sha256(pickle.dumps(manifest, protocol=5)).hexdigest()
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
        if memo.get("frame") == key and memo.get("hiroml") == __version__:
            return str(memo["dataset_hash"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # no memo yet, or an unreadable one: hash the frame
    digest = dataset_hash(manifest)
    memo = {"frame": key, "hiroml": __version__, "dataset_hash": digest}
    try:
        write_text_atomic(path, json.dumps(memo))
    except OSError as e:  # a memo that cannot be written costs time, never correctness
        log.debug("dataset hash memo %s not written: %s", path, e)
    return digest


# --------------------------------------------------------------------------- diff


@dataclass(frozen=True, slots=True)
class SplitMove:
    """A patient whose split changed from one version to the next."""

    patient_id: str
    patient_group: str
    from_split: str
    to_split: str
    reason: str


@dataclass(frozen=True, slots=True)
class DecisionChange:
    """An input zip whose audit decisions differ between two versions (``""``: absent)."""

    batch: str
    zip: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class VersionDiff:
    """What changed from version ``a`` (``""``: nothing before) to version ``b``."""

    a: str
    b: str
    samples_added: tuple[str, ...]
    samples_removed: tuple[str, ...]
    samples_changed: tuple[str, ...]  # in both, with other stored pixels (data_hash)
    #: manifest column -> samples (in both versions) whose value changed; a column added or
    #: removed counts every sample. Labels of a new clinical table show up here.
    columns_changed: dict[str, int]
    patients_added: tuple[str, ...]
    patients_removed: tuple[str, ...]
    added_per_split: dict[str, dict[str, int]]  # split -> {"patients": n, "samples": n}
    decisions: tuple[DecisionChange, ...]
    moves: tuple[SplitMove, ...]
    #: the environment lines (:func:`hiroml.doctor.environment_changes`) of the two versions'
    #: ``build.json``; empty where not compared (the report's changes section)
    environment: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.samples_added
            or self.samples_removed
            or self.samples_changed
            or self.columns_changed
            or self.patients_added
            or self.patients_removed
            or self.decisions
            or self.moves
        )

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lines(self, *, limit: int = 20) -> list[str]:
        """The diff as console text."""
        head = f"{self.a or '(nothing)'} -> {self.b}"
        out = [
            head,
            f"  samples: +{len(self.samples_added)} -{len(self.samples_removed)} "
            f"~{len(self.samples_changed)} (other pixels); "
            f"patients: +{len(self.patients_added)} -{len(self.patients_removed)}",
        ]
        for split, n in self.added_per_split.items():
            out.append(f"  new in {split}: {n['patients']} patient(s), {n['samples']} sample(s)")
        if self.columns_changed:
            cols = ", ".join(f"{c} ({n})" for c, n in self.columns_changed.items())
            out.append(f"  values changed (column, samples): {cols}")
        for title, items in (
            ("samples added", self.samples_added),
            ("samples removed", self.samples_removed),
            ("samples with other pixels", self.samples_changed),
            ("patients removed", self.patients_removed),
        ):
            if items:
                more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
                out.append(f"  {title}: {', '.join(items[:limit])}{more}")
        out.append(f"  split moves: {len(self.moves)}")
        for m in self.moves:
            out.append(
                f"    patient {m.patient_id} (group {m.patient_group}): "
                f"{m.from_split} -> {m.to_split}: {m.reason}"
            )
        out.append(f"  decisions changed: {len(self.decisions)}")
        for d in self.decisions[:limit]:
            out.append(
                f"    {d.batch}/{d.zip}: {d.before or '(absent)'} -> {d.after or '(absent)'}"
            )
        if len(self.decisions) > limit:
            out.append(f"    ... and {len(self.decisions) - limit} more")
        out.extend(f"  {line}" for line in self.environment)
        return out


def _read_tables(folder: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    cols = ["sample_key", "patient_id", "source_patient_id", "patient_group", "split", "data_hash"]
    if folder is None or not (folder / MANIFEST).is_file():
        return pd.DataFrame(columns=cols), pd.DataFrame(columns=["zip", "batch", "action"])
    m = pd.read_parquet(folder / MANIFEST)
    for c in cols:
        if c not in m.columns:
            m[c] = None
    audit_path = folder / "audit.csv"
    a = (
        pd.read_csv(audit_path, dtype=str, keep_default_na=False)
        if audit_path.is_file()
        else pd.DataFrame(columns=["zip", "batch", "action"])
    )
    return m, a


def _decisions_of(audit: pd.DataFrame) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], set[str]] = {}
    for r in audit.to_dict("records"):
        if r.get("reason") == SPLIT_MOVED:
            continue
        what = f"{r.get('action', '')}: {r.get('reason', '')}"
        if r.get("kept_as"):
            what += f" (kept as {r['kept_as']})"
        out.setdefault((str(r.get("batch", "")), str(r.get("zip", ""))), set()).add(what)
    return {k: "; ".join(sorted(v)) for k, v in out.items()}


#: columns whose change is reported otherwise (pixels: samples_changed) or is bookkeeping
_NOT_COMPARED = frozenset({"sample_key", "data_hash", "shard", "shard_sha256", "split"})


def _columns_changed(ma: pd.DataFrame, mb: pd.DataFrame) -> dict[str, int]:
    """Per manifest column, how many samples of both tables have another value in ``mb``."""
    if ma.empty or mb.empty:
        return {}
    a = ma.drop_duplicates("sample_key").set_index(ma["sample_key"].drop_duplicates().astype(str))
    b = mb.drop_duplicates("sample_key").set_index(mb["sample_key"].drop_duplicates().astype(str))
    common = a.index.intersection(b.index)
    if common.empty:
        return {}
    out: dict[str, int] = {}
    for col in sorted((set(a.columns) | set(b.columns)) - _NOT_COMPARED):
        if col not in a.columns or col not in b.columns:
            out[col] = len(common)
            continue
        pairs = zip(a.loc[common, col].tolist(), b.loc[common, col].tolist(), strict=True)
        n = sum(_differs(x, y) for x, y in pairs)
        if n:
            out[col] = n
    return out


def _differs(x: Any, y: Any) -> bool:
    """Whether two manifest cells have other canonical JSON texts. Text, integers, booleans,
    floats and None of one type on both sides are compared as values, and arrays of integers
    (the 1,024-value signatures) or of booleans as arrays: their texts are equal exactly when
    the values are (ints and bools are written as they are, a float as its repr, NaN as null;
    an int and a bool, or an int array and a bool array, always differ). The rest is compared
    by text."""
    t = type(x)
    if t is type(y):  # the usual cells: no text needed
        if t is str or t is int or t is bool or x is None:
            return bool(x != y)
        if t is float:  # NaN is written null; otherwise the text is the repr
            return not ((x != x and y != y) or repr(x) == repr(y))
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
        kx, ky = x.dtype.kind, y.dtype.kind
        if (kx in "iu" and ky in "iu") or kx == ky == "b":
            return x.shape != y.shape or not np.array_equal(x, y)
        if x.ndim == y.ndim == 1:  # a list's text is its elements' texts, in order
            lx, ly = x.tolist(), y.tolist()
            return len(lx) != len(ly) or any(_differs(a, b) for a, b in zip(lx, ly, strict=True))
    return _cell_text(x) != _cell_text(y)


def _cell_text(v: Any) -> str:
    return json.dumps(_canonical(_plain(v)), default=str)


def _plain(v: Any) -> Any:
    """A pandas/numpy cell as plain Python (arrays as lists, NaN/NaT as None)."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def diff_tables(
    a_dir: Path | None, b_dir: Path, *, a_name: str = "", b_name: str = ""
) -> VersionDiff:
    """What changed from the tables in ``a_dir`` (``None``: nothing) to those in ``b_dir``."""
    ma, aa = _read_tables(a_dir)
    mb, ab = _read_tables(b_dir)
    ka, kb = set(ma["sample_key"].astype(str)), set(mb["sample_key"].astype(str))
    pa_, pb = set(ma["patient_id"].astype(str)), set(mb["patient_id"].astype(str))
    new_p = pb - pa_
    hash_a = dict(zip(ma["sample_key"].astype(str), ma["data_hash"].astype(str), strict=True))
    changed = sorted(
        k
        for k, h in zip(mb["sample_key"].astype(str), mb["data_hash"].astype(str), strict=True)
        if k in hash_a and hash_a[k] != h
    )
    per_split: dict[str, dict[str, int]] = {}
    for split in SPLIT_ORDER:
        rows = mb[mb["split"] == split]
        per_split[split] = {
            "patients": len(set(rows["patient_id"].astype(str)) & new_p),
            "samples": len(set(rows["sample_key"].astype(str)) - ka),
        }
    before: dict[str, str] = {}
    for col in ("source_patient_id", "patient_id"):
        before.update(zip(ma[col].astype(str), ma["split"].astype(str), strict=True))
    reasons = {
        str(r["kept_as"]): str(r.get("detail", ""))
        for r in ab.to_dict("records")
        if r.get("reason") == SPLIT_MOVED
    }
    moves: dict[str, SplitMove] = {}
    cols = ("source_patient_id", "patient_id", "split")
    rows = zip(*(mb[c].astype(str) for c in cols), strict=True)
    groups = mb["patient_group"].astype(str)
    for (source, patient, new), group in zip(rows, groups, strict=True):
        for pid in dict.fromkeys((source, patient)):
            old = before.get(pid)
            if old is None or old == new or pid in moves:
                continue
            moves[pid] = SplitMove(
                patient_id=pid,
                patient_group=group,
                from_split=old,
                to_split=new,
                reason=reasons.get(group, "no split move is recorded in the audit"),
            )
    da, db = _decisions_of(aa), _decisions_of(ab)
    decisions = tuple(
        DecisionChange(batch=k[0], zip=k[1], before=da.get(k, ""), after=db.get(k, ""))
        for k in sorted(set(da) | set(db))
        if da.get(k, "") != db.get(k, "")
    )
    return VersionDiff(
        columns_changed=_columns_changed(ma, mb),
        a=a_name,
        b=b_name,
        samples_added=tuple(sorted(kb - ka)),
        samples_removed=tuple(sorted(ka - kb)),
        samples_changed=tuple(changed),
        patients_added=tuple(sorted(new_p)),
        patients_removed=tuple(sorted(pa_ - pb)),
        added_per_split=per_split,
        decisions=decisions,
        moves=tuple(moves[k] for k in sorted(moves)),
    )


def diff(out: Path | str, a: str | int, b: str | int) -> VersionDiff:
    """What changed from version ``a`` to version ``b`` of an output folder."""
    va, vb = find_version(out, a), find_version(out, b)
    if va is None or vb is None:
        raise VersionError(f"{out} has no versions to compare")
    found = diff_tables(va.path, vb.path, a_name=va.name, b_name=vb.name)
    env = environment_changes(_environment_of(va), _environment_of(vb))
    return dataclasses.replace(found, environment=tuple(env))


def _environment_of(v: Version) -> Any:
    """The ``environment`` of a version's ``build.json`` (None in versions built before it
    was recorded, or where the file cannot be read)."""
    try:
        return json.loads((v.path / BUILD_JSON).read_text(encoding="utf-8")).get("environment")
    except (OSError, ValueError, AttributeError):
        return None


def changes_html(d: VersionDiff, *, limit: int = 200) -> str:
    """The body of the report's "What changed since the previous version" section."""
    e = html.escape
    if not d.a:
        return f"<p class='note'>{e(d.b)} is the first version of this output.</p>"
    if d.empty:
        return f"<p class='note'>Nothing changed since {e(d.a)}.</p>"

    def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = [
        f"<p>{e(d.b)} against {e(d.a)}: {len(d.samples_added)} sample(s) added, "
        f"{len(d.samples_removed)} removed, {len(d.samples_changed)} with other stored pixels "
        f"(e.g. a conversion setting changed); {len(d.patients_added)} patient(s) added, "
        f"{len(d.patients_removed)} removed.</p>",
        (
            "<p>Values changed (column: samples): "
            + e(", ".join(f"{c}: {n}" for c, n in d.columns_changed.items()))
            + "</p>"
            if d.columns_changed
            else ""
        ),
        table(
            ["split", "new patients", "new samples"],
            [[s, str(n["patients"]), str(n["samples"])] for s, n in d.added_per_split.items()],
        ),
        f"<h3>Split moves ({len(d.moves)})</h3>",
    ]
    if d.moves:
        parts.append(
            table(
                ["patient", "group", "from", "to", "reason"],
                [
                    [m.patient_id, m.patient_group, m.from_split, m.to_split, m.reason]
                    for m in d.moves
                ],
            )
        )
    else:
        parts.append("<p class='note'>No patient changed split.</p>")
    parts.append(f"<h3>Decisions that changed ({len(d.decisions)})</h3>")
    if d.decisions:
        parts.append(
            table(
                ["batch", "zip", "before", "after"],
                [
                    [c.batch, c.zip, c.before or "(absent)", c.after or "(absent)"]
                    for c in d.decisions[:limit]
                ],
            )
        )
        if len(d.decisions) > limit:
            parts.append(f"<p class='note'>... and {len(d.decisions) - limit} more.</p>")
    if d.patients_removed:
        parts.append(
            f"<h3>Patients removed ({len(d.patients_removed)})</h3>"
            f"<p>{e(', '.join(d.patients_removed[:limit]))}</p>"
        )
    return "".join(parts)


# --------------------------------------------------------------------------- pins


def pin(out: Path | str, version: str | int, note: str = "") -> Version:
    """Protect a version from pruning (writes ``versions/<v>/PINNED``)."""
    v = find_version(out, version)
    if v is None:
        raise VersionError(f"{out} has no versions to pin")
    text = json.dumps({"pinned": _now(), "note": note})
    (v.path / PIN_FILE).write_text(text + "\n", encoding="utf-8")
    return dataclasses.replace(v, pinned=True)


def unpin(out: Path | str, version: str | int) -> Version:
    """Let a pinned version be pruned again."""
    v = find_version(out, version)
    if v is None:
        raise VersionError(f"{out} has no versions to unpin")
    (v.path / PIN_FILE).unlink(missing_ok=True)
    return dataclasses.replace(v, pinned=False)


# --------------------------------------------------------------------------- pruning


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

    Without ``sweep`` (``hiroml-versions --prune``, which may run beside a build) only the
    shards named by a removed version and by no kept one are deleted. With ``sweep`` (a build,
    which holds the output) every shard under ``shards/`` that no kept version names, and
    that is not in ``live_shards``, is deleted, and every task record in ``task_dir`` that is
    not in ``live_tasks`` and whose shards are no longer all there.
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: keep at least 1 version (versions.keep)")
    out = Path(out)
    found = list_versions(out)
    # a version folder left hidden by a killed prune, or (sweep: a build holds the output)
    # half written by a killed publish
    hidden = [".*.deleting", ".*.tmp"] if sweep else [".*.deleting"]
    for pattern in hidden if versions_dir(out).is_dir() else ():
        for p in versions_dir(out).glob(pattern):
            shutil.rmtree(p, ignore_errors=True)
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
    if sweep and (out / "shards").is_dir():
        candidates |= {f"shards/{p.name}" for p in (out / "shards").glob("*.h5*")}
    removed = []
    for rel in sorted(candidates - named):
        path = out / rel
        if path.exists():
            path.unlink(missing_ok=True)
            removed.append(rel)
            faults.point("during_prune")
    if sweep and (out / "shards").is_dir():
        # a shard writer's record (<task>.done.json) goes with the last of its shards
        live = set(live_tasks)
        for p in (out / "shards").glob("*.done.json"):
            prefix = p.name.removesuffix(".done.json")
            mine = [f"shards/{q.name}" for q in (out / "shards").glob(f"{prefix}*.h5")]
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


# --------------------------------------------------------------------------- publishing


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _same_file(a: Path, b: Path) -> bool:
    if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
        return False
    return a.read_bytes() == b.read_bytes()


def update_root(out: Path, version: Version) -> bool:
    """Make the root tables copies of ``version``'s, each replaced atomically, the manifest
    last; True when anything had to be copied."""
    changed = False
    files = sorted(p for p in version.path.iterdir() if p.is_file() and p.name not in _NOT_AT_ROOT)
    for src in [*files, version.path / MANIFEST]:
        dst = out / src.name
        if not _same_file(src, dst):
            copy_atomic(src, dst)
            changed = True
    return changed


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
    manifest: pd.DataFrame,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
    write_report: WriteReport,
    digest: str,
) -> VersionDiff:
    """The tables and report of a new version, into the hidden folder ``tmp``; the diff
    against the latest version (or the root tables of an output without versions)."""
    from hiroml.manifest import write_outputs

    write_outputs(tmp, manifest, patients, audit)
    prev_dir = latest.path if latest is not None else (out if (out / MANIFEST).is_file() else None)
    prev_name = latest.name if latest is not None else ("the root tables" if prev_dir else "")
    change = diff_tables(prev_dir, tmp, a_name=prev_name, b_name=name)
    write_report(tmp, name, changes_html(change), digest)
    return change


def _same_checksums(version: Version, manifest: pd.DataFrame) -> bool:
    """Whether ``version`` names the same shard files with the same checksums as ``manifest``."""
    cols = ["sample_key", "shard", "shard_sha256"]
    try:
        old = pd.read_parquet(version.path / MANIFEST, columns=cols)
    except (OSError, ValueError, KeyError):
        return False
    key = lambda df: sorted(zip(*(df[c].astype(str) for c in cols), strict=True))  # noqa: E731
    return key(old) == key(manifest)


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
    ``hiroml_version``, ``samples``, ``patients``, ``previous`` and ``changes`` added.
    """
    out = Path(out)
    _check_shards_present(out, manifest)
    digest = remembered_dataset_hash(out, manifest)
    latest = find_version(out)

    def pruned() -> Pruned:
        return prune(
            out, keep, sweep=True, live_shards=live_shards, live_tasks=live_tasks, task_dir=task_dir
        )

    if latest is not None and latest.dataset_hash == digest and _same_checksums(latest, manifest):
        if update_root(out, latest):
            log.warning(
                "root tables were behind version %s (interrupted publish): repaired", latest.name
            )
        return Published(latest, False, None, pruned())
    tables = (manifest, patients, audit)
    version, change = _publish_new(out, digest, latest, tables, write_report, build_info)
    log.info("published version %s (%d samples)", version.name, len(manifest))
    faults.point("before_root_tables")
    update_root(out, version)
    return Published(version, True, change, pruned())


def _check_shards_present(out: Path, manifest: pd.DataFrame) -> None:
    """Raise :class:`VersionError` when a shard the manifest names is not under ``out``."""
    missing = sorted(s for s in set(manifest["shard"].astype(str)) if not (out / s).is_file())
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
    tables: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    write_report: WriteReport,
    build_info: Mapping[str, Any],
) -> tuple[Version, VersionDiff]:
    """Write the version of ``tables`` (manifest, patients, audit) into a hidden folder, with
    its report and ``build.json``, then rename it into ``versions/`` (atomic: a failure
    leaves no half version behind)."""
    manifest, patients, audit = tables
    seq = max((v.seq for v in list_versions(out)), default=0) + 1
    name = f"{seq:04d}-{digest[:8]}"
    root = versions_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        change = _write_version(
            tmp, out, latest, name, manifest, patients, audit, write_report, digest
        )
        info = {
            **build_info,
            "version": name,
            "dataset_hash": digest,
            "created": _now(),
            "hiroml_version": __version__,
            "samples": len(manifest),
            "patients": len(patients),
            "previous": latest.name if latest is not None else None,
            "changes": _change_counts(change),
        }
        (tmp / BUILD_JSON).write_text(json.dumps(info, indent=2, default=str) + "\n", "utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half version behind
        raise
    os.replace(tmp, root / name)
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
    }


# --------------------------------------------------------------------------- the command


def _default_keep(out: Path) -> int:
    """``versions.keep`` of the latest build (its ``build.json``), else the default 10."""
    latest = find_version(out)
    if latest is not None:
        try:
            info = json.loads((latest.path / BUILD_JSON).read_text(encoding="utf-8"))
            return int(info["config"]["versions"]["keep"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return 10


def main(argv: list[str] | None = None) -> int:
    """``hiroml-versions OUT [--json] [--diff A B] [--pin V] [--unpin V] [--prune]``.

    ``--prune`` takes the output's build lock (:mod:`hiroml.lock`): it exits 3, naming the
    holder, while a build runs."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="hiroml-versions",
        description="List, compare, pin and prune the published versions of a hiroml output.",
    )
    parser.add_argument("out", type=Path, help="a hiroml output folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--diff", nargs=2, metavar=("A", "B"), help="what changed from A to B")
    parser.add_argument("--pin", metavar="V", help="protect version V from pruning")
    parser.add_argument("--note", default="", help="with --pin: why (e.g. the paper)")
    parser.add_argument("--unpin", metavar="V", help="let version V be pruned again")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="remove unpinned versions beyond --keep and the shards only they named",
    )
    parser.add_argument(
        "--keep",
        type=int,
        default=None,
        help="versions to keep (default: the build's versions.keep)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    try:
        if not out.is_dir():
            raise VersionError(f"{out} is not a folder (give a hiroml output folder)")
        if args.pin:
            v = pin(out, args.pin, args.note)
            print(f"pinned {v.name}")
        if args.unpin:
            v = unpin(out, args.unpin)
            print(f"unpinned {v.name}")
        if args.prune:
            from hiroml.lock import build_lock

            keep = args.keep if args.keep is not None else _default_keep(out)
            if keep < 1:
                raise VersionError(f"--keep {keep}: keep at least 1 version")
            with build_lock(out):  # no build runs meanwhile: every unnamed shard can go
                done = prune(out, keep, sweep=True, task_dir=out / ".hiroml" / "tasks")
            print(
                f"pruned {len(done.versions)} version(s) "
                f"({', '.join(done.versions) or 'none'}) and {len(done.shards)} shard(s)"
            )
        if args.diff:
            d = diff(out, args.diff[0], args.diff[1])
            print(json.dumps(d.as_json(), indent=2) if args.json else "\n".join(d.lines()))
            return 0
        if args.pin or args.unpin or args.prune:
            return 0
        found = list_versions(out)
        if args.json:
            print(json.dumps([v.as_json() for v in reversed(found)], indent=2))
            return 0
        if not found:
            print(f"{out}: no versions (an output of the first release, or no build yet)")
            return 0
        print(f"{'version':<16} {'created':<26} {'samples':>8} {'patients':>8}  pinned")
        for v in reversed(found):
            mark = "pinned" if v.pinned else ""
            print(f"{v.name:<16} {v.created:<26} {v.samples:>8} {v.patients:>8}  {mark}")
        return 0
    except OutputLockedError as e:
        print(f"hiroml-versions: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except (HiromlError, OSError) as e:
        print(f"hiroml-versions: {e}", file=sys.stderr)
        return 1
