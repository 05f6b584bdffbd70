"""Radiograph object types: DX "for processing", pixel padding, multi-frame.

DICOM is built in code (seeded) or taken from pydicom's test files."""

from __future__ import annotations

import dataclasses
import datetime as dt
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from conftest import MakeCfg
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)
from test_cxr import make_ds, make_inst, radiograph, to_bytes

from hiroml import pipeline as build
from hiroml.config import CxrConfig
from hiroml.cxr import convert as cxr_convert
from hiroml.cxr import pixels as cxr_pixels
from hiroml.cxr import select as cxr_select
from hiroml.errors import DecodeError
from hiroml.ingest.index import instance_from_dataset
from hiroml.records import CxrImage, Exam, Instance
from hiroml.store.shards import read_sample
from hiroml.store.verify import verify
from hiroml.vocab import Action, Modality

# --------------------------------------------------------------------------- helpers


def _exam(instances: list[Instance]) -> Exam:
    return Exam(
        exam_key="1234_20200301-140030_A003",
        modality=Modality.CXR,
        patient_id="1234",
        source_patient_id="1234",
        hiro_id="A003",
        time=dt.datetime(2020, 3, 1, 14, 0, 30),
        description="XR-CHEST-PA",
        pediatric=False,
        batch="CXR-UPDATE-20200523-COMPLETE",
        zips=("CXR-UPDATE-20200523-COMPLETE/1234_20200301-140030_A003_XR-CHEST-PA.zip",),
        instances=tuple(instances),
    )


def _indexed(ds: Dataset, member: str) -> tuple[Instance, bytes]:
    """The index record of ``ds`` as the index stage makes it, and the member's bytes."""
    data = to_bytes(ds)
    inst = instance_from_dataset(
        ds,
        batch="CXR-UPDATE-20200523-COMPLETE",
        zip_name="1234_20200301-140030_A003_XR-CHEST-PA.zip",
        member=member,
        member_size=len(data),
    )
    return inst, data


def _dx(arr: np.ndarray, *, sop_class: str, intent: str, **attrs: Any) -> Dataset:
    ds = make_ds(arr, ViewPosition="PA", **attrs)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = "DX"
    ds.PresentationIntentType = intent
    return ds


def _convert(ds: Dataset, **cfg: Any) -> CxrImage:
    rows, cols = int(ds.Rows), int(ds.Columns)
    c = CxrConfig(size=[rows, cols], dtype="float16", **cfg)
    return cxr_convert.convert_instance(to_bytes(ds), make_inst(ds), exam_description="", cfg=c)


# --------------------------------------------------------------------------- for processing


@pytest.mark.parametrize(
    ("sop_class", "intent", "dropped"),
    [
        (DigitalXRayImageStorageForProcessing, "FOR PROCESSING", True),
        (DigitalXRayImageStorageForProcessing, "", True),  # the SOP class alone decides
        (DigitalXRayImageStorageForPresentation, "FOR PROCESSING", True),  # the intent alone
        (DigitalXRayImageStorageForPresentation, "FOR PRESENTATION", False),
        ("1.2.840.10008.5.1.4.1.1.1", "", False),  # CR
    ],
)
def test_keep_reason_drops_for_processing_unless_kept(
    sop_class: str, intent: str, dropped: bool
) -> None:
    inst = make_inst(sop_class_uid=sop_class, modality="DX", presentation_intent=intent)
    reason = cxr_select.keep_reason(inst, drop_derived=True)
    if dropped:
        assert reason is not None
        assert reason.startswith("for processing: raw detector data")
        assert "cxr.keep_for_processing=true" in reason
    else:
        assert reason is None
    assert cxr_select.keep_reason(inst, drop_derived=True, keep_for_processing=True) is None


