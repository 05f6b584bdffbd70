"""Shared fixtures. Synthetic data is generated in code, seeded; nothing is committed."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from absl import logging as absl_logging

from hiroml.config import BuildConfig

# absl (mlcroissant logs through it) binds its handler to the sys.stderr of its import, pytest's
# capture, and closes that stream when logging is configured again (Hydra does, in every
# in-process build): every later test would fail on a closed file. The real stderr it never closes.
absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__

# The self-check's records (doctor.cache) go to a folder of this test session, inherited by the
# builds it starts as processes, not to the user's ~/.cache: the suite leaves nothing there and
# no record of an earlier run spares a check. The folder goes when the session ends.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="hiroml-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _command_logging_undone() -> Iterator[None]:
    """A command's ``main`` run in-process configures logging for its process: Hydra's
    commands put their console and run-log handlers on the root logger, ``hiroml-export``
    calls ``basicConfig``. Their streams are this test's capture, closed when it ends: a later
    test's records would hit a closed file ("--- Logging error ---" on its stderr). The
    handlers a test adds to the root logger (pytest's own aside) go when it ends, with the
    root's level as it was."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        pytests = type(handler).__module__.startswith("_pytest")
        if handler not in before and not pytests and isinstance(handler, logging.StreamHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


#: make_cfg(datamart, out, *overrides) -> the typed config composed by Hydra.
MakeCfg = Callable[..., BuildConfig]


@pytest.fixture
def sha256_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files ``hiroml.store.filehash.shard_sha256`` reads from now on, in
    order."""
    from hiroml.store import filehash

    reads: list[str] = []
    real = filehash._sha256

    def counted(path: Path | str) -> str:
        reads.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(filehash, "_sha256", counted)
    return reads


@pytest.fixture(scope="session")
def tiny_datamart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The tiny synthetic datamart (seed 0) and its ground truth, built once per session.

    Tests must not write into it: copy it first (``shutil.copytree``) when they change it.
    """
    from hiroml import synth

    root = tmp_path_factory.mktemp("datamart") / "datamart"
    truth = synth.generate(root, seed=0, size="tiny")
    return root, truth


@pytest.fixture(scope="session")
def make_cfg() -> MakeCfg:
    """Compose the real Hydra config (configs/build.yaml, as ``hiroml-build`` does) with
    overrides, converted to the typed :class:`BuildConfig`."""
    from hydra import compose, initialize_config_module

    from hiroml.cli import build as cli

    def make(datamart: Path, out: Path, *overrides: str) -> BuildConfig:
        with initialize_config_module(version_base="1.3", config_module="hiroml.conf"):
            cfg = compose(
                "build",
                overrides=[
                    f"paths.datamart={datamart}",
                    f"paths.output={out}",
                    "progress=false",
                    "executor.workers=1",
                    *overrides,
                ],
            )
        return cli.to_config(cfg)

    return make


@pytest.fixture(scope="session")
def tiny_build_clinical(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The tiny datamart built once per session with its clinical table (labels: ``icu``) and
    every radiograph view; read-only for the tests (flow, card, export, MONAI, Lightning)."""
    from hiroml import pipeline as build

    root, truth = tiny_datamart
    out = tmp_path_factory.mktemp("tiny-build") / "out"
    build.run(
        make_cfg(
            root,
            out,
            "cxr.views=[frontal,lateral,unknown]",
            f"paths.clinical={root / truth['clinical']}",
        )
    )
    return out
