"""Tests for hiroml.ingest.identity: the remap sheet and the clinical table.

Workbooks are written by the tests into tmp_path with openpyxl; nothing is committed.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from hiroml.config import IdentityConfig
from hiroml.errors import ConfigError, RemapError
from hiroml.ingest.identity import (
    REMAP_SHEET_NAME,
    RemapRow,
    RemapTable,
    days_from_encounter,
    join_clinical,
    load_remap,
    read_clinical,
    read_remap_sheet,
    window_violation,
)
from hiroml.records import Exam
from hiroml.vocab import Action, Modality

CFG = IdentityConfig()


def write_book(path: Path, sheets: dict[str, list[list[Any]]], text_cols: bool = False) -> Path:
    """An xlsx with the given sheets (rows of cell values); ``text_cols`` stores ids as text."""
    import openpyxl

    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for title, rows in sheets.items():
        ws = wb.create_sheet(title)
        for r in rows:
            ws.append(r)
        if text_cols:
            for row in ws.iter_rows():
                for c in row:
                    c.number_format = "@"
    wb.save(path)
    return path


def table(*pairs: tuple[str, str]) -> RemapTable:
    rows = tuple(RemapRow(row=n, old=o, new=w) for n, (o, w) in enumerate(pairs, start=2))
    return RemapTable(file="remap.xlsx", sheet="S", old_header="o", new_header="n", rows=rows)


# --------------------------------------------------------------------------- resolve


def test_chains_resolved_to_final_id() -> None:
    assert table(("A", "B"), ("B", "C"), ("X", "Y")).resolve() == {"A": "C", "B": "C", "X": "Y"}
    # order of rows does not matter; long chain
    t = table(("C", "D"), ("B", "C"), ("A", "B"))
    assert t.resolve() == {"A": "D", "B": "D", "C": "D"}


def test_repeated_and_self_rows_are_fine() -> None:
    assert table(("A", "B"), ("A", "B"), ("C", "C")).resolve() == {"A": "B"}


def test_cycle_is_an_error_naming_rows() -> None:
    t = table(("Z", "Q"), ("A", "B"), ("B", "C"), ("C", "A"))
    with pytest.raises(RemapError, match=r"rows 3, 4, 5: .*cycle A -> B -> C -> A"):
        t.resolve()


def test_conflicting_targets_name_both_rows() -> None:
    t = table(("A", "B"), ("Q", "R"), ("A", "C"))
    with pytest.raises(RemapError, match=r"rows 2, 4: old id A is mapped to both B \(row 2\)"):
        t.resolve()


# --------------------------------------------------------------------------- reading sheets


def test_read_sheet_with_numeric_and_text_ids(tmp_path: Path) -> None:
    p = write_book(
        tmp_path / REMAP_SHEET_NAME,
        {
            "Sheet1": [
                ["Old C19 Patient ID", "New C19 Patient ID", "Date Remapped"],
                [1234, 5678, dt.datetime(2020, 5, 1)],
                ["00123", "00456", None],
                [None, None, None],  # blank row skipped
                [1234.0, 9999.0, None],  # numeric float cells -> ints as text
                [" 077 ", 88, None],
            ]
        },
    )
    t = read_remap_sheet(p)
    assert t.sheet == "Sheet1"
    assert (t.old_header, t.new_header) == ("Old C19 Patient ID", "New C19 Patient ID")
    assert t.rows == (
        RemapRow(2, "1234", "5678"),
        RemapRow(3, "00123", "00456"),
        RemapRow(5, "1234", "9999"),
        RemapRow(6, "077", "88"),
    )
    with pytest.raises(RemapError, match=r"rows 2, 5: old id 1234"):
        t.resolve()


def test_extra_sheets_and_columns_first_recognisable_sheet(tmp_path: Path) -> None:
    p = write_book(
        tmp_path / "r.xlsx",
        {
            "README": [["This list maps ids"], ["see HIRO"]],
            "Mapping": [
                ["notes only"],
                [],
                ["Comment", "PREV_ID", "Name", "CURRENT_ID", "Remap date"],
                ["x", "0012", "n", "0034", "2020-01-01"],
            ],
            "Other": [["old id", "new id"], ["1", "2"]],
        },
    )
    t = read_remap_sheet(p)
    assert t.sheet == "Mapping"
    assert t.rows == (RemapRow(4, "0012", "0034"),)


def test_custom_headers(tmp_path: Path) -> None:
    p = write_book(tmp_path / "r.xlsx", {"S": [["from patient", "to patient"], ["1", "2"]]})
    with pytest.raises(RemapError, match=r"r\.xlsx: no sheet has an old-id"):
        read_remap_sheet(p)
    t = read_remap_sheet(p, old_column="From_Patient", new_column="to patient")
    assert t.resolve() == {"1": "2"}
    cfg = IdentityConfig(remap_old_column="from patient", remap_new_column="to patient")
    remap, problems = load_remap(tmp_path, p, cfg)
    assert remap == {"1": "2"} and problems == []


def test_incomplete_rows_become_problems(tmp_path: Path) -> None:
    write_book(
        tmp_path / REMAP_SHEET_NAME,
        {"S": [["OldID", "NewID"], ["1", "2"], ["3", None], [None, "5"]]},
    )
    remap, problems = load_remap(tmp_path, None, CFG)
    assert remap == {"1": "2"}
    assert [p.reason for p in problems] == [
        f"{REMAP_SHEET_NAME}, sheet 'S', row 3: current id is blank (row ignored)",
        f"{REMAP_SHEET_NAME}, sheet 'S', row 4: old id is blank (row ignored)",
    ]
    assert all(p.stage == "identity" for p in problems)


def test_missing_sheet_means_no_remap(tmp_path: Path) -> None:
    assert load_remap(tmp_path, None, CFG) == ({}, [])
    with pytest.raises(RemapError, match=r"nope\.xlsx: remap sheet not found"):
        load_remap(tmp_path, tmp_path / "nope.xlsx", CFG)


def test_default_sheet_found_in_any_case_and_resolved(tmp_path: Path) -> None:
    write_book(
        tmp_path / REMAP_SHEET_NAME.lower(),
        {"S": [["old id", "current id"], ["A", "B"], ["B", "C"]]},
    )
    remap, _ = load_remap(tmp_path, None, CFG)
    assert remap == {"A": "C", "B": "C"}


def test_unreadable_and_headerless_sheets_are_errors(tmp_path: Path) -> None:
    bad = tmp_path / REMAP_SHEET_NAME
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(RemapError, match=f"{REMAP_SHEET_NAME}: cannot be read"):
        load_remap(tmp_path, None, CFG)
    p = write_book(tmp_path / "h.xlsx", {"S": [["a", "b"], ["1", "2"]]})
    with pytest.raises(RemapError, match=r"h\.xlsx: no sheet has"):
        load_remap(tmp_path, p, CFG)


def test_cycle_in_sheet_names_sheet_rows(tmp_path: Path) -> None:
    write_book(
        tmp_path / REMAP_SHEET_NAME,
        {"S": [["old id", "new id"], ["1", "2"], ["2", "1"]]},
    )
    with pytest.raises(RemapError, match=rf"{REMAP_SHEET_NAME}, sheet 'S', rows 2, 3: .*cycle"):
        load_remap(tmp_path, None, CFG)


# --------------------------------------------------------------------------- clinical


def _exam(key: str, patient: str, modality: Modality, when: dt.datetime) -> Exam:
    return Exam(
        exam_key=key,
        modality=modality,
        patient_id=patient,
        source_patient_id=patient,
        hiro_id="A1",
        time=when,
        description="d",
        pediatric=False,
        batch="B",
        zips=(f"B/{key}.zip",),
        instances=(),
    )


def test_read_clinical_csv_keeps_leading_zeros(tmp_path: Path) -> None:
    p = tmp_path / "clin.csv"
    p.write_text(
        "patient_id,covid_encounter_date,label\n"
        "0012,2020-04-01,1\n"
        "34,2020-04-10,0\n"
        "34,2020-03-10,0\n"
        "56,,1\n"
    )
    t = read_clinical(p, CFG)
    assert t.ids == frozenset({"0012", "34", "56"})
    assert t.encounter == {"0012": dt.date(2020, 4, 1), "34": dt.date(2020, 3, 10)}
    assert t.duplicate_ids == ("34",)
    assert t.labels.loc["0012", "label"] == 1  # numeric label columns become numbers


def test_read_clinical_parquet_and_xlsx(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {"pid": [12, 34], "enc": [dt.date(2020, 4, 1), dt.date(2020, 4, 2)], "y": [1, 0]}
    )
    cfg = IdentityConfig(clinical_id_column="pid", clinical_encounter_column="enc")
    df.to_parquet(tmp_path / "c.parquet")
    t = read_clinical(tmp_path / "c.parquet", cfg)
    assert t.ids == frozenset({"12", "34"})
    assert t.encounter["34"] == dt.date(2020, 4, 2)
    write_book(tmp_path / "c.xlsx", {"S": [["pid", "enc", "y"], [12, dt.datetime(2020, 4, 1), 1]]})
    t2 = read_clinical(tmp_path / "c.xlsx", cfg)
    assert t2.ids == frozenset({"12"}) and t2.encounter == {"12": dt.date(2020, 4, 1)}
    with pytest.raises(ConfigError, match=r"c\.parquet: no patient id column 'patient_id'"):
        read_clinical(tmp_path / "c.parquet", CFG)
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"c\.txt: clinical table must be"):
        read_clinical(tmp_path / "c.txt", CFG)


def test_windows_cxr_year_ct_month() -> None:
    enc = dt.date(2020, 4, 1)
    assert days_from_encounter(dt.datetime(2020, 3, 31, 23, 0), enc) == -1
    assert window_violation(Modality.CXR, dt.datetime(2019, 4, 3), enc, CFG) is None
    why = window_violation(Modality.CXR, dt.datetime(2019, 3, 1), enc, CFG)
    assert why is not None and "397 days before" in why
    assert window_violation(Modality.CT, dt.datetime(2020, 3, 1), enc, CFG) is None
    assert window_violation(Modality.CT, dt.datetime(2020, 2, 20), enc, CFG) is not None
    assert window_violation(Modality.CT, dt.datetime(2021, 2, 20), enc, CFG) is None
    assert window_violation(Modality.CT, dt.datetime(2000, 1, 1), None, CFG) is None


def test_join_clinical_orphans_and_enforced_windows(tmp_path: Path) -> None:
    p = tmp_path / "clin.csv"
    p.write_text("patient_id,covid_encounter_date\n1,2020-04-01\n")
    t = read_clinical(p, CFG)
    exams = [
        _exam("e1", "1", Modality.CT, dt.datetime(2020, 1, 1)),  # 91 days before: outside
        _exam("e2", "1", Modality.CXR, dt.datetime(2020, 1, 1)),  # inside a year
        _exam("e3", "2", Modality.CXR, dt.datetime(2020, 1, 1)),  # orphan
    ]
    report = join_clinical(exams, t, CFG)
    assert [e.exam_key for e in report.exams] == ["e1", "e2", "e3"]
    assert report.orphans == ("2",)
    assert "check the remap sheet" in report.orphan_advice
    assert report.days == {"e1": -91, "e2": -91, "e3": None}
    assert set(report.violations) == {"e1"} and report.audit == ()
    enforced = join_clinical(exams, t, IdentityConfig(enforce_windows=True))
    assert [e.exam_key for e in enforced.exams] == ["e2", "e3"]
    (row,) = enforced.audit
    assert (row.zip, row.batch, row.action) == ("e1.zip", "B", Action.DROPPED)
    none = join_clinical(exams, None, CFG)
    assert none.orphans == () and len(none.exams) == 3
