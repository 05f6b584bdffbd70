"""The configs ship inside the wheel: an installed hiroml composes them without a checkout."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {done.stderr[-300:]}")
    return next(out.glob("hiroml-*.whl"))


def test_the_wheel_holds_every_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")
    }
    shipped = {s for s in shipped if not s.startswith("local/")}
    assert shipped and all(f"hiroml/conf/{s}" in names for s in shipped)
    assert "hiroml/py.typed" in names


def test_an_installed_wheel_composes_its_configs(wheel: Path, tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.create(env, system_site_packages=True, with_pip=True)
    py = env / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = (
        "import hiroml, sys\n"
        "from hydra import compose, initialize_config_module\n"
        "from hiroml import cli\n"
        "with initialize_config_module(version_base='1.3', config_module='hiroml.conf'):\n"
        "    c = cli.to_config(compose('build', overrides=['experiment=covid_cxr']))\n"
        "print(hiroml.__file__, c.paths.output, c.cxr.views)\n"
    )
    done = subprocess.run(
        [str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert str(env) in done.stdout and "hiroml-covid-cxr ['frontal']" in done.stdout
