"""Benchmark: the whole-dataset steps a weekly build repeats, in-process, on an output folder.

A week converts only its new zips, but some steps still go over every sample: reading the
task records of the tasks it reuses, writing and hashing the manifest, the leak check, the
diff against the previous version, the shrink guard. This times each of them on an existing
output (the latest version and the one before it), CPU ms, the first of ``--repeat`` runs (a
build runs each step once: its buffers take pages the process has not touched yet, which on
a virtual machine cost about 2.5 ms per MB) and the best, with the hiroml on ``PYTHONPATH``
(run it once per checkout to compare two). Where the output keeps its manifests' signatures
(``.hiroml/columns``, :mod:`hiroml.versions.keptcolumns`), the diff is also timed reading
them:

    python benchmarks/bench_week_steps.py OUT
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_week_steps.py OUT

``OUT`` is a hiroml output with at least two versions, e.g. a week built on top of a first
build (``python benchmarks/bench_scale.py`` makes such outputs in its work folder). The
steps read the output and write only into a temporary folder.
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from hiroml.exams.splits import find_leaks
from hiroml.pipeline import tasks
from hiroml.pipeline.allocator import keep_freed_buffers
from hiroml.store import guard
from hiroml.store.reader import read_manifest
from hiroml.store.tables import MANIFEST_ROW_GROUP_ROWS
from hiroml.versions.changes import diff_tables
from hiroml.versions.hashing import hash_table
from hiroml.versions.listing import list_versions
from hiroml.vocab import MANIFEST, STATE_DIR


def first_and_best_ms(step: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """The CPU milliseconds of the first of ``repeat`` runs of ``step`` (as a build runs it:
    once, its buffers on pages the process has not touched yet) and the least of them."""
    times = []
    for _ in range(repeat):
        t = time.process_time()
        step()
        times.append(time.process_time() - t)
    return times[0] * 1e3, min(times) * 1e3


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
    stored = sorted((args.out / STATE_DIR / "tasks").glob("*.json"))
    records = [tasks._result_from_json(*tasks.read_record(p)) for p in stored]
    samples = sum(len(r.samples) for r in records)
    print(f"{args.out}: {table.num_rows} samples; {len(records)} task records of {samples} samples")
    with tempfile.TemporaryDirectory() as tmp:
        written = Path(tmp) / MANIFEST
        for r in records:  # as this hiroml writes them
            tasks.save_task_record(tmp, r)
        saved = sorted((Path(tmp) / STATE_DIR / "tasks").glob("*.json"))
        steps: dict[str, Callable[[], Any]] = {
            "task records read back": lambda: [
                tasks._result_from_json(*tasks.read_record(p)) for p in saved
            ],
            "task records written": lambda: [tasks.save_task_record(tmp, r) for r in records],
            "manifest written": lambda: pq.write_table(
                table, written, row_group_size=MANIFEST_ROW_GROUP_ROWS
            ),
            "dataset hash": lambda: hash_table(table),
            "leak check": lambda: find_leaks(frame),
            "diff against the version before": lambda: diff_tables(
                before, latest, a_name="a", b_name="b", b_manifest=table
            ),
            "shrink guard": lambda: guard.compare(
                guard.read_previous(args.out), frame, pd.DataFrame(columns=["zip", "action"]), []
            ),
        }
        kept = args.out / STATE_DIR / "columns"
        if "kept" in inspect.signature(diff_tables).parameters and kept.is_dir():
            steps["diff, signatures kept (.hiroml/columns)"] = lambda: diff_tables(
                before, latest, a_name="a", b_name="b", b_manifest=table, kept=kept
            )
        print(f"  {'CPU ms':42} {'first':>8} {'best':>8}")
        for name, step in steps.items():
            first, best = first_and_best_ms(step, args.repeat)
            print(f"  {name:42} {first:8.1f} {best:8.1f}")


if __name__ == "__main__":
    main()
