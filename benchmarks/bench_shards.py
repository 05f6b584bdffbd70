"""Cost of ``ShardWriter.add`` per sample, this layout against an older ``shards.py``.

The same arrays go through each writer: 256 x 256 and 512 x 512 float16 radiographs and
64 x 256 x 256 uint16 CT volumes, uncompressed (the default) and lz4. Each writer run
covers ``--per-writer`` samples (a build's task writes its own shards, ~16 samples each on
the many-small-zips datamart of issue 16) and its time includes closing the shards
(index, fsync, checksum). Prints ms per sample and MB/s of array bytes. Usage::

    git show <commit>:hiroml/shards.py > /tmp/old_shards.py   # e.g. the format-1 writer
    python benchmarks/bench_shards.py --old /tmp/old_shards.py
    python benchmarks/bench_shards.py                         # this layout only
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from hiroml.store import shards

CASES = {  # name: (shape, dtype, number of samples)
    "cxr 256x256 f2": ((256, 256), np.float16, 512),
    "cxr 512x512 f2": ((512, 512), np.float16, 256),
    "ct 64x256x256 u2": ((64, 256, 256), np.uint16, 16),
}


def load_module(path: Path) -> ModuleType:
    """Import a ``shards.py`` from a file (an older version of this module)."""
    spec = importlib.util.spec_from_file_location("old_shards", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_shards"] = module
    spec.loader.exec_module(module)
    return module


def per_sample_ms(
    module: ModuleType, arrays: list[np.ndarray], per_writer: int, compression: str, root: Path
) -> float:
    """Milliseconds per sample to write ``arrays`` through writers of ``per_writer``
    samples each, shard closing included; the best of three runs."""
    best = float("inf")
    for run in range(3):
        folder = root / f"run{run}"
        folder.mkdir()
        t0 = time.perf_counter()
        for w0 in range(0, len(arrays), per_writer):
            with module.ShardWriter(
                folder,
                f"task-{w0:05d}",
                modality="cxr",
                max_samples=512,
                max_bytes=2 * 1024**3,
                compression=compression,
                attrs={"config_hash": "0" * 16, "task_id": f"task-{w0:05d}"},
            ) as w:
                for i, arr in enumerate(arrays[w0 : w0 + per_writer], start=w0):
                    w.add(f"k{i:06d}", arr, {"sop_uid": f"1.2.3.{i}", "scale": 1.0, "view": "x"})
        best = min(best, time.perf_counter() - t0)
        shutil.rmtree(folder)
    return best * 1000 / len(arrays)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", type=Path, default=None, help="an older shards.py to compare with")
    p.add_argument("--per-writer", type=int, default=16, help="samples per ShardWriter")
    p.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = p.parse_args()
    writers = {f"format {shards.FORMAT_VERSION} (this)": shards}
    if args.old is not None:
        old = load_module(args.old)
        writers = {f"format {old.FORMAT_VERSION} ({args.old.name})": old, **writers}
    rng = np.random.default_rng(0)
    print(
        f"ShardWriter.add, ms per sample ({args.per_writer} samples per writer, closing included)"
    )
    print("| case | compression | " + " | ".join(writers) + " |")
    print("|---|---|" + "---:|" * len(writers))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        for case, (shape, dtype, n) in CASES.items():
            kind = np.dtype(dtype)
            arrays = [
                rng.random(shape, dtype=np.float32).astype(kind)
                if kind.kind == "f"
                else rng.integers(0, 4096, shape, dtype=kind)
                for _ in range(n)
            ]
            mb = arrays[0].nbytes / 1e6
            for compression in ("none", "lz4"):
                cells = []
                for name, module in writers.items():
                    work = root / name.replace(" ", "_").replace("(", "").replace(")", "")
                    work.mkdir(exist_ok=True)
                    ms = per_sample_ms(module, arrays, args.per_writer, compression, work)
                    cells.append(f"{ms:.2f} ({mb / ms * 1000:,.0f} MB/s)")
                print(f"| {case} | {compression} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
