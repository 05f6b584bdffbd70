"""CT series selection and volume building with true geometry (pure; no zip access).

Conventions (DICOM patient coordinates, LPS, mm):

* (0020,0037) Image Orientation (Patient) gives the row direction ``r`` (first three values:
  the direction in which the column index grows) and the column direction ``c``; the slice
  normal is ``n = r x c``.
* (0028,0030) Pixel Spacing is ``[dy, dx]`` = [row spacing, column spacing]: pixel (row j,
  column i) of a slice lies at ``IPP + i * dx * r + j * dy * c`` with (0020,0032) Image
  Position (Patient) as IPP.
* numpy volumes are (z, y, x) = (slice, row, column); SimpleITK geometry is (x, y, z):
  ``spacing_xyz = (dx, dy, slice step)``, ``origin_xyz`` = IPP of the first slice along ``n``,
  ``direction`` = the 3x3 matrix whose columns are ``r, c, n``, flattened row-major (SimpleITK's
  ``GetDirection`` order).

Slices are ordered by their position projected on ``n``, never by (0020,0013) Instance Number
or file name. Duplicates, gaps, uneven spacing and gantry tilt are detected against explicit
tolerances and either rejected (:class:`~hiroml.errors.GeometryError`) or resampled onto an
orthogonal, evenly spaced grid that covers every original pixel, as configured in
:class:`~hiroml.config.CtConfig`. Every decision is written to ``CtVolume.decisions``.

Before a series is chosen, the parts of one scan that resumed under a new (0020,000E) Series
Instance UID are stitched (:mod:`hiroml.stitch`, ``ct.stitch``), so ``ct.series=best``
chooses among whole scans.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from hiroml import dicom, enhanced
from hiroml.config import CtConfig
from hiroml.errors import BadInputError, DecodeError, GeometryError, HiromlError
from hiroml.records import Action, CtVolume, Exam, Instance, Problem
from hiroml.stitch import Scan, StitchPlan, pixels_differ, plan_scans

log = logging.getLogger(__name__)

__all__ = [
    "array_to_sitk",
    "build_volume",
    "convert_exam",
    "convert_series",
    "decode_hu",
    "select_series",
    "to_sitk",
]

STAGE = "ct"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_ENHANCED_CT = enhanced.ENHANCED_CT  # their frames are slices: see hiroml.enhanced
_ORIENTATION_ATOL = 1e-3  # direction cosines: same orientation / orthonormality
_INT16 = np.iinfo(np.int16)


# =========================================================================== selection


def _image_type(inst: Instance) -> tuple[str, ...]:
    return tuple(v.strip().upper() for v in inst.image_type)


def _instance_drop_reason(inst: Instance, cfg: CtConfig) -> str | None:
    """Why one instance cannot be a slice of a CT volume, from its header alone; None if it
    can. Checked in order: non-image objects, secondary captures, SOP class, modality,
    localizers, derived images, pixel layout, geometry attributes."""
    itype = _image_type(inst)
    it_text = "\\".join(itype) or "(absent)"
    sop_class = inst.sop_class_uid
    if sop_class.startswith(dicom.SR_PREFIX) or inst.modality in ("SR", "KO", "PR"):
        return (
            f"structured report / dose report / non-image object "
            f"((0008,0016) SOP Class UID {sop_class or '?'}, (0008,0060) Modality {inst.modality})"
        )
    if not inst.has_pixels:
        return "no (7FE0,0010) Pixel Data: dose report, structured report or other non-image object"
    if (
        dicom.is_secondary_capture(sop_class)
        or inst.modality in ("SC", "OT")
        or any("SCREEN" in v for v in itype)
    ):
        return (
            f"secondary capture / screen save ((0008,0016) SOP Class UID {sop_class or '?'}, "
            f"(0008,0060) Modality {inst.modality or '?'}, (0008,0008) Image Type {it_text})"
        )
    if enhanced.is_enhanced_ct(inst):
        return (
            f"{_ENHANCED_CT[sop_class]} (multi-frame) not expanded into its frames "
            "(hiroml.enhanced.expand)"
        )
    if sop_class and sop_class != CT_IMAGE_STORAGE and sop_class not in _ENHANCED_CT:
        return f"(0008,0016) SOP Class UID {sop_class} is not CT Image Storage"
    if inst.modality and inst.modality != "CT":
        return f"(0008,0060) Modality {inst.modality} is not CT"
    if "LOCALIZER" in itype or "SCOUT" in itype:
        return f"localizer / scout ((0008,0008) Image Type {it_text})"
    if cfg.drop_derived and (
        (len(itype) > 0 and itype[0] == "DERIVED") or (len(itype) > 1 and itype[1] == "SECONDARY")
    ):
        return f"derived / secondary image ((0008,0008) Image Type {it_text}; ct.drop_derived)"
    if inst.number_of_frames > 1 and inst.frame is None:
        return f"multi-frame image ((0028,0008) Number of Frames {inst.number_of_frames})"
    if inst.samples_per_pixel != 1 or (
        inst.photometric and not inst.photometric.startswith("MONOCHROME")
    ):
        return (
            f"not a grayscale image ((0028,0002) Samples per Pixel {inst.samples_per_pixel}, "
            f"(0028,0004) Photometric Interpretation {inst.photometric})"
        )
    missing = [
        name
        for name, val in (
            ("(0020,0032) Image Position (Patient)", inst.position),
            ("(0020,0037) Image Orientation (Patient)", inst.orientation),
            ("(0028,0030) Pixel Spacing", inst.pixel_spacing),
        )
        if val is None
    ]
    if inst.rows <= 0 or inst.columns <= 0:
        missing.append("(0028,0010) Rows / (0028,0011) Columns")
    if missing:
        return "missing " + ", ".join(missing)
    return None


def _fmt(v: Sequence[float] | None, nd: int = 4) -> str:
    return "None" if v is None else "[" + ", ".join(f"{x:.{nd}g}" for x in v) + "]"


def _max_diff(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    if a is None or b is None:
        return math.inf
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def _frame_key_close(a: Instance, b: Instance) -> bool:
    """Same orientation (within 1e-3), pixel grid size and pixel spacing (within 1e-3 mm)."""
    return (
        a.rows == b.rows
        and a.columns == b.columns
        and _max_diff(a.orientation, b.orientation) <= _ORIENTATION_ATOL
        and _max_diff(a.pixel_spacing, b.pixel_spacing) <= 1e-3
    )


def _majority_frame(
    insts: Sequence[Instance],
) -> tuple[list[Instance], list[tuple[Instance, str]]]:
    """Keep the instances that share the majority's orientation, size and pixel spacing (a
    localizer or a reformat slice stored inside an axial series is dropped)."""
    clusters: list[list[Instance]] = []
    for inst in insts:
        for cl in clusters:
            if _frame_key_close(cl[0], inst):
                cl.append(inst)
                break
        else:
            clusters.append([inst])
    if len(clusters) <= 1:
        return list(insts), []
    clusters.sort(key=len, reverse=True)
    major = clusters[0]
    ref = major[0]
    share = f"({len(major)} of {len(insts)} slices)"
    dropped: list[tuple[Instance, str]] = []
    for cl in clusters[1:]:
        other = cl[0]
        if _max_diff(other.orientation, ref.orientation) > _ORIENTATION_ATOL:
            why = (
                f"(0020,0037) Image Orientation (Patient) {_fmt(other.orientation)} differs from "
                f"the series majority {_fmt(ref.orientation)} {share}: localizer or reformat "
                "inside the series"
            )
        elif other.rows != ref.rows or other.columns != ref.columns:
            why = (
                f"image size {other.rows}x{other.columns} differs from the series majority "
                f"{ref.rows}x{ref.columns} {share}"
            )
        else:
            why = (
                f"(0028,0030) Pixel Spacing {_fmt(other.pixel_spacing)} differs from the series "
                f"majority {_fmt(ref.pixel_spacing)} {share}"
            )
        dropped.extend((inst, why) for inst in cl)
    return major, dropped


def _problems_for(
    series_uid: str, items: Sequence[tuple[Instance, str]], n_in_series: int
) -> list[Problem]:
    """One DROPPED problem per (zip, reason); a group of several instances names the first
    member and the count."""
    groups: dict[tuple[str, str, str], list[Instance]] = defaultdict(list)
    for inst, why in items:
        groups[(inst.zip, inst.batch, why)].append(inst)
    out = []
    for (zip_name, batch, why), insts in groups.items():
        insts = sorted(insts, key=lambda i: i.member)
        if len(insts) == 1:
            reason = f"series {series_uid}: instance {insts[0].sop_uid}: {why}"
        else:
            folder = insts[0].folder or "."
            reason = (
                f"series {series_uid}: {len(insts)} of {n_in_series} instances "
                f"(folder {folder}/): {why}"
            )
        out.append(
            Problem(
                zip=zip_name,
                batch=batch,
                member=insts[0].member,
                stage=STAGE,
                reason=reason,
                action=Action.DROPPED,
            )
        )
    return out


def _normal_of(orientation: Sequence[float]) -> np.ndarray:
    r = np.asarray(orientation[:3], float)
    c = np.asarray(orientation[3:6], float)
    n = np.cross(r, c)
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 0 else n


def _thickness(insts: Sequence[Instance]) -> float:
    """Median (0018,0050) Slice Thickness; else the median step between positions along the
    normal; ``inf`` when neither is known (mm)."""
    th = [
        i.slice_thickness for i in insts if i.slice_thickness is not None and i.slice_thickness > 0
    ]
    if th:
        return float(np.median(th))
    if len(insts) > 1 and insts[0].orientation is not None:
        n = _normal_of(insts[0].orientation)
        d = np.sort([float(np.dot(n, i.position)) for i in insts if i.position is not None])
        steps = np.diff(d)
        steps = steps[steps > 0]
        if steps.size:
            return float(np.median(steps))
    return math.inf


def _kernel_rank(kernel: str, preferred: Sequence[str]) -> int:
    """Index of the first preferred kernel found (case-insensitive substring) in (0018,1210)
    Convolution Kernel; ``len(preferred)`` when none matches."""
    k = kernel.upper()
    for i, pref in enumerate(preferred):
        if pref and pref.upper() in k:
            return i
    return len(preferred)


def _describe(insts: Sequence[Instance]) -> str:
    first = insts[0]
    return (
        f"{first.series_description or '(no description)'}: {_thickness(insts):.3g} mm, "
        f"kernel {first.kernel or '(none)'}, {len(insts)} slices"
    )


def _series_score(s: Sequence[Instance], cfg: CtConfig) -> tuple[float, int, int, str]:
    """Order of preference: thinnest slices (0.01 mm), earliest preferred kernel, most
    slices, smallest Series Instance UID."""
    return (
        round(_thickness(s), 2),
        _kernel_rank(s[0].kernel, cfg.preferred_kernels),
        -len(s),
        s[0].series_uid,
    )


def _not_best_problems(best: Sequence[Instance], other: Sequence[Instance]) -> list[Problem]:
    why = (
        f"not the best series of the exam (ct.series=best): kept {best[0].series_uid} "
        f"({_describe(best)}); this one: {_describe(other)}"
    )
    return _problems_for(other[0].series_uid, [(i, why) for i in other], len(other))


def select_series(
    instances: Sequence[Instance], cfg: CtConfig
) -> tuple[list[tuple[Instance, ...]], list[Problem]]:
    """Choose the CT series of one exam worth a volume, from headers only (no pixels read).

    Instances are grouped by (0020,000E) Series Instance UID, so a series spread over several
    zips is joined. Dropped, each with a ``Problem(action=DROPPED)``: non-image objects and dose
    reports (no (7FE0,0010) Pixel Data, SR SOP classes), secondary captures and screen saves,
    SOP classes other than CT Image Storage, localizers and scouts ((0008,0008) Image Type
    LOCALIZER, or an orientation/size/spacing not shared by the majority of the series),
    DERIVED/SECONDARY images when ``cfg.drop_derived``, instances without geometry, and series
    with fewer than ``cfg.min_slices`` usable slices. With ``cfg.series == "best"`` one series
    remains: the thinnest slices (0.01 mm resolution), then the earliest match in
    ``cfg.preferred_kernels``, then the most slices, then the smallest Series Instance UID.

    Returns the selected series (each a tuple of its instances, in no particular order) and
    the problems.
    """
    by_series: dict[str, list[Instance]] = defaultdict(list)
    for inst in sorted(instances, key=lambda i: (i.series_uid, i.zip, i.member, i.sop_uid)):
        by_series[inst.series_uid].append(inst)

    problems: list[Problem] = []
    candidates: list[tuple[Instance, ...]] = []
    for uid, insts in by_series.items():
        label = uid or "(no Series Instance UID)"
        dropped: list[tuple[Instance, str]] = []
        usable: list[Instance] = []
        for inst in insts:
            why = _instance_drop_reason(inst, cfg)
            if why is None:
                usable.append(inst)
            else:
                dropped.append((inst, why))
        if usable:
            usable, off_frame = _majority_frame(usable)
            dropped.extend(off_frame)
        if usable and len(usable) < cfg.min_slices:
            why = f"only {len(usable)} usable slice(s), fewer than ct.min_slices={cfg.min_slices}"
            dropped.extend((inst, why) for inst in usable)
            usable = []
        problems.extend(_problems_for(label, dropped, len(insts)))
        if usable:
            candidates.append(tuple(usable))

    if cfg.series == "best" and len(candidates) > 1:
        candidates.sort(key=lambda s: _series_score(s, cfg))
        best = candidates[0]
        for other in candidates[1:]:
            problems.extend(_not_best_problems(best, other))
        candidates = [best]
    candidates.sort(key=lambda s: (s[0].series_number or 0, s[0].series_uid))
    for p in problems:
        log.debug("ct select: %s %s: %s", p.zip, p.member, p.reason)
    return candidates, problems


# =========================================================================== decoding


@dataclass(frozen=True, slots=True)
class _PixelDesc:
    """What decoding one slice needs from its header: (0028,0010) Rows, (0028,0011) Columns,
    (0028,0100) Bits Allocated, (0028,0101) Bits Stored, (0028,0103) Pixel Representation,
    (0028,0002) Samples per Pixel, (0002,0010) Transfer Syntax UID, (0028,1053) Rescale Slope,
    (0028,1052) Rescale Intercept (1 and 0 when absent), and whether a (0028,3000) Modality LUT
    Sequence replaces the rescale."""

    rows: int
    cols: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    samples: int
    transfer_syntax: str
    slope: float
    intercept: float
    lut_sequence: bool

    @classmethod
    def of_dataset(cls, ds: Dataset) -> _PixelDesc:
        slope, intercept = dicom.rescale(ds)
        return cls(
            rows=int(ds.get("Rows", 0) or 0),
            cols=int(ds.get("Columns", 0) or 0),
            bits_allocated=int(ds.get("BitsAllocated", 0) or 0),
            bits_stored=int(ds.get("BitsStored", 0) or 0),
            signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
            samples=int(ds.get("SamplesPerPixel", 1) or 1),
            transfer_syntax=str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "")),
            slope=slope,
            intercept=intercept,
            lut_sequence=ds.get("RescaleSlope") in (None, "") and "ModalityLUTSequence" in ds,
        )

    @classmethod
    def of_instance(cls, inst: Instance, ds: Dataset) -> _PixelDesc:
        """From the index record of the same member (already parsed: no pydicom attribute
        access per slice); falls back to ``ds`` where the record lacks the value."""
        if not inst.transfer_syntax or inst.bits_allocated <= 0:
            return cls.of_dataset(ds)
        return cls(
            rows=inst.rows,
            cols=inst.columns,
            bits_allocated=inst.bits_allocated,
            bits_stored=inst.bits_stored,
            signed=inst.pixel_representation == 1,
            samples=inst.samples_per_pixel,
            transfer_syntax=inst.transfer_syntax,
            slope=inst.rescale_slope if inst.rescale_slope is not None else 1.0,
            intercept=inst.rescale_intercept if inst.rescale_intercept is not None else 0.0,
            lut_sequence=inst.rescale_slope is None and "ModalityLUTSequence" in ds,
        )


def _stored_values(
    ds: Dataset, desc: _PixelDesc, *, rows: int, cols: int, label: str
) -> np.ndarray:
    """Stored values of one single-frame slice (see :func:`_decode_slice`)."""
    return _decode_slice(ds, desc, rows=rows, cols=cols, label=label).array


def _decode_slice(
    ds: Dataset, desc: _PixelDesc, *, rows: int, cols: int, label: str
) -> dicom.Decoded:
    """Stored values of one single-frame slice, (rows, cols) integers (no modality LUT), and
    the decoder that produced them.

    Uncompressed little-endian 16-bit data is read straight from the (7FE0,0010) Pixel Data
    bytes (:func:`hiroml.dicom.native_grey`: (0028,0101) Bits Stored masked or sign-extended as
    pydicom does), from the header values of the index record; anything else
    goes through :func:`hiroml.dicom.decode`, the decoder pinned per transfer syntax (JPEG,
    JPEG-LS, JPEG 2000, HTJ2K, JPEG XL, RLE, deflated frames, big endian, ...).
    """
    if "PixelData" not in ds:
        raise DecodeError(f"{label}: no (7FE0,0010) Pixel Data")
    if (desc.rows, desc.cols) != (rows, cols):
        raise DecodeError(f"{label}: {desc.rows}x{desc.cols} pixels, the series has {rows}x{cols}")
    native16 = desc.bits_allocated == 16 and desc.samples == 1
    if desc.transfer_syntax in dicom.UNCOMPRESSED_LE and native16:
        buf = ds.PixelData
        need = rows * cols * 2
        if len(buf) < need:
            raise DecodeError(
                f"{label}: {len(buf)} bytes of (7FE0,0010) Pixel Data, {rows}x{cols}x16 bit "
                f"needs {need}: truncated"
            )
        arr = dicom.native_grey(
            buf,
            rows=rows,
            cols=cols,
            bits_allocated=16,
            bits_stored=desc.bits_stored,
            signed=desc.signed,
        )
        return dicom.Decoded(arr, dicom.NUMPY)
    try:
        decoded = dicom.decode(ds)
    except Exception as e:  # DecodeError naming the syntax, or a header it cannot use
        raise DecodeError(
            f"{label}: cannot decode pixel data (transfer syntax "
            f"{desc.transfer_syntax or '?'}): {type(e).__name__}: {e}"
        ) from e
    if decoded.array.shape != (rows, cols):
        shape = decoded.array.shape
        raise DecodeError(f"{label}: decoded shape {shape}, expected ({rows}, {cols})")
    return decoded


def decode_hu(ds: Dataset, *, label: str = "") -> np.ndarray:
    """One slice in HU: stored values through the modality LUT, (0028,1053) Rescale Slope and
    (0028,1052) Rescale Intercept (or a (0028,3000) Modality LUT Sequence). float64 (y, x)."""
    desc = _PixelDesc.of_dataset(ds)
    raw = _stored_values(ds, desc, rows=desc.rows, cols=desc.cols, label=label or "slice")
    return _hu_float(raw, desc, ds)


def _hu_float(raw: np.ndarray, desc: _PixelDesc, ds: Dataset) -> np.ndarray:
    if desc.lut_sequence:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    return raw.astype(np.float64) * desc.slope + desc.intercept


class _HuVolume:
    """A preallocated (z, y, x) HU volume that starts as int16 and turns float32 the first
    time a slice is not representable exactly in int16 (non-integral or out of range)."""

    def __init__(self, n: int, rows: int, cols: int) -> None:
        self.array: np.ndarray = np.empty((n, rows, cols), dtype=np.int16)

    def _to_float(self, filled: int) -> None:
        if self.array.dtype == np.float32:
            return
        new = np.empty(self.array.shape, dtype=np.float32)
        new[:filled] = self.array[:filled]
        self.array = new

    def put(self, k: int, raw: np.ndarray, desc: _PixelDesc, ds: Dataset) -> None:
        """Store slice ``k`` (slices are filled in order 0, 1, ...) in HU."""
        slope, intercept = desc.slope, desc.intercept
        if (
            not desc.lut_sequence
            and self.array.dtype == np.int16
            and slope == 1.0
            # integer arithmetic only for a plausible intercept: a huge or non-finite one
            # (a damaged header) would overflow it; the float path copes
            and math.isfinite(intercept)
            and abs(intercept) < 2**31
            and intercept == int(intercept)
        ):
            icpt = int(intercept)
            if raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2:
                # HU = stored + intercept fits int16 when the stored range (from (0028,0101)
                # Bits Stored, else the slice's actual min/max) shifted by it does
                bits = desc.bits_stored
                if 0 < bits < 16:
                    signed = raw.dtype.kind == "i"
                    lo = -(1 << (bits - 1)) if signed else 0
                    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
                else:
                    lo, hi = int(raw.min()), int(raw.max())
                if lo + icpt >= _INT16.min and hi + icpt <= _INT16.max:
                    np.add(raw, np.int32(icpt), out=self.array[k], casting="unsafe")
                    return
            hu_i = raw.astype(np.int64) + icpt
            if hu_i.min() >= _INT16.min and hu_i.max() <= _INT16.max:
                self.array[k] = hu_i
                return
            self._put_float(k, hu_i.astype(np.float64))
            return
        self._put_float(k, _hu_float(raw, desc, ds))

    def _put_float(self, k: int, hu: np.ndarray) -> None:
        if (
            self.array.dtype == np.int16
            and np.all(hu == np.round(hu))
            and hu.min() >= _INT16.min
            and hu.max() <= _INT16.max
        ):
            self.array[k] = hu
            return
        self._to_float(k)
        self.array[k] = hu


def _as_int16_if_lossless(arr: np.ndarray) -> np.ndarray:
    """int16 when every value is integral and within int16 (lossless), else float32. Checked
    slice by slice, so the test costs no second volume."""
    if arr.dtype == np.int16:
        return arr
    arr = arr.astype(np.float32, copy=False)
    for plane in arr:
        if (
            not np.all(np.isfinite(plane))
            or plane.min() < _INT16.min
            or plane.max() > _INT16.max
            or not np.array_equal(plane, np.round(plane))
        ):
            return arr
    return arr.astype(np.int16)


# =========================================================================== geometry


@dataclass(frozen=True, slots=True)
class _Frame:
    """The in-plane frame shared by every slice of a series."""

    r: np.ndarray  # row direction (column index grows), unit
    c: np.ndarray  # column direction (row index grows), unit
    n: np.ndarray  # slice normal r x c
    dx: float  # column spacing, mm (PixelSpacing[1])
    dy: float  # row spacing, mm (PixelSpacing[0])
    rows: int
    cols: int


def _frame(insts: Sequence[Instance], series: str) -> _Frame:
    """Check that every slice shares orientation, grid and spacing; the orientation must be
    orthonormal within 1e-3."""
    first = insts[0]
    if first.orientation is None or first.pixel_spacing is None or first.position is None:
        raise GeometryError(
            f"series {series}: {first.member} lacks (0020,0032)/(0020,0037)/(0028,0030)"
        )
    for inst in insts:
        if inst.position is None or inst.orientation is None or inst.pixel_spacing is None:
            raise GeometryError(
                f"series {series}: {inst.zip}:{inst.member} lacks (0020,0032) Image Position, "
                "(0020,0037) Image Orientation or (0028,0030) Pixel Spacing"
            )
        if not _frame_key_close(first, inst):
            raise GeometryError(
                f"series {series}: {inst.zip}:{inst.member} has orientation "
                f"{_fmt(inst.orientation)}, size {inst.rows}x{inst.columns}, spacing "
                f"{_fmt(inst.pixel_spacing)}; {first.member} has {_fmt(first.orientation)}, "
                f"{first.rows}x{first.columns}, {_fmt(first.pixel_spacing)}"
            )
    r = np.asarray(first.orientation[:3], float)
    c = np.asarray(first.orientation[3:], float)
    if (
        abs(np.linalg.norm(r) - 1) > _ORIENTATION_ATOL
        or abs(np.linalg.norm(c) - 1) > _ORIENTATION_ATOL
        or abs(float(np.dot(r, c))) > _ORIENTATION_ATOL
    ):
        raise GeometryError(
            f"series {series}: (0020,0037) Image Orientation (Patient) "
            f"{_fmt(first.orientation)} is not two orthogonal unit vectors"
        )
    r, c = r / np.linalg.norm(r), c / np.linalg.norm(c)
    c = c - np.dot(c, r) * r  # remove the (tiny) non-orthogonality
    c = c / np.linalg.norm(c)
    dy, dx = (float(v) for v in first.pixel_spacing)
    if dx <= 0 or dy <= 0:
        raise GeometryError(
            f"series {series}: (0028,0030) Pixel Spacing {_fmt(first.pixel_spacing)} not positive"
        )
    return _Frame(r=r, c=c, n=np.cross(r, c), dx=dx, dy=dy, rows=first.rows, cols=first.columns)


def _acq_key(inst: Instance) -> tuple[str, int, str]:
    """Which of two slices at one position came first: (0008,0032) Acquisition Time, then
    (0020,0013) Instance Number (used only to break this tie), then SOP Instance UID."""
    return (
        inst.acquisition_time or "~",
        inst.instance_number if inst.instance_number is not None else 2**31,
        inst.sop_uid,
    )


def _duplicate_groups(d: np.ndarray, atol: float) -> list[list[int]]:
    """Runs of consecutive sorted positions closer than ``atol`` (mm), as index lists."""
    groups: list[list[int]] = []
    run = [0]
    for k in range(1, len(d)):
        if d[k] - d[run[0]] <= atol:
            run.append(k)
        else:
            if len(run) > 1:
                groups.append(run)
            run = [k]
    if len(run) > 1:
        groups.append(run)
    return groups


def _spacing_issues(s: np.ndarray, step: float, tol: float) -> list[str]:
    """Human-readable list of the steps that differ from ``step`` by more than ``tol``."""
    out = []
    for k, st in enumerate(np.diff(s)):
        if abs(st - step) <= tol:
            continue
        ratio = st / step
        if ratio > 1.5 and abs(ratio - round(ratio)) * step <= tol * round(ratio):
            what = f"gap: {round(ratio) - 1} missing slice(s)"
        else:
            what = "uneven step"
        out.append(f"{what} between {s[k]:.3f} and {s[k + 1]:.3f} mm (step {st:.3f} mm)")
    return out


def _sample_axis(a: np.ndarray, start: float, n_out: int, axis: int, fill: float) -> np.ndarray:
    """Linear samples of ``a`` along ``axis`` at continuous indices ``start + 0..n_out-1``.

    Within one pixel beyond the first/last sample the edge value is repeated (so a grid that
    straddles an original pixel still sees it); further out the value is ``fill``.
    """
    n = a.shape[axis]
    base = math.floor(start + 1e-9)
    frac = start - base
    if abs(frac) < 1e-6:
        frac = 0.0
    idx = base + np.arange(n_out)
    pos = idx + frac
    valid = (pos > -1.0) & (pos < n)
    i0 = np.clip(idx, 0, n - 1)
    out: np.ndarray
    if frac == 0.0:
        out = np.take(a, i0, axis=axis).astype(np.float32, copy=False)
    else:
        i1 = np.clip(idx + 1, 0, n - 1)
        out = np.take(a, i0, axis=axis) * np.float32(1 - frac) + np.take(
            a, i1, axis=axis
        ) * np.float32(frac)
    if not valid.all():
        sl: list[slice | np.ndarray] = [slice(None)] * a.ndim
        sl[axis] = ~valid
        out[tuple(sl)] = fill
    return out.astype(np.float32, copy=False)


def _resample_normal(
    vol: np.ndarray,
    s: np.ndarray,
    offsets: np.ndarray,
    fr: _Frame,
    step: float,
    fill: float,
) -> tuple[np.ndarray, float, float, float]:
    """Resample slices at positions ``s`` (mm along the normal, ascending, s[0] = 0) whose
    in-plane origins are shifted by ``offsets`` ((k, 2): mm along r and c, relative to the
    first slice) onto an orthogonal, evenly spaced grid covering every original pixel.

    Linear interpolation along the normal between the two neighbouring slices, each sampled
    bilinearly at the output pixel's in-plane position. Returns (volume float32 (z, y, x),
    x0, y0, step): the output origin is IPP0 + x0 * r + y0 * c.
    """
    span = float(s[-1])
    n_out = max(1, round(span / step) + 1) if span > 0 else 1
    step_out = span / (n_out - 1) if n_out > 1 else step
    ox, oy = offsets[:, 0], offsets[:, 1]
    x0, x1 = float(ox.min()), float(ox.max()) + (fr.cols - 1) * fr.dx
    y0, y1 = float(oy.min()), float(oy.max()) + (fr.rows - 1) * fr.dy
    nx = math.ceil((x1 - x0) / fr.dx - 1e-6) + 1
    ny = math.ceil((y1 - y0) / fr.dy - 1e-6) + 1
    out = np.empty((n_out, ny, nx), dtype=np.float32)
    cache: dict[int, np.ndarray] = {}

    def plane(k: int) -> np.ndarray:
        if k not in cache:
            if len(cache) > 2:
                cache.pop(min(cache))
            src = vol[k]
            a = _sample_axis(src, (y0 - oy[k]) / fr.dy, ny, 0, fill)
            cache[k] = _sample_axis(a, (x0 - ox[k]) / fr.dx, nx, 1, fill)
        return cache[k]

    for z in range(n_out):
        sz = min(z * step_out, span)
        k1 = int(np.searchsorted(s, sz, side="left"))
        if k1 < len(s) and abs(s[k1] - sz) <= 1e-6:
            out[z] = plane(k1)
            continue
        k0 = max(k1 - 1, 0)
        k1 = min(k1, len(s) - 1)
        w = float((sz - s[k0]) / (s[k1] - s[k0])) if s[k1] > s[k0] else 0.0
        out[z] = plane(k0) * np.float32(1 - w) + plane(k1) * np.float32(w)
    return out, x0, y0, step_out


@dataclass(frozen=True, slots=True)
class _Built:
    volume: CtVolume
    dropped: tuple[tuple[Instance, str], ...]  # slices left out, with the reason


def _build(
    insts: Sequence[Instance],
    raw_of: Callable[[int], tuple[np.ndarray, _PixelDesc, Dataset]],
    cfg: CtConfig,
    *,
    rtol: float,
    atol: float,
) -> _Built:
    """Sort along the normal, settle duplicates, check spacing and tilt on the headers (so a
    rejected series is never decoded), decode the kept slices in sorted order into one
    preallocated volume, compare left-out duplicates with their kept twin, resample if needed
    or configured. ``raw_of(i)`` gives instance i's stored values and dataset."""
    if not insts:
        raise GeometryError("empty series")
    series = insts[0].series_uid or "(no Series Instance UID)"
    fr = _frame(insts, series)
    pos = np.asarray([inst.position for inst in insts], dtype=np.float64)
    d_all = pos @ fr.n
    order = sorted(range(len(insts)), key=lambda i: (d_all[i], _acq_key(insts[i])))
    d_sorted = d_all[order]
    decisions: list[str] = []
    fill_hu = float(cfg.fill_hu)

    keep, dup_of = _duplicate_positions(insts, order, d_sorted, atol)
    slot = np.cumsum(keep) - 1  # sorted index -> slot in the volume
    kept_order = [i for i, kk in zip(order, keep, strict=True) if kk]
    kept = [insts[i] for i in kept_order]
    d_kept = d_sorted[keep]
    p0 = pos[kept_order[0]]
    s = d_kept - d_kept[0]
    thick = [i.slice_thickness for i in kept if i.slice_thickness]
    step, issues = _z_step(s, thick, cfg, series, rtol=rtol, atol=atol, decisions=decisions)
    rel = pos[kept_order] - p0
    offsets = np.stack([rel @ fr.r, rel @ fr.c], axis=1)
    tilt_deg, tilted = _tilt(s, offsets, fr, kept[0], cfg, series, rtol=rtol, atol=atol)
    if not tilted:
        offsets = np.zeros_like(offsets)
        decisions.extend(_orthogonal_tilt_note(kept[0], len(s)))

    # --- decode the kept slices, in sorted order, into one preallocated volume
    hv = _HuVolume(len(kept_order), fr.rows, fr.cols)
    for k, i in enumerate(kept_order):
        raw, desc, ds = raw_of(i)
        hv.put(k, raw, desc, ds)
    vol = hv.array
    del hv  # the volume is now referenced by ``vol`` only (freed when resampled)
    dropped = _settle_duplicates(
        insts, order, dup_of, d_sorted, lambda k: vol[slot[k]], raw_of, fr, cfg, decisions, series
    )

    resampled = bool(issues or tilted)
    origin = p0
    if resampled:
        vol, origin, step = _onto_even_grid(vol, s, offsets, fr, p0, step, fill_hu)
        decisions.extend(_even_grid_notes(vol, step, issues, tilted, tilt_deg, offsets, fill_hu))

    direction = np.stack([fr.r, fr.c, fr.n], axis=1)  # columns r, c, n
    vol_out, spacing, respaced = _respace_and_clip(
        _as_int16_if_lossless(vol), (fr.dx, fr.dy, step), origin, direction, cfg, decisions
    )
    zips = list(dict.fromkeys(inst.zip for inst in kept))  # first-seen order
    if len(zips) > 1:
        decisions.append(f"series joined from {len(zips)} zips: {', '.join(zips)}")
    volume = CtVolume(
        series_uid=insts[0].series_uid,
        series_description=kept[0].series_description,
        kernel=kept[0].kernel,
        sop_uids=tuple(i.sop_uid for i in kept),
        zips=tuple(zips),
        array=vol_out,
        spacing_xyz=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin_xyz=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=tuple(float(v) for v in direction.ravel()),
        slice_thickness=float(np.median(thick)) if thick else None,
        resampled=resampled or respaced,
        decisions=tuple(decisions),
        tilt_deg=round(tilt_deg, 4),
    )
    return _Built(volume=volume, dropped=tuple(dropped))


