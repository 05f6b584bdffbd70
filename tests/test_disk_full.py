"""A full disk at each write point of a build: the previous version stays the latest and
whole, the root files stay that version's, no half version is visible, and the build ends
with one line "no space left on ... (... free, about ... needed); the previous version V is
intact" (exit 6) (hiroml.pipeline.diskfull, hiroml.versions.publishing)."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import MakeCfg

from hiroml import HiromlDataset
from hiroml import pipeline as build
from hiroml.errors import EXIT_NO_SPACE, DiskFullError
from hiroml.pipeline import diskfull, faults
from hiroml.versions.listing import find_version, list_versions
from hiroml.vocab import BUILD_JSON, MANIFEST, PIN_FILE, STATE_DIR, VERSIONS_DIR

LINE = r"no space left on .* \(\d+\.\d \w+ free, about \d+\.\d \w+ needed\); "


def _enospc(*_args: Any, **_kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def first(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The tiny datamart built once (version 1, no clinical table)."""
    root, _ = tiny_datamart
    out = tmp_path_factory.mktemp("first") / "out"
    build.run(make_cfg(root, out))
    return out


def _root_files(out: Path) -> dict[str, bytes]:
    version = find_version(out)
    assert version is not None
    skip = {BUILD_JSON, PIN_FILE}
    return {
        p.name: (out / p.name).read_bytes()
        for p in version.path.iterdir()
        if p.is_file() and p.name not in skip
    }


