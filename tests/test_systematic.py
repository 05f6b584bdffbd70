"""A systematic failure never publishes (hiroml.pipeline.systematic): one error that hits most
images of a modality refuses the build (exit 5), on a first build and on top of a good one;
scattered bad files stay audit rows. Builds run with one worker, in this process, so a
monkeypatched cast or decode path reaches the conversion."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import MakeCfg

from hiroml import errors as cli_errors
from hiroml import pipeline as build
from hiroml.config import PublishConfig
from hiroml.cxr import convert as cxr_convert
from hiroml.errors import ConfigError, SystematicFailureError
from hiroml.pipeline import systematic
from hiroml.pipeline.tasks import TaskResult, TaskSpec
from hiroml.records import AuditRow, Problem
from hiroml.store import halfcast
from hiroml.store.verify import verify
from hiroml.versions.listing import list_versions
from hiroml.vocab import Action, Modality

EARLY = "CXR-UPDATE-20200509-COMPLETE"  # 11 of the tiny datamart's 22 radiographs
RADIOGRAPHS = 22  # radiographs of the tiny datamart (default views)
CAST_ERROR = (
    "OpenCV(4.14.0) /io/opencv/modules/core/src/arithm.cpp:750: error: (-215:Assertion "
    "failed) func in function 'arithm_op'\n"
)


def _broken_cast(arr: np.ndarray) -> np.ndarray:
    raise cv2.error(CAST_ERROR)


@pytest.fixture
def broken_cast(monkeypatch: pytest.MonkeyPatch) -> None:
    """The float16 cast fails for every image, as it does with OpenCV 4.14."""
    monkeypatch.setattr(halfcast, "to_float16", _broken_cast)


def _published(out: Path) -> dict[str, bytes]:
    """The bytes of the root tables, the report, every shard and every version file."""
    names = ["manifest.parquet", "patients.parquet", "audit.csv", "report.html"]
    files = {n: (out / n).read_bytes() for n in names}
    for p in sorted([*(out / "shards").glob("*"), *(out / "versions").rglob("*")]):
        if p.is_file():
            files[str(p.relative_to(out))] = p.read_bytes()
    return files


def _cxr_task_records(out: Path) -> list[Path]:
    return sorted((out / ".hiroml" / "tasks").glob("cxr-*.json"))


def test_every_radiograph_failing_on_a_first_build_publishes_nothing(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    broken_cast: None,
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    with pytest.raises(SystematicFailureError) as err:  # at the limit of min_errors
        build.run(make_cfg(root, out, f"publish.min_errors={RADIOGRAPHS}"))
    msg = str(err.value)
    assert f"{RADIOGRAPHS} of {RADIOGRAPHS} radiographs converted by this build failed" in msg
    assert "with one error: error: OpenCV(4.14.0) /io/opencv" in msg
    assert "in function 'arithm_op' (first: CXR-UPDATE-" in msg
    assert "transfer syntax" not in msg and "\n" not in msg  # one line, whatever the syntax
    assert "run hiroml-doctor" in msg and "publish.max_error_fraction=0.5" in msg
    assert f"publish.min_errors={RADIOGRAPHS}" in msg
    refused_audit = out / ".hiroml" / "audit-refused.csv"
    assert str(refused_audit) in msg
    # nothing published; the failures are not kept for the next build to reuse
    assert list_versions(out) == [] and not (out / "manifest.parquet").exists()
    assert not (out / "audit.csv").exists()
    assert _cxr_task_records(out) == [] and not list((out / "shards").glob("cxr-*"))
    audit = pd.read_csv(refused_audit, dtype=str).fillna("")
    errors = audit[audit["action"] == "error"]
    assert errors["reason"].str.contains("arithm_op").sum() == RADIOGRAPHS
    assert errors["reason"].str.contains("not a readable zip file").sum() == 2  # as ever
    # the cast mended: every radiograph converted again, none of the failures reused
    monkeypatch.undo()
    mended = build.run(make_cfg(root, out))
    assert mended.published and mended.cxr_images == RADIOGRAPHS
    assert len(list_versions(out)) == 1 and verify(out) == []


def test_one_error_below_min_errors_publishes_with_its_audit_rows(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    broken_cast: None,
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    below = build.run(make_cfg(root, out, f"publish.min_errors={RADIOGRAPHS + 1}"))
    assert below.published and below.cxr_images == 0 and below.ct_volumes == 7
    audit = pd.read_csv(out / "audit.csv", dtype=str).fillna("")
    assert audit["reason"].str.contains("arithm_op").sum() == RADIOGRAPHS
    assert not (out / ".hiroml" / "audit-refused.csv").exists()


def test_a_systematic_failure_on_top_of_a_good_version_leaves_it_the_latest(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Week 1 lacks the earliest batch; week 2 brings it and every new radiograph fails."""
    root, _ = tiny_datamart
    dm = tmp_path / "dm"
    shutil.copytree(root, dm, ignore=shutil.ignore_patterns(EARLY))
    out = tmp_path / "out"
    week1 = build.run(make_cfg(dm, out))
    assert week1.published and 0 < week1.cxr_images < RADIOGRAPHS
    first = list_versions(out)
    before = _published(out)
    shutil.copytree(root / EARLY, dm / EARLY)
    with monkeypatch.context() as m:
        m.setattr(halfcast, "to_float16", _broken_cast)
        with pytest.raises(SystematicFailureError, match=r"(\d+) of \1 radiographs converted"):
            build.run(make_cfg(dm, out))
    assert list_versions(out) == first
    after = _published(out)
    assert [k for k, v in before.items() if after.get(k) != v] == []
    assert sorted(set(after) - set(before)) == []  # no new shard either
    assert verify(out) == []
    week2 = build.run(make_cfg(dm, out))  # the cast mended: week 2 publishes in full
    assert week2.published and week2.cxr_images == RADIOGRAPHS
    assert [v.name for v in list_versions(out)][:-1] == [v.name for v in first]


