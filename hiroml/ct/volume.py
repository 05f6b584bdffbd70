"""CT volume geometry: slice order, spacing, tilt, duplicates and resampling onto an even grid
(numpy (z, y, x), LPS, mm)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from hiroml.config import CtConfig
from hiroml.ct.hu import _as_int16_if_lossless, _frame_raw, _HuVolume, _PixelDesc, _stored_values
from hiroml.ct.select import _INT16, _ORIENTATION_ATOL, _fmt, _frame_key_close
from hiroml.errors import GeometryError
from hiroml.records import CtVolume, Instance


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
