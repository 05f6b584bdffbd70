"""The declared environment: bounds CI tests at both ends, a lock inside them, and CI running
exactly the README's test command on the lock and then the oldest set."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"lock line without an exact version: {line!r}"
            pins[name.lower().replace("_", "-")] = Version(version)
    return pins


def _oldest() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("oldest", ROOT / ".ci" / "oldest_constraints.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.lower_bounds(ROOT / "pyproject.toml"))


def test_every_dependency_has_a_lower_bound_that_ci_pins() -> None:
    oldest = _oldest()
    for req in _requirements():
        lows = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lows) == 1, f"{req}: one >= bound, the version CI installs in .ci/oldest"
        assert oldest[req.name.lower()] == lows[0]
        assert req.specifier.contains(lows[0]), f"{req}: its lower bound is outside its range"


def test_opencv_and_pydicom_are_capped_below_their_next_major() -> None:
    reqs = {r.name.lower(): r for r in _requirements()}
    assert not reqs["opencv-python-headless"].specifier.contains("6.0.0")
    assert reqs["opencv-python-headless"].specifier.contains("5.1.0.95")
    assert not reqs["pydicom"].specifier.contains("4.0.0")


def test_the_lock_pins_every_dependency_inside_its_bounds() -> None:
    pins = _lock()
    for req in _requirements():
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not in requirements/lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"the lock's {req.name} {pins[name]} is outside {req.specifier}"
        )
    assert "hiroml" not in pins and pins["torch"] == Version("2.13.0")


def test_ci_runs_the_readme_test_command_then_the_oldest_set() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    test_line = next(line for line in readme[:10] if "pytest" in line)
    command = test_line.split("   #")[0].strip()
    assert "-c requirements/lock.txt" in command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_command = next(line for line in ci.splitlines() if "pytest" in line)
    assert re.sub(r"python -m pip install -q", "pip install", ci_command) == command
    assert ci.rstrip().endswith("bash .ci/oldest")
    assert "oldest_constraints.py" in (ROOT / ".ci" / "oldest").read_text(encoding="utf-8")
