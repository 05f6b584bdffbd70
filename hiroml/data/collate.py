"""Batching samples whose images differ in shape (CT volumes of 64 and 65 slices).

``torch.utils.data.default_collate`` stacks images of one shape only. :class:`PadCollate`
pads each image at its high end (the last slices, rows and columns) to the batch's largest
shape, so every voxel keeps its index and the sample's ``origin``, ``spacing`` and
``direction`` stay valid, and says which voxels are real::

    loader = DataLoader(HiromlDataset(out, "train", modality="ct"), batch_size=2,
                        collate_fn=PadCollate(fill=-1024.0))
    batch["image"]  # (B, 1, D, H, W), the padding set to ``fill`` (HU: -1024, air)
    batch["mask"]   # (B, 1, D, H, W) bool, True on each sample's own voxels
    batch["size"]   # (B, 4) int64, each image's own shape (1, D, H, W)

Every other key is batched by ``default_collate``. :class:`~hiroml.data.lightning.HiromlDataModule`
uses it for CT. A class, not a closure, so that it pickles into DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import default_collate

from hiroml.data import Sample

#: Air in HU: the padding of a CT volume.
AIR_HU = -1024.0


class PadCollate:
    """``collate_fn`` padding ``samples[k][key]`` to the batch's largest shape with ``fill``;
    adds ``mask`` (bool, the image's shape, True on real voxels) and ``size`` (each image's
    own shape). Images must have the same number of dimensions and dtype."""

    def __init__(self, fill: float = AIR_HU, *, key: str = "image") -> None:
        self.fill = fill
        self.key = key

    def __call__(self, samples: Sequence[Sample]) -> Sample:
        images = [s[self.key] for s in samples]
        shapes = [tuple(im.shape) for im in images]
        if len({len(s) for s in shapes}) != 1:
            raise ValueError(f"PadCollate: {self.key} tensors of different ranks: {shapes}")
        shape = tuple(max(sizes) for sizes in zip(*shapes, strict=True))
        batch = torch.full((len(images), *shape), self.fill, dtype=images[0].dtype)
        mask = torch.zeros((len(images), *shape), dtype=torch.bool)
        for b, (im, s) in enumerate(zip(images, shapes, strict=True)):
            region: tuple[int | slice, ...] = (b, *(slice(0, n) for n in s))
            batch[region] = im
            mask[region] = True
        out: Sample = default_collate(
            [{k: v for k, v in s.items() if k != self.key} for s in samples]
        )
        out[self.key] = batch
        out["mask"] = mask
        out["size"] = torch.tensor(shapes, dtype=torch.int64)
        return out

    def __repr__(self) -> str:
        return f"PadCollate(fill={self.fill!r}, key={self.key!r})"
