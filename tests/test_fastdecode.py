"""Tests for hiroml.dicom.fastdecode: JPEG 2000 / HTJ2K radiographs decoded at the resolution the
output needs, compared with the full decode after the converter's normalisation and resize."""

from __future__ import annotations

import dataclasses
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate

from hiroml.config import CxrConfig
from hiroml.cxr import convert as cxr_convert
from hiroml.dicom import fastdecode
from hiroml.dicom.uids import (
    HTJ2K_LOSSLESS,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
)
from hiroml.errors import DecodeError
from tests.test_cxr import make_ds, make_inst, radiograph, to_bytes

ON = CxrConfig(size=[256, 256])
OFF = dataclasses.replace(ON, fast_jpeg2000=False)


def j2k(arr: np.ndarray, bits: int, *, lossless: bool = True) -> bytes:
    """A raw JPEG 2000 codestream of ``arr`` (``bits`` precision, 5 decomposition levels)."""
    kw: dict[str, Any] = {} if lossless else {"level": 40}
    return bytes(
        imagecodecs.jpeg2k_encode(
            arr, codecformat="J2K", bitspersample=bits, reversible=lossless, numthreads=1, **kw
        )
    )


def convert(ds: pydicom.Dataset, cfg: CxrConfig) -> Any:
    return cxr_convert.convert_instance(to_bytes(ds), make_inst(ds), exam_description="", cfg=cfg)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two [0, 1] outputs, as a fraction of the range."""
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def test_codestream_header_gives_size_precision_and_levels() -> None:
    img = radiograph(1, (1100, 1030), bits=15)
    cs = fastdecode.read_codestream(j2k(img, 15))
    assert cs == fastdecode.Codestream(
        width=1030, height=1100, components=1, precision=15, signed=False, levels=5
    )
    small = fastdecode.read_codestream(j2k(radiograph(1, (130, 70), bits=15), 15))
    assert small is not None and small.levels == 3  # OpenJPEG's encoder: fewer for small images
    assert fastdecode.read_codestream(b"\x00\x00\x00\x0cjP  \r\n") is None  # a JP2 box


@pytest.mark.parametrize(
    ("shape", "size", "keep_aspect", "levels", "r"),
    [
        ((1955, 1841), (512, 512), True, 5, 1),  # 1/4 gives 489 rows < 512
        ((1760, 1760), (512, 512), True, 5, 1),
        ((2048, 2048), (512, 512), True, 5, 2),  # 512 x 512 exactly
        ((2048, 2048), (512, 512), True, 1, 1),  # no more levels than the codestream has
        ((3000, 1000), (512, 512), True, 5, 2),  # 512 x 171 after resize: columns 250 >= 171
        ((3000, 1000), (512, 512), False, 5, 0),  # stretched: 1000 columns / 2 < 512
        ((600, 600), (512, 512), True, 5, 0),
        ((1023, 1023), (256, 256), True, 5, 2),
        ((1955, 1841), (460, 460), True, 5, 1),  # 1/4: Pillow sizes 1841 as 460, OpenJPEG 461
    ],
)
def test_choose_reduction(
    shape: tuple[int, int], size: tuple[int, int], keep_aspect: bool, levels: int, r: int
) -> None:
    assert fastdecode.choose_reduction(*shape, size, keep_aspect, levels) == r


@pytest.mark.parametrize("bits", [8, 12, 15, 16])
def test_pillow_full_decode_gives_the_stored_values(bits: int) -> None:
    img = radiograph(bits, (90, 70), bits=bits).astype(np.uint8 if bits == 8 else np.uint16)
    data = j2k(img, bits)
    got = fastdecode.pillow_decode(data, 0, bits)
    np.testing.assert_array_equal(got, img)
    assert got.dtype == img.dtype


@pytest.mark.parametrize(
    ("ts", "bits"),
    [(JPEG_2000_LOSSLESS, 15), (JPEG_2000, 12), (HTJ2K_LOSSLESS, 16)],
)
def test_reduced_decode_is_within_half_a_percent_of_the_full_decode(ts: str, bits: int) -> None:
    img = radiograph(7, (1100, 1030), bits=bits)
    if ts == HTJ2K_LOSSLESS:
        frame = bytes(imagecodecs.htj2k_encode(img, reversible=True))
    else:
        frame = j2k(img, bits, lossless=ts == JPEG_2000_LOSSLESS)
    attrs = dict(PixelSpacing=[0.2, 0.2], WindowCenter=2 ** (bits - 1), WindowWidth=2**bits)
    ds = make_ds(img, ts=ts, bits_stored=bits, frame=frame, **attrs)
    fast, full = convert(ds, ON), convert(ds, OFF)
    assert fast.decode_reduction == 4 and full.decode_reduction == 1
    assert fast.decoder == fastdecode.PILLOW_OPENJPEG and full.decoder == "openjpeg"
    assert fast.original_shape == full.original_shape == (1100, 1030)
    assert fast.array.shape == full.array.shape == (256, 256)
    assert mad(fast.array, full.array) < 0.005
    # the same field of view: spacing after resizing agrees within a fraction of a pixel
    assert fast.spacing_after == pytest.approx(full.spacing_after, rel=0.01)


def test_real_chest_cr_reduced_within_half_a_percent() -> None:
    """pydicom's RG1_J2KR: a 1,955 x 1,841 15-bit MONOCHROME1 chest CR, lossless JPEG 2000."""
    path = get_testdata_file("RG1_J2KR.dcm")
    assert path is not None
    with open(path, "rb") as fh:
        data = fh.read()
    ds = pydicom.dcmread(path)
    cfg = CxrConfig()  # 512 x 512
    fast = cxr_convert.convert_instance(data, make_inst(ds), exam_description="", cfg=cfg)
    full = cxr_convert.convert_instance(
        data, make_inst(ds), exam_description="", cfg=dataclasses.replace(cfg, fast_jpeg2000=False)
    )
    assert (fast.decode_reduction, full.decode_reduction) == (2, 1)
    assert mad(fast.array, full.array) < 0.005


