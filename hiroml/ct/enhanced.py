"""Enhanced CT and Legacy Converted Enhanced CT: one multi-frame instance, each frame a slice.

(0008,0016) SOP Class UID 1.2.840.10008.5.1.4.1.1.2.1 (Enhanced CT Image Storage) and
1.2.840.10008.5.1.4.1.1.2.2 (Legacy Converted Enhanced CT Image Storage) hold a whole series,
or a part of one, in a single instance. The geometry of each frame lives in the functional
groups (PS3.3 C.7.6.16): the item of (5200,9230) Per-Frame Functional Groups Sequence for that
frame, else the one item of (5200,9229) Shared Functional Groups Sequence, else the top-level
attribute:

* (0020,9113) Plane Position Sequence > (0020,0032) Image Position (Patient), mm (LPS);
* (0020,9116) Plane Orientation Sequence > (0020,0037) Image Orientation (Patient);
* (0028,9110) Pixel Measures Sequence > (0028,0030) Pixel Spacing [row, column] mm and
  (0018,0050) Slice Thickness mm;
* (0028,9145) Pixel Value Transformation Sequence > (0028,1053) Rescale Slope and (0028,1052)
  Rescale Intercept (HU = stored * slope + intercept, per frame);
* (0020,9111) Frame Content Sequence > (0018,9074) Frame Acquisition DateTime (which of two
  frames at one position came first);
* (0018,9329) CT Image Frame Type Sequence > (0008,9007) Frame Type (a LOCALIZER frame is
  dropped as a localizer instance would be).

:func:`expand` turns every such instance of an exam into one :class:`~hiroml.records.Instance`
record per frame (``frame`` = the 0-based frame number; the other fields as for a single-frame
slice), so that series selection (``ct.min_slices`` counts frames) and volume building (the sort
along the slice normal, duplicates, gaps, uneven spacing, gantry tilt) treat frames exactly as
they treat single-frame slices. :func:`frame_pixels` decodes one frame's stored values.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage

from hiroml.dicom import uids as dicom_uids
from hiroml.errors import BadInputError, DecodeError, HiromlError
from hiroml.records import Instance, Problem
from hiroml.vocab import Action

log = logging.getLogger(__name__)

__all__ = ["ENHANCED_CT", "expand", "frame_pixels", "frame_records", "is_enhanced_ct"]

STAGE = "ct"
ENHANCED_CT: dict[str, str] = {
    EnhancedCTImageStorage: "Enhanced CT Image Storage",
    LegacyConvertedEnhancedCTImageStorage: "Legacy Converted Enhanced CT Image Storage",
}


def is_enhanced_ct(inst: Instance) -> bool:
    """An (Legacy Converted) Enhanced CT instance not yet expanded into its frames."""
    return inst.sop_class_uid in ENHANCED_CT and inst.frame is None


def _first_item(group: Dataset | None, sequence: str) -> Dataset | None:
    if group is None:
        return None
    seq = group.get(sequence)
    return seq[0] if seq else None


def _lookup(
    per_frame: Dataset | None, shared: Dataset | None, top: Dataset, sequence: str, keyword: str
) -> Any:
    """``keyword`` from the frame's functional group ``sequence``, else the shared one, else
    the top-level attribute; ``None`` when absent or empty."""
    for group in (per_frame, shared):
        item = _first_item(group, sequence)
        if item is not None:
            value = item.get(keyword)
            if value not in (None, ""):
                return value
    value = top.get(keyword)
    return None if value in (None, "") else value


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _values(value: Any) -> tuple[str, ...]:
    """A multi-valued CS attribute as a tuple of strings (``()`` when absent)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split("\\"))
    return tuple(str(v).strip() for v in value)


