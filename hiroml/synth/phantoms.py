"""Phantoms: a chest radiograph as stored values, and an analytic chest in HU for CT.

Radiographs (:func:`phantom_chest_2d`) show a body outline, lungs, heart, spine, ribs and
clavicles; CT slices sample an analytic chest in world (patient) coordinates, in HU
(:func:`ct_hu_at`), so that every geometry (tilt, gaps, uneven spacing, split series) is
consistent.

Pixels are computed with elementwise float64 arithmetic (every operation correctly rounded,
in a fixed order) and integer sums only: no OpenCV, no BLAS, no reductions whose summation
order a library may change, no transcendental functions. The same random draws therefore
give the same stored values with every numpy and OpenCV version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Fixed-point scale of the integer blur (:func:`gaussian_blur`).
_BLUR_ONE = 1 << 16


def _grid(n: int) -> np.ndarray:
    """``n`` points evenly spaced from -1 to 1 (float64), each one correctly rounded quotient."""
    return (2 * np.arange(n, dtype=np.int64) - (n - 1)) / max(n - 1, 1)


def _source_coordinates(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre mapping of a resize from ``n_in`` to ``n_out`` samples: for each output
    sample the integer part ``i0`` and fraction ``t`` of its source coordinate
    ``(i + 0.5) * n_in / n_out - 0.5``."""
    fx = ((2 * np.arange(n_out, dtype=np.int64) + 1) * n_in - n_out) / (2 * n_out)
    i0 = np.floor(fx)
    return i0.astype(np.int64), fx - i0


def _resize_axis(a: np.ndarray, n_out: int, axis: int, cubic: bool) -> np.ndarray:
    """``a`` resampled to ``n_out`` samples along ``axis``: cubic convolution (a = -0.75, as
    OpenCV's INTER_CUBIC) or linear; samples beyond the edge repeat the edge."""
    n_in = a.shape[axis]
    i0, t = _source_coordinates(n_in, n_out)
    if cubic:
        c = -0.75
        t1, u, u1 = t + 1.0, 1.0 - t, 2.0 - t
        weights = [
            ((c * t1 - 5.0 * c) * t1 + 8.0 * c) * t1 - 4.0 * c,
            ((c + 2.0) * t - (c + 3.0)) * t * t + 1.0,
            ((c + 2.0) * u - (c + 3.0)) * u * u + 1.0,
            ((c * u1 - 5.0 * c) * u1 + 8.0 * c) * u1 - 4.0 * c,
        ]
        offsets = [-1, 0, 1, 2]
    else:
        weights, offsets = [1.0 - t, t], [0, 1]
    shape = [1] * a.ndim
    shape[axis] = n_out
    out = np.zeros((*a.shape[:axis], n_out, *a.shape[axis + 1 :]), dtype=np.float64)
    for wk, dk in zip(weights, offsets, strict=True):
        idx = np.clip(i0 + dk, 0, n_in - 1)
        out += np.take(a, idx, axis=axis) * wk.reshape(shape)
    return out


def resize(a: np.ndarray, shape: tuple[int, int], *, cubic: bool = False) -> np.ndarray:
    """``a`` (rows, columns) resampled to ``shape`` (rows, columns), float64, pixel centres
    aligned as in OpenCV's ``cv2.resize`` (INTER_CUBIC when ``cubic``, else INTER_LINEAR)."""
    out = _resize_axis(np.asarray(a, dtype=np.float64), shape[0], 0, cubic)
    return _resize_axis(out, shape[1], 1, cubic)


def _box_widths(sigma: float, passes: int) -> list[int]:
    """Odd widths of ``passes`` box filters whose sum of variances is nearest ``sigma**2``."""
    ideal = math.sqrt(12.0 * sigma * sigma / passes + 1.0)
    lo = math.floor(ideal)
    lo -= 1 - lo % 2
    n_lo = round((12.0 * sigma * sigma - passes * (lo * lo + 4 * lo + 3)) / (-4.0 * lo - 4.0))
    return [lo if k < n_lo else lo + 2 for k in range(passes)]


def _box(q: np.ndarray, width: int, axis: int) -> np.ndarray:
    """Mean of ``width`` (odd) neighbours along ``axis`` of integer ``q``, rounded half up;
    the edges mirror without repeating the edge sample (OpenCV's BORDER_REFLECT_101)."""
    if width == 1:
        return q
    r = width // 2
    pad = [(0, 0)] * q.ndim
    pad[axis] = (r + 1, r)
    c = np.cumsum(np.pad(q, pad, mode="reflect"), axis=axis)
    n = q.shape[axis]
    s = np.take(c, np.arange(width, width + n), axis=axis) - np.take(c, np.arange(n), axis=axis)
    return (s + r) // width


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """``a`` (rows, columns) blurred by about a Gaussian of ``sigma`` pixels: three box
    filters per axis on values in fixed point (1/65536), summed exactly in int64."""
    q = np.rint(np.asarray(a, dtype=np.float64) * _BLUR_ONE).astype(np.int64)
    for width in _box_widths(sigma, 3):
        q = _box(_box(q, width, 0), width, 1)
    return q / _BLUR_ONE


