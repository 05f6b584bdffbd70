"""``hiroml-synth ROOT --seed N --size tiny|demo|full``: write a synthetic datamart."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from hiroml.cli.common import add_version, console
from hiroml.synth import SIZES, TRUTH_NAME, generate


def main(argv: Sequence[str] | None = None) -> int:
    """``hiroml-synth OUT [--seed N] [--size tiny|demo|bench]``: write a synthetic datamart."""
    p = argparse.ArgumentParser(prog="hiroml-synth", description=main.__doc__)
    p.add_argument("out", help="folder to create (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="demo")
    add_version(p)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        truth = generate(a.out, seed=a.seed, size=a.size)
    except (FileExistsError, ValueError) as e:
        print(f"hiroml-synth: {e}")
        return 2
    c = truth["counts"]
    print(
        f"hiroml-synth: wrote {a.out} (seed {a.seed}, size {a.size}): {c['batches']} batches, "
        f"{c['zips']} zips, {c['instances']} DICOM instances, {c['bytes'] / 1e6:.1f} MB in "
        f"{time.perf_counter() - t0:.1f} s; ground truth in {Path(a.out) / TRUTH_NAME}"
    )
    return 0


cli = console("hiroml-synth", main)

if __name__ == "__main__":
    cli()
