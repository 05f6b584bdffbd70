"""The exams stage: :func:`build_exams`, instance records to exams, audit rows and patient
groups."""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from operator import attrgetter

from hiroml.config import ExamsConfig
from hiroml.exams.patients import _groups
from hiroml.exams.rules import (
    CODE_NO_INSTANCES,
    REASON_ALL_SHARED,
    REASON_CT_SPLIT,
    REASON_KEPT,
    REASON_NO_INSTANCES,
    REASON_NO_PIXELS,
    REASON_NO_USABLE,
    REASON_PARTIAL,
    REASON_UNKNOWN_ZIP,
    ExamsResult,
    _assign_keys,
    _chains,
    _evidence,
    _find_duplicates,
    _keep_once,
    _make_unit,
    _order,
    _Unit,
    is_unusable,
)
from hiroml.frozen import maker
from hiroml.records import AuditRow, Exam, ExamZip, Instance
from hiroml.vocab import Action, BatchStatus

log = logging.getLogger(__name__)
#: ``AuditRow(...)`` and ``Exam(...)`` without the frozen ``__init__`` (one of each per zip,
#: every build: :func:`hiroml.frozen.maker`)
_make_row = maker(AuditRow)
_make_exam = maker(Exam)


def _row(u: _Unit, action: Action, reason: str, kept_as: str = "", extra: str = "") -> AuditRow:
    detail = "; ".join([*([extra] if extra else []), *u.notes])
    # AuditRow(zip, batch, action, reason, kept_as, detail, exam_key, member, code)
    return _make_row(u.zip.file_name, u.zip.batch.name, action, reason, kept_as, detail,
                     u.exam_key, "", "")  # fmt: skip


def _zip_row(
    z: ExamZip, action: Action, reason: str, detail: str, member: str = "", code: str = ""
) -> AuditRow:
    return AuditRow(
        zip=z.file_name,
        batch=z.batch.name,
        action=action,
        reason=reason,
        detail=detail,
        member=member,
        code=code,
    )


def pediatric_candidates(
    zips: Sequence[ExamZip], instances: Sequence[Instance], remap: Mapping[str, str]
) -> list[Instance]:
    """The instances whose decoded pixels could make a pediatric duplicate that the encoded
    bytes hide: those of pediatric zips of the same current patient and timestamp with the
    same set of member names, whose (member, encoded pixel hash) sets differ. Decode just
    these and pass their hashes to :func:`build_exams` (``decoded=``). Pure."""
    by_rel: dict[str, ExamZip] = {}
    for z in zips:
        if z.name.pediatric:
            by_rel.setdefault(z.rel_path, z)
    insts_of: dict[str, list[Instance]] = defaultdict(list)
    for inst in instances:
        if inst.rel_zip in by_rel and not is_unusable(inst):
            insts_of[inst.rel_zip].append(inst)
    slots: dict[tuple[str, dt.datetime], list[_Unit]] = defaultdict(list)
    for rel in sorted(insts_of):
        u = _make_unit(by_rel[rel], insts_of[rel], remap)
        slots[(u.patient, u.time)].append(u)
    wanted: dict[tuple[str, str], Instance] = {}
    for slot in slots.values():
        for a in slot:
            for b in slot:
                if a.rel >= b.rel or a.pixsig == b.pixsig:
                    continue
                if {i.member for i in a.instances} != {i.member for i in b.instances}:
                    continue
                for i in (*a.instances, *b.instances):
                    wanted[(i.rel_zip, i.member)] = i
    return [wanted[k] for k in sorted(wanted)]


def _unknown_zip_rows(
    insts_of: Mapping[str, list[Instance]], by_rel: Mapping[str, ExamZip]
) -> list[AuditRow]:
    """An ``error`` row per zip whose instances were indexed but that was not discovered."""
    rows: list[AuditRow] = []
    for rel in sorted(set(insts_of) - set(by_rel)):
        first = insts_of[rel][0]
        log.error("%d instance(s) of %s whose zip was not discovered", len(insts_of[rel]), rel)
        rows.append(
            AuditRow(
                zip=first.zip,
                batch=first.batch,
                action=Action.ERROR,
                reason=REASON_UNKNOWN_ZIP,
                detail=f"{len(insts_of[rel])} instance(s) indexed from {rel} ignored",
            )
        )
    return rows


def _units(
    by_rel: Mapping[str, ExamZip],
    insts_of: Mapping[str, list[Instance]],
    remap: Mapping[str, str],
    decoded: Mapping[tuple[str, str], str] | None,
    audit: list[AuditRow],
) -> list[_Unit]:
    """One unit per zip with a usable instance, in zip order. Appends to ``audit`` an
    ``error`` row per zip with no indexed instance, per image member without (7FE0,0010)
    Pixel Data (``member`` set), and per zip left with no usable member."""
    units: list[_Unit] = []
    for rel in sorted(by_rel, key=lambda r: _order(by_rel[r])):
        z = by_rel[rel]
        if rel not in insts_of:
            audit.append(
                _zip_row(
                    z,
                    Action.ERROR,
                    REASON_NO_INSTANCES,
                    f"{rel}: no readable DICOM member",
                    code=CODE_NO_INSTANCES,
                )
            )
            continue
        insts = insts_of[rel]
        usable = [i for i in insts if not is_unusable(i)]
        if len(usable) < len(insts):
            for i in sorted((i for i in insts if is_unusable(i)), key=lambda i: i.member):
                detail = (
                    f"{rel}: {i.member} (SOP Class {i.sop_class_uid or '?'}) has no "
                    "Pixel Data (7FE0,0010)"
                )
                audit.append(_zip_row(z, Action.ERROR, REASON_NO_PIXELS, detail, member=i.member))
        if not usable:
            detail = f"{rel}: every member is an image without Pixel Data"
            audit.append(_zip_row(z, Action.ERROR, REASON_NO_USABLE, detail))
            continue
        units.append(_make_unit(z, usable, remap, decoded))
    return units


