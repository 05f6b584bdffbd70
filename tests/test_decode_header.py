"""hiroml.dicom.rawheader.get/has, which the pixel chain reads its header values with: the
same values as ``ds.get``/``in`` (type and text too), over every DICOM file pydicom and
pydicom-data ship here and over written edge cases, with the values it converts itself left
raw in the dataset."""

from __future__ import annotations

import warnings

import pytest
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from test_rawheader import _EDGES, _REAL, _read, _written

from hiroml.dicom import rawheader

_ABSENT = object()
# read by the pixel chain, present or not in a file
_CHAIN = (
    "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "PlanarConfiguration", "NumberOfFrames", "PhotometricInterpretation", "ViewPosition",
    "ImageLaterality", "SeriesDescription", "ViewCodeSequence", "PresentationLUTShape",
    "PresentationIntentType", "VOILUTFunction", "VOILUTSequence", "ModalityLUTSequence",
    "RescaleSlope", "RescaleIntercept", "PixelPaddingValue", "SOPClassUID", "PixelData",
    "WindowCenter", "WindowWidth", "PixelSpacing", "ImagerPixelSpacing", "filename",
    "NotAKeyword",
)  # fmt: skip


def _compare(data: bytes) -> int:
    """Every top-level keyword of the file and the chain's, both ways; how many values
    ``get`` converted itself (their elements still raw)."""
    fast, slow = _read(data), _read(data)
    keywords = {keyword_for_tag(t) for t in slow._dict} - {""} | set(_CHAIN)
    kept_raw = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kw in sorted(keywords):
            try:
                want: object = slow.get(kw, _ABSENT)
            except Exception as e:  # pydicom refuses the value: so must get
                with pytest.raises(type(e)):
                    rawheader.get(fast, kw, _ABSENT)
                continue
            numbers = rawheader.decimals(fast, kw)
            if numbers is not None:  # a clean DS or IS: what float() makes of pydicom's values
                many = want if isinstance(want, MultiValue) else [want]
                assert repr(numbers) == repr([float(v) for v in many]), kw
            got = rawheader.get(fast, kw, _ABSENT)
            assert (type(got), repr(got), str(got)) == (type(want), repr(want), str(want)), kw
            assert rawheader.has(fast, kw) == (kw in slow), kw
            tag = next((t for t in fast._dict if keyword_for_tag(t) == kw), None)
            kept_raw += tag is not None and isinstance(fast._dict[tag], RawDataElement)
    return kept_raw


def test_real_files_give_what_ds_get_gives() -> None:
    assert len(_REAL) > 60
    assert sum(_compare(p.read_bytes()) for p in _REAL) > 100
    ds = _read(next(p for p in _REAL if p.name == "CT_small.dcm").read_bytes())
    assert rawheader.decimals(ds, "RescaleIntercept") == [-1024.0]
    assert isinstance(ds._dict[BaseTag(0x00281052)], RawDataElement)  # left raw


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_edge_values_give_what_ds_get_gives(syntax: str) -> None:
    edges = {
        **_EDGES,
        "PhotometricInterpretation": ("CS", b"MONOCHROME1 "),
        "PlanarConfiguration": ("US", b"\x00\x00\x01\x00"),  # two values: pydicom's
        "ImageLaterality": ("CS", b"L\\R"),
        "VOILUTFunction": ("CS", b" SIGMOID\x00"),
    }
    assert _compare(_written(edges, syntax=syntax)) >= 3


def test_a_value_converted_by_pydicom_is_read_from_its_element() -> None:
    ds = Dataset()
    ds.Rows = 512
    ds.PhotometricInterpretation = "MONOCHROME2"
    assert rawheader.get(ds, "Rows") == 512 and rawheader.has(ds, "Rows")
    assert rawheader.get(ds, "Columns", 7) == 7 and not rawheader.has(ds, "Columns")
    assert rawheader.get(ds, "PhotometricInterpretation") == "MONOCHROME2"
