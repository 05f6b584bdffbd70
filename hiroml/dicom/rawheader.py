"""Header values straight from a dataset's raw elements.

pydicom parses a file into raw elements and converts one into a typed value when it is first
read (``ds[tag].value``): a dispatch through hooks, converters, value validation and a new
``DataElement`` of about 20 us an element, paid for each of the 40 elements the index reads
of every member. :func:`values` converts the elements the index reads itself, for the value
representations whose decoding is plain: text in the default character set, ISO_IR 100 or
ISO_IR 192; integer strings; decimal strings; unsigned and signed binary integers. Any other
element, and any value that is not clean (an IS that is not a plain integer, a DS that is not
a number, a binary value of the wrong length, a VR other than the dictionary's) is left to
pydicom, so the values this gives are what pydicom gives, read through
:mod:`hiroml.ingest.index`'s ``_text``/``_int``/``_floats``:

- text (AE AS CS DA DT LO SH TM UI): a ``str``, or a ``list`` of ``str`` for several values,
  split at ``\\`` and with pydicom's stripping (trailing spaces and NULs; both ends for AE);
- IS: an ``int``; DS: a ``float``; US, SS, UL, SL: an ``int``; several of them: a ``list``;
- an element of length 0: ``None`` (pydicom: "" or None; the readers take both as absent).

The dataset is left as it was: its elements are still pydicom's to convert when other code
reads them. ``tests/test_rawheader.py`` compares the two over pydicom's own test files and
edge cases.

:func:`get` and :func:`has` are ``ds.get(keyword, default)`` and ``keyword in ds`` for the
pixel chain, which reads some 50 header values per image: a value pydicom has converted
already is taken from its element (``ds.get`` costs 3-4 us of attribute dispatch, this
0.5 us); a binary integer (US SS UL SL) or a CS of one value is converted here, exactly as
pydicom converts it (an ``int``, a ``str``), and left raw; anything else is pydicom's.
:func:`decimals` gives the numbers of a DS or IS still raw, for code that reads them as
``float`` (the rescale, the window, the pixel spacing).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.tag import BaseTag

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

_CHARSET_TAG = BaseTag(0x00080005)
_DEFAULT_TEXT = frozenset({"AS", "CS", "DA", "DT", "TM", "UI"})  # not in the character set
_CHARSET_TEXT = frozenset({"LO", "SH"})  # decoded in (0008,0005) Specific Character Set
_BINARY = {"US": "H", "SS": "h", "UL": "L", "SL": "l"}
_PLAIN_INT = re.compile(r"[+-]?[0-9]+\Z")
# pydicom's Python codec names (pydicom.charset.python_encoding) that decode in one step.
_ONE_STEP = {"iso8859": "latin_1", "latin_1": "latin_1", "UTF8": "utf_8"}


class _Pydicom(Exception):
    """This value is pydicom's to convert."""


def _settings_default() -> bool:
    """pydicom converts values as this module does only with its default value settings."""
    c = pydicom_config
    return not (
        c.use_DS_numpy
        or c.use_IS_numpy
        or c.use_DS_decimal
        or c.datetime_conversion
        or c.use_none_as_empty_text_VR_value
        or c.settings.reading_validation_mode == c.RAISE
    )


def _codec(ds: Dataset) -> str | None:
    """The codec of the dataset's LO/SH values, when it decodes in one step; else None."""
    if _CHARSET_TAG not in ds._dict:
        return "latin_1"  # pydicom's default encoding, "iso8859"
    names = ds._character_set
    names = [names] if isinstance(names, str) else list(names)
    return _ONE_STEP.get(names[0]) if len(names) == 1 else None


def _split(text: str) -> str | list[str]:
    items = text.rstrip(" \x00").split("\\")
    return items[0] if len(items) == 1 else items


def _text(raw: bytes, vr: str, codec: str | None) -> str | list[str]:
    if vr in _DEFAULT_TEXT:
        text = raw.decode("latin_1")
        return _split(text.rstrip("\x00 ") if vr == "UI" else text)
    if codec is None:
        raise _Pydicom
    try:
        items = raw.decode(codec).split("\\")
    except UnicodeDecodeError:  # pydicom replaces and warns
        raise _Pydicom from None
    stripped = [v.rstrip("\x00 ") for v in items]
    return stripped[0] if len(stripped) == 1 else stripped


def _numbers(raw: bytes, vr: str) -> Any:
    items = _split(raw.decode("latin_1").strip() if vr == "DS" else raw.decode("latin_1"))
    many = items if isinstance(items, list) else [items]
    if vr == "IS":
        if not all(_PLAIN_INT.match(v.strip()) for v in many):
            raise _Pydicom  # "1.0", "": pydicom's IS rules
        out: list[Any] = [int(v) for v in many]
    else:
        try:
            out = [float(v) for v in many]
        except ValueError:
            raise _Pydicom from None
    return out[0] if len(out) == 1 else out


