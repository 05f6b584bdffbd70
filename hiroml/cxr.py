"""Chest radiographs: from a DICOM instance to a normalised, resized training array.

The pixel pipeline is a chain of pure functions, one step each, in the style of pydicom's
``pixels/processing.py``::

    decode -> to_grayscale -> apply_modality -> apply_voi | normalize_percentile |
    normalize_minmax -> invert_if_monochrome1 -> resize -> to_storage

Arrays are numpy (y, x) = (rows, columns). Intensities after normalisation are float32 in
[0, 1] with dense tissue (bone) bright in every output, whatever the (0028,0004) Photometric
Interpretation. :func:`convert_instance` runs the chain for one instance and records its
provenance; :func:`convert_exam` runs it over an exam, turning every dropped object and every
bad image into a :class:`~hiroml.records.Problem` while the other images go on.

Every frame of a multi-frame radiograph is converted (:func:`convert_frames`), each one a
sample of its own; a frame that cannot be decoded is a problem naming the frame.

Speed (see ``benchmarks/bench_cxr.py``): uncompressed pixels are viewed with
:func:`numpy.frombuffer`; JPEG lossless is decoded by libjpeg-turbo through ``imagecodecs``
(bit-exact, about 4x faster than pydicom's default plugin) and JPEG 2000 by OpenJPEG through
``imagecodecs``; percentiles come from an exact histogram instead of :func:`numpy.percentile`;
the rescale is folded into the window so that one subtract and one multiply (numpy float32,
the same values on every machine) give [0, 1]; and shrinking is an integer box mean then
``cv2.INTER_AREA``. OpenCV may use several threads per call: process-pool workers should
call ``cv2.setNumThreads(1)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut as _pydicom_modality_lut
from pydicom.pixels.processing import apply_voi as _pydicom_voi
from pydicom.uid import (
    UID,
    DigitalIntraOralXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForProcessing,
)

from hiroml import dicom, fastdecode, halfcast
from hiroml.config import CxrConfig
from hiroml.errors import BadInputError, DecodeError
from hiroml.records import Action, CxrImage, Exam, Instance, Problem, View

logger = logging.getLogger(__name__)

STAGE = "cxr"

# --------------------------------------------------------------------------- object selection

_NON_IMAGE_MODALITIES = frozenset(
    {"SR", "PR", "KO", "DOC", "REG", "RTDOSE", "RTPLAN", "RTSTRUCT", "ECG", "AU", "PLAN"}
)
_SECONDARY_MODALITIES = frozenset({"OT", "SC"})
# Raw detector data that no radiologist reads: the "for processing" twin of a "for
# presentation" image of the same exposure (PS3.3 A.26, (0008,0068) Presentation Intent Type).
_FOR_PROCESSING_SOP_CLASSES = frozenset(
    {
        DigitalXRayImageStorageForProcessing,
        DigitalMammographyXRayImageStorageForProcessing,
        DigitalIntraOralXRayImageStorageForProcessing,
    }
)
FOR_PROCESSING = "FOR PROCESSING"


_uid_label = dicom.uid_label


def is_for_processing(sop_class_uid: str, presentation_intent: str) -> bool:
    """Whether an image is raw detector data "for processing": a (0008,0016) SOP Class UID of
    the DX, mammography or intra-oral "For Processing" storage classes, or (0008,0068)
    Presentation Intent Type ``FOR PROCESSING``."""
    intent = presentation_intent.strip().upper()
    return sop_class_uid in _FOR_PROCESSING_SOP_CLASSES or intent == FOR_PROCESSING


def keep_reason(
    inst: Instance, *, drop_derived: bool, keep_for_processing: bool = False
) -> str | None:
    """Why an instance is not a radiograph to keep, from its header alone; ``None`` to keep.

    Dropped always: no (7FE0,0010) Pixel Data, and non-image (0008,0016) SOP Class UIDs
    (structured and dose reports, presentation states, key objects, waveforms, encapsulated
    documents...) or a non-image (0008,0060) Modality (SR, PR, KO, DOC...). Dropped unless
    ``keep_for_processing``: "for processing" images (:func:`is_for_processing`), raw detector
    data kept beside the "for presentation" image of the same exposure. Dropped when
    ``drop_derived``: Secondary Capture SOP classes, Modality OT/SC (screen saves), and
    (0008,0008) Image Type whose value 2 is SECONDARY (DERIVED\\SECONDARY). DERIVED\\PRIMARY is
    kept: many computed radiography units label their processed images so.
    """
    sop = inst.sop_class_uid
    modality = inst.modality.strip().upper()
    kind = dicom.non_image_kind(sop)
    if kind is not None:
        return f"non-image object: {kind} (SOP Class {_uid_label(sop)})"
    if modality in _NON_IMAGE_MODALITIES:
        return f"non-image object: Modality={modality} (SOP Class {_uid_label(sop)})"
    if not inst.has_pixels:
        return f"no pixel data (SOP Class {_uid_label(sop)}, Modality={modality or '?'})"
    if not keep_for_processing and is_for_processing(sop, inst.presentation_intent):
        intent = inst.presentation_intent.strip().upper()
        evidence = f"PresentationIntentType={intent}, " if intent else ""
        return (
            f"for processing: raw detector data, not a radiograph to read ({evidence}"
            f"SOP Class {_uid_label(sop)}); cxr.keep_for_processing=true keeps it"
        )
    if not drop_derived:
        return None
    if dicom.is_secondary_capture(sop):
        return f"secondary capture / screen save (SOP Class {_uid_label(sop)})"
    if modality in _SECONDARY_MODALITIES:
        return f"secondary capture / screen save (Modality={modality})"
    image_type = [v.strip().upper() for v in inst.image_type]
    joined = "\\".join(image_type)
    if len(image_type) > 1 and image_type[1] == "SECONDARY":
        return f"secondary image (ImageType={joined})"
    if any(v in ("SCREEN SAVE", "SCREENSHOT") for v in image_type):
        return f"screen save (ImageType={joined})"
    return None


# --------------------------------------------------------------------------- view

_FRONTAL_POSITIONS = frozenset({"PA", "AP", "APS", "PAS", "FRONTAL", "AP SUPINE", "AP ERECT"})
_LATERAL_POSITIONS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT", "L", "R"})
_FRONTAL_WORDS = frozenset({"PA", "AP", "FRONTAL", "FRONT", "PORT", "PORTABLE", "1V", "1VIEW"})
_LATERAL_WORDS = frozenset({"LAT", "LATERAL", "LL", "RL", "LLAT", "RLAT"})
_MULTI_VIEW_WORDS = frozenset({"2V", "2VIEW", "2VIEWS", "3V", "3VIEWS", "PALAT", "PAL"})


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^A-Z0-9]+", text.upper()) if w]


def _view_from_text(text: str) -> View | None:
    """FRONTAL/LATERAL when a free-text description names exactly one kind of view."""
    words = _words(text)
    joined = {a + b for a, b in itertools.pairwise(words)}  # "1 VIEW" -> "1VIEW"
    bag = set(words) | joined
    frontal = bool(bag & _FRONTAL_WORDS)
    lateral = bool(bag & _LATERAL_WORDS)
    if bag & _MULTI_VIEW_WORDS or bag & {"2VIEW", "3VIEW"}:
        return None  # e.g. "CHEST 2 VIEWS": several views, this text cannot tell which
    if frontal and not lateral:
        return View.FRONTAL
    if lateral and not frontal:
        return View.LATERAL
    return None


@dataclass(frozen=True, slots=True)
class ViewEvidence:
    """The header values :func:`classify_view` reads, read once: (0018,5101) View Position,
    the code meanings of (0054,0220) View Code Sequence, (0008,103E) Series Description and
    (0020,0062) Image Laterality (each "" when absent)."""

    view_position: str = ""
    code_meanings: tuple[str, ...] = ()
    series_description: str = ""
    laterality: str = ""


def view_evidence(ds: Dataset) -> ViewEvidence:
    """The :class:`ViewEvidence` of a dataset."""
    return ViewEvidence(
        view_position=str(ds.get("ViewPosition", "") or ""),
        code_meanings=tuple(
            str(item.get("CodeMeaning", "") or "")
            for item in ds.get("ViewCodeSequence", None) or []
        ),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        laterality=str(ds.get("ImageLaterality", "") or ""),
    )


def classify_view(ds: Dataset, *, exam_description: str = "") -> tuple[View, str]:
    """The view of a radiograph and the attribute that decided it.

    In order: (0018,5101) View Position (PA, AP -> frontal; LL, RL, LAT, LATERAL -> lateral;
    decubitus and oblique positions do not decide); the code meaning in (0054,0220) View Code
    Sequence; (0008,103E) Series Description; the exam description (the zip name's), only when
    it names a single kind of view ("XR-PORT-CHEST-1V" is frontal, "XR-CHEST-PA-LATERAL" is
    ambiguous); (0020,0062) Image Laterality L or R (weak evidence of a lateral). Else
    unknown. The second element reads e.g. ``"ViewPosition=PA"``.
    """
    return classify_evidence(view_evidence(ds), exam_description=exam_description)


def classify_evidence(ev: ViewEvidence, *, exam_description: str = "") -> tuple[View, str]:
    """:func:`classify_view` from the header values already read."""
    vp = ev.view_position.strip().upper()
    if vp in _FRONTAL_POSITIONS:
        return View.FRONTAL, f"ViewPosition={vp}"
    if vp in _LATERAL_POSITIONS:
        return View.LATERAL, f"ViewPosition={vp}"
    for code in ev.code_meanings:
        meaning = code.lower()
        if "lateral" in meaning and "decubitus" not in meaning:
            return View.LATERAL, f"ViewCodeSequence={meaning}"
        if "postero-anterior" in meaning or "antero-posterior" in meaning:
            return View.FRONTAL, f"ViewCodeSequence={meaning}"
    series = ev.series_description.strip()
    view = _view_from_text(series)
    if view is not None:
        return view, f"SeriesDescription={series}"
    view = _view_from_text(exam_description)
    if view is not None:
        return view, f"exam description={exam_description}"
    lat = ev.laterality.strip().upper()
    if lat in ("L", "R"):
        return View.LATERAL, f"ImageLaterality={lat} (weak)"
    return View.UNKNOWN, "no view attribute" + (f" (ViewPosition={vp})" if vp else "")


def _header_view(inst: Instance, exam_description: str) -> tuple[View, str]:
    """:func:`classify_view` from the indexed header, before the member is read."""
    ev = ViewEvidence(
        view_position=inst.view_position,
        series_description=inst.series_description,
        laterality=inst.laterality,
    )
    return classify_evidence(ev, exam_description=exam_description)


# --------------------------------------------------------------------------- decoding

_transfer_syntax = dicom.transfer_syntax
_fix_bits = dicom.fix_bits


def number_of_frames(ds: Dataset) -> int:
    """(0028,0008) Number of Frames; 1 when absent, empty or not a positive number."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def decode_frame(ds: Dataset, *, frame: int = 0) -> dicom.Decoded:
    """:func:`decode`, with the name of the decoder that produced the values."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        ts = _transfer_syntax(ds)
        raise DecodeError(f"PALETTE COLOR pixels are not a radiograph ({_uid_label(ts)})")
    return dicom.decode(ds, frame=frame)


def decode(ds: Dataset, *, frame: int = 0) -> np.ndarray:
    """The stored values of frame ``frame`` (0-based, below (0028,0008) Number of Frames):
    (rows, columns), or (rows, columns, 3) for colour, as an integer numpy array (signed when
    (0028,0103) Pixel Representation is 1, only the (0028,0101) Bits Stored bits kept).

    The decoder per (0002,0010) Transfer Syntax UID is the one :data:`hiroml.dicom.SYNTAXES`
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


# --------------------------------------------------------------------------- intensities


def apply_modality(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values, as a new float32 array.

    The (0028,3000) Modality LUT Sequence when present (through pydicom's
    ``apply_modality_lut``), else (0028,1053) Rescale Slope and (0028,1052) Rescale
    Intercept (identity when absent), computed in float32 in place.
    """
    if ds.get("ModalityLUTSequence"):
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
    seq = ds.get("VOILUTSequence", None)
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
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, count = _window_value(ds, "WindowCenter", index)
        width, _ = _window_value(ds, "WindowWidth", index)
        func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
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
    if arr.ndim != 2 or arr.dtype.kind not in "iu" or "PixelPaddingValue" not in ds:
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
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE"):
        return np.subtract(np.float32(1.0), arr, dtype=np.float32), True
    return arr, False


# --------------------------------------------------------------------------- geometry


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
        value = ds.get(keyword, None)
        try:
            if value is not None and len(value) == 2 and min(float(v) for v in value) > 0:
                return float(value[0]), float(value[1])
        except (TypeError, ValueError):
            continue
    return None


# --------------------------------------------------------------------------- instance / exam


def _where(inst: Instance) -> str:
    return f"{inst.rel_zip}: member {inst.member}"


def _intensities(
    arr: np.ndarray, ds: Dataset, cfg: CxrConfig, padding: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """Stored values -> [0, 1] float32 by the configured normalisation, with its description.
    Percentile and min-max normalisation are invariant under a positive rescale, so they run
    on the integer stored values (exact histogram percentiles) when that is all the modality
    transform is. Pixels in the ``padding`` mask take no part in any statistic."""
    lo, hi = float(cfg.percentiles[0]), float(cfg.percentiles[1])
    slope, intercept = dicom.rescale(ds)
    has_lut = bool(ds.get("ModalityLUTSequence"))
    if cfg.normalization == "voi":
        if not has_lut and slope > 0:  # fold the rescale into the window: one pass
            out, desc = apply_voi(
                arr,
                ds,
                index=cfg.voi_index,
                fallback_percentiles=(lo, hi),
                rescale=(slope, intercept),
                padding=padding,
            )
        else:
            mod = apply_modality(arr, ds)
            out, desc = apply_voi(
                mod, ds, index=cfg.voi_index, fallback_percentiles=(lo, hi), padding=padding
            )
        if has_lut:
            return out, "modality_lut+" + desc
        if (slope, intercept) != (1.0, 0.0):
            return out, f"rescale(m={slope:g},b={intercept:g})+" + desc
        return out, desc
    if has_lut:
        src, prefix = np.asarray(_pydicom_modality_lut(arr, ds)), "modality_lut+"
    elif slope > 0:
        src, prefix = arr, ""  # invariant: work on the stored integers
    else:
        src, prefix = apply_modality(arr, ds), f"rescale(m={slope:g},b={intercept:g})+"
    if cfg.normalization == "percentile":
        out = normalize_percentile(src, lo=lo, hi=hi, padding=padding)
        return out, f"{prefix}percentile({lo:g},{hi:g})"
    return normalize_minmax(src, padding=padding), f"{prefix}minmax"


def _padding_note(mask: np.ndarray, ds: Dataset) -> str:
    """The provenance of the padding: which attributes, how many pixels."""
    value = ds.get("PixelPaddingValue", "")
    limit = ds.get("PixelPaddingRangeLimit", None)
    attrs = f"PixelPaddingValue={value}" + ("" if limit is None else f",RangeLimit={limit}")
    n = int(np.count_nonzero(mask))
    return f"{attrs}: {n} px ({100.0 * n / mask.size:.1f}%) left out of the statistics, set to 0"


def read_image(data: bytes, inst: Instance) -> Dataset:
    """A member's bytes as a dataset with (0028,0010) Rows and (0028,0011) Columns; raises
    :class:`BadInputError` naming the zip and member for an unreadable DICOM."""
    ds = dicom.parse(data, label=_where(inst)).dataset
    if "Rows" not in ds or "Columns" not in ds:
        raise BadInputError(f"{_where(inst)}: not a readable DICOM image (no Rows/Columns)")
    return ds


def convert_instance(
    data: bytes, inst: Instance, *, exam_description: str, cfg: CxrConfig, frame: int = 0
) -> CxrImage:
    """One DICOM instance (the member's bytes) -> a normalised, resized :class:`CxrImage`
    of its frame ``frame`` (0-based; :func:`convert_frames` converts them all).

    Steps: parse, :func:`classify_view`, :func:`decode`, :func:`to_grayscale`,
    :func:`padding_mask`, the configured intensity normalisation (``cfg.normalization``:
    ``voi`` = :func:`apply_modality` then :func:`apply_voi`; ``percentile``; ``minmax``) over
    the unpadded pixels, :func:`invert_if_monochrome1`, padded pixels set to 0 (the output's
    background), :func:`resize` and :func:`to_storage`. Raises :class:`DecodeError` (or
    :class:`BadInputError` for an unreadable DICOM) naming the zip, member and transfer syntax.
    """
    ds = read_image(data, inst)
    return _convert_frame(ds, inst, exam_description=exam_description, cfg=cfg, frame=frame)


def convert_frames(
    data: bytes, inst: Instance, *, exam_description: str, cfg: CxrConfig
) -> tuple[list[CxrImage], list[Problem]]:
    """Every frame of an instance ((0028,0008) Number of Frames, 1 when absent) as a
    :class:`CxrImage`; a frame that cannot be decoded is an ``error`` problem naming the
    frame, and the other frames go on. Raises :class:`BadInputError` for an unreadable DICOM."""
    ds = read_image(data, inst)
    n = number_of_frames(ds)
    images: list[CxrImage] = []
    problems: list[Problem] = []
    for k in range(n):
        try:
            images.append(
                _convert_frame(ds, inst, exam_description=exam_description, cfg=cfg, frame=k)
            )
        except DecodeError as e:
            if n == 1:
                raise
            reason = f"frame {k + 1} of {n} dropped: {e}"
            logger.warning("%s", reason)
            problems.append(_problem(inst, reason, Action.ERROR))
    return images, problems


def _convert_frame(
    ds: Dataset, inst: Instance, *, exam_description: str, cfg: CxrConfig, frame: int
) -> CxrImage:
    ts = _transfer_syntax(ds)
    view, view_source = classify_view(ds, exam_description=exam_description)
    try:
        reduced = _reduced(ds, frame, cfg)
        decoded = reduced.decoded if reduced else decode_frame(ds, frame=frame)
        padding = padding_mask(decoded.array, ds)
        arr = to_grayscale(decoded.array, ds)
    except DecodeError as e:
        msg = str(e)
        if ts not in msg:
            msg += f" ({_uid_label(ts)})"
        n = number_of_frames(ds)
        of = f" frame {frame + 1} of {n}:" if n > 1 else ""
        raise DecodeError(f"{_where(inst)}:{of} {msg}") from e
    original_shape = (int(arr.shape[0]), int(arr.shape[1]))
    if reduced:  # the full image's shape; a reduced pixel is k full pixels (row, column)
        original_shape = (int(ds.Rows), int(ds.Columns))
    k = (original_shape[0] / arr.shape[0], original_shape[1] / arr.shape[1])
    arr01, lut = _intensities(arr, ds, cfg, padding)
    arr01, inverted = invert_if_monochrome1(arr01, ds)
    padding_note = ""
    if padding is not None:
        if not arr01.flags.writeable:
            arr01 = arr01.copy()
        arr01[padding] = 0.0
        padding_note = _padding_note(padding, ds)
    small, scale = resize(arr01, (int(cfg.size[0]), int(cfg.size[1])), keep_aspect=cfg.keep_aspect)
    stored, storage_scale = to_storage(small, cfg.dtype)
    spacing = _spacing(ds)
    after = None
    if spacing is not None:
        after = (k[0] * spacing[0] / scale[0], k[1] * spacing[1] / scale[1])
    sop_class = str(ds.get("SOPClassUID", "") or inst.sop_class_uid)
    intent = str(ds.get("PresentationIntentType", "") or inst.presentation_intent)
    return CxrImage(
        sop_uid=inst.sop_uid or str(ds.get("SOPInstanceUID", "")),
        series_uid=inst.series_uid or str(ds.get("SeriesInstanceUID", "")),
        rel_zip=inst.rel_zip,
        member=inst.member,
        array=stored,
        view=view,
        view_source=view_source,
        original_shape=original_shape,
        pixel_spacing=spacing,
        spacing_after=after,
        photometric=str(ds.get("PhotometricInterpretation", "")).strip(),
        bits_stored=int(ds.get("BitsStored", 0) or 0),
        transfer_syntax=ts,
        lut=lut,
        inverted=inverted,
        scale=storage_scale,
        decoder=decoded.decoder,
        frame=frame,
        n_frames=number_of_frames(ds),
        for_processing=is_for_processing(sop_class, intent),
        padding=padding_note,
        decode_reduction=reduced.factor if reduced else 1,
    )


def _reduced(ds: Dataset, frame: int, cfg: CxrConfig) -> fastdecode.Reduced | None:
    """JPEG 2000 / JPEG decoded at the output's resolution (``cxr.fast_jpeg2000``,
    ``cxr.fast_jpeg``), else None."""
    size = (int(cfg.size[0]), int(cfg.size[1]))
    return fastdecode.decode_reduced(
        ds, frame=frame, size=size, keep_aspect=cfg.keep_aspect,
        jpeg2000=cfg.fast_jpeg2000, jpeg=cfg.fast_jpeg, normalization=cfg.normalization,
    )  # fmt: skip


def _problem(inst: Instance, reason: str, action: Action) -> Problem:
    return dicom.member_problem(inst, STAGE, reason, action)


def _not_selected(view: View, source: str, cfg: CxrConfig) -> str:
    return f"view {view} not selected (cxr.views=[{','.join(cfg.views)}]): {source}"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A member converted ahead of the conversion stage, in the same read as its indexing
    (issue 14, :mod:`hiroml.build.scratch`): its frames, converted without the exam's
    description, and the :class:`ViewEvidence` of its full header, to decide the view once the
    exam is known."""

    frames: tuple[CxrImage, ...]
    evidence: ViewEvidence


def prepare_instance(
    data: bytes,
    inst: Instance,
    cfg: CxrConfig,
    *,
    header: Dataset | None = None,
    pixels: memoryview | None = None,
) -> Prepared | None:
    """:func:`convert_frames` of a member before its exam is known, or None when it is not
    worth it or not possible now: a view outside ``cfg.views`` that the header decides whatever
    the exam description, or a frame that fails (the conversion stage then reads the member
    again and reports the failure as it always does). Raises what :func:`read_image` raises.

    ``header`` and ``pixels``: the index's parse of ``data`` (a little-endian, non-deflated
    file) without its Pixel Data, and the Pixel Data value sliced from ``data``; given, the
    member is not parsed again."""
    head = _with_pixels(header, pixels, inst) if header is not None else read_image(data, inst)
    evidence = view_evidence(head)
    view, source = classify_evidence(evidence)
    decided = view != View.UNKNOWN and not source.startswith("ImageLaterality")
    if decided and view not in set(cfg.views):
        return None
    images: list[CxrImage] = []
    for k in range(number_of_frames(head)):
        try:
            images.append(_convert_frame(head, inst, exam_description="", cfg=cfg, frame=k))
        except DecodeError:
            return None
    return Prepared(tuple(images), evidence)


def _with_pixels(header: Dataset, pixels: memoryview | None, inst: Instance) -> Dataset:
    """The index's header with its (7FE0,0010) Pixel Data value put back: what
    :func:`read_image` gives for a little-endian file (encapsulated: OB; native: OW above 8
    bits allocated, else OB, as such files are written)."""
    if pixels is None or "Rows" not in header or "Columns" not in header:
        raise BadInputError(f"{_where(inst)}: not a readable DICOM image (no Rows/Columns)")
    encapsulated = UID(dicom.transfer_syntax(header)).is_encapsulated
    alloc = int(header.get("BitsAllocated", 16))
    vr = "OB" if encapsulated or alloc <= 8 else "OW"
    # Native 8/16/32-bit pixels are read by hiroml.dicom straight from the view (no copy of
    # megabytes); anything that may reach another decoder gets bytes, as a parse gives.
    value = pixels if not encapsulated and alloc in (8, 16, 32) else pixels.tobytes()
    header[0x7FE00010] = DataElement(0x7FE00010, vr, value, validation_mode=pydicom_config.IGNORE)
    return header


def convert_exam(
    exam: Exam,
    read: Callable[[Instance], bytes],
    cfg: CxrConfig,
    *,
    prepared: Callable[[Instance], Prepared | None] | None = None,
) -> tuple[list[CxrImage], list[Problem]]:
    """Convert every radiograph of an exam; the rest become problems, never exceptions.

    Per instance, in (0008,0018) SOP Instance UID order: :func:`keep_reason` on the indexed
    header (a dropped object is never read); the view from the indexed header when it decides,
    else from the full header, and views outside ``cfg.views`` dropped before decoding;
    then :func:`convert_frames`: every frame of a multi-frame radiograph is an image. Errors
    (unreadable member, undecodable pixels) become ``error`` problems naming the member (and
    the frame) and transfer syntax, and the other images go on. ``prepared`` gives the
    instances converted ahead (:func:`prepare_instance`), which are not read again.
    """
    images: list[CxrImage] = []
    problems: list[Problem] = []
    selected = set(cfg.views)
    for inst in sorted(exam.instances, key=lambda i: (i.sop_uid, i.member)):
        reason = keep_reason(
            inst, drop_derived=cfg.drop_derived, keep_for_processing=cfg.keep_for_processing
        )
        if reason is not None:
            problems.append(_problem(inst, reason, Action.DROPPED))
            continue
        view, source = _header_view(inst, exam.description)
        if view != View.UNKNOWN and view not in selected:
            problems.append(_problem(inst, _not_selected(view, source, cfg), Action.DROPPED))
            continue
        ready = prepared(inst) if prepared is not None else None
        frames: list[CxrImage]
        bad: list[Problem] = []
        if ready is not None:
            frames = _with_view(ready, exam.description)
        else:
            try:
                frames, bad = _read_frames(inst, view, read, exam.description, cfg)
            except BadInputError as e:
                logger.warning("%s", e)
                frames, bad = [], [_problem(inst, str(e), Action.ERROR)]
            except Exception as e:  # bad input must never stop the exam
                frames, bad = [], [_unexpected(inst, e)]
        problems.extend(bad)
        if frames and frames[0].view not in selected:  # the full header overruled the index
            reason = _not_selected(frames[0].view, frames[0].view_source, cfg)
            problems.append(_problem(inst, reason, Action.DROPPED))
            continue
        images.extend(frames)
    return images, problems


def _with_view(ready: Prepared, exam_description: str) -> list[CxrImage]:
    """The prepared frames with the view their full header and the exam description give."""
    view, source = classify_evidence(ready.evidence, exam_description=exam_description)
    return [dataclasses.replace(f, view=view, view_source=source) for f in ready.frames]


def _read_frames(
    inst: Instance,
    view: View,
    read: Callable[[Instance], bytes],
    exam_description: str,
    cfg: CxrConfig,
) -> tuple[list[CxrImage], list[Problem]]:
    """Read and convert one member (:func:`convert_frames`), or no frame and the problem of
    a view outside ``cfg.views`` that only the full header tells."""
    data = read(inst)
    if view == View.UNKNOWN and View.UNKNOWN not in set(cfg.views):
        # The indexed header did not tell: look at the full header before decoding.
        head = dicom.parse(data, label=_where(inst), stop_before_pixels=True).dataset
        view, source = classify_view(head, exam_description=exam_description)
        if view not in set(cfg.views):
            return [], [_problem(inst, _not_selected(view, source, cfg), Action.DROPPED)]
    return convert_frames(data, inst, exam_description=exam_description, cfg=cfg)


def _unexpected(inst: Instance, e: Exception) -> Problem:
    """The ``error`` problem of an unforeseen failure on one member, logged."""
    ts = _uid_label(inst.transfer_syntax)
    reason = f"{_where(inst)}: {type(e).__name__}: {e} (transfer syntax {ts})"
    logger.warning("%s", reason)
    logger.info("%s: traceback of the error above", _where(inst), exc_info=True)
    return _problem(inst, reason, Action.ERROR)


__all__ = [
    "Prepared",
    "ViewEvidence",
    "apply_modality",
    "apply_voi",
    "apply_window",
    "classify_evidence",
    "classify_view",
    "convert_exam",
    "convert_frames",
    "convert_instance",
    "decode",
    "invert_if_monochrome1",
    "is_for_processing",
    "keep_reason",
    "normalize_minmax",
    "normalize_percentile",
    "number_of_frames",
    "padding_mask",
    "percentiles",
    "prepare_instance",
    "read_image",
    "resize",
    "to_grayscale",
    "to_storage",
    "view_evidence",
]
