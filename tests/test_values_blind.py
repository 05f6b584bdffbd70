"""Header values that would silently wreck pixels: refused with an error naming them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hostile
import numpy as np
import pandas as pd
import pytest
from conftest import MakeCfg
from ct_factory import SeriesSpec, ct_exam, make_series
from ct_factory import to_bytes as ct_to_bytes
from ct_factory import to_instance as ct_to_instance
from pydicom.dataset import Dataset

from hiroml.config import CtConfig, CxrConfig, IdentityConfig, IndexConfig
from hiroml.ct import convert as ct_convert
from hiroml.cxr import convert as cxr_convert
from hiroml.errors import ArgumentError, RemapError
from hiroml.ingest.discover import REMAP_SHEET_NAME, parse_zip_name
from hiroml.ingest.identity import load_remap
from hiroml.ingest.index import index_zip
from hiroml.ingest.zipio import SafeZip
from hiroml.records import Batch, CtVolume, ExamZip, Instance, Problem
from hiroml.store.reader import read_manifest, tables_dir
from hiroml.vocab import Action, BatchStatus, Modality
from tests.test_cxr import _exam, make_ds, make_inst, radiograph, to_bytes

ZIP_NAME = "7999_20200601-080000_F001_XR-CHEST-PA.zip"
BATCH = Batch(
    name="CXR-UPDATE-20200613-COMPLETE",
    modality=Modality.CXR,
    date=dt.date(2020, 6, 13),
    status=BatchStatus.COMPLETE,
)


@pytest.mark.parametrize(
    ("attrs", "named"),
    [
        ({"RescaleSlope": "NaN", "RescaleIntercept": "0"}, "Rescale Slope is nan"),
        ({"RescaleSlope": "0", "RescaleIntercept": "0"}, "Rescale Slope is 0.0"),
        ({"RescaleSlope": "inf", "RescaleIntercept": "0"}, "Rescale Slope is inf"),
        ({"RescaleSlope": "1", "RescaleIntercept": "-inf"}, "Rescale Intercept is -inf"),
        ({"RescaleSlope": "1", "RescaleIntercept": "NaN"}, "Rescale Intercept is nan"),
    ],
)
def test_radiograph_with_unusable_rescale_is_an_error_not_a_black_image(
    attrs: dict[str, Any], named: str
) -> None:
    good = make_ds(radiograph(1), ViewPosition="PA")
    bad = make_ds(radiograph(2), ViewPosition="PA", **attrs)
    blobs = {"1/good.dcm": to_bytes(good), "1/bad.dcm": to_bytes(bad)}
    insts = [make_inst(good, member="1/good.dcm"), make_inst(bad, member="1/bad.dcm")]
    cfg = CxrConfig(size=[16, 16], dtype="uint8")

    def read(inst: Instance) -> bytes:
        return blobs[inst.member]

    images, problems = cxr_convert.convert_exam(_exam(insts), read, cfg)
    assert [i.member for i in images] == ["1/good.dcm"]
    assert len(problems) == 1 and problems[0].action == Action.ERROR
    reason = problems[0].reason
    assert insts[1].rel_zip in reason and "1/bad.dcm" in reason and named in reason
    # the path that converts a member ahead of its exam leaves the report to the exam stage
    assert cxr_convert.prepare_instance(blobs["1/bad.dcm"], insts[1], cfg) is None
    assert cxr_convert.prepare_instance(blobs["1/good.dcm"], insts[0], cfg) is not None


def test_radiograph_negative_slope_still_converts() -> None:
    ds = make_ds(radiograph(3), ViewPosition="PA", RescaleSlope="-1", RescaleIntercept="4095")
    inst = make_inst(ds, member="1/neg.dcm")
    img = cxr_convert.convert_instance(
        to_bytes(ds), inst, exam_description="", cfg=CxrConfig(size=[16, 16], dtype="uint8")
    )
    assert img.array.dtype == np.uint8 and int(img.array.max()) > 0


# ------------------------------------------------------------------ CT: rescale and HU range


def _ct_exam(
    spec: SeriesSpec, edit: Callable[[Dataset], None] | None = None, *, index_drops: bool = False
) -> tuple[list[CtVolume], list[Problem], str, str]:
    """An exam of a good series and one built from ``spec`` (each slice passed to ``edit``),
    converted with every series kept; ``index_drops``: the record holds no rescale, as the
    index writes a non-finite value. Returns volumes, problems, the good and the bad series."""
    good = make_series(SeriesSpec(n=12, kernel="B30f"))
    bad = make_series(spec)
    for ds in bad:
        if edit is not None:
            edit(ds)
    items = []
    for ds in [*good, *bad]:
        inst = ct_to_instance(ds)
        if index_drops and ds in bad:
            inst = dataclasses.replace(inst, rescale_slope=None, rescale_intercept=None)
        items.append((inst, ds))
    store = {(i.zip, i.member): ct_to_bytes(d) for i, d in items}
    exam = ct_exam([i for i, _ in items])
    volumes, problems = ct_convert.convert_exam(
        exam, lambda inst: store[(inst.zip, inst.member)], CtConfig(series="all", stitch="off")
    )
    return volumes, problems, str(good[0].SeriesInstanceUID), str(bad[0].SeriesInstanceUID)


def _set(**attrs: Any) -> Callable[[Dataset], None]:
    def edit(ds: Dataset) -> None:
        for k, v in attrs.items():
            setattr(ds, k, v)

    return edit


@pytest.mark.parametrize(
    ("edit", "index_drops", "named"),
    [
        (_set(RescaleSlope="-1", RescaleIntercept="1024"), False, "Rescale Slope is -1.0"),
        (_set(RescaleSlope="0"), False, "Rescale Slope is 0.0"),
        (_set(RescaleSlope="NaN"), True, "Rescale Slope is nan"),
        (_set(RescaleIntercept="inf"), True, "Rescale Intercept is inf"),
        (_set(RescaleSlope="1e30"), False, "outside the physical range -2048 to 32767"),
        (_set(RescaleIntercept="-40000"), False, "outside the physical range -2048 to 32767"),
    ],
)
def test_ct_series_with_damaged_rescale_is_an_error_row_not_stored(
    edit: Callable[[Dataset], None], index_drops: bool, named: str
) -> None:
    volumes, problems, good, bad = _ct_exam(
        SeriesSpec(n=12, kernel="B70f"), edit, index_drops=index_drops
    )
    assert [v.series_uid for v in volumes] == [good]
    errors = [p for p in problems if p.action == Action.ERROR]
    assert len(errors) == 1
    assert bad in errors[0].reason and named in errors[0].reason, errors[0].reason
    if "physical range" in named:
        assert " HU after rescale" in errors[0].reason and "values " in errors[0].reason


def test_ct_padding_below_the_range_is_not_an_error() -> None:
    """GE pads outside the field of view with -2000 stored (-3024 HU): a padding value, not
    a damaged rescale."""

    def pad(ds: Dataset) -> None:
        arr = ds.pixel_array.copy()
        arr[:3, :] = -2000
        ds.PixelData = arr.astype(np.int16).tobytes()
        ds.PixelPaddingValue = -2000

    volumes, problems, good, bad = _ct_exam(SeriesSpec(n=12, kernel="B70f"), pad)
    assert sorted(v.series_uid for v in volumes) == sorted([good, bad])
    assert not [p for p in problems if p.action == Action.ERROR]
    vol = next(v for v in volumes if v.series_uid == bad)
    assert float(vol.array.min()) == -3024.0


# ------------------------------------------------------------------ zip members sharing a name


def test_zip_members_sharing_a_name_are_refused_naming_both(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b, c, d = (hostile.dicom_bytes(hostile.make_cxr(k, rng)) for k in range(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        data = hostile.zip_bytes(
            [
                ("S1/img.dcm", a),
                ("S1\\img.dcm", b),
                ("S2/x.dcm", c),
                ("S2/x.dcm", d),
                ("S3/ok.dcm", a),
            ]
        )
    with SafeZip(data) as z:
        assert z.members() == ["S3/ok.dcm"]
        rejected = dict.fromkeys(name for name, _ in z.rejected)
        assert list(rejected) == ["S1/img.dcm", "S1\\img.dcm", "S2/x.dcm"]
        assert len(z.rejected) == 4
        for name, reason in z.rejected:
            if name.startswith("S1"):
                assert "'S1/img.dcm'" in reason and "'S1\\\\img.dcm'" in reason
            else:
                assert reason.startswith("2 members share the name S2/x.dcm")
    path = tmp_path / ZIP_NAME
    path.write_bytes(data)
    ezip = ExamZip(
        batch=BATCH,
        file_name=ZIP_NAME,
        name=parse_zip_name(ZIP_NAME),
        size=len(data),
        mtime_ns=0,
    )
    zi = index_zip(path, ezip, IndexConfig())
    assert [i.member for i in zi.instances] == ["S3/ok.dcm"]
    rows = [p for p in zi.problems if p.action == Action.ERROR]
    assert len(rows) == 4 and all("members share the name" in p.reason for p in rows)
    assert all(ZIP_NAME in p.reason for p in rows)


# ------------------------------------------------------------------ the remap sheet


def _book(path: Path, rows: list[list[Any]]) -> Path:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    for r in rows:
        ws.append(r)
    wb.save(path)
    return path


def test_remap_sheet_with_headers_and_no_rows_warns_and_is_audited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _book(tmp_path / REMAP_SHEET_NAME, [["Old C19 ID", "New C19 ID"]])
    with caplog.at_level(logging.WARNING, logger="hiroml"):
        remap, problems = load_remap(tmp_path, None, IdentityConfig())
    said = f"remap sheet {REMAP_SHEET_NAME} has no rows: no identities are merged"
    assert remap == {}
    assert [(p.member, p.reason, p.action) for p in problems] == [
        (REMAP_SHEET_NAME, said, Action.SKIPPED)
    ]
    assert said in caplog.text


def test_two_remap_sheets_differing_in_case_are_refused_naming_both(tmp_path: Path) -> None:
    upper = _book(tmp_path / REMAP_SHEET_NAME, [["Old ID", "New ID"], ["1", "2"]])
    lower = _book(tmp_path / REMAP_SHEET_NAME.lower(), [["Old ID", "New ID"], ["3", "4"]])
    with pytest.raises(RemapError) as e:
        load_remap(tmp_path, None, IdentityConfig())
    assert upper.name in str(e.value) and lower.name in str(e.value)
    assert load_remap(tmp_path, upper, IdentityConfig())[0] == {"1": "2"}  # named: no doubt


# ------------------------------------------------------------------ clinical labels of text


def test_clinical_label_of_text_warns_at_build_and_dataset_names_the_column(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from hiroml import pipeline as build
    from hiroml.data.dataset import HiromlDataset

    root, truth = tiny_datamart
    table = pd.read_csv(root / truth["clinical"], dtype=str, keep_default_na=False)
    table["icu"] = ["yes" if k % 2 else "no" for k in range(len(table))]
    clinical = tmp_path / "clinical.csv"
    table.to_csv(clinical, index=False)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="hiroml"):
        build.run(make_cfg(root, out, f"paths.clinical={clinical}"))
    said = [r.getMessage() for r in caplog.records if "column 'icu'" in r.getMessage()]
    assert len(said) == 1
    assert not [r for r in caplog.records if "column 'sex'" in r.getMessage()]  # text, info
    assert "clinical.csv" in said[0]
    assert "'no', 'yes'" in said[0] or "'yes', 'no'" in said[0]
    manifest = read_manifest(tables_dir(out, None)[0])
    assert set(manifest["icu"].dropna()) == {"no", "yes"}
    with pytest.raises(ArgumentError, match=r"label 'icu' holds values that are not numbers"):
        HiromlDataset(out, label="icu")
