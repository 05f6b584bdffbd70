"""Train a small CNN on the radiographs of a built hiroml dataset: a place to start from.

    python scripts/train_cxr_example.py hiroml-out                       # the demo build
    python scripts/train_cxr_example.py /data/hiroml --label COLUMN --steps 2000 --workers 8

It reads the ``train`` and ``val`` splits with :class:`hiroml.HiromlDataset` (modality
``cxr``), resizes each image to ``--size`` square (build with ``experiment=covid_cxr`` to get
square 512 x 512 images, so nothing is distorted), trains a four-layer CNN with Adam for
``--steps`` steps, printing the training loss every ``--log-every`` steps, then prints the
validation loss and accuracy next to the accuracy of always guessing the majority class.

What it learns:

- with ``--label COLUMN``: a binary classifier of that manifest column (values 0/1, e.g. a
  clinical outcome you joined into the manifest; a list column gives one output per
  element). Samples whose value is missing (NaN) are left out of the loss.
- without ``--label``: a proxy task from the image metadata, ``--proxy``:
  ``sex`` (default) predicts the patient's sex, M (1) versus F (0), from (0010,0040)
  Patient's Sex as stored in ``meta["sex"]`` (other values are left out); ``view`` predicts
  lateral (1) versus frontal (0) from ``meta["view"]`` (needs a build that kept lateral
  images; ``covid_cxr`` keeps frontal images only). Neither is a clinical finding: they only
  show that images, targets and the training loop are wired correctly.

How it trains (``--trainer``): with Lightning installed (``pip install "hiroml[lightning]"``)
the default ``auto`` uses :class:`hiroml.data.lightning.HiromlDataModule` and a
``lightning.pytorch.Trainer`` (``--steps`` is ``max_steps``; devices, precision and
checkpoints are Lightning's); without it, or with ``--trainer torch``, a plain PyTorch loop
over two ``DataLoader`` objects. Both print the same validation line.

The script holds no dataset logic: everything it knows about the output comes from
``HiromlDataset``. Copy it and change the model, the target and the augmentations.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from hiroml import HiromlDataset

Sample = dict[str, Any]
PROXY_CODES = {"sex": {"M": 1.0, "F": 0.0}, "view": {"lateral": 1.0, "frontal": 0.0}}


class PrepareSample:
    """The dataset ``transform``: resize ``image`` (1, H, W) to (1, size, size) and add a
    float32 ``target`` of shape (k,) (NaN where unknown); only ``image``, ``target`` and
    ``sample_key`` are kept, so that ``default_collate`` batches them."""

    def __init__(self, size: int, *, label: bool, proxy: str = "sex") -> None:
        if not label and proxy not in PROXY_CODES:
            raise ValueError(f"proxy must be one of {sorted(PROXY_CODES)}, not {proxy!r}")
        self.size = size
        self.label = label
        self.proxy = proxy

    def target(self, sample: Sample) -> torch.Tensor:
        """The training target of one sample, float32 (k,)."""
        if self.label:
            return torch.as_tensor(sample["label"], dtype=torch.float32).reshape(-1)
        value = str(sample["meta"].get(self.proxy, "")).strip()
        if self.proxy == "sex":
            value = value.upper()
        code = PROXY_CODES[self.proxy].get(value, math.nan)
        return torch.tensor([code], dtype=torch.float32)

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"].to(torch.float32)
        if image.shape[-2:] != (self.size, self.size):
            image = F.interpolate(
                image[None], size=(self.size, self.size), mode="bilinear", antialias=True
            )[0]
        return {"image": image, "target": self.target(sample), "sample_key": sample["sample_key"]}


class SmallCNN(nn.Module):
    """Four strided 3 x 3 convolutions (16, 32, 64, 64 channels), global average pooling and
    a linear layer: one logit per output. Input (N, 1, H, W) in [0, 1]."""

    def __init__(self, outputs: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = [1, 16, 32, 64, 64]
        for cin, cout in pairwise(chans):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, outputs)."""
        return self.head(self.features(x).mean(dim=(2, 3)))


