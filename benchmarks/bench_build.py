"""Whole-build throughput: exams/s and images/s with 1 and 2 workers, and the share of time
per stage; the peer is the sum of the conversion stage alone (CXR + CT tasks run directly).

    python benchmarks/bench_build.py [--datamart DIR] [--size bench|demo|tiny] [--workers 1 2]
    python benchmarks/bench_build.py --mode xr [--rows R --cols C --xr-uncompressed 60 --xr-j2k 20]
    python benchmarks/bench_build.py --mode small-zips [-n 4000]

``--mode small-zips --datamart DIR`` runs that table over an existing datamart's zips;
``--build-with CHECKOUT`` runs the build subprocess on another checkout's hiroml (e.g. the
previous release: ``git worktree add /tmp/old <commit>``) for a before/after. ``--mode xr`` and ``--mode small-zips``: see :mod:`bench_build_xr` (whole build beside a
zip-read + pydicom decode loop over the same zips, issues 14 and 16).

Goal (issue 8): 2 workers >= 1.8x one; the whole build within 1.3x of its conversion time.
The worker counts run in alternating order (1, 2, 2, 1) and each row is the mean of two.
Without --datamart the synthetic datamart of --size is generated once under
/tmp/hiroml-bench-<size>.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import bench_build_xr
from common import bench_datamart

from hiroml import pipeline as build
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
    ap.add_argument("--mode", choices=("build", "xr", "small-zips"), default="build")
    ap.add_argument("--rows", type=int, default=1800, help="xr: radiograph rows")
    ap.add_argument("--cols", type=int, default=1700, help="xr: radiograph columns")
    ap.add_argument("--xr-uncompressed", type=int, default=60, help="xr: images per syntax")
    ap.add_argument("--xr-j2k", type=int, default=20, help="xr: JPEG 2000 images")
    ap.add_argument("-n", type=int, default=4000, help="small-zips: number of zips")
    ap.add_argument(
        "--build-with",
        metavar="CHECKOUT",
        help="xr, small-zips: run the build subprocess on the hiroml of another checkout "
        "(its root folder, put first on PYTHONPATH), e.g. a previous release, for a before/after",
    )
    args = ap.parse_args()
    if args.build_with:
        bench_build_xr.build_with(Path(args.build_with))
    if args.mode == "small-zips" and args.datamart:
        bench_build_xr.run_existing(Path(args.datamart))
        return
    if args.mode != "build":
        with tempfile.TemporaryDirectory() as tmp:
            if args.mode == "xr":
                bench_build_xr.run_xr(
                    Path(tmp), args.rows, args.cols, args.xr_uncompressed, args.xr_j2k
                )
            else:
                bench_build_xr.run_small_zips(Path(tmp), args.n)
        return
    root = bench_datamart(args.datamart, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        # Alternate the order (1, 2, 2, 1): a machine warming up or a neighbour's load
        # favours neither worker count; each row is the mean of its two runs.
        walls: dict[int, list[float]] = {w: [] for w in args.workers}
        last: dict[int, build.BuildSummary] = {}
        for w in [*args.workers, *reversed(args.workers)]:
            last[w], wall = _build(root, w, Path(tmp))
            walls[w].append(wall)
        rows = [(w, last[w], sum(walls[w]) / len(walls[w])) for w in args.workers]
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
