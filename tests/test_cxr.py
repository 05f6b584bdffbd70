"""Tests for hiroml.cxr: real files from pydicom's test data where they prove more, small
seeded synthetic datasets built in code elsewhere."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable
from io import BytesIO
from typing import Any

import cv2
import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    generate_uid,
)

from hiroml.config import CxrConfig
from hiroml.cxr import convert as cxr_convert
from hiroml.cxr import pixels as cxr_pixels
from hiroml.cxr import select as cxr_select
from hiroml.cxr import view as cxr_view
from hiroml.errors import DecodeError
from hiroml.records import Exam, Instance
from hiroml.vocab import Action, Modality, View

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"


def _read(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, name
    return pydicom.dcmread(path)


def _file_bytes(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    with open(path, "rb") as fh:
        return fh.read()


def make_ds(
    arr: np.ndarray,
    *,
    ts: str = ExplicitVRLittleEndian,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    frame: bytes | None = None,
    **attrs: Any,
) -> Dataset:
    """A minimal CR dataset holding ``arr`` (uncompressed) or an encoded ``frame``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.file_meta.MediaStorageSOPClassUID = UID(CR_STORAGE)
    ds.SOPClassUID = UID(CR_STORAGE)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    if frame is None:
        ds.PixelData = arr.tobytes()
    else:
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_inst(ds: Dataset | None = None, **kw: Any) -> Instance:
    base: dict[str, Any] = dict(
        batch="CXR-UPDATE-20200523-COMPLETE",
        zip="1234_20200301-140030_A003_XR-CHEST-PA-LATERAL.zip",
        member="1/1.dcm",
        member_size=0,
        sop_uid=str(ds.SOPInstanceUID) if ds is not None else generate_uid(),
        series_uid="1.2.3",
        study_uid="1.2",
        sop_class_uid=CR_STORAGE,
        modality="CR",
        patient_id="1234",
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID) if ds is not None else "",
    )
    if ds is not None:
        base["view_position"] = str(ds.get("ViewPosition", ""))
    base.update(kw)
    return Instance(**base)


