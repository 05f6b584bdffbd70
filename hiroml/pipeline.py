"""Wires the stages: discover -> index -> identity -> exams -> convert -> shards -> splits ->
manifest + report.

The unit of parallel work is a :class:`TaskSpec`: a group of exams of one modality from one
batch, converted into one shard file (more if it rolls over). Tasks run on a local process
pool or on a Dask cluster (:mod:`hiroml.executor`). Each finished task leaves a small JSON
record next to its shards; a re-run whose task has the same id (same exams, same instances,
same conversion config) reuses it, so a weekly re-run converts only new exams and a re-run
after a crash finishes the work without redoing completed shards. The manifest is written
last, by the driver, once every task is done.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hiroml import __version__, faults
from hiroml.card import settings_of
from hiroml.config import BuildConfig, CtConfig, CxrConfig, IndexConfig, ShardsConfig
from hiroml.errors import HiromlError
from hiroml.linking import NEAR_DUPLICATE, GroupLink, LinkResult
from hiroml.records import (
    Action,
    AuditRow,
    CtVolume,
    CxrImage,
    Exam,
    Instance,
    Modality,
    Problem,
)

if TYPE_CHECKING:
    from hiroml.datamart import Discovery
    from hiroml.versions import Published

log = logging.getLogger(__name__)

# Bump when the conversion code changes what it stores: every task is then redone.
CONVERTER_VERSION = "3"
STATE_DIR = ".hiroml"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class SampleRow:
    """What a task tells the driver about one stored sample (the shard-side half of a
    manifest row; the driver adds patient, group and split)."""

    sample_key: str
    exam_key: str
    modality: str
    shard: str  # relative to the output folder
    shard_sha256: str
    data_hash: str
    shape: tuple[int, ...]
    series_uid: str
    sop_uid: str  # radiographs; "" for CT
    sop_uids: tuple[str, ...]
    pixel_hashes: tuple[str, ...]
    view: str
    size_xyz: tuple[int, ...] | None = None
    spacing_xyz: tuple[float, ...] | None = None
    origin_xyz: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    scale: float = 1.0  # stored value * scale -> [0, 1] (radiographs); 1.0 for CT (HU)
    notes: tuple[str, ...] = ()  # CT: the geometry decisions (tilt resampled, gap filled...)
    signature: tuple[int, ...] = ()  # radiographs: hiroml.neardup.signature (uint8 values)
    stitched_series: tuple[str, ...] = ()  # CT: series a stitched scan was joined from
    seams_mm: tuple[float, ...] = ()  # CT: seam positions along the slice normal, mm
    seam_slices: tuple[int, ...] = ()  # CT: seam slice indices (z) in the volume
    frame: int | None = None  # radiographs: 0-based frame (0 for single-frame); None for CT
    for_processing: bool = False  # radiographs kept by cxr.keep_for_processing=true


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


@dataclass(frozen=True, slots=True)
class TaskResult:
    task_id: str
    samples: tuple[SampleRow, ...]
    problems: tuple[tuple[str, Problem], ...]  # (exam_key, problem)
    shards: tuple[str, ...]
    seconds: float
    bytes_read: int
    reused: bool = False


# --------------------------------------------------------------------------- tasks


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
    return [
        exam.exam_key,
        exam.patient_id,
        exam.source_patient_id,
        exam.description,
        exam.time.isoformat(),
        sorted(
            (i.rel_zip, i.member, i.sop_uid, i.pixel_hash, i.member_size) for i in exam.instances
        ),
    ]


def plan_tasks(
    exams: Sequence[Exam], cfg: BuildConfig, *, root: str, out_dir: str
) -> list[TaskSpec]:
    """Group exams into tasks: per modality and primary batch, ``exams_per_task`` at a time
    in exam-key order, so that a new weekly batch makes new tasks and leaves old ones be."""
    specs: list[TaskSpec] = []
    by_key: dict[tuple[Modality, str], list[Exam]] = {}
    for e in sorted(exams, key=lambda e: e.exam_key):
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
        for i in range(0, len(group), per):
            chunk = tuple(group[i : i + per])
            fp = json.dumps([chash, [_exam_fingerprint(e) for e in chunk]], sort_keys=True)
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
                )
            )
    return specs


def _record_path(out_dir: str, task_id: str) -> Path:
    return Path(out_dir) / STATE_DIR / "tasks" / f"{task_id}.json"


def load_task_record(spec: TaskSpec) -> TaskResult | None:
    """The record of a task finished by an earlier run, if it and its shards are whole."""
    path = _record_path(spec.out_dir, spec.task_id)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        result = _result_from_json(data)
    except (KeyError, TypeError, ValueError):
        log.warning("task record %s is unreadable: the task is redone", path)
        return None
    if not all((Path(spec.out_dir) / s).is_file() for s in result.shards):
        return None
    return dataclasses.replace(result, reused=True)


def _save_task_record(out_dir: str, result: TaskResult) -> None:
    path = _record_path(out_dir, result.task_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_result_to_json(result)))
    os.replace(tmp, path)


def _result_to_json(r: TaskResult) -> dict[str, Any]:
    return {
        "task_id": r.task_id,
        "samples": [dataclasses.asdict(s) for s in r.samples],
        "problems": [[k, dataclasses.asdict(p)] for k, p in r.problems],
        "shards": list(r.shards),
        "seconds": r.seconds,
        "bytes_read": r.bytes_read,
    }


def _tuple_or_none(v: Any) -> tuple[Any, ...] | None:
    return None if v is None else tuple(v)


def _result_from_json(d: dict[str, Any]) -> TaskResult:
    samples = []
    for s in d["samples"]:
        for k in ("shape", "sop_uids", "pixel_hashes", "notes"):
            s[k] = tuple(s[k])
        s["signature"] = tuple(s.get("signature") or ())  # absent from older task records
        for k in ("stitched_series", "seams_mm", "seam_slices"):
            s[k] = tuple(s.get(k, ()))
        for k in ("size_xyz", "spacing_xyz", "origin_xyz", "direction"):
            s[k] = _tuple_or_none(s[k])
        samples.append(SampleRow(**s))
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


# --------------------------------------------------------------------------- one task


def _cxr_meta(img: CxrImage, exam: Exam) -> dict[str, Any]:
    return {
        "exam_key": exam.exam_key,
        "patient_id": exam.patient_id,
        "modality": "cxr",
        "sop_uid": img.sop_uid,
        "series_uid": img.series_uid,
        "view": str(img.view),
        "view_source": img.view_source,
        "original_shape": list(img.original_shape),
        "pixel_spacing": list(img.pixel_spacing) if img.pixel_spacing else None,
        "spacing_after": list(img.spacing_after) if img.spacing_after else None,
        "photometric": img.photometric,
        "bits_stored": img.bits_stored,
        "transfer_syntax": img.transfer_syntax,
        "decoder": img.decoder,
        "lut": img.lut,
        "inverted": img.inverted,
        "scale": img.scale,
        "frame": img.frame,
        "n_frames": img.n_frames,
        "for_processing": img.for_processing,
        "padding": img.padding,
        "exam_time": exam.time.isoformat(),
        "description": exam.description,
        "source_zip": img.zip,
        "member": img.member,
    }


def _ct_meta(vol: CtVolume, exam: Exam) -> dict[str, Any]:
    return {
        "exam_key": exam.exam_key,
        "patient_id": exam.patient_id,
        "modality": "ct",
        "series_uid": vol.series_uid,
        "series_description": vol.series_description,
        "kernel": vol.kernel,
        "size_xyz": list(vol.size_xyz),
        "spacing_xyz": list(vol.spacing_xyz),
        "origin_xyz": list(vol.origin_xyz),
        "direction": list(vol.direction),
        "slice_thickness": vol.slice_thickness,
        "resampled": vol.resampled,
        "decisions": list(vol.decisions),
        "decoder": vol.decoder,
        "n_source_slices": len(vol.sop_uids),
        "source_zips": list(vol.zips),
        "stitched_series": list(vol.stitched_series),
        "seams_mm": list(vol.seams_mm),
        "seam_slices": list(vol.seam_slices),
        "exam_time": exam.time.isoformat(),
        "description": exam.description,
    }


class _ExamReader:
    """Serves member bytes of one exam's zips, each zip opened once and in memory."""

    def __init__(self, root: str, limits: IndexConfig) -> None:
        self.root = root
        self.limits = limits
        self._open: dict[str, Any] = {}
        self.bytes_read = 0

    def __call__(self, inst: Instance) -> bytes:
        from hiroml.zipio import SafeZip

        z = self._open.get(inst.rel_zip)
        if z is None:
            z = SafeZip(os.path.join(self.root, inst.rel_zip), self.limits)
            self.bytes_read += z.compressed_size
            self._open[inst.rel_zip] = z
        data: bytes = z.read(inst.member)
        return data

    def close(self) -> None:
        for z in self._open.values():
            z.close()
        self._open.clear()


