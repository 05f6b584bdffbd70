"""hiroml.dicom.decode: files without a Part 10 header, every transfer syntax read, and the decoder
pinned for each (a silent fallback to a slower path fails here)."""

from __future__ import annotations

import datetime as dt
import io
import logging
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import isal.isal_zlib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless, UID_dictionary

from hiroml import synth
from hiroml.cli.logs import OneLineFormatter, console_filter
from hiroml.config import CtConfig, CxrConfig, ExamsConfig, IndexConfig
from hiroml.ct import convert as ct_convert
from hiroml.ct import hu as ct_hu
from hiroml.cxr import convert as cxr_convert
from hiroml.cxr import pixels as cxr_pixels
from hiroml.dicom import decode as dicom
from hiroml.dicom import uids as dicom_uids
from hiroml.errors import BadInputError
from hiroml.exams.stage import build_exams
from hiroml.ingest import zipio
from hiroml.ingest.discover import discover
from hiroml.ingest.index import index_zip, instance_from_dataset, read_member
from hiroml.records import CxrImage
from hiroml.vocab import Action

STUDY = synth.StudyInfo(
    patient_id="8100",
    time=dt.datetime(2020, 5, 2, 9, 30, 0),
    study_uid="2.25.81001",
    description="XR-CHEST-PA",
)


# Transfer syntaxes newer than pydicom 3.0: pydicom writes their files only when its UID
# dictionary knows them, so the tests add them there while writing (hiroml itself never
# changes pydicom's dictionary; it reads these files without the entries).
_NEWER = {
    "1.2.840.10008.1.2.4.110": ("JPEG XL Lossless", "JPEGXLLossless"),
    "1.2.840.10008.1.2.4.111": ("JPEG XL JPEG Recompression", "JPEGXLJPEGRecompression"),
    "1.2.840.10008.1.2.4.112": ("JPEG XL", "JPEGXL"),
    "1.2.840.10008.1.2.8.1": ("Deflated Image Frame Compression", "DeflatedImageFrameCompression"),
}


def _part10(ds: Dataset, *, implicit: bool = False, little: bool = True) -> bytes:
    bio = io.BytesIO()
    added = [u for u in _NEWER if u not in UID_dictionary]
    UID_dictionary.update(
        {u: (n, "Transfer Syntax", "", "", k) for u, (n, k) in _NEWER.items() if u in added}
    )
    try:
        ds.save_as(bio, enforce_file_format=True, implicit_vr=implicit, little_endian=little)
    finally:
        for u in added:
            del UID_dictionary[u]
    return bio.getvalue()


