"""A worker process that dies (the kernel's out-of-memory killer, a crash in native code) is
not a build that dies: the exam that kills its process becomes an error row naming its zips,
every other exam converts (hiroml.pipeline.executor)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import MakeCfg

from hiroml import pipeline as build
from hiroml.config import ExecutorConfig
from hiroml.errors import WorkerDiedError
from hiroml.pipeline import executor, faults

DIED = "the worker process died (signal 9 — out of memory?)"


@pytest.fixture(scope="module")
def clean(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path_factory: pytest.TempPathFactory,
) -> pd.DataFrame:
    """The manifest of the tiny datamart built with no fault."""
    root, _ = tiny_datamart
    out = tmp_path_factory.mktemp("clean") / "out"
    build.run(make_cfg(root, out))
    return pd.read_parquet(out / "manifest.parquet")


COLS = ["sample_key", "exam_key", "data_hash", "shape", "view"]


def _samples(df: pd.DataFrame) -> pd.DataFrame:
    return df[COLS].astype(str).sort_values("sample_key").reset_index(drop=True)


def _build(root: Path, out: Path, fault: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "hiroml", f"paths.datamart={root}", f"paths.output={out}",
           "progress=false", "executor.workers=2", f"runtime.fault={fault}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "BrokenProcessPool" not in done.stderr
    return done


def test_an_exam_that_kills_its_worker_is_an_error_row_and_the_others_convert(
    tiny_datamart: tuple[Path, dict[str, Any]], clean: pd.DataFrame, tmp_path: Path
) -> None:
    root, _ = tiny_datamart
    ref = clean
    # a radiograph exam whose task holds other exams (the tiny datamart's first batch)
    cxr = ref[ref["modality"] == "cxr"].sort_values("sample_key")
    victim = str(cxr["exam_key"].iloc[len(cxr) // 2])
    out = tmp_path / "out"
    _build(root, out, f"kill_exam:{victim}")
    got = pd.read_parquet(out / "manifest.parquet")
    assert victim not in set(got["exam_key"])
    pd.testing.assert_frame_equal(_samples(got), _samples(ref[ref["exam_key"] != victim]))
    audit = pd.read_csv(out / "audit.csv", dtype=str, keep_default_na=False)
    rows = audit[audit["reason"].str.contains(DIED, regex=False)]
    assert len(rows) >= 1 and set(rows["action"]) == {"error"}
    assert all(r.startswith(f"exam {victim}: ") for r in rows["reason"])
    zips = {Path(z).name for zs in ref.loc[ref["exam_key"] == victim, "source_zips"] for z in zs}
    assert set(rows["zip"]) == zips


def test_a_zip_that_kills_its_index_worker_is_an_error_row_and_the_others_convert(
    tiny_datamart: tuple[Path, dict[str, Any]], clean: pd.DataFrame, tmp_path: Path
) -> None:
    root, _ = tiny_datamart
    # a radiograph exam of one zip: the zip's loss takes that exam only
    cxr = clean[clean["modality"] == "cxr"].sort_values("sample_key")
    one = cxr[cxr["source_zips"].map(len) == 1]
    victim = str(one["exam_key"].iloc[0])
    name = Path(str(one["source_zips"].iloc[0][0])).name
    out = tmp_path / "out"
    _build(root, out, f"kill_zip:{name}")
    audit = pd.read_csv(out / "audit.csv", dtype=str, keep_default_na=False)
    rows = audit[audit["zip"] == name]
    assert list(rows["action"]) == ["error"]
    assert rows["reason"].iloc[0] == f"{name}: {DIED} while it was indexed"
    got = pd.read_parquet(out / "manifest.parquet")
    pd.testing.assert_frame_equal(_samples(got), _samples(clean[clean["exam_key"] != victim]))


def _kill_on(items: tuple[int, ...]) -> int:
    for n in items:
        faults.exam(str(n))  # SIGKILL when kill_exam:<n> is armed
    return sum(items)


def test_without_pieces_a_second_death_is_one_clear_error() -> None:
    faults.arm("kill_exam:3")
    try:
        with pytest.raises(WorkerDiedError, match=r"signal 9 — out of memory\?"):
            list(executor.map_items(_kill_on, [(1,), (2,), (3,), (4,)], ExecutorConfig(workers=2),
                                    desc="t", unit="i", progress=False))  # fmt: skip
    finally:
        faults.arm(None)


def test_the_piece_that_kills_its_process_is_named_and_the_other_pieces_complete() -> None:
    reasons: list[str] = []

    def died(piece: tuple[int, ...], reason: str) -> int:
        reasons.append(reason)
        return -1000 * piece[0]

    retry = executor.Retry(
        split=lambda t: [(n,) for n in t], died=died, join=lambda _t, parts: sum(parts)
    )
    faults.arm("kill_exam:4")
    try:
        got = dict(executor.map_items(_kill_on, [(1, 2), (3, 4, 5), (6,)],
                                      ExecutorConfig(workers=2), desc="t", unit="i",
                                      progress=False, retry=retry))  # fmt: skip
    finally:
        faults.arm(None)
    assert got == {(1, 2): 3, (3, 4, 5): 3 - 4000 + 5, (6,): 6}
    assert reasons == [DIED]


def test_death_reasons_name_the_signal() -> None:
    assert executor.death_reason(-9) == DIED
    assert (
        executor.death_reason(-11) == "the worker process died (signal 11 — a crash in native code)"
    )
    assert executor.death_reason(137) == "the worker process died (exit status 137)"
