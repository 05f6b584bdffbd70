"""``hiroml-versions OUT``: list, diff, pin, unpin and prune versions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hiroml.cli.common import add_version, console, unwritable
from hiroml.errors import EXIT_CONFIG, EXIT_LOCKED, HiromlError, OutputLockedError
from hiroml.versions.changes import diff
from hiroml.versions.listing import VersionError, find_version, list_versions, locate
from hiroml.versions.pins import pin, unpin
from hiroml.versions.pruning import Pruned, prune
from hiroml.vocab import BUILD_JSON, STATE_DIR

#: what to do when the output cannot be written
_READ_ONLY = "--pin, --unpin and --prune change the output: run them where it can be written"


def _default_keep(out: Path) -> int:
    """``versions.keep`` of the latest build (its ``build.json``), else the default 10."""
    latest = find_version(out)
    if latest is not None:
        try:
            info = json.loads((latest.path / BUILD_JSON).read_text(encoding="utf-8"))
            return int(info["config"]["versions"]["keep"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return 10


def _change(out: Path, args: argparse.Namespace) -> None:
    """Pin, unpin and prune under the output's lock, held across all three: no build, pin or
    prune of another process runs in between."""
    from hiroml.store.lock import build_lock

    keep = 0
    if args.prune:
        keep = args.keep if args.keep is not None else _default_keep(out)
        if keep < 1:
            raise VersionError(f"--keep {keep}: keep at least 1 version")
    with build_lock(out, timeout=args.wait, how_to_wait="a longer --wait SECONDS"):
        if args.pin:
            v = pin(out, args.pin, args.note or "")
            print(f"pinned {v.name}")
        if args.unpin:
            v = unpin(out, args.unpin)
            print(f"unpinned {v.name}")
        if args.prune:  # no build runs meanwhile: every unnamed shard can go
            done = prune(
                out, keep, sweep=True, task_dir=out / STATE_DIR / "tasks", dry_run=args.dry_run
            )
            print("\n".join(_pruned_lines(done)))


def _pruned_lines(done: Pruned) -> list[str]:
    """What a prune removed, or with ``--dry-run`` would remove: each version and shard."""
    verb, freed = ("would prune", "would be freed") if done.dry_run else ("pruned", "freed")
    lines = [
        f"{verb} {len(done.versions)} version(s) ({', '.join(done.versions) or 'none'}) and "
        f"{len(done.shards)} shard(s): {done.bytes_freed / 1e6:.1f} MB {freed}"
    ]
    if done.dry_run:
        lines += [f"  version versions/{v}" for v in done.versions]
        lines += [f"  shard {s}" for s in done.shards]
        lines.append("nothing was deleted (--dry-run); run without --dry-run to delete these")
    return lines


def _list(out: Path, *, as_json: bool) -> None:
    """The versions, newest first, each with its pin and the pin's note."""
    found = list_versions(out)
    if as_json:
        print(json.dumps([v.as_json() for v in reversed(found)], indent=2))
        return
    if not found:
        print(f"{out}: no versions (an output without versions/, or no build yet)")
        return
    print(f"{'version':<16} {'created':<26} {'samples':>8} {'patients':>8}  pinned")
    for v in reversed(found):
        mark = (f"pinned: {v.note}" if v.note else "pinned") if v.pinned else ""
        print(f"{v.name:<16} {v.created:<26} {v.samples:>8} {v.patients:>8}  {mark}")


def _needs(args: argparse.Namespace) -> str:
    """The line for an option given without the one it goes with ("" when none is)."""
    if args.note is not None and not args.pin:
        return "--note goes with --pin V (the note says why V is pinned): nothing was changed"
    if args.dry_run and not args.prune:
        return "--dry-run goes with --prune (it lists what a prune would delete)"
    return ""


def main(argv: list[str] | None = None) -> int:
    """``hiroml-versions OUT [--json] [--diff A B] [--pin V] [--unpin V] [--prune]``.

    ``--pin``, ``--unpin`` and ``--prune`` take the output's build lock
    (:mod:`hiroml.store.lock`): while a build (or another of them) holds it they wait up to
    ``--wait`` seconds, then exit 3 naming the holder. A pin that reports success is on disk,
    and a prune never deletes a version pinned before it took the lock."""
    parser = argparse.ArgumentParser(
        prog="hiroml-versions",
        description="List, compare, pin and prune the published versions of a hiroml output.",
    )
    parser.add_argument("out", type=Path, help="a hiroml output folder (or its manifest.parquet)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--diff", nargs=2, metavar=("A", "B"), help="what changed from A to B")
    parser.add_argument("--pin", metavar="V", help="protect version V from pruning")
    parser.add_argument("--note", help="with --pin: why (e.g. the paper); shown in the listing")
    parser.add_argument("--unpin", metavar="V", help="let version V be pruned again")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="remove unpinned versions beyond --keep and the shards only they named",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="with --prune: list the versions and shard files it would delete, and the bytes "
        "freed; delete nothing",
    )
    parser.add_argument(
        "--keep",
        type=int,
        default=None,
        help="versions to keep (default: the build's versions.keep)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=5.0,
        metavar="S",
        help="with --pin/--unpin/--prune: seconds to wait for a build (or another pin or "
        "prune) holding the output, then exit 3 (default 5; 0: exit 3 at once)",
    )
    add_version(parser)
    args = parser.parse_args(argv)
    if args.wait < 0:
        parser.error(f"--wait {args.wait}: give seconds >= 0")
    needs = _needs(args)
    if needs:
        print(f"hiroml-versions: {needs}", file=sys.stderr)
        return EXIT_CONFIG
    out, _ = locate(args.out)
    try:
        if not out.is_dir():
            raise VersionError(f"{out} is not a folder (give a hiroml output folder)")
        if args.pin or args.unpin or args.prune:
            _change(out, args)
        if args.diff:
            d = diff(out, args.diff[0], args.diff[1])
            print(json.dumps(d.as_json(), indent=2) if args.json else "\n".join(d.lines()))
            return 0
        if not (args.pin or args.unpin or args.prune):
            _list(out, as_json=args.json)
        return 0
    except OutputLockedError as e:
        print(f"hiroml-versions: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except BrokenPipeError:  # the reader went away: quiet (hiroml.cli.common.console)
        raise
    except OSError as e:
        line = unwritable(e, out, todo=_READ_ONLY)
        print(f"hiroml-versions: {line or e}", file=sys.stderr)
        return EXIT_CONFIG if line else 1
    except HiromlError as e:
        print(f"hiroml-versions: {e}", file=sys.stderr)
        return 1


cli = console("hiroml-versions", main)
