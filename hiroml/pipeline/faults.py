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

A build arms the point of its config (:func:`arm`); unarmed (the normal case) a point costs
one comparison.
"""

from __future__ import annotations

import os

ENV = "HIROML_FAULT"  # the environment variable configs/build.yaml reads into runtime.fault
POINTS = ("after_shards", "before_root_tables", "during_prune")
EXIT_CODE = 137

_armed: list[tuple[str, int]] = []  # the point and count armed for this process, if any
_seen: dict[str, int] = {}


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


def arm(spec: str | None) -> None:
    """Arm the point ``spec`` names (``None``: none) for the rest of this process."""
    _armed.clear()
    _seen.clear()
    if spec:
        _armed.append(parse(spec))


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