def _patch(point: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``point`` meet a full disk; the extra overrides of the build that reaches it."""
    if point == "index":  # every zip indexed again, into a fresh database
        (out / STATE_DIR / "index.sqlite").unlink()

        def full(*_a: Any, **_k: Any) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr("hiroml.ingest.cache.IndexCache.store", full)
    elif point == "shards":  # every task converted again
        shutil.rmtree(out / STATE_DIR / "tasks")
        return ["runtime.fault=enospc:shards"]
    elif point == "tables":
        monkeypatch.setattr("hiroml.store.tables.write_outputs", _enospc)
    elif point == "report":
        monkeypatch.setattr("hiroml.report.page.write_report", _enospc)
    elif point == "build_json":
        write_text = pathlib.Path.write_text

        def full_json(self: Path, *a: Any, **k: Any) -> int:
            if self.name == BUILD_JSON:
                _enospc()
            return write_text(self, *a, **k)

        monkeypatch.setattr(pathlib.Path, "write_text", full_json)
    elif point == "version":
        _fail_nth(
            monkeypatch, os, "replace", 1, lambda src, dst: Path(dst).parent.name == VERSIONS_DIR
        )
    elif point == "root_files":  # the third root copy: two are already staged
        _fail_nth(monkeypatch, shutil, "copyfile", 3, lambda src, dst: Path(dst).parent == out)
    elif point == "after_publish":
        monkeypatch.setattr("hiroml.pipeline.failures.record", _enospc)
    return []


def _fail_nth(
    monkeypatch: pytest.MonkeyPatch, module: Any, name: str, n: int, hit: Callable[..., bool]
) -> None:
    real = getattr(module, name)
    seen = [0]

    def fake(src: Any, dst: Any, *a: Any, **k: Any) -> Any:
        if hit(src, dst):
            seen[0] += 1
            if seen[0] == n:
                _enospc()
        return real(src, dst, *a, **k)

    monkeypatch.setattr(module, name, fake)


POINTS = ["index", "shards", "tables", "report", "build_json", "version", "root_files"]


@pytest.mark.parametrize("point", POINTS)
def test_a_full_disk_at_each_write_point_leaves_the_previous_version_whole_and_latest(
    point: str,
    first: Path,
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, truth = tiny_datamart
    out = tmp_path / "out"
    shutil.copytree(first, out)
    v1 = find_version(out)
    assert v1 is not None
    before = _root_files(out)
    # the clinical table makes a new dataset: a build that publishes version 2
    cfg = make_cfg(
        root, out, f"paths.clinical={root / truth['clinical']}", *_patch(point, out, monkeypatch)
    )
    try:
        with pytest.raises(DiskFullError, match=LINE + f"the previous version {v1.name} is intact"):
            build.run(cfg)
    finally:
        faults.arm(None)
        monkeypatch.undo()
    assert [v.name for v in list_versions(out)] == [v1.name]
    assert sorted(p.name for p in (out / VERSIONS_DIR).iterdir()) == [v1.name]  # nothing hidden
    assert _root_files(out) == before
    assert not list(out.glob(".*.tmp"))  # no staged root copy left behind
    ds = HiromlDataset(out, split=None)
    assert ds.version == v1.name and len(ds) > 0 and ds[0]["image"].numel() > 0
    # the next build, with room, publishes version 2
    build.run(make_cfg(root, out, f"paths.clinical={root / truth['clinical']}"))
    assert [v.seq for v in list_versions(out)] == [1, 2]


def test_a_full_disk_after_publishing_says_the_version_was_published(
    first: Path,
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, truth = tiny_datamart
    out = tmp_path / "out"
    shutil.copytree(first, out)
    _patch("after_publish", out, monkeypatch)
    with pytest.raises(DiskFullError, match=LINE + r"version 0002-\w+ was published whole"):
        build.run(make_cfg(root, out, f"paths.clinical={root / truth['clinical']}"))
    latest = find_version(out)
    assert latest is not None and latest.seq == 2
    assert (out / MANIFEST).read_bytes() == (latest.path / MANIFEST).read_bytes()


def test_a_worker_meeting_a_full_disk_ends_the_build_with_one_line(
    first: Path, tiny_datamart: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, truth = tiny_datamart
    out = tmp_path / "out"
    shutil.copytree(first, out)
    shutil.rmtree(out / STATE_DIR / "tasks")
    v1 = find_version(out)
    assert v1 is not None
    cmd = [sys.executable, "-m", "hiroml", f"paths.datamart={root}", f"paths.output={out}",
           f"paths.clinical={root / truth['clinical']}", "progress=false",
           "executor.workers=2", "runtime.fault=enospc:shards"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_NO_SPACE, done.stderr
    lines = [x for x in done.stderr.splitlines() if not x.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and "BrokenProcessPool" not in done.stderr
    assert lines[0].startswith("hiroml-build: no space left on ")
    assert lines[0].split("; ")[1] == f"the previous version {v1.name} is intact"
    assert [v.name for v in list_versions(out)] == [v1.name]


def test_the_line_names_the_mount_the_free_space_and_the_need(tmp_path: Path) -> None:
    mount, device = diskfull.mount_of(tmp_path / "not" / "yet")
    assert os.path.ismount(mount) and Path(tmp_path).is_relative_to(mount) and device
    err = diskfull.disk_full_error(
        OSError(errno.ENOSPC, "No space left on device"), tmp_path, version="0003-abc", need=5 << 20
    )
    assert err is not None
    assert str(err).startswith(
        f"no space left on {device} at {mount} ("
        if device != mount
        else f"no space left on {mount} ("
    )
    assert "about 5.0 MiB needed); the previous version 0003-abc is intact" in str(err)
    assert diskfull.disk_full_error(OSError(errno.EACCES, "denied"), tmp_path, version=None) is None
    assert diskfull.is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert diskfull.human(1536) == "1.5 KiB"


def test_a_worker_that_dies_on_a_full_disk_is_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libhdf5 may crash rather than raise on a full disk: a death with under 64 MiB free is
    taken for one (the build stops with the line), not for the exam's fault."""
    from hiroml.pipeline import worker

    spec = SimpleNamespace(out_dir=str(tmp_path), exams=(), task_id="t")
    monkeypatch.setattr(worker.shutil, "disk_usage", lambda _p: SimpleNamespace(free=1 << 20))
    with pytest.raises(OSError, match="signal 11") as caught:
        worker.died_task(spec, "the worker process died (signal 11)")  # type: ignore[arg-type]
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.setattr(worker.shutil, "disk_usage", lambda _p: SimpleNamespace(free=1 << 30))
    assert worker.died_task(spec, "x").problems == ()  # type: ignore[arg-type]
