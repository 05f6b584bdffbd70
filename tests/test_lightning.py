"""hiroml.data.lightning.HiromlDataModule: fits a tiny model with Trainer(fast_dev_run=True), is
built from a Hydra config by _target_, and refuses bad arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from hiroml.data.lightning import HiromlDataModule


class MeanIntensity(pl.LightningModule):
    """Predicts an image's mean intensity from a 16 x 16 pooled copy: a model for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(16), nn.Flatten(), nn.Linear(256, 1))
        self.seen: dict[str, int] = {"train": 0, "val": 0, "test": 0}
        self.losses: list[float] = []

    def _loss(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        x = batch["image"].float()
        y = x.mean(dim=(1, 2, 3))
        loss = nn.functional.mse_loss(self.net(x)[:, 0], y)
        self.seen[split] += len(x)
        self.losses.append(float(loss.detach()))
        return loss

    def training_step(self, batch: dict[str, Any], _: int) -> torch.Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: dict[str, Any], _: int) -> torch.Tensor:
        return self._loss(batch, "val")

    def test_step(self, batch: dict[str, Any], _: int) -> torch.Tensor:
        return self._loss(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _trainer() -> pl.Trainer:
    return pl.Trainer(
        fast_dev_run=True, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip


def test_fit_and_test_with_fast_dev_run(tiny_build_clinical: Path) -> None:
    dm = HiromlDataModule(tiny_build_clinical, modality="cxr", batch_size=4, label="icu")
    model = MeanIntensity()
    w0 = model.net[2].weight.detach().clone()
    _trainer().fit(model, datamodule=dm)
    assert model.seen["train"] == 4
    assert not torch.equal(w0, model.net[2].weight)  # one optimiser step was taken
    _trainer().test(model, datamodule=dm)
    assert model.seen["test"] > 0
    assert all(torch.isfinite(torch.tensor(model.losses)))
    batch = next(iter(dm.train_dataloader()))
    assert batch["label"].shape == (4,) and batch["image"].shape[:2] == (4, 1)
    # the splits are the manifest's: no patient in two of them
    ids = {s: set(dm.datasets[s].patient_ids) for s in ("train", "val", "test")}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"]


def test_from_a_hydra_config(tiny_build_clinical: Path) -> None:
    cfg = OmegaConf.create(
        {
            "_target_": "hiroml.data.lightning.HiromlDataModule",
            "out": str(tiny_build_clinical),
            "modality": "ct",
            "batch_size": 1,
            "num_workers": 0,
            "label": None,
            "version": None,
        }
    )
    dm = instantiate(cfg)
    assert isinstance(dm, HiromlDataModule)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].ndim == 5 and batch["spacing"].shape == (1, 3)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="modality='mr'"):
        HiromlDataModule("x", modality="mr")
    with pytest.raises(ValueError, match="batch_size=0"):
        HiromlDataModule("x", batch_size=0)
