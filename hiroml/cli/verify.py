"""hiroml-verify OUT: check a built output for leakage and damage."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from hiroml.cli.common import add_version, console
from hiroml.exams.neardup import DEFAULT_THRESHOLD
from hiroml.store.verify import examine, examine_all

DESCRIPTION = """Check a built hiroml output: no patient, SOP Instance UID or identical image in
two splits, every shard matching its checksum, every version's tables matching its
build.json. Exit 0 when sound, 1 naming the offenders."""
EPILOG = """examples:
  hiroml-verify hiroml-out
  hiroml-verify hiroml-out --quick            # trust stored data hashes and recorded pairs
  hiroml-verify hiroml-out --all              # every kept version"""


def main(argv: Sequence[str] | None = None) -> int:
    """``hiroml-verify OUT [--quick] [--dataset-version V | --all]``: print the offenders and
    exit 1, or a summary and 0."""
    from hiroml.errors import HiromlError
    from hiroml.versions.listing import locate

    parser = argparse.ArgumentParser(
        prog="hiroml-verify",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="a hiroml output folder (or its manifest.parquet)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="trust stored data hashes (skip re-hashing pixels) and the near-duplicate pairs "
        "a build recorded (only new signatures searched)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="near-duplicate radiographs in two splits are errors (default: warnings)",
    )
    parser.add_argument(
        "--near-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="rank correlation of signatures from which two radiographs are near duplicates "
        f"(default {DEFAULT_THRESHOLD}, as splits.near_duplicate_threshold)",
    )
    which = parser.add_mutually_exclusive_group()
    add_version(which, dataset_version="the version to check (default: the latest)")  # type: ignore[arg-type]
    which.add_argument("--all", action="store_true", help="check every kept version")
    args = parser.parse_args(argv)
    args.out, named = locate(args.out)
    version = args.dataset_version if args.dataset_version is not None else named
    if not 0.0 < args.near_threshold <= 1.0:
        parser.error(f"--near-threshold {args.near_threshold}: give a value in (0, 1]")
    near = {"strict": args.strict, "near_threshold": args.near_threshold}
    try:
        if args.all:
            results = examine_all(args.out, deep=not args.quick, **near)
        else:
            results = [examine(args.out, deep=not args.quick, version=version, **near)]
    except HiromlError as err:
        print(f"hiroml-verify: {err}")
        return 1
    n_bad = 0
    for found in results:
        label = f"{args.out} version {found.version}" if found.version else str(args.out)
        for w in found.warnings:
            print(f"warning: {w}")
        for e in found.errors:
            print(f"error: {e}")
        if found.errors:
            n_bad += 1
            print(f"{label}: NOT sound, {len(found.errors)} error(s)")
        else:
            print(
                f"{label}: sound, {found.n_samples} samples in {found.n_shards} shards, "
                f"{len(found.warnings)} warning(s)"
            )
    return 1 if n_bad else 0


cli = console("hiroml-verify", main)
