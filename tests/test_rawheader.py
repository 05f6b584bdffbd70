"""hiroml.dicom.rawheader: the index's header values read from raw elements are what pydicom gives.

Compared through what the index makes of them (its ``_text``/``_int``/``_floats`` readers and
the whole :class:`hiroml.records.Instance`), over every DICOM file pydicom and pydicom-data
ship here and over written edge cases: padding, several values, empty values, integer
strings that are not plain, decimal strings that are not numbers, character sets, implicit
VR and big endian files.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import data_store
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from hiroml.dicom import rawheader
from hiroml.ingest import index

_ROOTS = (
    Path(pydicom.__file__).parent / "data" / "test_files",
    Path(data_store.__file__).parent / "data",
)
_REAL = sorted(p for root in _ROOTS for p in root.rglob("*.dcm"))


def _read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)


def _by_pydicom(ds: Dataset) -> dict[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {kw: ds[tag].value for kw, tag, _ in index._HEADER_TABLE if tag in ds._dict}


def _readings(h: dict[str, object]) -> dict[str, object]:
    """What the index reads of each keyword, as its VR has it read: decimal strings as
    numbers (every count of them), integers as int, the rest as text."""
    out: dict[str, object] = {}
    for kw, _, vr in index._HEADER_TABLE:
        if vr == "DS":
            got: tuple[object, ...] = tuple(index._floats(h, kw, n) for n in (1, 2, 3, 6))
        elif vr in ("IS", "US"):
            got = (index._int(h, kw),)
        else:
            got = (index._text(h, kw),)
        out[kw] = (kw in h, *got)
    return out


def _same(a: dict[str, object], b: dict[str, object]) -> None:
    def norm(v: object) -> object:  # NaN != NaN
        if isinstance(v, tuple):
            return tuple(norm(x) for x in v)
        return "nan" if isinstance(v, float) and math.isnan(v) else v

    assert {k: norm(v) for k, v in a.items()} == {k: norm(v) for k, v in b.items()}


def _check(data: bytes) -> int:
    """Compare both ways on one file; how many values the raw path converted itself (it
    leaves their elements raw, where ``ds[tag]`` replaces them)."""
    fast_ds, slow_ds = _read(data), _read(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = rawheader.values(fast_ds, index._HEADER_TABLE)
    _same(_readings(fast), _readings(_by_pydicom(slow_ds)))
    return sum(
        isinstance(fast_ds._dict[tag], RawDataElement)
        for kw, tag, _ in index._HEADER_TABLE
        if tag in fast_ds._dict
    )


def test_real_files_read_as_pydicom_reads_them() -> None:
    assert len(_REAL) > 60, "pydicom's and pydicom-data's files are expected here"
    converted = present = 0
    for path in _REAL:
        converted += _check(path.read_bytes())
        present += len(_by_pydicom(_read(path.read_bytes())))
    # The raw path did the work: most values never went through pydicom.
    assert converted > 0.9 * present


def test_the_instance_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole record of real members, with and without the raw path."""
    for name in ("CT_small.dcm", "MR_small_bigendian.dcm", "rtstruct.dcm", "693_UNCR.dcm"):
        path = next(p for p in _REAL if p.name == name)
        data = path.read_bytes()

        def record(ds: Dataset, name: str = name, size: int = len(data)) -> object:
            return index.instance_from_dataset(
                ds, batch="b", zip_name="z.zip", member=name, member_size=size
            )

        fast = record(_read(data))
        with monkeypatch.context() as m:
            m.setattr(index, "header_values", _by_pydicom)
            slow = record(_read(data))
        assert fast == slow, name


