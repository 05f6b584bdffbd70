"""CT series selection and volumes: geometry checked against the DICOM pixel positions."""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import math
import random
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from ct_factory import SeriesSpec, ct_exam, make_series, to_bytes, to_instance
from ct_geometry import assert_pixels_at_positions, slice_hu
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from hiroml.config import CtConfig
from hiroml.ct import convert as ct_convert
from hiroml.ct import select as ct_select
from hiroml.ct import volume as ct_volume
from hiroml.errors import GeometryError
from hiroml.ingest.zipio import SafeZip
from hiroml.records import CtVolume, Exam, Instance
from hiroml.vocab import Action

ZIP_A = "1234_20200508-105300_A002_CT-CHEST-WO.zip"
ZIP_B = "1234_20200508-110200_A002_CT-CHEST-WO.zip"


def shuffled(dss: Sequence[Dataset], seed: int = 0) -> list[Dataset]:
    out = list(dss)
    random.Random(seed).shuffle(out)
    return out


def pairs(dss: Sequence[Dataset], zip_name: str = ZIP_A) -> list[tuple[Instance, Dataset]]:
    return [(to_instance(d, zip_name=zip_name), d) for d in dss]


exam_of = ct_exam


def reader(
    items: Sequence[tuple[Instance, Dataset]],
) -> Callable[[Instance], bytes]:
    store = {(i.zip, i.member): to_bytes(d) for i, d in items}
    return lambda inst: store[(inst.zip, inst.member)]


def z_of(ds: Dataset) -> float:
    return float(ds.ImagePositionPatient[2])


# ------------------------------------------------------------------ native grid, exact


def test_shuffled_files_sorted_by_position_not_instance_number() -> None:
    dss = make_series(SeriesSpec(n=15, values=None, seed=1))
    # instance numbers deliberately scrambled: they must not decide the order
    for k, ds in enumerate(dss):
        ds.InstanceNumber = (k * 7) % 15 + 1
    vol = ct_volume.build_volume(pairs(shuffled(dss)), CtConfig())
    assert vol.array.dtype == np.int16
    assert vol.array.shape == (15, 24, 20)
    assert vol.spacing_xyz == pytest.approx((0.7, 0.8, 2.5))
    assert vol.origin_xyz == pytest.approx((-8.0, -10.0, -40.0))
    assert vol.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert not vol.resampled and vol.decisions == ()
    assert vol.sop_uids == tuple(d.SOPInstanceUID for d in sorted(dss, key=z_of))
    rep = assert_pixels_at_positions(vol, dss, exact=True)
    assert rep.n_pixels == 15 * 24 * 20


def test_oblique_series_reversed_along_normal() -> None:
    """An oblique orientation whose normal points against the table: the volume's z axis is
    the normal and the origin is the first slice along it, not the first file."""
    dss = make_series(SeriesSpec(n=10, values=None, seed=2))
    a = math.radians(30)
    iop = [math.cos(a), math.sin(a), 0.0, 0.0, 0.0, -1.0]  # coronal-ish oblique
    n = np.cross(iop[:3], iop[3:])
    for k, ds in enumerate(dss):
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = list(np.array([5.0, -3.0, 7.0]) - 1.25 * k * n)
    vol = ct_volume.build_volume(pairs(shuffled(dss)), CtConfig())
    assert vol.spacing_xyz[2] == pytest.approx(1.25)
    assert np.reshape(vol.direction, (3, 3))[:, 2] == pytest.approx(n)
    assert vol.origin_xyz == pytest.approx(tuple(dss[-1].ImagePositionPatient))
    assert_pixels_at_positions(vol, dss, exact=True)


def _build_both_ways(items: list[tuple[Instance, Dataset]], path: str) -> CtVolume:
    """build_volume (header values from the datasets) or convert_series (from the records)."""
    if path == "build_volume":
        return ct_volume.build_volume(items, CtConfig())
    vol, _ = ct_convert.convert_series([i for i, _ in items], reader(items), CtConfig())
    return vol


BOTH_PATHS = pytest.mark.parametrize("path", ["build_volume", "convert_series"])


@BOTH_PATHS
def test_per_slice_rescale_into_hu(path: str) -> None:
    n = 12
    slopes = [1.0] * 6 + [2.0] * 6
    intercepts = [-1024.0, -1000.0, 0.0, -1024.0, -1024.0, -2000.0] + [-1024.0] * 6
    dss = make_series(SeriesSpec(n=n, values=None, slope=slopes, intercept=intercepts))
    vol = _build_both_ways(pairs(shuffled(dss)), path)
    assert vol.array.dtype == np.int16  # every HU integral and within int16: lossless
    assert_pixels_at_positions(vol, dss, exact=True)