def _exam_error(exam: Exam, err: BaseException) -> list[tuple[str, Problem]]:
    reason = f"exam {exam.exam_key}: {type(err).__name__}: {err}"
    out = []
    for rel in exam.zips:
        batch, _, name = rel.partition("/")
        out.append(
            (
                exam.exam_key,
                Problem(zip=name, batch=batch, member="", stage=str(exam.modality), reason=reason),
            )
        )
    return out


def run_task(spec: TaskSpec) -> TaskResult:
    """Convert the exams of one task into shard file(s). Never raises for one bad exam: its
    error becomes a problem naming the exam, and the other exams go on."""
    import cv2

    from hiroml.shards import ShardWriter

    # One thread per task: parallelism comes from the tasks (cv2 would otherwise spread each
    # resize over every core and fight the other workers).
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    samples: list[SampleRow] = []
    problems: list[tuple[str, Problem]] = []
    shard_dir = Path(spec.out_dir) / "shards"
    reader = _ExamReader(spec.root, spec.limits)
    bytes_read = 0
    pending: list[dict[str, Any]] = []
    with ShardWriter(
        shard_dir,
        spec.task_id,
        modality=str(spec.modality),
        max_samples=spec.shards.max_samples,
        max_bytes=spec.shards.max_bytes,
        compression=spec.shards.compression,
        ct_chunks=spec.shards.ct_chunks,
        attrs={
            "hiroml_version": __version__,
            "config_hash": spec.config_hash,
            "task_id": spec.task_id,
            "modality": str(spec.modality),
        },
    ) as writer:
        for exam in spec.exams:
            try:
                made = _convert_exam(exam, reader, spec)
            except Exception as e:  # one exam never stops the task
                log.warning("exam %s failed: %s", exam.exam_key, e)
                problems.extend(_exam_error(exam, e))
                continue
            finally:
                bytes_read += reader.bytes_read
                reader.bytes_read = 0
                reader.close()
            rows, probs = made
            problems.extend((exam.exam_key, p) for p in probs)
            for key, array, meta, row in rows:
                pending.append({**row, "data_hash": writer.add(key, array, meta)})
    shard_of = {k: info for info in writer.shards for k in info.keys}
    for row in pending:
        info = shard_of[row["sample_key"]]
        samples.append(SampleRow(shard=f"shards/{info.name}", shard_sha256=info.sha256, **row))
    result = TaskResult(
        task_id=spec.task_id,
        samples=tuple(samples),
        problems=tuple(problems),
        shards=tuple(f"shards/{info.name}" for info in writer.shards),
        seconds=time.perf_counter() - t0,
        bytes_read=bytes_read,
    )
    _save_task_record(spec.out_dir, result)
    return result


