"""hiroml.data.collate.PadCollate: CT volumes of different depths batch through a DataLoader
(0 and 2 workers) and through the Lightning DataModule built from the README's YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from hiroml import HiromlDataset
from hiroml.data.collate import AIR_HU, PadCollate


def _depths(ds: HiromlDataset) -> list[int]:
    return [int(ds[i]["image"].shape[1]) for i in range(len(ds))]


def test_pads_to_the_largest_and_masks_the_padding() -> None:
    a = {"image": torch.ones(1, 2, 3, 4), "sample_key": "a", "spacing": torch.ones(3)}
    b = {"image": torch.full((1, 3, 2, 4), 2.0), "sample_key": "b", "spacing": torch.ones(3)}
    batch = PadCollate(fill=-5.0)([a, b])
    assert batch["image"].shape == (2, 1, 3, 3, 4)
    assert batch["mask"].shape == (2, 1, 3, 3, 4) and batch["mask"].dtype == torch.bool
    assert batch["size"].tolist() == [[1, 2, 3, 4], [1, 3, 2, 4]]
    assert batch["sample_key"] == ["a", "b"] and batch["spacing"].shape == (2, 3)
    # each image at the low corner, unchanged; the rest is fill and mask False
    assert torch.equal(batch["image"][0, :, :2, :3], a["image"])
    assert torch.equal(batch["image"][1, :, :3, :2], b["image"])
    assert (batch["image"][~batch["mask"]] == -5.0).all()
    assert int(batch["mask"][0].sum()) == 24 and int(batch["mask"][1].sum()) == 24
    with pytest.raises(ValueError, match="different ranks"):
        PadCollate()([a, {"image": torch.ones(1, 2, 3)}])


@pytest.mark.parametrize("workers", [0, 2])
def test_ct_volumes_of_different_depths_batch(tiny_build_clinical: Path, workers: int) -> None:
    ds = HiromlDataset(tiny_build_clinical, split="train", modality="ct")
    depths = _depths(ds)
    assert len(set(depths)) > 1, depths  # the tiny datamart has 24- and 25-slice volumes
    with pytest.raises(RuntimeError):  # what default_collate does with them
        for _ in DataLoader(ds, batch_size=len(ds), num_workers=0):
            pass
    loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=PadCollate())
    seen = []
    for batch in loader:
        assert batch["image"].shape[2] == max(batch["size"][:, 1].tolist())
        for k, key in enumerate(batch["sample_key"]):
            own = ds[ds.keys.index(key)]["image"]
            d = own.shape[1]
            assert torch.equal(batch["image"][k, :, :d], own)
            assert bool(batch["mask"][k, :, :d].all()) and not bool(batch["mask"][k, :, d:].any())
            assert (batch["image"][k, :, d:] == AIR_HU).all()
            seen.append(key)
    assert sorted(seen) == ds.keys


class _MeanHU(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean()


def test_the_readme_lightning_yaml_batches_ct(tiny_build_clinical: Path) -> None:
    """The README's YAML (modality ct, batch_size 2; two workers here, not eight)."""
    cfg: dict[str, Any] = {
        "_target_": "hiroml.data.lightning.HiromlDataModule",
        "out": str(tiny_build_clinical),
        "modality": "ct",
        "batch_size": 2,
        "num_workers": 2,
    }
    dm = instantiate(OmegaConf.create(cfg))
    dm.setup("fit")
    assert isinstance(dm.collate_fn, PadCollate)
    n = 0
    for batch in dm.train_dataloader():
        assert batch["image"].shape[:2] == (len(batch["sample_key"]), 1)
        assert batch["mask"].shape == batch["image"].shape
        n += len(batch["sample_key"])
    assert n == len(dm.datasets["train"])
    dm.teardown("fit")
