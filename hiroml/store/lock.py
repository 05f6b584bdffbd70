"""One build per output folder: an exclusive lock on ``<out>/.hiroml/build.lock``.

The lock itself is the ``filelock`` package's :class:`filelock.FileLock` (``flock(2)`` on
POSIX systems): the kernel releases it when the holding process ends, however it ends. Beside
it, ``build.lock.json`` names the holder (host, pid, start time, in UTC) so that a second
build can say whom it is waiting for. The holder file is removed on a normal release; when a
build finds the lock free but the holder file still there, the previous holder died without
releasing it, and the lock is taken over with a warning that names it.

Where the file system has no ``flock`` (some network mounts), ``filelock`` falls back to its
``SoftFileLock`` (the lock is the file's existence); see docs/troubleshooting.md.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from hiroml.errors import OutputLockedError
from hiroml.store.atomic import write_text_atomic
from hiroml.vocab import STATE_DIR

log = logging.getLogger(__name__)

LOCK_NAME = "build.lock"
HOLDER_NAME = "build.lock.json"


@dataclass(frozen=True, slots=True)
class Holder:
    """The build that holds an output's lock: host name, process id, start time (ISO 8601,
    UTC)."""

    host: str
    pid: int
    started: str

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}"

    def alive(self) -> bool | None:
        """Whether the holder's process still runs; None when it ran on another host (a pid
        of another machine cannot be checked from here)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, run by another user
            return True
        return True


def this_holder() -> Holder:
    """The :class:`Holder` record of the calling process, started now."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return Holder(host=socket.gethostname(), pid=os.getpid(), started=now)


def read_holder(out: Path | str) -> Holder | None:
    """The holder recorded in ``<out>/.hiroml/build.lock.json``; None when there is none
    (or it is unreadable: a holder that died while writing it)."""
    path = Path(out) / STATE_DIR / HOLDER_NAME
    try:
        data = json.loads(path.read_text())
        return Holder(host=str(data["host"]), pid=int(data["pid"]), started=str(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_holder(out: Path, holder: Holder) -> None:
    """Record the holder beside the lock. Only informative: a disk too full to hold it
    must not stop the build here (the build reports the full disk where it writes data)."""
    path = out / STATE_DIR / HOLDER_NAME
    try:
        write_text_atomic(path, json.dumps(asdict(holder), indent=1))
    except OSError as e:
        log.warning("could not record the lock's holder in %s (%s)", path, e)


def _locked_message(out: Path, holder: Holder | None, how_to_wait: str, waited: float) -> str:
    who = holder.describe() if holder else "a build that has not yet recorded its pid"
    after = f" (waited {waited:g} s)" if waited else ""
    return (
        f"another build holds the lock of the output folder {out} ({who}){after}; only one "
        "build may write an output at a time. Wait for it to finish, or run again with "
        f"{how_to_wait} to wait for it (lock file: {out / STATE_DIR / LOCK_NAME})"
    )


def _take_over_message(out: Path, dead: Holder) -> str:
    state = dead.alive()
    if state is None:
        why = (
            "it ran on another host; if that build still runs there, this file system's "
            "locks do not reach across machines (see docs/troubleshooting.md on NFS)"
        )
    elif state:
        why = "its pid is in use again by another process"
    else:
        why = "that process is no longer running"
    return (
        f"taking over the lock of {out}: the build {dead.describe()} ended without "
        f"releasing it ({why})"
    )


@contextmanager
def build_lock(
    out: Path | str,
    *,
    wait: bool = False,
    timeout: float = 0.0,
    how_to_wait: str = "wait_for_lock=true",
) -> Iterator[Holder]:
    """Hold the build lock of the output folder ``out`` for the ``with`` block.

    Only ``<out>/.hiroml/`` is created (for the lock file) before the lock is held. Raises
    :class:`OutputLockedError`, naming the holder, when another process holds it, unless
    ``wait`` is true: then logs whom it waits for and blocks until the lock is free. With
    ``timeout`` > 0 (seconds) and ``wait`` false, it waits that long at most, then raises.
    ``how_to_wait`` is what the message tells the user to give to wait. The lock and the
    holder file are released on leaving the block, whatever ends it.
    """
    if not isinstance(wait, bool):
        raise TypeError(f"wait must be a bool, not {type(wait).__name__}")
    if timeout < 0:
        raise ValueError(f"timeout={timeout}: give seconds >= 0")
    out = Path(out)
    state = out / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(state / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = read_holder(out)
        if not wait and timeout == 0:
            raise OutputLockedError(_locked_message(out, holder, how_to_wait, 0)) from None
        who = holder.describe() if holder else "a build that has not yet recorded its pid"
        log.info("waiting for the build that holds the lock of %s (%s)", out, who)
        try:
            lock.acquire(timeout=-1 if wait else timeout)
        except Timeout:
            holder = read_holder(out)
            raise OutputLockedError(_locked_message(out, holder, how_to_wait, timeout)) from None
    try:
        previous = read_holder(out)
        if previous is not None:
            log.warning("%s", _take_over_message(out, previous))
        me = this_holder()
        _write_holder(out, me)
        yield me
    finally:
        (state / HOLDER_NAME).unlink(missing_ok=True)
        lock.release()
