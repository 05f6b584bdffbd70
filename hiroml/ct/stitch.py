"""Stitch a CT scan that arrived as several series into one scan (pure; pixels via a callback).

A scanner starts a new series, with a new (0020,000E) Series Instance UID, when an
interrupted acquisition is resumed; the tip sheet's split scans arrive that way, as zips minutes
apart under one HIRO id. After the exams stage has merged those zips into one exam, this module
finds, among the exam's qualifying series, the parts of one scan and joins them.

Two series are *candidates* when they share (0020,0052) Frame of Reference UID (both empty
counts as shared), (0020,0037) Image Orientation (Patient) (within 1e-3), (0028,0010) Rows,
(0028,0011) Columns, (0028,0030) Pixel Spacing (within 1e-3 mm), (0018,1210) Convolution
Kernel and (0018,0050) Slice Thickness (within 0.01 mm). Positions are compared along the
common slice normal ``n = r x c`` of (0020,0037), as ``d = n . IPP`` with (0020,0032) Image
Position (Patient), in mm. Parts sorted by their first position are then joined one by one:

* **abut**: the next part starts one slice step (within ``atol + rtol * step``) after the
  last position so far: joined, the seam lies at its first slice.
* **gap**: it starts further away, but within ``ct.stitch_max_gap`` mm beyond one step: the
  gap goes through ``ct.spacing_policy`` (``resample``: joined, the volume is resampled across
  the gap and says so; ``reject``: the parts stay apart, with the reason). Beyond the limit the
  parts are different regions and are not candidates.
* **overlap**: positions shared with the scan so far must coincide slice for slice (within
  ``ct.spacing_atol`` mm) and carry the same pixels: identical stored pixels (equal
  (7FE0,0010) hash and pixel description) or decoded HU within ``ct.stitch_atol_hu``. The
  repeated slices are left out (the earlier part's copy is kept) and the part is joined.
  Different pixels (another contrast phase, a repeat after motion) or positions that do not
  coincide keep the parts apart, with the reason.
* a slice step that differs between the parts goes through ``ct.spacing_policy`` like a gap.

The part acquired first ((0008,0021)/(0008,0031) Series Date/Time, then (0020,0011) Series
Number) names the stitched scan: its Series Instance UID is the volume's, so the sample key
keeps its scheme ``{exam_key}:{series_uid}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hiroml.config import CtConfig
from hiroml.errors import HiromlError
from hiroml.records import Instance

log = logging.getLogger(__name__)

__all__ = ["Scan", "StitchPlan", "pixels_differ", "plan_scans", "stitch_key"]

_ORIENTATION_ATOL = 1e-3  # direction cosines, as in hiroml.ct
_SPACING_ATOL = 1e-3  # mm, (0028,0030) Pixel Spacing
_THICKNESS_ATOL = 0.01  # mm, (0018,0050) Slice Thickness

# Does slice ``b`` carry the same pixels as slice ``a``? None when it does, else a short
# description of the difference (e.g. "max |HU difference| 310"). May raise on unreadable data.
PixelCheck = Callable[[Instance, Instance], str | None]


@dataclass(frozen=True, slots=True)
class Scan:
    """One scan after stitching: a single series, or parts of one scan joined.

    ``instances`` hold the slices of the part acquired first ((0008,0021)/(0008,0031) Series
    Date/Time, then (0020,0011) Series Number) first, so ``instances[0].series_uid`` names the
    scan, then the new slices of the other parts; slices repeated in an overlap are in
    ``left_out`` instead, each with its reason. ``series`` are the parts' Series Instance
    UIDs in order along the normal; ``seams_mm`` the position ``n . IPP`` (mm) of the first
    slice taken from each part after the first along the normal (none for a part that added
    no slice); ``notes`` say how each part joined (abutting, overlap deduplicated, gap or
    spacing resampled); ``joined`` are the parts other than the one naming the scan.
    """

    instances: tuple[Instance, ...]
    series: tuple[str, ...]
    seams_mm: tuple[float, ...] = ()
    left_out: tuple[tuple[Instance, str], ...] = ()
    notes: tuple[str, ...] = ()
    joined: tuple[tuple[Instance, ...], ...] = ()  # the parts after the first, as given

    @property
    def stitched(self) -> bool:
        return len(self.series) > 1


@dataclass(frozen=True, slots=True)
class StitchPlan:
    """The exam's scans (stitched or single series, in the order of the input) and the parts
    kept apart from a candidate, each as (its instances, why it was not stitched)."""

    scans: tuple[Scan, ...]
    apart: tuple[tuple[tuple[Instance, ...], str], ...] = ()


def _normal(inst: Instance) -> np.ndarray:
    o = inst.orientation
    assert o is not None  # selected series always have (0020,0037)
    n = np.cross(np.asarray(o[:3], float), np.asarray(o[3:6], float))
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 0 else n


def _median_thickness(series: Sequence[Instance]) -> float | None:
    th = [i.slice_thickness for i in series if i.slice_thickness is not None]
    return float(np.median(th)) if th else None


def stitch_key(series: Sequence[Instance]) -> tuple[str, int, int, str]:
    """The exact part of the candidate test: (0020,0052) Frame of Reference UID, (0028,0010)
    Rows, (0028,0011) Columns, (0018,1210) Convolution Kernel (case-insensitive)."""
    first = series[0]
    return (first.frame_of_reference_uid, first.rows, first.columns, first.kernel.upper())


def _close(a: Sequence[float] | None, b: Sequence[float] | None, atol: float) -> bool:
    if a is None or b is None:
        return False
    return all(abs(x - y) <= atol for x, y in zip(a, b, strict=True))


def _candidates(a: Sequence[Instance], b: Sequence[Instance]) -> bool:
    """Same frame of reference, orientation, matrix, pixel spacing and reconstruction."""
    if stitch_key(a) != stitch_key(b):
        return False
    if not _close(a[0].orientation, b[0].orientation, _ORIENTATION_ATOL):
        return False
    if not _close(a[0].pixel_spacing, b[0].pixel_spacing, _SPACING_ATOL):
        return False
    ta, tb = _median_thickness(a), _median_thickness(b)
    if (ta is None) != (tb is None):
        return False
    return ta is None or tb is None or abs(ta - tb) <= _THICKNESS_ATOL


def pixels_differ(
    a: Instance,
    b: Instance,
    hu_of: Callable[[Instance], np.ndarray],
    atol_hu: float,
) -> str | None:
    """None when slices ``a`` and ``b`` hold the same image: the same stored (7FE0,0010)
    Pixel Data (equal hash) under the same pixel description and modality LUT, or decoded HU
    (``hu_of``, (y, x)) that differ by at most ``atol_hu`` everywhere. Otherwise what
    differs."""
    same_desc = (
        a.transfer_syntax,
        a.bits_allocated,
        a.bits_stored,
        a.pixel_representation,
        a.rescale_slope,
        a.rescale_intercept,
    ) == (
        b.transfer_syntax,
        b.bits_allocated,
        b.bits_stored,
        b.pixel_representation,
        b.rescale_slope,
        b.rescale_intercept,
    )
    if a.pixel_hash and a.pixel_hash == b.pixel_hash and same_desc:
        return None
    ha, hb = hu_of(a), hu_of(b)
    if ha.shape != hb.shape:
        return f"image sizes {ha.shape} and {hb.shape} differ"
    diff = float(np.max(np.abs(ha - hb))) if ha.size else 0.0
    if diff <= atol_hu:
        return None
    frac = float(np.mean(np.abs(ha - hb) > atol_hu))
    return (
        f"max |HU difference| {diff:.4g}, {frac:.1%} of pixels beyond ct.stitch_atol_hu={atol_hu:g}"
    )


@dataclass
class _Chain:
    """A scan being assembled: its slices' positions along the normal, sorted."""

    parts: list[tuple[Instance, ...]]
    instances: list[Instance]
    d: list[float]  # positions of ``instances`` along the normal, mm (same order)
    seams: list[float]
    left_out: list[tuple[Instance, str]]
    notes: list[str]
    step: float

    @property
    def end(self) -> float:
        return max(self.d)

    @property
    def start(self) -> float:
        return min(self.d)

    @property
    def head(self) -> str:
        """(0020,000E) Series Instance UID of the chain's first part."""
        return self.parts[0][0].series_uid

    def add(
        self, part: tuple[Instance, ...], new: Sequence[Instance], d: Sequence[float] | np.ndarray
    ) -> None:
        """Join ``part``: its slices ``new`` (at ``d`` mm, sorted) continue the scan, a seam
        at the first of them."""
        if new:
            self.seams.append(float(d[0]))
        self.instances.extend(new)
        self.d.extend(float(v) for v in d)
        self.parts.append(part)