_Row = tuple[str, np.ndarray, dict[str, Any], dict[str, Any]]


def _row(
    key: str, exam: Exam, modality: str, array: np.ndarray, meta: dict[str, Any], **fields: Any
) -> _Row:
    """A converted sample: its key, array, shard metadata and the SampleRow fields."""
    common = {
        "sample_key": key,
        "exam_key": exam.exam_key,
        "modality": modality,
        "shape": tuple(int(s) for s in array.shape),
    }
    return key, array, meta, {**common, **fields}


def _cxr_key(exam: Exam, img: CxrImage) -> str:
    """``{exam_key}:{sop_uid}``, and ``:f{frame}`` (0-based) for a frame of a multi-frame
    radiograph."""
    key = f"{exam.exam_key}:{img.sop_uid}"
    return f"{key}:f{img.frame}" if img.n_frames > 1 else key


def _convert_exam(
    exam: Exam, read: Callable[[Instance], bytes], spec: TaskSpec
) -> tuple[list[_Row], list[Problem]]:
    hashes = {i.sop_uid: i.pixel_hash for i in exam.instances}
    if exam.modality is Modality.CXR:
        from hiroml import cxr, neardup

        images, probs = cxr.convert_exam(exam, read, spec.cxr)
        return [
            _row(
                _cxr_key(exam, img),
                exam,
                "cxr",
                img.array,
                _cxr_meta(img, exam),
                series_uid=img.series_uid,
                sop_uid=img.sop_uid,
                sop_uids=(img.sop_uid,),
                pixel_hashes=(hashes.get(img.sop_uid, ""),),
                view=str(img.view),
                scale=float(img.scale),
                signature=tuple(int(v) for v in neardup.signature(img.array)),
                frame=img.frame,
                for_processing=img.for_processing,
            )
            for img in images
        ], probs
    from hiroml import ct

    volumes, probs = ct.convert_exam(exam, read, spec.ct)
    return [
        _row(
            f"{exam.exam_key}:{vol.series_uid}",
            exam,
            "ct",
            vol.array,
            _ct_meta(vol, exam),
            series_uid=vol.series_uid,
            sop_uid="",
            sop_uids=tuple(vol.sop_uids),
            pixel_hashes=tuple(hashes.get(s, "") for s in vol.sop_uids),
            view="unknown",
            size_xyz=tuple(vol.size_xyz),
            spacing_xyz=tuple(vol.spacing_xyz),
            origin_xyz=tuple(vol.origin_xyz),
            direction=tuple(vol.direction),
            notes=tuple(vol.decisions),
            stitched_series=tuple(vol.stitched_series),
            seams_mm=tuple(vol.seams_mm),
            seam_slices=tuple(vol.seam_slices),
        )
        for vol in volumes
    ], probs


# --------------------------------------------------------------------------- helpers


def age_years(age: str) -> float | None:
    """(0010,1010) Patient's Age (``057Y``, ``006M``, ``002W``, ``010D``) in years."""
    age = age.strip().upper()
    if len(age) < 2 or not age[:-1].isdigit():
        return None
    n = int(age[:-1])
    per_year = {"Y": 1.0, "M": 12.0, "W": 365.25 / 7, "D": 365.25}.get(age[-1])
    return None if per_year is None else round(n / per_year, 4)


def problem_to_audit(p: Problem, *, exam_key: str = "") -> AuditRow:
    return AuditRow(
        zip=p.zip,
        batch=p.batch,
        action=p.action,
        reason=p.reason,
        exam_key=exam_key,
        member=p.member,
        kept_as=p.kept_as,
        detail=f"stage {p.stage}; {p.detail}" if p.detail else f"stage {p.stage}",
    )