def radiograph(seed: int, shape: tuple[int, int] = (60, 48), bits: int = 12) -> np.ndarray:
    """A smooth blob plus noise, unsigned, ``bits`` stored."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    top = 2**bits - 1
    blob = np.exp(-(((yy - shape[0] / 2) / (shape[0] / 3)) ** 2 + ((xx - shape[1] / 2) / 9) ** 2))
    img = top * (0.2 + 0.6 * blob) + rng.normal(0, top / 50, shape)
    return np.clip(img, 0, top).astype(np.uint16)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("reference", "compressed"),
    [
        ("MR_small.dcm", "MR_small_RLE.dcm"),
        ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
        ("MR_small.dcm", "MR_small_implicit.dcm"),
        ("MR_small.dcm", "MR_small_bigendian.dcm"),
        ("emri_small.dcm", "emri_small_RLE.dcm"),
        ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm"),
        ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),
        ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),
        ("RG3_UNCR.dcm", "RG3_J2KR.dcm"),
        ("693_UNCR.dcm", "693_J2KR.dcm"),
    ],
)
def test_lossless_syntaxes_decode_to_the_uncompressed_pixels(
    reference: str, compressed: str
) -> None:
    ref = cxr_pixels.decode(_read(reference))
    ds = _read(compressed)
    got = cxr_pixels.decode(ds)
    assert got.shape == ref.shape[-2:] or got.shape == ref.shape
    frames = int(_read(reference).get("NumberOfFrames", 1) or 1)
    np.testing.assert_array_equal(got, ref if frames == 1 else pydicom_first_frame(reference))
    assert got.dtype.kind == ("i" if ds.PixelRepresentation else "u")


def pydicom_first_frame(name: str) -> np.ndarray:
    return np.asarray(_read(name).pixel_array)[0]


@pytest.mark.parametrize(
    "name",
    [
        "MR_small.dcm",  # signed 16-bit, explicit VR LE
        "MR-SIEMENS-DICOM-WithOverlays.dcm",  # 12 of 16 bits stored
        "RG1_UNCI.dcm",  # MONOCHROME1 CR, 15 bits
        "image_dfl.dcm",  # deflated explicit VR LE
        "JPEG-LL.dcm",  # JPEG lossless SV1, 16-bit signed
        "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless SV1, 8-bit
        "bad_sequence.dcm",  # JPEG lossless SV1, 12 of 16 bits
        "J2K_pixelrep_mismatch.dcm",  # J2K signedness differs from the header
        "693_J2KI.dcm",  # JPEG 2000 lossy, signed
        "MR2_J2KI.dcm",
        "JPEG2000.dcm",
        "JPGExtended.dcm",  # JPEG extended 12-bit (lossy, pydicom can decode this one)
        "vlut_04.dcm",
        "mlut_18.dcm",
    ],
)
def test_decode_matches_pydicom(name: str) -> None:
    got = cxr_pixels.decode(_read(name))
    ref = np.asarray(_read(name).pixel_array)
    if name == "JPGExtended.dcm":  # lossy: two libjpeg builds may round differently
        assert np.abs(got.astype(np.int32) - ref).max() <= 1
    else:
        np.testing.assert_array_equal(got, ref)
        assert got.dtype == ref.dtype.newbyteorder("=")


def test_jpeg_lossless_synthetic_12bit_signed_is_bit_exact() -> None:
    rng = np.random.default_rng(3)
    signed = rng.integers(-2048, 2048, size=(40, 52)).astype(np.int16)
    stored = (signed.view(np.uint16) & 0x0FFF).astype(np.uint16)  # two's complement, 12 bits
    frame = imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=12)
    ds = make_ds(signed, ts=JPEGLosslessSV1, frame=bytes(frame))
    np.testing.assert_array_equal(cxr_pixels.decode(ds), signed)
    np.testing.assert_array_equal(
        cxr_pixels.decode(ds), pydicom.dcmread(BytesIO(to_bytes(ds))).pixel_array
    )


def test_jpeg_baseline_8bit_grey() -> None:
    img = (radiograph(4, bits=8)).astype(np.uint8)
    frame = bytes(imagecodecs.jpeg8_encode(img, level=95))
    ds = make_ds(img, ts=JPEGBaseline8Bit, bits_stored=8, frame=frame)
    got = cxr_pixels.decode(ds)
    assert got.dtype == np.uint8 and got.shape == img.shape
    assert np.abs(got.astype(int) - img).mean() < 3  # lossy, but close
    ref = pydicom.dcmread(BytesIO(to_bytes(ds))).pixel_array
    assert np.abs(got.astype(int) - ref).max() <= 2


def test_jpeg_extended_12bit_that_pydicom_refuses_decodes() -> None:
    # JPEG-lossy.dcm: 12-bit JPEG extended which pylibjpeg refuses; libjpeg-turbo reads it.
    got = cxr_pixels.decode(_read("JPEG-lossy.dcm"))
    ref = np.asarray(_read("JPGExtended.dcm").pixel_array)  # the same image, readable one
    assert got.shape == ref.shape
    assert np.abs(got.astype(np.int32) - ref).max() <= 1


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_colour_jpeg_goes_through_pydicom_and_becomes_grey() -> None:
    ds = _read("SC_rgb_jpeg.dcm")
    arr = cxr_pixels.decode(ds)
    assert arr.shape == (256, 256, 3)
    grey = cxr_pixels.to_grayscale(arr, ds)
    assert grey.shape == (256, 256) and grey.dtype == np.uint8


def test_truncated_pixel_data_raises_naming_the_transfer_syntax() -> None:
    ds = make_ds(radiograph(0))
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(DecodeError, match=r"truncated.*Explicit VR Little Endian 1\.2\.840"):
        cxr_pixels.decode(ds)


def test_undecodable_jpeg2000_raises_decode_error() -> None:
    ds = make_ds(radiograph(0), ts="1.2.840.10008.1.2.4.90", frame=b"\xff\x4f\xff\x51garbage")
    with pytest.raises(DecodeError, match=r"JPEG 2000.*1\.2\.840\.10008\.1\.2\.4\.90"):
        cxr_pixels.decode(ds)


def test_palette_colour_is_refused() -> None:
    with pytest.raises(DecodeError, match="PALETTE COLOR"):
        cxr_pixels.decode(_read("OBXXXX1A.dcm"))


# --------------------------------------------------------------------------- intensities


@pytest.mark.parametrize("name", ["693_UNCI.dcm", "CT_small.dcm", "mlut_18.dcm", "MR_small.dcm"])
def test_modality_agrees_with_pydicom(name: str) -> None:
    ds = _read(name)
    arr = cxr_pixels.decode(ds)
    got = cxr_pixels.apply_modality(arr, ds)
    ref = apply_modality_lut(np.asarray(ds.pixel_array), ds)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-3)


def _pydicom_range(ds: Dataset) -> tuple[float, float]:
    """The output range pydicom's apply_windowing maps a window to."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
    bits = int(ds.BitsStored)
    lo, hi = (
        (0.0, 2.0**bits - 1)
        if ds.PixelRepresentation == 0
        else (
            -(2.0 ** (bits - 1)),
            2.0 ** (bits - 1) - 1,
        )
    )
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        m, b = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * m + b, hi * m + b
    return lo, hi


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("RG1_UNCI.dcm", 0),  # MONOCHROME1 CR window
        ("693_UNCI.dcm", 0),  # CT with rescale
        ("bad_sequence.dcm", 0),  # JPEG lossless, two windows
        ("bad_sequence.dcm", 1),
        ("MR-SIEMENS-DICOM-WithOverlays.dcm", 1),
    ],
)
def test_window_agrees_with_pydicom(name: str, index: int) -> None:
    ds = _read(name)
    mod = cxr_pixels.apply_modality(cxr_pixels.decode(ds), ds)
    got, desc = cxr_pixels.apply_voi(mod, ds, index=index)
    ref_ds = _read(name)
    ref = apply_voi_lut(apply_modality_lut(ref_ds.pixel_array, ref_ds), ref_ds, index=index)
    lo, hi = _pydicom_range(ref_ds)
    np.testing.assert_allclose(got, (ref - lo) / (hi - lo), atol=2e-5)
    assert desc.startswith("window(c=")
    assert got.min() >= 0 and got.max() <= 1