def test_hiroml_leaves_pydicom_uid_dictionary_as_it_is() -> None:
    import subprocess
    import sys

    code = (
        "from pydicom.uid import UID_dictionary as d; n = len(d); import hiroml.dicom.decode, "
        "hiroml.ingest.index, hiroml.cxr.convert, hiroml.ct.convert; print(len(d) == n, "
        "'1.2.840.10008.1.2.4.110' in d)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "False"], done.stderr
    assert dicom_uids.is_transfer_syntax(dicom_uids.JPEG_XL) and dicom_uids.is_encapsulated(
        dicom_uids.JPEG_XL
    )
    assert dicom_uids.is_little_endian(dicom_uids.DEFLATED_IMAGE_FRAME)
    assert not dicom_uids.is_deflated(
        dicom_uids.DEFLATED_IMAGE_FRAME
    )  # only its frames are deflated
    assert (
        dicom_uids.uid_label(dicom_uids.JPEG_XL_LOSSLESS)
        == "JPEG XL Lossless 1.2.840.10008.1.2.4.110"
    )


# --------------------------------------------------------------------------- no Part 10 header


def _real_cr() -> bytes:
    """A real computed radiograph (pydicom-data ``RG1_UNCR.dcm``, 1955 x 1841, 15 bits)."""
    return Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()


def _meta_end(data: bytes) -> int:
    """Offset of the first dataset element after the (0002,xxxx) group of a Part 10 file."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)


def test_a_real_cr_without_preamble_is_read_with_a_note() -> None:
    data = _real_cr()
    reference = pydicom.dcmread(io.BytesIO(data)).pixel_array
    stripped = data[128 + 4 :]  # no preamble, no DICM: the meta group comes first
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(io.BytesIO(stripped))
    parsed = dicom.parse(stripped, label="old.dcm")
    assert "no 128-byte preamble and DICM prefix" in parsed.note
    assert "inferred" not in parsed.note  # the meta group told the transfer syntax
    assert parsed.dataset.Modality == "CR"
    np.testing.assert_array_equal(dicom.decode(parsed.dataset).array, reference)


@pytest.mark.parametrize(
    ("implicit", "little", "inferred"),
    [
        (True, True, "1.2.840.10008.1.2"),
        (False, True, "1.2.840.10008.1.2.1"),
        (False, False, "1.2.840.10008.1.2.2"),
    ],
)
def test_a_real_cr_without_meta_is_read_with_its_inferred_syntax(
    implicit: bool, little: bool, inferred: str
) -> None:
    read = pydicom.dcmread(io.BytesIO(_real_cr()))
    reference = read.pixel_array
    ds = Dataset(read)  # a plain data set: pydicom writes it in any encoding
    ds.file_meta = read.file_meta
    ds.file_meta.TransferSyntaxUID = UID(inferred)
    if not little:
        ds.PixelData = reference.astype(">u2").tobytes()
    data = _part10(ds, implicit=implicit, little=little)
    bare = data[_meta_end(data) :]  # the dataset alone, group 0008 first
    assert int.from_bytes(bare[:2], "little" if little else "big") == 0x0008
    parsed = dicom.parse(bare, label="bare.dcm")
    assert str(parsed.dataset.file_meta.TransferSyntaxUID) == inferred
    assert f"transfer syntax inferred as {dicom_uids.uid_label(inferred)}" in parsed.note
    got = dicom.decode(parsed.dataset)
    assert got.decoder == dicom_uids.NUMPY
    np.testing.assert_array_equal(got.array, reference)
    # the index reads it too, and keeps the note on the instance
    head, pixels = read_member(bare, label="bare.dcm")
    assert pixels is not None and head.SOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize(
    "data",
    [b"just some text that is long enough", b"\x00" * 300, b"PK\x03\x04" + b"\x00" * 200],
)
def test_what_does_not_start_like_dicom_stays_an_error(data: bytes) -> None:
    with pytest.raises(BadInputError, match=r"bad\.bin: not a DICOM file") as err:
        dicom.parse(data, label="bad.bin")
    assert "force" not in str(err.value)  # pydicom's advice is not a hiroml user's to take


def test_a_plausible_start_that_does_not_parse_stays_an_error() -> None:
    data = _part10(pydicom.dcmread(io.BytesIO(_real_cr())))
    bare = data[_meta_end(data) :]
    with pytest.raises(BadInputError, match=r"cut\.dcm"):
        dicom.parse(bare[:37], label="cut.dcm")


def test_preambleless_members_are_indexed_and_noted_in_the_audit(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 4096, (40, 32), dtype=np.uint16)
    ds = synth.make_cxr(pixels, study=STUDY, sop_uid="2.25.81002", series_uid="2.25.81003")
    data = _part10(ds)
    batch = tmp_path / "CXR-UPDATE-20200601-COMPLETE"
    batch.mkdir()
    path = batch / "8100_20200502-093000_C1_XR-CHEST-PA.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("1_PA/img.dcm", data[132:])
    (ezip,) = discover(tmp_path).zips
    zi = index_zip(path, ezip, IndexConfig())
    assert zi.problems == ()
    (inst,) = zi.instances
    assert "no 128-byte preamble" in inst.read_note
    result = build_exams([ezip], list(zi.instances), {}, ExamsConfig())
    assert len(result.exams) == 1
    (row,) = [a for a in result.audit if a.action == Action.KEPT]
    assert "1 member(s) read without a Part 10 header" in row.detail
    assert "e.g. 1_PA/img.dcm" in row.detail


# --------------------------------------------------------------------------- every syntax


@dataclass(frozen=True)
class Case:
    uid: str
    decoder: str
    eight_bit: bool  # the codec takes 8-bit samples only (JPEG baseline, JPEG XL recompression)
    bound: int  # the largest |decoded - source| allowed, in stored values (0: bit-exact)
    encode: Callable[[np.ndarray], bytes] | None  # a frame's codestream; None: native


def _jxl_recompressed(a: np.ndarray) -> bytes:
    return bytes(imagecodecs.jpegxl_encode_jpeg(imagecodecs.jpeg8_encode(a, level=95)))


CASES = [
    Case(dicom_uids.IMPLICIT_VR_LE, dicom_uids.NUMPY, False, 0, None),
    Case(dicom_uids.EXPLICIT_VR_LE, dicom_uids.NUMPY, False, 0, None),
    Case(dicom_uids.DEFLATED_LE, dicom_uids.NUMPY, False, 0, None),
    Case(dicom_uids.EXPLICIT_VR_BE, dicom_uids.NUMPY, False, 0, None),
    Case(
        dicom_uids.JPEG_BASELINE,
        dicom_uids.LIBJPEG_TURBO,
        True,
        12,
        lambda a: imagecodecs.jpeg8_encode(a, level=95),
    ),
    Case(
        dicom_uids.JPEG_EXTENDED,
        dicom_uids.LIBJPEG_TURBO,
        False,
        40,
        lambda a: imagecodecs.jpeg8_encode(a, level=95, bitspersample=12),
    ),
    Case(
        dicom_uids.JPEG_LOSSLESS,
        dicom_uids.LIBJPEG_TURBO,
        False,
        0,
        lambda a: imagecodecs.jpeg8_encode(a, lossless=True, predictor=7, bitspersample=12),
    ),
    Case(
        dicom_uids.JPEG_LOSSLESS_SV1,
        dicom_uids.LIBJPEG_TURBO,
        False,
        0,
        lambda a: imagecodecs.jpeg8_encode(a, lossless=True, predictor=1, bitspersample=12),
    ),
    Case(
        dicom_uids.JPEG_LS_LOSSLESS,
        dicom_uids.CHARLS,
        False,
        0,
        lambda a: imagecodecs.jpegls_encode(a, level=0),
    ),
    Case(
        dicom_uids.JPEG_LS_NEAR_LOSSLESS,
        dicom_uids.CHARLS,
        False,
        2,
        lambda a: imagecodecs.jpegls_encode(a, level=2),
    ),
    Case(
        dicom_uids.JPEG_2000_LOSSLESS,
        dicom_uids.OPENJPEG,
        False,
        0,
        lambda a: imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=True),
    ),
    Case(
        dicom_uids.JPEG_2000,
        dicom_uids.OPENJPEG,
        False,
        80,
        lambda a: imagecodecs.jpeg2k_encode(a, level=80, codecformat="J2K"),
    ),
    Case(
        dicom_uids.HTJ2K_LOSSLESS,
        dicom_uids.OPENJPEG,
        False,
        0,
        lambda a: imagecodecs.htj2k_encode(a, reversible=True),
    ),
    Case(
        dicom_uids.HTJ2K_LOSSLESS_RPCL,
        dicom_uids.OPENJPEG,
        False,
        0,
        lambda a: imagecodecs.htj2k_encode(a, reversible=True),
    ),
    Case(
        dicom_uids.HTJ2K,
        dicom_uids.OPENJPEG,
        False,
        2,
        lambda a: imagecodecs.htj2k_encode(a, reversible=False),
    ),
    Case(
        dicom_uids.JPEG_XL_LOSSLESS,
        dicom_uids.LIBJXL,
        False,
        0,
        lambda a: imagecodecs.jpegxl_encode(a, lossless=True),
    ),
    Case(dicom_uids.JPEG_XL_RECOMPRESSION, dicom_uids.LIBJXL, True, 12, _jxl_recompressed),
    Case(
        dicom_uids.JPEG_XL,
        dicom_uids.LIBJXL,
        False,
        250,
        lambda a: imagecodecs.jpegxl_encode(a, distance=1.0),
    ),
    Case(dicom_uids.RLE_LOSSLESS, dicom_uids.PYLIBJPEG_RLE, False, 0, None),
    Case(
        dicom_uids.DEFLATED_IMAGE_FRAME,
        dicom_uids.LIBDEFLATE,
        False,
        0,
        lambda a: imagecodecs.deflate_encode(a.tobytes(), raw=True),
    ),
]


def test_every_syntax_of_the_table_is_tried_here() -> None:
    assert {c.uid for c in CASES} == set(dicom_uids.SYNTAXES)
    assert all(dicom_uids.SYNTAXES[c.uid].decoder == c.decoder for c in CASES)
    assert all(dicom_uids.SYNTAXES[c.uid].lossless == (c.bound == 0) for c in CASES)


def _radiograph(eight_bit: bool) -> np.ndarray:
    """A smooth 12-bit (or 8-bit) chest-like image with noise, 96 x 80, seeded."""
    y, x = np.mgrid[0:96, 0:80]
    rng = np.random.default_rng(13)
    img = 2000 + 1200 * np.sin(x / 11.0) * np.cos(y / 9.0) + rng.normal(0, 40, (96, 80))
    img = np.clip(img, 0, 4095).astype(np.uint16)
    return (img >> 4).astype(np.uint8) if eight_bit else img


def _encoded(ds: Dataset, pattern: np.ndarray, case: Case) -> bytes:
    """Part 10 bytes of ``ds`` with ``pattern`` (the stored bit pattern, unsigned) stored in
    ``case.uid``: native, pydicom's RLE encoder, or a codestream in one fragment."""
    ds = ds.copy()
    ds.file_meta = ds.file_meta.copy()
    ds.file_meta.TransferSyntaxUID = UID(case.uid)
    if case.uid == RLELossless:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        values = dicom.fix_bits(pattern, int(ds.BitsStored), ds.PixelRepresentation == 1)
        ds.compress(RLELossless, values, encoding_plugin="pydicom")
        return _part10(ds)
    if case.encode is None:
        big = case.uid == dicom_uids.EXPLICIT_VR_BE
        ds.PixelData = pattern.astype(">u2" if big else pattern.dtype).tobytes()
        ds["PixelData"].VR = "OW"
        return _part10(ds, implicit=case.uid == dicom_uids.IMPLICIT_VR_LE, little=not big)
    source = pattern
    if pattern.dtype == np.uint16 and ds.PixelRepresentation == 1:
        source = pattern.view(np.int16) if case.decoder == dicom_uids.OPENJPEG else pattern
    ds.PixelData = encapsulate([bytes(case.encode(source))])
    ds["PixelData"].VR = "OB"
    return _part10(ds)


def _cxr_dataset(pixels: np.ndarray) -> Dataset:
    ds = synth.make_cxr(
        pixels.astype(np.uint16),
        study=STUDY,
        sop_uid="2.25.81004",
        series_uid="2.25.81005",
        bits_stored=8 if pixels.dtype == np.uint8 else 12,
    )
    if pixels.dtype == np.uint8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OB"
        for keyword in ("WindowCenter", "WindowWidth"):
            ds.pop(keyword, None)
    return ds


def _convert(data: bytes) -> CxrImage:
    ds, pix = read_member(data, label="x.dcm")
    inst = instance_from_dataset(
        ds, batch="B", zip_name="z.zip", member="x.dcm", member_size=len(data), pixels=pix
    )
    return cxr_convert.convert_instance(data, inst, exam_description="XR-CHEST-PA", cfg=CxrConfig())


@pytest.mark.parametrize("case", CASES, ids=lambda c: dicom_uids.SYNTAXES[c.uid].name)
def test_a_radiograph_in_every_syntax(case: Case) -> None:
    source = _radiograph(case.eight_bit)
    ds = _cxr_dataset(source)
    native = _part10(ds)
    data = _encoded(ds, source, case)
    parsed = dicom.parse(data, label="x.dcm")
    assert str(parsed.dataset.file_meta.TransferSyntaxUID) == case.uid
    got = cxr_pixels.decode_frame(parsed.dataset)
    assert got.decoder == case.decoder  # pinned: a fallback to pydicom fails here
    assert got.array.shape == source.shape
    err = np.abs(got.array.astype(np.int64) - source.astype(np.int64)).max()
    if case.bound == 0:
        assert err == 0
    else:
        assert err <= case.bound, err
    # and through the converter: identical stored arrays when lossless, close when lossy
    image, reference = _convert(data), _convert(native)
    assert image.decoder == case.decoder and image.transfer_syntax == case.uid
    diff = np.abs(image.array.astype(np.float32) - reference.array.astype(np.float32))
    if case.bound == 0:
        np.testing.assert_array_equal(image.array, reference.array)
    else:
        assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.1, (diff.mean(), diff.max())


# Lossless syntaxes, and the lossy ones that code signed samples as such (JPEG 2000, HTJ2K):
# lossy coding of a two's complement bit pattern is no way to store a CT slice.
CT_CASES = [c for c in CASES if c.bound == 0 or c.decoder == dicom_uids.OPENJPEG]


@pytest.mark.parametrize("case", CT_CASES, ids=lambda c: dicom_uids.SYNTAXES[c.uid].name)
def test_a_ct_slice_in_every_syntax(case: Case) -> None:
    """A signed 12-bit CT slice (two's complement stored values, Rescale Intercept 0)."""
    y, x = np.mgrid[0:64, 0:72]
    hu = np.where((x - 36) ** 2 / 900 + (y - 32) ** 2 / 600 < 1, 40.0, -1000.0)
    hu = hu + np.random.default_rng(5).normal(0, 15, hu.shape)
    ds = synth.make_ct_image(
        hu,
        study=STUDY,
        sop_uid="2.25.81006",
        series_uid="2.25.81007",
        frame_uid="2.25.81008",
        position=(0.0, 0.0, 0.0),
        rescale=(1.0, 0.0),
        signed=True,
        bits_stored=12,
    )
    stored = np.asarray(ds.pixel_array)  # int16, sign-extended from 12 bits
    pattern = stored.view(np.uint16) & 0x0FFF  # the 12-bit two's complement bit pattern
    if case.decoder == dicom_uids.OPENJPEG:
        pattern = stored.view(np.uint16)  # JPEG 2000 codes signed samples as such
    data = _encoded(ds, pattern, case)
    parsed = dicom.parse(data, label="ct.dcm")
    got = dicom.decode(parsed.dataset)
    assert got.decoder == case.decoder
    err = np.abs(got.array.astype(np.int64) - stored.astype(np.int64)).max()
    assert err <= case.bound, err
    hu_got = ct_hu.decode_hu(parsed.dataset, label="ct.dcm")
    if case.bound == 0:
        np.testing.assert_array_equal(hu_got, stored.astype(np.float64))
    # a series of two such slices builds, and the volume records its decoder
    second = ds.copy()
    second.SOPInstanceUID, second.ImagePositionPatient = "2.25.81009", [0, 0, 2.5]
    second.InstanceNumber = 2
    members = [data, _encoded(second, pattern, case)]
    insts = []
    for k, member in enumerate(members):
        head, pix = read_member(member, label=f"{k}.dcm")
        insts.append(
            instance_from_dataset(
                head, batch="B", zip_name="z.zip", member=f"{k}.dcm", member_size=1, pixels=pix
            )
        )
    by_member = dict(zip([i.member for i in insts], members, strict=True))
    vol, _ = ct_convert.convert_series(insts, lambda i: by_member[i.member], CtConfig())
    assert vol.decoder == case.decoder and vol.array.shape == (2, 64, 72)


def test_big_endian_8_bit_reads_as_its_little_endian_twin() -> None:
    """pydicom-data's OBXXXX1A: 8-bit samples in OW words, explicit VR big endian."""
    be = pydicom.dcmread(get_testdata_file("OBXXXX1A_expb.dcm"))
    le = pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))
    assert be["PixelData"].VR == "OW" and be.BitsAllocated == 8
    got = dicom.decode(be)
    assert got.decoder == dicom_uids.NUMPY
    np.testing.assert_array_equal(got.array, le.pixel_array)


