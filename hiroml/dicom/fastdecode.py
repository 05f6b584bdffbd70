"""Reduced-resolution decode of JPEG 2000 radiographs: decode only the resolution the output needs.

A JPEG 2000 codestream (and an HTJ2K one, ISO/IEC 15444-15) stores its image as wavelet
levels: decoding ``2**r`` times smaller in each dimension skips most of the work (about 4x
faster at half resolution on a 15-bit chest CR). :func:`decode_reduced` picks the largest
reduction ``2**r`` that still leaves each dimension of the decoded image at least as large as
the dimension :func:`hiroml.cxr.pixels.resize` shrinks it to (so the resize still only shrinks), and
decodes through Pillow's OpenJPEG (``Image.reduce`` set before ``load``).

It applies only where the reduced values are a faithful low-pass of the stored values: one
component, (0028,0002) Samples per Pixel 1, MONOCHROME1/2, unsigned ((0028,0103) Pixel
Representation 0, and the codestream's SIZ says unsigned), a codestream precision of 8 to 16
bits and not above (0028,0101) Bits Stored (so Bits Stored masking has nothing to do), no
(0028,0120) Pixel Padding Value (padding masks are exact stored values, which averaging
blurs), one frame, and enough decomposition levels in COD. Anything else returns ``None`` with
the reason logged at debug level, and the caller decodes in full
(:func:`hiroml.cxr.pixels.decode_frame`), so the switch ``cxr.fast_jpeg2000: false`` or a reduction
of 1 gives exactly what the full decode gives.

Rescale (0028,1053)/(0028,1052) is linear and commutes with the averaging; the VOI window or
LUT applies to stored values and is unchanged, applied to the reduced values.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame

from hiroml.config import LimitsConfig
from hiroml.dicom import decode as dicom
from hiroml.dicom import rawheader
from hiroml.dicom import uids as dicom_uids

logger = logging.getLogger(__name__)

#: Transfer syntaxes whose frames are JPEG 2000 / HTJ2K codestreams (PS3.5 A.4.4, A.4.11).
J2K_SYNTAXES = frozenset(
    {
        dicom_uids.JPEG_2000_LOSSLESS,
        dicom_uids.JPEG_2000,
        dicom_uids.HTJ2K_LOSSLESS,
        dicom_uids.HTJ2K_LOSSLESS_RPCL,
        dicom_uids.HTJ2K,
    }
)
#: Baseline / extended JPEG (PS3.5 A.4.1): libjpeg-turbo's DCT scaling (1/2, 1/4, 1/8).
JPEG_SYNTAXES = frozenset({dicom_uids.JPEG_BASELINE, dicom_uids.JPEG_EXTENDED})
#: Names recorded as the decoder of a reduced decode (``CxrImage.decoder``).
PILLOW_OPENJPEG = "pillow-openjpeg"
PILLOW_LIBJPEG = "pillow-libjpeg-turbo"

_SOC_SIZ = b"\xff\x4f\xff\x51"
_COD = 0xFF52
_SOD = 0xFF93


@dataclass(frozen=True, slots=True)
class Codestream:
    """What the SIZ and COD marker segments (ISO/IEC 15444-1 A.5.1, A.6.1) say of a
    codestream: image size in samples (``width`` = Xsiz - XOsiz, ``height`` = Ysiz - YOsiz),
    component count (Csiz), the first component's precision in bits and sign (Ssiz), and
    the number of wavelet decomposition levels (SPcod; ``None`` when no COD was found)."""

    width: int
    height: int
    components: int
    precision: int
    signed: bool
    levels: int | None


@dataclass(frozen=True, slots=True)
class Reduced:
    """A reduced decode: ``decoded`` holds the stored values at (ceil(rows / factor),
    ceil(columns / factor)); ``factor`` is the reduction (2, 4, 8 ...), in each dimension."""

    decoded: dicom.Decoded
    factor: int


def read_codestream(data: bytes) -> Codestream | None:
    """Parse the main header of a raw JPEG 2000 / HTJ2K codestream (SOC then SIZ, up to the
    first COD or SOT); ``None`` when ``data`` is not one (e.g. a JP2 file) or is truncated."""
    if not data.startswith(_SOC_SIZ) or len(data) < 42:
        return None
    lsiz = struct.unpack_from(">H", data, 4)[0]
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">4I", data, 8)
    csiz = struct.unpack_from(">H", data, 40)[0]
    if csiz < 1 or len(data) < 45:
        return None
    ssiz = data[42]
    levels = None
    pos = 4 + lsiz  # SIZ marker at 2, Lsiz counts itself
    while pos + 4 <= len(data):
        marker, length = struct.unpack_from(">HH", data, pos)
        if marker == _COD:
            levels = data[pos + 9] if pos + 9 < len(data) else None  # SPcod after Lcod, Scod, SGcod
            break
        if marker in (0xFF90, _SOD) or marker < 0xFF00:  # SOT or not a marker: header over
            break
        pos += 2 + length
    return Codestream(
        width=xsiz - xosiz,
        height=ysiz - yosiz,
        components=csiz,
        precision=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        levels=levels,
    )


def output_shape(rows: int, cols: int, size: tuple[int, int], keep_aspect: bool) -> tuple[int, int]:
    """The (rows, columns) :func:`hiroml.cxr.pixels.resize` scales a (rows, cols) image to, before
    padding: one factor fitting ``size`` = (height, width) with ``keep_aspect``, else ``size``."""
    th, tw = int(size[0]), int(size[1])
    if not keep_aspect:
        return th, tw
    s = min(th / rows, tw / cols)
    return max(1, min(th, round(rows * s))), max(1, min(tw, round(cols * s)))


def _ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def _pillow_size_agrees(rows: int, cols: int, r: int) -> bool:
    """Pillow sizes a reduced image as (n + 2**r // 2) // 2**r, OpenJPEG as ceil(n / 2**r);
    where they differ Pillow's load fails, so such a reduction is not used."""
    p = 1 << r
    return all((n + (p >> 1)) // p == _ceil_div(n, p) for n in (rows, cols))


def choose_reduction(
    rows: int,
    cols: int,
    size: tuple[int, int],
    keep_aspect: bool,
    levels: int,
    *,
    j2k: bool = True,
) -> int:
    """The largest r <= ``levels`` such that the image decoded 2**r times smaller,
    (ceil(rows / 2**r), ceil(cols / 2**r)), is in each dimension at least the
    :func:`output_shape` of the full image (so resizing it still only shrinks), and, with
    ``j2k``, that Pillow sizes as OpenJPEG does; 0 when none."""
    oh, ow = output_shape(rows, cols, size, keep_aspect)
    best = 0
    for r in range(1, max(0, levels) + 1):
        p = 1 << r
        if _ceil_div(rows, p) < oh or _ceil_div(cols, p) < ow:
            break
        if not j2k or _pillow_size_agrees(rows, cols, r):
            best = r
    return best


def _window_in_header(ds: Dataset) -> bool:
    """(0028,1050)/(0028,1051) Window Center and Width, or a (0028,3010) VOI LUT Sequence."""
    return (rawheader.has(ds, "WindowCenter") and rawheader.has(ds, "WindowWidth")) or bool(
        rawheader.get(ds, "VOILUTSequence")
    )


def _why_not_dataset(ds: Dataset, normalization: str) -> str:
    """Why no reduced decode applies to ``ds``, from its header (empty when one may).
    Percentile and min-max statistics (``cxr.normalization``, or ``voi`` without a window in
    the header, which falls back to percentiles) change with resolution, since averaging
    removes the noise in the tails: only a window or VOI LUT from the header qualifies."""
    photometric = str(rawheader.get(ds, "PhotometricInterpretation", "")).strip().upper()
    checks = (
        (normalization != "voi", f"cxr.normalization={normalization} uses image statistics"),
        (not _window_in_header(ds), "no window or VOI LUT in the header (percentile fallback)"),
        (
            int(rawheader.get(ds, "SamplesPerPixel", 1) or 1) != 1,
            "(0028,0002) Samples per Pixel is not 1",
        ),
        (photometric not in ("MONOCHROME1", "MONOCHROME2"), f"photometric {photometric!r}"),
        (
            int(rawheader.get(ds, "PixelRepresentation", 0) or 0) != 0,
            "signed (0028,0103) Pixel Representation",
        ),
        (_frames(ds) != 1, "multi-frame"),
        (rawheader.has(ds, "PixelPaddingValue"), "(0028,0120) Pixel Padding Value"),
    )
    for failed, reason in checks:
        if failed:
            return reason
    return ""


def _why_not(ds: Dataset, cs: Codestream | None, bits_stored: int, normalization: str) -> str:
    """Why the reduced JPEG 2000 decode cannot apply to ``ds`` (empty when it can)."""
    if cs is None:
        return "not a raw JPEG 2000 codestream (SOC, SIZ)"
    why = _why_not_dataset(ds, normalization)
    if why:
        return why
    if cs.components != 1 or cs.signed:
        return f"codestream has {cs.components} component(s), signed={cs.signed}"
    if not 8 <= cs.precision <= 16:
        return f"codestream precision {cs.precision} bits (8 to 16 supported)"
    if bits_stored and cs.precision > bits_stored:
        return f"codestream precision {cs.precision} > (0028,0101) Bits Stored {bits_stored}"
    if cs.levels is None:
        return "no COD marker in the main header"
    rows, cols = int(ds.Rows), int(ds.Columns)
    if (cs.height, cs.width) != (rows, cols):
        return f"codestream is {cs.height}x{cs.width}, (0028,0010)/(0028,0011) say {rows}x{cols}"
    return ""


def _frames(ds: Dataset) -> int:
    """(0028,0008) Number of Frames; 1 when absent or unusable."""
    try:
        return max(1, int(rawheader.get(ds, "NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def pillow_decode(data: bytes, reduce: int, precision: int) -> np.ndarray:
    """Stored values of a one-component unsigned codestream decoded ``2**reduce`` times smaller
    by Pillow's OpenJPEG. Pillow scales 9- to 15-bit samples up to 16 bits (mode "I;16");
    that scaling is undone, so values are in the codestream's own range."""
    with Image.open(io.BytesIO(data)) as im:
        im.reduce = reduce  # type: ignore[method-assign,assignment]  # Jpeg2KImageFile property
        im.load()
        arr = np.asarray(im)
    if arr.dtype == np.uint16 and 8 < precision < 16:
        arr = arr >> np.uint16(16 - precision)
    return np.ascontiguousarray(arr)


def decode_reduced(
    ds: Dataset,
    *,
    frame: int,
    size: tuple[int, int],
    keep_aspect: bool,
    jpeg2000: bool = True,
    jpeg: bool = True,
    normalization: str = "voi",
    limits: LimitsConfig | None = None,
) -> Reduced | None:
    """The stored values of frame ``frame`` of a JPEG 2000 / HTJ2K radiograph (with
    ``jpeg2000``) or a baseline JPEG one (with ``jpeg``) at the largest useful reduction for an
    output of ``size`` = (height, width) (see :func:`choose_reduction`), or ``None`` where the
    full decode must be used: another syntax, no useful reduction, a ``normalization`` (the
    ``cxr.normalization``) other than a header window, or a case the reduced decode does not
    cover (the reason logged at debug level). :class:`~hiroml.errors.DecodeError` from
    :func:`hiroml.dicom.decode.check_limits` (with ``limits``) before any decoder runs."""
    ts = dicom.transfer_syntax(ds)
    if not rawheader.has(ds, "PixelData") or frame != 0:
        return None
    if jpeg and ts in JPEG_SYNTAXES:
        dicom.check_limits(ds, limits=limits)
        return _jpeg_reduced(ds, size, keep_aspect, normalization)
    if not jpeg2000 or ts not in J2K_SYNTAXES:
        return None  # the full decode checks the limits itself
    dicom.check_limits(ds, limits=limits)
    try:
        data = get_frame(ds.PixelData, 0, number_of_frames=1)
        cs = read_codestream(data)
        why = _why_not(ds, cs, int(rawheader.get(ds, "BitsStored", 0) or 0), normalization)
    except (AttributeError, TypeError, ValueError, struct.error) as e:
        why, cs = f"unreadable header: {e}", None
    if why or cs is None:
        logger.debug("full JPEG 2000 decode (%s): %s", dicom_uids.uid_label(ts), why)
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    r = choose_reduction(rows, cols, size, keep_aspect, int(cs.levels or 0))
    if r == 0:
        logger.debug("full JPEG 2000 decode: %dx%d has no reduction above %s", rows, cols, size)
        return None
    try:
        arr = pillow_decode(data, r, cs.precision)
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # the full decode decides
        logger.debug("full JPEG 2000 decode: reduced decode failed (%s)", e)
        return None
    expected = (_ceil_div(rows, 1 << r), _ceil_div(cols, 1 << r))
    if arr.shape != expected:
        logger.debug("full JPEG 2000 decode: reduced shape %s, expected %s", arr.shape, expected)
        return None
    return Reduced(dicom.Decoded(arr, PILLOW_OPENJPEG), 1 << r)


def _jpeg_reduced(
    ds: Dataset, size: tuple[int, int], keep_aspect: bool, normalization: str
) -> Reduced | None:
    """A one-component 8-bit JPEG decoded by libjpeg-turbo at 1/2, 1/4 or 1/8 scale (its DCT
    scaling, through Pillow's ``Image.draft``), or ``None`` (reason at debug level)."""
    why = _why_not_dataset(ds, normalization)
    bits = (
        int(rawheader.get(ds, "BitsAllocated", 0) or 0),
        int(rawheader.get(ds, "BitsStored", 0) or 0),
    )
    if not why and bits != (8, 8):
        why = f"(0028,0100)/(0028,0101) Bits Allocated/Stored {bits}, not 8/8"
    if why:
        logger.debug("full JPEG decode: %s", why)
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    r = choose_reduction(rows, cols, size, keep_aspect, 3, j2k=False)
    if r == 0:
        return None
    p = 1 << r
    try:
        data = get_frame(ds.PixelData, 0, number_of_frames=1)
        with Image.open(io.BytesIO(data)) as im:
            if im.mode != "L" or im.size != (cols, rows):
                logger.debug("full JPEG decode: mode %s, size %s", im.mode, im.size)
                return None
            im.draft("L", (cols // p, rows // p))  # DCT scaling: the largest 1/2**k >= that
            arr = np.ascontiguousarray(np.asarray(im))
    except (OSError, ValueError, TypeError, Image.DecompressionBombError) as e:
        logger.debug("full JPEG decode: reduced decode failed (%s)", e)
        return None
    if arr.shape != (_ceil_div(rows, p), _ceil_div(cols, p)):
        logger.debug("full JPEG decode: reduced shape %s at 1/%d", arr.shape, p)
        return None
    return Reduced(dicom.Decoded(arr, PILLOW_LIBJPEG), p)
