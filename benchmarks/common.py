"""Shared by the benchmark scripts: the datamart they measure."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from hiroml import synth


def bench_datamart(datamart: str | None, size: str) -> Path:
    """``datamart`` when given; else the synthetic datamart of ``size``, generated once under
    the temporary folder (``/tmp/hiroml-bench-<size>``) and reused by later runs."""
    if datamart:
        return Path(datamart)
    root = Path(tempfile.gettempdir()) / f"hiroml-bench-{size}"
    if not (root / synth.TRUTH_NAME).is_file():
        t = time.perf_counter()
        synth.generate(root, seed=0, size=size)
        print(f"generated {root} in {time.perf_counter() - t:.1f} s")
    return root
