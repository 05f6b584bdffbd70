"""From instance records to logical exams: dedupe, CT split-scan merge, patient groups.

A pure function, :func:`build_exams`, with no I/O. It applies the rules of evidence of
DESIGN §2 (which come from the data provider's tip sheet) and writes one audit row per zip
and decision, with the evidence, so that every dropped or merged zip can be checked.

Order of the rules
------------------
1. Every zip gets its *current* patient id: the remap sheet (already resolved, see
   :func:`hiroml.ingest.identity.load_remap`) applied to the id in the zip name. A header
   (0010,0020) Patient ID that disagrees with it after remap is noted in the audit detail.
2. Zips are put in a total order, the *zip order*: batch date, batch name, zip file name.
   "Earliest" always means first in this order; nothing depends on the order of the input.
3. Duplicates, among zips of the same current patient and the same timestamp:

   * cross-batch duplicate: the same (non-empty) set of (0008,0018) SOP Instance UIDs;
     folder/file names and pixel hashes are recorded as supporting evidence only;
   * pediatric duplicate: both zips pediatric (a ``P`` after the modality code), and the same
     set of (member path, pixel hash) pairs, every hash non-empty: identical pixels under
     identical folder/file names, whether or not the SOP Instance UIDs differ (tried
     first, so that a pediatric pair with equal UIDs is reported as pediatric). "Identical
     pixels" means the decoded values: the caller may pass ``decoded`` hashes (see
     :func:`pediatric_candidates`), preferred to the hash of the encoded bytes, so a copy in
     another transfer syntax is still recognised.

   The earliest zip of a set of duplicates is kept; the others are ``duplicate`` rows whose
   ``kept_as`` is the kept zip's rel path. A shared timestamp alone never makes a duplicate.
4. CT split scans: kept CT zips of the same current patient and HIRO id whose timestamps
   form a chain with gaps of at most ``ExamsConfig.ct_split_window_minutes`` are one exam;
   the primary is the earliest timestamp (then zip order), the other zips are ``merged``
   rows whose ``kept_as`` is the primary zip's rel path (``exam_key`` names the exam).
   Series split over those zips share their (0020,000E) Series Instance UID in the exam's
   instances, which is how later stages join them.
5. Each instance, a SOP Instance UID, is kept once, by the first exam that holds it (exams in
   zip order of their primary zips; inside an exam, primary first, then by time), even when
   two patient ids hold it (a missed remap: the ids are grouped, see 6). A zip that shares
   some SOP Instance UIDs with a zip of *another* exam is a partial overlap: it keeps only
   its new instances and its row says so (a ``kept`` row gets the reason ``partial
   overlap``; a ``merged`` row keeps its reason; in both the detail holds ``partial overlap:
   k of n SOP Instance UIDs already kept in <zip> ...``). An exam left with no instance at all
   is not emitted: each of its zips gets a ``dropped`` row naming the zip that holds them.
6. Patient groups: union-find over current patient ids, linking ids whose zips share a SOP
   Instance UID or an identical pixel hash (a missed remap), as docs/design.md requires. Optionally
   (``ExamsConfig.pixel_link_max_patients`` > 0) a pixel hash held by more than that many ids
   is taken for a common image (blank, template) and links nothing; off by default, since a
   missed link can leak a patient across splits. Ids linked by the remap sheet
   are already one current id; the old ids are listed in :attr:`PatientGroup.aliases`
   (images or not). Each link is explained in :attr:`PatientGroup.links` and in
   the detail of the audit row of every zip that carries it.

Zips of ``IN-PROGRESS`` batches never reach this module (:func:`hiroml.ingest.discover.discover`
skips them; :func:`build_exams` refuses them with ValueError). Rows for zips that cannot
take part: a zip with no indexed instance is an ``error``; instances whose zip was not
discovered are an ``error`` row for that zip (never a crash). An image instance without
(7FE0,0010) Pixel Data (reports and documents aside, by SOP Class UID) gets an ``error`` row
of its own, with ``member`` set; a zip holding nothing else is an ``error`` too. These member
rows are the only rows with ``member`` set: every other row is the one decision about its zip.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from hiroml.dicom import uids as dicom_uids
from hiroml.records import AuditRow, Exam, ExamZip, Instance, PatientGroup
from hiroml.vocab import Action, Modality

STAGE = "exams"

REASON_KEPT = Action.KEPT
REASON_PARTIAL = "partial overlap"
REASON_CROSS_BATCH = "cross-batch duplicate"
REASON_PEDIATRIC = "pediatric duplicate"
REASON_CT_SPLIT = "CT split scan"
REASON_ALL_SHARED = "every instance already kept"
REASON_NO_INSTANCES = "no DICOM instance indexed"
#: AuditRow.code of the zip-level row for a zip with no indexed instance
CODE_NO_INSTANCES = "exams.no_instances"
REASON_UNKNOWN_ZIP = "instances of a zip that was not discovered"
REASON_NO_PIXELS = "image without Pixel Data"
REASON_NO_USABLE = "no usable DICOM instance"


@dataclass(frozen=True, slots=True)
class ExamsResult:
    """What :func:`build_exams` gives.

    ``exams`` are sorted by ``exam_key``; ``audit`` has one row per zip, plus member rows
    (``member`` set) for images without pixels, sorted by batch then zip file name;
    ``groups`` are sorted by group name and ``group_of`` maps every
    current patient id seen in a zip name to its group name.
    """

    exams: tuple[Exam, ...]
    audit: tuple[AuditRow, ...]
    groups: tuple[PatientGroup, ...]
    group_of: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Unit:
    """One usable zip with its instances, in the making."""

    zip: ExamZip
    rel: str
    order: tuple[dt.date, str, str]
    patient: str  # current id
    instances: tuple[Instance, ...]  # sorted by member path
    sop_keys: tuple[str, ...]  # per instance: SOP Instance UID (or a member-based stand-in)
    sops: frozenset[str]
    pixsig: frozenset[tuple[str, str]] | None  # (member, pixel hash), None if a hash is blank
    decoded: bool = False  # pixsig holds decoded-pixel hashes
    notes: list[str] = field(default_factory=list)
    exam_key: str = ""
    kept: tuple[Instance, ...] = ()
    overlaps: list[str] = field(default_factory=list)  # rel paths of zips of other exams

    @property
    def time(self) -> dt.datetime:
        return self.zip.name.time

    @property
    def hiro(self) -> str:
        return self.zip.name.hiro_id


def _order(z: ExamZip) -> tuple[dt.date, str, str]:
    """The zip order: batch date, batch name, zip file name."""
    return (z.batch.date, z.batch.name, z.file_name)


def is_unusable(inst: Instance) -> bool:
    """An image instance (not a report, document or other
    :data:`hiroml.dicom.uids.NON_IMAGE_SOP_CLASSES` object, by (0008,0016) SOP Class UID) without
    (7FE0,0010) Pixel Data: nothing can be made of it."""
    return not inst.has_pixels and dicom_uids.non_image_kind(inst.sop_class_uid) is None


def _sop_key(rel: str, inst: Instance) -> str:
    """The SOP Instance UID, or a stand-in unique to the member when the UID is blank."""
    return inst.sop_uid if inst.sop_uid else f"\x00{rel}/{inst.member}"


def _read_notes(insts: Sequence[Instance]) -> list[str]:
    """One note per way of reading members without a Part 10 header (no preamble, no meta):
    how many, which one first, and what was inferred (:attr:`Instance.read_note`)."""
    by_note: dict[str, list[str]] = {}
    for i in insts:
        if i.read_note:
            by_note.setdefault(i.read_note, []).append(i.member)
    return [
        f"{len(members)} member(s) {note}, e.g. {members[0]}"
        for note, members in sorted(by_note.items())
    ]


def _instance_order(i: Instance) -> tuple[str, str, str, str]:
    return (i.member, i.sop_uid, i.pixel_hash, i.series_uid)


def _make_unit(
    z: ExamZip,
    insts: Iterable[Instance],
    remap: Mapping[str, str],
    decoded: Mapping[tuple[str, str], str] | None = None,
) -> _Unit:
    rel = z.rel_path
    ordered = tuple(insts)
    if len(ordered) > 1:
        ordered = tuple(sorted(ordered, key=_instance_order))
    keys = tuple([i.sop_uid or _sop_key(rel, i) for i in ordered])
    members = [i.member for i in ordered]
    use_decoded = False
    if decoded and ordered and all((rel, m) in decoded for m in members):
        use_decoded = True
        hashes = [decoded[(rel, m)] for m in members]
    else:
        hashes = [i.pixel_hash for i in ordered]
    pixsig = frozenset(zip(members, hashes, strict=True)) if all(hashes) else None
    source = z.name.patient_id
    patient = remap.get(source, source)
    unit = _Unit(
        zip=z,
        rel=rel,
        order=_order(z),
        patient=patient,
        instances=ordered,
        sop_keys=keys,
        sops=frozenset(keys),
        pixsig=pixsig,
        decoded=use_decoded,
    )
    if patient != source:
        unit.notes.append(f"patient id {source} remapped to {patient}")
    if any(i.read_note for i in ordered):
        unit.notes.extend(_read_notes(ordered))
    odd = sorted(
        {
            i.patient_id
            for i in ordered
            if i.patient_id and remap.get(i.patient_id, i.patient_id) != patient
        }
    )
    if odd:
        unit.notes.append(
            f"header PatientID {', '.join(odd)} differs from the zip name's {patient} "
            "(after remap); the zip name is used"
        )
    return unit


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _evidence(u: _Unit, e: _Unit) -> str:
    """Supporting evidence that ``u`` is a copy of ``e``: counts of shared UIDs, names, hashes."""
    n = len(u.instances)
    shared = len(u.sops & e.sops)
    names_match = {i.member for i in u.instances} == {i.member for i in e.instances}
    e_hashes = Counter(i.pixel_hash for i in e.instances if i.pixel_hash)
    equal = 0
    for i in u.instances:
        if i.pixel_hash and e_hashes[i.pixel_hash] > 0:
            e_hashes[i.pixel_hash] -= 1
            equal += 1
    decoded = "; decoded pixels identical (compared after decoding)" if u.decoded else ""
    return (
        f"SOP Instance UIDs shared {shared} of {n}; folder/file names match: "
        f"{_yes(names_match)}; pixel hashes equal {equal} of {n}{decoded}; "
        f"HIRO id {u.hiro} vs {e.hiro}; batch {u.zip.batch.name} vs {e.zip.batch.name}"
    )


def _find_duplicates(units: Sequence[_Unit]) -> dict[str, tuple[_Unit, _Unit, str]]:
    """rel of each duplicate -> (kept root, matched zip, reason). ``units`` in zip order."""
    by_slot: dict[tuple[str, dt.datetime], list[_Unit]] = defaultdict(list)
    for u in units:
        by_slot[(u.patient, u.time)].append(u)
    dup: dict[str, tuple[_Unit, _Unit, str]] = {}
    for slot in by_slot.values():
        if len(slot) < 2:
            continue
        earlier: list[_Unit] = []
        for u in slot:
            for e in earlier:
                reason = ""
                if (
                    u.zip.name.pediatric
                    and e.zip.name.pediatric
                    and u.decoded == e.decoded
                    and u.pixsig == e.pixsig
                ):
                    reason = REASON_PEDIATRIC if u.pixsig else ""
                if not reason and u.sops and u.sops == e.sops:
                    reason = REASON_CROSS_BATCH
                if reason:
                    root = dup[e.rel][0] if e.rel in dup else e
                    dup[u.rel] = (root, e, reason)
                    break
            earlier.append(u)
    return dup


def _chains(kept: Sequence[_Unit], window: dt.timedelta) -> list[list[_Unit]]:
    """Exams as lists of units, primary first: CXR zips alone, CT zips chained."""
    exams: list[list[_Unit]] = []
    ct: dict[tuple[str, str], list[_Unit]] = defaultdict(list)
    for u in kept:
        if u.zip.batch.modality is Modality.CT:
            ct[(u.patient, u.hiro)].append(u)
        else:
            exams.append([u])
    for members in ct.values():
        members.sort(key=lambda u: (u.time, u.order))
        chain = [members[0]]
        for prev, cur in pairwise(members):
            gap = cur.time - prev.time
            if gap <= window:
                minutes = gap.total_seconds() / 60
                cur.notes.append(
                    f"{minutes:g} min after {prev.rel}; same patient and HIRO id {cur.hiro}; "
                    f"primary {chain[0].rel}"
                )
                chain.append(cur)
            else:
                exams.append(chain)
                chain = [cur]
        exams.append(chain)
    return exams


def _stamp(t: dt.datetime) -> str:
    """``t`` as ``yyyymmdd-hhmmss`` (``strftime("%Y%m%d-%H%M%S")``, spelled out for the
    years of four digits: strftime costs a few microseconds a call)."""
    if t.year < 1000:
        return f"{t:%Y%m%d-%H%M%S}"
    return f"{t.year}{t.month:02d}{t.day:02d}-{t.hour:02d}{t.minute:02d}{t.second:02d}"


def _assign_keys(chains: list[list[_Unit]]) -> list[str]:
    """``{patient}_{yyyymmdd-hhmmss}_{hiro}`` of the primary zip, ``-2``, ``-3``... on a clash
    (in zip order of the primaries). Returns the keys in the order of ``chains``."""
    base = [f"{c[0].patient}_{_stamp(c[0].time)}_{c[0].hiro}" for c in chains]
    # (base, zip order, index): no two chains share a primary, so the index never decides
    order = sorted(zip(base, [c[0].order for c in chains], range(len(chains)), strict=True))
    used: set[str] = set()
    keys = [""] * len(chains)
    for _, _, k in order:
        key, n = base[k], 1
        while key in used:
            n += 1
            key = f"{base[k]}-{n}"
        used.add(key)
        keys[k] = key
    for chain, key in zip(chains, keys, strict=True):
        for u in chain:
            u.exam_key = key
    return keys


def _keep_once(units_in_order: Sequence[_Unit], exam_of: Mapping[str, str]) -> None:
    """Give each SOP Instance UID to the first zip that holds it (``units_in_order``: exams
    in zip order of their primaries, each exam's zips primary first); note repeats and
    partial overlaps on the units."""
    owner: dict[str, _Unit] = {}
    for u in units_in_order:
        kept: list[Instance] = []
        repeats = 0
        shared: dict[str, int] = {}  # rel -> how many (a dict: a Counter costs 1 us a zip)
        owners: dict[str, _Unit] = {}
        for inst, key in zip(u.instances, u.sop_keys, strict=True):
            o = owner.get(key)
            if o is None:
                owner[key] = u
                kept.append(inst)
            elif o is u:
                repeats += 1
            else:
                shared[o.rel] = shared.get(o.rel, 0) + 1
                owners[o.rel] = o
        u.kept = tuple(kept)
        n = len(u.instances)
        if repeats:
            u.notes.append(f"{repeats} member(s) repeat a SOP Instance UID of this zip: kept once")
        for rel in sorted(shared):
            o = owners[rel]
            if exam_of[o.rel] == exam_of[u.rel]:
                u.notes.append(
                    f"{shared[rel]} of {n} SOP Instance UIDs already in this exam from {rel}"
                )
            else:
                u.overlaps.append(rel)
                u.notes.append(
                    f"partial overlap: {shared[rel]} of {n} SOP Instance UIDs already kept in "
                    f"{rel} (exam {exam_of[o.rel]}); {len(kept)} new instance(s) kept"
                )
