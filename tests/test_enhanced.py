"""Enhanced CT and Legacy Converted Enhanced CT: frames become slices.

Each test builds a classic single-frame series with ``ct_factory``, turns it into one
multi-frame instance (by hand, and with highdicom's Legacy Converted Enhanced CT writer), and
checks that the volume and geometry are those of the classic series, including the tilted,
uneven and duplicate cases, against the pixel-position truth of ``ct_geometry``."""

from __future__ import annotations

import copy
import dataclasses
import tracemalloc
from collections.abc import Callable, Sequence

import highdicom
import numpy as np
import pydicom
import pytest
from ct_factory import SeriesSpec, ct_exam, make_series, to_bytes, to_instance
from ct_geometry import assert_pixels_at_positions
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
    RLELossless,
    generate_uid,
)

from hiroml.config import CtConfig
from hiroml.ct import convert as ct_convert
from hiroml.ct import enhanced
from hiroml.ct import select as ct_select
from hiroml.ct import volume as ct_volume
from hiroml.records import CtVolume, Instance
from hiroml.vocab import Action

ZIP = "1234_20200508-105300_A002_CT-CHEST-WO.zip"
UNEVEN_Z = [0.0, 2.5, 5.0, 7.5, 10.0, 11.5, 14.0, 16.5, 19.0, 21.5, 24.0, 26.5]


def _item(**attrs: object) -> Dataset:
    item = Dataset()
    for key, value in attrs.items():
        setattr(item, key, value)
    return item


def _seq(**attrs: object) -> DicomSequence:
    return DicomSequence([_item(**attrs)])


def enhanced_from_classic(
    slices: Sequence[Dataset], *, shared_geometry: bool = True, order: Sequence[int] | None = None
) -> Dataset:
    """One Enhanced CT Image Storage instance holding ``slices`` as frames (in ``order``).

    Per frame: (0020,9113) Plane Position, (0028,9145) Pixel Value Transformation (each
    frame its own rescale) and (0020,9111) Frame Content. Orientation and pixel measures go in
    the shared functional groups when ``shared_geometry`` (the fallback path), else per frame.
    No top-level position, orientation, spacing or rescale: only the functional groups tell."""
    order = list(range(len(slices))) if order is None else list(order)
    first = slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for kw in (
        "StudyInstanceUID", "SeriesInstanceUID", "Modality", "PatientID", "PatientName",
        "SeriesDescription", "SeriesNumber", "ConvolutionKernel", "FrameOfReferenceUID",
        "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
        "BitsStored", "HighBit", "PixelRepresentation",
    ):  # fmt: skip
        setattr(ds, kw, first.data_element(kw).value)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(order)
    geometry = {
        "PlaneOrientationSequence": _seq(ImageOrientationPatient=first.ImageOrientationPatient),
        "PixelMeasuresSequence": _seq(
            PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness
        ),
    }
    shared = _item(
        CTImageFrameTypeSequence=_seq(FrameType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"])
    )
    if shared_geometry:
        for key, value in geometry.items():
            setattr(shared, key, value)
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in order:
        s = slices[k]
        item = _item(
            PlanePositionSequence=_seq(ImagePositionPatient=s.ImagePositionPatient),
            PixelValueTransformationSequence=_seq(
                RescaleSlope=s.RescaleSlope, RescaleIntercept=s.RescaleIntercept, RescaleType="HU"
            ),
            FrameContentSequence=_seq(
                FrameAcquisitionDateTime="20200508" + str(s.get("AcquisitionTime", "105300"))
            ),
        )
        if not shared_geometry:
            for key, value in geometry.items():
                setattr(item, key, copy.deepcopy(value))
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = b"".join(slices[k].PixelData for k in order)
    return ds


def legacy_converted(slices: Sequence[Dataset]) -> Dataset:
    """highdicom's Legacy Converted Enhanced CT of the single-frame ``slices``."""
    return highdicom.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=list(slices),
        series_instance_uid=generate_uid(),
        series_number=9,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )


def _reload(ds: Dataset) -> Dataset:
    """``ds`` written and read back, as a zip member would be."""
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(to_bytes(ds)), force=True)


def _record(ds: Dataset, member: str = "s1/enhanced.dcm") -> Instance:
    return to_instance(ds, zip_name=ZIP, member=member)


def _volume_of_enhanced(ds: Dataset, cfg: CtConfig | None = None) -> CtVolume:
    ds = _reload(ds)
    frames = enhanced.frame_records(_record(ds), ds)
    return ct_volume.build_volume([(f, ds) for f in frames], cfg or CtConfig())


def _classic_volume(slices: Sequence[Dataset], cfg: CtConfig | None = None) -> CtVolume:
    return ct_volume.build_volume([(to_instance(d), d) for d in slices], cfg or CtConfig())


