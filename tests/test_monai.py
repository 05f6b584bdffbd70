"""HiromlDataset(monai=True): MetaTensor images with their RAS affine, so that MONAI's
Orientationd, Spacingd and RandAffined act in physical space; on a stored CT of the tiny
build, checked against SimpleITK's physical positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientationd, RandAffined, Spacingd

from hiroml import HiromlDataset, load_sitk

BONE_HU = 300.0


def _world_centroid(image: MetaTensor, threshold: float = BONE_HU) -> np.ndarray:
    """The RAS centroid (mm) of the voxels above ``threshold`` HU."""
    arr = image.detach().cpu().numpy()[0]
    idx = np.argwhere(arr > threshold).astype(np.float64)
    assert len(idx) > 50, "no bone in the volume"
    centre = np.append(idx.mean(axis=0), 1.0)
    return (np.asarray(image.affine, dtype=np.float64) @ centre)[:3]


def _assert_voxels_at_physical_points(image: MetaTensor, img: sitk.Image, seed: int) -> None:
    """Each sampled voxel of ``image`` holds SimpleITK's linear interpolation of the stored
    volume ``img`` at the physical point ``image.affine`` (RAS) gives it."""
    rng = np.random.default_rng(seed)
    affine = np.asarray(image.affine, dtype=np.float64)
    checked = 0
    for _ in range(300):
        ijk = [int(rng.integers(0, n)) for n in image.shape[1:]]
        ras = (affine @ [*ijk, 1])[:3]
        ci = img.TransformPhysicalPointToContinuousIndex((-ras[0], -ras[1], ras[2]))
        if all(0 <= c <= n - 1 for c, n in zip(ci, img.GetSize(), strict=True)):
            want = img.EvaluateAtContinuousIndex(ci, sitk.sitkLinear)
            assert abs(float(image[0, ijk[0], ijk[1], ijk[2]]) - want) < 0.01, (ijk, ras)
            checked += 1
    assert checked > 100


@pytest.fixture(scope="module")
def ct(tiny_build_clinical: Path) -> HiromlDataset:
    ds = HiromlDataset(tiny_build_clinical, split=None, modality="ct", monai=True)
    assert len(ds) > 0
    return ds


def test_affine_matches_sitk_physical_points(ct: HiromlDataset) -> None:
    for i in range(len(ct)):
        s = ct[i]
        image = s["image"]
        assert isinstance(image, MetaTensor)
        img = load_sitk(ct.out_dir, s["sample_key"])
        assert tuple(image.shape) == (1, *img.GetSize())  # MONAI layout: (1, x, y, z)
        arr = img.GetSize()
        rng = np.random.default_rng(i)
        for _ in range(5):
            ijk = [int(rng.integers(0, n)) for n in arr]
            lps = np.asarray(img.TransformIndexToPhysicalPoint(ijk))
            ras = (np.asarray(image.affine) @ [*ijk, 1])[:3]
            np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-4)
            assert float(image[0, ijk[0], ijk[1], ijk[2]]) == float(img[ijk])
        assert image.meta["space"] == "RAS"
        assert image.meta["filename_or_obj"] == s["sample_key"]


def test_orientation_and_spacing_keep_physical_positions(ct: HiromlDataset) -> None:
    s = ct[0]
    before = _world_centroid(s["image"])
    img = load_sitk(ct.out_dir, s["sample_key"])
    lps = Orientationd(keys="image", axcodes="LPS", labels=None)(s)["image"]
    # every voxel after reorientation holds the value SimpleITK has at its physical point
    rng = np.random.default_rng(0)
    for _ in range(20):
        ijk = [int(rng.integers(0, n)) for n in lps.shape[1:]]
        ras = (np.asarray(lps.affine) @ [*ijk, 1])[:3]
        src = img.TransformPhysicalPointToIndex((-ras[0], -ras[1], ras[2]))
        assert float(lps[0, ijk[0], ijk[1], ijk[2]]) == float(img[src])
    np.testing.assert_allclose(_world_centroid(lps), before, atol=1e-3)
    resampled = Spacingd(keys="image", pixdim=(2.0, 2.0, 2.0), mode="bilinear")({"image": lps})
    out = resampled["image"]
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out.affine)[:3, :3], axis=0), 2.0)
    _assert_voxels_at_physical_points(out, img, seed=1)


def test_rand_affine_keeps_voxels_at_their_physical_points(ct: HiromlDataset) -> None:
    s = ct[0]
    img = load_sitk(ct.out_dir, s["sample_key"])
    t = Compose(
        [
            Orientationd(keys="image", axcodes="RAS", labels=None),
            RandAffined(
                keys="image", prob=1.0, translate_range=(8, 8, 8), rotate_range=(0.2, 0.2, 0.2),
                mode="bilinear", padding_mode="zeros",
            ),
        ]
    )  # fmt: skip
    t.set_random_state(seed=3)
    moved = t(s)["image"]
    assert isinstance(moved, MetaTensor)
    # the grid was rotated and shifted (the affine says how) ...
    assert not np.allclose(np.asarray(moved.affine), np.asarray(s["image"].affine), atol=0.1)
    # ... and every voxel still holds the anatomy at its physical position
    _assert_voxels_at_physical_points(moved, img, seed=2)


def test_radiographs_get_an_identity_affine(tiny_build_clinical: Path) -> None:
    ds = HiromlDataset(tiny_build_clinical, split="train", modality="cxr", monai=True)
    image = ds[0]["image"]
    assert isinstance(image, MetaTensor) and image.shape[0] == 1 and image.ndim == 3
    assert torch.equal(image.affine, torch.eye(4, dtype=torch.float64))
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    assert next(iter(loader))["image"].shape[0] == 2