def _written(
    elements: dict[str, tuple[str, bytes]],
    *,
    syntax: str = ExplicitVRLittleEndian,
    charset: bytes | None = None,
) -> bytes:
    """A file holding ``{keyword: (VR, raw value bytes)}`` as written, bytes and all."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    if charset is not None:
        ds.SpecificCharacterSet = charset.decode("latin_1")
    little = syntax != ExplicitVRBigEndian
    implicit = syntax == ImplicitVRLittleEndian
    for kw, (vr, raw) in elements.items():
        tag = pydicom.datadict.tag_for_keyword(kw)
        assert tag is not None, kw
        ds._dict[pydicom.tag.BaseTag(tag)] = RawDataElement(
            pydicom.tag.BaseTag(tag), vr, len(raw), raw, 0, implicit, little
        )
    bio = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(bio, implicit_vr=implicit, little_endian=little, enforce_file_format=True)
    return bio.getvalue()


_EDGES = {
    "ImageType": ("CS", b"ORIGINAL \\PRIMARY\\ "),
    "Modality": ("CS", b" CR "),
    "SOPInstanceUID": ("UI", b"1.2.3.4\x00"),
    "SeriesInstanceUID": ("UI", b"1.2\\3.4 "),
    "StudyDate": ("DA", b"20200301"),
    "StudyTime": ("TM", b"080000.123 "),
    "PatientAge": ("AS", b"045Y"),
    "PatientID": ("LO", b" 12345 \\ 6 "),
    "SeriesDescription": ("LO", b"Thorax\x00 "),
    "ConvolutionKernel": ("SH", b"B30f\\B31f"),
    "InstanceNumber": ("IS", b" 12 "),
    "SeriesNumber": ("IS", b"+3"),
    "NumberOfFrames": ("IS", b"1\\2 "),
    "PixelSpacing": ("DS", b" 0.139\\0.139 "),
    "ImagerPixelSpacing": ("DS", b"1.5\\"),
    "SliceThickness": ("DS", b"nan "),
    "RescaleSlope": ("DS", b"1e0"),
    "RescaleIntercept": ("DS", b"-1024."),
    "GantryDetectorTilt": ("DS", b"abc "),
    "ImagePositionPatient": ("DS", b"-1\\2.5\\3E2 "),
    "Rows": ("US", b"\x00\x02"),
    "Columns": ("US", b"\x00\x02\x00\x01"),
    "BitsAllocated": ("US", b"\x10\x00"),
    "BitsStored": ("US", b""),
    "PixelRepresentation": ("US", b"\x01\x00"),
    "ViewPosition": ("CS", b""),
    "FrameOfReferenceUID": ("UI", b""),
}


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_edge_values_read_as_pydicom_reads_them(syntax: str) -> None:
    assert _check(_written(_EDGES, syntax=syntax)) > 15


@pytest.mark.parametrize(
    "kw,value",
    [
        ("InstanceNumber", b"1.0 "),  # pydicom's IS rules: 1
        ("InstanceNumber", b"1.5"),
        ("InstanceNumber", b"  "),
        ("SeriesNumber", b"12345678901234"),
        ("SliceThickness", b"1_0"),
        ("SliceThickness", b"  "),
        ("SliceThickness", b"inf"),
        ("PixelSpacing", b"0.1\\\\0.2"),
    ],
)
def test_values_left_to_pydicom_or_not_read_the_same(kw: str, value: bytes) -> None:
    vr = pydicom.datadict.dictionary_VR(pydicom.datadict.tag_for_keyword(kw))
    _check(_written({kw: (vr, value), "SOPInstanceUID": ("UI", b"1.2")}))


@pytest.mark.parametrize(
    "charset,text",
    [
        (b"ISO_IR 100", "Müller^Jörg".encode("latin_1")),
        (b"ISO_IR 192", "Müller 東京".encode()),
        (b"ISO_IR 192", b"M\xfcller"),  # not UTF-8: pydicom replaces, and so it goes to pydicom
        (b"ISO 2022 IR 6\\ISO 2022 IR 87", b"\x1b$B;3ED\x1b(B"),
        (b"ISO_IR 144", "Иванов".encode("iso8859_5")),
    ],
)
def test_character_sets(charset: bytes, text: bytes) -> None:
    elements = {"PatientID": ("LO", text), "SeriesDescription": ("LO", text)}
    _check(_written(elements, charset=charset))


def test_a_non_default_pydicom_setting_leaves_everything_to_pydicom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pydicom_config, "use_DS_numpy", True)
    ds = _read(_written({"PixelSpacing": ("DS", b"0.5\\0.5")}))
    rawheader.values(ds, index._HEADER_TABLE)
    assert not isinstance(ds._dict[pydicom.tag.BaseTag(0x00280030)], RawDataElement)


def test_a_wrong_vr_goes_to_pydicom() -> None:
    """Rows written as SS: pydicom converts it by the VR in the file, and so does the index."""
    data = _written({"Rows": ("SS", b"\xff\xff"), "SOPInstanceUID": ("UI", b"1.2")})
    assert _check(data) == 1  # the UID only
    ds = _read(data)
    assert rawheader.values(ds, index._HEADER_TABLE)["Rows"] == -1
