"""shards.py: round trip, plain-h5py layout (format 2, and format 1 still read), rollover,
atomic completion, kills."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from hiroml.errors import ShardError
from hiroml.store.shards import (
    FORMAT_VERSION,
    ShardWriter,
    array_hash,
    iter_samples,
    open_shard,
    read_index,
    read_sample,
    shard_keys,
    shard_sha256,
)


def _writer(d: Path, **kw: object) -> ShardWriter:
    args: dict[str, object] = {"modality": "cxr", "max_samples": 100, "max_bytes": 1 << 30}
    args.update(kw)
    return ShardWriter(d, "cxr-abc", **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd", "gzip"])
def test_round_trip_arrays_and_meta(tmp_path: Path, compression: str) -> None:
    rng = np.random.default_rng(0)
    img = rng.random((64, 48), dtype=np.float32).astype(np.float16)
    u8 = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    meta = {
        "sop_uid": "1.2.3.4",
        "age": 57,
        "spacing": (0.14, 0.14),
        "tags": ["a", "b"],
        "inverted": True,
        "window": None,
        "scale": 0.5,
        "missing": float("nan"),
    }
    with _writer(tmp_path, compression=compression, attrs={"config_hash": "h1", "n": [1, 2]}) as w:
        h1 = w.add("1.2.3.4", img, meta)
        w.add("k2", u8, {})
    (info,) = w.shards
    assert info.name == "cxr-abc.h5" and info.keys == ("1.2.3.4", "k2")
    path = tmp_path / info.name
    assert info.sha256 == shard_sha256(path) and info.n_bytes == path.stat().st_size
    assert h1 == array_hash(img) == info.data_hashes[0]
    arr, got = read_sample(path, "1.2.3.4")
    assert arr.dtype == np.float16 and np.array_equal(arr, img)
    assert got == {**meta, "spacing": [0.14, 0.14], "missing": None}  # JSON: no NaN
    arr2, got2 = read_sample(path, "k2")
    assert np.array_equal(arr2, u8) and got2 == {}
    assert shard_keys(path) == ["1.2.3.4", "k2"]
    assert [k for k, _, _ in iter_samples(path)] == ["1.2.3.4", "k2"]
    # understandable with plain h5py, as the module docstring and the README show
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "hiroml-shard" and f.attrs["modality"] == "cxr"
        assert f.attrs["format_version"] == FORMAT_VERSION == 2
        assert f.attrs["config_hash"] == "h1" and json.loads(f.attrs["n"]) == [1, 2]
        assert f.attrs["n_samples"] == 2
        i = list(f["keys"].asstr()[()]).index("1.2.3.4")
        ds = f[f["arrays_of"].asstr()[i]]
        assert ds.name == "/arrays/f2_64x48" and ds.shape == (1, 64, 48)
        assert np.array_equal(ds[f["rows"][i]], img)
        assert json.loads(f["meta"].asstr()[i])["sop_uid"] == "1.2.3.4"
        assert f["data_hashes"].asstr()[i] == h1
        assert ds.chunks == (1, 64, 48)  # one sample per chunk
        assert (ds.compression is None and not ds.id.get_create_plist().get_nfilters()) == (
            compression == "none"
        )


@pytest.mark.parametrize(
    ("ct_chunks", "chunks"), [("slice", (1, 1, 80, 70)), ("cube", (1, 40, 64, 64))]
)
def test_ct_chunking(tmp_path: Path, ct_chunks: str, chunks: tuple[int, ...]) -> None:
    vol = np.random.default_rng(1).integers(-1024, 3000, (40, 80, 70), dtype=np.int16)
    with ShardWriter(
        tmp_path, "ct-1", modality="ct", max_samples=4, max_bytes=1 << 30, ct_chunks=ct_chunks
    ) as w:
        w.add("vol", vol, {"spacing_xyz": [0.7, 0.7, 1.25]})
    arr, meta = read_sample(tmp_path / "ct-1.h5", "vol")
    assert np.array_equal(arr, vol) and meta["spacing_xyz"] == [0.7, 0.7, 1.25]
    with h5py.File(tmp_path / "ct-1.h5") as f:
        assert f["arrays/i2_40x80x70"].chunks == chunks


def test_array_hash_sees_dtype_and_shape() -> None:
    a = np.zeros((4, 4), np.uint8)
    assert array_hash(a) == array_hash(a.copy())
    assert array_hash(a) != array_hash(a.reshape(2, 8))
    assert array_hash(a) != array_hash(a.view(np.int8))
    assert array_hash(a) != array_hash(np.ones((4, 4), np.uint8))


def test_rollover_by_count(tmp_path: Path) -> None:
    with _writer(tmp_path, max_samples=2) as w:
        for i in range(5):
            w.add(f"k{i}", np.full((4, 4), i, np.uint8), {"i": i})
    assert [s.name for s in w.shards] == ["cxr-abc.h5", "cxr-abc-0001.h5", "cxr-abc-0002.h5"]
    assert [s.keys for s in w.shards] == [("k0", "k1"), ("k2", "k3"), ("k4",)]
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == sorted(s.name for s in w.shards)
    arr, meta = read_sample(tmp_path / "cxr-abc-0001.h5", "k3")
    assert arr[0, 0] == 3 and meta == {"i": 3}


def test_rollover_by_bytes(tmp_path: Path) -> None:
    # 100 bytes each; 250 bytes per shard -> 2 per shard; an oversized sample goes alone
    with _writer(tmp_path, max_bytes=250) as w:
        for i in range(3):
            w.add(f"k{i}", np.zeros((10, 10), np.uint8), {})
        w.add("big", np.zeros((20, 20), np.uint8), {})
        w.add("k3", np.zeros((10, 10), np.uint8), {})
    assert [s.keys for s in w.shards] == [("k0", "k1"), ("k2",), ("big",), ("k3",)]


def test_bad_and_duplicate_keys(tmp_path: Path) -> None:
    with _writer(tmp_path, max_samples=1) as w:
        w.add("k", np.zeros((2, 2), np.uint8), {})
        with pytest.raises(ShardError, match="duplicate sample key 'k'"):
            w.add("k", np.zeros((2, 2), np.uint8), {})  # even across a rollover
        with pytest.raises(ShardError, match="no /"):
            w.add("a/b", np.zeros((2, 2), np.uint8), {})
        with pytest.raises(ShardError, match="is not str/int/float/bool/None/list"):
            w.add("m", np.zeros((2, 2), np.uint8), {"x": {"nested": 1}})
    with pytest.raises(ShardError, match="outside its `with` block"):
        w.add("late", np.zeros((2, 2), np.uint8), {})
    with pytest.raises(ShardError, match="compression='bz2'"):
        _writer(tmp_path, compression="bz2")


def test_exception_inside_with_leaves_no_half_shard(tmp_path: Path) -> None:
    with _writer(tmp_path, max_samples=100) as w0:  # a previous, complete output
        w0.add("old", np.ones((3, 3), np.uint8), {})
    with pytest.raises(RuntimeError, match="convert failed"), _writer(tmp_path, max_samples=2) as w:
        for i in range(3):
            w.add(f"k{i}", np.full((4, 4), i, np.uint8), {})
        raise RuntimeError("convert failed")
    names = sorted(p.name for p in tmp_path.iterdir())
    # the first rolled-over shard was complete; the second (k2) was in progress and is gone.
    # cxr-abc.h5 was replaced by the new, complete shard of k0, k1
    assert names == ["cxr-abc.h5"]
    assert shard_keys(tmp_path / "cxr-abc.h5") == ["k0", "k1"]
    assert [s.name for s in w.shards] == ["cxr-abc.h5"]


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import numpy as np
    from hiroml.store.shards import ShardWriter

    with ShardWriter(Path(sys.argv[1]), "cxr-new", modality="cxr", max_samples=3,
                     max_bytes=1 << 30) as w:
        for i in range(5):
            w.add(f"k{i}", np.full((64, 64), i, np.uint16), {"i": i})
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_sigkill_mid_shard_leaves_previous_output_readable(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, "cxr-prev", modality="cxr", max_samples=9, max_bytes=1 << 30) as w:
        w.add("p0", np.ones((8, 8), np.uint8), {})
    prev_sha = w.shards[0].sha256
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    names = sorted(p.name for p in tmp_path.iterdir())
    # shard 0 (k0-k2) was completed; shard 1 (k3, k4) died as a .tmp that never looks whole
    assert names == ["cxr-new-0001.h5.tmp", "cxr-new.h5", "cxr-prev.h5"]
    assert shard_keys(tmp_path / "cxr-new.h5") == ["k0", "k1", "k2"]
    assert shard_sha256(tmp_path / "cxr-prev.h5") == prev_sha
    assert read_sample(tmp_path / "cxr-prev.h5", "p0")[0].sum() == 64
    # a re-run completes the work and leaves no .tmp behind
    with ShardWriter(tmp_path, "cxr-new", modality="cxr", max_samples=3, max_bytes=1 << 30) as w2:
        for i in range(5):
            w2.add(f"k{i}", np.full((64, 64), i, np.uint16), {"i": i})
    assert sorted(p.name for p in tmp_path.glob("*.h5*")) == [
        "cxr-new-0001.h5",
        "cxr-new.h5",
        "cxr-prev.h5",
    ]
    assert [s.name for s in w2.shards] == ["cxr-new.h5", "cxr-new-0001.h5"]
    assert shard_keys(tmp_path / "cxr-new-0001.h5") == ["k3", "k4"]


def test_samples_of_one_shape_share_one_dataset_read_from_their_offsets(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = [rng.random((32, 24), dtype=np.float32).astype(np.float16) for _ in range(5)]
    with _writer(tmp_path) as w:
        for i, img in enumerate(images):
            w.add(f"k{i}", img, {"i": i})
        w.add("other", np.ones((8, 8), np.uint16), {})
    path = tmp_path / "cxr-abc.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cxr-abc.h5"]  # no .done.json
    with h5py.File(path, "r") as f:
        assert sorted(f["arrays"]) == ["f2_32x24", "u2_8x8"]
        assert f["arrays/f2_32x24"].shape == (5, 32, 24)
        assert list(f["rows"][()]) == [0, 1, 2, 3, 4, 0]
    with open_shard(path) as f:
        index = read_index(f)
    raw = path.read_bytes()
    for i, img in enumerate(images):  # each sample's bytes lie at its recorded offset
        offset, dtype = index[f"k{i}"]
        assert dtype == np.float16 and offset > 0
        assert raw[offset : offset + img.nbytes] == img.tobytes()
    assert [(k, int(m["i"])) for k, _, m in iter_samples(path) if "i" in m] == [
        (f"k{i}", i) for i in range(5)
    ]


def _write_format1(path: Path, samples: dict[str, tuple[np.ndarray, dict[str, object]]]) -> None:
    """A shard in format_version 1: one dataset
    ``/samples/<key>`` per sample, its meta as a JSON attr and again one attr per scalar."""
    with h5py.File(path, "w", libver=("v110", "latest")) as f:
        f.attrs.update(format="hiroml-shard", format_version=1, n_samples=len(samples))
        g = f.create_group("samples")
        offsets, dtypes = [], []
        for key, (arr, meta) in samples.items():
            ds = g.create_dataset(
                key, data=arr, chunks=None if arr.ndim == 2 else (1, *arr.shape[1:])
            )
            ds.attrs["meta"] = json.dumps(meta)
            ds.attrs["data_hash"] = array_hash(arr)
            for k, v in meta.items():
                ds.attrs[k] = v
            offset = ds.id.get_offset()
            offsets.append(-1 if offset is None else int(offset))
            dtypes.append(arr.dtype.str)
        f.create_dataset("keys", data=np.array(list(samples), dtype=h5py.string_dtype()))
        f.create_dataset("offsets", data=np.array(offsets, dtype=np.int64))
        f.create_dataset("dtypes", data=np.array(dtypes, dtype=h5py.string_dtype()))


def test_format_1_shards_of_the_previous_release_still_read(tmp_path: Path) -> None:
    img = np.arange(48, dtype=np.uint16).reshape(6, 8)
    vol = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    path = tmp_path / "cxr-old.h5"
    _write_format1(path, {"a": (img, {"scale": 0.5}), "v": (vol, {"sop_uid": "1.2"})})
    arr, meta = read_sample(path, "a")
    assert np.array_equal(arr, img) and meta == {"scale": 0.5}
    assert np.array_equal(read_sample(path, "v")[0], vol)
    assert shard_keys(path) == ["a", "v"]
    assert [k for k, _, _ in iter_samples(path)] == ["a", "v"]
    with open_shard(path) as f:
        index = read_index(f)
    assert index["a"][0] > 0 and index["v"][0] == -1
    with pytest.raises(ShardError, match="no sample 'zz'"):
        read_sample(path, "zz")


def test_a_failure_while_finishing_leaves_no_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import hiroml.store.shards as shards_mod

    def full(_path: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards_mod, "shard_sha256", full)
    writer = shards_mod.ShardWriter(
        tmp_path, "cxr-x", modality="cxr", max_samples=8, max_bytes=2**30
    )
    with pytest.raises(OSError, match="No space left"), writer as w:
        w.add("k1", np.zeros((8, 8), np.float16), {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_the_same_samples_written_a_second_later_give_the_same_bytes(
    tmp_path: Path, compression: str
) -> None:
    """No object header carries a timestamp (HDF5 1.14 stamps them by default), so a rebuild
    of the same samples has the same checksum and publishes nothing new."""
    import time

    rng = np.random.default_rng(1)
    img = rng.random((32, 24), dtype=np.float32).astype(np.float16)
    digests = []
    for attempt in range(2):
        if attempt:
            time.sleep(1.1)  # HDF5's timestamps count seconds
        with _writer(tmp_path / str(attempt), compression=compression) as w:
            w.add("k1", img, {"age": 1})
            w.add("k2", img[:16], {})
        (info,) = w.shards
        digests.append(info.sha256)
    assert digests[0] == digests[1]


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_extents_grown_many_rows_at_a_time_give_the_bytes_of_one_row_at_a_time(
    tmp_path: Path, compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset's extent grows GROW_ROWS rows at once and is cut at close: every shard
    (rolled over mid-way, radiographs of two shapes, CT volumes, an empty array) has the bytes,
    offsets and shape of one grown a row per sample."""
    from hiroml.store import shards

    rng = np.random.default_rng(3)
    samples = [rng.random((32, 24)).astype(np.float16) for _ in range(9)]
    samples += [rng.random((16, 16)).astype(np.float16) for _ in range(3)]
    samples += [rng.integers(-1000, 1000, (4, 8, 8), dtype=np.int16) for _ in range(2)]
    samples.append(np.zeros((0, 5), np.float16))

    def write(folder: Path, grow: int) -> list[tuple[str, str]]:
        monkeypatch.setattr(shards, "GROW_ROWS", grow)
        with _writer(folder, compression=compression, max_samples=11) as w:
            for i, arr in enumerate(samples):
                w.add(f"k{i}", arr, {"i": i})
        return [(info.name, info.sha256) for info in w.shards]

    grown = write(tmp_path / "a", 4)
    assert len(grown) == 2
    assert grown == write(tmp_path / "b", 1)
    with open_shard(tmp_path / "a" / grown[0][0]) as f:
        assert f["arrays/f2_32x24"].shape == (9, 32, 24)
    for key, arr, _meta in iter_samples(tmp_path / "a" / grown[1][0]):
        np.testing.assert_array_equal(arr, samples[int(key[1:])])


