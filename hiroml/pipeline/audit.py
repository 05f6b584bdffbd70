"""Audit rows the driver makes: problems of the stages as rows, link notes, split moves."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from hiroml.exams.groups import previous_splits
from hiroml.exams.linking import LinkResult
from hiroml.records import AuditRow, Exam, Problem
from hiroml.vocab import Action

log = logging.getLogger(__name__)

#: The ``code`` of an audit row made from a hiroml bug (:attr:`Problem.internal`).
CODE_INTERNAL = "internal"


def problem_to_audit(p: Problem, *, exam_key: str = "") -> AuditRow:
    """The audit row of a problem. A problem that is a hiroml bug (its traceback in
    :attr:`~hiroml.records.Problem.internal`) is logged: one line for the console, the
    traceback for the run log; its row gets the code :data:`CODE_INTERNAL`."""
    if p.internal:
        where = "/".join(x for x in (p.batch, p.zip, p.member) if x)
        log.error("internal error (a hiroml bug: please report it) at %s: %s", where, p.reason)
        log.info("traceback of the internal error at %s:\n%s", where, p.internal)
    return AuditRow(
        zip=p.zip,
        batch=p.batch,
        action=p.action,
        reason=p.reason,
        exam_key=exam_key,
        member=p.member,
        kept_as=p.kept_as,
        detail=f"stage {p.stage}; {p.detail}" if p.detail else f"stage {p.stage}",
        code=CODE_INTERNAL if p.internal else "",
    )


def with_link_notes(audit: Sequence[AuditRow], linked: LinkResult) -> list[AuditRow]:
    """The audit with each link noted in the detail of the ``kept`` row of the exams of both
    samples (one row per zip stays one row per zip)."""
    notes = linked.notes_by_exam()
    out = []
    for row in audit:
        extra = notes.get(row.exam_key) if row.exam_key and row.action is Action.KEPT else None
        if extra:
            detail = "; ".join([*([row.detail] if row.detail else []), *extra])
            row = dataclasses.replace(row, detail=detail)
        out.append(row)
    return out


def split_move_rows(
    out: Path,
    exams: Sequence[Exam],
    split_of: Mapping[str, str],
    members: Mapping[str, list[str]],
    *,
    prev_by_id: Mapping[str, str] | None = None,
) -> list[AuditRow]:
    """One audit row (``kept``, reason ``split moved``) per patient whose split differs from
    the latest version's (``prev_by_id``; :func:`~hiroml.exams.groups.previous_splits` of
    ``out`` when not given): its group was joined to patients of another split."""
    from hiroml.exams import splits
    from hiroml.versions.listing import SPLIT_MOVED

    remapped = {
        e.source_patient_id: e.patient_id for e in exams if e.source_patient_id != e.patient_id
    }
    if prev_by_id is None:
        prev_by_id = previous_splits(out)
    rows = []
    for m in splits.split_moves(split_of, members, prev_by_id):
        ids = [m.patient_id, *m.joined_with]
        remaps = [f"{p} -> {remapped[p]}" for p in ids if p in remapped]
        cause = (
            f"the remap sheet maps {', '.join(remaps)}"
            if remaps
            else "a shared image (same SOP Instance UID or identical pixels) links them"
        )
        detail = (
            f"patient {m.patient_id}: {m.from_split} -> {m.to_split}; group {m.patient_group} "
            f"now joins it with {', '.join(m.joined_with) or 'patients of another split'} "
            f"({cause}); a joined group takes the split nearest train"
        )
        log.warning("split moved: %s", detail)
        rows.append(
            AuditRow(
                zip="",
                batch="",
                action=Action.KEPT,
                reason=SPLIT_MOVED,
                kept_as=m.patient_group,
                detail=detail,
            )
        )
    return rows