def _acquired(part: Sequence[Instance]) -> tuple[str, str, int, str]:
    """Which part was acquired first: (0008,0021) Series Date, (0008,0031) Series Time,
    (0020,0011) Series Number, then (0020,000E) Series Instance UID."""
    first = part[0]
    return (
        first.series_date or "~",
        first.series_time or "~",
        first.series_number if first.series_number is not None else 2**31,
        first.series_uid,
    )


def _step(d: np.ndarray) -> float:
    """Median positive step between sorted positions, mm (``inf`` for one slice)."""
    steps = np.diff(np.sort(d))
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else math.inf


def _label(series: Sequence[Instance]) -> str:
    zips = sorted({i.zip for i in series})
    return f"{series[0].series_uid} ({len(series)} slices, {', '.join(zips)})"


def _try_join(
    chain: _Chain,
    part: tuple[Instance, ...],
    d_part: np.ndarray,
    same: PixelCheck,
    cfg: CtConfig,
) -> tuple[str, str]:
    """Join ``part`` to ``chain`` when it belongs to it. Returns ("joined", note),
    ("apart", why) or ("far", why): "far" parts are not candidates (another region).

    The step is the smaller median slice step of the two (one slice each: its (0018,0050)
    Slice Thickness). Steps that differ keep the parts apart with ``ct.spacing_policy=reject``.
    A part that starts after the chain ends joins it (:func:`_join_after`); one that overlaps
    it joins only where every shared position holds the same slice (:func:`_join_overlap`)."""
    rtol, atol = cfg.spacing_rtol, cfg.spacing_atol
    step_part = _step(d_part)
    steps = [s for s in (chain.step, step_part) if math.isfinite(s)]
    thick = _median_thickness(part)
    if not steps and not (thick is not None and thick > 0):
        return "far", (
            f"single slices without (0018,0050) Slice Thickness: no step to join {chain.head}"
        )
    step = min(steps) if steps else float(thick or 0.0)  # one slice each: its thickness
    tol = atol + rtol * step
    order = np.argsort(d_part, kind="stable")
    ds = d_part[order]
    spacing_note = ""
    if math.isfinite(chain.step) and math.isfinite(step_part) and abs(chain.step - step_part) > tol:
        what = (
            f"slice step {step_part:.4g} mm differs from {chain.step:.4g} mm of series {chain.head}"
        )
        if cfg.spacing_policy == "reject":
            return "apart", f"{what}; ct.spacing_policy=reject keeps the parts apart"
        spacing_note = f"; {what}: resampled (ct.spacing_policy=resample)"
    sorted_part = [part[i] for i in order]
    if ds[0] > chain.end + atol:  # after the scan so far: abutting, a gap, or another region
        verdict, note = _join_after(chain, part, sorted_part, ds, step=step, tol=tol, cfg=cfg)
    else:
        verdict, note = _join_overlap(chain, part, sorted_part, ds, same, atol=atol)
    return verdict, note + spacing_note if verdict == "joined" else note


