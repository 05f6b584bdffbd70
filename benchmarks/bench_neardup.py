"""Benchmark: near-duplicate signatures and the exact pair search (hiroml.exams.neardup).

1. Signature time per radiograph: ``--images`` stored-size arrays (512 x 512 float16, as a
   build stores them), from synthetic chest phantoms.
2. Search over ``--n`` signatures (default 100,000): signatures of smooth random images
   that share a common anatomy-like component (different images correlate as real
   radiographs do, not as white noise), with ``--planted`` near-duplicate pairs (an image
   and a noisy copy); all pairs at ``splits.near_duplicate_threshold`` are found, and the
   planted ones must be among them.

Prints wall time, and the peak resident memory of the process (ru_maxrss) after the search
(the signature timing runs after it).

    python benchmarks/bench_neardup.py [--n 100000] [--images 500] [--planted 100]

Goal (issue 18): the search on 100,000 signatures under a minute on the 2-core build
machine, memory under 1 GB. Peer: a brute-force 1024-d search would take ~10^13 flops.

3. ``--week NEW``: a week's build on ``--n`` signatures (say 1,000,000) of which the last
   ``NEW`` are new (``--planted`` of them noisy copies of older ones): the near-duplicate
   step as a build runs it (``paircache.cached_pair_arrays``: digests, matching against the
   previous build's stored pairs, new x all, storing the result), against the search of
   every pair (``neardup.pair_arrays``) timed at ``--sizes``, projected to ``--n`` as
   ``t * (n / size)^2`` from the largest size, with the ratio of the two. The previous
   build's file holds the digests of the older signatures and no pair (their pairs would
   take the search of every pair that this avoids; they would only be read back).

    python benchmarks/bench_neardup.py --n 1000000 --week 300 --sizes 25000,50000,100000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from hiroml import synth
from hiroml.cxr import pixels as cxr_pixels
from hiroml.exams import neardup, paircache


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stored_images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        shape = (int(rng.integers(900, 1300)), int(rng.integers(800, 1200)))
        px = synth.phantom_chest_2d(shape, np.random.default_rng(seed + k), bits_stored=12)
        a = cxr_pixels.normalize_minmax(px.astype(np.float32))
        small, _ = cxr_pixels.resize(a, (512, 512), keep_aspect=True)
        out.append(small.astype(np.float16))
    return out


def signatures(n: int, planted: int, seed: int) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """``n`` uint8 signatures with ``planted`` near-duplicate pairs (indices returned)."""
    rng = np.random.default_rng(seed)
    side = neardup.SIGNATURE_SIDE
    common = cv2.GaussianBlur(rng.normal(size=(side, side)).astype(np.float32), (0, 0), 3)
    out = np.empty((n, side * side), dtype=np.uint8)
    block = 4096
    for s in range(0, n, block):
        m = min(block, n - s)
        own = rng.normal(size=(m, side, side)).astype(np.float32)
        for k in range(m):
            own[k] = cv2.GaussianBlur(own[k], (0, 0), 1.0)
        imgs = own + 0.6 * common / common.std() * own.std()
        flat = imgs.reshape(m, -1)
        ranks = flat.argsort(axis=1).argsort(axis=1)
        out[s : s + m] = np.rint(ranks * (255.0 / (side * side - 1))).astype(np.uint8)
    pairs = set()
    idx = rng.choice(n, size=2 * planted, replace=False)
    for a, b in zip(idx[:planted], idx[planted:], strict=True):
        noisy = out[a].astype(np.int16) + rng.integers(-4, 5, size=side * side)
        out[b] = np.clip(noisy, 0, 255).astype(np.uint8)
        pairs.add((int(min(a, b)), int(max(a, b))))
    return out, pairs


def week(args: argparse.Namespace) -> None:
    """A week of ``args.week`` new signatures on ``args.n``: new x all against all x all."""
    t = time.perf_counter()
    sigs, _ = signatures(args.n, 0, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    old = args.n - args.week
    fresh = {}
    for k in range(min(args.planted, args.week)):  # new ones that repeat an older image
        a = int(rng.integers(0, old))
        noisy = sigs[a].astype(np.int16) + rng.integers(-4, 5, size=neardup.SIGNATURE_SIZE)
        sigs[old + k] = np.clip(noisy, 0, 255).astype(np.uint8)
        fresh[(a, old + k)] = True
    print(f"{args.n:,} signatures made in {time.perf_counter() - t:.0f} s; {args.week} new")
    for size in sorted(int(v) for v in args.sizes.split(",")):
        t = time.perf_counter()
        neardup.pair_arrays(sigs[:size], threshold=args.threshold)
        full = time.perf_counter() - t
        print(f"all x all: {size:>9,} signatures {full:7.1f} s")
    projected = full * (args.n / size) ** 2
    with tempfile.TemporaryDirectory() as tmp:
        # the previous build: its digests and pairs stored as a build stores them
        empty = np.empty(0, np.int64)
        digests = paircache.row_digests(sigs[:old])
        path = paircache.cache_dir(Path(tmp)) / paircache.CACHE_FILE
        paircache._save(path, digests, (empty, empty, np.empty(0)), args.threshold)
        t = time.perf_counter()
        i, j, _ = paircache.cached_pair_arrays(Path(tmp), sigs, threshold=args.threshold)
        took = time.perf_counter() - t
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    missed = set(fresh) - found
    print(
        f"new x all: {args.n:>9,} signatures ({args.week} new) {took:7.1f} s, "
        f"{len(found)} pairs ({len(fresh) - len(missed)} of {len(fresh)} planted found)\n"
        f"all x all projected to {args.n:,}: {projected:,.0f} s (from {size:,}: x "
        f"{(args.n / size) ** 2:,.0f}); ratio all x all / new x all: {projected / took:,.0f}\n"
        f"new x all grows with n: about {took * 10:,.0f} s for {args.week} new on "
        f"{args.n * 10:,}; peak memory (ru_maxrss) {peak_mb():,.0f} MB"
    )
    if missed:
        raise SystemExit(f"missed planted pairs: {sorted(missed)[:5]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--planted", type=int, default=100)
    parser.add_argument("--threshold", type=float, default=neardup.DEFAULT_THRESHOLD)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--week", type=int, default=0, help="new signatures of a week (3.)")
    parser.add_argument("--sizes", default="25000,50000,100000", help="all x all sizes (3.)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    if args.week:
        week(args)
        return
    sigs, planted = signatures(args.n, args.planted, args.seed)
    print(f"{args.n:,} signatures made; peak memory so far {peak_mb():.0f} MB")
    t = time.perf_counter()
    pairs = neardup.find_pairs(sigs, threshold=args.threshold)
    took = time.perf_counter() - t
    found = {(p.i, p.j) for p in pairs}
    missed = planted - found
    u = neardup.unit_vectors(sigs[:2000])
    sample = u @ u.T
    off = sample[np.triu_indices(len(u), 1)]
    print(
        f"search: {args.n:,} signatures, threshold {args.threshold}: {took:.1f} s, "
        f"{len(pairs)} pairs ({len(planted) - len(missed)} of {len(planted)} planted found); "
        f"different signatures correlate at median {np.median(off):.2f}, max {off.max():.2f}"
    )
    print(f"peak memory (ru_maxrss): {peak_mb():.0f} MB")

    images = stored_images(args.images, args.seed)
    t = time.perf_counter()
    for a in images:
        neardup.signature(a)
    per = (time.perf_counter() - t) / max(1, len(images))
    print(
        f"signature: {per * 1e3:.2f} ms per 512 x 512 radiograph ({len(images)} images; "
        f"{per * args.n:.0f} s of worker time for {args.n:,}, spread over the conversion tasks)"
    )
    if missed:
        raise SystemExit(f"missed planted pairs: {sorted(missed)[:5]}")


if __name__ == "__main__":
    main()
