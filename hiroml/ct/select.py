"""CT series selection: which instances and which series make the volume."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from hiroml.config import CtConfig
from hiroml.ct import enhanced
from hiroml.dicom import uids as dicom_uids
from hiroml.records import Instance, Problem
from hiroml.vocab import Action

log = logging.getLogger(__name__)
STAGE = "ct"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_ENHANCED_CT = enhanced.ENHANCED_CT  # their frames are slices: see hiroml.ct.enhanced
_ORIENTATION_ATOL = 1e-3  # direction cosines: same orientation / orthonormality
_INT16 = np.iinfo(np.int16)


def _image_type(inst: Instance) -> tuple[str, ...]:
    return tuple(v.strip().upper() for v in inst.image_type)


def _instance_drop_reason(inst: Instance, cfg: CtConfig) -> str | None:
    """Why one instance cannot be a slice of a CT volume, from its header alone; None if it
    can. Checked in order: non-image objects, secondary captures, SOP class, modality,
    localizers, derived images, pixel layout, geometry attributes."""
    itype = _image_type(inst)
    it_text = "\\".join(itype) or "(absent)"
    sop_class = inst.sop_class_uid
    if sop_class.startswith(dicom_uids.SR_PREFIX) or inst.modality in ("SR", "KO", "PR"):
        return (
            f"structured report / dose report / non-image object "
            f"((0008,0016) SOP Class UID {sop_class or '?'}, (0008,0060) Modality {inst.modality})"
        )
    if not inst.has_pixels:
        return "no (7FE0,0010) Pixel Data: dose report, structured report or other non-image object"
    if (
        dicom_uids.is_secondary_capture(sop_class)
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
            "(hiroml.ct.enhanced.expand)"
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
