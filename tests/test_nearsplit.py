"""hiroml-verify's near-duplicate check across splits (hiroml.store.nearsplit): the exact
search across splits gives exactly the cross-split pairs of every pair; the recorded pairs
are read back only from the file a version recorded, and a leak planted across splits is
found in every mode, also behind a tampered pairs file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import MakeCfg

from hiroml import pipeline
from hiroml.exams import neardup, paircache
from hiroml.store import nearsplit
from hiroml.store import verify as store_verify
from hiroml.store.shards import shard_sha256
from hiroml.versions import hashing as versions_hashing
from hiroml.vocab import BUILD_JSON, MANIFEST, Split

N = neardup.SIGNATURE_SIZE


def _pool(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random signatures, a third of them noisy copies of an earlier one
    (correlations on both sides of 0.95), a few exact copies and a constant row."""
    pool = rng.integers(0, 256, (n, N)).astype(np.uint8)
    for k in range(10, n, 3):
        width = int(rng.integers(20, 61))
        noisy = pool[rng.integers(0, k)].astype(int) + rng.integers(-width, width + 1, N)
        pool[k] = np.clip(noisy, 0, 255)
    pool[40:44] = pool[7]
    pool[50] = 3
    return pool


def _same(got: neardup.PairArrays, want: neardup.PairArrays) -> bool:
    return all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def _cross(pairs: neardup.PairArrays, split: np.ndarray) -> neardup.PairArrays:
    i, j, sim = pairs
    keep = split[i] != split[j]
    return i[keep], j[keep], sim[keep]


@pytest.mark.parametrize("labels", [["train"] * 8 + ["val", "test"], ["a", "b", "c", "d"]])
def test_search_across_splits_is_every_pair_across_splits(labels: list[str]) -> None:
    rng = np.random.default_rng(7)
    sig = _pool(rng, 400)
    split = np.asarray(labels)[rng.integers(0, len(labels), len(sig))]
    want = _cross(neardup.pair_arrays(sig, threshold=0.95), split)
    assert len(want[0]) > 5  # near duplicates in two splits exist
    for chunk in (nearsplit.CHUNK, 37):
        got = nearsplit.search_across_splits(sig, split, threshold=0.95, chunk=chunk)
        assert _same(got, want)
    one = nearsplit.search_across_splits(sig, np.full(len(sig), "train"), threshold=0.95)
    assert len(one[0]) == 0


