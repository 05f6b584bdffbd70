"""Benchmark: the shrink guard's comparison (:func:`hiroml.store.guard.compare`).

Builds a previous manifest of ``--samples`` radiographs of ``--samples / 5`` patients over 50
weekly batches, and a new one that lost one batch (2%), through a Parquet round trip so the
columns have the types a real manifest read back has; then times the comparison (best of
``--repeat``; building the frames is not timed).

    python benchmarks/bench_guard.py [--samples 100000] [--repeat 3]

There is no external peer; the goal is that the check costs little next to a build (a
build of 100,000 samples takes hours, the check should take seconds at most).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from hiroml.store.guard import compare


def _frames(n: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    prev = pd.DataFrame(
        {
            "sample_key": [f"p{i % (n // 5)}_e{i}:1.2.{i}" for i in range(n)],
            "patient_id": [f"p{i % (n // 5)}" for i in range(n)],
            "modality": ["cxr"] * n,
            "series_uid": [f"9.{i}" for i in range(n)],
            "sop_uid": [f"1.2.{i}" for i in range(n)],
            "sop_uids": [[f"1.2.{i}"] for i in range(n)],
            "data_hash": [f"h{i}" for i in range(n)],
            "source_zips": [[f"z{i}.zip"] for i in range(n)],
            "batch": [f"B{i % 50}" for i in range(n)],
            "batches": [[f"B{i % 50}"] for i in range(n)],
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.parquet"
        prev.to_parquet(path)
        prev = pd.read_parquet(path)
    new = prev[prev["batch"] != "B7"].reset_index(drop=True)
    audit = pd.DataFrame({"zip": [f"z{i}.zip" for i in range(n)], "action": ["kept"] * n})
    return prev, new, audit, [f"B{i}" for i in range(50) if i != 7]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    prev, new, audit, read = _frames(args.samples)
    best = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        check = compare(prev, new, audit, read)
        best = min(best, time.perf_counter() - t)
    print(
        f"{len(prev)} previous samples, {len(new)} new: compare {best:.2f} s (best of "
        f"{args.repeat}); {check.describe()[:140]}"
    )


if __name__ == "__main__":
    main()