def test_rle_with_several_segments() -> None:
    """16-bit RLE: two segments per frame (high bytes, low bytes), PS3.5 G.2."""
    source = _radiograph(False)
    data = _encoded(_cxr_dataset(source), source, CASES[-2])
    ds = dicom.parse(data, label="rle.dcm").dataset
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    assert int.from_bytes(frame[:4], "little") == 2  # the RLE header's segment count
    np.testing.assert_array_equal(dicom.decode(ds).array, source)


def test_a_frame_argument_selects_the_frame() -> None:
    frames = [_radiograph(False), _radiograph(False)[::-1].copy()]
    ds = _cxr_dataset(frames[0])
    ds.NumberOfFrames = 2
    ds.file_meta.TransferSyntaxUID = UID(dicom_uids.JPEG_2000_LOSSLESS)
    ds.PixelData = encapsulate(
        [bytes(imagecodecs.jpeg2k_encode(f, codecformat="J2K", reversible=True)) for f in frames]
    )
    ds["PixelData"].VR = "OB"
    parsed = dicom.parse(_part10(ds), label="mf.dcm").dataset
    for k, f in enumerate(frames):
        np.testing.assert_array_equal(cxr_pixels.decode(parsed, frame=k), f)
    with pytest.raises(ValueError, match="frame 2 is outside the 2 frame"):
        cxr_pixels.decode(parsed, frame=2)


