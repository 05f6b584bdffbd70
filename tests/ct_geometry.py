"""Reusable ground-truth check for CT volumes: the DICOM itself is the reference.

Every original pixel (row j, column i) of a slice has a physical position
``IPP + i * dx * r + j * dy * c`` ((0020,0032) Image Position (Patient), (0020,0037) Image
Orientation (Patient) = r, c, (0028,0030) Pixel Spacing = [dy, dx]). Sampling the volume at that
position must give the pixel's HU (pydicom's own modality LUT, independent of hiroml), and no
original pixel may fall outside the volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from hiroml.records import CtVolume


@dataclass(frozen=True)
class GeometryReport:
    n_pixels: int  # original pixels checked
    max_abs_error_hu: float
    max_index_offgrid: float  # largest distance of a continuous index from the integer grid


def _unpack(volume: CtVolume | sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(array (z, y, x) float64, spacing (3,), origin (3,), direction 3x3 (columns = axes))."""
    if isinstance(volume, CtVolume):
        arr = volume.array
        sp, org, dr = volume.spacing_xyz, volume.origin_xyz, volume.direction
    else:
        arr = sitk.GetArrayFromImage(volume)
        sp, org, dr = volume.GetSpacing(), volume.GetOrigin(), volume.GetDirection()
    return (
        np.asarray(arr, dtype=np.float64),
        np.asarray(sp, float),
        np.asarray(org, float),
        np.asarray(dr, float).reshape(3, 3),
    )


def slice_hu(ds: Dataset) -> np.ndarray:
    """Truth HU of one slice, through pydicom's decoder and modality LUT."""
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)


def pixel_positions(ds: Dataset, jj: np.ndarray, ii: np.ndarray) -> np.ndarray:
    """Physical positions (N, 3) mm of pixels (row jj, column ii) of ``ds``."""
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    dy, dx = (float(v) for v in ds.PixelSpacing)
    return ipp[None, :] + (ii[:, None] * dx) * iop[None, :3] + (jj[:, None] * dy) * iop[None, 3:]


def continuous_index(
    points: np.ndarray, spacing: np.ndarray, origin: np.ndarray, direction: np.ndarray
) -> np.ndarray:
    """(N, 3) continuous (x, y, z) indices of physical points (any invertible direction)."""
    return np.linalg.solve(direction * spacing[None, :], (points - origin[None, :]).T).T