def frame_records(inst: Instance, ds: Dataset) -> list[Instance]:
    """One record per frame of the enhanced instance ``inst`` (its header ``ds``, pixels not
    needed), with the frame's own position, orientation, pixel spacing, slice thickness and
    rescale from the functional groups (see the module docstring), and no ``pixel_hash`` (the
    instance's hash covers every frame: identical frames are found by decoding them, as
    :mod:`hiroml.ct.stitch` does when a hash is missing). A frame without a position
    keeps ``position=None``, and series selection drops it as it drops a slice without
    (0020,0032). Raises :class:`BadInputError` when the per-frame sequence does not have one
    item per frame."""
    n = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and len(per_frame) != n:
        raise BadInputError(
            f"{inst.zip}: {inst.member}: (5200,9230) Per-Frame Functional Groups Sequence has "
            f"{len(per_frame)} items for (0028,0008) Number of Frames {n}"
        )
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    out = []
    for k in range(n):
        item = per_frame[k] if per_frame else None

        def get(sequence: str, keyword: str, item: Dataset | None = item) -> Any:
            return _lookup(item, shared, ds, sequence, keyword)

        frame_type = get("CTImageFrameTypeSequence", "FrameType")
        acquired = str(get("FrameContentSequence", "FrameAcquisitionDateTime") or "")
        out.append(
            dataclasses.replace(
                inst,
                frame=k,
                number_of_frames=1,
                position=_floats(get("PlanePositionSequence", "ImagePositionPatient"), 3),  # type: ignore[arg-type]
                orientation=_floats(  # type: ignore[arg-type]
                    get("PlaneOrientationSequence", "ImageOrientationPatient"), 6
                ),
                pixel_spacing=_floats(get("PixelMeasuresSequence", "PixelSpacing"), 2),  # type: ignore[arg-type]
                slice_thickness=_float(get("PixelMeasuresSequence", "SliceThickness")),
                rescale_slope=_float(get("PixelValueTransformationSequence", "RescaleSlope")),
                rescale_intercept=_float(
                    get("PixelValueTransformationSequence", "RescaleIntercept")
                ),
                image_type=_values(frame_type) or inst.image_type,
                acquisition_time=acquired[8:] if len(acquired) > 8 else inst.acquisition_time,
                instance_number=k + 1,
                pixel_hash="",  # the instance's hash is not the frame's: compare decoded frames
            )
        )
    return out


def _problem(inst: Instance, reason: str) -> Problem:
    return dicom_uids.member_problem(inst, STAGE, reason, Action.ERROR)


def expand(
    instances: Sequence[Instance], read: Callable[[Instance], bytes]
) -> tuple[list[Instance], list[Problem]]:
    """``instances`` with every (Legacy Converted) Enhanced CT instance replaced by its frame
    records (:func:`frame_records`); the header is read with ``read(inst)`` (pixels are
    decoded later, when the volume is built). An instance whose header cannot be read or does
    not describe its frames becomes an ``error`` problem naming the zip and member, and the
    exam goes on without it. Other instances are returned as they are, in their order."""
    out: list[Instance] = []
    problems: list[Problem] = []
    for inst in instances:
        if not is_enhanced_ct(inst):
            out.append(inst)
            continue
        kind = ENHANCED_CT[inst.sop_class_uid]
        try:
            head = pydicom.dcmread(io.BytesIO(read(inst)), stop_before_pixels=True, force=True)
            frames = frame_records(inst, head)
        except HiromlError as e:
            problems.append(_problem(inst, f"{kind}: {e}"))
            continue
        except Exception as e:  # pydicom raises many kinds on damaged files
            reason = (
                f"{inst.zip}: {inst.member}: {kind}: unreadable header ({type(e).__name__}: {e})"
            )
            problems.append(_problem(inst, reason))
            continue
        log.debug("%s: %s: %s expanded into %d frames", inst.zip, inst.member, kind, len(frames))
        out.extend(frames)
    return out, problems


def frame_pixels(ds: Dataset, frame: int, *, rows: int, cols: int, label: str) -> np.ndarray:
    """Stored values (rows, columns) of frame ``frame`` (0-based) of a multi-frame dataset, in
    any transfer syntax the radiograph decoder reads (no modality LUT; the rescale is per frame,
    on the frame's record). Raises :class:`DecodeError` naming ``label`` and the frame."""
    from hiroml.dicom.decode import decode

    n = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    try:
        arr = decode(ds, frame=frame).array
    except (DecodeError, ValueError) as e:
        raise DecodeError(f"{label}: frame {frame + 1} of {n}: {e}") from e
    if arr.shape != (rows, cols):
        raise DecodeError(
            f"{label}: frame {frame + 1} of {n}: decoded shape {arr.shape}, expected ({rows}, "
            f"{cols})"
        )
    return arr