def phantom_chest_2d(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    bits_stored: int = 12,
    lateral: bool = False,
    noise: float = 0.01,
) -> np.ndarray:
    """A chest-radiograph phantom as stored values, numpy (rows, columns) uint16.

    High values are dense (bone, heart) as in (0028,0004) Photometric Interpretation
    MONOCHROME2; invert (``2**bits_stored - 1 - a``) for MONOCHROME1. The frontal view has a
    body outline with shoulders, two dark lung fields with diaphragm domes, heart and
    mediastinum, spine, ribs and clavicles; ``lateral=True`` draws a lateral projection.
    Positions jitter with ``rng`` so that every call gives a different image. Shapes larger
    than 1024 pixels are drawn at about 640 pixels and resized (fast); noise is full size.
    Draws from ``rng``: 8 uniform jitters, then one normal per output pixel.
    """
    full_h, full_w = shape
    f = min(1.0, 640.0 / max(full_h, full_w)) if max(full_h, full_w) > 1024 else 1.0
    h, w = max(round(full_h * f), 8), max(round(full_w * f), 8)
    y = _grid(h)[:, None]
    x = _grid(w)[None, :]
    ax = np.abs(x)
    j = rng.uniform(-0.04, 0.04, size=8)
    att: np.ndarray = np.full((h, w), 0.03)
    if not lateral:
        body = _ellipse(x, 0.84 + j[0], y - 0.2, 1.05)
        body |= _ellipse(x, 0.97 + j[1], y + 0.55, 0.3)
        att[body] = 0.55
        for side in (-1.0, 1.0):
            cx = side * (0.36 + j[2])
            dx = (x - cx) / 0.26
            dome = 0.38 + j[3] + 0.18 * (dx * dx)
            lung = _ellipse(x - cx, 0.26, y + 0.02, 0.6) & (y < dome)
            att[lung] = 0.16
        att[_ellipse(x - 0.11 - j[4], 0.25, y - 0.24, 0.25)] = 0.6
        att[(np.abs(x - 0.02) < 0.1) & (y < 0.25) & (y > -0.75)] = 0.6
        spine = (np.abs(x - j[5]) < 0.06) & body
        att[spine] += 0.22
        bend = ax / 0.6
        bend = 0.14 * (bend * bend)
        for k in range(10):
            yk = -0.62 + k * 0.115 + j[6]
            rib = np.abs(y - (yk + bend)) < 0.016
            att[rib & (ax > 0.08) & (ax < 0.72) & (y < 0.5) & body] += 0.2
        clav = np.abs(y - (-0.7 + 0.12 * ax + j[7])) < 0.022
        att[clav & (ax > 0.05) & (ax < 0.58)] += 0.25
    else:
        body = _ellipse(x, 0.62 + j[0], y - 0.15, 1.1)
        att[body] = 0.55
        lung = _ellipse(x + 0.02, 0.44 + j[1], y + 0.02, 0.56)
        att[lung & (y < 0.42 + j[2])] = 0.2
        att[_ellipse(x + 0.2 + j[3], 0.22, y - 0.22, 0.24)] = 0.55
        for k in range(12):
            yk = -0.7 + k * 0.13
            vert = (np.abs(x - 0.38 - j[4]) < 0.07) & (np.abs(y - yk) < 0.05)
            att[vert & body] = 0.85
        att[(np.abs(x + 0.52 + j[5]) < 0.025) & (y > -0.55) & (y < 0.2)] = 0.8
    # Each person's own texture (lung markings, soft tissue): a smooth random field, +-10 %,
    # from a generator seeded by this image's jitter (the caller's stream is not consumed),
    # so that two patients are never near duplicates of each other (hiroml.exams.neardup).
    tex_rng = np.random.default_rng(np.frombuffer(j.tobytes(), dtype=np.uint32))
    cells = tex_rng.normal(0.0, 1.0, size=(24, 24))
    att *= 1.0 + 0.1 * resize(cells, (h, w), cubic=True)
    att = gaussian_blur(att, max(w / 256.0, 0.6))
    att += 0.05 * (y + 1.0)  # heel effect
    if (h, w) != (full_h, full_w):
        att = resize(att, (full_h, full_w))
    att += rng.normal(0.0, noise, size=(full_h, full_w))
    vmax = (1 << bits_stored) - 1
    out = np.clip(att, 0.0, 1.0) * (vmax * 0.95)
    return np.rint(out).astype(np.uint16)


def _ellipse(dx: np.ndarray, rx: float, dy: np.ndarray, ry: float) -> np.ndarray:
    """``(dx / rx)**2 + (dy / ry)**2 <= 1``, broadcast, with products instead of powers."""
    u, v = dx / rx, dy / ry
    return u * u + v * v <= 1.0


