"""Fault injection at named points of a build, for the kill tests.

``HIROML_FAULT=<point>[:N]`` in the environment makes the process die at once
(``os._exit(137)``, as a SIGKILL would leave it: no cleanup, no ``finally``) when it reaches
``point`` for the N-th time (default 1). The points:

- ``after_shards``: after a task's shards and task record are written (counted per task run
  now, not per task reused from an earlier run);
- ``before_root_tables``: after a new version folder is complete, before the root tables are
  replaced;
- ``during_prune``: after the first pruned version folder or shard is deleted.

Unset (the normal case) it costs one dictionary lookup per call.
"""

from __future__ import annotations

import os

ENV = "HIROML_FAULT"
POINTS = ("after_shards", "before_root_tables", "during_prune")
EXIT_CODE = 137

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


def point(name: str) -> None:
    """Die here (exit status 137, nothing flushed) if ``HIROML_FAULT`` names this point and
    this is its N-th passage."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted, n = parse(spec)
    if wanted != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= n:
        os._exit(EXIT_CODE)
