"""Lightning interop (``pip install "hiroml[lightning]"``): :class:`HiromlDataModule`, the
train/val/test splits of a hiroml output as a ``LightningDataModule``.

    dm = HiromlDataModule("hiroml-out", modality="cxr", batch_size=32, num_workers=4)
    trainer.fit(model, datamodule=dm)

Usable from a Hydra config by ``_target_`` (the lightning-hydra-template convention)::

    # configs/data/hiroml.yaml
    _target_: hiroml.data.lightning.HiromlDataModule
    out: /data/hiroml
    modality: cxr
    batch_size: 32
    num_workers: 8
    label: icu

The splits are the manifest's (by patient, no leakage); the train loader shuffles, the others
do not. Each split is a :class:`hiroml.HiromlDataset`, opened in ``setup``. CT batches of
volumes with different numbers of slices are padded (:class:`hiroml.data.collate.PadCollate`:
``batch["mask"]`` marks the real voxels).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from hiroml.data import Sample
from hiroml.data.collate import PadCollate
from hiroml.data.dataset import HiromlDataset
from hiroml.vocab import SPLITS, Modality, Split

Transform = Callable[[Sample], Sample]


class HiromlDataModule(pl.LightningDataModule):
    """The ``train``, ``val`` and ``test`` splits of ``out`` for one ``modality``.

    ``label`` names a manifest column returned as ``sample["label"]``; ``version`` a retained
    dataset version (None: the latest; needs a hiroml whose ``HiromlDataset`` takes
    ``version=``). ``transform`` applies to every split, ``train_transform`` (when given)
    replaces it for ``train`` (augmentations); ``monai=True`` returns MONAI ``MetaTensor``
    images (:mod:`hiroml.data.monai`). Other DataLoader options: ``pin_memory``,
    ``persistent_workers`` (when ``num_workers > 0``), ``drop_last`` (train only).
    ``collate_fn`` batches samples; the default is ``default_collate`` for ``cxr`` (one image
    size) and, for ``ct``, :class:`~hiroml.data.collate.PadCollate` (volumes padded with air,
    -1024 HU, to the batch's largest; ``batch["mask"]`` and ``batch["size"]`` added).
    """

    def __init__(
        self,
        out: str | Path,
        modality: str = "cxr",
        batch_size: int = 32,
        num_workers: int = 0,
        label: str | None = None,
        version: str | None = None,
        *,
        transform: Transform | None = None,
        train_transform: Transform | None = None,
        monai: bool = False,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = False,
        collate_fn: Callable[[list[Sample]], Sample] | None = None,
    ) -> None:
        super().__init__()
        if modality not in ("cxr", "ct"):
            raise ValueError(f"modality={modality!r}: choose 'cxr' or 'ct'")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size={batch_size} must be >= 1, num_workers >= 0")
        self.out = Path(out)
        self.modality = modality
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.label = label
        self.version = version
        self.transform = transform
        self.train_transform = train_transform
        self.monai = monai
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.drop_last = drop_last
        if collate_fn is None and modality == Modality.CT:
            collate_fn = PadCollate()
        self.collate_fn = collate_fn
        self.datasets: dict[str, HiromlDataset] = {}

    def _dataset(self, split: str) -> HiromlDataset:
        kwargs: dict[str, Any] = {"label": self.label, "monai": self.monai}
        if self.version not in (None, "", "latest"):
            if "version" not in inspect.signature(HiromlDataset).parameters:
                raise ValueError(
                    f"version={self.version!r}: this hiroml's HiromlDataset reads the latest "
                    "version only; leave version unset"
                )
            kwargs["version"] = self.version
        t = (
            self.train_transform
            if split == Split.TRAIN and self.train_transform
            else self.transform
        )
        return HiromlDataset(self.out, split=split, modality=self.modality, transform=t, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        """Open the splits a ``stage`` needs (``fit``: train and val; ``validate``: val;
        ``test``: test; None or ``predict``: all three)."""
        need = {
            "fit": (Split.TRAIN, Split.VAL),
            "validate": (Split.VAL,),
            "test": (Split.TEST,),
        }.get(stage or "", SPLITS)
        for split in need:
            if split not in self.datasets:
                self.datasets[split] = self._dataset(split)

    def _loader(self, split: str, *, train: bool) -> DataLoader[Sample]:
        if split not in self.datasets:
            self.setup(None)
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=self.drop_last and train,
            collate_fn=self.collate_fn,
        )

    def train_dataloader(self) -> DataLoader[Sample]:
        return self._loader(Split.TRAIN, train=True)

    def val_dataloader(self) -> DataLoader[Sample]:
        return self._loader(Split.VAL, train=False)

    def test_dataloader(self) -> DataLoader[Sample]:
        return self._loader(Split.TEST, train=False)

    def teardown(self, stage: str | None = None) -> None:
        for ds in self.datasets.values():
            ds.close()
