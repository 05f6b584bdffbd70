"""Re-runs with nothing new (hiroml.pipeline.unchanged): the same inputs answer at once
from the record of the last build; any change to an input, to a result-changing key or to
the output's files builds as always."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeCfg

from hiroml import pipeline as build
from hiroml.pipeline import unchanged
from hiroml.versions.listing import list_versions


@pytest.fixture()
def once(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> tuple[Path, Path, build.BuildSummary]:
    """A copy of the tiny datamart (so a test may change it) built once."""
    dm = tmp_path / "dm"
    shutil.copytree(tiny_datamart[0], dm)
    out = tmp_path / "out"
    return dm, out, build.run(make_cfg(dm, out))


def _mtimes(out: Path) -> dict[str, int]:
    return {
        str(p.relative_to(out)): p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file() and ".hiroml" not in p.parts
    }


def test_same_inputs_answer_from_the_record_and_touch_nothing(
    once: tuple[Path, Path, build.BuildSummary], make_cfg: MakeCfg
) -> None:
    dm, out, first = once
    assert not first.unchanged and first.published
    assert unchanged.record_path(out).is_file()
    files = _mtimes(out)
    # progress and the worker count cannot change the result: still the same inputs
    again = build.run(make_cfg(dm, out, "executor.workers=2"))
    assert again.unchanged and not again.published
    assert again.version == first.version
    assert again.zips_indexed_now == 0 and again.tasks_reused == again.tasks == first.tasks
    assert (again.cxr_images, again.ct_volumes, again.errors, again.dropped) == (
        first.cxr_images, first.ct_volumes, first.errors, first.dropped,
    )  # fmt: skip
    assert again.patients_per_split == first.patients_per_split
    assert _mtimes(out) == files, "a re-run with nothing new wrote into the output"
    assert len(list_versions(out)) == 1
    lines = "\n".join(again.lines())
    assert f"nothing changed since version {first.version}" in lines
    assert "skip_unchanged=false" in lines


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_a_touched_zip_or_a_new_sheet_builds_again(
    once: tuple[Path, Path, build.BuildSummary], make_cfg: MakeCfg
) -> None:
    dm, out, first = once
    zip_path = next(dm.rglob("*.zip"))
    _touch(zip_path)
    again = build.run(make_cfg(dm, out))
    assert not again.unchanged and again.zips_indexed_now >= 1
    assert again.version == first.version and not again.published  # same dataset
    assert build.run(make_cfg(dm, out)).unchanged  # recorded again: the next run is quick
    sheet = dm / "extra.csv"
    sheet.write_text("patient_id\n1\n")
    assert not build.run(make_cfg(dm, out, f"paths.clinical={sheet}")).unchanged


@pytest.mark.parametrize("switch", ["skip_unchanged=true", "skip_unchanged=false"])
def test_an_input_changed_during_the_build_builds_again(
    once: tuple[Path, Path, build.BuildSummary],
    make_cfg: MakeCfg,
    monkeypatch: pytest.MonkeyPatch,
    switch: str,
) -> None:
    """The record holds the inputs as the build listed them: a sheet edited after the build
    read it (here while the tasks are planned) is new to the next run, which builds again.
    With or without the check before the build (which lists the datamart for it)."""
    from hiroml.pipeline import driver

    dm, out, _first = once
    sheet = dm / "extra.csv"
    sheet.write_text("patient_id\n1\n")
    cfg = make_cfg(dm, out, f"paths.clinical={sheet}")
    real = driver.plan_tasks

    def edited_meanwhile(*args: Any, **kwargs: Any) -> Any:
        sheet.write_text("patient_id\n1\n2\n")  # read already: this build keeps 1 row
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "plan_tasks", edited_meanwhile)
    assert not build.run(make_cfg(dm, out, f"paths.clinical={sheet}", switch)).unchanged
    monkeypatch.undo()
    assert not build.run(cfg).unchanged, "answered with a result of the sheet before the edit"
    assert build.run(cfg).unchanged


def test_a_result_key_a_changed_output_or_the_switch_builds_again(
    once: tuple[Path, Path, build.BuildSummary], make_cfg: MakeCfg
) -> None:
    dm, out, _first = once
    assert not build.run(make_cfg(dm, out, "splits.salt=other")).unchanged
    assert build.run(make_cfg(dm, out, "splits.salt=other")).unchanged
    # the root manifest no longer the one the last build left: build, and repair it
    manifest = out / "manifest.parquet"
    before = manifest.read_bytes()
    manifest.write_bytes(b"not a manifest")
    repaired = build.run(make_cfg(dm, out, "splits.salt=other"))
    assert not repaired.unchanged and manifest.read_bytes() == before
    assert not build.run(make_cfg(dm, out, "splits.salt=other", "skip_unchanged=false")).unchanged


def test_a_damaged_record_builds_again(
    once: tuple[Path, Path, build.BuildSummary], make_cfg: MakeCfg
) -> None:
    dm, out, _first = once
    unchanged.record_path(out).write_text("{not json")
    again = build.run(make_cfg(dm, out))
    assert not again.unchanged
    assert build.run(make_cfg(dm, out)).unchanged


def test_the_cli_answers_without_importing_the_build(
    once: tuple[Path, Path, build.BuildSummary], tmp_path: Path
) -> None:
    """``hiroml-build`` checks before it imports the driver: a re-run with nothing new loads
    neither pandas nor pydicom nor OpenCV (their imports are most of a second)."""
    import subprocess
    import sys

    dm, out, first = once
    code = (
        "import sys\n"
        "from hiroml.cli.build import main\n"
        f"sys.argv = ['hiroml-build', 'paths.datamart={dm}', 'paths.output={out}',\n"
        "            'progress=false', 'executor.workers=1']\n"
        "main()\n"
        "print('loaded:', sorted(m for m in ('pandas', 'pydicom', 'cv2') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert f"nothing changed since version {first.version}" in done.stdout
    assert "is up to date with" in done.stdout
    assert "loaded: []" in done.stdout


def test_a_build_after_the_check_lists_the_datamart_once(
    once: tuple[Path, Path, build.BuildSummary],
    make_cfg: MakeCfg,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check's listing of the datamart is the build's: a touched zip is listed once."""
    from hiroml.ingest import discover as datamart

    dm, out, _first = once
    _touch(next(dm.rglob("*.zip")))
    calls: list[str] = []
    real = datamart.discover

    def counted(root: Any) -> Any:
        calls.append(str(root))
        return real(root)

    monkeypatch.setattr(datamart, "discover", counted)
    again = build.run(make_cfg(dm, out))
    assert not again.unchanged and again.zips_indexed_now == 1
    assert len(calls) == 1
    assert again.stage_seconds["discover"] > 0
    seen = unchanged.look(make_cfg(dm, out))  # recorded again: answers, with its listing
    assert seen.summary is not None and seen.summary.unchanged
    assert seen.found is not None and len(seen.found.zips) == again.zips
