"""Task planning and task records.

The unit of parallel work is a :class:`TaskSpec`: a group of exams of one modality from one
batch, converted into one shard file (more if it rolls over). Each finished task leaves a
small record next to its shards (``<out>/.hiroml/tasks/<task_id>.json``); a re-run whose
task has the same id (same exams, same instances, same conversion config) reuses it, so a
weekly re-run converts only new exams and a re-run after a crash finishes the work without
redoing completed shards.

A record is one line of JSON, then the bytes of its samples' near-duplicate signatures one
after another (:func:`read_record`); each sample's row holds its signature's length. Every
build reads back every task's record, and as hex text in the JSON the signatures would be
three quarters of the records' bytes (12 of 16 MB at 6,000 radiographs) and most of their
reading. A record of JSON alone, the signatures as hex text (an earlier release's), is read
as well.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from hiroml.config import BuildConfig, CtConfig, CxrConfig, IndexConfig, ShardsConfig
from hiroml.frozen import maker, share_texts
from hiroml.records import Exam, Problem, SampleRecord
from hiroml.store.atomic import write_atomic
from hiroml.vocab import HELD_SHARDS_DIR, SHARDS_DIR, STATE_DIR, Action, Modality

log = logging.getLogger(__name__)

# Bump when the conversion code changes what it stores: every task is then redone.
CONVERTER_VERSION = "4"


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything a worker needs to convert a group of exams into shards."""

    task_id: str
    modality: Modality
    root: str
    out_dir: str
    exams: tuple[Exam, ...]
    cxr: CxrConfig
    ct: CtConfig
    shards: ShardsConfig
    limits: IndexConfig
    config_hash: str
    # where its shards go, relative to out_dir: HELD_SHARDS_DIR with splits.sequester
    shard_dir: str = SHARDS_DIR


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What a finished task hands the driver (and what its record stores)."""

    task_id: str
    samples: tuple[SampleRecord, ...]
    problems: tuple[tuple[str, Problem], ...]  # (exam_key, problem)
    shards: tuple[str, ...]
    seconds: float
    bytes_read: int
    reused: bool = False


def config_hash(modality: Modality, cfg: BuildConfig) -> str:
    """Hash of everything that changes what a task of ``modality`` stores."""
    section: Any = cfg.cxr if modality is Modality.CXR else cfg.ct
    shards = dataclasses.asdict(cfg.shards)
    payload = json.dumps(
        [CONVERTER_VERSION, str(modality), dataclasses.asdict(section), shards],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _exam_fingerprint(exam: Exam) -> list[Any]:
    held = [(i.rel_zip, i.member, i.sop_uid, i.pixel_hash, i.member_size) for i in exam.instances]
    held.sort()  # in place: a radiograph's one instance costs no sorted copy
    return [
        exam.exam_key,
        exam.patient_id,
        exam.source_patient_id,
        exam.description,
        exam.time.isoformat(),
        held,
    ]


def plan_tasks(
    exams: Sequence[Exam], cfg: BuildConfig, *, root: str, out_dir: str
) -> list[TaskSpec]:
    """Group exams into tasks: per modality and primary batch, ``exams_per_task`` at a time
    in exam-key order, so that a new weekly batch makes new tasks and leaves old ones be."""
    specs: list[TaskSpec] = []
    by_key: dict[tuple[Modality, str], list[Exam]] = {}
    for e in sorted(exams, key=attrgetter("exam_key")):
        if (e.modality is Modality.CXR and not cfg.cxr.enabled) or (
            e.modality is Modality.CT and not cfg.ct.enabled
        ):
            continue
        by_key.setdefault((e.modality, e.batch), []).append(e)
    for (modality, _batch), group in sorted(by_key.items()):
        per = (
            cfg.executor.exams_per_task
            if modality is Modality.CXR
            else cfg.executor.ct_exams_per_task
        )
        chash = config_hash(modality, cfg)
        # held shards are another task's output: the folder joins the fingerprint
        shard_dir = HELD_SHARDS_DIR if cfg.splits.sequester else SHARDS_DIR
        where = [shard_dir] if cfg.splits.sequester else []
        for i in range(0, len(group), per):
            chunk = tuple(group[i : i + per])
            fp = json.dumps([chash, *where, [_exam_fingerprint(e) for e in chunk]], sort_keys=True)
            task_id = f"{modality}-{hashlib.sha1(fp.encode()).hexdigest()[:20]}"
            specs.append(
                TaskSpec(
                    task_id=task_id,
                    modality=modality,
                    root=root,
                    out_dir=out_dir,
                    exams=chunk,
                    cxr=cfg.cxr,
                    ct=cfg.ct,
                    shards=cfg.shards,
                    limits=cfg.index,
                    config_hash=chash,
                    shard_dir=shard_dir,
                )
            )
    return specs


def _record_path(out_dir: str, task_id: str) -> Path:
    return Path(out_dir) / STATE_DIR / "tasks" / f"{task_id}.json"


#: what ends a record's JSON, before its signatures' bytes
_TAIL = b"\n"


def read_record(path: Path) -> tuple[dict[str, Any], memoryview | None]:
    """A task record's JSON, and the bytes after it (its samples' signatures); None for
    those of a record of JSON alone. OSError, or ValueError when the JSON is not JSON."""
    raw = path.read_bytes()
    cut = raw.find(_TAIL)  # JSON text holds no raw newline: the first one ends it
    if cut < 0:
        return json.loads(raw), None
    return json.loads(raw[:cut]), memoryview(raw)[cut + 1 :]


def load_task_record(spec: TaskSpec) -> TaskResult | None:
    """The record of a task finished by an earlier run, if it and its shards are whole. A
    record of JSON alone (an earlier release's) is written again with its signatures' bytes
    after the JSON, once, so that later builds read it as fast as their own."""
    path = _record_path(spec.out_dir, spec.task_id)
    try:
        data, tail = read_record(path)
    except (OSError, ValueError):
        return None
    try:
        result = _result_from_json(data, tail)
    except (KeyError, TypeError, ValueError):
        log.warning("task record %s is unreadable: the task is redone", path)
        return None
    if not all((Path(spec.out_dir) / s).is_file() for s in result.shards):
        return None
    if tail is None:
        try:
            save_task_record(spec.out_dir, result)
        except OSError as e:  # it is read as it is next time
            log.info("task record %s not written again (%s)", path, e)
    return dataclasses.replace(result, reused=True)


def forget_task_record(out_dir: str, task_id: str) -> None:
    """Remove a task's record, so that the next build converts its exams again."""
    _record_path(out_dir, task_id).unlink(missing_ok=True)


def save_task_record(out_dir: str, result: TaskResult) -> None:
    path = _record_path(out_dir, result.task_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps(_result_to_json(result)).encode()
    data = b"".join([head, _TAIL, *(bytes(s.signature) for s in result.samples)])
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


#: field names of the records a task record stores (their values are scalars or flat tuples
#: of scalars, which ``json.dumps`` writes as lists: no ``dataclasses.asdict`` deep copy)
_SAMPLE_FIELDS = tuple(f.name for f in dataclasses.fields(SampleRecord))
_PROBLEM_FIELDS = tuple(f.name for f in dataclasses.fields(Problem))
#: sample fields stored as JSON lists that are tuples in the record: in every record, those
#: a record may lack (then empty), and tuples or None (CT geometry)
_TUPLES = ("shape", "sop_uids", "pixel_hashes", "ct_decisions")
_STITCH_TUPLES = ("stitched_series", "seams_mm", "seam_slices")
_GEOMETRY = ("size_xyz", "spacing_xyz", "origin_xyz", "direction")
#: their positions in a sample's row, and the signature's (its length; hex text in a record
#: of JSON alone)
_TUPLES_AT = tuple(_SAMPLE_FIELDS.index(n) for n in (*_TUPLES, *_STITCH_TUPLES))
_TUPLES_OR_NONE_AT = tuple(_SAMPLE_FIELDS.index(n) for n in _GEOMETRY)
_SIGNATURE_AT = _SAMPLE_FIELDS.index("signature")
#: the texts the samples of a task share (their shard and its checksum, the modality, view
#: and decoder): read back as one object per distinct value, not one per sample
_SHARED_AT = tuple(
    _SAMPLE_FIELDS.index(n) for n in ("modality", "shard", "shard_sha256", "view", "decoder")
)


def _flat(record: Any, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(record, n) for n in names}


def _result_to_json(r: TaskResult) -> dict[str, Any]:
    return {
        "task_id": r.task_id,
        "sample_fields": list(_SAMPLE_FIELDS),
        "sample_rows": [_sample_row(s) for s in r.samples],
        "problems": [[k, _flat(p, _PROBLEM_FIELDS)] for k, p in r.problems],
        "shards": list(r.shards),
        "seconds": r.seconds,
        "bytes_read": r.bytes_read,
    }


def _sample_row(s: SampleRecord) -> list[Any]:
    """A sample's record as one JSON list, its fields in the order of ``sample_fields``;
    in place of its signature, the signature's length (its bytes follow the record's JSON)."""
    row = [getattr(s, n) for n in _SAMPLE_FIELDS]
    row[_SIGNATURE_AT] = len(s.signature)
    return row


def _signature(v: Any) -> bytes:
    """A stored signature as its bytes: bytes (taken from the record's tail), hex text, a
    list of numbers, or none (empty). A number outside 0..255, or a length without the bytes
    it counts, raises ValueError (the record is then unreadable and its task redone)."""
    if v.__class__ is bytes:
        return v
    if isinstance(v, int):  # ``bytes(n)`` would be n zeros
        raise ValueError(f"a signature's length ({v}) without the record's bytes")
    return bytes.fromhex(v) if isinstance(v, str) else bytes(v or ())


def _take_signatures(rows: list[list[Any]], at: int, tail: memoryview) -> None:
    """Put in each row, at ``at`` (where it holds a length), that many next bytes of
    ``tail``. ValueError when a length is not a count or the tail holds more or fewer bytes
    than the rows' lengths add up to."""
    start = 0
    for row in rows:
        n = row[at]
        if n.__class__ is not int or n < 0:
            raise ValueError(f"a signature's length of {n!r}")
        row[at] = tail[start : start + n].tobytes()
        start += n
    if start != len(tail):
        raise ValueError(f"signatures of {start} bytes in all, {len(tail)} bytes stored")


def _tuple_or_none(v: Any) -> tuple[Any, ...] | None:
    return None if v is None else tuple(v)


#: ``SampleRecord(**fields)`` without the frozen ``__init__`` (a build reads back every
#: task's samples, each time it runs)
_make_sample = maker(SampleRecord)
_SAMPLE_FIELD_SET = frozenset(_SAMPLE_FIELDS)


def _sample_from_json(s: dict[str, Any]) -> SampleRecord:
    if "notes" in s:  # ct_decisions under its other name
        s["ct_decisions"] = s.pop("notes")
    for k in _TUPLES:
        s[k] = tuple(s[k])
    s["signature"] = _signature(s.get("signature"))
    for k in _STITCH_TUPLES:
        s[k] = tuple(s.get(k, ()))
    for k in _GEOMETRY:
        s[k] = _tuple_or_none(s[k])
    if s.keys() == _SAMPLE_FIELD_SET:
        return _make_sample(*[s[n] for n in _SAMPLE_FIELDS])
    return SampleRecord(**s)  # a field missing (then its default) or unknown


def _sample_from_row(row: list[Any], shared: dict[str, str]) -> SampleRecord:
    """A sample from a row of ``sample_fields`` in this release's order: its lists as
    tuples, its signature's hex as bytes, the texts of :data:`_SHARED_AT` taken from
    ``shared`` where an earlier sample had them (``shared`` maps each to itself)."""
    for k in _TUPLES_AT:
        row[k] = tuple(row[k])
    for k in _TUPLES_OR_NONE_AT:
        row[k] = _tuple_or_none(row[k])
    row[_SIGNATURE_AT] = _signature(row[_SIGNATURE_AT])
    share_texts(row, _SHARED_AT, shared)
    return _make_sample(*row)


def _samples_from_json(d: dict[str, Any], tail: memoryview | None) -> list[SampleRecord]:
    """The samples of a task record: rows of ``sample_fields`` (one JSON list per sample;
    their signatures in ``tail``, or as hex text where it is None), or ``samples``, one
    object per sample (the other form this module reads)."""
    if "sample_rows" not in d:
        if tail is not None:
            raise ValueError("bytes after a record of sample objects")
        return [_sample_from_json(s) for s in d["samples"]]
    fields = d["sample_fields"]
    if tail is not None:
        _take_signatures(d["sample_rows"], fields.index("signature"), tail)
    if fields == list(_SAMPLE_FIELDS):
        shared: dict[str, str] = {}
        return [_sample_from_row(row, shared) for row in d["sample_rows"]]
    return [_sample_from_json(dict(zip(fields, row, strict=True))) for row in d["sample_rows"]]


def _result_from_json(d: dict[str, Any], tail: memoryview | None = None) -> TaskResult:
    samples = _samples_from_json(d, tail)
    problems = []
    for key, p in d["problems"]:
        p["action"] = Action(p["action"])
        problems.append((key, Problem(**p)))
    return TaskResult(
        task_id=d["task_id"],
        samples=tuple(samples),
        problems=tuple(problems),
        shards=tuple(d["shards"]),
        seconds=float(d["seconds"]),
        bytes_read=int(d["bytes_read"]),
    )