def test_zip_members_are_inflated_by_isa_l() -> None:
    assert zipio._inflate_lib is isal.isal_zlib


def test_both_converters_read_a_file_without_preamble() -> None:
    """The converters parse members with the same helper as the index."""
    data = _real_cr()[132:]
    head, pixels = read_member(data, label="cr.dcm")
    inst = instance_from_dataset(
        head, batch="B", zip_name="z.zip", member="cr.dcm", member_size=len(data), pixels=pixels
    )
    image = cxr_convert.convert_instance(
        data, inst, exam_description="XR-CHEST-PA", cfg=CxrConfig()
    )
    assert image.original_shape == (1955, 1841) and image.decoder == dicom_uids.NUMPY
    ct_file = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    ds = ct_hu._read_dataset(ct_file[132:], "ct.dcm")
    reference = pydicom.dcmread(io.BytesIO(ct_file))
    np.testing.assert_array_equal(
        ct_hu.decode_hu(ds),
        np.asarray(pydicom.pixels.apply_modality_lut(reference.pixel_array, reference)),
    )


def test_the_console_formatter_gives_one_line_without_traceback() -> None:
    try:
        raise RuntimeError("deep\ninside")
    except RuntimeError:
        exc = sys.exc_info()
    record = logging.LogRecord(
        "hiroml.cxr", logging.WARNING, __file__, 1, "cannot decode:\n  a: x\n  b: y", (), exc
    )
    line = OneLineFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert line == "WARNING hiroml.cxr: cannot decode: | a: x | b: y"
    assert record.exc_info is exc  # the run log's handler still gets the traceback
    assert "Traceback" in logging.Formatter().format(record)
    assert console_filter().filter(record)
    other = logging.LogRecord("pydicom.pixels", logging.ERROR, __file__, 1, "m", (), None)
    assert not console_filter().filter(other)