def _exam(chain: list[_Unit], key: str, audit: list[AuditRow]) -> Exam | None:
    """The exam of one chain of zips (its primary first), and its audit rows: ``kept`` (or
    partial overlap) for the primary, ``merged`` for the other parts of a CT split scan.
    None, with a ``dropped`` row per zip, when every instance is already kept elsewhere."""
    primary = chain[0]
    held = primary.kept if len(chain) == 1 else tuple(i for u in chain for i in u.kept)
    if not held:
        for u in chain:
            kept_as = ", ".join(u.overlaps)
            audit.append(_row(u, Action.DROPPED, REASON_ALL_SHARED, kept_as=kept_as))
            u.exam_key = ""
        log.info("exam %s dropped: every instance already kept elsewhere", key)
        return None
    z = primary.zip
    # Exam(exam_key, modality, patient_id, source_patient_id, hiro_id, time, description,
    #      pediatric, batch, zips, instances)
    exam = _make_exam(key, z.batch.modality, primary.patient, z.name.patient_id, z.name.hiro_id,
                      z.name.time, z.name.description, z.name.pediatric, z.batch.name,
                      tuple(u.rel for u in chain), held)  # fmt: skip
    reason = REASON_PARTIAL if primary.overlaps else REASON_KEPT
    audit.append(_row(primary, Action.KEPT, reason))
    if len(chain) > 1:
        series: dict[str, set[str]] = defaultdict(set)
        for u in chain:
            for i in u.instances:
                series[i.series_uid].add(u.rel)
        joined = sum(1 for zs in series.values() if len(zs) > 1)
        extra = f"{len(chain)} zips in one exam; {joined} series joined by UID"
        for u in chain[1:]:
            audit.append(_row(u, Action.MERGED, REASON_CT_SPLIT, kept_as=primary.rel, extra=extra))
    return exam


def _duplicate_rows(
    units: Sequence[_Unit], dup: Mapping[str, tuple[_Unit, _Unit, str]]
) -> list[AuditRow]:
    """A ``duplicate`` row per duplicate zip, naming the kept zip and the evidence; the
    duplicate takes the exam key of the zip it duplicates."""
    rows: list[AuditRow] = []
    for u in units:
        if u.rel in dup:
            root, matched, reason = dup[u.rel]
            via = f"matched {matched.rel}, a duplicate of it" if matched is not root else ""
            evidence = _evidence(u, matched)
            extra = f"{evidence}; {via}" if via else evidence
            u.exam_key = root.exam_key
            rows.append(_row(u, Action.DUPLICATE, reason, kept_as=root.rel, extra=extra))
    return rows


def build_exams(
    zips: Sequence[ExamZip],
    instances: Sequence[Instance],
    remap: Mapping[str, str],
    cfg: ExamsConfig,
    *,
    decoded: Mapping[tuple[str, str], str] | None = None,
) -> ExamsResult:
    """Turn indexed instances into logical exams, audit rows and patient groups.

    ``remap`` maps old patient ids to their final current id (chains already followed, as
    :func:`hiroml.ingest.identity.load_remap` returns it). ``decoded`` maps (zip rel path, member)
    to a hash of the member's decoded pixels (:func:`hiroml.exams.linking.decoded_pixel_hash`) for
    the :func:`pediatric_candidates`; a zip whose every member has one is compared on those.
    The result depends only on the *sets* of records given, never on their order. See the
    module docstring for the rules.
    """
    uploading = sorted(z.rel_path for z in zips if z.batch.status is BatchStatus.IN_PROGRESS)
    if uploading:
        raise ValueError(
            f"build_exams takes the zips hiroml.ingest.discover.discover lists, never those of an "
            f"IN-PROGRESS batch (still uploading): {', '.join(uploading)}"
        )
    by_rel: dict[str, ExamZip] = {}
    for z in zips:
        by_rel.setdefault(z.rel_path, z)
    insts_of: dict[str, list[Instance]] = defaultdict(list)
    for inst in instances:
        insts_of[inst.rel_zip].append(inst)
    audit = _unknown_zip_rows(insts_of, by_rel)
    units = _units(by_rel, insts_of, remap, decoded, audit)
    groups, group_of = _groups(units, remap, cfg.pixel_link_max_patients)

    dup = _find_duplicates(units)
    kept_units = [u for u in units if u.rel not in dup]
    window = dt.timedelta(minutes=cfg.ct_split_window_minutes)
    chains = _chains(kept_units, window)
    keys = _assign_keys(chains)
    exam_of = {u.rel: u.exam_key for u in kept_units}
    by_primary = sorted(chains, key=lambda c: c[0].order)
    _keep_once([u for c in by_primary for u in c], exam_of)
    exams: list[Exam] = []
    for chain, key in zip(chains, keys, strict=True):
        exam = _exam(chain, key, audit)
        if exam is not None:
            exams.append(exam)
    audit.extend(_duplicate_rows(units, dup))

    exams.sort(key=attrgetter("exam_key"))
    audit.sort(key=attrgetter("batch", "zip", "action", "reason", "kept_as", "detail"))
    log.info(
        "%d zips -> %d exams, %d duplicates, %d patient groups",
        len(by_rel),
        len(exams),
        len(dup),
        len(groups),
    )
    return ExamsResult(exams=tuple(exams), audit=tuple(audit), groups=groups, group_of=group_of)