def trilinear(arr: np.ndarray, idx_xyz: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``arr`` (z, y, x) at continuous (x, y, z) indices inside it."""
    size = np.array([arr.shape[2], arr.shape[1], arr.shape[0]])
    idx = np.clip(idx_xyz, 0, size - 1)
    i0 = np.minimum(np.floor(idx).astype(int), np.maximum(size - 2, 0))
    f = idx - i0
    i1 = np.minimum(i0 + 1, size - 1)
    out = np.zeros(len(idx))
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = (
                    (f[:, 0] if dx else 1 - f[:, 0])
                    * (f[:, 1] if dy else 1 - f[:, 1])
                    * (f[:, 2] if dz else 1 - f[:, 2])
                )
                x = i1[:, 0] if dx else i0[:, 0]
                y = i1[:, 1] if dy else i0[:, 1]
                z = i1[:, 2] if dz else i0[:, 2]
                out += w * arr[z, y, x]
    return out


def assert_pixels_at_positions(
    volume: CtVolume | sitk.Image,
    datasets: Sequence[Dataset],
    *,
    exact: bool,
    atol_hu: float = 0.0,
    sample: int | None = None,
    seed: int = 0,
    index_atol: float = 1e-3,
    max_bad_fraction: float = 0.0,
    edge_atol_hu: float | None = None,
) -> GeometryReport:
    """Check every original pixel of ``datasets`` (or, per slice, the 4 corners plus a seeded
    sample of ``sample`` pixels) against ``volume``.

    - the pixel's continuous index must lie within [0, size - 1] (``index_atol`` voxels slack);
    - ``exact``: the index must be on the voxel grid (within ``index_atol`` voxels) and the
      voxel must equal the pixel's HU exactly;
    - otherwise the trilinear sample there must be within ``atol_hu`` of the pixel's HU, for
      all but ``max_bad_fraction`` of the checked pixels of each slice (sharp phantom edges
      defeat any interpolation; containment is never relaxed). ``edge_atol_hu`` (default
      ``atol_hu``) applies instead to pixels in the first/last row/column of a slice, where a
      resampled grid may reach half a voxel beyond the data and repeat the edge value.
    """
    arr, sp, org, dr = _unpack(volume)
    size = np.array([arr.shape[2], arr.shape[1], arr.shape[0]], dtype=float)
    rng = np.random.default_rng(seed)
    n_checked = 0
    max_err = 0.0
    max_off = 0.0
    for ds in datasets:
        rows, cols = int(ds.Rows), int(ds.Columns)
        hu = slice_hu(ds)
        if sample is None or sample >= rows * cols:
            jj, ii = (
                a.ravel() for a in np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            )
        else:
            jj = np.concatenate([[0, 0, rows - 1, rows - 1], rng.integers(0, rows, sample)])
            ii = np.concatenate([[0, cols - 1, 0, cols - 1], rng.integers(0, cols, sample)])
        pts = pixel_positions(ds, jj, ii)
        idx = continuous_index(pts, sp, org, dr)
        outside = (idx < -index_atol).any(axis=1) | (idx > size - 1 + index_atol).any(axis=1)
        assert not outside.any(), (
            f"{int(outside.sum())} pixel(s) of slice {ds.SOPInstanceUID} at "
            f"{ds.ImagePositionPatient} fall outside the volume, e.g. index {idx[outside][0]} "
            f"for size {size}"
        )
        truth = hu[jj, ii]
        off = float(np.abs(idx - np.round(idx)).max())
        max_off = max(max_off, off)
        if exact:
            assert off <= index_atol, (
                f"slice {ds.SOPInstanceUID}: pixels off the voxel grid by {off:.4g} voxels"
            )
            r = np.round(idx).astype(int)
            got = arr[r[:, 2], r[:, 1], r[:, 0]]
            bad = got != truth
            assert not bad.any(), (
                f"slice {ds.SOPInstanceUID}: {int(bad.sum())} voxel(s) differ from the pixels, "
                f"e.g. pixel (row {jj[bad][0]}, col {ii[bad][0]}) HU {truth[bad][0]} vs "
                f"volume {got[bad][0]} at index {r[bad][0]}"
            )
        else:
            got = trilinear(arr, idx)
            edge = (jj == 0) | (ii == 0) | (jj == rows - 1) | (ii == cols - 1)
            tol = np.where(edge, atol_hu if edge_atol_hu is None else edge_atol_hu, atol_hu)
            err = np.abs(got - truth) - (tol - atol_hu)  # excess over the pixel's own tolerance
            k = int(np.argmax(err))
            max_err = max(max_err, float(err[k]))
            assert (err > atol_hu).mean() <= max_bad_fraction, (
                f"slice {ds.SOPInstanceUID}: pixel (row {jj[k]}, col {ii[k]}) HU {truth[k]:.2f} "
                f"but the volume gives {got[k]:.2f} at index {idx[k]} (atol {atol_hu} HU; "
                f"{(err > atol_hu).mean():.1%} of pixels beyond it, {max_bad_fraction:.1%} allowed)"
            )
        n_checked += len(jj)
    # cross-check the vectorised index maths with SimpleITK on a few points
    img = volume if isinstance(volume, sitk.Image) else None
    if img is None:
        img = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
        img.SetSpacing(tuple(sp))
        img.SetOrigin(tuple(org))
        img.SetDirection(tuple(dr.ravel()))
    ds = datasets[0]
    p = pixel_positions(ds, np.array([0, int(ds.Rows) - 1]), np.array([int(ds.Columns) - 1, 0]))
    mine = continuous_index(p, sp, org, dr)
    theirs = np.array([img.TransformPhysicalPointToContinuousIndex(tuple(q)) for q in p])
    np.testing.assert_allclose(mine, theirs, atol=1e-6)
    return GeometryReport(n_checked, max_err, max_off)
