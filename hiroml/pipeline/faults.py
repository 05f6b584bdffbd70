"""Fault injection at named points of a build, for the kill tests.

``runtime.fault=<point>[:N]`` (or ``HIROML_FAULT=<point>[:N]`` in the environment, which
configs/build.yaml reads into that key) makes the process die at once
(``os._exit(137)``, as a SIGKILL would leave it: no cleanup, no ``finally``) when it reaches
``point`` for the N-th time (default 1). The points:

- ``after_shards``: after a task's shards and task record are written (counted per task run
  now, not per task reused from an earlier run);
- ``before_root_tables``: after a new version folder is complete, before the root tables are
  replaced;
- ``during_prune``: after the first pruned version folder or shard is deleted.

Two more kinds, for the tests of a dying worker and of a full disk:

- ``kill_exam:<exam_key>``: the worker process that starts converting that exam kills
  itself with SIGKILL (as the kernel's out-of-memory killer does), each time it starts it;
  ``kill_zip:<zip file name>`` the same for the worker that starts indexing that zip;
- ``enospc:<write point>``: the first write at that point raises ``OSError(ENOSPC)``, as a
  full disk does. The write points (:data:`WRITE_POINTS`): ``shards`` (a worker adding a
  sample to its shard) and ``root_files`` (a root copy of the new version's files).

A build arms the point of its config (:func:`arm`); unarmed (the normal case) a point costs
one comparison. Forked workers inherit what the build armed.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "HIROML_FAULT"  # the environment variable configs/build.yaml reads into runtime.fault
POINTS = ("after_shards", "before_root_tables", "during_prune")
KILL_EXAM = "kill_exam"
KILL_ZIP = "kill_zip"
ENOSPC = "enospc"
WRITE_POINTS = ("shards", "root_files")
EXIT_CODE = 137

_armed: list[tuple[str, int]] = []  # the point and count armed for this process, if any
_seen: dict[str, int] = {}
_keyed: dict[str, str] = {}  # KILL_EXAM -> exam key, KILL_ZIP -> zip name, ENOSPC -> point


def parse(spec: str) -> tuple[str, int]:
    """``"after_shards:3"`` -> ``("after_shards", 3)``; ValueError for an unknown point."""
    point, _, count = spec.partition(":")
    if point not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: the point must be one of {', '.join(POINTS)}")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise ValueError(f"{ENV}={spec!r}: the count after ':' must be a whole number") from None
    if n < 1:
        raise ValueError(f"{ENV}={spec!r}: the count after ':' must be >= 1")
    return point, n


def check(spec: str) -> None:
    """ValueError when ``spec`` is not a fault this module knows (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind in (KILL_EXAM, KILL_ZIP):
        if not arg:
            raise ValueError(f"{ENV}={spec!r}: give the exam key or zip name after '{kind}:'")
    elif kind == ENOSPC:
        if arg not in WRITE_POINTS:
            raise ValueError(f"{ENV}={spec!r}: the write point must be one of {WRITE_POINTS}")
    else:
        parse(spec)


def arm(spec: str | None) -> None:
    """Arm the point ``spec`` names (``None``: none) for the rest of this process."""
    _armed.clear()
    _seen.clear()
    _keyed.clear()
    if not spec:
        return
    check(spec)
    kind, _, arg = spec.partition(":")
    if kind in (KILL_EXAM, KILL_ZIP, ENOSPC):
        _keyed[kind] = arg
    else:
        _armed.append(parse(spec))


def exam(key: str) -> None:
    """Kill this process with SIGKILL if ``kill_exam:<key>`` is armed."""
    if _keyed and _keyed.get(KILL_EXAM) == key:
        os.kill(os.getpid(), signal.SIGKILL)


def zip_read(name: str) -> None:
    """Kill this process with SIGKILL if ``kill_zip:<name>`` is armed."""
    if _keyed and _keyed.get(KILL_ZIP) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def write(where: str) -> None:
    """Raise ``OSError(ENOSPC)`` if ``enospc:<where>`` is armed (once: it is disarmed)."""
    if _keyed and _keyed.get(ENOSPC) == where:
        del _keyed[ENOSPC]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)


def point(name: str) -> None:
    """Die here (exit status 137, nothing flushed) if the armed point is this one and this is
    its N-th passage."""
    if not _armed:
        return
    wanted, n = _armed[0]
    if wanted != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= n:
        os._exit(EXIT_CODE)