def _join_after(
    chain: _Chain,
    part: tuple[Instance, ...],
    sorted_part: list[Instance],
    ds: np.ndarray,
    *,
    step: float,
    tol: float,
    cfg: CtConfig,
) -> tuple[str, str]:
    """A part that starts after the chain ends: it abuts (the gap is one step), or a gap of
    missing slices is resampled across (``ct.spacing_policy=resample``, up to
    ``ct.stitch_max_gap`` mm beyond one step), or it is another region ("far")."""
    end = chain.end
    gap = float(ds[0] - end)
    if gap <= step + tol:
        chain.add(part, sorted_part, ds)
        return "joined", f"abuts at {ds[0]:.3f} mm (step {gap:.4g} mm)"
    beyond = gap - step
    if beyond > cfg.stitch_max_gap:
        return "far", (
            f"starts {gap:.4g} mm after series {chain.head} ends, more than one slice step "
            f"plus ct.stitch_max_gap={cfg.stitch_max_gap:g} mm: another region"
        )
    missing = max(round(gap / step) - 1, 1)
    what = (
        f"gap of {gap:.4g} mm between {end:.3f} and {ds[0]:.3f} mm along the normal "
        f"(about {missing} missing slice(s) of {step:.4g} mm)"
    )
    if cfg.spacing_policy == "reject":
        return "apart", f"{what}; ct.spacing_policy=reject keeps the parts apart"
    chain.add(part, sorted_part, ds)
    return "joined", f"{what}: resampled across it (ct.spacing_policy=resample)"


