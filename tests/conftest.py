"""Shared fixtures. Synthetic data is generated in code, seeded; nothing is committed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_datamart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The tiny synthetic datamart (seed 0) and its ground truth, built once per session.

    Tests must not write into it: copy it first (``shutil.copytree``) when they change it.
    """
    from hiroml import synth

    root = tmp_path_factory.mktemp("datamart") / "datamart"
    truth = synth.generate(root, seed=0, size="tiny")
    return root, truth