def test_for_processing_twin_yields_one_sample_and_one_audit_row() -> None:
    """The raw detector image beside its for-presentation twin of the same exposure."""
    raw = radiograph(1, shape=(40, 32))
    presentation = _dx(
        raw, sop_class=DigitalXRayImageStorageForPresentation, intent="FOR PRESENTATION"
    )
    processing = _dx(raw, sop_class=DigitalXRayImageStorageForProcessing, intent="FOR PROCESSING")
    (p_inst, p_data), (q_inst, q_data) = (
        _indexed(presentation, "1/present.dcm"),
        _indexed(processing, "2/raw.dcm"),
    )
    assert q_inst.presentation_intent == "FOR PROCESSING"  # the index reads (0008,0068)
    members = {p_inst.member: p_data, q_inst.member: q_data}
    exam = _exam([p_inst, q_inst])
    cfg = CxrConfig(size=[16, 16])

    images, problems = cxr_convert.convert_exam(exam, lambda i: members[i.member], cfg)
    assert [i.sop_uid for i in images] == [p_inst.sop_uid]
    assert not images[0].for_processing
    assert len(problems) == 1
    assert problems[0].member == "2/raw.dcm" and problems[0].action is Action.DROPPED
    assert problems[0].reason.startswith("for processing")
    assert "Digital X-Ray Image Storage - For Processing" in problems[0].reason

    kept, problems = cxr_convert.convert_exam(
        exam, lambda i: members[i.member], dataclasses.replace(cfg, keep_for_processing=True)
    )
    assert not problems
    assert {i.sop_uid: i.for_processing for i in kept} == {
        p_inst.sop_uid: False,
        q_inst.sop_uid: True,
    }


# --------------------------------------------------------------------------- padding

_B = 6  # width of the padded border, pixels


def _padded(inner: np.ndarray, value: int, *, fill: int | None = None) -> np.ndarray:
    """``inner`` inside a border of ``fill`` (default ``value``) ``_B`` pixels wide."""
    out = np.full((inner.shape[0] + 2 * _B, inner.shape[1] + 2 * _B), value, inner.dtype)
    if fill is not None:
        out[:] = fill
    out[_B:-_B, _B:-_B] = inner
    return out


def _inside(a: np.ndarray) -> np.ndarray:
    return a[_B:-_B, _B:-_B].astype(np.float32)


