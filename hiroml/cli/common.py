"""What every console script shares: ``--version``, quiet broken pipes, one line per error.

A console script's ``main`` is wrapped by :func:`console`: a reader that closes the pipe early
(``hiroml-versions OUT | head -1``) ends the command quietly with exit 0, and Ctrl-C ends it
with one line and exit 130, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hiroml._version import __version__

#: exit code of a command stopped by SIGINT (128 + 2), and by SIGTERM (128 + 15)
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

#: errnos that say "this place cannot be written", with what to tell the user
_UNWRITABLE = {
    errno.EROFS: "it is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of it is a file, not a folder",
    errno.EEXIST: "a file of that name is in the way",
    errno.ENOSPC: "the disk is full",
}


def version_line(prog: str) -> str:
    return f"{prog} (hiroml) {__version__}"


class _VersionOrDataset(argparse.Action):
    """``--version`` alone prints hiroml's version; ``--version V`` is the deprecated spelling
    of ``--dataset-version V``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values is None:
            print(version_line(parser.prog))
            parser.exit(0)
        print(
            f"{parser.prog}: --version V is deprecated, use --dataset-version {values}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_version(parser: argparse.ArgumentParser, *, dataset_version: str | None = None) -> None:
    """``--version``: print hiroml's version. With ``dataset_version`` (the help text of
    ``--dataset-version V``), ``--version V`` is kept as its deprecated alias."""
    if dataset_version is None:
        parser.add_argument("--version", action="version", version=version_line(parser.prog))
        return
    parser.add_argument(
        "--dataset-version", dest="dataset_version", metavar="V", default=None, help=dataset_version
    )
    parser.add_argument(
        "--version",
        dest="dataset_version",
        nargs="?",
        action=_VersionOrDataset,
        help="print hiroml's version (--version V: deprecated spelling of --dataset-version V)",
    )


def unwritable(err: OSError, path: Path | str, *, todo: str) -> str | None:
    """One line for an error that says ``path`` cannot be written, ending with ``todo`` (what
    to do instead); ``None`` when ``err`` is some other error."""
    reason = _UNWRITABLE.get(err.errno or 0)
    if reason is None:
        return None
    return f"cannot write in {path}: {reason}; {todo}"


def quiet_broken_pipe() -> None:
    """The reader of stdout went away: send what is left to /dev/null, so that the flush at
    exit does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def console(prog: str, main: Callable[[list[str] | None], int | None]) -> Callable[[], None]:
    """The console script of ``main(argv) -> exit code``: broken pipe quiet (exit 0), Ctrl-C
    one line (exit 130)."""

    def entry() -> None:
        try:
            code = main(None)
            sys.stdout.flush()
        except BrokenPipeError:
            quiet_broken_pipe()
            code = 0
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            code = EXIT_INTERRUPTED
        raise SystemExit(code or 0)

    return entry


__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "add_version",
    "console",
    "quiet_broken_pipe",
    "unwritable",
    "version_line",
]