@BOTH_PATHS
def test_fractional_rescale_stored_as_float32(path: str) -> None:
    dss = make_series(SeriesSpec(values=None, slope=0.5, intercept=-1024.25))
    vol = _build_both_ways(pairs(dss), path)
    assert vol.array.dtype == np.float32
    assert_pixels_at_positions(vol, dss, exact=True)


@BOTH_PATHS
def test_bits_stored_masking_matches_pydicom(path: str) -> None:
    """12-bit unsigned data with garbage in the unused high bits, and 12-bit signed data: the
    fast path must mask / sign-extend exactly as pydicom does."""
    for signed in (False, True):
        dss = make_series(SeriesSpec(values=None, signed=signed, bits_stored=12, intercept=0))
        rng = np.random.default_rng(3)
        for ds in dss:
            arr = np.frombuffer(ds.PixelData, dtype="<i2" if signed else "<u2").copy()
            garbage = rng.integers(0, 16, arr.shape).astype(arr.dtype) << 12
            ds.PixelData = (arr | garbage).tobytes()
        vol = _build_both_ways(pairs(dss), path)
        assert_pixels_at_positions(vol, dss, exact=True)
        if signed:
            assert vol.array.min() < 0


# ------------------------------------------------------------------ gaps, uneven, duplicates


GAP_Z = [0.0, 2.5, 5.0, 7.5, 12.5, 15.0, 17.5, 20.0, 22.5, 25.0, 27.5, 30.0]
UNEVEN_Z = [0.0, 2.5, 5.0, 7.5, 10.0, 11.5, 14.0, 16.5, 19.0, 21.5, 24.0, 26.5]


@pytest.mark.parametrize(("zs", "what"), [(GAP_Z, "gap: 1 missing slice"), (UNEVEN_Z, "uneven")])
def test_gap_or_uneven_spacing_resampled(zs: list[float], what: str) -> None:
    dss = make_series(SeriesSpec(positions_z=zs))
    vol = ct_volume.build_volume(pairs(shuffled(dss)), CtConfig())
    assert vol.resampled
    assert any(what in d for d in vol.decisions), vol.decisions
    assert vol.array.shape[0] == round(zs[-1] / 2.5) + 1
    assert vol.spacing_xyz[2] == pytest.approx(zs[-1] / (vol.array.shape[0] - 1))
    # linear interpolation along z of a smooth field: a few HU
    rep = assert_pixels_at_positions(vol, dss, exact=False, atol_hu=2.5)
    assert rep.max_abs_error_hu > 0.0  # interpolated, not copied


@pytest.mark.parametrize(("zs", "match"), [(GAP_Z, r"missing slice.*7\.500 and 12\.500")])
def test_gap_rejected_with_positions_named(zs: list[float], match: str) -> None:
    dss = make_series(SeriesSpec(positions_z=zs))
    with pytest.raises(GeometryError, match=match):
        ct_volume.build_volume(pairs(dss), CtConfig(spacing_policy="reject"))


def test_uneven_spacing_rejected() -> None:
    dss = make_series(SeriesSpec(positions_z=UNEVEN_Z))
    with pytest.raises(GeometryError, match=r"uneven step between 10\.000 and 11\.500"):
        ct_volume.build_volume(pairs(dss), CtConfig(spacing_policy="reject"))


def test_spacing_tolerance_is_a_keyword() -> None:
    zs = [0.0, 2.5, 5.0, 7.52, 10.0, 12.5, 15.0, 17.5, 20.0, 22.5]  # 0.02 mm jitter
    dss = make_series(SeriesSpec(positions_z=zs))
    cfg = CtConfig(spacing_policy="reject")
    ct_volume.build_volume(pairs(dss), cfg)  # default atol 0.01 + rtol 5 % of 2.5 mm: accepted
    with pytest.raises(GeometryError, match="not evenly spaced"):
        ct_volume.build_volume(pairs(dss), cfg, rtol=0.0, atol=0.001)


def test_duplicate_slice_identical_pixels_kept_once() -> None:
    dss = make_series(SeriesSpec(values=None))
    dup = copy.deepcopy(dss[4])
    dup.SOPInstanceUID = generate_uid()
    items = pairs(shuffled([*dss, dup]))
    vol = ct_volume.build_volume(items, CtConfig())
    assert vol.array.shape[0] == len(dss)
    assert any("identical" in d for d in vol.decisions)
    assert not vol.resampled
    assert_pixels_at_positions(vol, [*dss, dup], exact=True)
    # through convert_series, the left-out slice is an audit row
    _, problems = ct_convert.convert_series([i for i, _ in items], reader(items), CtConfig())
    assert len(problems) == 1 and problems[0].action == Action.DROPPED
    assert "identical pixels" in problems[0].reason