def ct_hu_at(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, *, scale: float = 1.0, contrast: bool = False
) -> np.ndarray:
    """HU of the analytic chest phantom at patient coordinates (LPS, mm), broadcast.

    In HU: air -1000 outside the body, subcutaneous fat -100, soft tissue and heart 40
    (blood 300 with ``contrast``), lungs -850, spine and ribs 700. The chest spans z in about
    [-140, 140] mm; anterior is -y.
    """
    s = scale
    hu = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), -1000.0, dtype=np.float32)
    ex, ey = (x / (165 * s)) ** 2, ((y - 5) / (115 * s)) ** 2
    body = ex + ey <= 1.0
    hu[body] = -100.0
    inner = (x / (150 * s)) ** 2 + ((y - 5) / (100 * s)) ** 2 <= 1.0
    hu[inner] = 40.0
    for side in (-1.0, 1.0):
        lung = ((x - side * 72 * s) / (55 * s)) ** 2 + ((y + 2) / (72 * s)) ** 2 + (
            (z - 5) / 150.0
        ) ** 2 <= 1.0
        hu[lung] = -850.0
    heart = ((x - 18 * s) / (52 * s)) ** 2 + ((y + 22) / (48 * s)) ** 2 + ((z + 55) / 60.0) ** 2
    hu[heart <= 1.0] = 300.0 if contrast else 40.0
    aorta = ((x + 18 * s) ** 2 + (y - 45) ** 2) <= (13 * s) ** 2
    hu[aorta & (np.abs(z) < 160)] = 300.0 if contrast else 45.0
    spine = (x**2 + (y - 82 * s) ** 2) <= (19 * s) ** 2
    hu[spine] = 700.0
    canal = (x**2 + (y - 107 * s) ** 2) <= (7 * s) ** 2
    hu[canal] = 10.0
    ring = (x / (142 * s)) ** 2 + ((y - 5) / (96 * s)) ** 2
    ribs = (np.abs(ring - 1.0) < 0.06) & (np.mod(z + 200.0, 26.0) < 9.0) & (y > -60 * s)
    hu[ribs] = 700.0
    sternum = (np.abs(x) < 14 * s) & (np.abs(y + 100 * s) < 7 * s)
    hu[sternum & (np.abs(z) < 120)] = 600.0
    return hu


def render_ct_slice(
    position: Sequence[float],
    shape: tuple[int, int],
    pixel_spacing: tuple[float, float],
    rng: np.random.Generator,
    *,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    noise_hu: float = 10.0,
    scale: float = 1.0,
    contrast: bool = False,
) -> np.ndarray:
    """One CT image in HU, numpy (rows, columns) float32, sampled from :func:`ct_hu_at`.

    ``position`` is (0020,0032) Image Position (Patient) of the first pixel's centre,
    ``orientation`` (0020,0037) Image Orientation (Patient) (row cosines, then column
    cosines), ``pixel_spacing`` (0028,0030) as (row spacing, column spacing) in mm.
    """
    rows, cols = shape
    p = np.asarray(position, dtype=np.float64)
    rdir = np.asarray(orientation[:3], dtype=np.float64)
    cdir = np.asarray(orientation[3:], dtype=np.float64)
    c = np.arange(cols, dtype=np.float64)[None, :] * pixel_spacing[1]
    r = np.arange(rows, dtype=np.float64)[:, None] * pixel_spacing[0]
    xyz = [p[k] + c * rdir[k] + r * cdir[k] for k in range(3)]
    hu = ct_hu_at(xyz[0], xyz[1], xyz[2], scale=scale, contrast=contrast)
    hu = np.broadcast_to(hu, (rows, cols)).astype(np.float32)
    if noise_hu > 0:
        hu = hu + rng.normal(0.0, noise_hu, size=(rows, cols)).astype(np.float32)
    return hu


def phantom_chest_3d(
    shape_zyx: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    spacing_zyx: tuple[float, float, float] | None = None,
    noise_hu: float = 10.0,
) -> np.ndarray:
    """A chest CT phantom volume in HU, numpy (z, y, x) float32.

    Slices are axial and centred on the chest; ``spacing_zyx`` (mm) defaults to a 360 mm
    field of view and 280 mm of z coverage.
    """
    nz, ny, nx = shape_zyx
    if spacing_zyx is None:
        spacing_zyx = (280.0 / nz, 360.0 / ny, 360.0 / nx)
    dz, dy, dx = spacing_zyx
    out = np.empty(shape_zyx, dtype=np.float32)
    x0, y0 = -dx * (nx - 1) / 2.0, -dy * (ny - 1) / 2.0
    z0 = -dz * (nz - 1) / 2.0
    for k in range(nz):
        out[k] = render_ct_slice((x0, y0, z0 + k * dz), (ny, nx), (dy, dx), rng, noise_hu=noise_hu)
    return out
