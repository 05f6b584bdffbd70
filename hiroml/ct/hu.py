"""CT pixel values: stored values to Hounsfield units (HU), slice by slice."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from hiroml.ct import enhanced
from hiroml.ct.select import _INT16
from hiroml.dicom import decode as dicom
from hiroml.dicom import uids as dicom_uids
from hiroml.errors import BadInputError, DecodeError
from hiroml.records import Instance

HU_MIN = -2048.0
"""The lowest CT value accepted after rescale, in HU (air is -1000; scanners pad below it,
down to -2048 as a 12-bit signed range allows)."""
HU_MAX = 32767.0
"""The highest CT value accepted after rescale, in HU (dense metal saturates far below; int16's
top is the ceiling of any stored CT). A volume with values outside [HU_MIN, HU_MAX], or not
finite, was rescaled by a damaged header and is not stored."""


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


def check_rescale(inst: Instance, desc: _PixelDesc, ds: Dataset, *, label: str) -> None:
    """Raise :class:`DecodeError` naming ``label`` and the value when the slice's (0028,1053)
    Rescale Slope is not a finite number > 0 (0 flattens the slice, a negative slope inverts
    HU) or its (0028,1052) Rescale Intercept is not finite. The index records a non-finite
    value as absent, so where the record has none the dataset's own value is checked."""
    if desc.lut_sequence:
        return
    slope, intercept = desc.slope, desc.intercept
    missing = inst.rescale_slope is None or inst.rescale_intercept is None
    if missing and inst.frame is None and ("RescaleSlope" in ds or "RescaleIntercept" in ds):
        try:
            slope, intercept = dicom.rescale(ds)
        except (TypeError, ValueError) as e:
            raise DecodeError(f"{label}: unreadable rescale ({e})") from e
    if not (math.isfinite(slope) and slope > 0):
        raise DecodeError(
            f"{label}: (0028,1053) Rescale Slope is {slope!r}: HU need a finite slope > 0"
        )
    if not math.isfinite(intercept):
        raise DecodeError(f"{label}: (0028,1052) Rescale Intercept is {intercept!r}: not finite")


def check_hu_range(volume: np.ndarray, *, label: str, allowed: Iterable[float] = ()) -> None:
    """Raise :class:`BadInputError` naming ``label`` and the range found when the volume holds
    values outside [:data:`HU_MIN`, :data:`HU_MAX`] or values that are not finite. Values in
    ``allowed`` (the HU of (0028,0120) Pixel Padding Value, e.g. GE's -3024, and the fill
    outside the scanned field) take no part."""
    if volume.size == 0:
        return
    vmin, vmax = volume.min(), volume.max()
    lo, hi = float(vmin), float(vmax)
    if lo >= HU_MIN and hi <= HU_MAX:
        return
    marks = np.asarray(sorted(set(allowed)), dtype=volume.dtype)
    if marks.size:
        keep = ~np.isin(volume, marks)
        if not keep.any():
            return
        lo = float(np.min(volume, where=keep, initial=vmax))
        hi = float(np.max(volume, where=keep, initial=vmin))
        if lo >= HU_MIN and hi <= HU_MAX:
            return
    raise BadInputError(
        f"{label}: values {lo:g} to {hi:g} HU after rescale, outside the physical range "
        f"{HU_MIN:g} to {HU_MAX:g}: a damaged (0028,1053) Rescale Slope or (0028,1052) "
        "Rescale Intercept; not stored"
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
    bytes (:func:`hiroml.dicom.decode.native_grey`: (0028,0101) Bits Stored masked or sign-extended
    as pydicom does), from the header values of the index record; anything else
    goes through :func:`hiroml.dicom.decode.decode`, the decoder pinned per transfer syntax (JPEG,
    JPEG-LS, JPEG 2000, HTJ2K, JPEG XL, RLE, deflated frames, big endian, ...).
    """
    if "PixelData" not in ds:
        raise DecodeError(f"{label}: no (7FE0,0010) Pixel Data")
    if (desc.rows, desc.cols) != (rows, cols):
        raise DecodeError(f"{label}: {desc.rows}x{desc.cols} pixels, the series has {rows}x{cols}")
    native16 = desc.bits_allocated == 16 and desc.samples == 1
    if desc.transfer_syntax in dicom_uids.UNCOMPRESSED_LE and native16:
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
        return dicom.Decoded(arr, dicom_uids.NUMPY)
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