def _onto_even_grid(
    vol: np.ndarray,
    s: np.ndarray,
    offsets: np.ndarray,
    fr: _Frame,
    p0: np.ndarray,
    step: float,
    fill_hu: float,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Uneven or tilted slices resampled onto an even, orthogonal grid
    (:func:`_resample_normal`): the volume, its origin (mm, patient x, y, z) and z step."""
    out, x0, y0, step_out = _resample_normal(vol, s, offsets, fr, step, fill_hu)
    return out, p0 + x0 * fr.r + y0 * fr.c, step_out


def _even_grid_notes(
    vol: np.ndarray,
    step: float,
    issues: Sequence[str],
    tilted: bool,
    tilt_deg: float,
    offsets: np.ndarray,
    fill_hu: float,
) -> list[str]:
    """The decisions of :func:`_onto_even_grid`: uneven positions, gantry tilt."""
    notes: list[str] = []
    if issues:
        notes.append(
            f"uneven slice positions resampled linearly onto {vol.shape[0]} slices every "
            f"{step:.4g} mm: " + "; ".join(issues[:4])
        )
    if tilted:
        notes.append(
            f"gantry tilt {tilt_deg:.2f} deg (in-plane shift up to "
            f"{float(np.abs(offsets).max()):.2f} mm) resampled onto an orthogonal grid "
            f"(fill {fill_hu:g} HU outside the scanned field)"
        )
    return notes


def _duplicate_positions(
    insts: Sequence[Instance], order: Sequence[int], d_sorted: np.ndarray, atol: float
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Duplicate positions along the normal (headers, within ``ct.spacing_atol``): the first
    acquisition of each position is kept. Returns the keep mask over the sorted slices and
    (sorted index of a left-out slice, sorted index of its kept twin) pairs."""
    keep = np.ones(len(order), dtype=bool)
    dup_of: list[tuple[int, int]] = []
    for grp in _duplicate_groups(d_sorted, atol):
        grp = sorted(grp, key=lambda k: _acq_key(insts[order[k]]))
        for k in grp[1:]:
            keep[k] = False
            dup_of.append((k, grp[0]))
    return keep, dup_of


def _z_step(
    s: np.ndarray,
    thick: Sequence[float],
    cfg: CtConfig,
    series: str,
    *,
    rtol: float,
    atol: float,
    decisions: list[str],
) -> tuple[float, list[str]]:
    """The slice step along the normal (mm) from the headers, and the spacing issues that
    call for resampling: the mean step when the positions ``s`` (mm from the first) are even,
    the median when not, (0018,0050) Slice Thickness for a single slice. Uneven positions
    raise :class:`GeometryError` with ``ct.spacing_policy=reject``."""
    if len(s) > 1:
        step_med = float(np.median(np.diff(s)))
        tol = atol + rtol * step_med
        issues = _spacing_issues(s, step_med, tol)
        step = float(s[-1] / (len(s) - 1)) if not issues else step_med
    else:
        step = float(np.median(thick)) if thick else 1.0
        issues = []
        decisions.append(f"single slice: z spacing {step:g} mm from (0018,0050) Slice Thickness")
    if issues and cfg.spacing_policy == "reject":
        raise GeometryError(
            f"series {series}: slice positions along the normal are not evenly spaced "
            f"(median step {step:.3f} mm, rtol={rtol:g}, atol={atol:g} mm): "
            + "; ".join(issues[:8])
            + (f"; ... {len(issues) - 8} more" if len(issues) > 8 else "")
            + "; ct.spacing_policy=reject"
        )
    return step, issues


def _tilt(
    s: np.ndarray,
    offsets: np.ndarray,
    fr: _Frame,
    first: Instance,
    cfg: CtConfig,
    series: str,
    *,
    rtol: float,
    atol: float,
) -> tuple[float, bool]:
    """Gantry tilt from the headers: the in-plane ``offsets`` (mm along the row and column
    directions) of each (0020,0032) Image Position (Patient) from the first, against the
    positions ``s`` along the normal. Returns (tilt in degrees, tilted); a tilt raises
    :class:`GeometryError` with ``ct.tilt_policy=reject``."""
    tol_inplane = atol + rtol * min(fr.dx, fr.dy)
    if len(s) <= 1 or not bool(np.abs(offsets).max() > tol_inplane):
        return 0.0, False
    ss = float(np.dot(s, s))
    shear = (offsets * s[:, None]).sum(axis=0) / ss if ss > 0 else np.zeros(2)
    tilt_deg = math.degrees(math.atan(float(np.linalg.norm(shear))))
    header_tilt = first.gantry_tilt
    if cfg.tilt_policy == "reject":
        raise GeometryError(
            f"series {series}: gantry tilt {tilt_deg:.2f} deg (the step between (0020,0032) "
            "Image Position (Patient) values is not parallel to the normal of (0020,0037) "
            f"Image Orientation (Patient); (0018,1120) Gantry/Detector Tilt "
            f"{header_tilt if header_tilt is not None else 'absent'}); ct.tilt_policy=reject"
        )
    return tilt_deg, True


def _orthogonal_tilt_note(first: Instance, n_slices: int) -> list[str]:
    """A decision when (0018,1120) Gantry/Detector Tilt is set but the positions step along
    the slice normal (the scanner already resampled)."""
    header_tilt = first.gantry_tilt
    if header_tilt and abs(header_tilt) > 0.01 and n_slices > 1:
        return [
            f"(0018,1120) Gantry/Detector Tilt {header_tilt:g} deg, but the positions step "
            "along the slice normal: geometry already orthogonal, no tilt correction"
        ]
    return []


def _settle_duplicates(
    insts: Sequence[Instance],
    order: Sequence[int],
    dup_of: Sequence[tuple[int, int]],
    d_sorted: np.ndarray,
    kept_plane: Callable[[int], np.ndarray],
    raw_of: Callable[[int], tuple[np.ndarray, _PixelDesc, Dataset]],
    fr: _Frame,
    cfg: CtConfig,
    decisions: list[str],
    series: str,
) -> list[tuple[Instance, str]]:
    """Left-out duplicates against their kept twin (``kept_plane(sorted index)``, HU):
    identical pixels, or a second acquisition (:class:`GeometryError` with
    ``ct.duplicate_policy=reject``). Returns the dropped slices with the reason."""
    dropped: list[tuple[Instance, str]] = []
    n_identical = 0
    for k, k_first in dup_of:
        a, b = insts[order[k_first]], insts[order[k]]
        raw, desc, ds = raw_of(order[k])
        one = _HuVolume(1, fr.rows, fr.cols)
        one.put(0, raw, desc, ds)
        if np.array_equal(one.array[0].astype(np.float64), kept_plane(k_first).astype(np.float64)):
            n_identical += 1
            dropped.append(
                (
                    b,
                    f"duplicate of {a.sop_uid} (same position {d_sorted[k]:.3f} mm along "
                    "the normal, identical pixels): kept one",
                )
            )
            continue
        if cfg.duplicate_policy == "reject":
            raise GeometryError(
                f"series {series}: {a.zip}:{a.member} and {b.zip}:{b.member} share the "
                f"position {d_sorted[k]:.3f} mm along the slice normal but their pixels "
                "differ (two acquisitions in one series?); ct.duplicate_policy=reject"
            )
        dropped.append(
            (
                b,
                f"same position {d_sorted[k]:.3f} mm along the normal as {a.sop_uid} with "
                "different pixels: kept the first acquisition ((0008,0032) Acquisition Time, "
                "then (0020,0013) Instance Number)",
            )
        )
    if dup_of:
        n_dup = len(dup_of)
        decisions.append(
            f"{n_dup} slice(s) at duplicate positions left out ({n_identical} with identical "
            f"pixels, {n_dup - n_identical} with different pixels: first acquisition kept)"
        )
    return dropped


def _respace_and_clip(
    vol_out: np.ndarray,
    spacing: tuple[float, float, float],
    origin: np.ndarray,
    direction: np.ndarray,
    cfg: CtConfig,
    decisions: list[str],
) -> tuple[np.ndarray, tuple[float, ...], bool]:
    """``ct.resample_spacing`` (linear, mm in x, y, z) and ``ct.clip_hu`` applied to the
    (z, y, x) HU volume. Returns the volume, its spacing and whether it was resampled."""
    resampled = False
    if cfg.resample_spacing is not None:
        img = array_to_sitk(
            vol_out,
            spacing_xyz=spacing,
            origin_xyz=tuple(float(v) for v in origin),
            direction=tuple(float(v) for v in direction.ravel()),
        )
        fill_hu = float(cfg.fill_hu)
        img = _resample_to_spacing(img, tuple(float(v) for v in cfg.resample_spacing), fill_hu)
        vol_out = _as_int16_if_lossless(sitk.GetArrayFromImage(img))
        spacing = tuple(float(v) for v in img.GetSpacing())  # type: ignore[assignment]
        resampled = True
        decisions.append(f"resampled (linear) to spacing {_fmt(spacing)} mm, size {img.GetSize()}")
    if cfg.clip_hu is not None:
        lo, hi = (float(v) for v in cfg.clip_hu)
        if vol_out.dtype == np.int16:
            ilo = max(math.ceil(lo), int(_INT16.min))
            ihi = min(math.floor(hi), int(_INT16.max))
            np.clip(vol_out, np.int16(ilo), np.int16(ihi), out=vol_out)
        else:
            np.clip(vol_out, np.float32(lo), np.float32(hi), out=vol_out)
        decisions.append(f"HU clipped to [{lo:g}, {hi:g}]")
    return vol_out, spacing, resampled


def _resample_to_spacing(
    img: sitk.Image, spacing_xyz: tuple[float, ...], fill: float
) -> sitk.Image:
    """Linear resampling onto ``spacing_xyz`` (mm), same origin and direction, with enough
    samples to cover the whole original extent (the source is padded by repeating its last
    voxels so the few samples just beyond the last original centre stay meaningful);
    float32 output."""
    if len(spacing_xyz) != 3 or min(spacing_xyz) <= 0:
        raise GeometryError(f"ct.resample_spacing={list(spacing_xyz)}: give 3 positive mm values")
    size = img.GetSize()
    sp = img.GetSpacing()
    new_size = [
        max(1, math.ceil((size[i] - 1) * sp[i] / spacing_xyz[i] - 1e-6) + 1) for i in range(3)
    ]
    pad = [math.ceil(spacing_xyz[i] / sp[i]) + 1 for i in range(3)]
    src = sitk.ZeroFluxNeumannPad(sitk.Cast(img, sitk.sitkFloat32), [0, 0, 0], pad)
    return sitk.Resample(
        src,
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        img.GetOrigin(),
        spacing_xyz,
        img.GetDirection(),
        fill,
        sitk.sitkFloat32,
    )


# =========================================================================== public API


def build_volume(
    slices: Sequence[tuple[Instance, Dataset]],
    cfg: CtConfig,
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> CtVolume:
    """One CT series as a volume in HU with true geometry.

    Geometry comes from the :class:`Instance` headers ((0020,0032), (0020,0037), (0028,0030)),
    pixels and the modality LUT ((0028,1052)/(0028,1053), per slice) from the datasets. Slices
    are sorted by position along the slice normal. ``rtol``/``atol`` (default
    ``cfg.spacing_rtol``/``cfg.spacing_atol``, mm) decide: duplicate positions (closer than
    ``atol``), irregular steps (``|step - median| > atol + rtol * median``) and tilt (an
    in-plane shift between slices larger than ``atol + rtol * min(dx, dy)``). Raises
    :class:`GeometryError` (or :class:`DecodeError`) naming the series and the reason.
    """
    insts = [inst for inst, _ in slices]

    def raw_of(i: int) -> tuple[np.ndarray, _PixelDesc, Dataset]:
        inst, ds = slices[i]
        label = f"{inst.zip}:{inst.member}"
        if inst.frame is not None:  # a frame of an enhanced instance: rescale from its record
            desc = _PixelDesc.of_instance(inst, ds)
            return _frame_raw(inst, inst.frame, ds, label), desc, ds
        desc = _PixelDesc.of_dataset(ds)
        return _stored_values(ds, desc, rows=inst.rows, cols=inst.columns, label=label), desc, ds

    return _build(
        insts,
        raw_of,
        cfg,
        rtol=cfg.spacing_rtol if rtol is None else rtol,
        atol=cfg.spacing_atol if atol is None else atol,
    ).volume


def _frame_raw(inst: Instance, frame: int, ds: Dataset, label: str) -> np.ndarray:
    return enhanced.frame_pixels(ds, frame, rows=inst.rows, cols=inst.columns, label=label)


def _read_dataset(data: bytes, label: str) -> Dataset:
    try:
        return dicom.parse(data, label=label).dataset
    except BadInputError as e:
        raise DecodeError(str(e)) from e


def _slice_name(inst: Instance) -> str:
    """The SOP Instance UID, and the frame (1-based) for a frame of a multi-frame instance."""
    return inst.sop_uid if inst.frame is None else f"{inst.sop_uid} frame {inst.frame + 1}"


def convert_series(
    series: Sequence[Instance], read: Callable[[Instance], bytes], cfg: CtConfig
) -> tuple[CtVolume, list[Problem]]:
    """Read, decode and build one selected series (see :func:`build_volume`).

    Each slice's bytes (``read(inst)``) are parsed with pydicom and their pixels copied into
    the preallocated volume one at a time, so memory stays within about two volumes. For
    speed, the pixel attributes (size, bits, Pixel Representation, transfer syntax, Rescale
    Slope/Intercept) come from the index record of the same member, not from the dataset.
    The frames of an (Legacy Converted) Enhanced CT instance (records from
    :func:`hiroml.enhanced.expand`) are decoded from one reading of their member.
    Slices left out (duplicates) come back as DROPPED problems. Raises
    :class:`GeometryError`, :class:`DecodeError` or another :class:`HiromlError` from ``read``
    (e.g. a zip safety cap)."""

    decoders: Counter[str] = Counter()
    # Enhanced members, each read once and before the volume is allocated: the inflated bytes
    # are gone by then, so the peak stays at two volumes (parsed frames + volume).
    multi_frame: dict[tuple[str, str], Dataset] = {}
    for inst in series:
        key = (inst.rel_zip, inst.member)
        if inst.frame is not None and key not in multi_frame:
            multi_frame[key] = _read_dataset(read(inst), f"{inst.zip}:{inst.member}")

    def raw_of(i: int) -> tuple[np.ndarray, _PixelDesc, Dataset]:
        inst = series[i]
        label = f"{inst.zip}:{inst.member}"
        if inst.frame is not None:
            ds = multi_frame[(inst.rel_zip, inst.member)]
            raw = _frame_raw(inst, inst.frame, ds, label)
            return raw, _PixelDesc.of_instance(inst, ds), ds
        ds = _read_dataset(read(inst), label)
        desc = _PixelDesc.of_instance(inst, ds)
        decoded = _decode_slice(ds, desc, rows=inst.rows, cols=inst.columns, label=label)
        decoders[decoded.decoder] += 1
        return decoded.array, desc, ds

    built = _build(series, raw_of, cfg, rtol=cfg.spacing_rtol, atol=cfg.spacing_atol)
    volume = dataclasses.replace(built.volume, decoder=", ".join(sorted(decoders)))
    problems = [
        _part_problem(
            (inst,),
            f"series {inst.series_uid}: instance {_slice_name(inst)}: {why}",
            Action.DROPPED,
        )
        for inst, why in built.dropped
    ]
    return volume, problems


def _slice_hu(inst: Instance, read: Callable[[Instance], bytes]) -> np.ndarray:
    """One slice of an exam in HU (float64 (y, x)): read, decoded, modality LUT applied."""
    label = f"{inst.zip}:{inst.member}"
    ds = _read_dataset(read(inst), label)
    desc = _PixelDesc.of_instance(inst, ds)
    if inst.frame is not None:  # a frame of an enhanced instance
        raw = _frame_raw(inst, inst.frame, ds, label)
    else:
        raw = _stored_values(ds, desc, rows=inst.rows, cols=inst.columns, label=label)
    return _hu_float(raw, desc, ds)


def _seam_slices(vol: CtVolume, seams_mm: Sequence[float]) -> tuple[int, ...]:
    """z index of the volume nearest each seam position ``n . IPP`` (mm along the normal)."""
    n = np.asarray(vol.direction, float).reshape(3, 3)[:, 2]
    d0 = float(np.dot(n, vol.origin_xyz))
    step = vol.spacing_xyz[2]
    last = vol.array.shape[0] - 1
    return tuple(int(min(max(round((d - d0) / step), 0), last)) for d in seams_mm)


def _stitch_problems(exam: Exam, scan: Scan, vol: CtVolume) -> list[Problem]:
    """The audit of one stitched scan: a MERGED row per joined part (its first member),
    naming the series and giving the seams; DROPPED rows for overlap slices left out."""
    key = f"{exam.exam_key}:{vol.series_uid}"
    detail = (
        f"stitched series {list(vol.stitched_series)}; seams_mm {list(vol.seams_mm)}; "
        f"seam_slices {list(vol.seam_slices)}; zips {list(vol.zips)}"
    )
    out = [
        _part_problem(
            part,
            f"series {part[0].series_uid} ({len(part)} slices) stitched with series "
            f"{vol.series_uid} into one scan (split scan resumed as a new series: same "
            "frame of reference, orientation, matrix, pixel spacing, kernel and "
            "thickness): " + "; ".join(scan.notes),
            Action.MERGED,
            kept_as=key,
            detail=detail,
        )
        for part in scan.joined
    ]
    for series_uid in sorted({i.series_uid for i, _ in scan.left_out}):
        items = [(i, why) for i, why in scan.left_out if i.series_uid == series_uid]
        out.extend(_problems_for(series_uid, items, len(items)))
    return out


def _apart_problems(plan: StitchPlan) -> list[Problem]:
    """A KEPT row (on the part's first member) for each part kept apart from a candidate."""
    return [
        _part_problem(
            part, f"series {part[0].series_uid} not stitched (ct.stitch=auto): {why}", Action.KEPT
        )
        for part, why in plan.apart
    ]


def _part_problem(
    part: Sequence[Instance], reason: str, action: Action, *, kept_as: str = "", detail: str = ""
) -> Problem:
    """A row about one part of a scan, on its first member (by zip, then member path)."""
    first = min(part, key=lambda i: (i.zip, i.member))
    return dicom.member_problem(first, STAGE, reason, action, kept_as=kept_as, detail=detail)


def _scan_failed(
    exam: Exam,
    scan: Scan,
    e: BaseException,
    selected: Sequence[tuple[Instance, ...]],
    cfg: CtConfig,
) -> tuple[Problem, list[Scan]]:
    """The ERROR row (on the scan's first member) for a scan that could not be converted,
    and the scans to try instead: the parts of a stitched scan, one by one (best first with
    ``ct.series=best``)."""
    series = scan.instances
    first = min(series, key=lambda i: (i.zip, i.member))
    cause = str(e) if isinstance(e, HiromlError) else f"{type(e).__name__}: {e}"
    what = f"stitched scan {', '.join(scan.series)}" if scan.stitched else "series"
    reason = f"{what} {first.series_uid} ({len(series)} slices): {cause}"
    singles: list[Scan] = []
    if scan.stitched:
        reason = f"{what} ({len(series)} slices): {cause}; its parts are tried alone"
        parts = [p for p in selected if p[0].series_uid in scan.series]
        singles = [Scan(instances=p, series=(p[0].series_uid,)) for p in parts]
        if cfg.series == "best":
            singles.sort(key=lambda sc: _series_score(sc.instances, cfg))
    log.warning("exam %s: %s", exam.exam_key, reason)
    return _part_problem(series, reason, Action.ERROR), singles


def _as_stitched(vol: CtVolume, scan: Scan) -> CtVolume:
    """The volume of a stitched scan, with its series, seams (mm along the normal and
    z indices) and a decision naming the parts."""
    vol = dataclasses.replace(
        vol,
        stitched_series=scan.series,
        seams_mm=scan.seams_mm,
        decisions=(
            *vol.decisions,
            f"stitched from {len(scan.series)} series ({', '.join(scan.series)}); "
            + "; ".join(scan.notes),
        ),
    )
    return dataclasses.replace(vol, seam_slices=_seam_slices(vol, scan.seams_mm))


def convert_exam(
    exam: Exam, read: Callable[[Instance], bytes], cfg: CtConfig
) -> tuple[list[CtVolume], list[Problem]]:
    """Select the exam's series (:func:`select_series`), stitch the parts of a scan resumed
    under a new Series Instance UID (:mod:`hiroml.stitch`, unless ``cfg.stitch == "off"``)
    and build a volume for each scan.

    A scan that fails (bad geometry, undecodable or unreadable slice) becomes an ERROR
    problem naming the series and the cause; the other scans go on (the parts of a stitched
    scan that fails are then tried one by one). With ``cfg.series == "best"`` the scans are
    tried in order of preference, so a whole stitched scan is preferred over any of its parts
    (more slices) and a rejected best scan falls back to the next one; the ones not tried are
    DROPPED as "not the best series". A stitched volume records its parts and seams
    (``CtVolume.stitched_series``, ``seams_mm``, ``seam_slices``) and comes with a MERGED
    problem per joined part.
    """
    # (Legacy Converted) Enhanced CT: each frame becomes a slice record before selection
    instances, problems = enhanced.expand(exam.instances, read)
    selected, left_out = select_series(instances, dataclasses.replace(cfg, series="all"))
    problems.extend(left_out)
    plan = plan_scans(
        selected,
        lambda a, b: pixels_differ(a, b, lambda i: _slice_hu(i, read), cfg.stitch_atol_hu),
        cfg,
    )
    problems.extend(_apart_problems(plan))
    queue: list[Scan] = list(plan.scans)
    if cfg.series == "best":
        queue.sort(key=lambda sc: _series_score(sc.instances, cfg))
    volumes: list[CtVolume] = []
    chosen: tuple[Instance, ...] | None = None
    while queue:
        scan = queue.pop(0)
        series = scan.instances
        if cfg.series == "best" and chosen is not None:
            problems.extend(_not_best_problems(chosen, series))
            continue
        try:
            vol, dropped = convert_series(series, read, cfg)
        except (HiromlError, OSError, ValueError, IndexError, EOFError, MemoryError) as e:
            problem, retry = _scan_failed(exam, scan, e, selected, cfg)
            problems.append(problem)
            queue[0:0] = retry
            continue
        chosen = series
        if scan.stitched:
            vol = _as_stitched(vol, scan)
            problems.extend(_stitch_problems(exam, scan, vol))
        volumes.append(vol)
        problems.extend(dropped)
        log.info(
            "exam %s: series %s -> %s %s spacing %s%s%s",
            exam.exam_key,
            vol.series_uid,
            vol.size_xyz,
            vol.array.dtype,
            _fmt(vol.spacing_xyz),
            " (resampled)" if vol.resampled else "",
            f" (stitched from {len(scan.series)} series)" if scan.stitched else "",
        )
    return volumes, problems


def array_to_sitk(
    array: np.ndarray,
    *,
    spacing_xyz: Sequence[float],
    origin_xyz: Sequence[float],
    direction: Sequence[float],
) -> sitk.Image:
    """A numpy (z, y, x) volume as a ``SimpleITK.Image`` (x, y, z) with its geometry: spacing
    and origin in mm, ``direction`` 9 numbers row-major (columns = axis directions)."""
    if array.ndim != 3:
        raise GeometryError(f"expected a (z, y, x) volume, got shape {array.shape}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing([float(v) for v in spacing_xyz])
    img.SetOrigin([float(v) for v in origin_xyz])
    img.SetDirection([float(v) for v in direction])
    return img


def to_sitk(vol: CtVolume) -> sitk.Image:
    """A stored :class:`CtVolume` back as a ``SimpleITK.Image`` with its geometry."""
    return array_to_sitk(
        vol.array, spacing_xyz=vol.spacing_xyz, origin_xyz=vol.origin_xyz, direction=vol.direction
    )
