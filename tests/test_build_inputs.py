"""What a build's stages before conversion cost: objects kept out of the cyclic garbage
collector's walks while the build runs, handed back when it ends."""

from __future__ import annotations

import datetime as dt
import gc
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeCfg

from hiroml import pipeline as build
from hiroml.exams import rules
from hiroml.pipeline import allocator, driver


def test_a_build_keeps_its_records_out_of_the_collectors_walks_until_it_ends(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frozen: list[int] = []
    real = driver.plan_tasks

    def spy(*args: Any, **kwargs: Any) -> Any:  # after the index and the exams
        frozen.append(gc.get_freeze_count())
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "plan_tasks", spy)
    assert gc.get_freeze_count() == 0
    summary = build.run(make_cfg(tiny_datamart[0], tmp_path / "out"))
    assert summary.published
    # the modules, the index's records and the exams: thousands of objects
    assert frozen and frozen[0] > 10_000
    assert gc.get_freeze_count() == 0, "a build left objects out of the collector's walks"


@pytest.mark.parametrize("young", [700, 2_000, 0, 500_000])
def test_a_build_collects_its_young_objects_less_often_and_restores_the_threshold(
    young: int,
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    during: list[tuple[int, int, int]] = []
    real = driver.plan_tasks

    def spy(*args: Any, **kwargs: Any) -> Any:
        during.append(gc.get_threshold())
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "plan_tasks", spy)
    before = gc.get_threshold()
    try:
        gc.set_threshold(young, 9, 11)
        assert build.run(make_cfg(tiny_datamart[0], tmp_path / "out")).published
        after = gc.get_threshold()
    finally:
        gc.set_threshold(*before)
    # raised while the build runs; a higher threshold, or 0 (the collector off), left alone
    least = allocator.YOUNG_THRESHOLD
    expected = young if young == 0 or young >= least else least
    assert during == [(expected, 9, 11)]
    assert after == (young, 9, 11), "a build left the collector's thresholds changed"


@pytest.mark.parametrize(
    "when",
    [
        dt.datetime(2020, 1, 2, 3, 4, 5),
        dt.datetime(999, 12, 31, 23, 59, 59),
        dt.datetime(1, 1, 1),
        dt.datetime(1000, 10, 10, 10, 10, 10),
        dt.datetime(9999, 12, 31, 23, 59, 59),
    ],
)
def test_an_exam_keys_timestamp_is_strftimes(when: dt.datetime) -> None:
    assert rules._stamp(when) == when.strftime("%Y%m%d-%H%M%S")
