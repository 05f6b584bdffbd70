"""``manifest.parquet`` is written in row groups of ``MANIFEST_ROW_GROUP_ROWS`` rows, so that
the parquet encoder holds one row group's temporaries at a time (the ``signature`` column's
lists of 1,024 uint8 cost it about 16 bytes a value): the same content, the same dataset
hash, and a manifest of fewer rows is one row group (the bytes of a small build unchanged)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_manifest import make_output

from hiroml.store import tables
from hiroml.store.contract import check_contract
from hiroml.store.reader import read_manifest
from hiroml.versions.hashing import dataset_hash, hash_table


def _with_signatures(out: Path, rows: int) -> None:
    """Rewrite ``out``'s manifest with a 1,024-value uint8 signature on each radiograph."""
    m = read_manifest(out)
    rng = np.random.default_rng(1)
    m["signature"] = [
        rng.integers(0, 256, 1024, dtype=np.uint8).tolist() if mod == "cxr" else None
        for mod in m["modality"]
    ]
    m["near_duplicates"] = [[] for _ in range(len(m))]
    assert len(m) > rows
    tables.write_outputs(out, m, tables.patients_frame(m), tables.audit_frame([]))


def test_manifest_is_written_in_bounded_row_groups_with_the_same_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = make_output(tmp_path / "one", n_patients=12)
    _with_signatures(one, 5)
    assert pq.ParquetFile(one / "manifest.parquet").metadata.num_row_groups == 1
    monkeypatch.setattr(tables, "MANIFEST_ROW_GROUP_ROWS", 5)
    many = make_output(tmp_path / "many", n_patients=12)
    _with_signatures(many, 5)

    meta = pq.ParquetFile(many / "manifest.parquet").metadata
    n = meta.num_rows
    assert meta.num_row_groups == -(-n // 5) > 1
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [
        min(5, n - i) for i in range(0, n, 5)
    ]
    a, b = pq.read_table(one / "manifest.parquet"), pq.read_table(many / "manifest.parquet")
    assert a.schema == b.schema
    assert a.equals(b)
    assert b.column("signature").to_pylist() == a.column("signature").to_pylist()
    assert hash_table(a) == hash_table(b) == dataset_hash(many / "manifest.parquet")
    assert read_manifest(many).equals(read_manifest(one))
    assert check_contract(many) == []


def test_a_manifest_of_fewer_rows_than_a_group_is_one_group(tmp_path: Path) -> None:
    out = make_output(tmp_path, n_patients=3)
    meta = pq.ParquetFile(out / "manifest.parquet").metadata
    assert 0 < meta.num_rows <= tables.MANIFEST_ROW_GROUP_ROWS
    assert meta.num_row_groups == 1
