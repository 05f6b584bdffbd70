"""CT conversion: one exam's series into volumes, stitched scans, and the SimpleITK image of a
volume."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from hiroml.config import CtConfig
from hiroml.ct import enhanced
from hiroml.ct.hu import (
    _decode_slice,
    _frame_raw,
    _hu_float,
    _PixelDesc,
    _read_dataset,
    _slice_name,
    _stored_values,
    check_hu_range,
    check_rescale,
)
from hiroml.ct.select import (
    STAGE,
    _fmt,
    _not_best_problems,
    _problems_for,
    _series_score,
    select_series,
)
from hiroml.ct.stitch import Scan, StitchPlan, pixels_differ, plan_scans
from hiroml.ct.volume import _build
from hiroml.dicom import uids as dicom_uids
from hiroml.errors import HiromlError
from hiroml.records import CtVolume, Exam, Instance, Problem
from hiroml.vocab import Action

log = logging.getLogger(__name__)


def convert_series(
    series: Sequence[Instance], read: Callable[[Instance], bytes], cfg: CtConfig
) -> tuple[CtVolume, list[Problem]]:
    """Read, decode and build one selected series (see :func:`build_volume`).

    Each slice's bytes (``read(inst)``) are parsed with pydicom and their pixels copied into
    the preallocated volume one at a time, so memory stays within about two volumes. For
    speed, the pixel attributes (size, bits, Pixel Representation, transfer syntax, Rescale
    Slope/Intercept) come from the index record of the same member, not from the dataset.
    The frames of an (Legacy Converted) Enhanced CT instance (records from
    :func:`hiroml.ct.enhanced.expand`) are decoded from one reading of their member.
    Slices left out (duplicates) come back as DROPPED problems. A slice whose rescale is
    unusable (:func:`hiroml.ct.hu.check_rescale`) or a volume outside the physical HU range
    (:func:`hiroml.ct.hu.check_hu_range`) fails the series. Raises
    :class:`GeometryError`, :class:`DecodeError` or another :class:`HiromlError` from ``read``
    (e.g. a zip safety cap)."""

    decoders: Counter[str] = Counter()
    padding_hu: set[float] = {float(cfg.fill_hu)}
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
            desc = _PixelDesc.of_instance(inst, ds)
            check_rescale(inst, desc, ds, label=label)
            return _frame_raw(inst, inst.frame, ds, label), desc, ds
        ds = _read_dataset(read(inst), label)
        desc = _PixelDesc.of_instance(inst, ds)
        check_rescale(inst, desc, ds, label=label)
        pad = ds.get("PixelPaddingValue")
        if isinstance(pad, int) and not desc.lut_sequence:
            padding_hu.add(pad * desc.slope + desc.intercept)
        decoded = _decode_slice(ds, desc, rows=inst.rows, cols=inst.columns, label=label)
        decoders[decoded.decoder] += 1
        return decoded.array, desc, ds

    built = _build(series, raw_of, cfg, rtol=cfg.spacing_rtol, atol=cfg.spacing_atol)
    check_hu_range(built.volume.array, label=f"series {series[0].series_uid}", allowed=padding_hu)
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
    return dicom_uids.member_problem(first, STAGE, reason, action, kept_as=kept_as, detail=detail)


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
    under a new Series Instance UID (:mod:`hiroml.ct.stitch`, unless ``cfg.stitch == "off"``)
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
