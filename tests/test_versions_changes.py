"""What a version says about itself and what the version commands leave behind: ``--diff``
and the report name changed settings, environment and label columns, and a version identical
in content to an earlier one; pin notes; ``--prune --dry-run``; a refused build leaves no new
shard; ``hiroml-verify`` after an interrupted build. Every build is of the tiny datamart."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MakeCfg

from hiroml import pipeline as build
from hiroml.cli import versions as cli_versions
from hiroml.cli.verify import main as verify_main
from hiroml.errors import EXIT_CONFIG, ShrinkRefusedError, SystematicFailureError
from hiroml.pipeline import driver
from hiroml.pipeline.tasks import TaskResult
from hiroml.store import halfcast
from hiroml.store.verify import verify
from hiroml.versions import changes as versions_changes
from hiroml.versions.listing import list_versions

EARLY = "CXR-UPDATE-20200509-COMPLETE"
#: the clinical table's columns in the manifest (hiroml's own sex column is not one)
LABELS = ("covid_encounter_date", "icu", "label_sex")
LATE = ("CT-UPDATE-20200526-COMPLETE", "CXR-UPDATE-20200530-COMPLETE")


def _shard_files(out: Path) -> set[str]:
    return {p.name for p in (out / "shards").iterdir()}


#: the output, the summaries of its builds, the log records of the third build
History = tuple[Path, list[build.BuildSummary], list[logging.LogRecord]]


class _Keep(logging.Handler):
    """Keeps the records it is given (the console handler's view of hiroml's logger)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def labels_history(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path_factory: pytest.TempPathFactory,
) -> History:
    """One output built four times: bare (0001), with the clinical table (0002), bare again
    (0003, the content of 0001), then with ``cxr.size=[256,256]`` (0004); the log records of
    the third build."""
    root, truth = tiny_datamart
    out = tmp_path_factory.mktemp("labels") / "out"
    clinical = f"paths.clinical={root / truth['clinical']}"
    runs = [build.run(make_cfg(root, out)), build.run(make_cfg(root, out, clinical))]
    handler = _Keep()
    logging.getLogger("hiroml").addHandler(handler)
    try:
        runs.append(build.run(make_cfg(root, out)))
    finally:
        logging.getLogger("hiroml").removeHandler(handler)
    runs.append(build.run(make_cfg(root, out, "cxr.size=[256,256]")))
    return out, runs, handler.records


