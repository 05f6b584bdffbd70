"""The configs ship inside the wheel: an installed hiroml composes them without a checkout."""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
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
    assert done.returncode == 0, f"cannot build a wheel: {done.stderr[-600:]}"
    return next(out.glob("hiroml-*.whl"))


def test_the_wheel_holds_every_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")
    }
    shipped = {s for s in shipped if not s.startswith("local/")}
    assert shipped and all(f"hiroml/conf/{s}" in names for s in shipped)
    assert "hiroml/py.typed" in names


def _site_dirs_of_this_interpreter() -> list[str]:
    """Where the running interpreter finds its packages: its own site-packages (a venv's, a
    conda env's or the base's), the user site, and any site/dist-packages on its path (a venv
    with system site packages, Debian's dist-packages)."""
    paths = sysconfig.get_paths()
    dirs = [paths["purelib"], paths["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    dirs += [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def test_an_installed_wheel_composes_its_configs(wheel: Path, tmp_path: Path) -> None:
    # A nested venv made with system_site_packages=True sees the *base* interpreter, not the
    # venv or conda env the tests run in. Make an isolated one, install only the wheel, and let
    # it find hydra & co. through a .pth naming this interpreter's site-packages; .pth lines
    # are plain paths (their own .pth files are not processed), so an editable hiroml of the
    # checkout stays invisible and the wheel's hiroml is the one imported.
    env = tmp_path / "venv"
    venv.create(env, system_site_packages=False, with_pip=False)
    py = env / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            purelib,
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (Path(purelib) / "zz_running_interpreter.pth").write_text(
        "".join(f"{d}\n" for d in _site_dirs_of_this_interpreter())
    )
    code = (
        "import hiroml, sys\n"
        "from hydra import compose, initialize_config_module\n"
        "from hiroml.cli import build as cli\n"
        "with initialize_config_module(version_base='1.3', config_module='hiroml.conf'):\n"
        "    c = cli.to_config(compose('build', overrides=['experiment=covid_cxr']))\n"
        "print(hiroml.__file__, c.paths.output, c.cxr.views)\n"
    )
    done = subprocess.run(
        [str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert str(env) in done.stdout and "hiroml-covid-cxr ['frontal']" in done.stdout


def test_package_version_is_pyproject_version() -> None:
    import tomllib

    import hiroml

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert hiroml.__version__ == pyproject["project"]["version"]


def test_the_wheel_holds_every_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "hiroml").rglob("*.py")}
    assert modules and modules <= names, sorted(modules - names)


def test_pyproject_lists_every_package() -> None:
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hiroml").rglob("__init__.py")
    }
    assert listed == on_disk | {"hiroml.conf"}
