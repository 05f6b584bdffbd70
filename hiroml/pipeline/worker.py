"""Worker-side conversion: one task's exams into shard file(s) and :class:`SampleRecord`\\ s.

:func:`run_task` runs in a worker process (local pool or Dask, :mod:`hiroml.pipeline.executor`); it
imports nothing of the driver.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hiroml._version import __version__
from hiroml.config import IndexConfig
from hiroml.errors import internal_trace
from hiroml.pipeline import faults
from hiroml.pipeline.scratch import ScratchReader, scratch_dir
from hiroml.pipeline.tasks import TaskResult, TaskSpec, save_task_record
from hiroml.records import CtVolume, CxrImage, Exam, Instance, Problem, SampleRecord
from hiroml.vocab import Modality, View

log = logging.getLogger(__name__)

#: free bytes on the output's device under which a dead worker is taken for a full disk
FULL_DISK = 64 << 20


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
        "decode_reduction": img.decode_reduction,
        "lut": img.lut,
        "inverted": img.inverted,
        "scale": img.scale,
        "frame": img.frame,
        "n_frames": img.n_frames,
        "for_processing": img.for_processing,
        "padding": img.padding,
        "exam_time": exam.time.isoformat(),
        "description": exam.description,
        "source_zip": img.rel_zip,
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


class ExamReader:
    """Serves member bytes of one exam's zips, each zip opened once and in memory."""

    def __init__(self, root: str, limits: IndexConfig) -> None:
        self.root = root
        self.limits = limits
        self._open: dict[str, Any] = {}
        self.bytes_read = 0

    def __call__(self, inst: Instance) -> bytes:
        from hiroml.ingest.zipio import SafeZip

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


def _exam_error(exam: Exam, err: BaseException | str) -> list[tuple[str, Problem]]:
    """One problem per zip of ``exam``: the exception it raised, or ``err``'s text."""
    if isinstance(err, str):
        reason, trace = f"exam {exam.exam_key}: {err}", ""
    else:
        reason, trace = f"exam {exam.exam_key}: {type(err).__name__}: {err}", internal_trace(err)
    out = []
    for rel in exam.zips:
        batch, _, name = rel.partition("/")
        out.append(
            (
                exam.exam_key,
                Problem(
                    zip=name,
                    batch=batch,
                    member="",
                    stage=str(exam.modality),
                    reason=reason,
                    internal=trace,
                ),
            )
        )
    return out


def run_task(spec: TaskSpec) -> TaskResult:
    """Convert the exams of one task into shard file(s). Never raises for one bad exam: its
    error becomes a problem naming the exam, and the other exams go on."""
    import cv2

    from hiroml.store.shards import ShardWriter

    # One thread per task: parallelism comes from the tasks (cv2 would otherwise spread each
    # resize over every core and fight the other workers).
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    samples: list[SampleRecord] = []
    problems: list[tuple[str, Problem]] = []
    shard_dir = Path(spec.out_dir) / spec.shard_dir
    reader = ExamReader(spec.root, spec.limits)
    store = ScratchReader(scratch_dir(spec.out_dir), spec.root, spec.cxr)
    bytes_read = 0
    pending: list[tuple[dict[str, Any], str]] = []  # a sample's record fields, its data_hash
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
            faults.exam(exam.exam_key)
            try:
                made = _convert_exam(exam, reader, spec, store)
            except Exception as e:  # one exam never stops the task
                log.warning("exam %s failed: %s", exam.exam_key, e)
                problems.extend(_exam_error(exam, e))
                continue
            finally:
                bytes_read += reader.bytes_read
                reader.bytes_read = 0
                reader.close()
            converted, probs = made
            problems.extend((exam.exam_key, p) for p in probs)
            for c in converted:
                faults.write("shards")
                data_hash = writer.add(c.fields["sample_key"], c.array, c.meta)
                pending.append((c.fields, data_hash))
    shard_of = {k: info for info in writer.shards for k in info.keys}
    for fields, data_hash in pending:
        info = shard_of[fields["sample_key"]]
        shard = f"{spec.shard_dir}/{info.name}"
        samples.append(
            SampleRecord(**fields, data_hash=data_hash, shard=shard, shard_sha256=info.sha256)
        )
    result = TaskResult(
        task_id=spec.task_id,
        samples=tuple(samples),
        problems=tuple(problems),
        shards=tuple(f"{spec.shard_dir}/{info.name}" for info in writer.shards),
        seconds=time.perf_counter() - t0,
        bytes_read=bytes_read,
    )
    save_task_record(spec.out_dir, result)
    return result