@dataclass
class BuildSummary:
    """What a build did, for the closing summary and the report."""

    datamart: str = ""
    output: str = ""
    started: str = ""
    seconds: float = 0.0
    batches_read: int = 0
    batches_skipped: int = 0
    zips: int = 0
    zips_indexed_now: int = 0
    instances: int = 0
    exams: int = 0
    duplicates: int = 0
    merged: int = 0
    tasks: int = 0
    tasks_reused: int = 0
    cxr_images: int = 0
    ct_volumes: int = 0
    errors: int = 0
    dropped: int = 0
    pixel_links: int = 0  # patient groups joined by identical decoded pixels
    near_duplicates: int = 0  # near-duplicate pairs across patient groups (linked or not)
    patients_per_split: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    config_hash: dict[str, str] = field(default_factory=dict)
    # What the shrink guard let through (hiroml.guard): empty when nothing was lost.
    shrink: dict[str, Any] = field(default_factory=dict)
    version: str = ""  # the latest version after this build
    published: bool = False  # False: the result equals the latest version, none published
    split_moves: int = 0
    versions_pruned: int = 0

    def lines(self) -> list[str]:
        split = ", ".join(f"{k} {v}" for k, v in self.patients_per_split.items()) or "none"
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in self.stage_seconds.items())
        return [
            f"hiroml {__version__}: built {self.output} from {self.datamart} "
            f"in {self.seconds:.1f} s",
            f"  batches read {self.batches_read}, skipped {self.batches_skipped}; "
            f"zips {self.zips} ({self.zips_indexed_now} indexed now); instances {self.instances}",
            f"  exams kept {self.exams}, duplicates {self.duplicates}, merged {self.merged}",
            f"  written: {self.cxr_images} radiographs, {self.ct_volumes} CT volumes "
            f"({self.tasks} tasks, {self.tasks_reused} reused from an earlier run)",
            f"  dropped {self.dropped}, errors {self.errors} (see audit.csv / report.html)",
            f"  patient groups joined by identical pixels {self.pixel_links}; near-duplicate "
            f"pairs across groups {self.near_duplicates}",
            f"  patients per split: {split}",
            f"  time per stage: {stages}",
            *self._shrink_lines(),
            *self._version_lines(),
        ]

    def _shrink_lines(self) -> list[str]:
        s = self.shrink
        if not s:
            return []
        gone = ", ".join(s.get("missing_batches", [])) or "none"
        return [
            f"  SHRINK published ({s.get('allowed_by')}): {s.get('unexplained_samples')} of "
            f"{s.get('previous_samples')} previous samples and {s.get('unexplained_patients')} "
            f"of {s.get('previous_patients')} patients removed without an explanation; "
            f"batch folders gone: {gone}"
        ]

    def _version_lines(self) -> list[str]:
        if not self.version:
            return []
        head = (
            f"  version {self.version} published"
            if self.published
            else f"  nothing changed since version {self.version}: no new version published"
        )
        tail = f"; {self.versions_pruned} old version(s) pruned" if self.versions_pruned else ""
        moves = (
            f"; {self.split_moves} patient(s) changed split (see the audit)"
            if self.split_moves
            else ""
        )
        return [head + moves + tail]


class BuildError(HiromlError):
    """The build could not complete (strict mode with errors, unusable datamart...)."""


_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _disk_full(err: OSError, out: Path, doing: str) -> BuildError | None:
    """A clear :class:`BuildError` when ``err`` is a full disk or an exceeded quota met while
    writing into ``out``; None for any other OS error."""
    text = str(err)
    if err.errno not in _DISK_FULL and "No space left on device" not in text:
        return None
    return BuildError(
        f"no space left on the device of {out} while {doing}: free some space (or set "
        "paths.output elsewhere) and run again; the previous output is left as it was, and "
        "the tasks already finished are reused"
    )


def _timed(summary: BuildSummary, stage: str, t0: float) -> float:
    now = time.perf_counter()
    summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + now - t0
    return now


def _jsonable_summary(summary: BuildSummary) -> dict[str, Any]:
    d = dataclasses.asdict(summary)
    d["stage_seconds"] = {k: round(v, 2) for k, v in summary.stage_seconds.items()}
    if not summary.shrink:  # the report shows a shrink only when one was published
        del d["shrink"]
    return d


def demo_datamart(cfg: BuildConfig) -> Path:
    """Generate (once) the synthetic demo datamart used when ``paths.datamart`` is null."""
    from hiroml import synth

    out = Path(cfg.paths.output)
    root = Path(cfg.paths.demo_dir or f"{out}-demo-datamart")
    stamp = root / "hiroml-synth-truth.json"
    if stamp.is_file():
        try:
            truth = json.loads(stamp.read_text())
            if truth.get("size") == cfg.demo_size and truth.get("seed") == cfg.seed:
                return root
        except ValueError:
            pass
        raise BuildError(
            f"{root} holds another synthetic datamart (or a damaged one): remove it, or set "
            "paths.demo_dir to another folder"
        )
    if root.exists() and any(root.iterdir()):
        raise BuildError(f"{root} exists and is not a hiroml demo datamart: set paths.demo_dir")
    log.info("generating the %s synthetic datamart in %s", cfg.demo_size, root)
    synth.generate(root, seed=cfg.seed, size=cfg.demo_size)
    return root


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the driver


