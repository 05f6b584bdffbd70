"""What ``hiroml-build`` does before the build starts: how often Hydra composes the config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from hydra._internal.hydra import Hydra

from hiroml.cli import build as cli_build


def _compositions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *argv: str) -> int:
    """How many times Hydra composes the config for ``hiroml-build ARGV`` (a build that stops
    at once: its datamart does not exist)."""
    calls: list[int] = []
    compose = Hydra.compose_config

    def counted(self: Hydra, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return compose(self, *args, **kwargs)

    monkeypatch.setattr(Hydra, "compose_config", counted)
    monkeypatch.setattr(cli_build, "_composed", [])
    monkeypatch.setattr(cli_build, "_output", [])
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "hiroml-build",
            f"paths.output={tmp_path / 'out'}",
            f"paths.datamart={tmp_path / 'nowhere'}",
            "doctor.enabled=false",
            *argv,
        ],
    )
    with pytest.raises(SystemExit) as done:
        cli_build.main()
    assert done.value.code == 2  # the datamart is missing: the job ran
    return len(calls)


def test_a_build_composes_its_config_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    get_mode = Hydra.get_mode
    assert _compositions(monkeypatch, tmp_path) == 1
    assert Hydra.get_mode is get_mode  # Hydra is left as it was


def test_hydra_mode_given_is_read_as_hydra_reads_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert _compositions(monkeypatch, tmp_path, "hydra.mode=RUN") == 2


def test_the_schema_keys_are_those_of_the_structured_config() -> None:
    from omegaconf import DictConfig, OmegaConf

    from hiroml.config import BuildConfig

    keys: list[str] = []

    def walk(node: DictConfig, prefix: str) -> None:
        for k in map(str, node):
            keys.append(f"{prefix}{k}")
            child = node._get_node(k)
            if isinstance(child, DictConfig):
                walk(child, f"{prefix}{k}.")

    walk(OmegaConf.structured(BuildConfig), "")
    assert cli_build._schema_keys() == keys
    assert "cxr.size" in keys and "cxr" in keys


def test_the_c_library_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes.util

    from hiroml.pipeline import allocator

    found: list[str] = []
    find = ctypes.util.find_library

    def counted(name: str) -> str | None:
        found.append(name)
        return find(name)

    allocator._libc.cache_clear()
    monkeypatch.setattr(ctypes.util, "find_library", counted)
    first = allocator.release_freed()
    assert allocator.release_freed() == first
    assert found == (["c"] if sys.platform.startswith("linux") else [])
    allocator._libc.cache_clear()


def _threads_after_loading(env: dict[str, str], entry: str) -> tuple[str, int]:
    """``OPENBLAS_NUM_THREADS`` (``-`` when unset) and the number of threads
    (``/proc/self/task``; 0 where there is no such folder, off Linux) of a fresh process that
    runs ``entry`` and then loads numpy and OpenCV, with ``env``."""
    import subprocess

    code = (
        f"{entry}\nimport os, numpy, cv2\n"
        "tasks = '/proc/self/task'\n"
        "n = len(os.listdir(tasks)) if os.path.isdir(tasks) else 0\n"
        "print(os.environ.get('OPENBLAS_NUM_THREADS', '-'), n)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    value, threads = done.stdout.split()
    return value, int(threads)


def test_a_command_does_its_products_on_one_blas_thread() -> None:
    """A command's process loads numpy's and OpenCV's OpenBLAS with one thread: no helper
    thread spins on another core. The user's own setting is kept; the library leaves the
    environment as it is."""
    import os

    from hiroml.cli import BLAS_THREADS_VARIABLE

    # the variables OpenBLAS reads for its thread count, in its order of precedence
    others = {BLAS_THREADS_VARIABLE, "GOTO_NUM_THREADS", "OMP_NUM_THREADS"}
    env = {k: v for k, v in os.environ.items() if k not in others}
    linux = sys.platform.startswith("linux")  # where threads are counted
    assert _threads_after_loading(env, "import hiroml.cli") == ("1", 1 if linux else 0)
    # hiroml-build's entry point, which python -m hiroml imports too
    assert _threads_after_loading(env, "from hiroml.cli.build import main") == (
        "1",
        1 if linux else 0,
    )
    value, threads = _threads_after_loading(env, "import hiroml")
    assert value == "-"  # the library: no variable set
    if linux and len(os.sched_getaffinity(0)) > 1:  # OpenBLAS: a helper per extra core
        assert threads > 1
    mine = {**env, BLAS_THREADS_VARIABLE: "2"}
    assert _threads_after_loading(mine, "import hiroml.cli")[0] == "2"


def test_a_command_collects_its_young_objects_less_often_the_library_does_not() -> None:
    """A command's process raises the garbage collector's young threshold before its imports
    (which leave about 100,000 objects that it keeps); ``import hiroml`` leaves it alone, and
    a threshold of 0 (the collector off) stays 0."""
    import subprocess

    from hiroml.pipeline.allocator import YOUNG_THRESHOLD

    code = (
        "import gc, sys\n"
        "if sys.argv[1] == 'off': gc.set_threshold(0)\n"
        "import hiroml\n"
        "library = gc.get_threshold()\n"
        "import hiroml.cli.build\n"
        "print(library[0], *gc.get_threshold())"
    )
    for start, want in (("on", f"700 {YOUNG_THRESHOLD} 10 10"), ("off", "0 0 10 10")):
        done = subprocess.run(
            [sys.executable, "-c", code, start], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == want.split()