def _two_acquisitions() -> tuple[list[Dataset], list[Dataset]]:
    uid = generate_uid()
    first = make_series(SeriesSpec(series_uid=uid, values=None, seed=5))
    second = make_series(SeriesSpec(series_uid=uid, values=None, seed=6, instance_offset=12))
    for ds in first:
        ds.AcquisitionTime = "105301"
    for ds in second:
        ds.AcquisitionTime = "105845"
        ds.AcquisitionNumber = 2
    return first, second


def test_duplicate_positions_different_pixels_keep_first_acquisition() -> None:
    first, second = _two_acquisitions()
    items = pairs(shuffled([*second, *first]))
    vol = ct_volume.build_volume(items, CtConfig(duplicate_policy="split"))
    assert vol.sop_uids == tuple(d.SOPInstanceUID for d in first)
    assert_pixels_at_positions(vol, first, exact=True)
    _, problems = ct_convert.convert_series([i for i, _ in items], reader(items), CtConfig())
    assert {p.reason.split("instance ")[1].split(":")[0] for p in problems} == {
        d.SOPInstanceUID for d in second
    }
    assert all("first acquisition" in p.reason for p in problems)


def test_duplicate_positions_different_pixels_rejected() -> None:
    first, second = _two_acquisitions()
    with pytest.raises(GeometryError, match=r"share the position .* pixels differ"):
        ct_volume.build_volume(pairs([*first, *second]), CtConfig(duplicate_policy="reject"))


# ------------------------------------------------------------------ gantry tilt


@pytest.mark.parametrize("tilt", [15.0, -20.0, 7.5])
def test_gantry_tilt_resampled_onto_orthogonal_grid(tilt: float) -> None:
    dss = make_series(SeriesSpec(n=14, tilt_deg=tilt))
    vol = ct_volume.build_volume(pairs(shuffled(dss)), CtConfig())
    assert vol.resampled
    assert vol.tilt_deg == pytest.approx(abs(tilt), abs=0.01)
    assert any("gantry tilt" in d for d in vol.decisions)
    d = np.reshape(vol.direction, (3, 3))
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-9)  # orthonormal
    # the grid is wider than one slice along the shear, so every pixel is inside
    assert vol.array.shape[1] > 24
    rep = assert_pixels_at_positions(vol, dss, exact=False, atol_hu=2.5, edge_atol_hu=12.0)
    assert rep.max_index_offgrid > 0.1  # really resampled, not a native grid


def test_shear_along_both_image_axes_resampled() -> None:
    """An oblique plane whose row and column directions both tilt away from the table
    direction: the in-plane shift between slices has components along r and c."""
    a, b = math.radians(10.0), math.radians(-14.0)
    r = np.array([math.cos(a), 0.0, -math.sin(a)])
    c = np.array([0.0, math.cos(b), -math.sin(b)])
    c = c - np.dot(c, r) * r
    c /= np.linalg.norm(c)
    iop = [round(float(v), 8) for v in (*r, *c)]
    dss = make_series(SeriesSpec(n=14, orientation=iop))
    vol = ct_volume.build_volume(pairs(shuffled(dss)), CtConfig())
    assert vol.resampled and vol.tilt_deg > 10.0
    assert vol.array.shape[1] > 24 and vol.array.shape[2] > 20  # widened along both axes
    assert_pixels_at_positions(vol, dss, exact=False, atol_hu=2.5, edge_atol_hu=12.0)


def test_gantry_tilt_rejected() -> None:
    dss = make_series(SeriesSpec(tilt_deg=12.0))
    with pytest.raises(GeometryError, match=r"gantry tilt 12\.00 deg"):
        ct_volume.build_volume(pairs(dss), CtConfig(tilt_policy="reject"))


def _sheared_as_orthogonal(dss: Sequence[Dataset]) -> CtVolume:
    """The classic mistake: the raw slice stack with the first IPP and the normal as z axis."""
    dss = sorted(dss, key=z_of)
    iop = np.asarray(dss[0].ImageOrientationPatient, float)
    n = np.cross(iop[:3], iop[3:])
    step = float(np.dot(np.subtract(dss[1].ImagePositionPatient, dss[0].ImagePositionPatient), n))
    dy, dx = (float(v) for v in dss[0].PixelSpacing)
    return CtVolume(
        series_uid="x",
        series_description="",
        kernel="",
        sop_uids=(),
        zips=(),
        array=np.stack([slice_hu(d) for d in dss]).astype(np.float32),
        spacing_xyz=(dx, dy, step),
        origin_xyz=tuple(float(v) for v in dss[0].ImagePositionPatient),  # type: ignore[arg-type]
        direction=tuple(np.stack([iop[:3], iop[3:], n], axis=1).ravel()),
        slice_thickness=None,
        resampled=False,
    )