def test_a_weekly_rerun_that_converts_nothing_is_never_refused(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    build.run(make_cfg(root, out))
    monkeypatch.setattr(halfcast, "to_float16", _broken_cast)
    again = build.run(make_cfg(root, out, "skip_unchanged=false"))
    assert again.tasks_reused == again.tasks and again.cxr_images == RADIOGRAPHS
    assert not again.published  # the same dataset: no new version


def test_scattered_bad_files_still_publish(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two more truncated zips and two radiographs whose cast fails: audit rows, exit 0."""
    root, _ = tiny_datamart
    dm = tmp_path / "dm"
    shutil.copytree(root, dm)
    zips = sorted((dm / "CXR-UPDATE-20200516-COMPLETE").glob("*_XR-*.zip"))
    for z in zips[:2]:
        z.write_bytes(z.read_bytes()[: z.stat().st_size // 2])
    bad = {z.name for z in sorted((dm / EARLY).glob("*_XR-*.zip"))[:2]}
    real = cxr_convert._convert_frame

    def convert_frame(ds: Any, inst: Any, **kw: Any) -> Any:
        if inst.zip in bad:
            raise cv2.error(CAST_ERROR)
        return real(ds, inst, **kw)

    monkeypatch.setattr(cxr_convert, "_convert_frame", convert_frame)
    summary = build.run(make_cfg(dm, tmp_path / "out"))
    # four radiographs lost; one of them has a second copy (under another HIRO id), kept now
    assert summary.published and summary.cxr_images == RADIOGRAPHS - 3
    audit = pd.read_csv(tmp_path / "out" / "audit.csv", dtype=str).fillna("")
    cast = audit[audit["reason"].str.contains("arithm_op")]
    assert set(cast["zip"]) == bad and set(cast["action"]) == {"error"}
    truncated = audit[audit["zip"].isin([z.name for z in zips[:2]])]
    assert set(truncated["action"]) == {"error"}


def test_exit_code_5_through_the_cli(
    tiny_datamart: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """``hiroml-build`` with the cast broken once the build has started (a check of the
    environment before it still sees a working cast): exit 5, one line, nothing published."""
    root, _ = tiny_datamart
    out = tmp_path / "out"
    script = (
        "import sys, cv2\n"
        "from hiroml.store import halfcast\n"
        "from hiroml.pipeline import driver\n"
        "real_build, real_cast, started = driver._build, halfcast.to_float16, []\n"
        "def cast(a):\n"
        f"    if started: raise cv2.error({CAST_ERROR!r})\n"
        "    return real_cast(a)\n"
        "def build_(*a, **k):\n"
        "    started.append(1)\n"
        "    return real_build(*a, **k)\n"
        "halfcast.to_float16, driver._build = cast, build_\n"
        "from hiroml.cli.build import main\n"
        "sys.argv[0] = 'hiroml-build'\n"
        "main()\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            f"paths.datamart={root}",
            f"paths.output={out}",
            "progress=false",
            "executor.workers=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == cli_errors.EXIT_SYSTEMATIC == 5, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("hiroml-build: ")]
    assert len(lines) == 1 and f"{RADIOGRAPHS} of {RADIOGRAPHS} radiographs" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert list_versions(out) == [] and not (out / "manifest.parquet").exists()


# --------------------------------------------------------------------------- tally (pure)


def _problem(zip_: str, reason: str, action: Action = Action.ERROR) -> Problem:
    return Problem(
        zip=zip_,
        batch="CXR-UPDATE-20200509-COMPLETE",
        member="1_PA/IM-0001.dcm",
        stage="cxr",
        reason=reason,
        action=action,
    )


def _member_error(i: int, error: str, syntax: str) -> tuple[str, Problem]:
    """A conversion error as the radiograph converter words it, for the i-th zip."""
    zip_ = f"{1000 + i}_20200302-083745_A{i:03d}_XR-CHEST-PA.zip"
    where = f"CXR-UPDATE-20200509-COMPLETE/{zip_}: member 1_PA/IM-0001.dcm"
    return f"{1000 + i}_A{i:03d}", _problem(zip_, f"{where}: {error} (transfer syntax {syntax})")


def _result(task_id: str, n_samples: int, problems: list[tuple[str, Problem]]) -> TaskResult:
    return TaskResult(task_id, tuple([None] * n_samples), tuple(problems), (), 0.0, 0)  # type: ignore[list-item]


SYNTAXES = ("JPEG Baseline (Process 1) 1.2.840.10008.1.2.4.50", "RLE Lossless 1.2.840.10008.1.2.5")


def test_the_same_error_is_one_error_whatever_the_file_syntax_and_numbers() -> None:
    probs = [_member_error(i, f"error: {CAST_ERROR}", SYNTAXES[i % 2]) for i in range(4)]
    probs += [_member_error(9, "DecodeError: frame 3 of 7: bad marker 0xFF12", SYNTAXES[0])]
    probs += [("k", _problem("x.zip", "view lateral not selected", Action.DROPPED))]
    t = systematic.tally([(Modality.CXR, _result("cxr-1", 3, probs))])[Modality.CXR]
    assert (t.attempted, t.failed) == (8, 4)  # 3 samples + 5 errors; a drop was not attempted
    assert t.error == "error: " + " ".join(CAST_ERROR.split())
    assert t.examples == (
        "CXR-UPDATE-20200509-COMPLETE/1000_20200302-083745_A000_XR-CHEST-PA.zip: 1_PA/IM-0001.dcm",
    )
    exam = ("1000_A1", _problem("a.zip", "exam 1000_A1: RuntimeError: boom in task 17"))
    assert systematic.error_text(exam[1], exam[0]) == "RuntimeError: boom in task 17"
    assert systematic.error_key(exam[1], exam[0]) == "RuntimeError: boom in task #"


@pytest.mark.parametrize(
    ("failed", "attempted", "min_errors", "refused"),
    [
        (5, 10, 5, True),  # at the fraction (0.5) and at min_errors
        (4, 8, 5, False),  # at the fraction, one below min_errors
        (5, 11, 5, False),  # just below the fraction
        (6, 11, 5, True),  # just above it
    ],
)
def test_the_limits(failed: int, attempted: int, min_errors: int, refused: bool) -> None:
    probs = [_member_error(i, f"error: {CAST_ERROR}", SYNTAXES[0]) for i in range(failed)]
    t = systematic.tally([(Modality.CXR, _result("cxr-1", attempted - failed, probs))])
    cfg = PublishConfig(max_error_fraction=0.5, min_errors=min_errors)
    assert t[Modality.CXR].exceeds(cfg) is refused


def test_only_this_builds_work_counts_and_modalities_apart(tmp_path: Path) -> None:
    fail = [_member_error(i, "RuntimeError: no decoder", SYNTAXES[0]) for i in range(6)]
    spec = {
        m: TaskSpec(f"{m}-1", m, "", str(tmp_path), (), None, None, None, None, "")  # type: ignore[arg-type]
        for m in Modality
    }
    old = TaskResult("cxr-1", (), tuple(fail), (), 0.0, 0, reused=True)
    ct = _result("ct-1", 6, [])
    cfg = PublishConfig()
    systematic.check_systematic(
        tmp_path, [spec[Modality.CXR], spec[Modality.CT]], [old, ct], [], cfg
    )
    new = TaskResult("cxr-1", (), tuple(fail), (), 0.0, 0)
    row = AuditRow(zip="z.zip", batch="b", action=Action.ERROR, reason="not a zip")
    with pytest.raises(
        SystematicFailureError, match=r"6 of 6 radiographs .* RuntimeError: no decoder"
    ):
        systematic.check_systematic(
            tmp_path, [spec[Modality.CXR], spec[Modality.CT]], [new, ct], [row], cfg
        )
    audit = pd.read_csv(tmp_path / ".hiroml" / "audit-refused.csv", dtype=str)
    assert list(audit["reason"][:2]) == ["not a zip", fail[0][1].reason]
    assert len(audit) == 7


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("publish.max_error_fraction=0", r"publish\.max_error_fraction=0\.0"),
        ("publish.max_error_fraction=1.5", r"publish\.max_error_fraction=1\.5"),
        ("publish.min_errors=0", r"publish\.min_errors=0"),
    ],
)
def test_the_limits_must_make_sense(
    make_cfg: MakeCfg, tmp_path: Path, override: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        make_cfg(tmp_path, tmp_path, override)
