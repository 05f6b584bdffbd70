"""Thumbnails of radiographs and CT planes for the report."""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import pandas as pd
from PIL import Image

from hiroml.report.html import (
    CT_THUMB_PX,
    CT_WINDOW,
    MISSING,
    THUMB_PX,
    ReadArray,
    T,
    _col,
    _keys,
    _png_uri,
    _text,
)
from hiroml.store.reader import cell_list

log = logging.getLogger(__name__)


def _to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``arr`` mapped linearly from [lo, hi] (default: its own finite min/max) to uint8."""
    a = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(a)
    if lo is None or hi is None:
        if not finite.any():
            return np.zeros(a.shape, np.uint8)
        lo = float(a[finite].min()) if lo is None else lo
        hi = float(a[finite].max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    out = (np.where(finite, a, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0.0, 255.0).round().astype(np.uint8)


def _resized(u8: np.ndarray, width_mm: float, height_mm: float, px: int) -> Image.Image:
    """A 2-D uint8 array as an image whose longest side is ``px``, shaped by its physical
    width and height (so anisotropic pixels are shown with their true aspect)."""
    img = Image.fromarray(np.ascontiguousarray(u8), mode="L")
    if not (math.isfinite(width_mm) and math.isfinite(height_mm)) or min(width_mm, height_mm) <= 0:
        width_mm, height_mm = float(u8.shape[1]), float(u8.shape[0])
    k = px / max(width_mm, height_mm)
    size = (max(1, round(width_mm * k)), max(1, round(height_mm * k)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def cxr_thumbnail(arr: np.ndarray, *, px: int = THUMB_PX) -> Image.Image:
    """A radiograph (H, W) as a grey thumbnail, normalised by its own min/max (float16 in
    [0, 1], uint8 and uint16 storage all work); a leading axis of length 1 is dropped and a
    3-D array shows its middle slice."""
    a = np.asarray(arr)
    while a.ndim > 2:
        a = a[a.shape[0] // 2]
    if a.ndim < 2 or a.size == 0:
        raise ValueError(f"not an image: shape {np.asarray(arr).shape}")
    return _resized(_to_uint8(a), float(a.shape[1]), float(a.shape[0]), px)


def ct_planes(
    vol: np.ndarray,
    spacing_xyz: Sequence[float] | None = None,
    *,
    direction: Sequence[float] | None = None,
    window: tuple[float, float] = CT_WINDOW,
    px: int = CT_THUMB_PX,
) -> list[tuple[str, Image.Image]]:
    """Mid-slices of a CT volume, numpy (z, y, x) in HU, in the axial, coronal and sagittal
    planes under ``window`` (width, level in HU), each with the physical aspect given by
    ``spacing_xyz`` (mm, SimpleITK (x, y, z) order; isotropic when missing). Coronal and
    sagittal planes are shown head up when the slice index runs towards the head (the
    z component of the third ``direction`` column is positive, or unknown)."""
    v = np.asarray(vol)
    if v.ndim == 4 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 3 or v.size == 0:
        raise ValueError(f"not a volume: shape {v.shape}")
    sp = [float(s) for s in cell_list(spacing_xyz)]
    sx, sy, sz = sp if len(sp) == 3 and all(s > 0 for s in sp) else (1.0, 1.0, 1.0)
    d = [float(x) for x in cell_list(direction)]
    head_up = not (len(d) == 9 and d[8] < 0)
    width, level = window
    lo, hi = level - width / 2.0, level + width / 2.0
    nz, ny, nx = v.shape
    axial = v[nz // 2]
    coronal = v[:, ny // 2, :]
    sagittal = v[:, :, nx // 2]
    if head_up:
        coronal, sagittal = coronal[::-1], sagittal[::-1]
    return [
        ("axial", _resized(_to_uint8(axial, lo, hi), nx * sx, ny * sy, px)),
        ("coronal", _resized(_to_uint8(coronal, lo, hi), nx * sx, nz * sz, px)),
        ("sagittal", _resized(_to_uint8(sagittal, lo, hi), ny * sy, nz * sz, px)),
    ]


def _pick(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to ``n`` rows, one per patient first, deterministic (by sample key)."""
    if rows.empty or n <= 0:
        return rows.iloc[:0]
    r = rows.assign(_pid=_keys(_col(rows, "patient_id")), _key=_keys(_col(rows, "sample_key")))
    r = r.sort_values("_key", kind="stable")
    r = r.assign(_rank=r.groupby("_pid", sort=False).cumcount())
    return r.sort_values(["_rank", "_key"], kind="stable").head(n)