def test_helper_catches_sheared_geometry_stored_as_orthogonal() -> None:
    """Negative control: the pixel-position check must fail on a sheared stack stored as if
    orthogonal, and on our own volume shifted by a quarter pixel."""
    dss = make_series(SeriesSpec(n=14, tilt_deg=15.0))
    with pytest.raises(AssertionError):
        assert_pixels_at_positions(_sheared_as_orthogonal(dss), dss, exact=False, atol_hu=3.0)
    vol = ct_volume.build_volume(pairs(dss), CtConfig())
    assert_pixels_at_positions(vol, dss, exact=False, atol_hu=2.5, edge_atol_hu=12.0)
    moved = dataclasses.replace(vol, origin_xyz=tuple(np.add(vol.origin_xyz, (0.1, 0.0, 0.0))))
    with pytest.raises(AssertionError, match=r"atol 2\.5 HU"):  # 0.1 mm: values, not containment
        assert_pixels_at_positions(
            moved, dss, exact=False, atol_hu=2.5, edge_atol_hu=12.0, index_atol=0.5
        )


# ------------------------------------------------------------------ selection


def test_localizer_inside_series_dropped() -> None:
    dss = make_series(SeriesSpec(n=12, values=None))
    loc = make_series(SeriesSpec(n=1, series_uid=dss[0].SeriesInstanceUID, tilt_deg=90.0))[0]
    loc.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]  # not flagged: caught by orientation
    items = pairs(shuffled([*dss, loc]))
    selected, problems = ct_select.select_series([i for i, _ in items], CtConfig())
    assert len(selected) == 1 and len(selected[0]) == 12
    (p,) = problems
    assert p.action == Action.DROPPED and p.stage == "ct" and p.zip == ZIP_A
    assert loc.SOPInstanceUID in p.reason and "localizer or reformat" in p.reason
    volumes, problems2 = ct_convert.convert_exam(
        exam_of([i for i, _ in items]), reader(items), CtConfig()
    )
    assert len(volumes) == 1 and len(problems2) == 1
    assert_pixels_at_positions(volumes[0], dss, exact=True)


