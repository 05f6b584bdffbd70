"""``hiroml-build`` with a marker at the entry and exit of each step of a build, for
``bench_scale.py --instructions --steps``.

Run as ``python benchmarks/week_markers.py <hiroml-build overrides>`` under valgrind's
callgrind with ``--dump-before=*getppid*``: each marker is a call of :func:`os.getppid`,
which makes callgrind write the instructions counted since the marker before into a file of
its own (two files per marker: the Python and the C function both match). The steps each
marker entered or left are written, in order, as JSON to the file that ``HIROML_MARKS``
names; :func:`instructions_by_step` pairs the two.

A step is a function of :data:`STEPS`; one called inside another is counted apart from it
(the instructions are those of the innermost step running).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: ``module:function`` or ``module:Class.method`` of each step marked
STEPS = (
    "hiroml.ingest.discover:discover",
    "hiroml.pipeline.driver:_read_inputs",
    "hiroml.ingest.index:build_index",
    "hiroml.exams.stage:build_exams",
    "hiroml.pipeline.tasks:plan_tasks",
    "hiroml.pipeline.driver:execute",
    "hiroml.pipeline.tasks:load_task_record",
    "hiroml.pipeline.driver:_tables",
    "hiroml.exams.groups:link_by_pixels",
    "hiroml.exams.groups:assign_splits",
    "hiroml.pipeline.samples:manifest_frame",
    "hiroml.store.tables:patients_frame",
    "hiroml.store.tables:audit_frame",
    "hiroml.pipeline.driver:_count",
    "hiroml.pipeline.driver:_refuse_to_publish",
    "hiroml.pipeline.driver:_publish",
    "hiroml.store.guard:check_shrink",
    "hiroml.store.tables:manifest_table",
    "hiroml.versions.hashing:hash_table",
    "hiroml.store.tables:write_outputs",
    "hiroml.versions.hashing:table_checksums",
    "hiroml.versions.changes:diff_tables",
    "hiroml.pipeline.publish:_write_report",
    "hiroml.versions.publishing:_stage_root",
    "hiroml.versions.pruning:prune",
    "hiroml.pipeline.unchanged:remember",
)
#: the name of what runs outside every step (start-up, imports, the command's own work)
OUTSIDE = "(outside the steps)"


def _marked(events: list[str], stack: list[str], name: str, f: Callable[..., Any]) -> Any:
    @functools.wraps(f)
    def step(*args: Any, **kwargs: Any) -> Any:
        stack.append(name)
        events.append(stack[-1])
        os.getppid()  # the marker: callgrind dumps what came before it
        try:
            return f(*args, **kwargs)
        finally:
            stack.pop()
            events.append(stack[-1] if stack else OUTSIDE)
            os.getppid()

    return step


def install(events: list[str]) -> None:
    """Wrap each step of :data:`STEPS` wherever a loaded module holds it; each entry and exit
    appends to ``events`` the step then running (the innermost)."""
    stack: list[str] = []
    for target in STEPS:
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        name = f"{module_name.rsplit('.', 1)[-1]}.{attr}"
        if "." in attr:
            cls_name, method = attr.split(".")
            cls = getattr(module, cls_name)
            setattr(cls, method, _marked(events, stack, name, getattr(cls, method)))
            continue
        f = getattr(module, attr)
        wrapped = _marked(events, stack, name, f)
        for other in list(sys.modules.values()):
            if other is not None and getattr(other, attr, None) is f:
                setattr(other, attr, wrapped)


def instructions_by_step(out_file: Path, marks: Path) -> Counter[str]:
    """The instructions counted in each step (the innermost running), from callgrind's dump
    files ``out_file.1``, ``out_file.2``... and ``out_file`` (what followed the last marker)
    and the steps :func:`install` recorded in ``marks``."""
    events: list[str] = json.loads(marks.read_text())
    numbered = sorted(
        out_file.parent.glob(f"{out_file.name}.*"), key=lambda p: int(p.name.rsplit(".", 1)[1])
    )
    if len(numbered) != 2 * len(events):
        raise SystemExit(
            f"{len(numbered)} callgrind dumps for {len(events)} markers: another call of "
            "getppid in the build?"
        )
    counts: Counter[str] = Counter()
    for k, path in enumerate([*numbered, out_file], start=1):
        marker = (k + 1) // 2  # dumps 2m-1 and 2m are made at the m-th marker
        if k > len(numbered):
            step = events[-1]
        elif k % 2:  # from the marker before to this one
            step = OUTSIDE if marker == 1 else events[marker - 2]
        else:  # between the two functions of one marker
            step = events[marker - 1]
        counts[step] += _total(path)
    return counts


def _total(path: Path) -> int:
    for line in path.read_text().splitlines():
        m = re.match(r"(?:totals|summary):\s+(\d+)", line)
        if m:
            return int(m.group(1))
    return 0


def main() -> None:
    import hiroml.cli  # noqa: F401  (first: a command's one BLAS thread and collector threshold)

    events: list[str] = []
    install(events)
    marks = Path(os.environ["HIROML_MARKS"])
    try:
        from hiroml.cli.build import main as build

        sys.argv = ["hiroml-build", *sys.argv[1:]]
        build()
    finally:
        marks.write_text(json.dumps(events))


if __name__ == "__main__":
    main()
