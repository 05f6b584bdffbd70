"""scripts/train_cxr_example.py on a fake in-memory dataset that mimics HiromlDataset's
samples (the end-to-end run on a built tiny dataset is in CI)."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_cxr_example.py"
Sample = dict[str, Any]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return _load(SCRIPT, "train_cxr_example")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: a tiny CNN gains nothing from more, and CI machines are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class FakeCxr(Dataset[Sample]):
    """Samples shaped like HiromlDataset's: ``image`` (1, H, W) in [0, 1], ``sample_key``,
    ``patient_id``, ``meta`` (str and float values), ``label`` when asked. Learnable: "M"
    patients have a bright square top-left, "F" patients bottom-right; every fifth sample
    has an unknown sex ("")."""

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        size: int = 40,
        transform: Callable[[Sample], Sample] | None = None,
        label: str | None = None,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand((n, 1, size, size), generator=g) * 0.5
        self.sex = ["" if i % 5 == 4 else ("M" if i % 2 else "F") for i in range(n)]
        h = size // 2
        for i, s in enumerate(self.sex):
            if s == "M":
                self.images[i, 0, :h, :h] += 0.5
            elif s == "F":
                self.images[i, 0, h:, h:] += 0.5
        self.transform = transform
        self.label = label

    def __len__(self) -> int:
        return len(self.sex)

    def __getitem__(self, i: int) -> Sample:
        sample: Sample = {
            "image": self.images[i],
            "sample_key": f"P{i:03d}/1.2.{i}",
            "patient_id": f"P{i:03d}",
            "meta": {"sex": self.sex[i], "view": "frontal", "age_years": math.nan},
        }
        if self.label is not None:
            value = {"M": 1.0, "F": 0.0}.get(self.sex[i], math.nan)
            sample["label"] = torch.tensor(value, dtype=torch.float32)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


def _loaders(script: ModuleType, *, label: bool) -> tuple[DataLoader, DataLoader]:
    prep = script.PrepareSample(32, label=label, proxy="sex")
    lab = "sex01" if label else None
    train = FakeCxr(60, seed=1, transform=prep, label=lab)
    val = FakeCxr(30, seed=2, transform=prep, label=lab)
    g = torch.Generator().manual_seed(0)
    return (
        DataLoader(train, batch_size=12, shuffle=True, generator=g),
        DataLoader(val, batch_size=12),
    )


def test_prepare_sample(script: ModuleType) -> None:
    prep = script.PrepareSample(32, label=False, proxy="sex")
    ds = FakeCxr(5, seed=0, transform=prep)
    s = ds[1]
    assert set(s) == {"image", "target", "sample_key"}
    assert s["image"].shape == (1, 32, 32) and s["image"].dtype == torch.float32
    assert s["target"].tolist() == [1.0]  # M
    assert ds[0]["target"].tolist() == [0.0]  # F
    assert math.isnan(ds[4]["target"].item())  # unknown sex: left out of the loss
    view = script.PrepareSample(32, label=False, proxy="view")
    assert view(FakeCxr(1, seed=0)[0])["target"].tolist() == [0.0]  # frontal
    with pytest.raises(ValueError, match="proxy must be one of"):
        script.PrepareSample(32, label=False, proxy="age")


@pytest.mark.parametrize("label", [False, True])
def test_train_loss_decreases(
    script: ModuleType, label: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    loader_train, loader_val = _loaders(script, label=label)
    r = script.train(loader_train, loader_val, steps=30, lr=3e-3, device="cpu", log_every=10)
    losses = r["losses"]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert r["val_n"] == 24  # 30 minus the 6 with unknown sex
    assert r["val_accuracy"] >= 0.9 and r["val_loss"] < first
    assert isinstance(r["model"], script.SmallCNN)
    out = capsys.readouterr().out
    assert out.count("train loss") == 3 and "step     30" in out


def test_masked_bce_without_targets(script: ModuleType) -> None:
    loss, n = script.masked_bce(torch.zeros(3, 1), torch.full((3, 1), math.nan))
    assert n == 0 and float(loss) == 0.0


def test_main_prints_losses(
    script: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    opened: list[tuple[Path, str, str | None]] = []

    def fake_open_split(
        out: Path, split: str, *, label: str | None, transform: Callable[[Sample], Sample]
    ) -> FakeCxr:
        opened.append((out, split, label))
        return FakeCxr(24 if split == "train" else 10, seed=len(opened), transform=transform)

    monkeypatch.setattr(script, "open_split", fake_open_split)
    weights = tmp_path / "w.pt"
    argv = [str(tmp_path), "--steps", "6", "--batch-size", "8", "--workers", "0",
            "--log-every", "2", "--size", "24", "--device", "cpu", "--save", str(weights),
            "--trainer", "torch"]  # fmt: skip
    assert script.main(argv) == 0
    assert opened == [(tmp_path, "train", None), (tmp_path, "val", None)]
    out = capsys.readouterr().out
    assert "train 24 radiographs, val 10; target proxy: sex" in out
    assert out.count("train loss") == 3
    assert "val loss" in out and "accuracy" in out and "majority class" in out
    assert set(torch.load(weights, weights_only=True)) >= {"head.weight", "head.bias"}


def test_main_empty_train_split(
    script: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        script, "open_split", lambda out, split, *, label, transform: FakeCxr(0, seed=0)
    )
    assert script.main(["nowhere", "--workers", "0", "--label", "x", "--trainer", "torch"]) == 2
    assert "the train split has no radiograph" in capsys.readouterr().out


def test_main_on_written_output(
    script: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real HiromlDataset over shards and a manifest written by the real writers."""
    helpers = _load(Path(__file__).with_name("test_report.py"), "_report_tables")
    helpers.write_output_folder(tmp_path)
    argv = [str(tmp_path), "--steps", "3", "--batch-size", "4", "--workers", "0",
            "--log-every", "1", "--size", "32", "--device", "cpu", "--trainer", "torch"]  # fmt: skip
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    assert "train 8 radiographs, val 4; target proxy: sex" in out
    assert out.count("train loss") == 3 and "val loss" in out


def test_main_with_lightning_on_written_output(
    script: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With Lightning installed, the default trainer is Lightning over HiromlDataModule."""
    helpers = _load(Path(__file__).with_name("test_report.py"), "_report_tables")
    helpers.write_output_folder(tmp_path)
    assert script.lightning_available()
    weights = tmp_path / "w.pt"
    argv = [str(tmp_path), "--steps", "3", "--batch-size", "4", "--workers", "0",
            "--log-every", "1", "--size", "32", "--device", "cpu", "--save", str(weights)]  # fmt: skip
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    assert "train 8 radiographs, val 4; target proxy: sex (Lightning)" in out
    assert out.count("train loss") == 3 and "val loss" in out and "majority class" in out
    assert set(torch.load(weights, weights_only=True)) >= {"head.weight", "head.bias"}
