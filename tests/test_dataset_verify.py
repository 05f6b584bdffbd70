"""HiromlDataset(verify=True): a shard whose bytes differ from the manifest's shard_sha256,
or a sample whose place in its shard does not hold, is refused naming the shard."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from hiroml import HiromlDataset
from hiroml.errors import ShardError
from hiroml.store.shards import sample_refs, shard_sha256


def _copy(built: Path, tmp_path: Path) -> tuple[Path, HiromlDataset, str]:
    """A copy of the tiny build, its radiographs (every split) and a shard holding 2+ of them."""
    out = tmp_path / "out"
    shutil.copytree(built, out)
    ds = HiromlDataset(out, split=None, modality="cxr")
    counts = pd.Series(ds.shards).value_counts()
    return out, ds, str(counts.index[0])


def _manifest_path(out: Path) -> Path:
    (version,) = sorted((out / "versions").glob("0*"))[-1:]
    return version / "manifest.parquet"


def test_verify_reads_an_intact_output_as_without_it(tiny_build_clinical: Path) -> None:
    plain = HiromlDataset(tiny_build_clinical, split=None, modality="cxr")
    checked = HiromlDataset(tiny_build_clinical, split=None, modality="cxr", verify=True)
    for i in range(len(plain)):
        assert np.array_equal(plain.read_array(i), checked.read_array(i))


def test_a_flipped_byte_in_pixel_data_is_refused_naming_the_shard(
    tiny_build_clinical: Path, tmp_path: Path
) -> None:
    out, ds, shard = _copy(tiny_build_clinical, tmp_path)
    i = ds.shards.index(shard)
    before = ds.read_array(i).copy()
    ds.close()
    with h5py.File(shard, "r", locking=False) as f:
        offset = sample_refs(f)[ds.keys[i]].offset
    assert offset > 0
    with open(shard, "r+b") as fh:
        fh.seek(offset + 100)
        byte = fh.read(1)
        fh.seek(offset + 100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    unchecked = HiromlDataset(out, split=None, modality="cxr")
    assert not np.array_equal(unchecked.read_array(i), before)  # silently altered without it
    checked = HiromlDataset(out, split=None, modality="cxr", verify=True)
    with pytest.raises(ShardError, match=rf"{Path(shard).name}: the shard's SHA-256 is"):
        checked[i]


def test_swapped_rows_or_offsets_are_refused_naming_the_shard_and_the_sample(
    tiny_build_clinical: Path, tmp_path: Path
) -> None:
    out, ds, shard = _copy(tiny_build_clinical, tmp_path)
    i = ds.shards.index(shard)
    with h5py.File(shard, "r+", locking=False) as f:
        refs = sample_refs(f)
        a, b = (refs[k].index for k in list(refs)[:2])
        rows = f["rows"][()]
        rows[[a, b]] = rows[[b, a]]
        f["rows"][...] = rows
    with pytest.raises(ShardError, match=rf"{Path(shard).name}: the shard's SHA-256"):
        HiromlDataset(out, split=None, modality="cxr", verify=True)[i]
    # the manifest's checksum made to agree: the sample's own check still refuses it
    path = _manifest_path(out)
    m = pd.read_parquet(path)
    m.loc[m["shard"] == str(Path(shard).relative_to(out)), "shard_sha256"] = shard_sha256(shard)
    m.to_parquet(path)
    checked = HiromlDataset(out, split=None, modality="cxr", verify=True)
    first = next(j for j, k in enumerate(checked.keys) if k == next(iter(refs)))
    with pytest.raises(ShardError, match=r"sample '.*': /offsets says byte \d+, HDF5 keeps it at"):
        checked[first]
    checked.close()
    with h5py.File(shard, "r+", locking=False) as f:  # rows back, two offsets swapped
        rows[[a, b]] = rows[[b, a]]
        f["rows"][...] = rows
        offsets = f["offsets"][()]
        offsets[[a, b]] = offsets[[b, a]]
        f["offsets"][...] = offsets
    m.loc[m["shard"] == str(Path(shard).relative_to(out)), "shard_sha256"] = shard_sha256(shard)
    m.to_parquet(path)
    checked = HiromlDataset(out, split=None, modality="cxr", verify=True)
    with pytest.raises(ShardError, match=rf"{Path(shard).name}: sample .*/offsets says byte"):
        checked[first]