def assert_same_volume(got: CtVolume, want: CtVolume) -> None:
    assert got.array.dtype == want.array.dtype
    np.testing.assert_array_equal(got.array, want.array)
    for attr in ("spacing_xyz", "origin_xyz", "direction"):
        np.testing.assert_allclose(getattr(got, attr), getattr(want, attr), atol=1e-6)
    assert (got.resampled, got.tilt_deg) == (want.resampled, want.tilt_deg)
    assert got.slice_thickness == want.slice_thickness


# ------------------------------------------------------------------ the same volume


@pytest.mark.parametrize(
    ("spec", "exact"),
    [
        (SeriesSpec(n=12, values=None, seed=3), True),  # native grid, random pixels
        (SeriesSpec(n=12, tilt_deg=15.0), False),  # gantry tilt: resampled
        (SeriesSpec(positions_z=UNEVEN_Z), False),  # uneven spacing: resampled
        (SeriesSpec(n=12, slope=[1.0, 0.5] * 6, intercept=[-1024.0, -1000.0] * 6), True),
    ],
    ids=["native", "tilted", "uneven", "per-frame-rescale"],
)
@pytest.mark.parametrize("shared_geometry", [True, False], ids=["shared", "per-frame"])
def test_enhanced_ct_gives_the_classic_volume(
    spec: SeriesSpec, exact: bool, shared_geometry: bool
) -> None:
    slices = make_series(spec)
    order = list(np.random.default_rng(1).permutation(len(slices)))  # frames not in z order
    multi = enhanced_from_classic(slices, shared_geometry=shared_geometry, order=order)
    got = _volume_of_enhanced(multi)
    want = _classic_volume(slices)
    assert_same_volume(got, want)
    assert got.decisions == want.decisions
    assert_pixels_at_positions(got, slices, exact=exact, atol_hu=2.5, edge_atol_hu=12.0)


@pytest.mark.parametrize(
    "spec",
    [SeriesSpec(n=12, values=None, seed=4), SeriesSpec(n=12, tilt_deg=-12.0)],
    ids=["native", "tilted"],
)
@pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")
def test_highdicom_legacy_converted_ct_gives_the_classic_volume(spec: SeriesSpec) -> None:
    slices = make_series(spec)
    multi = legacy_converted(slices)
    assert multi.SOPClassUID == LegacyConvertedEnhancedCTImageStorage
    assert_same_volume(_volume_of_enhanced(multi), _classic_volume(slices))


def test_compressed_enhanced_ct_decodes_each_frame() -> None:
    slices = make_series(SeriesSpec(n=10, values=None, seed=6))
    multi = enhanced_from_classic(slices)
    frames = np.stack([s.pixel_array for s in slices])
    multi.compress(RLELossless, frames)
    assert_same_volume(_volume_of_enhanced(multi), _classic_volume(slices))


def test_duplicate_frames_follow_the_single_frame_rule() -> None:
    """Two frames at one position with different pixels: the first acquisition is kept, as
    for two single-frame slices."""
    slices = make_series(SeriesSpec(n=12, values=None, seed=7))
    for s in slices:
        s.AcquisitionTime = "105301"
    late = copy.deepcopy(slices[5])
    late.AcquisitionTime = "105845"
    late.PixelData = np.frombuffer(late.PixelData, "<i2")[::-1].tobytes()
    multi = enhanced_from_classic([*slices, late], order=[12, *range(12)])
    got = _volume_of_enhanced(multi)
    assert_same_volume(got, _classic_volume(slices))
    assert_pixels_at_positions(got, slices, exact=True)


# ------------------------------------------------------------------ through convert_exam


_exam = ct_exam


def _reader(items: Sequence[tuple[Instance, Dataset]]) -> Callable[[Instance], bytes]:
    store = {i.member: to_bytes(d) for i, d in items}
    return lambda inst: store[inst.member]


def test_mixed_exam_classic_and_enhanced_series() -> None:
    """One series classic, one enhanced: both selected by the same rules, frames counted as
    slices, and each volume equal to its classic build."""
    classic = make_series(SeriesSpec(n=12, values=None, seed=8, description="SOFT"))
    lung_slices = make_series(SeriesSpec(n=14, tilt_deg=10.0, description="LUNG"))
    multi = _reload(enhanced_from_classic(lung_slices))
    items = [(to_instance(d, zip_name=ZIP), d) for d in classic] + [(_record(multi), multi)]
    exam = _exam([i for i, _ in items])
    volumes, problems = ct_convert.convert_exam(exam, _reader(items), CtConfig(series="all"))
    assert not problems
    by_uid = {v.series_uid: v for v in volumes}
    assert_same_volume(by_uid[classic[0].SeriesInstanceUID], _classic_volume(classic))
    lung = by_uid[multi.SeriesInstanceUID]
    assert_same_volume(lung, _classic_volume(lung_slices))
    assert lung.sop_uids == (multi.SOPInstanceUID,) * 14  # every slice from the one instance