def _tamper(path: Path, drop: Callable[[np.ndarray, np.ndarray], np.ndarray], **more: Any) -> None:
    """Rewrite the pairs file whole (as the build writes it) without the pairs ``drop``
    marks, with ``more`` arrays replaced."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    keep = ~drop(arrays["i"], arrays["j"])
    for k in ("i", "j", "similarity"):
        arrays[k] = arrays[k][keep]
    arrays.update(more)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def test_recorded_pairs_are_read_back_only_from_the_recorded_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    pool = _pool(rng, 500)
    old, new = pool[:420], pool
    split = np.asarray(["train", "train", "val", "test"])[rng.integers(0, 4, len(pool))]
    paircache.cached_pair_arrays(tmp_path, old, threshold=0.95)  # the build's file
    path = paircache.cache_dir(tmp_path) / paircache.CACHE_FILE
    sha = shard_sha256(path)
    want = _cross(neardup.pair_arrays(new, threshold=0.95), split)
    assert len(want[0]) > 5 and np.any(want[1] >= 420) and np.any(want[1] < 420)

    def recorded(**kw: Any) -> neardup.PairArrays | None:
        args = {"threshold": 0.95, "trusted": {sha}, **kw}
        return nearsplit.recorded_pairs(tmp_path, new, split, **args)

    for chunk in (nearsplit.CHUNK, 29):  # known pairs read back, 80 unknown searched
        got = recorded(chunk=chunk)
        assert got is not None and _same(got, want)
    assert recorded(threshold=0.9) is None
    assert recorded(trusted=set()) is None
    assert recorded(max_unknown=79) is None  # 80 signatures unknown to the file
    assert recorded(max_unknown=80) is not None
    _tamper(path, lambda i, j: i == want[0][0])  # a pair hidden, the file still whole
    assert paircache.stored_pairs(path, 0.95) is not None
    assert recorded() is None
    assert recorded(trusted={shard_sha256(path)}) is not None  # were it recorded


# ------------------------------------------------------------- a build, a leak planted


@pytest.fixture(scope="module")
def built(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, tuple[int, int]]:
    """A tiny build at threshold 0.5 and one near-duplicate pair of it (manifest rows) in
    one split with different pixels."""
    root, _ = tiny_datamart
    out = tmp_path_factory.mktemp("nearsplit") / "out"
    pipeline.run(make_cfg(root, out, "splits.near_duplicate_threshold=0.5"))
    m = pd.read_parquet(out / MANIFEST)
    rows, sigs = nearsplit.signature_rows(m)
    i, j, _ = neardup.pair_arrays(sigs, threshold=0.5)
    a, b = rows[i], rows[j]
    hashes, splits = m["data_hash"].to_numpy(), m["split"].to_numpy()
    ok = np.flatnonzero((hashes[a] != hashes[b]) & (splits[a] == splits[b]))
    assert len(ok)
    return out, (int(a[ok[0]]), int(b[ok[0]]))


def _planted(out: Path, to: Path, plant: Callable[[pd.DataFrame], None]) -> pd.DataFrame:
    """A copy of ``out`` whose manifests ``plant`` changed; build.json agrees with them."""
    shutil.copytree(out, to)
    m = pd.read_parquet(to / MANIFEST)
    plant(m)
    for path in to.rglob(MANIFEST):
        m.to_parquet(path)
        info_path = path.with_name(BUILD_JSON)
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            info["dataset_hash"] = versions_hashing.dataset_hash(path)
            info["tables"] = versions_hashing.table_checksums(path.parent)
            info_path.write_text(json.dumps(info))
    return m


def _leak_found(out: Path, a: str, b: str, *, deep: bool) -> bool:
    found = store_verify.examine(out, deep=deep, near_threshold=0.5)
    return any(
        w.startswith("near duplicate across splits") and a in w and b in w for w in found.warnings
    )


@pytest.mark.parametrize("how", ["split moved", "signature copied"])
def test_a_leak_across_splits_is_found_in_every_mode_and_behind_a_tampered_file(
    built: tuple[Path, tuple[int, int]], tmp_path: Path, how: str
) -> None:
    out, (a, b) = built
    info = json.loads(next((out / "versions").glob(f"*/{BUILD_JSON}")).read_text())
    assert info[paircache.RECORD_KEY]["sha256"] == shard_sha256(
        paircache.cache_dir(out) / paircache.CACHE_FILE
    )

    def plant(m: pd.DataFrame) -> None:
        if how == "signature copied":  # a new signature, unknown to the pairs file
            m.at[b, "signature"] = m.at[a, "signature"]
        m.loc[b, "split"] = Split.TEST if m.loc[a, "split"] != Split.TEST else Split.TRAIN

    planted = tmp_path / "planted"
    m = _planted(out, planted, plant)
    ka, kb = str(m.loc[a, "sample_key"]), str(m.loc[b, "sample_key"])
    for deep in (True, False):
        assert _leak_found(planted, ka, kb, deep=deep)
    (i, j, _), used = nearsplit.pairs_across_splits(m, threshold=0.5, out=planted)
    assert used and (min(a, b), max(a, b)) in set(zip(i.tolist(), j.tolist(), strict=True))

    # the pair taken out of the pairs file (still whole), the planted digest made known
    path = paircache.cache_dir(planted) / paircache.CACHE_FILE
    digests = paircache.row_digests(nearsplit.signature_rows(m)[1])
    _tamper(path, lambda i, j: np.ones(len(i), bool), digests=digests)
    assert paircache.stored_pairs(path, 0.5) is not None
    assert _leak_found(planted, ka, kb, deep=False)
    (i, j, _), used = nearsplit.pairs_across_splits(m, threshold=0.5, out=planted)
    assert not used and (min(a, b), max(a, b)) in set(zip(i.tolist(), j.tolist(), strict=True))
