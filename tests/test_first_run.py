"""A new user's first ``hiroml-build`` in a clone: the demo datamart is announced (where, what)
with progress from the start, its time is a stage of the summary, the clone stays clean
(``git status``), and the console, ``report.html``, ``flow.svg`` and ``DATASET.md`` show one
set of counts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def first_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``hiroml-build`` with no datamart (the tiny demo, one worker) inside a fresh git
    repository that carries the project's ``.gitignore``."""
    clone = tmp_path_factory.mktemp("clone")
    shutil.copy(REPO / ".gitignore", clone / ".gitignore")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(clone)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", ".gitignore"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "clone"], check=True)
    p = subprocess.run(
        [str(BIN / "hiroml-build"), "demo_size=tiny", "executor.workers=1"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    return clone, p


def test_the_demo_datamart_is_announced_timed_and_ignored(
    first_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    clone, p = first_run
    first = p.stdout.splitlines()[0]
    assert (
        "generating the tiny synthetic datamart" in first and "hiroml-out-demo-datamart/" in first
    )
    assert "not real data" in first
    assert "demo datamart" in p.stderr  # its progress bar
    stages = next(line for line in p.stdout.splitlines() if "time per stage" in line)
    assert re.search(r"demo datamart \d+\.\d+s, discover", stages), stages
    build = json.loads(next((clone / "hiroml-out" / "versions").glob("*/build.json")).read_text())
    assert "demo datamart" in build["timings"]
    status = subprocess.run(
        ["git", "-C", str(clone), "status", "--porcelain", "--ignored=no"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == "", status.stdout
    assert sorted(p.name for p in clone.iterdir()) == [
        ".git",
        ".gitignore",
        "hiroml-out",
        "hiroml-out-demo-datamart",
    ]
