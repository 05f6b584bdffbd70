"""The systematic-failure guard: a build in which most images of a modality fail with one
error never publishes.

A library that fails on every image (an OpenCV whose float16 cast asserts, a JPEG 2000
plugin that cannot decode) turns each image into an ``error`` audit row; unchecked, the build
would publish a dataset without that modality and exit 0. After conversion, before anything is
published, the errors of the conversion tasks this build ran are grouped per modality by their
message (:func:`error_key`). Tasks reused from an earlier build do not count: a weekly re-run
of an unchanged datamart converts nothing and is never refused. The images a modality
*attempted* are its new samples plus its new ``error`` problems (a radiograph frame or a CT
series each; ``dropped`` objects were never attempted).

The build is refused (:class:`~hiroml.errors.SystematicFailureError`, exit 5) when the largest
group of one modality holds at least ``publish.max_error_fraction`` of its attempted images
and at least ``publish.min_errors`` images; on a first build too. Nothing is then published:
the previous version stays the latest (a first build leaves no version). The refused build's
audit is written to ``<out>/.hiroml/audit-refused.csv``, and the task records and the shards
no version names of this build's new tasks (of every modality: a refused build leaves no new
shard) are removed, so that the next build converts those images again instead of reusing
their failures. Scattered bad files stay audit rows.

:func:`tally` is pure; :func:`check_systematic` decides and cleans up.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hiroml.config import PublishConfig
from hiroml.errors import SystematicFailureError
from hiroml.pipeline.audit import problem_to_audit
from hiroml.pipeline.tasks import TaskResult, TaskSpec, forget_task_record
from hiroml.records import AuditRow, Problem
from hiroml.store.atomic import write_atomic
from hiroml.vocab import MANIFEST, STATE_DIR, Action, Modality

#: Where a refused build leaves its audit (under the output's state folder).
REFUSED_AUDIT = "audit-refused.csv"
#: How many failed members a refusal names.
SHOWN = 1

_NOUN = {Modality.CXR: "radiographs", Modality.CT: "CT volumes"}
_NUMBER = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")
# a transfer syntax as the converters name it: "(transfer syntax <label>)" or "(<label>)",
# where the label is "<name> <uid>", the bare UID or "(none)" (dicom.uid_label)
_SYNTAX = re.compile(r"transfer syntax|1\.2\.840\.10008\.1\.2|\(none\)")


@dataclass(frozen=True, slots=True)
class ErrorTally:
    """One modality's conversion in this build: images attempted, and its most common error
    (the number of images it hit, its text, and where it hit first)."""

    modality: Modality
    attempted: int
    failed: int
    error: str
    examples: tuple[str, ...]

    @property
    def fraction(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0

    def exceeds(self, cfg: PublishConfig) -> bool:
        """At least ``cfg.max_error_fraction`` of the attempted images, and at least
        ``cfg.min_errors`` images, failed with this one error."""
        return self.failed >= cfg.min_errors and self.fraction >= cfg.max_error_fraction

    def describe(self) -> str:
        return (
            f"{self.failed} of {self.attempted} {_NOUN[self.modality]} converted by this build "
            f"failed with one error: {self.error} (first: {'; '.join(self.examples)})"
        )


def _without_syntax(text: str) -> str:
    """``text`` without a trailing parenthesised group that names a transfer syntax (the
    same error reads the same whatever the file's transfer syntax)."""
    if not text.endswith(")"):
        return text
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            return text[:i].rstrip() if _SYNTAX.search(text[i:]) else text
    return text


def error_text(p: Problem, exam_key: str = "") -> str:
    """The error of a problem without where it happened: the leading ``<batch>/<zip>: member
    <member>:`` or ``exam <exam_key>:``, the trailing transfer syntax, runs of white space
    (a multi-line library message reads as one line)."""
    text = _SPACE.sub(" ", p.reason).strip()
    for prefix in (f"{p.batch}/{p.zip}: member {p.member}:", f"exam {exam_key}:"):
        if text.startswith(prefix):
            text = text[len(prefix) :].strip()
            break
    return _without_syntax(text)


def error_key(p: Problem, exam_key: str = "") -> str:
    """What makes two errors the same error: :func:`error_text` with any other mention of the
    problem's own zip, member, batch or exam key, and every number, taken out."""
    text = error_text(p, exam_key)
    for own in sorted({p.zip, p.member, p.batch, exam_key} - {""}, key=len, reverse=True):
        text = text.replace(own, "<>")
    return _NUMBER.sub("#", text)


def _where(p: Problem) -> str:
    where = f"{p.batch}/{p.zip}" if p.batch else p.zip
    return f"{where}: {p.member}" if p.member else where


def tally(work: Iterable[tuple[Modality, TaskResult]]) -> dict[Modality, ErrorTally]:
    """Per modality, the images the tasks ``work`` attempted and their most common error
    (pure; ``work`` holds the tasks this build ran, not those it reused)."""
    attempted: Counter[Modality] = Counter()
    counts: dict[Modality, Counter[str]] = {}
    first: dict[tuple[Modality, str], tuple[str, list[str]]] = {}
    for modality, result in work:
        attempted[modality] += len(result.samples)
        for exam_key, p in result.problems:
            if p.action is not Action.ERROR:
                continue
            attempted[modality] += 1
            key = error_key(p, exam_key)
            counts.setdefault(modality, Counter())[key] += 1
            text, where = first.setdefault((modality, key), (error_text(p, exam_key), []))
            if len(where) < SHOWN:
                where.append(_where(p))
    out = {}
    for modality, n in attempted.items():
        # the most common error; on a tie, the one first met
        key, failed = max(counts.get(modality, Counter({"": 0})).items(), key=lambda kv: kv[1])
        text, where = first.get((modality, key), ("", []))
        out[modality] = ErrorTally(modality, n, failed, text, tuple(where))
    return out


def _named_shards(out: Path) -> set[str]:
    """The shards that the root manifest or any retained version names."""
    import pyarrow.parquet as pq

    from hiroml.versions.listing import list_versions

    named: set[str] = set()
    for folder in [out, *(v.path for v in list_versions(out))]:
        path = folder / MANIFEST
        if path.is_file():
            shards = pq.read_table(path, columns=["shard"]).column("shard").to_pylist()
            named |= {str(s) for s in shards if s}
    return named


def forget(out: Path, results: Sequence[TaskResult]) -> None:
    """Remove the task records of ``results`` and their shards that no version names (a
    refused build leaves no new shard behind): the next build converts their exams again."""
    named = _named_shards(out)
    for r in results:
        forget_task_record(str(out), r.task_id)
        for rel in r.shards:
            if rel not in named:
                (out / rel).unlink(missing_ok=True)


def check_systematic(
    out: Path,
    specs: Sequence[TaskSpec],
    results: Sequence[TaskResult],
    audit: Sequence[AuditRow],
    cfg: PublishConfig,
) -> None:
    """Refuse to publish a build in which one error hit most images of a modality.

    ``results`` are the tasks' results in the order of ``specs`` (reused ones included: they
    are left out here); ``audit`` the rows of the stages before conversion. Raises
    :class:`SystematicFailureError` naming the modality, the error, how many images it hit
    out of how many, and where the refused build's audit is; the task records and new shards
    of this build's tasks are removed first. Returns None when the build may go on.
    """
    from hiroml.store.csvcells import escape_frame
    from hiroml.store.tables import audit_frame

    new = [(s.modality, r) for s, r in zip(specs, results, strict=True) if not r.reused]
    refused = [t for t in tally(new).values() if t.exceeds(cfg)]
    if not refused:
        return
    path = out / STATE_DIR / REFUSED_AUDIT
    rows = [*audit, *(problem_to_audit(p, exam_key=k) for r in results for k, p in r.problems)]
    path.parent.mkdir(parents=True, exist_ok=True)
    safe = escape_frame(audit_frame(rows))  # no cell a spreadsheet would run as a formula
    write_atomic(path, lambda tmp: safe.to_csv(tmp, index=False))
    forget(out, [r for _, r in new])
    raise SystematicFailureError(
        f"refusing to publish into {out}: {'; and '.join(t.describe() for t in refused)}. "
        "This looks like an environment problem (a library that fails on every image), not "
        "bad input: run hiroml-doctor. Nothing was published: the previous version, if any, "
        f"stays the latest; this build's audit is in {path}, and the images are converted "
        "again by the next build. The limits: "
        f"publish.max_error_fraction={cfg.max_error_fraction:g}, "
        f"publish.min_errors={cfg.min_errors}"
    )
