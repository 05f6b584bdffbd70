"""One build per output (hiroml.store.lock): a second build exits 3 naming the holder, or waits;
a lock whose holder died is taken over with a warning."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeCfg

from hiroml import pipeline as build
from hiroml.errors import OutputLockedError
from hiroml.store.lock import HOLDER_NAME, build_lock, read_holder
from hiroml.vocab import STATE_DIR

_HOLD = """
import sys, time
from hiroml.store.lock import build_lock
with build_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold(out: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process that holds the lock of ``out`` for ``seconds`` once it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    out = tmp_path / "out"
    proc = _hold(out, 60)
    yield out, proc
    proc.kill()
    proc.wait()


def test_a_second_build_is_refused_naming_the_holder(
    holder: tuple[Path, subprocess.Popen[str]],
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
) -> None:
    out, proc = holder
    root, _ = tiny_datamart
    with pytest.raises(OutputLockedError, match="another build holds the lock") as err:
        build.run(make_cfg(root, out))
    assert f"pid {proc.pid} on host {socket.gethostname()}, started 20" in str(err.value)
    assert "wait_for_lock=true" in str(err.value)
    assert not (out / "manifest.parquet").exists()
    assert read_holder(out) is not None and read_holder(out).pid == proc.pid  # type: ignore[union-attr]


def test_the_cli_exits_3_at_once_with_no_traceback(
    holder: tuple[Path, subprocess.Popen[str]], tiny_datamart: tuple[Path, dict[str, Any]]
) -> None:
    out, proc = holder
    root, _ = tiny_datamart
    done = subprocess.run(
        [sys.executable, "-m", "hiroml", f"paths.datamart={root}", f"paths.output={out}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert f"another build holds the lock of the output folder {out}" in done.stderr
    assert f"pid {proc.pid} on host {socket.gethostname()}" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_wait_for_lock_waits_for_the_holder_then_builds(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    proc = _hold(out, 2.0)
    t0 = time.perf_counter()
    try:
        with caplog.at_level(logging.INFO, logger="hiroml.store.lock"):
            summary = build.run(make_cfg(root, out, "wait_for_lock=true"))
        assert time.perf_counter() - t0 > 1.5, "the build did not wait for the holder"
        assert proc.poll() is not None
    finally:
        proc.kill()
        proc.wait()
    assert f"waiting for the build that holds the lock of {out} (pid {proc.pid}" in caplog.text
    assert "taking over" not in caplog.text  # the holder released it properly
    assert summary.cxr_images > 0 and (out / "manifest.parquet").is_file()
    assert not (out / STATE_DIR / HOLDER_NAME).exists()


def test_a_dead_holders_lock_is_taken_over_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    proc = _hold(out, 60)
    proc.kill()  # SIGKILL: no release, the holder file stays; the kernel frees the flock
    proc.wait()
    assert read_holder(out) is not None
    with caplog.at_level(logging.WARNING, logger="hiroml.store.lock"), build_lock(out) as me:
        assert read_holder(out) == me and me.pid != proc.pid
    assert f"taking over the lock of {out}: the build pid {proc.pid} on host" in caplog.text
    assert "that process is no longer running" in caplog.text
    assert read_holder(out) is None  # released


_HOLD_WITH_WORKER = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from hiroml.store.lock import build_lock
with build_lock(sys.argv[1]):
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    worker = pool.submit(os.getpid).result()
    pool.submit(time.sleep, 30)
    print(worker, flush=True)
    time.sleep(60)
"""


def test_a_killed_builds_forked_workers_do_not_keep_the_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The conversion workers are forked while the lock is held; when the build is killed
    they may run on for a while, and must not keep the next build out."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WITH_WORKER, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    try:
        os.kill(worker, 0)  # the orphaned worker still runs
        with caplog.at_level(logging.WARNING, logger="hiroml.store.lock"), build_lock(out):
            pass
        assert f"the build pid {proc.pid} on host" in caplog.text
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_the_lock_is_released_whatever_ends_the_build(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), build_lock(out):
        raise RuntimeError("a failing build")
    assert read_holder(out) is None
    t0 = time.perf_counter()
    with build_lock(out):  # free again at once
        pass
    assert time.perf_counter() - t0 < 1.0
    with (
        pytest.raises(TypeError, match="wait must be a bool"),
        build_lock(out, wait="yes"),  # type: ignore[arg-type]
    ):
        pass
