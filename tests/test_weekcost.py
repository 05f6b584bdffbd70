"""What a weekly build does over the whole dataset, done column-wise: the shrink guard's read
of the previous manifest (hiroml.store.guard), the flow's zip statuses (hiroml.report.flow) and
the leakage check (hiroml.exams.splits.find_leaks), with the same results as cell by cell."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hiroml.exams.splits import find_leaks
from hiroml.report.flow import compute_flow
from hiroml.store import guard
from hiroml.vocab import MANIFEST


def test_guard_reads_only_the_previous_columns_it_compares(tmp_path: Path) -> None:
    table = pa.table(
        {
            "sample_key": ["a", "b"],
            "patient_id": ["p1", "p2"],
            "data_hash": ["h1", "h2"],
            "signature": [[1, 2, 3], [4, 5, 6]],
            "label_covid": [1, 0],
        }
    )
    pq.write_table(table, tmp_path / MANIFEST)
    previous = guard.read_previous(tmp_path)
    assert isinstance(previous, pa.Table)  # Arrow: no Python object per cell
    assert previous.column_names == ["sample_key", "patient_id", "data_hash"]
    assert set(guard.PREVIOUS_COLUMNS) >= set(previous.column_names)
    new = previous.to_pandas().iloc[:1]
    check = guard.compare(previous, new, pd.DataFrame(columns=["zip", "action"]), [])
    assert (check.removed_samples, check.unexplained_samples, check.unexplained_patients) == (
        1,
        1,
        1,
    )


def test_guard_unreadable_previous_manifest_gives_no_check(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_bytes(b"PAR1 not a parquet file")
    assert guard.read_previous(tmp_path) is None


def _audit(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"batch": b, "zip": z, "action": a, "reason": "r", "exam_key": "", "detail": ""}
            for b, z, a in rows
        ]
    )


def test_flow_zip_status_is_the_first_action_in_order() -> None:
    audit = _audit(
        [
            ("B1", "a.zip", "kept"),
            ("B1", "a.zip", "dropped"),
            ("B1", "b.zip", "error"),
            ("B1", "b.zip", "duplicate"),  # duplicate wins over error
            ("B1", "c.zip", "dropped"),  # no zip-level action: counted with the errors
            ("B1", "d.zip", "merged"),
            ("B1", "d.zip", "kept"),  # merged wins over kept
            ("B2", "a.zip", "skipped"),  # another batch: another zip
            ("B2", "e.zip", "error"),
            ("", "clinical.csv", "error"),  # not a zip: not counted
        ]
    )
    manifest = pd.DataFrame(columns=["exam_key", "patient_id", "split", "modality"])
    flow = compute_flow(audit, manifest)
    assert flow.zips_found == 6
    assert flow.zips_read == 5  # one skipped
    assert flow.zips_usable == 3  # a (kept), b (duplicate), d (merged); c and e are errors
    assert flow.exams == 1
    assert compute_flow(audit.iloc[:0], manifest).zips_found == 0


def test_find_leaks_column_wise_as_cell_by_cell() -> None:
    m = pd.DataFrame(
        {
            "split": ["train", "test", "val", "train", "test"],
            "patient_group": ["g1", "g1", "g2", "g3", None],
            "patient_id": ["p1", "p2", "", "p3", np.nan],
            "sop_uids": [["u1", ""], ["u1"], None, [], ["u2", None]],
            "data_hash": [7, 7, 8, 9, 8],  # not text: taken cell by cell
        }
    )
    assert find_leaks(m) == [
        "SOP Instance UID 'u1' in splits test, train",
        "decoded pixels (data_hash) '7' in splits test, train",
        "decoded pixels (data_hash) '8' in splits test, val",
        "patient_group 'g1' in splits test, train",
    ]
    assert find_leaks(m.iloc[:0]) == []
    assert find_leaks(m.assign(split="train")) == []


def test_representativeness_is_computed_once_per_manifest() -> None:
    from hiroml.report import representativeness as rep

    m = pd.DataFrame(
        {
            "sample_key": ["a", "b", "c"],
            "patient_group": ["g1", "g2", "g3"],
            "patient_id": ["p1", "p2", "p3"],
            "split": ["train", "train", "test"],
            "modality": ["cxr", "cxr", "cxr"],
            "batch": ["CXR-UPDATE-20200104-COMPLETE"] * 3,
            "sex": ["F", "M", "F"],
            "age_years": [30.0, 40.0, 50.0],
        }
    )
    first = rep.representativeness(m)
    assert rep.representativeness(m) is first  # the report, card, claim, croissant: once
    again = rep.representativeness(m.copy())  # another table: computed, and equal
    assert again is not first and again.weekly.equals(first.weekly)
    m["split"] = "train"
    m["extra"] = 1  # a changed table (another column): computed again
    assert rep.representativeness(m).totals["samples"].sum() == 3
    assert set(rep.representativeness(m).totals["split"]) == {"train"}


def test_changed_counts_compare_a_whole_previous_table_as_it_is() -> None:
    from hiroml.versions.columns import changed_counts, common_rows

    old = pa.table({"sample_key": ["a", "b", "c"], "v": [1, 2, 3], "l": [[1], [2, 2], []]})
    new = pa.table(
        {"sample_key": ["a", "b", "b2", "c"], "v": [1, 5, 9, 3], "l": [[1], [2, 2], [], [7]]}
    )
    rows = common_rows(old.column("sample_key").combine_chunks(), new["sample_key"].chunks[0])
    assert rows[0].tolist() == [0, 1, 2] and rows[1].tolist() == [0, 1, 3]
    assert changed_counts(old, new, ["v", "l"], rows) == ({"v": 1, "l": 1}, [])
    assert changed_counts(new, new, ["v", "l"], (np.arange(4), np.arange(4))) == ({}, [])


def test_dataset_hash_of_a_sorted_manifest_as_of_a_shuffled_one() -> None:
    from hiroml.versions.hashing import hash_table

    t = pa.table({"sample_key": ["a", "b", "c"], "v": [1, 2, 3], "s": [[1, 2], [3], None]})
    shuffled = t.take(pa.array([2, 0, 1]))
    assert hash_table(t) == hash_table(shuffled)
    assert hash_table(t) != hash_table(t.set_column(1, "v", pa.array([1, 2, 4])))


def test_zip_name_timestamp_as_strptime_reads_it() -> None:
    from hiroml.ingest.discover import parse_zip_name

    name = parse_zip_name("P1_20200229-235959_H1_XR-CHEST.zip")
    assert name.time == dt.datetime(2020, 2, 29, 23, 59, 59)
    for bad in ("20200230-120000", "20201301-120000", "20200100-120000", "20200101-240000"):
        with pytest.raises(ValueError, match="is not a valid timestamp"):
            parse_zip_name(f"P1_{bad}_H1_XR-CHEST.zip")
    with pytest.raises(ValueError, match="is not a valid timestamp"):
        parse_zip_name("P1_20200101-125960_H1_XR-CHEST.zip")


def test_csv_cells_escaped_column_wise_only_where_they_begin_like_a_formula() -> None:
    from hiroml.store.csvcells import escape_frame, unescape_frame

    cells = ["=1+1", "'x", "-3", "plain", None, "", "\tz", "-x", 7]
    frame = pd.DataFrame({"mixed": pd.Series(cells, dtype=object), "n": [None] * 9})
    safe = escape_frame(frame)
    assert safe["mixed"].tolist() == ["'=1+1", "''x", "-3", "plain", None, "", "'\tz", "'-x", 7]
    assert safe["n"].tolist() == [None] * 9
    assert unescape_frame(safe)["mixed"].tolist() == cells


def test_signature_tuples_to_arrow_as_pyarrow_converts_them() -> None:
    from hiroml.store.tables import _list_array

    rng = np.random.default_rng(0)
    sigs = [tuple(int(v) for v in rng.integers(0, 256, 16)) for _ in range(600)]
    typ = pa.list_(pa.uint8())
    assert _list_array(sigs, typ).equals(pa.array(sigs, type=typ))
    assert _list_array([(1, 2), (3,)], typ).equals(pa.array([[1, 2], [3]], type=typ))
    with pytest.raises((pa.ArrowInvalid, OverflowError)):
        _list_array([(1, 256), (0, 0)], typ)  # out of range: refused as before
