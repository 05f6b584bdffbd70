"""The radiograph pixel chain: pure functions ``f(arr, ds) -> arr``, one step each (decode,
grayscale, modality LUT, VOI/window, normalisation, padding, resize, storage cast)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut as _pydicom_modality_lut
from pydicom.pixels.processing import apply_voi as _pydicom_voi

from hiroml.cxr.select import _uid_label
from hiroml.dicom import decode as dicom
from hiroml.dicom import rawheader
from hiroml.errors import DecodeError
from hiroml.store import halfcast

logger = logging.getLogger(__name__)
_transfer_syntax = dicom.transfer_syntax
_fix_bits = dicom.fix_bits


def number_of_frames(ds: Dataset) -> int:
    """(0028,0008) Number of Frames; 1 when absent, empty or not a positive number."""
    try:
        return max(1, int(rawheader.get(ds, "NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def decode_frame(ds: Dataset, *, frame: int = 0) -> dicom.Decoded:
    """:func:`decode`, with the name of the decoder that produced the values."""
    photometric = str(rawheader.get(ds, "PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        ts = _transfer_syntax(ds)
        raise DecodeError(f"PALETTE COLOR pixels are not a radiograph ({_uid_label(ts)})")
    return dicom.decode(ds, frame=frame)


def decode(ds: Dataset, *, frame: int = 0) -> np.ndarray:
    """The stored values of frame ``frame`` (0-based, below (0028,0008) Number of Frames):
    (rows, columns), or (rows, columns, 3) for colour, as an integer numpy array (signed when
    (0028,0103) Pixel Representation is 1, only the (0028,0101) Bits Stored bits kept).

    The decoder per (0002,0010) Transfer Syntax UID is the one :data:`hiroml.dicom.uids.SYNTAXES`
    pins (uncompressed by :func:`numpy.frombuffer`, JPEG by libjpeg-turbo, JPEG-LS by CharLS,
    JPEG 2000 and HTJ2K by OpenJPEG, JPEG XL by libjxl, Deflated Image Frame by libdeflate,
    RLE by pylibjpeg-rle); anything else through pydicom's pixel backends. The result may be a
    read-only view of the dataset's buffer. Raises :class:`DecodeError` naming the transfer
    syntax.
    """
    return decode_frame(ds, frame=frame).array


def to_grayscale(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """One channel from colour pixels ((0028,0002) Samples per Pixel 3, RGB after decoding):
    ITU-R BT.601 luma, same dtype. One-channel arrays are returned as they are."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] == 3:
        src = arr if arr.dtype in (np.uint8, np.uint16) else arr.astype(np.float32)
        return np.asarray(cv2.cvtColor(np.ascontiguousarray(src), cv2.COLOR_RGB2GRAY))
    raise DecodeError(f"unexpected pixel array shape {arr.shape}")