def test_non_volume_objects_dropped_with_reasons() -> None:
    main = make_series(SeriesSpec(n=12))
    scout = make_series(SeriesSpec(n=2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    derived = make_series(SeriesSpec(n=12, image_type=("DERIVED", "SECONDARY", "MPR")))
    short = make_series(SeriesSpec(n=4))
    dose_sc = make_series(SeriesSpec(n=1))
    dose_sc[0].SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    dose_sc[0].Modality = "OT"
    insts = [to_instance(d) for d in [*main, *scout, *derived, *short, *dose_sc]]
    sr = Instance(
        **{
            **{f: getattr(insts[0], f) for f in insts[0].__dataclass_fields__},
            "sop_uid": generate_uid(),
            "series_uid": generate_uid(),
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.67",
            "modality": "SR",
            "has_pixels": False,
            "member": "dose/report.dcm",
        }
    )
    selected, problems = ct_select.select_series([*insts, sr], CtConfig())
    assert [s[0].series_uid for s in selected] == [main[0].SeriesInstanceUID]
    reasons = {p.reason.split(":")[0].removeprefix("series "): p.reason for p in problems}
    assert "localizer" in reasons[scout[0].SeriesInstanceUID]
    assert "derived" in reasons[derived[0].SeriesInstanceUID]
    assert "fewer than ct.min_slices=10" in reasons[short[0].SeriesInstanceUID]
    assert "secondary capture" in reasons[dose_sc[0].SeriesInstanceUID]
    assert "dose report" in reasons[sr.series_uid]
    assert all(p.action == Action.DROPPED for p in problems)
    # one row per dropped series, not one per instance
    assert len(problems) == 5
    # derived series kept when configured
    selected, _ = ct_select.select_series(insts, CtConfig(drop_derived=False, series="all"))
    assert len(selected) == 2


def test_best_series_thinnest_then_preferred_kernel() -> None:
    soft = make_series(SeriesSpec(n=12, kernel="B30f", description="SOFT"))
    lung = make_series(SeriesSpec(n=12, kernel="B70f", description="LUNG"))
    thin = make_series(SeriesSpec(n=24, step=1.25, kernel="STANDARD", description="THIN"))
    insts = [to_instance(d) for d in [*soft, *lung]]
    selected, problems = ct_select.select_series(insts, CtConfig())
    assert [s[0].kernel for s in selected] == ["B70f"]
    assert len(problems) == 1 and "not the best series" in problems[0].reason
    assert f"kept {lung[0].SeriesInstanceUID}" in problems[0].reason
    selected, _ = ct_select.select_series(insts + [to_instance(d) for d in thin], CtConfig())
    assert [s[0].kernel for s in selected] == ["STANDARD"]  # thinner beats the kernel list
    selected, problems = ct_select.select_series(insts, CtConfig(series="all"))
    assert len(selected) == 2 and problems == []
    items = pairs(soft) + pairs(lung)
    volumes, _ = ct_convert.convert_exam(exam_of([i for i, _ in items]), reader(items), CtConfig())
    assert [v.kernel for v in volumes] == ["B70f"]
    assert_pixels_at_positions(volumes[0], lung, exact=True)


def test_best_series_rejected_falls_back_to_next() -> None:
    """The thinnest series has a gap and spacing_policy=reject: the exam keeps the next
    series instead of nothing; the rejected one is an ERROR row naming the gap."""
    thin_z = [k * 1.25 for k in range(24) if k != 10]
    thin = make_series(SeriesSpec(positions_z=thin_z, step=1.25, kernel="B70f", values=None))
    soft = make_series(SeriesSpec(n=12, kernel="B30f", values=None))
    other = make_series(SeriesSpec(n=12, kernel="B31f", values=None))
    items = pairs(thin) + pairs(soft) + pairs(other)
    cfg = CtConfig(spacing_policy="reject", preferred_kernels=["B70", "B30", "B31"])
    volumes, problems = ct_convert.convert_exam(exam_of([i for i, _ in items]), reader(items), cfg)
    assert [v.series_uid for v in volumes] == [soft[0].SeriesInstanceUID]
    assert_pixels_at_positions(volumes[0], soft, exact=True)
    errors = [p for p in problems if p.action == Action.ERROR]
    dropped = [p for p in problems if p.action == Action.DROPPED]
    assert len(errors) == 1 and thin[0].SeriesInstanceUID in errors[0].reason
    assert "missing slice" in errors[0].reason
    assert len(dropped) == 1 and other[0].SeriesInstanceUID in dropped[0].reason
    assert f"kept {soft[0].SeriesInstanceUID}" in dropped[0].reason


def test_series_split_across_zips_joined() -> None:
    dss = make_series(SeriesSpec(n=16, values=None))
    dss.sort(key=z_of)
    items = pairs(dss[:9], ZIP_A) + pairs(dss[9:], ZIP_B)
    random.Random(4).shuffle(items)
    volumes, problems = ct_convert.convert_exam(
        exam_of([i for i, _ in items]), reader(items), CtConfig()
    )
    assert problems == []
    (vol,) = volumes
    assert set(vol.zips) == {ZIP_A, ZIP_B}
    assert vol.array.shape[0] == 16 and not vol.resampled
    assert any("joined from 2 zips" in d for d in vol.decisions)
    assert_pixels_at_positions(vol, dss, exact=True)


def test_seam_gap_between_zips_is_checked() -> None:
    dss = make_series(SeriesSpec(n=16))
    dss.sort(key=z_of)
    items = pairs(dss[:8], ZIP_A) + pairs(dss[9:], ZIP_B)  # slice 8 lost at the seam
    volumes, problems = ct_convert.convert_exam(
        exam_of([i for i, _ in items]), reader(items), CtConfig(spacing_policy="reject")
    )
    assert volumes == []
    (p,) = problems
    assert p.action == Action.ERROR and dss[0].SeriesInstanceUID in p.reason
    assert "1 missing slice" in p.reason
    volumes, _ = ct_convert.convert_exam(exam_of([i for i, _ in items]), reader(items), CtConfig())
    assert_pixels_at_positions(volumes[0], dss[:8] + dss[9:], exact=False, atol_hu=2.5)


def test_failing_series_becomes_problem_others_go_on() -> None:
    good = make_series(SeriesSpec(n=12, values=None))
    bad = make_series(SeriesSpec(n=12, kernel="B30f"))
    items = pairs(good) + pairs(bad)
    store = reader(items)
    bad_uid = bad[0].SeriesInstanceUID

    def read(inst: Instance) -> bytes:
        data = store(inst)
        return data[:-100] if inst.series_uid == bad_uid else data  # truncated pixel data

    volumes, problems = ct_convert.convert_exam(
        exam_of([i for i, _ in items]), read, CtConfig(series="all")
    )
    assert [v.series_uid for v in volumes] == [good[0].SeriesInstanceUID]
    (p,) = problems
    assert p.action == Action.ERROR and bad_uid in p.reason and "truncated" in p.reason


# ------------------------------------------------------------------ options and helpers


def test_resample_spacing_and_clip() -> None:
    dss = make_series(SeriesSpec(n=12))
    cfg = CtConfig(resample_spacing=[1.4, 1.6, 5.0], clip_hu=[-100.0, 150.0])
    vol = ct_volume.build_volume(pairs(dss), cfg)
    assert vol.resampled
    assert vol.spacing_xyz == pytest.approx((1.4, 1.6, 5.0))
    assert vol.size_xyz == (11, 13, 7)  # covers the original extent
    assert vol.array.min() >= -100 and vol.array.max() <= 150
    native = ct_volume.build_volume(pairs(dss), CtConfig())
    assert vol.origin_xyz == pytest.approx(native.origin_xyz)
    unclipped = ct_volume.build_volume(pairs(dss), CtConfig(resample_spacing=[1.4, 1.6, 5.0]))
    assert_pixels_at_positions(unclipped, dss, exact=False, atol_hu=10.0, edge_atol_hu=25.0)


def test_to_sitk_round_trip() -> None:
    dss = make_series(SeriesSpec(n=10, tilt_deg=10.0))
    vol = ct_volume.build_volume(pairs(dss), CtConfig())
    img = ct_volume.to_sitk(vol)
    assert img.GetSize() == vol.size_xyz
    assert img.GetSpacing() == pytest.approx(vol.spacing_xyz)
    assert img.GetOrigin() == pytest.approx(vol.origin_xyz)
    assert img.GetDirection() == pytest.approx(vol.direction)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), vol.array)
    assert_pixels_at_positions(img, dss, exact=False, atol_hu=2.5, edge_atol_hu=12.0)
    with pytest.raises(GeometryError, match="expected a"):
        ct_volume.array_to_sitk(
            np.zeros((3, 3)),
            spacing_xyz=(1, 1, 1),
            origin_xyz=(0, 0, 0),
            direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
        )