def _previous_splits(out: Path) -> dict[str, str]:
    """patient id -> split in the latest version (so that no patient changes split)."""
    from hiroml.versions import VersionError, tables_dir

    try:
        path = tables_dir(out)[0] / "manifest.parquet"
    except (OSError, VersionError) as e:
        log.warning("could not list the versions of %s (%s): splits start afresh", out, e)
        return {}
    if not path.is_file():
        return {}
    try:
        old = pd.read_parquet(path, columns=["patient_id", "source_patient_id", "split"])
    except Exception as e:  # a damaged manifest must not stop a rebuild
        log.warning("could not read the previous manifest %s (%s): splits start afresh", path, e)
        return {}
    prev: dict[str, str] = {}
    for col in ("source_patient_id", "patient_id"):
        prev.update(zip(old[col].astype(str), old["split"].astype(str), strict=True))
    return prev


def _manifest_frame(
    results: Sequence[TaskResult],
    exams: Mapping[str, Exam],
    group_of: Mapping[str, str],
    split_of: Mapping[str, str],
    days: Mapping[str, int | None],
    orphans: set[str],
    labels: pd.DataFrame | None,
) -> pd.DataFrame:
    rows = []
    for r in results:
        for s in r.samples:
            e = exams[s.exam_key]
            first = e.instances[0] if e.instances else None
            group = group_of.get(e.patient_id, e.patient_id)
            rows.append(
                {
                    "sample_key": s.sample_key,
                    "shard": s.shard,
                    "modality": s.modality,
                    "patient_id": e.patient_id,
                    "source_patient_id": e.source_patient_id,
                    "patient_group": group,
                    "split": split_of[group],
                    "exam_key": e.exam_key,
                    "hiro_id": e.hiro_id,
                    "exam_time": pd.Timestamp(e.time),
                    "description": e.description,
                    "batch": e.batch,
                    "source_zips": [z.partition("/")[2] for z in e.zips],
                    "series_uid": s.series_uid,
                    "sop_uid": s.sop_uid,
                    "view": s.view,
                    "age_years": age_years(first.patient_age) if first else None,
                    "sex": first.sex if first else "",
                    "shape": list(s.shape),
                    "size_xyz": list(s.size_xyz) if s.size_xyz else None,
                    "spacing_xyz": list(s.spacing_xyz) if s.spacing_xyz else None,
                    "origin_xyz": list(s.origin_xyz) if s.origin_xyz else None,
                    "direction": list(s.direction) if s.direction else None,
                    "shard_sha256": s.shard_sha256,
                    "data_hash": s.data_hash,
                    "sop_uids": list(s.sop_uids),
                    "pixel_hashes": list(s.pixel_hashes),
                    "batches": sorted({z.partition("/")[0] for z in e.zips}),
                    "scale": s.scale,
                    "ct_decisions": list(s.notes),
                    "stitched_series": list(s.stitched_series),
                    "seams_mm": list(s.seams_mm),
                    "seam_slices": list(s.seam_slices),
                    "frame": s.frame,
                    "for_processing": s.for_processing,
                    "days_from_encounter": days.get(e.exam_key),
                    "orphan": e.patient_id in orphans,
                }
            )
    df = pd.DataFrame(rows)
    if df.empty:
        from hiroml.manifest import CT_COLUMNS, EXTRA_COLUMNS, MANIFEST_COLUMNS

        df = pd.DataFrame(columns=[*MANIFEST_COLUMNS, *CT_COLUMNS, *EXTRA_COLUMNS])
    elif labels is not None and not labels.empty:
        lab = labels.copy()
        lab.index = lab.index.astype(str)
        clash = [c for c in lab.columns if c in df.columns]
        lab = lab.rename(columns={c: f"label_{c}" for c in clash})
        df = df.join(lab, on="patient_id")
    return df.sort_values("sample_key", kind="stable").reset_index(drop=True)


def execute(specs: Sequence[TaskSpec], cfg: BuildConfig) -> list[TaskResult]:
    """Run the tasks not finished by an earlier run; results in the order of ``specs``."""
    from hiroml.executor import run_tasks

    done: dict[str, TaskResult] = {}
    todo: list[TaskSpec] = []
    for spec in specs:
        prev = load_task_record(spec)
        if prev is None:
            todo.append(spec)
        else:
            done[spec.task_id] = prev
    for result in run_tasks(todo, cfg.executor, progress=cfg.progress):
        done[result.task_id] = result
        faults.point("after_shards")
    return [done[s.task_id] for s in specs]


def _split_move_rows(
    out: Path, exams: Sequence[Exam], split_of: Mapping[str, str], members: Mapping[str, list[str]]
) -> list[AuditRow]:
    """One audit row (``kept``, reason ``split moved``) per patient whose split differs from
    the latest version's: its group was joined to patients of another split."""
    from hiroml import splits
    from hiroml.versions import SPLIT_MOVED

    remapped = {
        e.source_patient_id: e.patient_id for e in exams if e.source_patient_id != e.patient_id
    }
    rows = []
    for m in splits.split_moves(split_of, members, _previous_splits(out)):
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