@pytest.mark.parametrize("normalization", ["percentile", "minmax", "voi"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_padded_radiograph_normalizes_as_the_unpadded_one_inside(
    normalization: str, photometric: str
) -> None:
    inner = radiograph(3, shape=(40, 30))  # 12 bits stored, values well inside 1..4094
    # voi: no window in the header, so the percentile fallback derives from the data
    plain = _convert(make_ds(inner, photometric=photometric), normalization=normalization)
    for value in (0, 4095):  # below and above every image value: both would shift the stats
        ds = make_ds(_padded(inner, value), photometric=photometric, PixelPaddingValue=value)
        padded = _convert(ds, normalization=normalization)
        np.testing.assert_allclose(_inside(padded.array), plain.array, atol=1e-3)
        border = padded.array.astype(np.float32).copy()
        border[_B:-_B, _B:-_B] = 0
        assert border.max() == 0  # padded pixels are the output's background, 0
        assert padded.padding.startswith(f"PixelPaddingValue={value}: ")
        assert "set to 0" in padded.padding
        assert plain.padding == ""
        # without the padding attribute, the border does shift the intensities
        unmarked = _convert(
            make_ds(_padded(inner, value), photometric=photometric), normalization=normalization
        )
        assert np.abs(_inside(unmarked.array) - plain.array).max() > 0.01


def test_padding_range_limit_and_signed_values() -> None:
    inner = radiograph(4, shape=(30, 30)).astype(np.int16) - 2048  # signed, -2048..2047
    # the border holds several values between the padding value and its range limit
    arr = _padded(inner, -4000)
    arr[:_B, :] = -3000
    ds = make_ds(arr, bits_stored=16, PixelPaddingValue=-3000, PixelPaddingRangeLimit=-4000)
    ds["PixelPaddingValue"].VR = ds["PixelPaddingRangeLimit"].VR = "SS"
    padded = _convert(ds, normalization="percentile")
    plain = _convert(make_ds(inner, bits_stored=16), normalization="percentile")
    np.testing.assert_allclose(_inside(padded.array), plain.array, atol=1e-3)
    assert "RangeLimit=-4000" in padded.padding


def test_padding_mask_reads_an_unsigned_value_for_signed_pixels() -> None:
    arr = np.array([[-1, 5], [7, -1]], np.int16)
    ds = Dataset()
    ds.PixelPaddingValue = 0xFFFF  # -1 written as US
    mask = cxr_pixels.padding_mask(arr, ds)
    assert mask is not None and mask.tolist() == [[True, False], [False, True]]
    ds.PixelPaddingValue = 3
    assert cxr_pixels.padding_mask(arr, ds) is None  # no pixel is padding
    assert cxr_pixels.padding_mask(arr, Dataset()) is None  # no padding declared


def test_an_image_that_is_all_padding_is_a_clear_error() -> None:
    ds = make_ds(np.zeros((8, 8), np.uint16), PixelPaddingValue=0)
    with pytest.raises(DecodeError, match=r"every pixel is padding .*Pixel Padding Value 0"):
        _convert(ds)


# --------------------------------------------------------------------------- multi-frame


def _two_frames(seed: int = 5, shape: tuple[int, int] = (24, 20)) -> np.ndarray:
    return np.stack([radiograph(seed, shape), radiograph(seed + 1, shape)])


def _jpeg_lossless(frame: np.ndarray) -> bytes:
    return bytes(imagecodecs.jpeg8_encode(frame, lossless=True, predictor=1, bitspersample=12))


def _multi_frame_ds(frames: np.ndarray, encoded: list[bytes] | None = None, **kw: Any) -> Dataset:
    """A multi-frame CR: native pixels, or the ``encoded`` JPEG lossless frames."""
    ds = make_ds(frames[0], ts=JPEGLosslessSV1 if encoded else ExplicitVRLittleEndian, **kw)
    ds.NumberOfFrames = len(frames)
    if encoded:
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = frames.tobytes()
    return ds


@pytest.mark.parametrize("syntax", ["native", "jpeg_lossless", "rle"])
def test_decode_selects_the_frame(syntax: str) -> None:
    frames = _two_frames()
    if syntax == "jpeg_lossless":  # libjpeg-turbo through imagecodecs
        ds = _multi_frame_ds(frames, [_jpeg_lossless(f) for f in frames])
    else:
        ds = _multi_frame_ds(frames)
    if syntax == "rle":
        ds.compress(RLELossless, frames)  # pydicom's backend, index=frame
    ds = pydicom.dcmread(BytesIO(to_bytes(ds)))
    for k in range(2):
        np.testing.assert_array_equal(cxr_pixels.decode(ds, frame=k), frames[k])
    with pytest.raises(ValueError, match=r"frame 2 is outside the 2 frame\(s\)"):
        cxr_pixels.decode(ds, frame=2)


@pytest.mark.parametrize(
    "name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"]
)
def test_decode_every_frame_of_a_real_multi_frame_file(name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    ds = pydicom.dcmread(path)
    truth = pydicom.dcmread(path).pixel_array
    assert truth.shape[0] == cxr_pixels.number_of_frames(ds) == 10
    for k in (0, 4, 9):
        np.testing.assert_array_equal(cxr_pixels.decode(ds, frame=k), truth[k])


def test_two_frame_radiograph_yields_two_samples() -> None:
    frames = _two_frames()
    ds = _multi_frame_ds(frames, ViewPosition="PA")
    inst, data = _indexed(ds, "1/cine.dcm")
    cfg = CxrConfig(size=[24, 20], normalization="minmax")
    images, problems = cxr_convert.convert_exam(_exam([inst]), lambda i: data, cfg)
    assert not problems
    assert [(i.frame, i.n_frames) for i in images] == [(0, 2), (1, 2)]
    for k, image in enumerate(images):  # each frame as if it were a single-frame image
        alone = _convert(make_ds(frames[k], ViewPosition="PA"), normalization="minmax")
        np.testing.assert_array_equal(image.array, alone.array)
    assert not np.array_equal(images[0].array, images[1].array)


def test_undecodable_frame_is_an_audit_row_naming_it() -> None:
    frames = _two_frames()
    broken = b"\xff\xd8 not a jpeg stream \xff\xd9"
    ds = _multi_frame_ds(frames, [_jpeg_lossless(frames[0]), broken], ViewPosition="PA")
    inst, data = _indexed(ds, "1/cine.dcm")
    images, problems = cxr_convert.convert_exam(
        _exam([inst]), lambda i: data, CxrConfig(size=[24, 20])
    )
    assert [i.frame for i in images] == [0]
    assert len(problems) == 1 and problems[0].action is Action.ERROR
    assert "frame 2 of 2" in problems[0].reason and "1/cine.dcm" in problems[0].reason


def test_single_frame_image_is_frame_zero_of_one() -> None:
    image = _convert(make_ds(radiograph(8, shape=(20, 20)), SOPInstanceUID=generate_uid()))
    assert (image.frame, image.n_frames, image.for_processing) == (0, 1, False)


# --------------------------------------------------------------------------- through the build


def test_build_keys_frames_and_drops_for_processing(make_cfg: MakeCfg, tmp_path: Path) -> None:
    """One exam: a radiograph, its "for processing" twin, a two-frame radiograph and a padded
    one. The manifest has a sample per frame (``:f{k}`` keys, ``frame`` column), the
    single-frame keys are unchanged, and the twin is one audit row."""
    shape = (40, 32)
    study = generate_uid()
    members: dict[str, Dataset] = {
        "1/present.dcm": _dx(
            radiograph(1, shape), sop_class=DigitalXRayImageStorageForPresentation, intent=""
        ),
        "2/raw.dcm": _dx(
            radiograph(1, shape), sop_class=DigitalXRayImageStorageForProcessing, intent=""
        ),
        "3/cine.dcm": _multi_frame_ds(_two_frames(shape=shape), ViewPosition="PA"),
        "4/padded.dcm": make_ds(
            _padded(radiograph(2, (28, 20)), 0), ViewPosition="PA", PixelPaddingValue=0
        ),
    }
    zip_name = "1234_20200301-140030_A003_XR-CHEST-PA.zip"
    batch = tmp_path / "dm" / "CXR-UPDATE-20200523-COMPLETE"
    batch.mkdir(parents=True)
    with zipfile.ZipFile(batch / zip_name, "w") as zf:
        for member, ds in members.items():
            ds.PatientID = ds.PatientName = "1234"
            ds.StudyInstanceUID = study
            ds.StudyDate, ds.StudyTime = "20200301", "140030"
            zf.writestr(member, to_bytes(ds))
    out = tmp_path / "out"
    build.run(make_cfg(tmp_path / "dm", out, "cxr.size=[16,16]"))

    assert verify(out) == []  # the output contract holds with the new columns
    manifest = pd.read_parquet(out / "manifest.parquet")
    exam = "1234_20200301-140030_A003"
    uid = {m: str(ds.SOPInstanceUID) for m, ds in members.items()}
    want = {
        f"{exam}:{uid['1/present.dcm']}": 0,
        f"{exam}:{uid['3/cine.dcm']}:f0": 0,
        f"{exam}:{uid['3/cine.dcm']}:f1": 1,
        f"{exam}:{uid['4/padded.dcm']}": 0,
    }
    assert dict(zip(manifest["sample_key"], manifest["frame"], strict=True)) == want
    assert pa.types.is_integer(pq.read_schema(out / "manifest.parquet").field("frame").type)
    assert not manifest["for_processing"].any()
    audit = pd.read_csv(out / "audit.csv", keep_default_na=False)
    raw = audit[audit["member"] == "2/raw.dcm"]
    assert list(raw["action"]) == ["dropped"]
    assert raw["reason"].iloc[0].startswith("for processing")

    shard = manifest.set_index("sample_key")["shard"]
    key = f"{exam}:{uid['4/padded.dcm']}"
    _, meta = read_sample(out / shard[key], key)  # the provenance in the shard
    assert meta["padding"].startswith("PixelPaddingValue=0: ") and meta["frame"] == 0
    key = f"{exam}:{uid['3/cine.dcm']}:f1"
    _, meta = read_sample(out / shard[key], key)
    assert (meta["frame"], meta["n_frames"], meta["for_processing"]) == (1, 2, False)

    from hiroml.data.dataset import HiromlDataset

    by_key = {s["sample_key"]: s["meta"] for s in HiromlDataset(out, split=None)}
    assert by_key[key]["frame"] == 1
