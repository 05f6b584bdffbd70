"""Per-column counts of changed values between two manifests, on their Arrow columns.

The version diff counts, per manifest column, the samples of both versions whose value
changed (:attr:`hiroml.versions.changes.VersionDiff.columns_changed`): two values differ when
their canonical JSON texts differ. A weekly build diffs every sample; comparing cell by cell
in Python costs about 40 calls per sample. Here a column of one Arrow type on both sides is
compared with vectorised Arrow and numpy operations, with the same outcome as the texts:
integers, booleans, text and timestamps by value; floats by their bits (``-0.0`` is not
``0.0``), NaN as null; a null is equal only to a null; lists by length, then element by
element by the same rules. A column whose types differ between the two manifests, or of
another type (structs, dictionaries), is left to the caller's cell-by-cell comparison.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: rows of a manifest column decoded at a time (:meth:`ParquetColumns.column`)
BATCH_ROWS = 512


@dataclass(frozen=True, slots=True)
class ParquetColumns:
    """A parquet file read one column at a time, so that comparing two manifests holds two
    columns in memory, not two whole tables."""

    path: Path
    column_names: tuple[str, ...]
    num_rows: int

    @classmethod
    def open(cls, path: Path) -> ParquetColumns:
        meta = pq.read_metadata(path)
        return cls(Path(path), tuple(pq.read_schema(path).names), meta.num_rows)

    def column(self, name: str) -> pa.ChunkedArray:
        """Column ``name``, decoded :data:`BATCH_ROWS` rows at a time: read whole, the
        1,024-value signatures of 6,300 samples (6.5 MB) took 150 MB of decoding buffers."""
        file = pq.ParquetFile(self.path)
        chunks = [b.column(0) for b in file.iter_batches(batch_size=BATCH_ROWS, columns=[name])]
        return pa.chunked_array(chunks, type=file.schema_arrow.field(name).type)


#: a manifest to compare: a table, or a parquet file read column by column
Columns: TypeAlias = pa.Table | ParquetColumns


def select(source: Columns, names: Iterable[str]) -> pa.Table:
    """The columns ``names`` of ``source`` as a table."""
    names = list(names)
    return pa.table({n: source.column(n) for n in names}) if names else pa.table({})


def common_rows(ka: pa.Array, kb: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into ``a`` and ``b`` of the sample keys both hold (the first row of a
    key that occurs twice), in ``b``'s order."""
    ka, kb = ka.cast(pa.string()), kb.cast(pa.string())
    in_a = pc.index_in(kb, value_set=ka).to_numpy(zero_copy_only=False)
    first_b = pc.index_in(kb, value_set=kb).to_numpy(zero_copy_only=False)
    rows_b = np.flatnonzero(~np.isnan(in_a.astype(np.float64)) & (first_b == np.arange(len(kb))))
    return in_a[rows_b].astype(np.int64), rows_b


def comparable(a: pa.DataType, b: pa.DataType) -> bool:
    """Whether :func:`count_changed` compares columns of these types."""
    if a != b:
        return False
    while pa.types.is_list(a) or pa.types.is_large_list(a):
        a = a.value_type
    return bool(
        pa.types.is_integer(a)
        or pa.types.is_floating(a)
        or pa.types.is_boolean(a)
        or pa.types.is_string(a)
        or pa.types.is_large_string(a)
        or pa.types.is_timestamp(a)
        or pa.types.is_null(a)
    )


def count_changed(a: pa.Array, b: pa.Array) -> int:
    """How many rows of ``a`` and ``b`` (one row each, aligned, one :func:`comparable` type)
    hold values whose canonical texts differ."""
    return int(_differing(a, b).sum())


def _valid(arr: pa.Array) -> np.ndarray:
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_floating(arr.type):  # NaN is written null
        nan = pc.fill_null(pc.is_nan(arr), False).to_numpy(zero_copy_only=False)
        valid &= ~np.asarray(nan, dtype=bool)
    return valid


def _differing(a: pa.Array, b: pa.Array) -> np.ndarray:
    """One bool per row: whether the two rows' canonical texts differ."""
    t = a.type
    if pa.types.is_integer(t) and not a.null_count and not b.null_count:
        return np.asarray(a.to_numpy() != b.to_numpy())  # the signatures' values: no copies
    va, vb = _valid(a), _valid(b)
    out = va != vb
    both = va & vb
    if pa.types.is_null(t) or not both.any():
        return out
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        la = pc.fill_null(pc.list_value_length(a), 0).to_numpy(zero_copy_only=False)
        lb = pc.fill_null(pc.list_value_length(b), 0).to_numpy(zero_copy_only=False)
        out |= both & (la != lb)
        same = both & (la == lb)
        if same.any():  # equal lengths: the elements line up, row for row
            keep = pa.array(same)
            fa, fb = (a, b) if same.all() else (a.filter(keep), b.filter(keep))
            bad = np.flatnonzero(_differing(fa.flatten(), fb.flatten()))
            if bad.size:  # the row of each differing element, from the list offsets
                ends = fa.offsets.to_numpy()[1:] - fa.offsets[0].as_py()
                parents = np.searchsorted(ends, bad, side="right")
                out[np.flatnonzero(same)[np.unique(parents)]] = True
        return out
    if pa.types.is_floating(t):  # the bits: -0.0 is not 0.0 in the texts
        xa = a.cast(pa.float64()).to_numpy(zero_copy_only=False).view(np.int64)
        xb = b.cast(pa.float64()).to_numpy(zero_copy_only=False).view(np.int64)
        return out | (both & (xa != xb))
    eq = pc.fill_null(pc.equal(a, b), True).to_numpy(zero_copy_only=False)
    return out | (both & ~np.asarray(eq, dtype=bool))


def changed_counts(
    ta: Columns, tb: Columns, columns: Iterable[str], rows: tuple[np.ndarray, np.ndarray]
) -> tuple[dict[str, int], list[str]]:
    """Per column of ``columns`` both tables hold with :func:`comparable` types, the
    number of the aligned ``rows`` (:func:`common_rows`) whose values differ (columns with
    none left out), and the columns left for a cell-by-cell comparison."""
    ia, ib = pa.array(rows[0]), pa.array(rows[1])
    whole = (_every_row(ta, rows[0]), _every_row(tb, rows[1]))
    counts: dict[str, int] = {}
    rest = []
    for col in columns:
        ca, cb = ta.column(col).combine_chunks(), tb.column(col).combine_chunks()
        if not comparable(ca.type, cb.type):
            rest.append(col)
            continue
        n = count_changed(ca if whole[0] else ca.take(ia), cb if whole[1] else cb.take(ib))
        if n:
            counts[col] = n
    return counts, rest


def _every_row(table: Columns, rows: np.ndarray) -> bool:
    """True when ``rows`` are all of ``table``'s rows in order (the previous manifest, when
    the new one keeps every sample): its columns are compared as they are, not copied."""
    return len(rows) == table.num_rows and bool(np.array_equal(rows, np.arange(len(rows))))
