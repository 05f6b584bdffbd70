"""The output tables of docs/design.md section 4: ``manifest.parquet``, ``patients.parquet`` and
``audit.csv``, written atomically (:mod:`hiroml.store.atomic`), the manifest last;
:mod:`hiroml.store.contract` checks a written folder against them (the same checks as the shared
``check_output_contract.py``).

Column types in ``manifest.parquet``: list columns are parquet lists (``source_zips``,
``sop_uids``, ``pixel_hashes``: strings; ``shape``, ``size_xyz``: int64; ``spacing_xyz``,
``origin_xyz``, ``direction``: float64, mm, SimpleITK (x, y, z) order; null on CXR rows),
``exam_time`` a timestamp, ``age_years`` and ``days_from_encounter`` nullable float64,
``orphan`` bool. ``shape`` is the stored array's numpy shape: CXR (y, x), CT (z, y, x).

Leakage columns (:mod:`hiroml.exams.linking`): ``signature``, a list of 1024 **uint8** values on
radiograph rows (null for CT): the rank-normalised 32 x 32 area-downsampled thumbnail of the
stored array, row-major (:func:`hiroml.exams.neardup.signature`); ``near_duplicates``, a list of
the sample keys of other patient groups' radiographs whose signature's rank correlation with
this one reached ``splits.near_duplicate_threshold``, sorted; at most
:data:`hiroml.exams.linking.NEAR_DUPLICATES_LISTED` (100) keys, the smallest, when thousands of
images are near-identical (the build log then warns). ``patients.parquet`` gains ``links``,
a list of strings: the evidence of each link that joined the group (identical decoded
pixels; near duplicates: one link per pair that joined two groups not joined yet), naming
both samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from itertools import chain
from operator import attrgetter
from pathlib import Path
from types import NoneType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hiroml.errors import ManifestError
from hiroml.records import PART, AuditRow, ManifestRow
from hiroml.store.atomic import write_atomic
from hiroml.store.csvcells import escape_frame
from hiroml.vocab import AUDIT, MANIFEST, PATIENTS, Action, Split, View


def _columns(part: str) -> list[str]:
    """The manifest columns of one part of the contract, in order (from :class:`ManifestRow`)."""
    return [f.name for f in fields(ManifestRow) if f.metadata[PART] == part]


MANIFEST_COLUMNS = _columns("core")
CT_COLUMNS = _columns("ct")
EXTRA_COLUMNS = _columns("extra")
OPTIONAL_COLUMNS = {
    f.name: f.default for f in fields(ManifestRow) if f.metadata[PART] == "optional"
}
#: written by the leakage step (:mod:`hiroml.exams.linking`), after the samples' own columns
LINK_COLUMNS = ["signature", "near_duplicates"]
#: every column hiroml itself writes: never taken for a clinical label (the card's prevalence
#: table, hiroml-export's index.csv); any other column is the user's
OWN_COLUMNS = frozenset([f.name for f in fields(ManifestRow)] + LINK_COLUMNS)
AUDIT_COLUMNS = ["zip", "batch", "action", "reason", "kept_as", "detail"]
PATIENT_COLUMNS = ["patient_group", "patient_ids", "split", "n_samples", "n_cxr", "n_ct"]
ACTIONS = frozenset(Action)
SPLIT_VALUES = frozenset(Split)
VIEWS = frozenset(View)
#: rows of a ``manifest.parquet`` row group: the writer encodes one row group at a time, and
#: the ``signature`` column's list of 1,024 uint8 per radiograph costs it about 16 bytes of
#: temporaries per value (6,000 rows in one group: +80 MB; 256 rows a group: +15 MB at any
#: size). A manifest of fewer rows is one row group.
MANIFEST_ROW_GROUP_ROWS = 256

_LIST_TYPES: dict[str, pa.DataType] = {
    "source_zips": pa.list_(pa.string()),
    "sop_uids": pa.list_(pa.string()),
    "pixel_hashes": pa.list_(pa.string()),
    "patient_ids": pa.list_(pa.string()),
    "shape": pa.list_(pa.int64()),
    "size_xyz": pa.list_(pa.int64()),
    "spacing_xyz": pa.list_(pa.float64()),
    "origin_xyz": pa.list_(pa.float64()),
    "direction": pa.list_(pa.float64()),
    "signature": pa.list_(pa.uint8()),
    "near_duplicates": pa.list_(pa.string()),
    "links": pa.list_(pa.string()),
    "stitched_series": pa.list_(pa.string()),
    "seams_mm": pa.list_(pa.float64()),
    "seam_slices": pa.list_(pa.int64()),
}
_SCALAR_TYPES: dict[str, pa.DataType] = {
    "age_years": pa.float64(),
    "days_from_encounter": pa.float64(),
    "orphan": pa.bool_(),
    "frame": pa.int64(),  # radiographs: 0-based frame, 0 for single-frame; null for CT
    "for_processing": pa.bool_(),
}
_STRING_COLUMNS = [
    c for c in [*MANIFEST_COLUMNS, *EXTRA_COLUMNS]
    if c not in _LIST_TYPES and c not in _SCALAR_TYPES and c != "exam_time"
]  # fmt: skip


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # arrays and lists
        return False


#: element types a list value is written as it is (no ``.item()`` per element)
_PLAIN = frozenset({int, float, str, bool})


def _as_list(v: Any) -> list[Any] | None:
    if type(v) is np.ndarray and v.dtype == object and v.ndim == 1:  # read back: text arrays
        items = v.tolist()
        if all(type(x) is str for x in items):
            return items
    if isinstance(v, list | tuple) and len(v) == 1 and type(v[0]) is str:  # one text
        return [v[0]]
    if isinstance(v, list | tuple | np.ndarray) and len(v) > 1:  # never missing
        if isinstance(v, np.ndarray) and v.dtype.kind in "iufb":
            return v.tolist()
        if set(map(type, v)) <= _PLAIN:
            return list(v)
        return [x.item() if hasattr(x, "item") else x for x in v]
    if _is_missing(v):
        return None
    if isinstance(v, str):
        return [v]
    return [x.item() if hasattr(x, "item") else x for x in v]


def _list_array(values: list[Any], typ: pa.ListType) -> pa.Array:
    """A list column: numbers in lists of one length (the radiographs' 1,024-value
    ``signature``) through numpy in one step; cells that are all lists, tuples or None in
    one pyarrow call; anything else (numpy arrays read back, NaN cells, a bare text) per
    cell. Each gives the same array as :func:`_as_list` per cell."""
    kind = typ.value_type
    kinds = set(map(type, values))  # the cells' types, each once
    if kind == pa.uint8() and values and kinds <= {bytes, NoneType}:
        return _byte_lists(values)  # the driver's signatures (null for CT)
    if values and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        fast = _uniform_numbers(values, kind, kinds)
        if fast is not None:
            return fast
    if kinds <= {list, tuple, NoneType}:
        try:  # the cells the driver builds: pyarrow converts them as they are, in one call
            return pa.array(values, type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass  # e.g. text in a number column: per cell, which raises as it always has
    return pa.array([_as_list(v) for v in values], type=typ)


def _byte_lists(values: list[bytes | None]) -> pa.Array:
    """Cells of bytes or None as a list<uint8> array, each byte a value (as pyarrow makes of
    the same cells, 20 to 100 times faster): one join of the bytes, their lengths as offsets."""
    sizes = np.fromiter((0 if v is None else len(v) for v in values), np.int64, len(values))
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    flat = np.frombuffer(b"".join(v for v in values if v is not None), dtype=np.uint8)
    missing = pa.array(np.fromiter((v is None for v in values), bool, len(values)))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat), mask=missing)


#: rows of a list column converted through numpy at a time: the int64 grid numpy makes of
#: Python ints stays small (4 MB for 1,024-value signatures) however many rows there are
_GRID_ROWS = 512


def _uniform_numbers(
    values: list[Any], kind: pa.DataType, kinds: set[type] | None = None
) -> pa.Array | None:
    """``values`` as a list array through numpy, when every cell is a sequence of numbers of
    one length; None otherwise. ``kinds``: the cells' types, where the caller has them."""
    if kinds is None:
        kinds = set(map(type, values))
    if not all(issubclass(k, tuple | list | np.ndarray) for k in kinds):
        return None
    want = np.dtype(kind.to_pandas_dtype())
    parts: list[np.ndarray] = []
    for start in range(0, len(values), _GRID_ROWS):
        part = _grid(values[start : start + _GRID_ROWS], want)
        if part is None or (parts and part.shape[1] != parts[0].shape[1]):
            return None
        parts.append(part)
    grid = np.concatenate(parts)
    flat = pa.array(grid.reshape(-1), type=kind)
    offsets = pa.array(np.arange(0, grid.size + 1, grid.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def _grid(values: list[Any], want: np.dtype) -> np.ndarray | None:
    """``values`` (lists of numbers of one length) as a 2-D array of ``want``; None where
    pyarrow's per-value rules must decide (ragged, floats into integers, out of range)."""
    fast = _byte_grid(values) if want == np.uint8 else None
    if fast is not None:
        return fast
    try:
        grid = np.asarray(values)
    except ValueError:  # ragged
        return None
    if grid.ndim != 2 or grid.shape[1] < 2 or grid.dtype.kind not in "iuf":
        return None
    if grid.dtype.kind == "f" and want.kind != "f":
        return None  # floats into an integer column: pyarrow's per-value rules
    if want.kind in "iu" and grid.size:
        info = np.iinfo(want)
        if grid.min() < info.min or grid.max() > info.max:
            return None  # out of range: the per-cell path raises as it always has
    return grid.astype(want, copy=False)


def _byte_grid(values: list[Any]) -> np.ndarray | None:
    """Tuples of one length (2 or more) of integers in 0..255 (the driver's signatures) as a
    uint8 grid, joined as bytes: 3x faster than numpy's conversion of the tuples, the same
    grid. None for anything else."""
    if not values or not all(type(v) is tuple for v in values):
        return None
    width = len(values[0])
    if width < 2 or any(len(v) != width for v in values):
        return None
    try:
        flat = b"".join(map(bytes, values))
    except (TypeError, ValueError):  # not integers, or out of range: numpy decides
        return None
    return np.frombuffer(flat, dtype=np.uint8).reshape(len(values), width).copy()


def _text(v: Any) -> str | None:
    if type(v) is str:  # the usual cell: no pd.isna
        return v
    return None if _is_missing(v) else str(v)


def _scalar(v: Any) -> Any:
    t = type(v)
    if t is int or t is bool:  # the usual cells: no pd.isna
        return v
    if t is float:
        return None if v != v else v
    if _is_missing(v):
        return None
    return v.item() if hasattr(v, "item") else v


def _to_table(df: pd.DataFrame) -> pa.Table:
    arrays, names = [], []
    for col in df.columns:
        if col in _LIST_TYPES:
            arr = _list_array(df[col].tolist(), _LIST_TYPES[col])
        elif col in _SCALAR_TYPES:
            arr = _scalar_array(df[col], _SCALAR_TYPES[col])
        elif col == "exam_time":
            arr = pa.array(
                pd.to_datetime(df[col]).astype("datetime64[us]"), type=pa.timestamp("us")
            )
        elif col in _STRING_COLUMNS:
            arr = _text_array(df[col])
        else:  # labels and other extras: let arrow infer
            arr = pa.array(df[col], from_pandas=True)
        arrays.append(arr)
        names.append(str(col))
    return pa.Table.from_arrays(arrays, names=names)


def _text_array(values: pd.Series) -> pa.Array:
    """A text column: a pandas text column as the Arrow array it holds (missing cells null),
    anything else cell by cell (:func:`_text`)."""
    if isinstance(values.dtype, pd.StringDtype):
        arr = pa.array(values.array, from_pandas=True)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        return arr.cast(pa.string())
    return pa.array([_text(v) for v in values.tolist()], type=pa.string())


#: numpy kinds whose columns convert to each scalar type as they are (NaN: null)
_SCALAR_KINDS = {pa.float64(): "f", pa.int64(): "i", pa.bool_(): "b"}


def _scalar_array(values: pd.Series, typ: pa.DataType) -> pa.Array:
    """A number or flag column: a numpy column of the type's own kind (float64, int64, bool)
    as it is, NaN as null; a column with no value at all as nulls; anything else cell by
    cell (:func:`_scalar`)."""
    dtype, kind = values.dtype, _SCALAR_KINDS.get(typ)
    if isinstance(dtype, np.dtype) and dtype.kind == kind and (kind == "b" or dtype.itemsize == 8):
        return pa.array(values.to_numpy(), type=typ, from_pandas=True)
    if isinstance(dtype, np.dtype) and dtype.kind == "O" and bool(values.isna().all()):
        return pa.nulls(len(values), typ)
    return pa.array([_scalar(v) for v in values.tolist()], type=typ)


def value_problems(m: pd.DataFrame) -> list[str]:
    """What is wrong with the values of a manifest that has its columns (empty: nothing):
    unique ``sample_key``, the allowed splits, modalities and views, 3 or 9 numbers in the
    CT geometry columns (``size_xyz``, ``spacing_xyz``, ``origin_xyz``: x, y, z; ``direction``:
    row-major 3x3). The one check of both
    :func:`validate_manifest` (before writing) and :func:`hiroml.store.contract.check_tables`
    (after)."""
    bad = []
    if not m["sample_key"].is_unique:
        dupes = sorted(set(m.loc[m["sample_key"].duplicated(), "sample_key"]))[:5]
        bad.append(f"sample_key not unique: {dupes}")
    for col, allowed in (("split", SPLIT_VALUES), ("modality", {"cxr", "ct"})):
        extra = set(m[col].astype(str).unique()) - allowed
        if extra:
            bad.append(f"{col} has values {sorted(extra)}")
    views = set(m.loc[m["modality"] == "cxr", "view"].astype(str).unique())
    if views - VIEWS:
        bad.append(f"view has values {sorted(views - VIEWS)}")
    ct = m[m["modality"] == "ct"]
    for c, n in (("size_xyz", 3), ("spacing_xyz", 3), ("origin_xyz", 3), ("direction", 9)):
        if c in ct.columns and not all(_as_list(v) is not None and len(v) == n for v in ct[c]):
            bad.append(f"{c} must hold {n} numbers on every CT row")
    return bad


def validate_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with optional columns filled in; raises :class:`ManifestError` naming
    every missing column or bad value."""
    m = manifest.copy()
    has_ct = bool((m["modality"] == "ct").any()) if "modality" in m.columns else False
    missing = [c for c in [*MANIFEST_COLUMNS, *EXTRA_COLUMNS] if c not in m.columns]
    missing += [c for c in CT_COLUMNS if has_ct and c not in m.columns]
    if missing:
        raise ManifestError(f"manifest lacks columns: {', '.join(missing)}")
    for c in CT_COLUMNS:
        if c not in m.columns:
            m[c] = None
    for c, default in OPTIONAL_COLUMNS.items():
        if c not in m.columns:
            m[c] = default
    bad = value_problems(m)
    if bad:
        raise ManifestError("manifest: " + "; ".join(bad))
    return m


def audit_frame(rows: Iterable[AuditRow]) -> pd.DataFrame:
    """audit.csv's rows from :class:`AuditRow` records (AUDIT_COLUMNS first)."""
    columns = [*AUDIT_COLUMNS, "exam_key", "member"]  # AuditRow.code is not written
    rows = rows if isinstance(rows, Sequence) else list(rows)
    if not rows:
        return pd.DataFrame.from_records([], columns=columns)
    # column by column: no dict per row
    texts = {k: list(map(str, map(attrgetter(k), rows))) for k in columns}
    return pd.DataFrame(texts, columns=columns)


def patients_frame(
    manifest: pd.DataFrame, group_members: Mapping[str, Sequence[str]] | None = None
) -> pd.DataFrame:
    """One row per patient group of the manifest (a row without a group is in none), sorted by
    group: its patient ids (current, source and those of ``group_members``) sorted, its
    splits sorted and joined with ``","``, and its sample counts; groups, ids and splits as
    text. Column-wise: one factorization of the groups, then counts and sorted pairs."""
    if manifest.empty:
        return pd.DataFrame([], columns=PATIENT_COLUMNS)
    keep = ~manifest["patient_group"].isna().to_numpy()
    group = _cell_texts(manifest["patient_group"])[keep]
    codes, groups = pd.factorize(group, sort=True)
    n = len(groups)
    if not n:
        return pd.DataFrame([], columns=PATIENT_COLUMNS)
    modality = manifest["modality"].to_numpy()[keep]
    member_codes, member_ids = _member_pairs(groups, group_members or {})
    ids = _sorted_pairs(
        np.concatenate([codes, codes, member_codes]),
        np.concatenate(
            [
                _cell_texts(manifest["patient_id"])[keep],
                _cell_texts(manifest["source_patient_id"])[keep],
                member_ids,
            ]
        ),
        n,
    )
    splits = _sorted_pairs(codes, _cell_texts(manifest["split"])[keep], n)
    return pd.DataFrame(
        {
            "patient_group": [str(g) for g in groups],
            "patient_ids": ids,
            "split": [s[0] if len(s) == 1 else ",".join(s) for s in splits],
            "n_samples": np.bincount(codes, minlength=n).astype(np.int64),
            "n_cxr": np.bincount(codes[modality == "cxr"], minlength=n).astype(np.int64),
            "n_ct": np.bincount(codes[modality == "ct"], minlength=n).astype(np.int64),
        },
        columns=PATIENT_COLUMNS,
    )


def _member_pairs(
    groups: np.ndarray, members: Mapping[str, Sequence[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """The (group code, patient id as text) pairs of ``members`` whose group is one of
    ``groups`` (a code is the group's index there)."""
    keys = list(members)
    sizes = np.fromiter((len(members[k]) for k in keys), np.int64, len(keys))
    ids = pd.Series(list(chain.from_iterable(members[k] for k in keys)), dtype=object)
    codes = pd.Index(groups).get_indexer(np.repeat(np.array(keys, dtype=object), sizes))
    found = codes >= 0
    return codes[found].astype(np.int64), _cell_texts(ids)[found]


def _cell_texts(values: pd.Series) -> np.ndarray:
    """``str(v)`` of each cell, as an object array (a text column as it is)."""
    if isinstance(values.dtype, pd.StringDtype) and not values.hasnans:
        return values.to_numpy(dtype=object)
    return np.array([v if type(v) is str else str(v) for v in values.tolist()], dtype=object)


def _sorted_pairs(codes: np.ndarray, texts: np.ndarray, n: int) -> list[list[str]]:
    """For each code 0..n-1, the distinct ``texts`` paired with it, sorted: each pair as one
    integer (the code, then the text's rank), so that numpy sorts and dedupes them."""
    ranks, uniques = pd.factorize(texts, sort=True)
    width = max(len(uniques), 1)
    pairs = np.unique(codes.astype(np.int64) * width + ranks)
    flat = np.asarray(uniques, dtype=object)[pairs % width].tolist()
    ends = np.cumsum(np.bincount(pairs // width, minlength=n)).tolist()
    return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def manifest_table(manifest: pd.DataFrame) -> pa.Table:
    """The manifest as ``manifest.parquet`` holds it: validated (:func:`validate_manifest`,
    which raises :class:`ManifestError`), optional columns filled in, each column typed as
    the module docstring says."""
    return _to_table(validate_manifest(manifest).reset_index(drop=True))


def write_outputs(
    out_dir: Path,
    manifest: pd.DataFrame | pa.Table,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
) -> None:
    """Write patients.parquet, audit.csv and, last, manifest.parquet into ``out_dir``, each
    to a temporary name first and then renamed, after validating the columns. A manifest
    given as a pyarrow table is one :func:`manifest_table` made (validated already)."""
    out_dir = Path(out_dir)
    manifest_arrow = manifest if isinstance(manifest, pa.Table) else manifest_table(manifest)
    missing = [c for c in PATIENT_COLUMNS if c not in patients.columns]
    missing += [f"audit.{c}" for c in AUDIT_COLUMNS if c not in audit.columns]
    if missing:
        raise ManifestError(f"patients/audit lack columns: {', '.join(missing)}")
    bad_actions = set(audit["action"].astype(str).unique()) - ACTIONS
    if bad_actions:
        raise ManifestError(f"audit has actions {sorted(bad_actions)}; allowed {sorted(ACTIONS)}")
    out_dir.mkdir(parents=True, exist_ok=True)

    patients_table = _to_table(patients.reset_index(drop=True))
    write_atomic(out_dir / PATIENTS, lambda tmp: pq.write_table(patients_table, tmp))
    safe = escape_frame(audit)  # no cell a spreadsheet would run as a formula
    write_atomic(out_dir / AUDIT, lambda tmp: safe.to_csv(tmp, index=False))
    write_atomic(
        out_dir / MANIFEST,
        lambda tmp: pq.write_table(manifest_arrow, tmp, row_group_size=MANIFEST_ROW_GROUP_ROWS),
    )