@pytest.mark.parametrize("func", ["LINEAR_EXACT", "SIGMOID"])
def test_voi_functions_agree_with_pydicom(func: str) -> None:
    ds = make_ds(radiograph(1), WindowCenter=1800, WindowWidth=1500, VOILUTFunction=func)
    got, desc = cxr_pixels.apply_voi(cxr_pixels.apply_modality(cxr_pixels.decode(ds), ds), ds)
    ref = apply_voi_lut(ds.pixel_array, ds)
    np.testing.assert_allclose(got, ref / 4095.0, atol=2e-5)
    assert func.lower() in desc


@pytest.mark.parametrize(
    ("name", "attrs"),
    [
        ("693_UNCI.dcm", {}),  # rescale intercept -1024, LINEAR window
        ("bad_sequence.dcm", {}),
        ("693_UNCI.dcm", {"RescaleSlope": 0.5, "VOILUTFunction": "SIGMOID"}),
        ("693_UNCI.dcm", {"RescaleSlope": 2.0, "VOILUTFunction": "LINEAR_EXACT"}),
    ],
)
def test_rescale_folded_into_window_equals_two_steps(name: str, attrs: dict[str, Any]) -> None:
    ds = _read(name)
    for key, value in attrs.items():
        setattr(ds, key, value)
    arr = cxr_pixels.decode(ds)
    two, desc2 = cxr_pixels.apply_voi(cxr_pixels.apply_modality(arr, ds), ds)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    one, desc1 = cxr_pixels.apply_voi(arr, ds, rescale=(slope, intercept))
    np.testing.assert_allclose(one, two, atol=1e-5)
    assert desc1 == desc2
    image = cxr_convert._intensities(arr, ds, CxrConfig())
    np.testing.assert_allclose(image[0], two, atol=1e-5)
    assert image[1] == f"rescale(m={slope:g},b={intercept:g})+{desc2}"


def test_voi_lut_sequence_agrees_with_pydicom() -> None:
    ds = _read("vlut_04.dcm")
    got, desc = cxr_pixels.apply_voi(cxr_pixels.apply_modality(cxr_pixels.decode(ds), ds), ds)
    ref = apply_voi_lut(_read("vlut_04.dcm").pixel_array, ds)
    bits = ds.VOILUTSequence[0].LUTDescriptor[2]
    np.testing.assert_allclose(got, ref / (2.0**bits - 1), atol=1e-6)
    assert desc.startswith("voi_lut(1/1")