def apply_modality(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values, as a new float32 array.

    The (0028,3000) Modality LUT Sequence when present (through pydicom's
    ``apply_modality_lut``), else (0028,1053) Rescale Slope and (0028,1052) Rescale
    Intercept (identity when absent), computed in float32 in place.
    """
    if rawheader.get(ds, "ModalityLUTSequence"):
        return np.asarray(_pydicom_modality_lut(arr, ds), dtype=np.float32)
    slope, intercept = dicom.rescale(ds)
    out = arr.astype(np.float32)
    if slope != 1.0:
        np.multiply(out, np.float32(slope), out=out)
    if intercept != 0.0:
        np.add(out, np.float32(intercept), out=out)
    return out


def _affine01(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``clip((arr - lo) / (hi - lo), 0, 1)`` as a new float32 array (zeros if hi <= lo).

    numpy's float32 subtract, multiply and clip, each an IEEE operation rounded once, so the
    values are the same on every machine and with every numpy (OpenCV's ``addWeighted``
    rounds differently from one version, and one SIMD path, to the next). About as fast:
    16 ms for 7.5 Mpixel here."""
    if not hi > lo:
        return np.zeros(arr.shape, np.float32)
    out = np.subtract(arr, np.float32(lo), dtype=np.float32)
    np.multiply(out, np.float32(1.0 / (hi - lo)), out=out)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _window_value(ds: Dataset, keyword: str, index: int) -> tuple[float, int]:
    """The ``index``-th value of a multi-valued DS attribute and how many there are; NaN
    (an unusable window) when the value is empty or not a number."""
    fast = rawheader.decimals(ds, keyword)
    if fast is not None:
        return fast[min(index, len(fast) - 1)], len(fast)
    elem = ds[keyword]
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    try:
        return float(values[min(index, len(values) - 1)]), len(values)
    except (TypeError, ValueError):
        return math.nan, len(values)


def apply_window(
    arr: np.ndarray,
    center: float,
    width: float,
    func: str = "LINEAR",
    *,
    rescale: tuple[float, float] = (1.0, 0.0),
) -> np.ndarray:
    """A (0028,1050) Window Center / (0028,1051) Window Width pair, (0028,1056) VOI LUT
    Function LINEAR, LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.2), mapped to [0, 1] float32.

    ``arr`` holds modality values, or stored values when ``rescale`` = ((0028,1053) Rescale
    Slope > 0, (0028,1052) Rescale Intercept) is given: the rescale is then folded into the
    window, one pass instead of two."""
    slope, intercept = rescale
    if not slope > 0:
        raise ValueError(f"rescale slope {slope} must be > 0 to fold it into a window")
    func = func.upper() or "LINEAR"
    if func == "SIGMOID":
        out = np.subtract(arr, np.float32((center - intercept) / slope), dtype=np.float32)
        np.multiply(out, np.float32(-4.0 * slope / width), out=out)
        np.minimum(out, np.float32(80.0), out=out)  # exp(80) ~ 1e35: 1/(1+e) is 0, no overflow
        np.exp(out, out=out)
        np.add(out, np.float32(1.0), out=out)
        np.reciprocal(out, out=out)
        return out
    if func == "LINEAR_EXACT":
        lo, hi = center - width / 2.0, center + width / 2.0
    else:  # LINEAR: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped
        lo = center - 0.5 - (width - 1.0) / 2.0
        hi = lo + (width - 1.0)
    return _affine01(arr, (lo - intercept) / slope, (hi - intercept) / slope)


def apply_voi(
    arr: np.ndarray,
    ds: Dataset,
    *,
    index: int = 0,
    fallback_percentiles: tuple[float, float] = (0.5, 99.5),
    rescale: tuple[float, float] | None = None,
    padding: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """Modality values -> [0, 1] float32 by the header's VOI, and what was applied.

    (0028,3010) VOI LUT Sequence item ``index`` (through pydicom's ``apply_voi``, output
    divided by 2**bits - 1 of its (0028,3002) LUT Descriptor), else the ``index``-th (0028,1050)
    Window Center / (0028,1051) Window Width with (0028,1056) VOI LUT Function. When ``index``
    is past the last window, the last one is used. With no usable VOI in the header,
    :func:`normalize_percentile` at ``fallback_percentiles``, and the description says so.

    With ``rescale`` = (slope > 0, intercept), ``arr`` holds stored values and the modality
    rescale is folded in (see :func:`apply_window`): same result as
    ``apply_voi(apply_modality(arr, ds), ds)`` in one pass.

    ``padding`` (a boolean mask of ``arr``'s shape, see :func:`padding_mask`) leaves the
    padded pixels out of everything derived from the data: the fallback percentiles and the
    top of a VOI LUT's output range.
    """
    seq = rawheader.get(ds, "VOILUTSequence", None)
    if seq:
        i = min(index, len(seq) - 1)
        item = seq[i]
        bits = int(item.LUTDescriptor[2])
        if rescale is not None and rescale != (1.0, 0.0):
            arr = arr * rescale[0] + rescale[1]
        if arr.dtype.kind == "f":  # LUT indices: modality values are integers here
            arr = np.rint(arr).astype(np.int32)
        out = np.asarray(_pydicom_voi(arr, ds, index=i), dtype=np.float32)
        inside = out if padding is None else out[~padding]
        top = float(max(2**bits - 1, float(inside.max()) if inside.size else 1.0, 1.0))
        np.multiply(out, np.float32(1.0 / top), out=out)
        explanation = str(item.get("LUTExplanation", "") or "").strip()
        return out, f"voi_lut({i + 1}/{len(seq)}{', ' + explanation if explanation else ''})"
    if rawheader.has(ds, "WindowCenter") and rawheader.has(ds, "WindowWidth"):
        center, count = _window_value(ds, "WindowCenter", index)
        width, _ = _window_value(ds, "WindowWidth", index)
        func = str(rawheader.get(ds, "VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        minimum = 1.0 if func == "LINEAR" else 0.0
        if width > minimum and math.isfinite(center):
            tag = "" if func == "LINEAR" else f",{func.lower()}"
            desc = f"window(c={center:g},w={width:g}{tag})"
            if count > 1:
                desc += f"[{min(index, count - 1) + 1}/{count}]"
            return apply_window(arr, center, width, func, rescale=rescale or (1.0, 0.0)), desc
        logger.info("unusable window c=%s w=%s: percentile instead", center, width)
    lo, hi = fallback_percentiles  # invariant under a positive rescale
    return (
        normalize_percentile(arr, lo=lo, hi=hi, padding=padding),
        f"percentile({lo:g},{hi:g}) (no VOI in header)",
    )


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's own linear interpolation (``numpy.lib._function_base_impl._lerp``)."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _histogram(arr: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(offset, counts) with counts[i] the number of pixels equal to offset + i, for integer
    arrays of at most 16 bits; ``None`` otherwise."""
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2 or arr.size == 0:
        return None
    a = np.ascontiguousarray(arr).reshape(arr.shape[0], -1) if arr.ndim > 1 else arr[None, :]
    if a.dtype == np.int8:
        a = a.astype(np.int16)
    if a.dtype == np.int16:  # order-preserving map to uint16: v + 32768
        a = a.view(np.uint16) ^ np.uint16(0x8000)
        base = -32768
    else:
        base = 0
    a = np.ascontiguousarray(a)
    lo, hi = int(a.min()), int(a.max())
    nbins = hi - lo + 1
    counts = cv2.calcHist([a], [0], None, [nbins], [lo, hi + 1]).ravel()
    return base + lo, counts.astype(np.int64)


def percentiles(arr: np.ndarray, qs: Sequence[float]) -> list[float]:
    """Exact percentiles with :func:`numpy.percentile`'s default ("linear") method; from a
    histogram for integer arrays of up to 16 bits (about 10x faster), else numpy."""
    hist = _histogram(arr)
    if hist is None:
        return [float(v) for v in np.percentile(arr, list(qs))]
    offset, counts = hist
    cum = np.cumsum(counts)
    n = int(cum[-1])
    out: list[float] = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        k = math.floor(pos)
        t = pos - k
        a = offset + int(np.searchsorted(cum, k, side="right"))
        b = offset + int(np.searchsorted(cum, min(k + 1, n - 1), side="right"))
        out.append(_lerp(float(a), float(b), t))
    return out


def normalize_percentile(
    arr: np.ndarray, *, lo: float, hi: float, padding: np.ndarray | None = None
) -> np.ndarray:
    """Clip to the ``lo``-th and ``hi``-th percentiles (0-100) and scale to [0, 1] float32.
    Percentiles are exact (numpy's linear method), from a histogram for integer data, over
    the pixels outside ``padding`` (a boolean mask, see :func:`padding_mask`) when given."""
    p_lo, p_hi = percentiles(_unpadded(arr, padding), (lo, hi))
    return _affine01(arr, p_lo, p_hi)


def normalize_minmax(arr: np.ndarray, *, padding: np.ndarray | None = None) -> np.ndarray:
    """Scale the range of ``arr`` (outside ``padding`` when given) to [0, 1] float32 (all
    zeros for a constant image)."""
    inside = _unpadded(arr, padding)
    return _affine01(arr, float(inside.min()), float(inside.max()))


def _unpadded(arr: np.ndarray, padding: np.ndarray | None) -> np.ndarray:
    """The pixels of ``arr`` outside the ``padding`` mask (1-D), or ``arr`` without one."""
    return arr if padding is None else arr[~padding]


def _padding_value(ds: Dataset, keyword: str, arr: np.ndarray) -> int | None:
    """An (0028,0120)/(0028,0121) value as a number comparable with the stored values in
    ``arr``: a value written unsigned for signed pixels is read as two's complement."""
    try:
        value = int(ds[keyword].value)
    except (KeyError, TypeError, ValueError):
        return None
    if arr.dtype.kind == "i" and value > np.iinfo(arr.dtype).max:
        value -= 1 << (8 * arr.dtype.itemsize)
    return value


def padding_mask(arr: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Where the stored values ``arr`` (one channel, (rows, columns)) are padding, not image.

    (0028,0120) Pixel Padding Value alone marks the pixels equal to it; with (0028,0121) Pixel
    Padding Range Limit, every value between the two, inclusive, in either order (PS3.3
    C.7.5.1.1.2). Both are stored values, compared before any rescale. Returns a boolean mask
    of ``arr``'s shape, or ``None`` when the header declares no padding or no pixel is padded.
    Raises :class:`DecodeError` when every pixel is padding: there is no image to keep.
    """
    if arr.ndim != 2 or arr.dtype.kind not in "iu" or not rawheader.has(ds, "PixelPaddingValue"):
        return None
    value = _padding_value(ds, "PixelPaddingValue", arr)
    if value is None:
        return None
    limit = _padding_value(ds, "PixelPaddingRangeLimit", arr)
    lo, hi = sorted((value, value if limit is None else limit))
    mask = arr == lo if lo == hi else (arr >= lo) & (arr <= hi)
    if not mask.any():
        return None
    if mask.all():
        raise DecodeError(
            f"every pixel is padding ((0028,0120) Pixel Padding Value {value}"
            + ("" if limit is None else f", (0028,0121) Pixel Padding Range Limit {limit}")
            + "): no image"
        )
    return np.asarray(mask)


def invert_if_monochrome1(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, bool]:
    """``1 - arr`` when the image is displayed inverted, so that dense tissue is bright;
    ``arr`` must already be in [0, 1]. Inverted: (0028,0004) Photometric Interpretation
    MONOCHROME1 (lowest value white), and MONOCHROME2 with (2050,0020) Presentation LUT Shape
    INVERSE. (MONOCHROME1 with INVERSE is the DX way of saying MONOCHROME1: inverted once.)
    Returns the array and whether it was inverted."""
    photometric = str(rawheader.get(ds, "PhotometricInterpretation", "")).strip().upper()
    shape = str(rawheader.get(ds, "PresentationLUTShape", "") or "").strip().upper()
    if photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE"):
        return np.subtract(np.float32(1.0), arr, dtype=np.float32), True
    return arr, False


def _area_shrink(arr: np.ndarray, nh: int, nw: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Area-shrink to (nh, nw) in two steps: an exact integer box mean (cv2's fast path for
    integer factors), then area interpolation for the remaining factor (< 2). About 3x faster
    than one non-integer INTER_AREA over a 7.5 Mpixel image, within float16 precision of it.
    The integer step needs the size to be a multiple of its factors: the remainder (fewer
    rows/columns than the factor) is cropped evenly from both edges. Returns the array and
    the (rows, columns) of the input it covers."""
    h, w = arr.shape[:2]
    ky, kx = h // nh, w // nw
    hc, wc = (h // ky) * ky, (w // kx) * kx
    top, left = (h - hc) // 2, (w - wc) // 2
    src = arr[top : top + hc, left : left + wc]
    mid = cv2.resize(src, (wc // kx, hc // ky), interpolation=cv2.INTER_AREA)
    if mid.shape[:2] != (nh, nw):
        mid = cv2.resize(mid, (nw, nh), interpolation=cv2.INTER_AREA)
    return mid, (hc, wc)


def resize(
    arr: np.ndarray, size: tuple[int, int], *, keep_aspect: bool
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize a (rows, columns) image to ``size`` = (height, width).

    Area interpolation when shrinking (an integer box mean then :data:`cv2.INTER_AREA`, see
    :func:`_area_shrink`), bilinear when enlarging. With ``keep_aspect`` the image is scaled by
    one factor to fit and padded with 0, centred. Returns the array and the scale factors
    (row, column) = output pixels / input pixels covered, so that the spacing after resizing
    is ``pixel_spacing / scale`` (mm).
    """
    h, w = arr.shape[:2]
    th, tw = int(size[0]), int(size[1])
    if keep_aspect:
        s = min(th / h, tw / w)
        nh, nw = max(1, min(th, round(h * s))), max(1, min(tw, round(w * s)))
    else:
        nh, nw = th, tw
    covered = (h, w)
    if (nh, nw) == (h, w):
        small = arr
    elif nh <= h and nw <= w:
        small, covered = _area_shrink(arr, nh, nw)
    else:
        small = cv2.resize(arr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    scale = (nh / covered[0], nw / covered[1])
    if (nh, nw) == (th, tw):
        return np.ascontiguousarray(small), scale
    out = np.zeros((th, tw), dtype=small.dtype)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out, scale


def to_storage(arr01: np.ndarray, dtype: str) -> tuple[np.ndarray, float]:
    """[0, 1] floats -> the storage dtype (``float16``, ``uint8`` or ``uint16``, rounded) and
    the scale with which ``stored * scale`` gives back [0, 1]."""
    if dtype == "float16":
        return halfcast.to_float16(arr01), 1.0
    if dtype in ("uint8", "uint16"):
        top = 255 if dtype == "uint8" else 65535
        out = np.multiply(arr01, np.float32(top), dtype=np.float32)
        np.rint(out, out=out)
        return out.astype(dtype), 1.0 / top
    raise ValueError(f"storage dtype {dtype!r}: choose float16, uint8 or uint16")


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm: (0028,0030) Pixel Spacing (calibrated) when present, else
    (0018,1164) Imager Pixel Spacing (at the detector)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = rawheader.decimals(ds, keyword) or ds.get(keyword, None)
        try:
            if value is not None and len(value) == 2 and min(float(v) for v in value) > 0:
                return float(value[0]), float(value[1])
        except (TypeError, ValueError):
            continue
    return None
