"""Print pip constraints that pin every dependency of pyproject.toml (extras included) to
its lower bound: ``name>=X`` becomes ``name==X``. CI installs the project with them to test
the oldest versions the bounds allow; a bound CI cannot install is a bound that is not true."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(.*)$")


def lower_bounds(pyproject: Path) -> dict[str, str]:
    """``{name: lowest version}`` for every requirement with a ``>=`` bound."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    out: dict[str, str] = {}
    for req in reqs:
        m = _REQ.match(req.split(";")[0])
        if not m:
            continue
        name, spec = m.group(1), m.group(2)
        low = re.search(r">=\s*([^,\s]+)", spec)
        if low:
            out[name.lower()] = low.group(1)
    return out


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    for name, version in sorted(lower_bounds(root / "pyproject.toml").items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