def test_voi_index_past_the_last_window_uses_the_last() -> None:
    ds = _read("bad_sequence.dcm")
    mod = cxr_pixels.apply_modality(cxr_pixels.decode(ds), ds)
    got, desc = cxr_pixels.apply_voi(mod, ds, index=7)
    last, _ = cxr_pixels.apply_voi(mod, ds, index=1)
    np.testing.assert_array_equal(got, last)
    assert "c=450" in desc and "[2/2]" in desc


def test_no_voi_in_header_falls_back_to_percentile_and_says_so() -> None:
    ds = make_ds(radiograph(2))
    arr = cxr_pixels.decode(ds)
    got, desc = cxr_pixels.apply_voi(arr, ds, fallback_percentiles=(1.0, 99.0))
    assert desc == "percentile(1,99) (no VOI in header)"
    np.testing.assert_array_equal(got, cxr_pixels.normalize_percentile(arr, lo=1.0, hi=99.0))


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16"])
def test_histogram_percentiles_are_exactly_numpys(dtype: str) -> None:
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    qs = (0.0, 0.5, 2.5, 50.0, 97.3, 99.5, 100.0)
    for size, span in [(1, 10), (2, 3), (101, 5), (999, 50_000), (64 * 63, 4096)]:
        lo = max(int(info.min), -span // 2 if info.min < 0 else 0)
        hi = min(int(info.max), lo + span)
        arr = rng.integers(lo, hi + 1, size=size).astype(dtype).reshape(1, -1)
        assert cxr_pixels.percentiles(arr, qs) == [float(v) for v in np.percentile(arr, qs)]


def test_percentiles_of_float_data_fall_back_to_numpy() -> None:
    arr = np.random.default_rng(0).normal(size=(30, 30)).astype(np.float32)
    assert cxr_pixels.percentiles(arr, (1, 99)) == [float(v) for v in np.percentile(arr, [1, 99])]


def test_normalize_percentile_and_minmax() -> None:
    arr = np.arange(101, dtype=np.uint16).reshape(1, 101)
    out = cxr_pixels.normalize_percentile(arr, lo=10, hi=90)
    assert out.dtype == np.float32
    assert out[0, 0] == 0 and out[0, 100] == 1 and out.min() == 0 and out.max() == 1
    assert out[0, 10] == pytest.approx(0, abs=1e-6) and out[0, 90] == pytest.approx(1)
    assert out[0, 50] == pytest.approx(0.5)
    mm = cxr_pixels.normalize_minmax(arr)
    assert mm[0, 25] == pytest.approx(0.25) and mm[0, 100] == pytest.approx(1)
    assert mm[0, 0] == pytest.approx(0, abs=1e-6)
    assert not cxr_pixels.normalize_minmax(np.full((4, 4), 7, np.uint16)).any()


def test_percentile_on_stored_values_equals_percentile_after_rescale() -> None:
    # convert_instance skips a positive rescale for percentile normalisation: same result.
    ds = make_ds(radiograph(5), RescaleSlope=2.5, RescaleIntercept=-1024)
    cfg = CxrConfig(normalization="percentile")
    fast, desc = cxr_convert._intensities(cxr_pixels.decode(ds), ds, cfg)
    slow = cxr_pixels.normalize_percentile(
        cxr_pixels.apply_modality(cxr_pixels.decode(ds), ds), lo=0.5, hi=99.5
    )
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    assert desc == "percentile(0.5,99.5)"


def test_monochrome1_output_is_one_minus_the_monochrome2_output() -> None:
    img = radiograph(6, shape=(90, 70))
    cfg = CxrConfig(size=[32, 32], dtype="float16")
    for norm in ("voi", "percentile", "minmax"):
        c = dataclasses.replace(cfg, normalization=norm)
        out: dict[str, Any] = {}
        for photometric in ("MONOCHROME1", "MONOCHROME2"):
            ds = make_ds(img, photometric=photometric, WindowCenter=2000, WindowWidth=3000)
            out[photometric] = cxr_convert.convert_instance(
                to_bytes(ds), make_inst(ds), exam_description="", cfg=c
            )
        m1, m2 = out["MONOCHROME1"], out["MONOCHROME2"]
        assert m1.inverted and not m2.inverted
        inner = (slice(None), slice(4, 28))  # padding (aspect kept) stays 0 in both
        np.testing.assert_allclose(
            m1.array[inner].astype(np.float32), 1 - m2.array[inner].astype(np.float32), atol=1e-3
        )


def test_presentation_lut_shape_inverse() -> None:
    arr = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    for photometric, shape, inverted in [
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME1", "INVERSE", True),  # DX: MONOCHROME1 carries INVERSE; once, not twice
        ("MONOCHROME1", "", True),
    ]:
        ds = Dataset()
        ds.PhotometricInterpretation = photometric
        if shape:
            ds.PresentationLUTShape = shape
        out, flag = cxr_pixels.invert_if_monochrome1(arr, ds)
        assert flag is inverted
        np.testing.assert_allclose(out, 1 - arr if inverted else arr)


def test_real_monochrome1_radiograph_is_inverted() -> None:
    ds = _read("RG3_UNCI.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    inst = make_inst(ds, member="CR/RG3.dcm")
    cfg = CxrConfig(size=[64, 64])
    image = cxr_convert.convert_instance(
        _file_bytes("RG3_UNCI.dcm"), inst, exam_description="", cfg=cfg
    )
    relabelled = _read("RG3_UNCI.dcm")
    relabelled.PhotometricInterpretation = "MONOCHROME2"
    plain = cxr_convert.convert_instance(to_bytes(relabelled), inst, exam_description="", cfg=cfg)
    np.testing.assert_allclose(
        image.array.astype(np.float32), 1 - plain.array.astype(np.float32), atol=1e-3
    )
    assert image.inverted and image.photometric == "MONOCHROME1" and image.bits_stored == 10
    assert image.lut == "window(c=550,w=1024)"
    assert image.view == View.FRONTAL and image.view_source == "ViewPosition=AP"
    assert image.original_shape == (1760, 1760) and image.array.shape == (64, 64)
    assert image.transfer_syntax == "1.2.840.10008.1.2.1"
    assert image.rel_zip == f"{inst.batch}/{inst.zip}" and image.member == "CR/RG3.dcm"


# --------------------------------------------------------------------------- geometry, storage


def test_resize_keeps_aspect_with_centred_zero_padding() -> None:
    arr = np.ones((1000, 500), np.float32)
    out, scale = cxr_pixels.resize(arr, (512, 512), keep_aspect=True)
    assert out.shape == (512, 512) and scale == (0.512, 0.512)
    cols = np.flatnonzero(out.any(axis=0))
    assert (cols[0], cols[-1]) == (128, 383)  # 256 columns, centred
    assert out[:, :128].max() == 0 and out[:, 384:].max() == 0
    assert np.allclose(out[:, 128:384], 1.0)


def test_resize_stretch_and_spacing_after() -> None:
    arr = np.random.default_rng(0).random((1000, 500)).astype(np.float32)
    out, scale = cxr_pixels.resize(arr, (250, 250), keep_aspect=False)
    assert out.shape == (250, 250) and scale == (0.25, 0.5)
    # area interpolation: a 4x2 block mean
    assert out[0, 0] == pytest.approx(arr[:4, :2].mean(), rel=1e-5)
    ds = make_ds(radiograph(0, shape=(100, 50)), ImagerPixelSpacing=[0.2, 0.2])
    cfg = CxrConfig(size=[64, 64], keep_aspect=True)
    image = cxr_convert.convert_instance(to_bytes(ds), make_inst(ds), exam_description="", cfg=cfg)
    assert image.pixel_spacing == (0.2, 0.2)
    assert image.spacing_after == pytest.approx((0.2 * 100 / 64, 0.2 * 50 / 32))


def test_resize_non_integer_shrink_is_close_to_one_step_area() -> None:
    yy, xx = np.mgrid[0:1003, 0:797].astype(np.float32)
    noise = np.random.default_rng(9).normal(0, 0.01, (1003, 797)).astype(np.float32)
    img = np.exp(-(((yy - 500) / 300) ** 2 + ((xx - 400) / 200) ** 2)) + noise
    out, scale = cxr_pixels.resize(img, (128, 128), keep_aspect=True)
    # 1003 // 128 = 7: the integer step covers 1001 rows (one cropped at each edge)
    assert scale == (128 / 1001, 102 / 791)  # 797 // 102 = 7: 791 columns
    inner = out[:, 13:115]
    assert out[:, :13].max() == 0 and out[:, 115:].max() == 0
    direct = cv2.resize(img, (102, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(inner - direct).max() < 0.02
    assert np.abs(inner - direct).mean() < 0.003  # the noise level of a 7x7 block mean


def test_to_storage_round_trips_within_a_quantum() -> None:
    arr = np.linspace(0, 1, 1001, dtype=np.float32).reshape(7, 143)
    for dtype, tol in (("float16", 5e-4), ("uint8", 0.5 / 255), ("uint16", 0.5 / 65535)):
        stored, scale = cxr_pixels.to_storage(arr, dtype)
        assert stored.dtype == np.dtype(dtype)
        back = stored.astype(np.float64) * scale
        assert np.abs(back - arr).max() <= tol + 1e-7
        assert back.min() == 0 and back.max() == pytest.approx(1.0)


# --------------------------------------------------------------------------- selection, view


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(sop_class_uid=BASIC_TEXT_SR, modality="SR", has_pixels=False), "structured report"),
        (dict(sop_class_uid=DOSE_SR, modality="SR", has_pixels=False), "structured report"),
        (dict(sop_class_uid=GSPS, modality="PR", has_pixels=False), "presentation state"),
        (dict(modality="KO", sop_class_uid="1.2.3.4"), "Modality=KO"),
        (dict(has_pixels=False), "no pixel data"),
        (dict(sop_class_uid=SC_STORAGE, modality="CR"), "secondary capture"),
        (dict(sop_class_uid="1.2.840.10008.5.1.4.1.1.7.2"), "secondary capture"),
        (dict(modality="OT"), r"screen save \(Modality=OT\)"),
        (dict(image_type=("DERIVED", "SECONDARY")), r"secondary image \(ImageType=DERIVED"),
    ],
)
def test_keep_reason_drops_non_images_and_secondaries(kw: dict[str, Any], match: str) -> None:
    reason = cxr_select.keep_reason(make_inst(**kw), drop_derived=True)
    assert reason is not None
    assert re.search(match, reason), reason


def test_keep_reason_keeps_radiographs_and_honours_drop_derived() -> None:
    assert (
        cxr_select.keep_reason(make_inst(image_type=("DERIVED", "PRIMARY")), drop_derived=True)
        is None
    )
    assert cxr_select.keep_reason(make_inst(modality="DX"), drop_derived=True) is None
    assert cxr_select.keep_reason(make_inst(modality="OT"), drop_derived=False) is None
    sr = make_inst(sop_class_uid=BASIC_TEXT_SR, modality="SR", has_pixels=False)
    assert cxr_select.keep_reason(sr, drop_derived=False) is not None  # never an image


@pytest.mark.parametrize(
    ("attrs", "exam", "view", "source"),
    [
        (dict(ViewPosition="PA"), "", View.FRONTAL, "ViewPosition=PA"),
        (dict(ViewPosition="AP "), "XR-CHEST-PA-LATERAL", View.FRONTAL, "ViewPosition=AP"),
        (dict(ViewPosition="LL"), "", View.LATERAL, "ViewPosition=LL"),
        (dict(ViewPosition="LATERAL"), "", View.LATERAL, "ViewPosition=LATERAL"),
        (dict(SeriesDescription="CHEST LAT"), "", View.LATERAL, "SeriesDescription=CHEST LAT"),
        (dict(SeriesDescription="PA chest"), "", View.FRONTAL, "SeriesDescription=PA chest"),
        (dict(SeriesDescription="PA AND LATERAL"), "", View.UNKNOWN, "no view attribute"),
        ({}, "XR-PORT-CHEST-1V", View.FRONTAL, "exam description=XR-PORT-CHEST-1V"),
        ({}, "XR P PORT CHEST 1 VIEW", View.FRONTAL, "exam description=XR P PORT CHEST 1 VIEW"),
        ({}, "XR-CHEST-PA-LATERAL", View.UNKNOWN, "no view attribute"),
        ({}, "XR-CHEST-2-VIEWS", View.UNKNOWN, "no view attribute"),
        (dict(ImageLaterality="L"), "XR-CHEST-PA-LATERAL", View.LATERAL, "ImageLaterality=L"),
        (dict(ViewPosition="RLD"), "", View.UNKNOWN, "no view attribute (ViewPosition=RLD)"),
        # (0020,0020) Patient Orientation is not used: the synthetic datamart's ground truth
        # calls an image with only "L\F" unknown
        (dict(PatientOrientation=["L", "F"]), "", View.UNKNOWN, "no view attribute"),
    ],
)
def test_classify_view(attrs: dict[str, str], exam: str, view: View, source: str) -> None:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    got, why = cxr_view.classify_view(ds, exam_description=exam)
    assert got == view
    assert why.startswith(source)


def test_classify_view_from_view_code_sequence() -> None:
    ds = Dataset()
    item = Dataset()
    item.CodeMeaning = "latero-lateral"
    ds.ViewCodeSequence = [item]
    assert cxr_view.classify_view(ds)[0] == View.LATERAL


# --------------------------------------------------------------------------- exams


def _exam(instances: list[Instance], description: str = "XR-CHEST-PA-LATERAL") -> Exam:
    return Exam(
        exam_key="1234_A003",
        modality=Modality.CXR,
        patient_id="1234",
        source_patient_id="1234",
        hiro_id="A003",
        time=dt.datetime(2020, 3, 1, 14, 0, 30),
        description=description,
        pediatric=False,
        batch=instances[0].batch,
        zips=(instances[0].rel_zip,),
        instances=tuple(instances),
    )


def test_convert_exam_drops_errors_and_goes_on() -> None:
    blobs: dict[str, bytes] = {}
    insts: list[Instance] = []

    def add(ds: Dataset, member: str, **kw: Any) -> None:
        inst = make_inst(ds, member=member, **kw)
        blobs[member] = to_bytes(ds)
        insts.append(inst)

    a = make_ds(radiograph(10), ViewPosition="PA", ImagerPixelSpacing=[0.15, 0.15])
    b = make_ds(radiograph(11), ViewPosition="AP", WindowCenter=2048, WindowWidth=4096)
    lat = make_ds(radiograph(12), ViewPosition="LL")
    broken = make_ds(radiograph(13), ViewPosition="PA")
    broken.PixelData = broken.PixelData[:50]
    unknown_lat = make_ds(radiograph(14), SeriesDescription="LATERAL")  # only full header tells
    add(a, "1/a.dcm")
    add(b, "1/b.dcm")
    add(lat, "2/lat.dcm")
    add(broken, "1/broken.dcm")
    add(unknown_lat, "3/u.dcm")
    sr = make_inst(member="9/sr.dcm", sop_class_uid=BASIC_TEXT_SR, modality="SR", has_pixels=False)
    sc = make_inst(member="9/sc.dcm", sop_class_uid=SC_STORAGE, modality="OT")
    dose = make_inst(member="9/dose.dcm", sop_class_uid=DOSE_SR, modality="SR", has_pixels=False)
    pr = make_inst(member="9/pr.dcm", sop_class_uid=GSPS, modality="PR", has_pixels=False)
    sec = make_inst(member="9/sec.dcm", image_type=("DERIVED", "SECONDARY"))
    nopix = make_inst(member="9/nopix.dcm", has_pixels=False)
    planted = [sr, sc, dose, pr, sec, nopix]
    insts += planted
    reads: list[str] = []

    def read(inst: Instance) -> bytes:
        reads.append(inst.member)
        if inst.member not in blobs:
            raise AssertionError(f"{inst.member} must not be read")
        return blobs[inst.member]

    cfg = CxrConfig(size=[32, 32], dtype="uint8")
    images, problems = cxr_convert.convert_exam(_exam(insts), read, cfg)

    assert [i.member for i in images] == [
        m
        for _, m in sorted((str(x.SOPInstanceUID), m) for x, m in ((a, "1/a.dcm"), (b, "1/b.dcm")))
    ]
    assert all(i.array.dtype == np.uint8 and i.scale == pytest.approx(1 / 255) for i in images)
    by_member = {p.member: p for p in problems}
    planted_members = {p.member for p in planted}
    assert set(by_member) == {"2/lat.dcm", "1/broken.dcm", "3/u.dcm"} | planted_members
    assert len(problems) == len(by_member)  # one problem each
    assert by_member["2/lat.dcm"].action == Action.DROPPED
    assert by_member["2/lat.dcm"].reason.startswith(
        "view lateral not selected (cxr.views=[frontal])"
    )
    assert by_member["3/u.dcm"].reason.startswith("view lateral not selected")
    err = by_member["1/broken.dcm"]
    assert err.action == Action.ERROR and err.stage == "cxr"
    assert (
        "1/broken.dcm" in err.reason
        and "Explicit VR Little Endian 1.2.840.10008.1.2.1" in err.reason
    )
    for m in planted_members:
        assert by_member[m].action == Action.DROPPED and by_member[m].stage == "cxr"
        assert by_member[m].zip == insts[0].zip and by_member[m].batch == insts[0].batch
    # never read: dropped by header (non-images, secondaries) or by the indexed view (LL)
    assert not (planted_members | {"2/lat.dcm"}) & set(reads)
    # provenance
    pa = next(i for i in images if i.member == "1/a.dcm")
    assert pa.lut.startswith("percentile(0.5,99.5) (no VOI")
    assert pa.pixel_spacing == (0.15, 0.15) and pa.view_source == "ViewPosition=PA"
    ap = next(i for i in images if i.member == "1/b.dcm")
    assert ap.lut == "window(c=2048,w=4096)"


def test_convert_exam_read_failure_is_an_error_problem() -> None:
    ds = make_ds(radiograph(1), ViewPosition="PA")
    inst = make_inst(ds, member="1/x.dcm")

    def read(_: Instance) -> bytes:
        return b"not a dicom at all"

    images, problems = cxr_convert.convert_exam(_exam([inst]), read, CxrConfig())
    assert images == [] and len(problems) == 1
    assert problems[0].action == Action.ERROR and "1/x.dcm" in problems[0].reason


def test_convert_exam_keeps_lateral_when_selected() -> None:
    ds = make_ds(radiograph(2), ViewPosition="LL")
    inst = make_inst(ds, member="1/l.dcm")
    read: Callable[[Instance], bytes] = lambda _: to_bytes(ds)  # noqa: E731
    images, problems = cxr_convert.convert_exam(
        _exam([inst]), read, CxrConfig(views=["frontal", "lateral"])
    )
    assert problems == [] and images[0].view == View.LATERAL


# --------------------------------------------------------------------------- synthetic datamart


def test_synthetic_datamart_radiographs_against_its_ground_truth(
    request: pytest.FixtureRequest,
) -> None:
    """Every radiograph of the tiny synthetic datamart: stored values reproduce the truth's
    pixel hash, the view is the truth's, screen saves are dropped, conversion succeeds."""
    synth = pytest.importorskip("hiroml.synth")
    from hiroml.ingest.zipio import SafeZip

    root, truth = request.getfixturevalue("tiny_datamart")
    images = truth["cxr_images"]
    assert images
    cfg = CxrConfig(size=[64, 64])
    for sop, t in sorted(images.items()):
        if t["drop_reason"] == "bad_input":  # unreadable zips and members: the index's job
            continue
        batch, _, zip_name = t["zip"].partition("/")
        with SafeZip(root / t["zip"]) as z:
            data = z.read(t["member"])
        ds = pydicom.dcmread(BytesIO(data))
        inst = make_inst(
            ds,
            batch=batch,
            zip=zip_name,
            member=t["member"],
            sop_uid=sop,
            sop_class_uid=t["sop_class"],
            modality=str(ds.get("Modality", "")),
            image_type=tuple(ds.get("ImageType", ())),
        )
        reason = cxr_select.keep_reason(inst, drop_derived=True)
        if t["kind"] == "screen_save":
            assert reason is not None, sop
            continue
        assert reason is None, (sop, reason)
        assert synth.values_hash(cxr_pixels.decode(ds)) == t["pixel_hash"], (
            sop,
            t["transfer_syntax"],
        )
        view, why = cxr_view.classify_view(ds, exam_description=t["zip"].split("_", 3)[-1][:-4])
        assert view == t["view"], (sop, why)
        image = cxr_convert.convert_instance(data, inst, exam_description="", cfg=cfg)
        assert image.array.shape == (64, 64) and image.inverted == (
            t["photometric"] == "MONOCHROME1"
        )
        assert float(image.array.min()) >= 0 and float(image.array.max()) <= 1