def _overlap_pairs(
    chain: _Chain, sorted_part: list[Instance], ds: np.ndarray, *, atol: float
) -> tuple[list[tuple[Instance, Instance, float]], str]:
    """(chain slice, part slice, position mm) for each position the two share, or why the
    positions do not coincide (a part slice with no counterpart within ``ct.spacing_atol``,
    or a different number of slices in the shared range)."""
    d_chain = np.asarray(chain.d)
    lo, hi = max(chain.start, float(ds[0])) - atol, min(chain.end, float(ds[-1])) + atol
    in_part = [k for k in range(len(ds)) if lo <= ds[k] <= hi]
    in_chain = [k for k in range(len(d_chain)) if lo <= d_chain[k] <= hi]
    where = f"overlaps series {chain.head} between {lo + atol:.3f} and {hi - atol:.3f} mm along"
    pairs: list[tuple[Instance, Instance, float]] = []
    matched_chain: set[int] = set()
    for k in in_part:
        j = int(np.argmin(np.abs(d_chain - ds[k])))
        if abs(d_chain[j] - ds[k]) > atol or j in matched_chain:
            return [], (
                f"{where} the normal, but its slice at {ds[k]:.3f} mm has no counterpart (within "
                f"ct.spacing_atol={atol:g} mm): the positions do not coincide"
            )
        matched_chain.add(j)
        pairs.append((chain.instances[j], sorted_part[k], float(ds[k])))
    if len(matched_chain) != len(in_chain):
        return [], (
            f"{where} the normal with {len(in_part)} slice(s) where series {chain.head} has "
            f"{len(in_chain)}: the positions do not coincide"
        )
    return pairs, ""


def _join_overlap(
    chain: _Chain,
    part: tuple[Instance, ...],
    sorted_part: list[Instance],
    ds: np.ndarray,
    same: PixelCheck,
    *,
    atol: float,
) -> tuple[str, str]:
    """A part that overlaps the chain joins it when every shared position holds the same
    slice (same pixels by ``same``); its copies of the shared slices are left out."""
    pairs, why_not = _overlap_pairs(chain, sorted_part, ds, atol=atol)
    if why_not:
        return "apart", why_not
    for a, b, dv in pairs:
        try:
            why = same(a, b)
        except (HiromlError, OSError, ValueError, IndexError, EOFError) as e:  # damaged slice
            return "apart", (
                f"overlaps series {chain.head}, but the slices at {dv:.3f} mm could not be "
                f"compared ({type(e).__name__}: {e})"
            )
        if why is not None:
            return "apart", (
                f"overlaps series {chain.head} at {len(pairs)} position(s) ({pairs[0][2]:.3f} "
                f"to {pairs[-1][2]:.3f} mm along the normal) with different pixels: at "
                f"{dv:.3f} mm {why}; another scan (contrast phase, repeat), not stitched"
            )
    left = {id(b) for _, b, _ in pairs}
    for a, b, dv in pairs:
        chain.left_out.append(
            (
                b,
                f"same position {dv:.3f} mm along the normal and same pixels as {a.sop_uid} of "
                f"series {a.series_uid}: overlap of a stitched scan, kept one",
            )
        )
    new_k = [k for k in range(len(ds)) if id(sorted_part[k]) not in left]
    chain.add(part, [sorted_part[k] for k in new_k], [float(ds[k]) for k in new_k])
    note = f"overlaps at {len(pairs)} position(s) with the same pixels (deduplicated)" + (
        f", continues at {ds[new_k[0]]:.3f} mm" if new_k else ", adds no slice"
    )
    return "joined", note


