"""Stitching a CT scan resumed under a new Series Instance UID (hiroml.ct.stitch via ct.convert_exam).

Every stitched volume is checked against the DICOM itself: each original pixel of every part
must sit at its own physical position (tests/ct_geometry.py).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
import xxhash
from conftest import MakeCfg
from ct_factory import SeriesSpec, ct_exam, make_series, to_bytes, to_instance
from ct_geometry import assert_pixels_at_positions
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from hiroml.config import CtConfig
from hiroml.ct import convert as ct_convert
from hiroml.ct import stitch
from hiroml.errors import ConfigError
from hiroml.records import CtVolume, Exam, Instance, Problem
from hiroml.vocab import Action

ZIP_A = "1234_20200508-105300_A002_CT-CHEST-WO.zip"
ZIP_B = "1234_20200508-110200_A002_CT-CHEST-WO.zip"
ZIP_C = "1234_20200508-110730_A002_CT-CHEST-WO.zip"
EXAM_KEY = "1234_20200508-105300_A002"


def _exam(insts: Sequence[Instance]) -> Exam:
    return ct_exam(insts, EXAM_KEY)


def _as_part(dss: Sequence[Dataset], number: int, time: str) -> list[Dataset]:
    """The slices as a new series (new (0020,000E), (0020,0011) and (0008,0031)), as a
    scanner writes a resumed acquisition; the SOP Instance UIDs stay."""
    uid = generate_uid()
    out = []
    for ds in dss:
        ds = copy.deepcopy(ds)
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = number
        ds.SeriesTime = time
        out.append(ds)
    return out


def _instances(
    parts: Sequence[Sequence[Dataset]], zips: Sequence[str], *, hashed: bool = False
) -> tuple[list[Instance], dict[tuple[str, str], bytes]]:
    """Index records (members named by series folder) and the bytes a reader serves.
    ``hashed``: fill ``pixel_hash`` as the index stage does (XXH3-128 of the stored bytes)."""
    insts: list[Instance] = []
    store: dict[tuple[str, str], bytes] = {}
    for part, zip_name in zip(parts, zips, strict=True):
        for ds in part:
            inst = to_instance(ds, zip_name=zip_name)
            inst = dataclasses.replace(inst, series_time=str(ds.get("SeriesTime", "")))
            if hashed:
                inst = dataclasses.replace(
                    inst, pixel_hash=xxhash.xxh3_128_hexdigest(bytes(ds.PixelData))
                )
            insts.append(inst)
            store[(inst.zip, inst.member)] = to_bytes(ds)
    return insts, store


def _convert(
    parts: Sequence[Sequence[Dataset]],
    zips: Sequence[str],
    cfg: CtConfig | None = None,
    *,
    hashed: bool = False,
    reverse: bool = True,
) -> tuple[list[CtVolume], list[Problem]]:
    insts, store = _instances(parts, zips, hashed=hashed)
    if reverse:  # the exam's instance order must not matter
        insts = insts[::-1]
    read: Callable[[Instance], bytes] = lambda i: store[(i.zip, i.member)]  # noqa: E731
    return ct_convert.convert_exam(_exam(insts), read, cfg or CtConfig())


def _z(ds: Dataset) -> float:
    return float(ds.ImagePositionPatient[2])


def _scan(n: int = 24, seed: int = 0, **kw: object) -> list[Dataset]:
    return make_series(SeriesSpec(n=n, seed=seed, **kw))  # type: ignore[arg-type]


# ------------------------------------------------------------------ positive cases


@pytest.mark.parametrize("series", ["best", "all"])
def test_two_parts_across_zips_become_one_volume(series: str) -> None:
    dss = _scan(24)
    a, b = _as_part(dss[:13], 2, "105300"), _as_part(dss[13:], 3, "110200")
    vols, probs = _convert([a, b], [ZIP_A, ZIP_B], CtConfig(series=series))
    assert len(vols) == 1, probs
    vol = vols[0]
    assert len(vol.sop_uids) == 24 and not vol.resampled
    assert_pixels_at_positions(vol, dss, exact=True)
    uid_a, uid_b = a[0].SeriesInstanceUID, b[0].SeriesInstanceUID
    assert vol.series_uid == uid_a  # the part acquired first names the scan
    assert vol.stitched_series == (uid_a, uid_b)
    assert vol.seams_mm == (pytest.approx(_z(b[0])),)
    assert vol.seam_slices == (13,)
    assert set(vol.zips) == {ZIP_A, ZIP_B}
    assert any("stitched from 2 series" in d for d in vol.decisions)
    [merged] = [p for p in probs if p.action is Action.MERGED]
    assert merged.zip == ZIP_B and merged.kept_as == f"{EXAM_KEY}:{uid_a}"
    assert uid_a in merged.reason and uid_b in merged.reason and "abuts" in merged.reason
    assert "seams_mm" in merged.detail and "seam_slices [13]" in merged.detail
    assert not [p for p in probs if p.action is not Action.MERGED]


def test_three_parts_in_one_zip_named_by_the_first_acquired() -> None:
    """A feet-first order: the part acquired first lies highest along the normal; it still
    names the scan. It overlaps the middle part by two slices with identical pixels."""
    dss = _scan(34, seed=2)
    top = _as_part(dss[22:], 2, "105300")  # acquired first
    mid = _as_part(dss[10:24], 3, "105800")  # reaches 2 slices into the top part
    for d in mid:
        d.SOPInstanceUID = generate_uid()  # the repeat is a new instance
    low = _as_part(dss[:10], 4, "110200")
    vols, probs = _convert([low, mid, top], [ZIP_A] * 3)
    assert len(vols) == 1, probs
    vol = vols[0]
    assert vol.series_uid == top[0].SeriesInstanceUID
    assert vol.stitched_series == tuple(p[0].SeriesInstanceUID for p in (low, mid, top))
    assert vol.array.shape[0] == 34 and not vol.resampled
    assert_pixels_at_positions(vol, dss, exact=True)
    assert_pixels_at_positions(vol, [*low, *mid, *top], exact=True)
    assert vol.seams_mm == (pytest.approx(_z(dss[10])), pytest.approx(_z(dss[24])))
    assert vol.seam_slices == (10, 24)
    merged = [p for p in probs if p.action is Action.MERGED]
    assert sorted(p.member.split("/")[0] for p in merged) == sorted(
        p[0].SeriesInstanceUID[-8:] for p in (low, mid)
    )
    assert all(p.kept_as == f"{EXAM_KEY}:{vol.series_uid}" for p in merged)
    assert "same pixels (deduplicated)" in merged[0].reason
    dropped = [p for p in probs if p.action is Action.DROPPED]
    assert len(dropped) == 2
    assert all("overlap of a stitched scan" in p.reason for p in dropped)


def test_overlap_with_identical_pixel_bytes_is_decided_by_the_hash() -> None:
    dss = _scan(20, seed=3)
    a = _as_part(dss[:12], 2, "105300")
    b = _as_part(dss[10:], 3, "110200")
    for d in b:
        d.SOPInstanceUID = generate_uid()
    insts, store = _instances([a, b], [ZIP_A, ZIP_B], hashed=True)
    calls: list[str] = []

    def read(i: Instance) -> bytes:
        calls.append(i.sop_uid)
        return store[(i.zip, i.member)]

    plan = stitch.plan_scans(
        [
            tuple(x for x in insts if x.series_uid == s)
            for s in (a[0].SeriesInstanceUID, b[0].SeriesInstanceUID)
        ],
        lambda x, y: stitch.pixels_differ(x, y, lambda i: ct_convert._slice_hu(i, read), 0.0),
        CtConfig(),
    )
    assert calls == []  # equal stored bytes: nothing decoded
    [scan] = plan.scans
    assert len(scan.instances) == 20 and len(scan.left_out) == 2


def test_stitch_off_keeps_the_parts_apart() -> None:
    dss = _scan(24)
    a, b = _as_part(dss[:12], 2, "105300"), _as_part(dss[12:], 3, "110200")
    vols, probs = _convert([a, b], [ZIP_A, ZIP_B], CtConfig(series="all", stitch="off"))
    assert [len(v.sop_uids) for v in vols] == [12, 12]
    assert all(v.stitched_series == () and v.seams_mm == () for v in vols)
    vols, probs = _convert([a, b], [ZIP_A, ZIP_B], CtConfig(stitch="off"))
    assert len(vols) == 1 and len(vols[0].sop_uids) == 12
    assert any("not the best series" in p.reason for p in probs)


def test_real_ct_slices_cut_in_two_series_and_two_transfer_syntaxes() -> None:
    """Real CT headers and pixels (pydicom-data's 693 slice, uncompressed and JPEG 2000
    lossless): a stack cut in two series that overlap by two slices, the repeat stored in
    the other transfer syntax. Identical decoded pixels: stitched, every pixel in place."""
    unc = get_testdata_file("693_UNCR.dcm")
    j2k = get_testdata_file("693_J2KR.dcm")
    assert isinstance(unc, str) and isinstance(j2k, str)
    bases = [pydicom.dcmread(unc), pydicom.dcmread(j2k)]
    assert np.array_equal(bases[0].pixel_array, bases[1].pixel_array)
    iop = np.asarray(bases[0].ImageOrientationPatient, float)
    nrm = np.cross(iop[:3], iop[3:])
    ipp0 = np.asarray(bases[0].ImagePositionPatient, float)

    def slice_at(k: int, syntax: int) -> Dataset:
        ds = copy.deepcopy(bases[syntax])
        ds.SOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [round(float(v), 4) for v in ipp0 + 2.0 * k * nrm]
        ds.SliceThickness = 2.0
        ds.RescaleIntercept = float(ds.get("RescaleIntercept", 0)) + 10 * k  # slices differ
        return ds

    a = _as_part([slice_at(k, 0) for k in range(12)], 2, "105300")
    b = _as_part([slice_at(k, 1 if k < 12 else 0) for k in range(10, 22)], 3, "110200")
    vols, probs = _convert([a, b], [ZIP_A, ZIP_B])
    assert len(vols) == 1, probs
    vol = vols[0]
    assert vol.array.shape[0] == 22 and vol.seam_slices == (12,)
    assert_pixels_at_positions(vol, [*a, *b], exact=True)
    assert len([p for p in probs if p.action is Action.DROPPED]) == 2  # the 2 repeats


# ------------------------------------------------------------------ negative controls


@pytest.mark.parametrize(
    "change", [{"kernel": "B30f"}, {"thickness": 5.0}], ids=["kernel", "thickness"]
)
def test_other_reconstructions_of_the_same_range_are_never_stitched(
    change: dict[str, object],
) -> None:
    """A sharp and a soft reconstruction (or thin and thick slices) of one range, and of two
    abutting ranges: never parts of one scan."""
    sharp = _scan(24, kernel="B70f", thickness=2.5)
    other = _scan(24, seed=5, **{"kernel": "B70f", "thickness": 2.5, **change})
    for o in (other, [copy.deepcopy(d) for d in other]):
        for k, d in enumerate(o):  # the second round: the other reconstruction continues
            if o is not other:
                d.ImagePositionPatient[2] = _z(sharp[-1]) + 2.5 * (k + 1)
        vols, probs = _convert(
            [_as_part(sharp, 2, "105300"), _as_part(o, 3, "105300")],
            [ZIP_A, ZIP_A],
            CtConfig(series="all"),
        )
        assert [len(v.sop_uids) for v in vols] == [24, 24]
        assert all(not v.stitched_series for v in vols)
        assert not [p for p in probs if p.action in (Action.MERGED, Action.KEPT)]


def test_overlap_with_different_pixels_stays_two_volumes_with_the_reason() -> None:
    """A repeat of the lower chest after motion (same range, new pixels): two scans."""
    first = _scan(24, seed=1)
    again = _scan(24, seed=1, values=None)[14:]  # same positions, other pixels
    a, b = _as_part(first, 2, "105300"), _as_part(again, 3, "110200")
    vols, probs = _convert([a, b], [ZIP_A, ZIP_B], CtConfig(series="all"))
    assert sorted(len(v.sop_uids) for v in vols) == [10, 24]
    assert all(not v.stitched_series for v in vols)
    [apart] = [p for p in probs if p.action is Action.KEPT]
    assert apart.zip == ZIP_B and b[0].SeriesInstanceUID in apart.reason
    assert "not stitched" in apart.reason and "different pixels" in apart.reason
    assert "max |HU difference|" in apart.reason
    # best keeps the whole first scan; the repeat is dropped as not the best
    vols, probs = _convert([a, b], [ZIP_A, ZIP_B])
    assert len(vols) == 1 and vols[0].series_uid == a[0].SeriesInstanceUID
    assert len(vols[0].sop_uids) == 24


def test_overlap_at_positions_that_do_not_coincide_is_not_stitched() -> None:
    dss = _scan(24)
    shifted = _scan(10, origin=(-8.0, -10.0, _z(dss[18]) + 1.25))
    vols, probs = _convert(
        [_as_part(dss, 2, "105300"), _as_part(shifted, 3, "110200")],
        [ZIP_A, ZIP_B],
        CtConfig(series="all"),
    )
    assert len(vols) == 2
    [apart] = [p for p in probs if p.action is Action.KEPT]
    assert "do not coincide" in apart.reason


@pytest.mark.parametrize("policy", ["resample", "reject"])
def test_a_gap_between_parts_follows_the_spacing_policy_and_says_so(policy: str) -> None:
    dss = _scan(26, seed=4)
    a, b = _as_part(dss[:12], 2, "105300"), _as_part(dss[14:], 3, "110200")  # 2 slices missing
    cfg = CtConfig(series="all", spacing_policy=policy)
    vols, probs = _convert([a, b], [ZIP_A, ZIP_B], cfg)
    if policy == "resample":
        [vol] = vols
        assert vol.resampled and vol.stitched_series == (
            a[0].SeriesInstanceUID,
            b[0].SeriesInstanceUID,
        )
        assert vol.array.shape[0] == 26  # the missing slices' positions are interpolated
        [merged] = [p for p in probs if p.action is Action.MERGED]
        assert "gap of 7.5 mm" in merged.reason and "ct.spacing_policy=resample" in merged.reason
        assert "about 2 missing slice(s)" in merged.reason
        assert_pixels_at_positions(vol, [*a, *b], exact=True)
    else:
        assert [len(v.sop_uids) for v in vols] == [12, 12]
        [apart] = [p for p in probs if p.action is Action.KEPT]
        assert "gap of 7.5 mm" in apart.reason and "ct.spacing_policy=reject" in apart.reason


def test_a_gap_beyond_the_limit_is_another_region() -> None:
    dss = _scan(40, seed=6)
    a, b = _as_part(dss[:12], 2, "105300"), _as_part(dss[28:], 3, "110200")  # 40 mm apart
    vols, probs = _convert([a, b], [ZIP_A, ZIP_B], CtConfig(series="all"))
    assert [len(v.sop_uids) for v in vols] == [12, 12]
    assert not [p for p in probs if p.action is not Action.DROPPED]
    vols, _ = _convert([a, b], [ZIP_A, ZIP_B], CtConfig(series="all", stitch_max_gap=50.0))
    assert len(vols) == 1 and vols[0].resampled


def test_other_frame_of_reference_is_not_stitched() -> None:
    dss = _scan(24)
    a, b = _as_part(dss[:12], 2, "105300"), _as_part(dss[12:], 3, "110200")
    for d in b:
        d.FrameOfReferenceUID = "1.2.3.4"
    vols, _ = _convert([a, b], [ZIP_A, ZIP_B], CtConfig(series="all"))
    assert [len(v.sop_uids) for v in vols] == [12, 12]


def test_a_stitched_scan_that_fails_falls_back_to_its_parts() -> None:
    dss = _scan(24)
    a, b = _as_part(dss[:12], 2, "105300"), _as_part(dss[12:], 3, "110200")
    insts, store = _instances([a, b], [ZIP_A, ZIP_B])
    bad = next(i for i in insts if i.series_uid == b[0].SeriesInstanceUID)

    def read(i: Instance) -> bytes:
        return b"not dicom" if i.sop_uid == bad.sop_uid else store[(i.zip, i.member)]

    vols, probs = ct_convert.convert_exam(_exam(insts), read, CtConfig())
    assert [v.series_uid for v in vols] == [a[0].SeriesInstanceUID]
    assert not vols[0].stitched_series
    errors = [p for p in probs if p.action is Action.ERROR]
    assert "stitched scan" in errors[0].reason and "tried alone" in errors[0].reason


def test_single_slice_parts_use_their_thickness_as_the_step() -> None:
    dss = _scan(3, thickness=2.5)
    cfg = CtConfig(series="all", min_slices=1)
    near = [_as_part([dss[0]], 2, "105300"), _as_part([dss[1]], 3, "110200")]
    vols, _ = _convert(near, [ZIP_A, ZIP_B], cfg)
    assert [v.array.shape[0] for v in vols] == [2] and vols[0].seam_slices == (1,)
    far = _scan(1, origin=(-8.0, -10.0, 60.0), thickness=2.5)
    vols, _ = _convert([near[0], _as_part(far, 3, "110200")], [ZIP_A, ZIP_B], cfg)
    assert [v.array.shape[0] for v in vols] == [1, 1]


def test_an_overlap_slice_that_cannot_be_read_keeps_the_parts_apart() -> None:
    dss = _scan(24, seed=7)
    a, b = _as_part(dss[:14], 2, "105300"), _as_part(dss[12:], 3, "110200")
    for d in b:
        d.SOPInstanceUID = generate_uid()
    insts, store = _instances([a, b], [ZIP_A, ZIP_B])
    bad = next(i for i in insts if i.sop_uid == b[0].SOPInstanceUID)  # in the overlap

    def read(i: Instance) -> bytes:
        return b"not dicom" if i.sop_uid == bad.sop_uid else store[(i.zip, i.member)]

    vols, probs = ct_convert.convert_exam(_exam(insts), read, CtConfig(series="all"))
    assert [v.series_uid for v in vols] == [a[0].SeriesInstanceUID]
    [apart] = [p for p in probs if p.action is Action.KEPT]
    assert "could not be compared" in apart.reason and "DecodeError" in apart.reason
    assert [p.action for p in probs if p.zip == ZIP_B and p is not apart] == [Action.ERROR]


def test_stitch_keys_compose_from_the_shipped_config(make_cfg: MakeCfg, tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, tmp_path / "out")
    assert (cfg.ct.stitch, cfg.ct.stitch_max_gap, cfg.ct.stitch_atol_hu) == ("auto", 10.0, 0.0)
    cfg = make_cfg(tmp_path, tmp_path / "out", "ct.stitch=off", "ct.stitch_atol_hu=2")
    assert (cfg.ct.stitch, cfg.ct.stitch_atol_hu) == ("off", 2.0)


def test_bad_stitch_config_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ct\.stitch="):
        CtConfig(stitch="yes")
    with pytest.raises(ConfigError, match=r"ct\.stitch_max_gap"):
        CtConfig(stitch_max_gap=-1.0)
    with pytest.raises(ConfigError, match=r"ct\.stitch_atol_hu"):
        CtConfig(stitch_atol_hu=float("nan"))


def test_report_lists_series_kept_apart_and_counts_only_zips_as_kept() -> None:
    import pandas as pd

    from hiroml.report import sections as report_sections

    audit = pd.DataFrame(
        [
            {"zip": "a.zip", "batch": "B1", "action": "kept", "reason": "", "kept_as": "",
             "detail": "", "exam_key": "", "member": ""},
            {"zip": "b.zip", "batch": "B1", "action": "kept", "kept_as": "", "detail": "",
             "reason": "series 1.2.3 not stitched (ct.stitch=auto): overlaps series 1.2.4 ...",
             "exam_key": "E1", "member": "3_CHEST/IM-0001.dcm"},
        ]
    )  # fmt: skip
    page = report_sections._decisions(audit)
    assert "1 zip was kept as it is" in page
    assert "kept, not stitched (1 row)</h3>" in page and "series 1.2.3 not stitched" in page