def _publish(
    cfg: BuildConfig,
    out: Path,
    manifest: pd.DataFrame,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
    summary: BuildSummary,
    found: Discovery,
    results: Sequence[TaskResult],
    orphan_advice: str,
    *,
    links: Sequence[GroupLink] = (),
) -> Published:
    """Publish the build as a version (:func:`hiroml.versions.publish`): its folder with the
    report and ``build.json``, then the root tables, then pruning to ``versions.keep``."""
    from hiroml import versions

    def write_report(folder: Path, version: str, changes: str) -> None:
        shown = dataclasses.replace(summary, version=version, published=True)
        _write_report(
            out,
            manifest,
            patients,
            audit,
            shown,
            orphan_advice,
            folder=folder,
            changes=changes,
            links=links,
            settings=settings_of(cfg),
        )

    build_info = {
        "config": dataclasses.asdict(cfg),
        "inputs": {
            "batches": sorted(b.name for b in found.batches if b.status == "COMPLETE"),
            "batches_skipped": sorted(b.name for b in found.batches if b.status != "COMPLETE"),
            "zips": len(found.zips),
            "instances": summary.instances,
        },
        "timings": {k: round(v, 2) for k, v in summary.stage_seconds.items()},
        "summary": {
            k: v
            for k, v in _jsonable_summary(summary).items()
            if k not in ("version", "published", "versions_pruned")
        },
    }
    return versions.publish(
        out,
        manifest,
        patients,
        audit,
        write_report=write_report,
        build_info=build_info,
        keep=cfg.versions.keep,
        live_shards=set(manifest["shard"]) | {s for r in results for s in r.shards},
        live_tasks={r.task_id for r in results},
        task_dir=out / STATE_DIR / "tasks",
    )


def _decode_pediatric_candidates(
    root: Path,
    zips: Sequence[Any],
    instances: Sequence[Instance],
    remap: Mapping[str, str],
    limits: IndexConfig,
) -> dict[tuple[str, str], str]:
    """(zip rel path, member) -> decoded-pixel hash of the few instances that could make a
    pediatric duplicate in another transfer syntax (:func:`hiroml.exams.pediatric_candidates`).
    A member that cannot be decoded gets no hash (its zip is then compared on bytes)."""
    from hiroml import exams, linking

    wanted = exams.pediatric_candidates(zips, instances, remap)
    out: dict[tuple[str, str], str] = {}
    if not wanted:
        return out
    reader = _ExamReader(str(root), limits)
    try:
        for inst in wanted:
            try:
                out[(inst.rel_zip, inst.member)] = linking.decoded_pixel_hash(reader(inst))
            except Exception as e:  # undecodable: the conversion stage reports it
                log.info("pediatric check: %s/%s not decoded (%s)", inst.rel_zip, inst.member, e)
    finally:
        reader.close()
    log.info("pediatric check: %d candidate instance(s) decoded", len(out))
    return out


def _link_by_pixels(
    cfg: BuildConfig,
    results: Sequence[TaskResult],
    exams: Mapping[str, Exam],
    group_of: Mapping[str, str],
    out: Path,
) -> tuple[LinkResult, dict[str, tuple[int, ...]]]:
    """Join patient groups whose samples show the same image (:mod:`hiroml.linking`); also
    gives each sample's near-duplicate signature (empty for CT).

    A radiograph converted by an older hiroml (a reused task record without a signature)
    gets its signature from its shard here."""
    from hiroml import linking, neardup
    from hiroml.shards import read_sample

    samples = []
    for r in results:
        for s in r.samples:
            sig = s.signature
            if s.modality == "cxr" and not sig and cfg.splits.near_duplicate_threshold:
                arr, _ = read_sample(out / s.shard, s.sample_key)
                sig = tuple(int(v) for v in neardup.signature(arr))
            e = exams[s.exam_key]
            samples.append(
                linking.SampleIdentity(
                    sample_key=s.sample_key,
                    exam_key=s.exam_key,
                    patient_id=e.patient_id,
                    data_hash=s.data_hash,
                    signature=sig,
                )
            )
    patients = {e.patient_id: group_of.get(e.patient_id, e.patient_id) for e in exams.values()}
    linked = linking.link_groups(
        samples,
        {**patients, **group_of},
        near_threshold=cfg.splits.near_duplicate_threshold,
        link_near=cfg.splits.link_near_duplicates,
        max_patients=cfg.exams.pixel_link_max_patients,
    )
    return linked, {s.sample_key: s.signature for s in samples}


def _with_link_notes(audit: Sequence[AuditRow], linked: LinkResult) -> list[AuditRow]:
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


def _with_signatures(
    manifest: pd.DataFrame, signatures: Mapping[str, tuple[int, ...]], linked: LinkResult
) -> pd.DataFrame:
    """The manifest with ``signature`` (uint8 list, radiographs; null for CT) and
    ``near_duplicates`` (the other sample keys of its near-duplicate pairs across groups)."""
    near: dict[str, list[str]] = {}
    for k in linked.links:
        if k.kind == NEAR_DUPLICATE:
            near.setdefault(k.sample_key, []).append(k.other_key)
            near.setdefault(k.other_key, []).append(k.sample_key)
    m = manifest.copy()
    keys = m["sample_key"].astype(str).tolist()
    m["signature"] = [list(signatures[k]) if signatures.get(k) else None for k in keys]
    m["near_duplicates"] = [sorted(near.get(k, [])) for k in keys]
    return m