# ------------------------------------------------------------------ real CT files


def _real_series(name: str, n: int) -> list[Dataset]:
    """``n`` copies of a real CT slice stacked along its normal (real header and pixels)."""
    path = get_testdata_file(name)
    assert isinstance(path, str)
    base = pydicom.dcmread(path)
    iop = np.asarray(base.ImageOrientationPatient, float)
    nrm = np.cross(iop[:3], iop[3:])
    uid = generate_uid()
    out: list[Dataset] = []
    for k in range(n):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [
            round(float(v), 4) for v in np.asarray(base.ImagePositionPatient, float) + 3.0 * k * nrm
        ]
        ds.RescaleIntercept = float(ds.get("RescaleIntercept", 0)) + k  # per-slice rescale
        out.append(ds)
    return out


@BOTH_PATHS
@pytest.mark.parametrize("name", ["CT_small.dcm", "693_J2KR.dcm", "693_UNCR.dcm"])
def test_real_ct_single_slice(name: str, path: str) -> None:
    file = get_testdata_file(name)
    if file is None:
        pytest.skip(f"{name} not available")
    ds = pydicom.dcmread(file)
    vol = _build_both_ways([(to_instance(ds), ds)], path)
    assert vol.array.shape == (1, int(ds.Rows), int(ds.Columns))
    assert vol.spacing_xyz[:2] == pytest.approx(
        (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))
    )
    assert_pixels_at_positions(vol, [ds], exact=True)


def test_real_ct_stack_shuffled() -> None:
    dss = _real_series("CT_small.dcm", 11)
    vol = ct_volume.build_volume(pairs(shuffled(dss)), CtConfig())
    assert vol.array.dtype == np.int16
    assert vol.spacing_xyz[2] == pytest.approx(3.0, abs=1e-3)
    assert_pixels_at_positions(vol, dss, exact=True)


# ------------------------------------------------------------------ reference converters