def _read(read_array: ReadArray, key: str) -> np.ndarray | None:
    try:
        return read_array(key)
    except Exception:  # a broken sample must not cost the whole report
        log.warning("report: could not read sample %s", key, exc_info=True)
        return None


def _drawn(read_array: ReadArray, key: str, draw: Callable[[np.ndarray], T], what: str) -> T | None:
    """``draw`` applied to sample ``key``'s array, or None (logged) when the sample cannot be
    read or ``draw`` finds no ``what`` in it (ValueError)."""
    arr = _read(read_array, key)
    if arr is None:
        return None
    try:
        return draw(arr)
    except ValueError:
        log.warning("report: sample %s has no drawable %s", key, what, exc_info=True)
        return None


def _figure(uri: str | None, caption_lines: Sequence[str], *, alt: str) -> str:
    cap = "<br>".join(html.escape(c) for c in caption_lines if c)
    if uri is None:
        pic = '<div class="broken">could not read</div>'
    else:
        pic = f'<img src="{uri}" alt="{html.escape(alt, quote=True)}">'
    return f"<figure>{pic}<figcaption>{cap}</figcaption></figure>"


def _cxr_sheet(rows: pd.DataFrame, read_array: ReadArray, n: int) -> str:
    figs = []
    for r in _pick(rows, n).to_dict("records"):
        key = _text(r.get("sample_key"))
        uri = _drawn(read_array, key, lambda a: _png_uri(cxr_thumbnail(a)), "image")
        view = _text(r.get("view"))
        caption = [f"{view} · {_text(r.get('patient_id'))}", _text(r.get("description")), key]
        figs.append(_figure(uri, caption, alt=f"{view} radiograph of {_text(r.get('patient_id'))}"))
    return f'<div class="sheet">{"".join(figs)}</div>'


def _ct_sheet(rows: pd.DataFrame, read_array: ReadArray, n: int) -> str:
    items = []
    for r in _pick(rows, n).to_dict("records"):
        key = _text(r.get("sample_key"))
        draw = partial(ct_planes, spacing_xyz=r.get("spacing_xyz"), direction=r.get("direction"))
        planes = _drawn(read_array, key, draw, "volume") or []
        if planes:
            imgs = "".join(
                f'<figure class="plane"><img src="{_png_uri(img)}" alt="{name} mid-slice">'
                f"<figcaption>{name}</figcaption></figure>"
                for name, img in planes
            )
        else:
            imgs = '<div class="broken">could not read</div>'
        shape = "×".join(_text(x) for x in cell_list(r.get("shape")))
        spacing = " × ".join(f"{float(s):.2g}" for s in cell_list(r.get("spacing_xyz")))
        cap = [
            f"{_text(r.get('patient_id'))} · {_text(r.get('description'))}",
            f"shape (z, y, x) {shape or MISSING}; spacing (x, y, z) {spacing or MISSING} mm",
            key,
        ]
        parts = cell_list(r.get("stitched_series"))
        if parts:
            seams = ", ".join(
                f"{float(mm):.1f} mm (slice {_text(z)})"
                for mm, z in zip(
                    cell_list(r.get("seams_mm")), cell_list(r.get("seam_slices")), strict=False
                )
            )
            cap.append(f"stitched from {len(parts)} series; seams at {seams or MISSING}")
        capt = "<br>".join(html.escape(c) for c in cap)
        items.append(f'<div class="ct-item"><div class="planes">{imgs}</div><p>{capt}</p></div>')
    return f'<div class="ct-sheet">{"".join(items)}</div>'