def split_task(spec: TaskSpec) -> list[TaskSpec]:
    """``spec`` cut into tasks of one exam each (``<task_id>-e<i>``), run alone after a worker
    process died on it."""
    return [
        dataclasses.replace(spec, task_id=f"{spec.task_id}-e{i:03d}", exams=(exam,))
        for i, exam in enumerate(spec.exams)
    ]


def died_task(spec: TaskSpec, reason: str) -> TaskResult:
    """The result of a one-exam task whose process died: an error row per zip of the exam,
    ``reason`` saying how the process ended. With less than :data:`FULL_DISK` bytes free on
    the output's device the death is taken for a full disk (libhdf5 may crash on one):
    ``OSError(ENOSPC)``, which stops the build."""
    free = shutil.disk_usage(spec.out_dir).free
    if free < FULL_DISK:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({reason})", spec.out_dir)
    problems = tuple(p for exam in spec.exams for p in _exam_error(exam, reason))
    return TaskResult(spec.task_id, (), problems, (), 0.0, 0)


def join_tasks(spec: TaskSpec, parts: list[TaskResult]) -> TaskResult:
    """The result of ``spec`` made of the results of its one-exam pieces (:func:`split_task`),
    saved as ``spec``'s task record."""
    result = TaskResult(
        task_id=spec.task_id,
        samples=tuple(s for r in parts for s in r.samples),
        problems=tuple(p for r in parts for p in r.problems),
        shards=tuple(s for r in parts for s in r.shards),
        seconds=sum(r.seconds for r in parts),
        bytes_read=sum(r.bytes_read for r in parts),
    )
    save_task_record(spec.out_dir, result)
    return result


@dataclass(frozen=True, slots=True)
class _Converted:
    """A converted sample before it is stored: its array, its shard metadata and the fields of
    its :class:`SampleRecord` but ``shard``, ``shard_sha256`` and ``data_hash``, which the
    shard writer gives (the record is made once, with all of them)."""

    array: np.ndarray
    meta: dict[str, Any]
    fields: dict[str, Any]


def _converted(
    key: str, exam: Exam, modality: str, array: np.ndarray, meta: dict[str, Any], **fields: Any
) -> _Converted:
    """A converted sample: its key, array, shard metadata and the other SampleRecord fields."""
    fields.update(
        sample_key=key,
        exam_key=exam.exam_key,
        modality=modality,
        shape=tuple(int(s) for s in array.shape),
    )
    return _Converted(array, meta, fields)


def _cxr_key(exam: Exam, img: CxrImage) -> str:
    """``{exam_key}:{sop_uid}``, and ``:f{frame}`` (0-based) for a frame of a multi-frame
    radiograph."""
    key = f"{exam.exam_key}:{img.sop_uid}"
    return f"{key}:f{img.frame}" if img.n_frames > 1 else key


def _convert_exam(
    exam: Exam, read: Callable[[Instance], bytes], spec: TaskSpec, store: ScratchReader
) -> tuple[list[_Converted], list[Problem]]:
    hashes = {i.sop_uid: i.pixel_hash for i in exam.instances}
    if exam.modality is Modality.CXR:
        from hiroml.cxr import convert as cxr_convert
        from hiroml.exams import neardup

        images, probs = cxr_convert.convert_exam(exam, read, spec.cxr, prepared=store.take)
        return [
            _converted(
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
                signature=neardup.signature(img.array).tobytes(),
                frame=img.frame,
                for_processing=img.for_processing,
                decoder=img.decoder,
            )
            for img in images
        ], probs
    from hiroml.ct import convert as ct_convert

    volumes, probs = ct_convert.convert_exam(exam, read, spec.ct)
    return [
        _converted(
            f"{exam.exam_key}:{vol.series_uid}",
            exam,
            "ct",
            vol.array,
            _ct_meta(vol, exam),
            series_uid=vol.series_uid,
            sop_uid="",
            sop_uids=tuple(vol.sop_uids),
            pixel_hashes=tuple(hashes.get(s, "") for s in vol.sop_uids),
            view=View.UNKNOWN,
            size_xyz=tuple(vol.size_xyz),
            spacing_xyz=tuple(vol.spacing_xyz),
            origin_xyz=tuple(vol.origin_xyz),
            direction=tuple(vol.direction),
            ct_decisions=tuple(vol.decisions),
            stitched_series=tuple(vol.stitched_series),
            seams_mm=tuple(vol.seams_mm),
            seam_slices=tuple(vol.seam_slices),
            decoder=vol.decoder,
        )
        for vol in volumes
    ], probs


# --------------------------------------------------------------------------- helpers
