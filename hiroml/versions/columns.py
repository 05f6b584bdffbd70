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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: rows of a large column decoded at a time (:meth:`ParquetColumns.column`)
BATCH_ROWS = 512
#: leaf values from which a column is large: decoded :data:`BATCH_ROWS` rows at a time
BULK_VALUES = 1_000_000
#: rows of two integer list columns compared at a time (:func:`_integer_lists_differing`):
#: the copies of 256 signatures (256 KB a side) reuse the heap's pages; copies of every
#: row (6.5 MB a side at 6,300 samples) take fresh pages from the kernel, twice the time
COMPARE_ROWS = 256


@dataclass(frozen=True, slots=True)
class ParquetColumns:
    """A parquet file read for comparing two manifests: its large columns one at a time, so
    that the comparison holds one of them in memory, not the whole table; the others in one
    read, the first time one of them is asked for."""

    path: Path
    column_names: tuple[str, ...]
    num_rows: int
    file: pq.ParquetFile = field(compare=False, repr=False)
    #: large columns kept beside the manifest (:mod:`hiroml.versions.keptcolumns`)
    kept: dict[str, pa.ChunkedArray] = field(default_factory=dict, compare=False, repr=False)
    _small: dict[str, pa.ChunkedArray] = field(default_factory=dict, compare=False, repr=False)
    _values: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def open(
        cls, path: Path, kept: Callable[[pq.ParquetFile], dict[str, pa.ChunkedArray]] | None = None
    ) -> ParquetColumns:
        """The manifest file ``path``; ``kept(file)``: the large columns kept for it
        (:func:`hiroml.versions.keptcolumns.find`), used instead of decoding them."""
        file = pq.ParquetFile(path)  # its footer read once, for every column
        found = kept(file) if kept is not None else {}
        return cls(Path(path), tuple(file.schema_arrow.names), file.metadata.num_rows, file, found)

    def column(self, name: str) -> pa.ChunkedArray:
        """Column ``name``. A large one (over :data:`BULK_VALUES` leaf values) is the kept
        copy where there is one, mapped as it is; else decoded :data:`BATCH_ROWS` rows at a
        time: read whole, the 1,024-value signatures of 6,300 samples (6.5 MB) take 150 MB
        of decoding buffers. The others are read together once, and kept: one read of 38
        columns takes a third of the time of 38 reads."""
        if name in self._small:
            return self._small[name]
        large = self._large()
        if name in large and name in self.kept:
            return self.kept[name]
        if name in large:
            typ = self.file.schema_arrow.field(name).type
            batches = self.file.iter_batches(batch_size=BATCH_ROWS, columns=[name])
            return pa.chunked_array([b.column(0) for b in batches], type=typ)
        small = [n for n in self.column_names if n not in large]
        table = self.file.read(columns=small, use_threads=False)
        self._small.update(zip(small, table.columns, strict=True))
        return self._small[name]

    def _large(self) -> set[str]:
        """The columns of more than :data:`BULK_VALUES` leaf values, counted once in the
        footer over every row group (the first alone could hold only CT rows, whose
        signatures are null)."""
        if not self._values:
            meta = self.file.metadata
            tops = [meta.schema.column(j).path.split(".")[0] for j in range(meta.num_columns)]
            self._values.update(dict.fromkeys(tops, 0))
            for i in range(meta.num_row_groups):
                group = meta.row_group(i)
                for j, top in enumerate(tops):
                    self._values[top] += group.column(j).num_values
        return {n for n, v in self._values.items() if v > BULK_VALUES}


#: a manifest to compare: a table, or a parquet file read column by column
Columns: TypeAlias = pa.Table | ParquetColumns


def select(source: Columns, names: Iterable[str]) -> pa.Table:
    """The columns ``names`` of ``source`` as a table."""
    names = list(names)
    return pa.table({n: source.column(n) for n in names}) if names else pa.table({})


def texts(source: Columns | None, name: str) -> pa.Array:
    """Column ``name`` of ``source`` as one string array (null where a cell is missing, and
    every row null where ``source`` lacks the column); empty when ``source`` is None."""
    if source is None:
        return pa.array([], pa.string())
    if name not in source.column_names:
        return pa.nulls(source.num_rows, pa.string())
    return source.column(name).combine_chunks().cast(pa.string())


def present(values: pa.Array) -> pa.Array:
    """The distinct non-null values of ``values``."""
    return pc.unique(values.drop_null())


def not_in(values: pa.Array, others: pa.Array) -> pa.Array:
    """The non-null values of ``values`` that ``others`` does not hold, in order."""
    values = values.drop_null()
    return values.filter(pc.invert(pc.is_in(values, value_set=others.drop_null())))


def sorted_texts(values: pa.Array) -> tuple[str, ...]:
    """The distinct non-null texts of ``values``, sorted."""
    return tuple(sorted(present(values).to_pylist()))


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
        ca, cb = one_array(ta.column(col)), one_array(tb.column(col))
        if not comparable(ca.type, cb.type):
            rest.append(col)
            continue
        lists = _integer_lists_differing(ca, cb, rows)
        if lists is not None:
            n = int(lists.sum())
        else:
            n = count_changed(ca if whole[0] else ca.take(ia), cb if whole[1] else cb.take(ib))
        if n:
            counts[col] = n
    return counts, rest


def one_array(col: pa.ChunkedArray) -> pa.Array:
    """``col`` as one array: its only chunk as it is (``combine_chunks`` copies even that:
    6.5 MB of signatures at 6,300 samples), or its chunks joined."""
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _every_row(table: Columns, rows: np.ndarray) -> bool:
    """True when ``rows`` are all of ``table``'s rows in order (the previous manifest, when
    the new one keeps every sample): its columns are compared as they are, not copied."""
    return len(rows) == table.num_rows and bool(np.array_equal(rows, np.arange(len(rows))))


def _integer_lists_differing(
    a: pa.Array, b: pa.Array, rows: tuple[np.ndarray, np.ndarray]
) -> np.ndarray | None:
    """:func:`_differing` of the ``rows`` of two list columns of integers with no missing
    element (the signatures): each row's elements compared in place, through its list
    offsets, in a numpy window over the values, with no copy of the rows out of either
    column. None for other columns."""
    if not (pa.types.is_list(a.type) or pa.types.is_large_list(a.type)):
        return None
    if not pa.types.is_integer(a.type.value_type) or a.values.null_count or b.values.null_count:
        return None
    ia, ib = rows
    va, vb = _valid(a)[ia], _valid(b)[ib]
    off_a, off_b = a.offsets.to_numpy(), b.offsets.to_numpy()
    la, lb = np.diff(off_a)[ia], np.diff(off_b)[ib]
    out = (va != vb) | (va & vb & (la != lb))
    same = va & vb & (la == lb)
    xa, xb = a.values.to_numpy(), b.values.to_numpy()
    for length in np.unique(la[same]):
        if length == 0:
            continue
        at = np.flatnonzero(same & (la == length))
        wa = np.lib.stride_tricks.sliding_window_view(xa, int(length))  # no copy
        wb = np.lib.stride_tricks.sliding_window_view(xb, int(length))
        for rows_at in np.array_split(at, -(-len(at) // COMPARE_ROWS)):  # small copies
            out[rows_at] = (wa[off_a[ia[rows_at]]] != wb[off_b[ib[rows_at]]]).any(axis=1)
    return out