def test_enhanced_series_with_too_few_frames_is_dropped_counting_frames() -> None:
    multi = _reload(enhanced_from_classic(make_series(SeriesSpec(n=6))))
    inst = _record(multi)
    volumes, problems = ct_convert.convert_exam(
        _exam([inst]), lambda i: to_bytes(multi), CtConfig()
    )
    assert not volumes
    assert len(problems) == 1 and problems[0].action is Action.DROPPED
    assert "only 6 usable slice(s), fewer than ct.min_slices=10" in problems[0].reason
    volumes, problems = ct_convert.convert_exam(
        _exam([inst]), lambda i: to_bytes(multi), CtConfig(min_slices=6)
    )
    assert len(volumes) == 1 and volumes[0].size_xyz[2] == 6 and not problems


def test_localizer_frames_and_bad_headers_are_audit_rows() -> None:
    slices = make_series(SeriesSpec(n=12))
    multi = enhanced_from_classic(slices)
    multi.PerFrameFunctionalGroupsSequence[3].CTImageFrameTypeSequence = _seq(
        FrameType=["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
    )
    multi = _reload(multi)
    volumes, problems = ct_convert.convert_exam(
        _exam([_record(multi)]), lambda i: to_bytes(multi), CtConfig()
    )
    assert volumes[0].size_xyz[2] == 12  # the gap left by the localizer frame is filled
    assert any("localizer" in p.reason for p in problems)

    broken = _reload(enhanced_from_classic(slices))
    del broken.PerFrameFunctionalGroupsSequence[-1]
    volumes, problems = ct_convert.convert_exam(
        _exam([_record(broken)]), lambda i: to_bytes(broken), CtConfig()
    )
    assert not volumes and len(problems) == 1 and problems[0].action is Action.ERROR
    assert "Per-Frame Functional Groups Sequence has 11 items for (0028,0008) Number of " in (
        problems[0].reason
    )
    assert problems[0].member == "s1/enhanced.dcm"


def test_unexpanded_enhanced_instance_is_named_in_selection() -> None:
    multi = _reload(enhanced_from_classic(make_series(SeriesSpec(n=12))))
    _, problems = ct_select.select_series([_record(multi)], CtConfig())
    assert "Enhanced CT Image Storage (multi-frame) not expanded" in problems[0].reason


def test_enhanced_build_peaks_at_two_volumes() -> None:
    """The parsed multi-frame pixel data and the volume; the member's bytes are not kept."""
    spec = SeriesSpec(n=40, rows=192, cols=192, values=None, seed=9)
    multi = _reload(enhanced_from_classic(make_series(spec)))
    data = to_bytes(multi)
    frames = enhanced.frame_records(_record(multi), multi)
    del multi
    ct_convert.convert_series(frames[:1], lambda inst: data, CtConfig(min_slices=1))  # imports done
    tracemalloc.start()
    try:
        vol, _ = ct_convert.convert_series(frames, lambda inst: bytes(bytearray(data)), CtConfig())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 2.0 * vol.array.nbytes < peak < 2.4 * vol.array.nbytes, peak / vol.array.nbytes


def test_enhanced_parts_of_a_split_scan_are_stitched_like_classic_ones() -> None:
    """A scan resumed as a new series, both parts stored as Enhanced CT and overlapping by
    two positions: the overlap frames are decoded and compared (the instance hash is not a
    frame's), and the stitched volume is the classic one."""
    slices = make_series(SeriesSpec(n=20, values=None, seed=11))
    parts = []
    for number, (lo, hi) in enumerate([(0, 12), (10, 20)], start=2):
        part = copy.deepcopy(slices[lo:hi])
        uid = generate_uid()
        for s in part:
            s.SeriesInstanceUID, s.SeriesNumber = uid, number
        parts.append(_reload(enhanced_from_classic(part)))
    records = [
        dataclasses.replace(_record(p, member=f"s{k}/enhanced.dcm"), pixel_hash=f"hash-{k}")
        for k, p in enumerate(parts)
    ]
    items = list(zip(records, parts, strict=True))
    volumes, problems = ct_convert.convert_exam(_exam(records), _reader(items), CtConfig())
    assert len(volumes) == 1, problems
    assert volumes[0].stitched_series == tuple(p.SeriesInstanceUID for p in parts)
    np.testing.assert_array_equal(volumes[0].array, _classic_volume(slices).array)
    assert all(f.pixel_hash == "" for f in enhanced.frame_records(records[0], parts[0]))