def _families(selected: Sequence[tuple[Instance, ...]]) -> list[list[int]]:
    """Candidate families: indices of the series that could be parts of one scan
    (:func:`_candidates` with the family's first series), in order."""
    families: list[list[int]] = []
    for idx, s in enumerate(selected):
        for fam in families:
            if _candidates(selected[fam[0]], s):
                fam.append(idx)
                break
        else:
            families.append([idx])
    return families


def _scan(series: tuple[Instance, ...], chain: _Chain | None) -> Scan:
    """The scan that starts with ``series``: the series alone, or the chain of parts joined
    to it, the slices of the part acquired first (:func:`_acquired`) first."""
    if chain is None or len(chain.parts) == 1:
        return Scan(instances=series, series=(series[0].series_uid,))
    head = min(chain.parts, key=_acquired)
    rest = [inst for inst in chain.instances if inst.series_uid != head[0].series_uid]
    heads = [inst for inst in chain.instances if inst.series_uid == head[0].series_uid]
    scan = Scan(
        instances=(*heads, *rest),
        series=tuple(p[0].series_uid for p in chain.parts),
        seams_mm=tuple(round(v, 4) for v in chain.seams),
        left_out=tuple(chain.left_out),
        notes=tuple(chain.notes),
        joined=tuple(p for p in chain.parts if p is not head),
    )
    log.debug("stitched series %s: %s", ", ".join(scan.series), "; ".join(chain.notes))
    return scan


def plan_scans(
    selected: Sequence[tuple[Instance, ...]], same: PixelCheck, cfg: CtConfig
) -> StitchPlan:
    """Group the exam's selected series into scans (see the module docstring).

    ``selected`` are the qualifying series (each a tuple of instances with geometry, as
    :func:`hiroml.ct.select.select_series` returns them); ``same`` compares two slices' pixels and
    is called only for positions where two candidate parts overlap. With ``cfg.stitch == "off"``
    every series is its own scan. A part joins the first scan it belongs to; a part kept apart
    from a candidate, and joined to none, comes back in ``StitchPlan.apart`` with the reason.
    """
    if cfg.stitch == "off" or len(selected) < 2:
        return StitchPlan(
            scans=tuple(Scan(instances=s, series=(s[0].series_uid,)) for s in selected)
        )

    def d_of(series: Sequence[Instance], n: np.ndarray) -> np.ndarray:
        return np.asarray([float(np.dot(n, i.position or (0.0, 0.0, 0.0))) for i in series])

    chains_of: dict[int, _Chain] = {}  # index of the first part -> its chain
    member_of: dict[int, int] = {}  # index of a part -> index of its chain's first part
    apart: dict[int, str] = {}
    for fam in _families(selected):
        n = _normal(selected[fam[0]][0])
        ds = {i: d_of(selected[i], n) for i in fam}
        order = sorted(
            fam, key=lambda i: (float(ds[i].min()), float(ds[i].max()), selected[i][0].series_uid)
        )
        chains: list[int] = []
        for i in order:
            part = selected[i]
            why_apart = ""
            for c in chains:
                verdict, text = _try_join(chains_of[c], part, ds[i], same, cfg)
                if verdict == "joined":
                    chains_of[c].notes.append(f"series {_label(part)} {text}")
                    member_of[i] = c
                    break
                if verdict == "apart" and not why_apart:
                    why_apart = text
            else:
                srt = np.sort(ds[i])
                k = np.argsort(ds[i], kind="stable")
                chains.append(i)
                member_of[i] = i
                chains_of[i] = _Chain(
                    parts=[part],
                    instances=[part[j] for j in k],
                    d=[float(v) for v in srt],
                    seams=[],
                    left_out=[],
                    notes=[],
                    step=_step(srt),
                )
                if why_apart:
                    apart[i] = why_apart

    scans = [_scan(s, chains_of.get(i)) for i, s in enumerate(selected) if member_of.get(i, i) == i]
    return StitchPlan(
        scans=tuple(scans),
        apart=tuple((selected[i], why) for i, why in sorted(apart.items())),
    )
