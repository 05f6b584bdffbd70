import datetime as dt
from pathlib import Path

import pytest

from hiroml.errors import DatamartError
from hiroml.ingest.discover import discover, is_pediatric, parse_batch_name, parse_zip_name
from hiroml.vocab import Action, BatchStatus, Modality


@pytest.mark.parametrize(
    ("name", "patient", "hiro", "desc", "pediatric"),
    [
        (
            "1234_20200301-140030_A003_XR-PORT-CHEST-1V.zip",
            "1234",
            "A003",
            "XR-PORT-CHEST-1V",
            False,
        ),
        ("234567_20200508-105300_A002_CT-CHEST-WO.zip", "234567", "A002", "CT-CHEST-WO", False),
        (
            "0042_20200301-140030_A9_XR-P-PORT-CHEST-1-VIEW.zip",
            "0042",
            "A9",
            "XR-P-PORT-CHEST-1-VIEW",
            True,
        ),
        (
            "5678_20200401-121530_A004_XR_CHEST_PA_LATERAL.zip",
            "5678",
            "A004",
            "XR_CHEST_PA_LATERAL",
            False,
        ),
        (
            "5678_20200401-121530_A004_CTA_CHEST-PE_w-contrast.zip",
            "5678",
            "A004",
            "CTA_CHEST-PE_w-contrast",
            False,
        ),
        (
            "77_20200401-121530_A5_XR P PORT CHEST 1 VIEW.zip",
            "77",
            "A5",
            "XR P PORT CHEST 1 VIEW",
            True,
        ),
        ("77_20200401-121530_A5_XR-PA-CHEST.ZIP", "77", "A5", "XR-PA-CHEST", False),
    ],
)
def test_zip_names_parse(name: str, patient: str, hiro: str, desc: str, pediatric: bool) -> None:
    z = parse_zip_name(name)
    assert (z.patient_id, z.hiro_id, z.description, z.pediatric) == (patient, hiro, desc, pediatric)
    assert z.time.year == 2020


def test_zip_name_time() -> None:
    z = parse_zip_name("1234_20200301-140030_A003_XR-PORT-CHEST-1V.zip")
    assert z.time == dt.datetime(2020, 3, 1, 14, 0, 30)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("notes.zip", "does not follow"),
        ("1234_20200301_A003_XR.zip", "does not follow"),
        ("1234_20201301-140030_A003_XR.zip", "not a valid timestamp"),
        ("1234_20200301-140030_A003_.zip", "does not follow"),
        ("1234_20200301-140030_A003_XR.tar", "does not follow"),
    ],
)
def test_bad_zip_names_say_why(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_zip_name(name)


def test_pediatric_marker_needs_modality_then_p() -> None:
    assert is_pediatric("XR-P-PORT-CHEST-1-VIEW")
    assert not is_pediatric("XR-PORT-CHEST-P")
    assert not is_pediatric("P-XR-CHEST")
    assert not is_pediatric("XR-PA-CHEST")


def test_batch_names() -> None:
    b = parse_batch_name("CT-UPDATE-20200602-IN-PROGRESS")
    assert (b.modality, b.status, b.date) == (
        Modality.CT,
        BatchStatus.IN_PROGRESS,
        dt.date(2020, 6, 2),
    )
    assert parse_batch_name("CXR-UPDATE-20200523-COMPLETE").modality is Modality.CXR
    with pytest.raises(ValueError, match="not a valid date"):
        parse_batch_name("CXR-UPDATE-20201323-COMPLETE")
    with pytest.raises(ValueError, match="UPDATE"):
        parse_batch_name("CXR-20200523")


def test_discover_sorts_reports_and_skips(tmp_path: Path) -> None:
    late = tmp_path / "CXR-UPDATE-20200618-COMPLETE"
    early = tmp_path / "CXR-UPDATE-20200523-COMPLETE"
    running = tmp_path / "CT-UPDATE-20200602-IN-PROGRESS"
    for d in (late, early, running, tmp_path / "Downloads"):
        d.mkdir()
    (late / "5678_20200401-121530_A005_XR-CHEST-PA-LATERAL.zip").write_bytes(b"x")
    (early / "5678_20200401-121530_A004_XR-CHEST-PA-LATERAL.zip").write_bytes(b"x")
    (early / "oops.zip").write_bytes(b"x")
    (early / "Thumbs.db").write_bytes(b"x")
    (running / "1_20200601-100000_A1_CT-CHEST.zip").write_bytes(b"x")
    (tmp_path / "C19_HIRO_LDS_REMAP_PUB-LIST.xlsx").write_bytes(b"x")

    d = discover(tmp_path)
    assert [b.name for b in d.batches] == [early.name, running.name, late.name]
    assert [z.rel_path for z in d.zips] == [
        f"{early.name}/5678_20200401-121530_A004_XR-CHEST-PA-LATERAL.zip",
        f"{late.name}/5678_20200401-121530_A005_XR-CHEST-PA-LATERAL.zip",
    ]
    assert d.remap_sheet is not None and d.remap_sheet.endswith(".xlsx")
    by_zip = {(p.batch, p.zip): p for p in d.problems}
    assert by_zip[(running.name, "1_20200601-100000_A1_CT-CHEST.zip")].action is Action.SKIPPED
    assert "IN-PROGRESS" in by_zip[(running.name, "1_20200601-100000_A1_CT-CHEST.zip")].reason
    assert by_zip[(early.name, "oops.zip")].action is Action.ERROR
    assert by_zip[(early.name, "Thumbs.db")].action is Action.SKIPPED
    assert by_zip[("Downloads", "")].action is Action.SKIPPED


def test_discover_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatamartError, match="does not exist"):
        discover(tmp_path / "nope")
