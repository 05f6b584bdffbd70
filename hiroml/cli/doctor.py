"""``hiroml-doctor``: the self-check of the numeric paths and the environment, printed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass
from hiroml.cli.common import add_version, console
from hiroml.doctor.checks import run, values


def main(argv: Sequence[str] | None = None) -> None:
    """``hiroml-doctor [--json | --values]``: the environment and every check; exit 0 when
    all pass, 2 otherwise."""
    parser = argparse.ArgumentParser(
        prog="hiroml-doctor",
        description="Check that this environment gives hiroml's golden values on reference "
        "images (every decode and cast path of a build), and show the library versions. "
        "Exit 0 when every check passes, 2 otherwise.",
        epilog="examples:\n  hiroml-doctor\n  hiroml-doctor --json > environment.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--values", action="store_true", help="print the values found (golden)")
    add_version(parser)
    args = parser.parse_args(argv)
    if args.values:
        print(json.dumps(values(), indent=1))
        raise SystemExit(0)
    report = run()
    if args.json:
        doc = {
            "environment": report.environment,
            "ok": report.ok,
            "seconds": round(report.seconds, 3),
            "checks": [
                {"name": c.name, "status": c.status, "message": c.message(report.environment)}
                for c in report.checks
            ],
        }
        print(json.dumps(doc, indent=1))
    else:
        print("\n".join(report.lines()))
    sys.stdout.flush()
    raise SystemExit(0 if report.ok else 2)


cli = console("hiroml-doctor", main)
