"""hiroml-export OUT DEST --format nifti|png: write a built dataset as files."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hiroml.cli.common import add_version, console, unwritable
from hiroml.data.export import FORMATS, export
from hiroml.errors import HiromlError


def main(argv: Sequence[str] | None = None) -> int:
    """``hiroml-export OUT DEST --format nifti|png [--modality] [--split] [--dataset-version]``."""
    p = argparse.ArgumentParser(
        prog="hiroml-export",
        description="Write a built hiroml dataset as NIfTI volumes (CT) or 16-bit PNGs "
        "(radiographs), each with a JSON provenance sidecar, plus index.csv.",
        epilog="examples:\n"
        "  hiroml-export hiroml-out ct-nifti --format nifti --split train\n"
        "  hiroml-export hiroml-out cxr-png --format png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, help="the hiroml output folder (paths.output)")
    p.add_argument("dest", type=Path, help="the folder to write the files into")
    p.add_argument("--format", dest="fmt", required=True, choices=sorted(FORMATS))
    p.add_argument("--modality", choices=("ct", "cxr"), default=None)
    p.add_argument("--split", default=None, help="train, val or test (default: all)")
    add_version(p, dataset_version="a retained version (default: latest)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="hiroml-export: %(message)s")
    try:
        r = export(
            a.out, a.dest, fmt=a.fmt, modality=a.modality, split=a.split, version=a.dataset_version
        )
    except BrokenPipeError:  # the reader went away: quiet (hiroml.cli.common.console)
        raise
    except OSError as e:
        line = unwritable(e, a.dest, todo="give DEST a folder you can write to")
        print(f"hiroml-export: {line or e}", file=sys.stderr)
        return 2 if line else 1
    except (HiromlError, ValueError) as e:
        print(f"hiroml-export: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    print(f"hiroml-export: {r.files} files written to {r.dest}; index: {r.index}")
    return 0


cli = console("hiroml-export", main)

if __name__ == "__main__":
    cli()