def _binary(raw: bytes, vr: str, little: bool) -> Any:
    fmt = _BINARY[vr]
    size = struct.calcsize(fmt)
    if len(raw) % size:
        raise _Pydicom  # pydicom raises or warns and keeps the bytes
    out = list(struct.unpack(f"{'<' if little else '>'}{len(raw) // size}{fmt}", raw))
    return out[0] if len(out) == 1 else out


def _convert(elem: RawDataElement, vr: str, codec: str | None) -> Any:
    if (elem.VR or vr) != vr or elem.value is None:
        raise _Pydicom
    raw = elem.value
    if elem.length == 0 or not raw:
        return None
    if vr in _DEFAULT_TEXT or vr in _CHARSET_TEXT:
        return _text(raw, vr, codec)
    if vr in ("IS", "DS"):
        return _numbers(raw, vr)
    if vr in _BINARY:
        return _binary(raw, vr, elem.is_little_endian)
    raise _Pydicom


def vr_table(keywords: Iterable[str]) -> tuple[tuple[str, BaseTag, str], ...]:
    """``(keyword, tag, VR)`` of each keyword, for :func:`values`."""
    from pydicom.datadict import tag_for_keyword

    out = []
    for kw in keywords:
        tag = BaseTag(tag_for_keyword(kw) or 0)
        out.append((kw, tag, dictionary_VR(tag)))
    return tuple(out)


def values(ds: Dataset, table: tuple[tuple[str, BaseTag, str], ...]) -> dict[str, Any]:
    """``{keyword: value}`` of the table's elements present at the top level of ``ds``,
    converted here where the module docstring says, else by pydicom (``ds[tag].value``)."""
    elements = ds._dict
    fast = _settings_default()
    codec: str | None = None
    codec_known = False
    out: dict[str, Any] = {}
    for kw, tag, vr in table:
        elem = elements.get(tag)
        if elem is None:
            continue
        if fast and isinstance(elem, RawDataElement):
            if vr in _CHARSET_TEXT and not codec_known:
                codec, codec_known = _codec(ds), True
            try:
                out[kw] = _convert(elem, vr, codec)
                continue
            except _Pydicom:
                pass
        out[kw] = ds[tag].value
    return out


_EXACT_VR = frozenset({*_BINARY, "CS"})  # one value converted here is what pydicom gives
_TAGS: dict[str, tuple[BaseTag, str]] = {}  # keyword -> (tag, dictionary VR)


def _tag(keyword: str) -> tuple[BaseTag, str] | None:
    known = _TAGS.get(keyword)
    if known is None:
        from pydicom.datadict import tag_for_keyword

        tag = tag_for_keyword(keyword)
        if tag is None:
            return None
        known = _TAGS[keyword] = (BaseTag(tag), dictionary_VR(tag))
    return known


def get(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)`` of a top-level element (the same value), cheaper: see the
    module docstring."""
    known = _tag(keyword)
    if known is None:
        return ds.get(keyword, default)
    tag, vr = known
    elem = ds._dict.get(tag)
    if elem is None:
        return default
    if isinstance(elem, DataElement):
        return elem.value
    if vr in _EXACT_VR and isinstance(elem, RawDataElement) and _settings_default():
        try:
            value = _convert(elem, vr, None)
        except _Pydicom:
            value = None
        if value is not None and not isinstance(value, list):
            return value  # one value; an empty one and several are pydicom's ("", MultiValue)
    return ds.get(keyword, default)


def has(ds: Dataset, keyword: str) -> bool:
    """``keyword in ds`` (a top-level element), without pydicom's tag conversion."""
    known = _tag(keyword)
    return known[0] in ds._dict if known is not None else keyword in ds


def decimals(ds: Dataset, keyword: str) -> list[float] | None:
    """The values of a DS or IS element as ``float``, each ``float()`` of what pydicom gives,
    when the element is still raw and clean (its element left raw); None when it is absent,
    converted already, empty or not clean: the caller then reads pydicom's value."""
    known = _tag(keyword)
    if known is None or known[1] not in ("DS", "IS"):
        return None
    elem = ds._dict.get(known[0])
    if not isinstance(elem, RawDataElement) or not _settings_default():
        return None
    try:
        value = _convert(elem, known[1], None)
    except _Pydicom:
        return None
    if value is None:
        return None
    return [float(v) for v in (value if isinstance(value, list) else [value])]


__all__ = ["decimals", "get", "has", "values", "vr_table"]
