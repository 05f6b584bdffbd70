"""Publishing a version hands the freed memory back (the heap's free pages and pyarrow's
pool, :func:`hiroml.pipeline.allocator.release_all`) after each step that made large
temporaries: the dataset hash, the tables' writing, the diff. Otherwise the driver carries
them into the next step's peak (about 10, 20 and 20 MB at 6,000 samples)."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_manifest import make_output

from hiroml.pipeline import allocator
from hiroml.store import tables
from hiroml.versions import publishing


def test_publish_releases_freed_memory_after_the_hash_the_writing_and_the_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = make_output(tmp_path)
    steps: list[str] = []

    def recorded(name: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            steps.append(name)
            return result

        return call

    monkeypatch.setattr(allocator, "release_all", recorded("release", allocator.release_all))
    monkeypatch.setattr(publishing, "hash_table", recorded("hash", publishing.hash_table))
    monkeypatch.setattr(publishing, "diff_tables", recorded("diff", publishing.diff_tables))
    monkeypatch.setattr(tables, "write_outputs", recorded("write", tables.write_outputs))
    published = publishing.publish(
        out,
        pd.read_parquet(out / "manifest.parquet"),
        pd.read_parquet(out / "patients.parquet"),
        pd.read_csv(out / "audit.csv", dtype=str, keep_default_na=False),
        write_report=lambda *a: None,
        build_info={},
        keep=10,
    )
    assert published.new
    assert steps == ["hash", "release", "write", "release", "diff", "release"]


def test_the_arrow_manifest_is_let_go_before_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report reads the frame: the manifest's Arrow table (hashed, written, diffed) is no
    longer held while it is written, and ``build.json`` still counts its samples."""
    out = make_output(tmp_path)
    made: list[weakref.ref[Any]] = []

    def manifest_table(frame: pd.DataFrame) -> Any:
        table = make_table(frame)
        made.append(weakref.ref(table))
        return table

    make_table = tables.manifest_table
    monkeypatch.setattr(tables, "manifest_table", manifest_table)
    alive_at_report: list[bool] = []

    def write_report(*args: Any) -> None:
        gc.collect()
        alive_at_report.append(made[0]() is not None)

    manifest = pd.read_parquet(out / "manifest.parquet")
    published = publishing.publish(
        out,
        manifest,
        pd.read_parquet(out / "patients.parquet"),
        pd.read_csv(out / "audit.csv", dtype=str, keep_default_na=False),
        write_report=write_report,
        build_info={},
        keep=10,
    )
    assert len(made) == 1 and alive_at_report == [False]
    info = json.loads((published.version.path / "build.json").read_text())
    assert info["samples"] == len(manifest)
