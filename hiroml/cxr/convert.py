"""Radiograph conversion: one instance or exam into stored images and problems."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut as _pydicom_modality_lut

from hiroml.config import CxrConfig
from hiroml.cxr.pixels import (
    _spacing,
    _transfer_syntax,
    apply_modality,
    apply_voi,
    decode_frame,
    invert_if_monochrome1,
    normalize_minmax,
    normalize_percentile,
    number_of_frames,
    padding_mask,
    resize,
    to_grayscale,
    to_storage,
)
from hiroml.cxr.select import STAGE, _uid_label, is_for_processing, keep_reason
from hiroml.cxr.view import (
    ViewEvidence,
    _header_view,
    classify_evidence,
    classify_view,
    view_evidence,
)
from hiroml.dicom import decode as dicom
from hiroml.dicom import fastdecode, rawheader
from hiroml.dicom import uids as dicom_uids
from hiroml.errors import BadInputError, DecodeError, internal_trace
from hiroml.records import CxrImage, Exam, Instance, Problem
from hiroml.vocab import Action, View

logger = logging.getLogger(__name__)


def _where(inst: Instance) -> str:
    return f"{inst.rel_zip}: member {inst.member}"


def check_rescale(ds: Dataset, inst: Instance) -> None:
    """Raise :class:`BadInputError` naming the zip, member and value when (0028,1053) Rescale
    Slope is 0 or not finite, or (0028,1052) Rescale Intercept is not finite: such a modality
    transform maps every pixel to one value (or NaN), an image with no content. A (0028,3000)
    Modality LUT Sequence without a rescale is not concerned."""
    if _no_value(ds, "RescaleSlope") and _no_value(ds, "RescaleIntercept"):
        return
    try:
        slope, intercept = dicom.rescale(ds)
    except (TypeError, ValueError) as e:
        raise BadInputError(f"{_where(inst)}: unreadable rescale ({e})") from e
    if not math.isfinite(slope) or slope == 0:
        raise BadInputError(
            f"{_where(inst)}: (0028,1053) Rescale Slope is {slope!r}: every pixel would map to "
            "one value; the image is not stored"
        )
    if not math.isfinite(intercept):
        raise BadInputError(
            f"{_where(inst)}: (0028,1052) Rescale Intercept is {intercept!r}: not a finite "
            "number; the image is not stored"
        )


def _no_value(ds: Dataset, keyword: str) -> bool:
    """Whether an element is absent or empty (its raw decimal string read as is)."""
    return not rawheader.decimals(ds, keyword) and rawheader.get(ds, keyword) in (None, "")


def _intensities(
    arr: np.ndarray, ds: Dataset, cfg: CxrConfig, padding: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """Stored values -> [0, 1] float32 by the configured normalisation, with its description.
    Percentile and min-max normalisation are invariant under a positive rescale, so they run
    on the integer stored values (exact histogram percentiles) when that is all the modality
    transform is. Pixels in the ``padding`` mask take no part in any statistic."""
    lo, hi = float(cfg.percentiles[0]), float(cfg.percentiles[1])
    slope, intercept = dicom.rescale(ds)
    has_lut = bool(rawheader.get(ds, "ModalityLUTSequence"))
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
    value = rawheader.get(ds, "PixelPaddingValue", "")
    limit = rawheader.get(ds, "PixelPaddingRangeLimit", None)
    attrs = f"PixelPaddingValue={value}" + ("" if limit is None else f",RangeLimit={limit}")
    n = int(np.count_nonzero(mask))
    return f"{attrs}: {n} px ({100.0 * n / mask.size:.1f}%) left out of the statistics, set to 0"


def read_image(data: bytes, inst: Instance) -> Dataset:
    """A member's bytes as a dataset with (0028,0010) Rows and (0028,0011) Columns; raises
    :class:`BadInputError` naming the zip and member for an unreadable DICOM."""
    ds = dicom.parse(data, label=_where(inst)).dataset
    if not rawheader.has(ds, "Rows") or not rawheader.has(ds, "Columns"):
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
    check_rescale(ds, inst)
    return _convert_frame(ds, inst, exam_description=exam_description, cfg=cfg, frame=frame)


def convert_frames(
    data: bytes, inst: Instance, *, exam_description: str, cfg: CxrConfig
) -> tuple[list[CxrImage], list[Problem]]:
    """Every frame of an instance ((0028,0008) Number of Frames, 1 when absent) as a
    :class:`CxrImage`; a frame that cannot be decoded is an ``error`` problem naming the
    frame, and the other frames go on. Raises :class:`BadInputError` for an unreadable DICOM
    or an unusable rescale (:func:`check_rescale`)."""
    ds = read_image(data, inst)
    check_rescale(ds, inst)
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
    ds: Dataset,
    inst: Instance,
    *,
    exam_description: str,
    cfg: CxrConfig,
    frame: int,
    evidence: ViewEvidence | None = None,
) -> CxrImage:
    """One frame of a parsed instance; ``evidence``: its :func:`view_evidence`, when read."""
    ts = _transfer_syntax(ds)
    ev = view_evidence(ds) if evidence is None else evidence
    view, view_source = classify_evidence(ev, exam_description=exam_description)
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
    sop_class = str(rawheader.get(ds, "SOPClassUID", "") or inst.sop_class_uid)
    intent = str(rawheader.get(ds, "PresentationIntentType", "") or inst.presentation_intent)
    return CxrImage(
        sop_uid=inst.sop_uid or str(rawheader.get(ds, "SOPInstanceUID", "")),
        series_uid=inst.series_uid or str(rawheader.get(ds, "SeriesInstanceUID", "")),
        rel_zip=inst.rel_zip,
        member=inst.member,
        array=stored,
        view=view,
        view_source=view_source,
        original_shape=original_shape,
        pixel_spacing=spacing,
        spacing_after=after,
        photometric=str(rawheader.get(ds, "PhotometricInterpretation", "")).strip(),
        bits_stored=int(rawheader.get(ds, "BitsStored", 0) or 0),
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
    return dicom_uids.member_problem(inst, STAGE, reason, action)


def _not_selected(view: View, source: str, cfg: CxrConfig) -> str:
    return f"view {view} not selected (cxr.views=[{','.join(cfg.views)}]): {source}"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A member converted ahead of the conversion stage, in the same read as its indexing
    (:mod:`hiroml.pipeline.scratch`): its frames, converted without the exam's
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
    try:
        check_rescale(head, inst)
    except BadInputError:
        return None  # reported by the conversion stage when it reads the member again
    images: list[CxrImage] = []
    for k in range(number_of_frames(head)):
        try:
            images.append(
                _convert_frame(head, inst, exam_description="", cfg=cfg, frame=k, evidence=evidence)
            )
        except DecodeError:
            return None
    return Prepared(tuple(images), evidence)


def _with_pixels(header: Dataset, pixels: memoryview | None, inst: Instance) -> Dataset:
    """The index's header with its (7FE0,0010) Pixel Data value put back: what
    :func:`read_image` gives for a little-endian file (encapsulated: OB; native: OW above 8
    bits allocated, else OB, as such files are written)."""
    if pixels is None or not rawheader.has(header, "Rows") or not rawheader.has(header, "Columns"):
        raise BadInputError(f"{_where(inst)}: not a readable DICOM image (no Rows/Columns)")
    encapsulated = dicom_uids.is_encapsulated(dicom.transfer_syntax(header))
    alloc = int(rawheader.get(header, "BitsAllocated", 16))
    vr = "OB" if encapsulated or alloc <= 8 else "OW"
    # Native 8/16/32-bit pixels are read by hiroml.dicom.decode straight from the view (no copy of
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
    return [
        f if (f.view, f.view_source) == (view, source)
        else dataclasses.replace(f, view=view, view_source=source)
        for f in ready.frames
    ]  # fmt: skip


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
    return dataclasses.replace(_problem(inst, reason, Action.ERROR), internal=internal_trace(e))
