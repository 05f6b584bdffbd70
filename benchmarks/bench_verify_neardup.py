"""Benchmark: hiroml-verify's near-duplicate check across splits (hiroml.store.nearsplit).

``--n`` synthetic signatures (those of ``bench_neardup.py``: different images correlate as
radiographs do) in a manifest frame, split ``--test`` / ``--val`` / the rest train, with
``--planted`` near-duplicate leaks (an image in test, a noisy copy in train); the last
``--week`` signatures are new since the build that kept the pairs file. Times, on the same
frame:

* every pair, then those across splits (what ``hiroml-verify`` compared before);
* the exact search across splits (``hiroml-verify``);
* the recorded pairs read back, the week's signatures searched against all
  (``hiroml-verify --quick``), the pairs file made as a build makes it and recorded in a
  version's ``build.json``.

Each mode must find every planted leak and the same pairs. Wall seconds (the machine is
shared: run it twice).

    python benchmarks/bench_verify_neardup.py --n 100000 --test 0.1 --val 0.1 --week 300
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from bench_neardup import peak_mb, signatures

from hiroml.exams import neardup, paircache
from hiroml.store import nearsplit
from hiroml.vocab import BUILD_JSON, MANIFEST, Split


def manifest(args: argparse.Namespace) -> tuple[pd.DataFrame, set[tuple[int, int]]]:
    """The frame (sample_key, split, data_hash, signature) and the planted leaks (rows)."""
    sigs, planted = signatures(args.n, args.planted, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    u = rng.random(args.n)
    split = np.where(
        u < args.test, Split.TEST, np.where(u < args.test + args.val, Split.VAL, Split.TRAIN)
    )
    for a, b in planted:
        split[a], split[b] = Split.TEST, Split.TRAIN
    m = pd.DataFrame(
        {
            "sample_key": [f"s{k:07d}" for k in range(args.n)],
            "split": split.astype(str),
            "data_hash": [f"h{k}" for k in range(args.n)],
            "signature": list(sigs),
        }
    )
    return m, planted


def recorded(
    out: Path, sigs: np.ndarray, old: int, threshold: float, every: neardup.PairArrays | None
) -> None:
    """The pairs file of a build over the first ``old`` signatures, recorded in a version:
    the pairs of ``every`` (all pairs of ``sigs``) among them, else searched."""
    if every is None:
        i, j, sim = neardup.pair_arrays(sigs[:old], threshold=threshold)  # as a first build
    else:
        keep = every[1] < old
        i, j, sim = every[0][keep], every[1][keep], every[2][keep]
    path = paircache.cache_dir(out) / paircache.CACHE_FILE
    paircache._save(path, paircache.row_digests(sigs[:old]), (i, j, sim), threshold)
    version = out / "versions" / "0001-00000000"
    version.mkdir(parents=True)
    (version / MANIFEST).touch()
    record = {paircache.RECORD_KEY: paircache.file_record(out)}
    (version / BUILD_JSON).write_text(json.dumps(record))


def _pairs(ij: tuple[np.ndarray, np.ndarray]) -> set[tuple[int, int]]:
    return set(zip(ij[0].tolist(), ij[1].tolist(), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--test", type=float, default=0.1)
    parser.add_argument("--val", type=float, default=0.1)
    parser.add_argument("--week", type=int, default=300)
    parser.add_argument("--planted", type=int, default=50)
    parser.add_argument("--threshold", type=float, default=neardup.DEFAULT_THRESHOLD)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-every-pair", action="store_true", help="skip the slowest")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    m, planted = manifest(args)
    counts = m["split"].value_counts().to_dict()
    print(f"{args.n:,} signatures, splits {counts}, {len(planted)} leaks planted")
    rows, sigs = nearsplit.signature_rows(m)
    split = m["split"].to_numpy()[rows]
    found = {}
    every = None
    if not args.skip_every_pair:
        t = time.perf_counter()
        every = neardup.pair_arrays(sigs, threshold=args.threshold)
        i, j, _ = every
        cross = split[i] != split[j]
        found["every pair"] = (_pairs((i[cross], j[cross])), time.perf_counter() - t)
    t = time.perf_counter()
    (i, j, _), used = nearsplit.pairs_across_splits(m, threshold=args.threshold)
    found["across splits (exact)"] = (_pairs((i, j)), time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        recorded(Path(tmp), sigs, args.n - args.week, args.threshold, every)
        t = time.perf_counter()
        (i, j, _), used = nearsplit.pairs_across_splits(m, threshold=args.threshold, out=Path(tmp))
        found["recorded + week (--quick)"] = (_pairs((i, j)), time.perf_counter() - t)
    assert used, "the recorded pairs were not used"
    want = next(iter(found.values()))[0]
    for name, (pairs, took) in found.items():
        missed = planted - pairs
        print(
            f"{name:>28}: {took:8.2f} s, {len(pairs)} pairs across splits, "
            f"{len(planted) - len(missed)} of {len(planted)} planted found"
        )
        if missed or pairs != want:
            raise SystemExit(f"{name}: missed {sorted(missed)[:5]} or other pairs")
    print(f"peak memory (ru_maxrss) {peak_mb():,.0f} MB")


if __name__ == "__main__":
    main()