def test_switch_off_and_no_reduction_give_the_full_decode_exactly() -> None:
    img = radiograph(3, (1100, 1030), bits=15)
    win = dict(WindowCenter=16384, WindowWidth=32768)
    ds_j2k = make_ds(img, ts=JPEG_2000_LOSSLESS, bits_stored=15, frame=j2k(img, 15), **win)
    ds_raw = make_ds(img, bits_stored=15, **win)
    off, raw = convert(ds_j2k, OFF), convert(ds_raw, ON)
    np.testing.assert_array_equal(off.array, raw.array)
    assert off.decode_reduction == 1
    assert convert(ds_j2k, ON).decode_reduction == 4  # the switch is what kept it full
    small = radiograph(3, (300, 280), bits=15)  # no reduction keeps every dimension >= 256
    ds_small = make_ds(small, ts=JPEG_2000_LOSSLESS, bits_stored=15, frame=j2k(small, 15), **win)
    on = convert(ds_small, ON)
    assert (on.decode_reduction, on.decoder) == (1, "openjpeg")
    raw_small = convert(make_ds(small, bits_stored=15, **win), ON)
    np.testing.assert_array_equal(on.array, raw_small.array)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"PixelPaddingValue": 0}, "Pixel Padding Value"),
        ({"BitsStored": 12}, "Bits Stored 12"),
        ({"NumberOfFrames": 2}, "multi-frame"),
        ({"PhotometricInterpretation": "RGB"}, "photometric"),
        ({"WindowCenter": None}, "no window or VOI LUT in the header"),
    ],
)
def test_cases_the_reduced_decode_does_not_cover_fall_back_with_a_reason(
    change: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    img = radiograph(5, (1100, 1030), bits=15)
    attrs = dict(WindowCenter=16384, WindowWidth=32768)
    ds = make_ds(img, ts=JPEG_2000_LOSSLESS, bits_stored=15, frame=j2k(img, 15), **attrs)
    for key, value in change.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    with caplog.at_level("DEBUG", logger="hiroml.dicom.fastdecode"):
        assert fastdecode.decode_reduced(ds, frame=0, size=(256, 256), keep_aspect=True) is None
    assert reason in caplog.text


def test_codestream_that_disagrees_with_the_header_is_refused_before_decoding() -> None:
    img = radiograph(5, (1100, 1030), bits=15)
    ds = make_ds(img, ts=JPEG_2000_LOSSLESS, bits_stored=15, frame=j2k(img, 15))
    ds.Rows = 1099
    with pytest.raises(DecodeError, match="JPEG 2000 SIZ says 1100 x 1030 x 1 components, "
                       "the header 1099 x 1030"):  # fmt: skip
        fastdecode.decode_reduced(ds, frame=0, size=(256, 256), keep_aspect=True)


def test_uncompressed_pixels_are_left_to_the_full_decode_unchecked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No reduced decode for native pixels: the full decode checks the limits, once."""
    ds = make_ds(radiograph(5, (300, 280), bits=12))

    def twice(*_: Any, **__: Any) -> None:
        raise AssertionError("limits checked by the reduced decode of native pixels")

    monkeypatch.setattr(fastdecode.dicom, "check_limits", twice)
    assert fastdecode.decode_reduced(ds, frame=0, size=(256, 256), keep_aspect=True) is None


def test_signed_codestream_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    img = (radiograph(6, (1100, 1030), bits=12).astype(np.int16) - 2048).astype(np.int16)
    frame = bytes(imagecodecs.jpeg2k_encode(img, codecformat="J2K", bitspersample=12))
    win = dict(WindowCenter=0, WindowWidth=4096)
    ds = make_ds(img, ts=JPEG_2000_LOSSLESS, bits_stored=12, frame=frame, **win)
    with caplog.at_level("DEBUG", logger="hiroml.dicom.fastdecode"):
        assert fastdecode.decode_reduced(ds, frame=0, size=(256, 256), keep_aspect=True) is None
        assert "signed (0028,0103) Pixel Representation" in caplog.text
        ds.PixelRepresentation = 0  # header says unsigned, codestream says signed
        assert fastdecode.decode_reduced(ds, frame=0, size=(256, 256), keep_aspect=True) is None
        assert "signed=True" in caplog.text
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 8])  # truncated header
        assert fastdecode.decode_reduced(ds, frame=0, size=(256, 256), keep_aspect=True) is None
        assert "not a raw JPEG 2000 codestream" in caplog.text


def test_baseline_jpeg_dct_scaling_within_half_a_percent_and_switch_off_exact() -> None:
    img = (radiograph(8, (1100, 1030), bits=8)).astype(np.uint8)
    frame = bytes(imagecodecs.jpeg8_encode(img, level=90))
    attrs = dict(PixelSpacing=[0.2, 0.2], WindowCenter=128, WindowWidth=256)
    ds = make_ds(img, ts=JPEG_BASELINE, bits_stored=8, frame=frame, **attrs)
    fast = convert(ds, ON)
    full = convert(ds, dataclasses.replace(ON, fast_jpeg=False))
    assert (fast.decode_reduction, fast.decoder) == (4, fastdecode.PILLOW_LIBJPEG)
    assert (full.decode_reduction, full.decoder) == (1, "libjpeg-turbo")
    assert fast.original_shape == full.original_shape == (1100, 1030)
    assert mad(fast.array, full.array) < 0.005
    assert fast.spacing_after == pytest.approx(full.spacing_after, rel=0.01)
    # the JPEG 2000 switch leaves JPEG alone, and the reverse
    np.testing.assert_array_equal(convert(ds, OFF).array, fast.array)


def test_jpeg_with_12_bits_falls_back_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    img = radiograph(9, (1100, 1030), bits=12)
    frame = bytes(imagecodecs.jpeg8_encode(img, level=90, bitspersample=12))
    ds = make_ds(img, ts=JPEG_EXTENDED, bits_stored=12, frame=frame, WindowCenter=2048)
    ds.WindowWidth = 4096
    with caplog.at_level("DEBUG", logger="hiroml.dicom.fastdecode"):
        assert fastdecode.decode_reduced(ds, frame=0, size=(256, 256), keep_aspect=True) is None
    assert "Bits Allocated/Stored (16, 12)" in caplog.text
    assert convert(ds, ON).decode_reduction == 1


@pytest.mark.parametrize("normalization", ["percentile", "minmax"])
def test_image_statistics_normalisations_use_the_full_decode(normalization: str) -> None:
    """Averaging removes noise in the tails: percentiles and extremes change with resolution."""
    img = radiograph(4, (1100, 1030), bits=15)
    attrs = dict(WindowCenter=16384, WindowWidth=32768)
    ds = make_ds(img, ts=JPEG_2000_LOSSLESS, bits_stored=15, frame=j2k(img, 15), **attrs)
    cfg = dataclasses.replace(ON, normalization=normalization)
    got = convert(ds, cfg)
    assert (got.decode_reduction, got.decoder) == (1, "openjpeg")
    raw = convert(make_ds(img, bits_stored=15, **attrs), cfg)
    np.testing.assert_array_equal(got.array, raw.array)


def test_pillow_refusing_the_stream_falls_back_to_the_full_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pillow's decompression-bomb guard (or any refusal) leaves the image to the full decode."""
    from PIL import Image

    img = radiograph(2, (1100, 1030), bits=15)
    win = dict(WindowCenter=16384, WindowWidth=32768)
    ds = make_ds(img, ts=JPEG_2000_LOSSLESS, bits_stored=15, frame=j2k(img, 15), **win)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    got = convert(ds, ON)
    assert (got.decode_reduction, got.decoder) == (1, "openjpeg")