def test_meta_values_become_json_values() -> None:
    from hiroml.store.shards import _jsonable
    from hiroml.vocab import View

    values = [
        "a", 3, True, None, 1.5, float("nan"), float("-inf"), np.float32("nan"), np.int64(7),
        np.bool_(True), (1, 2.5, float("inf")), [np.float16(0.5), "b"], View.FRONTAL,
    ]  # fmt: skip
    want = ["a", 3, True, None, 1.5, None, None, None, 7, True, [1, 2.5, None], [0.5, "b"]]
    got = [_jsonable(v, "k") for v in values]
    assert got[:-1] == want and got[-1] == "frontal"
    assert [type(v) for v in got[:5]] == [str, int, bool, type(None), float]
    with pytest.raises(ShardError, match="meta 'k': dict"):
        _jsonable({}, "k")


def test_within_sha256_once_a_file_is_read_once_until_it_is_replaced(
    tmp_path: Path, sha256_reads: list[str]
) -> None:
    import hashlib
    import os

    from hiroml.store import filehash

    table = tmp_path / "manifest.parquet"
    table.write_bytes(b"x" * 100)
    with filehash.sha256_once():
        first, again = filehash.shard_sha256(table), filehash.shard_sha256(str(table))
        other = tmp_path / "other"
        other.write_bytes(b"y" * 100)  # the same size, another file put in its place
        os.replace(other, table)
        replaced = filehash.shard_sha256(table)
    after = [filehash.shard_sha256(table), filehash.shard_sha256(table)]
    assert first == again == hashlib.sha256(b"x" * 100).hexdigest()
    assert replaced == after[0] == after[1] == hashlib.sha256(b"y" * 100).hexdigest()
    # once for the file, once for the file put in its place, and every time outside the block
    assert sha256_reads == ["manifest.parquet"] * 4