def masked_bce(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Binary cross-entropy over the finite targets, and how many there were."""
    known = torch.isfinite(target)
    n = int(known.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    return F.binary_cross_entropy_with_logits(logits[known], target[known]), n


def _forever(loader: Iterable[Sample]) -> Iterator[Sample]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training loader yields no batch")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Sample], device: str) -> dict[str, float]:
    """Mean loss, accuracy (logit > 0), majority-class accuracy and the number of known
    targets over ``loader``; NaN when there is none."""
    model.eval()
    loss_sum, correct, positives, n = 0.0, 0, 0.0, 0
    for batch in loader:
        target = batch["target"].to(device)
        logits = model(batch["image"].to(device))
        loss, k = masked_bce(logits, target)
        if k == 0:
            continue
        known = torch.isfinite(target)
        loss_sum += float(loss) * k
        correct += int(((logits[known] > 0).float() == target[known]).sum())
        positives += float(target[known].sum())
        n += k
    model.train()
    if n == 0:
        nan = math.nan
        return {"val_loss": nan, "val_accuracy": nan, "val_majority": nan, "val_n": 0}
    p = positives / n
    return {
        "val_loss": loss_sum / n,
        "val_accuracy": correct / n,
        "val_majority": max(p, 1.0 - p),
        "val_n": n,
    }


def train(
    loader_train: Iterable[Sample],
    loader_val: Iterable[Sample],
    *,
    steps: int,
    lr: float,
    device: str,
    log_every: int = 10,
) -> dict[str, Any]:
    """Train a :class:`SmallCNN` (outputs: the size of the first batch's ``target``) for
    ``steps`` Adam steps, cycling over ``loader_train``; print the mean training loss every
    ``log_every`` steps; evaluate on ``loader_val``. Returns ``model``, ``losses`` (one per
    step; NaN for a batch without a known target) and the keys of :func:`evaluate`."""
    batches = _forever(loader_train)
    first = next(batches)
    model = SmallCNN(outputs=int(first["target"].shape[-1])).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    window: list[float] = []
    t0 = time.perf_counter()
    batch = first
    for step in range(1, steps + 1):
        logits = model(batch["image"].to(device, non_blocking=True))
        loss, n = masked_bce(logits, batch["target"].to(device, non_blocking=True))
        if n:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            losses.append(value)
            window.append(value)
        else:
            losses.append(math.nan)
        if step % log_every == 0 or step == steps:
            mean = sum(window) / len(window) if window else math.nan
            rate = step / (time.perf_counter() - t0)
            print(f"step {step:6d}  train loss {mean:.4f}  ({rate:.1f} steps/s)", flush=True)
            window = []
        if step < steps:
            batch = next(batches)
    result: dict[str, Any] = {"model": model, "losses": losses}
    result.update(evaluate(model, loader_val, device))
    return result


def open_split(
    out: Path, split: str, *, label: str | None, transform: PrepareSample
) -> HiromlDataset:
    """The radiographs of one split of a hiroml output folder."""
    from hiroml import HiromlDataset

    return HiromlDataset(out, split=split, modality="cxr", transform=transform, label=label)


def lightning_available() -> bool:
    """Whether ``lightning`` (and so :mod:`hiroml.data.lightning`) can be imported."""
    return importlib.util.find_spec("lightning") is not None


def train_lightning(args: argparse.Namespace, prep: PrepareSample) -> dict[str, Any]:
    """Train a :class:`SmallCNN` with ``lightning.pytorch`` on
    :class:`hiroml.data.lightning.HiromlDataModule`; returns what :func:`train` returns."""
    import lightning.pytorch as pl

    from hiroml.data.lightning import HiromlDataModule

    dm = HiromlDataModule(
        args.out, modality="cxr", batch_size=args.batch_size, num_workers=args.workers,
        label=args.label, transform=prep, pin_memory=args.device.startswith("cuda"),
        persistent_workers=args.workers > 0,
    )  # fmt: skip
    dm.setup("fit")
    train_set = dm.datasets["train"]
    print(f"train {len(train_set)} radiographs, val {len(dm.datasets['val'])}; "
          f"target {args.label or f'proxy: {args.proxy}'} (Lightning)")  # fmt: skip
    if len(train_set) == 0:
        return {}
    outputs = int(train_set[0]["target"].shape[-1])
    log_every = args.log_every

    class LitCnn(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = SmallCNN(outputs=outputs)
            self.losses: list[float] = []

        def training_step(self, batch: Sample, _: int) -> torch.Tensor | None:
            loss, n = masked_bce(self.model(batch["image"]), batch["target"])
            self.losses.append(float(loss.detach()) if n else math.nan)
            step = len(self.losses)
            if step % log_every == 0 or step == args.steps:
                print(f"step {step:6d}  train loss {self.losses[-1]:.4f}", flush=True)
            return loss if n else None

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=args.lr)

    lit = LitCnn()
    trainer = pl.Trainer(
        max_steps=args.steps, accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(lit, train_dataloaders=dm.train_dataloader())
    model = lit.model.to(args.device)
    result: dict[str, Any] = {"model": model, "losses": lit.losses}
    result.update(evaluate(model, dm.val_dataloader(), args.device))
    dm.teardown()
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, metavar="OUT", help="a built hiroml output folder")
    p.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--label", metavar="COLUMN", help="a 0/1 manifest column to predict")
    p.add_argument("--proxy", choices=sorted(PROXY_CODES), default="sex",
                   help="the proxy target without --label (default: sex)")  # fmt: skip
    p.add_argument("--size", type=int, default=256, help="images are resized to SIZE x SIZE")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save", type=Path, help="write the trained weights (state_dict) here")
    p.add_argument("--trainer", choices=("auto", "lightning", "torch"), default="auto",
                   help="auto: Lightning when installed, else plain PyTorch")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the example; 0 on success, 2 when the train split has no radiograph."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    prep = PrepareSample(args.size, label=args.label is not None, proxy=args.proxy)
    use_lightning = args.trainer == "lightning" or (
        args.trainer == "auto" and lightning_available()
    )
    if use_lightning:
        r = train_lightning(args, prep)
        if not r:
            print(f"{args.out}: the train split has no radiograph")
            return 2
        return _finish(args, r)
    ds_train = open_split(args.out, "train", label=args.label, transform=prep)
    ds_val = open_split(args.out, "val", label=args.label, transform=prep)
    target = args.label or f"proxy: {args.proxy}"
    print(f"train {len(ds_train)} radiographs, val {len(ds_val)}; target {target}")
    if len(ds_train) == 0:
        print(f"{args.out}: the train split has no radiograph")
        return 2
    common: dict[str, Any] = {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "pin_memory": args.device.startswith("cuda"),
        "persistent_workers": args.workers > 0,
    }
    gen = torch.Generator().manual_seed(args.seed)
    loader_train = DataLoader(ds_train, shuffle=True, drop_last=False, generator=gen, **common)
    loader_val = DataLoader(ds_val, shuffle=False, **common)
    r = train(
        loader_train,
        loader_val,
        steps=args.steps,
        lr=args.lr,
        device=args.device,
        log_every=args.log_every,
    )
    return _finish(args, r)


def _finish(args: argparse.Namespace, r: dict[str, Any]) -> int:
    print(
        f"val loss {r['val_loss']:.4f}  accuracy {r['val_accuracy']:.3f}  "
        f"(majority class {r['val_majority']:.3f}, n={r['val_n']})"
    )
    if args.save is not None:
        torch.save(r["model"].state_dict(), args.save)
        print(f"weights written to {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
