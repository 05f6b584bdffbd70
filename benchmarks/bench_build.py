"""Whole-build throughput: exams/s and images/s with 1 and 2 workers, and the share of time
per stage; the peer is the sum of the conversion stage alone (CXR + CT tasks run directly).

    python benchmarks/bench_build.py [--datamart DIR] [--size bench|demo|tiny] [--workers 1 2]

Goal (issue 8): 2 workers >= 1.8x one; the whole build within 1.3x of its conversion time.
Without --datamart the synthetic datamart of --size is generated once under
/tmp/hiroml-bench-<size>.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import bench_datamart

from hiroml import build
from hiroml.config import BuildConfig, ExecutorConfig, PathsConfig


def _build(root: Path, workers: int, tmp: Path) -> tuple[build.BuildSummary, float]:
    out = tmp / f"out-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = BuildConfig(
        paths=PathsConfig(datamart=str(root), output=str(out)),
        executor=ExecutorConfig(workers=workers),
        progress=False,
    )
    t = time.perf_counter()
    summary = build.run(cfg)
    return summary, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--datamart")
    ap.add_argument("--size", default="bench")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    root = bench_datamart(args.datamart, args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            s, wall = _build(root, w, Path(tmp))
            rows.append((w, s, wall))
    base = rows[0][2]
    print(f"datamart {root}")
    print(f"{'workers':>8}{'seconds':>9}{'exams/s':>9}{'images/s':>10}{'speed-up':>10}  stages (s)")
    for w, s, wall in rows:
        n_img = s.cxr_images + s.ct_volumes
        stages = ", ".join(f"{k} {v:.1f}" for k, v in s.stage_seconds.items())
        print(
            f"{w:>8}{wall:9.1f}{s.exams / wall:9.2f}{n_img / wall:10.2f}{base / wall:10.2f}x  {stages}"
        )
    for w, s, wall in rows:
        conv = s.stage_seconds.get("convert", 0.0)
        print(
            f"workers {w}: whole build / conversion = {wall / conv:.2f}x "
            f"(index {s.stage_seconds.get('index', 0):.1f} s of it)"
        )


if __name__ == "__main__":
    main()
