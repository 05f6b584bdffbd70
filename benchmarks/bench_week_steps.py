"""Benchmark: the whole-dataset steps a weekly build repeats, in-process, on an output folder.

A week converts only its new zips, but some steps still go over every sample: reading the
task records of the tasks it reuses, writing and hashing the manifest, the leak check, the
diff against the previous version. This times each of them on an existing output (the
latest version and the one before it), CPU ms, the best of ``--repeat`` runs, with the
hiroml on ``PYTHONPATH`` (run it once per checkout to compare two):

    python benchmarks/bench_week_steps.py OUT
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_week_steps.py OUT

``OUT`` is a hiroml output with at least two versions, e.g. a week built on top of a first
build (``python benchmarks/bench_scale.py`` makes such outputs in its work folder). The
steps read the output and write only into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from hiroml.exams.splits import find_leaks
from hiroml.pipeline import tasks
from hiroml.pipeline.allocator import keep_freed_buffers
from hiroml.store.reader import read_manifest
from hiroml.store.tables import MANIFEST_ROW_GROUP_ROWS
from hiroml.versions.changes import diff_tables
from hiroml.versions.hashing import hash_table
from hiroml.versions.listing import list_versions
from hiroml.vocab import MANIFEST, STATE_DIR


def best_ms(step: Callable[[], Any], repeat: int) -> float:
    """The least CPU milliseconds of ``repeat`` runs of ``step``."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        step()
        best = min(best, time.process_time() - t)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a hiroml output with two versions or more")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each step (the best)")
    args = parser.parse_args()
    keep_freed_buffers()  # as hiroml-build runs
    versions = list_versions(args.out)
    if len(versions) < 2:
        raise SystemExit(f"{args.out}: {len(versions)} version(s); the diff needs two")
    before, latest = versions[-2].path, versions[-1].path
    table = pq.read_table(latest / MANIFEST)
    frame = read_manifest(latest)
    stored = [p.read_text() for p in sorted((args.out / STATE_DIR / "tasks").glob("*.json"))]
    records = [tasks._result_from_json(json.loads(t)) for t in stored]
    texts = [json.dumps(tasks._result_to_json(r)) for r in records]  # as this hiroml writes
    samples = sum(len(r.samples) for r in records)
    print(f"{args.out}: {table.num_rows} samples; {len(texts)} task records of {samples} samples")
    with tempfile.TemporaryDirectory() as tmp:
        written = Path(tmp) / MANIFEST
        steps: dict[str, Callable[[], Any]] = {
            "task records read back": lambda: [
                tasks._result_from_json(json.loads(t)) for t in texts
            ],
            "task records written (JSON)": lambda: [
                json.dumps(tasks._result_to_json(r)) for r in records
            ],
            "manifest written": lambda: pq.write_table(
                table, written, row_group_size=MANIFEST_ROW_GROUP_ROWS
            ),
            "dataset hash": lambda: hash_table(table),
            "leak check": lambda: find_leaks(frame),
            "diff against the version before": lambda: diff_tables(
                before, latest, a_name="a", b_name="b", b_manifest=table
            ),
        }
        for name, step in steps.items():
            print(f"  {name:34} {best_ms(step, args.repeat):8.1f} ms")


if __name__ == "__main__":
    main()