def _assign_splits(
    cfg: BuildConfig,
    exams: Sequence[Exam],
    group_of: Mapping[str, str],
    clinical: Any,
    out: Path,
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The split of every patient group, and each group's patient ids (current and source).

    Groups keep the split their patients had in the latest version; a group that joins
    patients of different splits takes the split nearest train (train > val > test, see
    :func:`hiroml.splits.inherited_splits`). Optional stratification by a clinical label and
    test sequestration."""
    from hiroml import splits

    groups = sorted({group_of.get(e.patient_id, e.patient_id) for e in exams})
    members: dict[str, list[str]] = {}
    for pid, g in group_of.items():
        members.setdefault(g, []).append(pid)
    for e in exams:
        members.setdefault(group_of.get(e.patient_id, e.patient_id), []).append(e.source_patient_id)
    prev_by_id = _previous_splits(out)
    previous = splits.inherited_splits(groups, members, prev_by_id)
    test_ids = splits.load_test_ids(cfg.splits.test_list) if cfg.splits.test_list else set()
    strata = None
    if cfg.splits.stratify:
        if clinical is None or cfg.splits.stratify not in clinical.labels.columns:
            raise BuildError(
                f"splits.stratify={cfg.splits.stratify!r} needs that column in the clinical "
                "table (paths.clinical)"
            )
        col = clinical.labels[cfg.splits.stratify].astype(str)
        strata = {group_of.get(pid, pid): col.get(pid, "") for pid in col.index.astype(str)}
    split_of = splits.assign_splits(
        groups,
        cfg.splits,
        strata=strata,
        group_members=members,
        test_ids=test_ids,
        previous=previous,
    )
    return split_of, members


def run(cfg: BuildConfig) -> BuildSummary:
    """Build (or bring up to date) the dataset described by ``cfg``.

    The datamart is listed first: a missing one, or one without any batch folder, raises
    :class:`~hiroml.errors.DatamartError` before anything is written. The build then holds
    the output's lock (:mod:`hiroml.lock`; :class:`~hiroml.errors.OutputLockedError` when
    another build holds it) until it ends. Raises :class:`BuildError` when the build cannot
    complete and :class:`~hiroml.errors.ShrinkRefusedError` when it would remove too much of
    the previous dataset (:mod:`hiroml.guard`); the previous output stays readable in every
    case, since the manifest is replaced last and atomically.
    """
    import cv2

    from hiroml import datamart
    from hiroml.lock import build_lock

    # The driver decodes a few members itself (the pediatric check) and then forks the
    # conversion workers: OpenCV's thread pool must not exist in it when it forks, or a child
    # inherits the pool's locks without its threads and hangs in cv2.setNumThreads.
    cv2.setNumThreads(1)
    t_start = time.perf_counter()
    started = _now()
    root = Path(cfg.paths.datamart) if cfg.paths.datamart else demo_datamart(cfg)
    t = time.perf_counter()
    found = datamart.discover(root)  # a missing or empty datamart stops here
    t_discover = time.perf_counter() - t
    out = Path(cfg.paths.output)
    out.mkdir(parents=True, exist_ok=True)
    with build_lock(out, wait=cfg.wait_for_lock):
        summary = BuildSummary(started=started)
        summary.stage_seconds["discover"] = t_discover
        return _build(cfg, root, out, found, summary, t_start)


def _build(
    cfg: BuildConfig,
    root: Path,
    out: Path,
    found: Discovery,
    summary: BuildSummary,
    t_start: float,
) -> BuildSummary:
    """The build itself, under the output's lock (see :func:`run`)."""
    from hiroml import exams, guard, identity, linking, splits
    from hiroml.index import build_index
    from hiroml.manifest import audit_frame, patients_frame

    summary.datamart, summary.output = str(root), str(out)
    t = time.perf_counter()
    summary.batches_read = sum(b.status == "COMPLETE" for b in found.batches)
    summary.batches_skipped = len(found.batches) - summary.batches_read
    summary.zips = len(found.zips)

    db = cfg.paths.index_db or str(out / STATE_DIR / "index.sqlite")
    indexed = build_index(
        root,
        found.zips,
        db_path=db,
        limits=cfg.index,
        workers=cfg.executor.n_workers if cfg.executor.kind == "local" else 1,
        progress=cfg.progress,
    )
    summary.zips_indexed_now = indexed.read
    summary.instances = len(indexed.instances)
    t = _timed(summary, "index", t)

    sheet = Path(cfg.paths.remap_sheet) if cfg.paths.remap_sheet else None
    remap, remap_problems = identity.load_remap(root, sheet, cfg.identity)
    clinical = (
        identity.read_clinical(Path(cfg.paths.clinical), cfg.identity)
        if cfg.paths.clinical
        else None
    )
    decoded = _decode_pediatric_candidates(root, found.zips, indexed.instances, remap, cfg.index)
    result = exams.build_exams(found.zips, indexed.instances, remap, cfg.exams, decoded=decoded)
    joined = identity.join_clinical(result.exams, clinical, cfg.identity)
    t = _timed(summary, "exams", t)

    audit: list[AuditRow] = [problem_to_audit(p) for p in found.problems]
    audit += [problem_to_audit(p) for p in indexed.problems]
    audit += [problem_to_audit(p) for p in remap_problems]
    # A zip the index could not read already has its precise error rows: the exams stage's
    # generic "no DICOM instance indexed" row would only repeat them.
    reported = {(p.batch, p.zip) for p in indexed.problems}
    audit += [
        r
        for r in result.audit
        if not (r.reason == exams.REASON_NO_INSTANCES and (r.batch, r.zip) in reported)
    ]
    audit += list(joined.audit)

    specs = plan_tasks(joined.exams, cfg, root=str(root), out_dir=str(out))
    summary.tasks = len(specs)
    try:
        results = execute(specs, cfg)
    except OSError as err:
        full = _disk_full(err, out, "writing shards")
        if full is None:
            raise
        raise full from err
    summary.tasks_reused = sum(r.reused for r in results)
    for r in results:
        audit += [problem_to_audit(p, exam_key=k) for k, p in r.problems]
    t = _timed(summary, "convert", t)

    exam_by_key = {e.exam_key: e for e in joined.exams}
    linked, signatures = _link_by_pixels(cfg, results, exam_by_key, result.group_of, out)
    group_of = linked.group_of
    audit = _with_link_notes(audit, linked)
    summary.pixel_links = sum(k.kind == linking.SAME_PIXELS for k in linked.links)
    summary.near_duplicates = sum(k.kind == linking.NEAR_DUPLICATE for k in linked.links)
    split_of, members = _assign_splits(cfg, joined.exams, group_of, clinical, out)
    moves = _split_move_rows(out, joined.exams, split_of, members)
    audit += moves
    summary.split_moves = len(moves)
    manifest = _manifest_frame(
        results,
        exam_by_key,
        group_of,
        split_of,
        joined.days,
        set(joined.orphans),
        clinical.labels if clinical is not None else None,
    )
    manifest = _with_signatures(manifest, signatures, linked)
    patients = patients_frame(manifest, members)
    by_group = linked.texts_by_group()
    patients["links"] = [by_group.get(str(g), []) for g in patients["patient_group"]]
    audit_df = audit_frame(audit)
    summary.cxr_images = int((manifest["modality"] == "cxr").sum()) if len(manifest) else 0
    summary.ct_volumes = int((manifest["modality"] == "ct").sum()) if len(manifest) else 0
    summary.errors = int((audit_df["action"] == "error").sum())
    summary.dropped = int((audit_df["action"] == "dropped").sum())
    summary.duplicates = int((audit_df["action"] == "duplicate").sum())
    summary.merged = int((audit_df["action"] == "merged").sum())
    summary.exams = len({s.exam_key for r in results for s in r.samples})
    summary.patients_per_split = {
        s: int((patients["split"] == s).sum()) for s in ("train", "val", "test")
    }
    summary.config_hash = {m.value: config_hash(m, cfg) for m in Modality}
    leaks = splits.find_leaks(manifest) if len(manifest) else []
    if leaks:  # never publish a leaking dataset
        raise BuildError("patient leakage across splits: " + "; ".join(leaks[:10]))
    if cfg.strict and summary.errors:
        first = audit_df[audit_df["action"] == "error"].head(5)
        raise BuildError(
            f"strict=true and {summary.errors} input error(s); the previous output is left as "
            "it was. First: "
            + " | ".join(f"{z}: {r}" for z, r in zip(first["zip"], first["reason"], strict=True))
        )
    t = _timed(summary, "manifest", t)

    summary.shrink = guard.check_shrink(out, manifest, audit_df, _batches_read(found), cfg)
    summary.seconds = time.perf_counter() - t_start
    try:
        published = _publish(
            cfg,
            out,
            manifest,
            patients,
            audit_df,
            summary,
            found,
            results,
            joined.orphan_advice,
            links=linked.links,
        )
    except OSError as err:
        full = _disk_full(err, out, "writing the report and manifest")
        if full is None:
            raise
        raise full from err
    summary.version = published.version.name
    summary.published = published.new
    summary.versions_pruned = len(published.pruned.versions)
    _timed(summary, "report", t)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _batches_read(found: Discovery) -> list[str]:
    """Names of the COMPLETE batch folders a discovery read."""
    return [b.name for b in found.batches if b.status == "COMPLETE"]


def _write_report(
    out: Path,
    manifest: pd.DataFrame,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
    summary: BuildSummary,
    orphan_advice: str,
    *,
    folder: Path | None = None,
    changes: str = "",
    links: Sequence[GroupLink] = (),
    settings: Mapping[str, Any] | None = None,
) -> None:
    """The report of a build, written into ``folder`` (default ``out``); thumbnails are
    read from the shards under ``out``."""
    from hiroml import report
    from hiroml.shards import read_sample

    shard_of = dict(zip(manifest["sample_key"], manifest["shard"], strict=True))

    def read_array(key: str) -> np.ndarray:
        arr, _ = read_sample(out / shard_of[key], key)
        return arr

    info = _jsonable_summary(summary)
    if orphan_advice:
        info["orphans"] = orphan_advice
    report.write_report(
        folder or out,
        changes=changes,
        manifest=manifest,
        patients=patients,
        audit=audit,
        summary=info,
        read_array=read_array,
        near_duplicates=report.near_duplicate_frame(links),
        settings=settings,
    )