def test_dropped_labels_and_an_identical_version_are_said_by_the_build_and_the_diff(
    labels_history: History,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, runs, records = labels_history
    v1, v2, v3, _ = list_versions(out)
    assert all(r.published for r in runs)
    assert v3.dataset_hash == v1.dataset_hash != v2.dataset_hash
    # the build: a warning naming the dropped columns (hiroml's logger: the console shows
    # it), and the closing summary
    warned = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    dropped = [w for w in warned if "lacks the label column(s)" in w]
    assert dropped == [
        f"version {v3.name} lacks the label column(s) {', '.join(LABELS)} of version {v2.name}: the "
        f"clinical table (paths.clinical) was not given, or lacks them; version {v2.name} "
        "still has them (hiroml-versions --pin keeps it from pruning)"
    ]
    lines = runs[2].lines()
    assert (
        f"  version {v3.name} published, identical in content to version {v1.name} "
        "(same dataset hash)"
    ) in lines
    assert f"  label columns dropped since the previous version: {', '.join(LABELS)}" in lines
    assert not any("identical in content" in line for line in runs[1].lines())
    # hiroml-versions --diff
    assert cli_versions.main([str(out), "--diff", v2.name, v3.name]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert f"  identical in content to version {v1.name} (the same dataset hash)" in printed
    assert any(p.startswith(f"  label columns dropped: {', '.join(LABELS)} (") for p in printed)
    assert any(p.startswith("  settings changed: paths.clinical: /") for p in printed)
    assert not any("values changed" in p and "icu" in p for p in printed)
    d = versions_changes.diff(out, v1.name, v2.name)
    assert d.labels_added == LABELS and d.labels_dropped == () and not d.identical_to
    # the report's "what changed" section of version 3
    page = (v3.path / "report.html").read_text()
    assert f"Identical in content to version {v1.name}" in page
    assert f"Label columns dropped: {', '.join(LABELS)}" in page


def test_changed_settings_are_named_by_the_diff_and_the_report(
    labels_history: History,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, _, _ = labels_history
    _, _, v3, v4 = list_versions(out)
    d = versions_changes.diff(out, v3.name, v4.name)
    assert d.settings == ("cxr.size: [512, 512] -> [256, 256]",)
    assert d.labels_dropped == d.labels_added == () and not d.identical_to
    assert cli_versions.main([str(out), "--diff", "3", "4"]) == 0
    assert "  settings changed: cxr.size: [512, 512] -> [256, 256]" in capsys.readouterr().out
    assert cli_versions.main([str(out), "--diff", "3", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"] == list(d.settings)
    page = (v4.path / "report.html").read_text()
    assert "Settings changed: cxr.size: [512, 512] -&gt; [256, 256]" in page
    info = json.loads((v4.path / "build.json").read_text())
    assert info["changes"]["settings"] == list(d.settings)


def test_settings_changes_name_each_dotted_key() -> None:
    a = {"cxr": {"size": [512, 512], "views": ["frontal"]}, "paths": {"clinical": None}}
    b = {"cxr": {"size": [256, 256], "views": ["frontal"]}, "paths": {"clinical": "/c.csv"}}
    b["new"] = {"key": 1}
    assert versions_changes.settings_changes(a, b) == [
        "cxr.size: [512, 512] -> [256, 256]",
        "new.key: (absent) -> 1",
        "paths.clinical: null -> /c.csv",
    ]
    assert versions_changes.settings_changes(a, a) == []
    assert versions_changes.settings_changes(None, b) == []


def test_note_without_pin_is_refused_and_pin_notes_are_listed(
    labels_history: History,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    shutil.copytree(labels_history[0], out)
    v1, v2, *_ = list_versions(out)
    assert cli_versions.main([str(out), "--note", "the paper"]) == EXIT_CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "hiroml-versions: --note goes with --pin V (the note says why V is pinned): nothing "
        "was changed\n"
    )
    assert not any(v.pinned for v in list_versions(out))
    assert cli_versions.main([str(out), "--pin", v2.name, "--note", "MICCAI 2026 paper"]) == 0
    assert cli_versions.main([str(out), "--pin", v1.name]) == 0
    capsys.readouterr()
    assert cli_versions.main([str(out)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert any(
        line.startswith(v2.name) and line.endswith("  pinned: MICCAI 2026 paper")
        for line in listing
    )
    assert any(line.startswith(v1.name) and line.endswith("  pinned") for line in listing)
    assert cli_versions.main([str(out), "--json"]) == 0
    notes = {v["version"]: v["note"] for v in json.loads(capsys.readouterr().out)}
    assert notes[v2.name] == "MICCAI 2026 paper" and notes[v1.name] == ""
    # pinned again without a note: the note stays; unpinned: gone
    assert cli_versions.main([str(out), "--pin", v2.name]) == 0
    assert [v.note for v in list_versions(out) if v.name == v2.name] == ["MICCAI 2026 paper"]
    assert cli_versions.main([str(out), "--dry-run"]) == EXIT_CONFIG
    assert "--dry-run goes with --prune" in capsys.readouterr().err


def _files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}


def test_prune_dry_run_lists_what_prune_deletes_and_deletes_nothing(
    labels_history: History,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    shutil.copytree(labels_history[0], out)
    versions = list_versions(out)
    before = _files(out)
    assert cli_versions.main([str(out), "--prune", "--keep", "1", "--dry-run"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert _files(out) == before  # nothing deleted
    gone = [v.name for v in versions[:-1]]
    assert said[0].startswith(f"would prune 3 version(s) ({', '.join(gone)}) and ")
    assert said[-1] == "nothing was deleted (--dry-run); run without --dry-run to delete these"
    listed_versions = [s.removeprefix("  version versions/") for s in said if "version vers" in s]
    listed_shards = {s.removeprefix("  shard ") for s in said if s.startswith("  shard ")}
    assert listed_versions == gone and listed_shards
    # the prune itself deletes exactly those, and frees the bytes the dry run announced
    assert cli_versions.main([str(out), "--prune", "--keep", "1"]) == 0
    done = capsys.readouterr().out
    after = _files(out)
    deleted = set(before) - set(after)
    assert {p for p in deleted if p.startswith("shards/")} == listed_shards
    assert {p.split("/")[1] for p in deleted if p.startswith("versions/")} == set(gone)
    freed = sum(before[p] for p in deleted if p.startswith(("shards/", "versions/")))
    assert f"{freed / 1e6:.1f} MB would be freed" in said[0]
    assert done.startswith(f"pruned 3 version(s) ({', '.join(gone)})")
    assert f"{freed / 1e6:.1f} MB freed" in done
    assert verify(out) == []


def _spy_results(monkeypatch: pytest.MonkeyPatch) -> list[TaskResult]:
    """Record the task results of the builds that follow (to check they wrote new shards)."""
    seen: list[TaskResult] = []
    real: Callable[..., list[TaskResult]] = driver.execute

    def execute(*args: Any, **kwargs: Any) -> list[TaskResult]:
        results = real(*args, **kwargs)
        seen.extend(results)
        return results

    monkeypatch.setattr(driver, "execute", execute)
    return seen


def test_a_shrink_refusal_leaves_no_new_shard(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    build.run(make_cfg(root, out))
    dm = tmp_path / "dm"
    shutil.copytree(root, dm, ignore=shutil.ignore_patterns(EARLY))  # a batch lost
    before, records = _shard_files(out), set((out / ".hiroml" / "tasks").glob("*.json"))
    seen = _spy_results(monkeypatch)
    with pytest.raises(ShrinkRefusedError, match=r"this build's new shards are deleted"):
        build.run(make_cfg(dm, out, "cxr.size=[256,256]"))  # every task converted anew
    assert [s for r in seen if not r.reused for s in r.shards]  # it did write new shards
    assert _shard_files(out) == before
    assert set((out / ".hiroml" / "tasks").glob("*.json")) == records
    assert verify(out) == [] and examine_warnings(out) == []


def examine_warnings(out: Path) -> list[str]:
    from hiroml.store.verify import examine

    return examine(out, deep=False).warnings


def _broken_cast(arr: np.ndarray) -> np.ndarray:
    import cv2

    raise cv2.error("OpenCV(4.14.0) /io/opencv/modules/core/src/arithm.cpp:650: error")


def test_a_systematic_refusal_leaves_no_new_shard_of_any_modality(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, _ = tiny_datamart
    dm = tmp_path / "dm"
    shutil.copytree(root, dm, ignore=shutil.ignore_patterns(*LATE))
    out = tmp_path / "out"
    build.run(make_cfg(dm, out))
    for name in LATE:  # a week later: new CT and new radiographs, and a broken cast
        shutil.copytree(root / name, dm / name)
    before = _shard_files(out)
    seen = _spy_results(monkeypatch)
    monkeypatch.setattr(halfcast, "to_float16", _broken_cast)
    with pytest.raises(SystematicFailureError):
        build.run(make_cfg(dm, out, "publish.min_errors=1"))
    new_ct = [s for r in seen if not r.reused for s in r.shards if "ct" in Path(s).name]
    assert new_ct  # the CT volumes converted fine, into new shards
    assert _shard_files(out) == before
    assert verify(out) == []


class _Stop(Exception):
    pass


def test_verify_after_an_interrupted_build_says_once_what_the_leftovers_are(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    build.run(make_cfg(root, out))
    named = _shard_files(out)
    calls = [0]

    def stop_after_four(point: str) -> None:
        calls[0] += point == "after_shards"
        if calls[0] >= 4:
            raise _Stop

    with monkeypatch.context() as m:  # interrupted after 4 tasks of another config
        m.setattr(driver.faults, "point", stop_after_four)
        with pytest.raises(_Stop):
            build.run(make_cfg(root, out, "cxr.size=[256,256]"))
    stray = sorted(f"shards/{n}" for n in _shard_files(out) - named)
    assert len(stray) >= 4
    assert verify_main([str(out), "--quick"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    warned = [line for line in captured.out.splitlines() if line.startswith("warning:")]
    assert warned == [
        f"warning: {len(stray)} shards are not named in the manifest ({', '.join(stray[:3])} "
        f"and {len(stray) - 3} more; left by an interrupted build: the next build reuses or "
        f"deletes them, hiroml-versions {out} --prune deletes them now)"
    ]
    # what it says is true: the next build reuses them, and none is left over
    again = build.run(make_cfg(root, out, "cxr.size=[256,256]"))
    assert again.published and again.tasks_reused >= 4
    assert examine_warnings(out) == []
