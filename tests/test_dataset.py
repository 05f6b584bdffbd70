"""dataset.py: samples, scaling, CT geometry, labels, collation, workers under fork/spawn."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_manifest import make_output
from torch.utils.data import DataLoader, default_collate

import hiroml
from hiroml.data.dataset import HiromlDataset
from hiroml.errors import HiromlError
from hiroml.store.reader import read_manifest
from hiroml.store.shards import read_sample


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_output(tmp_path_factory.mktemp("ds"), n_patients=12, n_ct=2)


def test_rows_and_cxr_sample(out: Path) -> None:
    m = read_manifest(out)
    ds = hiroml.HiromlDataset(out, split="train", modality="cxr")
    want = m[(m["split"] == "train") & (m["modality"] == "cxr")]
    assert ds.keys == sorted(want["sample_key"]) and len(ds) == 12
    s = ds[0]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (1, 32, 32)
    stored, _ = read_sample(out / ds.shards[0], ds.keys[0])
    assert torch.equal(s["image"][0], torch.from_numpy(stored.astype(np.float32)))
    assert s["sample_key"] == "cxr-1000-0" and s["patient_id"] == "1000"
    meta = s["meta"]
    assert meta["view"] == "frontal" and meta["exam_time"] == "2020-03-01T14:00:00"
    assert np.isnan(meta["age_years"]) and meta["sex"] == "M"
    assert "label" not in s
    assert len(HiromlDataset(out, split=None, modality="cxr")) == 24


def test_uint8_is_scaled_back(tmp_path: Path) -> None:
    out = make_output(tmp_path, n_patients=4, n_ct=0, cxr_dtype="uint8")
    ds = HiromlDataset(out, split="train")
    img = ds[0]["image"]
    raw = ds.read_array(0)
    assert raw.dtype == np.uint8
    assert torch.allclose(img[0], torch.from_numpy(raw.astype(np.float32)) / 255)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0


def test_ct_sample_geometry_and_region(out: Path) -> None:
    ds = HiromlDataset(out, split="train", modality="ct")
    assert ds.keys == ["ct-2000", "ct-2001"]
    s = ds[1]
    assert s["image"].shape == (1, 7, 32, 32) and s["image"].dtype == torch.float32
    raw = ds.read_array(1)
    assert raw.dtype == np.int16 and torch.equal(s["image"][0], torch.from_numpy(raw).float())
    assert s["spacing"].tolist() == [0.7, 0.7, 2.5]
    assert s["origin"].tolist() == [-180.0, -180.0, -301.0]
    assert s["direction"].shape == (9,)
    assert np.array_equal(ds.read_array(1, np.s_[2:5, 4:8, 1:3]), raw[2:5, 4:8, 1:3])
    batch = default_collate([ds[0], ds[0]])
    assert batch["spacing"].shape == (2, 3)


def test_label_transform_and_collate(out: Path) -> None:
    def flip(sample: dict[str, Any]) -> dict[str, Any]:
        sample["image"] = sample["image"].flip(-1)
        return sample

    ds = HiromlDataset(out, split="train", label="label_covid", transform=flip)
    plain = HiromlDataset(out, split="train")
    assert torch.equal(ds[3]["image"], plain[3]["image"].flip(-1))
    assert ds[0]["label"].dtype == torch.float32
    batch = default_collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 1, 32, 32)
    assert batch["label"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert batch["sample_key"] == ds.keys[:4]
    assert batch["meta"]["age_years"].dtype == torch.float64
    with pytest.raises(ValueError, match="label 'nope' is not a column") as bad:
        HiromlDataset(out, label="nope")
    assert isinstance(bad.value, HiromlError)  # a bad argument is both


def test_pickle_drops_handles(out: Path) -> None:
    ds = HiromlDataset(out)
    ds[0]
    assert len(ds._files) == 1
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._files == {} and torch.equal(clone[0]["image"], ds[0]["image"])
    ds.close()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_give_the_same_samples(out: Path, context: str) -> None:
    ds = HiromlDataset(out, split="train")
    ds[0]  # a handle opened in the parent before forking: the pitfall
    ref = list(DataLoader(ds, batch_size=4, num_workers=0))
    got = list(DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=context))
    assert [b["sample_key"] for b in got] == [b["sample_key"] for b in ref]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(ref, got, strict=True))
    shuffled = DataLoader(
        ds, batch_size=5, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(0)
    )
    keys = [k for b in shuffled for k in b["sample_key"]]
    assert sorted(keys) == ds.keys and keys != ds.keys


def test_without_index_or_shape_hdf5_path_gives_the_same(out: Path) -> None:
    fast = HiromlDataset(out, split=None, modality="cxr")
    slow = HiromlDataset(out, split=None, modality="cxr")
    slow.shapes = [None] * len(slow)  # as with a manifest without shapes
    for i in (0, 5, len(fast) - 1):
        assert fast._locate(i)[1] is not None
        assert torch.equal(fast[i]["image"], slow[i]["image"])
        assert slow._locate(i)[1] == fast._locate(i)[1]


def test_compressed_shards_read_the_same(out: Path, tmp_path: Path) -> None:
    lz4 = make_output(tmp_path, n_patients=12, n_ct=2, compression="lz4")
    for modality in ("cxr", "ct"):
        a = HiromlDataset(out, split=None, modality=modality)
        b = HiromlDataset(lz4, split=None, modality=modality)
        assert b._locate(0)[1] is None  # chunked: read through HDF5
        assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))


def test_half_precision_images_on_request(tmp_path: Path) -> None:
    import torch

    out = make_output(tmp_path)
    full = HiromlDataset(out, split=None, modality="cxr")
    half = HiromlDataset(out, split=None, modality="cxr", dtype=torch.float16)
    a, b = full[0]["image"], half[0]["image"]
    assert a.dtype == torch.float32 and b.dtype == torch.float16
    assert torch.allclose(a, b.float(), atol=1e-3)
    with pytest.raises(ValueError, match="dtype"):
        HiromlDataset(out, split=None, modality="cxr", dtype=torch.int8)


def test_distributed_sampler_shards_the_split_between_ranks(tmp_path: Path) -> None:
    from torch.utils.data.distributed import DistributedSampler

    out = make_output(tmp_path, n_patients=12, n_ct=0)
    ds = HiromlDataset(out, split=None, modality="cxr")
    seen: list[str] = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        loader = DataLoader(ds, batch_size=4, sampler=sampler)
        seen += [k for batch in loader for k in batch["sample_key"]]
    # every sample once (DistributedSampler pads an odd count with one repeat)
    assert set(seen) == set(ds.keys) and len(seen) - len(ds) in (0, 1)


def test_format_1_shards_read_the_same_as_format_2(out: Path, tmp_path: Path) -> None:
    """Versions published with format-1 shards name them (one dataset per
    sample): the Dataset, its region reads and load_sitk read them as they read format 2."""
    import shutil

    from test_shards import _write_format1

    from hiroml.store.shards import iter_samples

    old = tmp_path / "old"
    shutil.copytree(out, old)
    for shard in sorted((old / "shards").glob("*.h5")):
        samples = {k: (a, m) for k, a, m in iter_samples(shard)}
        shard.unlink()
        _write_format1(shard, samples)
    for modality in ("cxr", "ct"):
        new = HiromlDataset(out, split=None, modality=modality)
        legacy = HiromlDataset(old, split=None, modality=modality)
        assert legacy.keys == new.keys and len(new) > 0
        for i in range(len(new)):
            assert torch.equal(legacy[i]["image"], new[i]["image"])
            assert legacy[i]["sample_key"] == new[i]["sample_key"]
    legacy_ct = HiromlDataset(old, split=None, modality="ct")
    want = HiromlDataset(out, split=None, modality="ct").read_array(0)
    assert np.array_equal(legacy_ct.read_array(0, np.s_[1:3, 4:9]), want[1:3, 4:9])
    image = hiroml.load_sitk(old, legacy_ct.keys[0])
    assert image.GetSize() == want.shape[::-1]


def test_scale_missing_from_the_manifest_comes_from_the_shard_meta(tmp_path: Path) -> None:
    import pandas as pd

    from hiroml.store.shards import ShardWriter

    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    with ShardWriter(
        tmp_path / "shards", "cxr-0", modality="cxr", max_samples=9, max_bytes=1 << 20
    ) as w:
        w.add("k0", img, {"scale": 0.5})
    pd.DataFrame(  # a manifest without a scale column
        {"sample_key": ["k0"], "shard": ["shards/cxr-0.h5"], "modality": ["cxr"],
         "split": ["train"], "patient_id": ["p"], "shape": [[8, 8]]}
    ).to_parquet(tmp_path / "manifest.parquet")  # fmt: skip
    ds = HiromlDataset(tmp_path)
    assert torch.equal(ds[0]["image"][0], torch.from_numpy(img).float() * 0.5)
    assert ds.scales == [0.5]