@pytest.mark.parametrize(
    ("name", "decoder"),
    [
        ("SC_rgb.dcm", dicom_uids.NUMPY),
        ("SC_rgb_expb.dcm", dicom_uids.NUMPY),
        ("SC_rgb_small_odd.dcm", dicom_uids.NUMPY),
        ("SC_ybr_full_uncompressed.dcm", dicom_uids.PYDICOM),  # converted to RGB by pydicom
        ("SC_ybr_full_422_uncompressed.dcm", dicom_uids.PYDICOM),  # subsampled layout
        ("MR_small_bigendian.dcm", dicom_uids.NUMPY),
        ("JPEG2000.dcm", dicom_uids.OPENJPEG),
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", dicom_uids.LIBJPEG_TURBO),
        ("MR_small_RLE.dcm", dicom_uids.PYLIBJPEG_RLE),
    ],
)
def test_real_files_decode_as_pydicom_does(name: str, decoder: str) -> None:
    """Real files shipped by pydicom / pydicom-data: the values pydicom gives, by the decoder
    the table pins (colour in YBR is left to pydicom, which converts it to RGB)."""
    path = get_testdata_file(name)
    got = dicom.decode(pydicom.dcmread(path))
    assert got.decoder == decoder
    np.testing.assert_array_equal(got.array, pydicom.dcmread(path).pixel_array)