def _write_folder(dss: Sequence[Dataset], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, ds in enumerate(shuffled(dss, seed=9)):
        (folder / f"IM{k:04d}.dcm").write_bytes(to_bytes(ds))


def test_agrees_with_simpleitk_series_reader(tmp_path: Path) -> None:
    dss = make_series(SeriesSpec(n=20, rows=32, cols=28, values=None, seed=11))
    _write_folder(dss, tmp_path / "s")
    rd = sitk.ImageSeriesReader()
    rd.SetFileNames(rd.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    ref = rd.Execute()
    vol = ct_volume.build_volume(pairs(dss), CtConfig())
    assert vol.size_xyz == ref.GetSize()
    np.testing.assert_allclose(vol.spacing_xyz, ref.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(vol.origin_xyz, ref.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(vol.direction, ref.GetDirection(), atol=1e-3)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref))


def _dcm2niix() -> str:
    """The dcm2niix binary of the PyPI package (a dev dependency, so these comparisons always
    run; its version is pinned by pip, unlike a system build)."""
    import dcm2niix

    return str(dcm2niix.bin)


def test_agrees_with_dcm2niix(tmp_path: Path) -> None:
    dss = make_series(SeriesSpec(n=20, rows=32, cols=28, values=None, seed=12))
    _write_folder(dss, tmp_path / "s")
    (tmp_path / "o").mkdir()
    subprocess.run(
        [
            _dcm2niix(),
            "-z",
            "n",
            "-b",
            "n",
            "-f",
            "vol",
            "-o",
            str(tmp_path / "o"),
            str(tmp_path / "s"),
        ],
        check=True,
        capture_output=True,
    )
    ref = sitk.ReadImage(str(tmp_path / "o" / "vol.nii"))
    vol = ct_volume.build_volume(pairs(dss), CtConfig())
    # dcm2niix may flip axes (NIfTI conventions): compare by physical position
    assert tuple(sorted(ref.GetSize())) == tuple(sorted(vol.size_xyz))
    assert_pixels_at_positions(ref, dss, exact=True)
    assert_pixels_at_positions(vol, dss, exact=True)
    # the same voxel-centre bounding box (8 corners), in whatever axis order
    np.testing.assert_allclose(_corners(ref), _corners(ct_volume.to_sitk(vol)), atol=1e-3)


def _corners(img: sitk.Image) -> np.ndarray:
    sx, sy, sz = (v - 1 for v in img.GetSize())
    pts = [
        img.TransformIndexToPhysicalPoint((x, y, z))
        for x in (0, sx)
        for y in (0, sy)
        for z in (0, sz)
    ]
    return np.array(sorted(tuple(round(c, 3) for c in p) for p in pts))


@pytest.mark.parametrize("tilt", [15.0, -15.0])
def test_tilted_grid_matches_dcm2niix_pixels_decide(
    tmp_path: Path, tilt: float, record_property: Callable[[str, object], None]
) -> None:
    """dcm2niix's tilt-corrected output (``*_Tilt_1.nii``) must have our grid (size, spacing);
    its values are not trusted (Debian's build predates a fix of its tilt formula): our volume
    must pass the pixel-position check whatever dcm2niix's does, and what dcm2niix's did is
    recorded (``dcm2niix_tilt_pixels`` in the JUnit XML properties)."""
    dss = make_series(SeriesSpec(n=20, rows=32, cols=28, tilt_deg=tilt))
    _write_folder(dss, tmp_path / "s")
    (tmp_path / "o").mkdir()
    subprocess.run(
        [_dcm2niix(), "-z", "n", "-b", "n", "-f", "vol", "-o", str(tmp_path / "o"),
         str(tmp_path / "s")],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (tilt_file,) = (tmp_path / "o").glob("*Tilt_1.nii")
    ref = sitk.ReadImage(str(tilt_file))
    vol = ct_volume.build_volume(pairs(dss), CtConfig())
    assert vol.size_xyz == ref.GetSize()
    np.testing.assert_allclose(vol.spacing_xyz, ref.GetSpacing(), atol=1e-3)
    assert_pixels_at_positions(vol, dss, exact=False, atol_hu=2.5, edge_atol_hu=12.0)
    try:
        assert_pixels_at_positions(ref, dss, exact=False, atol_hu=2.5, edge_atol_hu=12.0)
        record_property("dcm2niix_tilt_pixels", "at the physical positions")
    except AssertionError as e:
        record_property("dcm2niix_tilt_pixels", f"off the physical positions: {e}"[:300])


# ------------------------------------------------------------------ the synthetic datamart


def _datamart_exam(
    root: Path, truth: dict[str, Any], exam_id: str
) -> tuple[Exam, dict[str, Dataset]]:
    """The instances of one CT exam of the synthetic datamart (indexed here with the test
    factory) and its datasets by SOP Instance UID."""
    info = truth["exams"][exam_id]
    wanted = set(info["sop_uids"])
    insts: list[Instance] = []
    datasets: dict[str, Dataset] = {}
    for rel in info["zips"]:
        batch, _, name = rel.partition("/")
        with SafeZip(root / rel) as z:
            for member in z.members():
                try:
                    ds = pydicom.dcmread(io.BytesIO(z.read(member)))
                except Exception:
                    continue  # bad members are the index stage's business
                if ds.SOPInstanceUID not in wanted or ds.SOPInstanceUID in datasets:
                    continue
                inst = dataclasses.replace(
                    to_instance(ds, zip_name=name, member=member), batch=batch
                )
                insts.append(inst)
                datasets[inst.sop_uid] = ds
    exam = dataclasses.replace(exam_of(insts), exam_key=exam_id, zips=tuple(info["zips"]))
    return exam, datasets


def _lookup(store: dict[tuple[str, str], bytes], inst: Instance) -> bytes:
    return store[(inst.zip, inst.member)]


def test_synthetic_datamart_ct_exams(tiny_datamart: tuple[Path, dict[str, Any]]) -> None:
    root, truth = tiny_datamart
    series_truth = truth["ct_series"]
    exam_ids = [e for e, v in truth["exams"].items() if v["modality"] == "ct"]
    assert exam_ids
    for exam_id in exam_ids:
        exam, datasets = _datamart_exam(root, truth, exam_id)
        store: dict[tuple[str, str], bytes] = {}
        for rel in exam.zips:
            with SafeZip(root / rel) as z:
                for inst in exam.instances:
                    if rel.endswith("/" + inst.zip):
                        store[(inst.zip, inst.member)] = z.read(inst.member)
        keep = {u for u, s in series_truth.items() if s["exam"] == exam_id and s["keep"]}
        best = {u for u, s in series_truth.items() if s["exam"] == exam_id and s["best"]}
        read = functools.partial(_lookup, store)
        stitched = {
            u for u, s in series_truth.items() if s["exam"] == exam_id and "stitched_into" in s
        }
        if not stitched:  # headers alone choose the best series
            selected, problems = ct_select.select_series(exam.instances, CtConfig())
            assert {s[0].series_uid for s in selected} == best, exam_id
        else:  # the stitched scan beats each of its parts
            volumes, problems = ct_convert.convert_exam(exam, read, CtConfig())
            assert {v.series_uid for v in volumes} == best, exam_id
        volumes, problems = ct_convert.convert_exam(exam, read, CtConfig(series="all"))
        assert {v.series_uid for v in volumes} == keep, (exam_id, problems)
        merged = {p.member.partition("/")[0] for p in problems if p.action == Action.MERGED}
        assert merged == {series_truth[u]["folder"] for u in stitched}, problems
        assert all(p.action in (Action.DROPPED, Action.MERGED) for p in problems), problems
        for vol in volumes:
            st = series_truth[vol.series_uid]
            dss = [datasets[u] for u in vol.sop_uids]
            zips = st.get("stitched_zips", st["zips"])
            assert set(vol.zips) == {z.rpartition("/")[2] for z in zips}
            assert vol.stitched_series == tuple(st.get("stitched_series", ()))
            assert vol.seams_mm == pytest.approx(st.get("seams_z", []))
            if st["kind"] == "resumed_part":
                assert len(vol.sop_uids) == st["n_stitched"] == vol.array.shape[0]
            if st["kind"] == "duplicate_slice":
                assert len(vol.sop_uids) == st["n_slices"] - 1
            if st["kind"] in ("tilted", "uneven", "missing_slice"):
                assert vol.resampled, (st["kind"], vol.decisions)
                if st["kind"] == "tilted":
                    assert vol.tilt_deg == pytest.approx(abs(st["tilt_deg"]), abs=0.05)
                # a phantom with sharp edges and 5.6 mm pixels: resampling then sampling back
                # blurs edges, so only most pixels are close; every pixel must be inside (the
                # precise check is the smooth-phantom tests above, sensitive to 0.2 mm)
                loose = {"exact": False, "atol_hu": 100.0, "max_bad_fraction": 0.25}
                assert_pixels_at_positions(vol, dss, **loose)  # type: ignore[arg-type]
                if st["kind"] == "tilted":  # ... and the loose check still sees a shear
                    with pytest.raises(AssertionError):
                        assert_pixels_at_positions(_sheared_as_orthogonal(dss), dss, **loose)  # type: ignore[arg-type]
            else:
                assert not vol.resampled, (st["kind"], vol.decisions)
                assert_pixels_at_positions(vol, dss, exact=True)


@pytest.mark.parametrize("tilt", [0.0, 12.0])
def test_peak_memory_within_two_volumes(tilt: float) -> None:
    """Slices are decoded one at a time into one preallocated volume: traced peak memory of
    a conversion stays near one int16 stack on a native grid (holding every dataset would
    double it) and within the stack plus the output when resampled."""
    import tracemalloc

    dss = make_series(SeriesSpec(n=40, rows=128, cols=128, values=None, tilt_deg=tilt))
    items = pairs(dss)
    read = reader(items)
    insts = [i for i, _ in items]
    ct_convert.convert_series(insts[:12], read, CtConfig())  # warm-up: lazy imports are not ours
    tracemalloc.start()
    try:
        vol, _ = ct_convert.convert_series(insts, read, CtConfig())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stack = 40 * 128 * 128 * 2
    if tilt == 0:
        assert not vol.resampled and vol.array.nbytes == stack
        assert peak <= 1.5 * stack, peak / stack
    else:
        assert vol.resampled and vol.array.dtype == np.float32
        assert peak <= stack + 1.3 * vol.array.nbytes, (peak / stack, vol.array.nbytes / stack)
