"""MONAI interop (``pip install "hiroml[monai]"``): samples whose ``image`` is a MONAI
``MetaTensor`` carrying its affine, so MONAI's dictionary transforms (``Orientationd``,
``Spacingd``, ``RandAffined``, ...) work in physical space.

    ds = hiroml.HiromlDataset(out, split="train", modality="ct", monai=True)
    # or, equivalently: HiromlDataset(..., transform=Compose([ToMetaTensord(), ...]))

CT: the (1, z, y, x) volume in HU becomes a (1, x, y, z) ``MetaTensor``, the layout MONAI's
``LoadImage`` gives a NIfTI or DICOM series, with the 4 x 4 affine from voxel index (i, j, k)
= (x, y, z) to RAS millimetres, as MONAI expects::

    affine = diag(-1, -1, 1, 1) @ [[direction (3x3, columns = axes) * spacing_xyz, origin_xyz],
                                   [0, 0, 0, 1]]

(the manifest's ``spacing_xyz``, ``origin_xyz`` and ``direction`` are DICOM patient
coordinates, LPS; the diagonal turns them into RAS). The MetaTensor's ``meta`` has
``affine``, ``original_affine``, ``spatial_shape``, ``space`` = ``"RAS"`` and
``filename_or_obj`` = the sample key. Radiographs stay (1, H, W) with an identity affine:
the manifest records no physical pixel spacing for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hiroml.data import Sample

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_affine(
    spacing_xyz: Sequence[float], origin_xyz: Sequence[float], direction: Sequence[float]
) -> np.ndarray:
    """The 4 x 4 affine from voxel index (x, y, z) to RAS mm, from SimpleITK geometry in LPS
    (``direction``: 9 numbers, row-major, columns are the axis directions)."""
    d = np.asarray([float(v) for v in direction], dtype=np.float64)
    sp = np.asarray([float(v) for v in spacing_xyz], dtype=np.float64)
    org = np.asarray([float(v) for v in origin_xyz], dtype=np.float64)
    if d.size != 9 or sp.size != 3 or org.size != 3:
        raise ValueError(
            f"CT geometry needs 3 spacings, 3 origin and 9 direction numbers; got "
            f"{sp.size}, {org.size} and {d.size}"
        )
    lps = np.eye(4)
    lps[:3, :3] = d.reshape(3, 3) * sp[None, :]
    lps[:3, 3] = org
    out: np.ndarray = LPS_TO_RAS @ lps
    return out


class ToMetaTensord:
    """A sample transform: ``sample[key]`` as a MONAI ``MetaTensor`` with its RAS affine
    (see the module docstring); the other entries are left as they are."""

    def __init__(self, key: str = "image") -> None:
        self.key = key

    def __call__(self, sample: Sample) -> Sample:
        from monai.data import MetaTensor

        image = sample[self.key]
        out = dict(sample)
        meta: dict[str, Any] = {"filename_or_obj": str(sample.get("sample_key", ""))}
        if image.ndim == 4 and all(k in sample for k in ("spacing", "origin", "direction")):
            affine = torch.as_tensor(
                ras_affine(sample["spacing"], sample["origin"], sample["direction"]),
                dtype=torch.float64,
            )
            image = image.permute(0, 3, 2, 1)  # (1, z, y, x) -> (1, x, y, z)
            meta["space"] = "RAS"
        else:
            affine = torch.eye(4, dtype=torch.float64)
        meta["spatial_shape"] = np.asarray(image.shape[1:])
        meta["original_affine"] = affine.clone()
        out[self.key] = MetaTensor(image, affine=affine, meta=meta)
        return out


def to_monai(sample: Sample) -> Sample:
    """:class:`ToMetaTensord` on ``image``."""
    return ToMetaTensord()(sample)
