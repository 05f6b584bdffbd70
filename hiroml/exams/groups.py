"""Patient groups and splits: the pediatric-duplicate check, links by identical or nearly
identical pixels (:mod:`hiroml.exams.linking`), and the split of every group
(:mod:`hiroml.exams.splits`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hiroml.config import BuildConfig, IndexConfig
from hiroml.errors import BuildError
from hiroml.exams.linking import LinkResult
from hiroml.pipeline.tasks import TaskResult
from hiroml.pipeline.worker import ExamReader
from hiroml.records import Exam, Instance
from hiroml.store.reader import read_manifest
from hiroml.vocab import MANIFEST

log = logging.getLogger(__name__)


def previous_splits(out: Path) -> dict[str, str]:
    """patient id -> split in the latest version (so that no patient changes split)."""
    from hiroml.versions.listing import VersionError, tables_dir

    try:
        path = tables_dir(out)[0] / MANIFEST
    except (OSError, VersionError) as e:
        log.warning("could not list the versions of %s (%s): splits start afresh", out, e)
        return {}
    if not path.is_file():
        return {}
    try:
        old = read_manifest(path.parent, columns=["patient_id", "source_patient_id", "split"])
    except Exception as e:  # a damaged manifest must not stop a rebuild
        log.warning("could not read the previous manifest %s (%s): splits start afresh", path, e)
        return {}
    prev: dict[str, str] = {}
    for col in ("source_patient_id", "patient_id"):
        prev.update(zip(old[col].astype(str), old["split"].astype(str), strict=True))
    return prev


def decode_pediatric_candidates(
    root: Path,
    zips: Sequence[Any],
    instances: Sequence[Instance],
    remap: Mapping[str, str],
    limits: IndexConfig,
) -> dict[tuple[str, str], str]:
    """(zip rel path, member) -> decoded-pixel hash of the few instances that could make a
    pediatric duplicate in another transfer syntax
    (:func:`hiroml.exams.stage.pediatric_candidates`). A member that cannot be decoded gets no hash
    (its zip is then compared on bytes)."""
    from hiroml.exams import linking
    from hiroml.exams import stage as exams_stage

    wanted = exams_stage.pediatric_candidates(zips, instances, remap)
    out: dict[tuple[str, str], str] = {}
    if not wanted:
        return out
    reader = ExamReader(str(root), limits)
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


def link_by_pixels(
    cfg: BuildConfig,
    results: Sequence[TaskResult],
    exams: Mapping[str, Exam],
    group_of: Mapping[str, str],
    out: Path,
) -> tuple[LinkResult, dict[str, tuple[int, ...]]]:
    """Join patient groups whose samples show the same image (:mod:`hiroml.exams.linking`); also
    gives each sample's near-duplicate signature (empty for CT).

    A radiograph converted by an older hiroml (a reused task record without a signature)
    gets its signature from its shard here."""
    from hiroml.exams import linking, neardup, paircache
    from hiroml.store.shards import read_sample

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
        find_pairs=functools.partial(paircache.cached_pair_arrays, out),
    )
    return linked, {s.sample_key: s.signature for s in samples}


def assign_splits(
    cfg: BuildConfig,
    exams: Sequence[Exam],
    group_of: Mapping[str, str],
    clinical: Any,
    out: Path,
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The split of every patient group, and each group's patient ids (current and source).

    Groups keep the split their patients had in the latest version; a group that joins
    patients of different splits takes the split nearest train (train > val > test, see
    :func:`hiroml.exams.splits.inherited_splits`). Optional stratification by a clinical label and
    test sequestration."""
    from hiroml.exams import splits

    groups = sorted({group_of.get(e.patient_id, e.patient_id) for e in exams})
    members: dict[str, list[str]] = {}
    for pid, g in group_of.items():
        members.setdefault(g, []).append(pid)
    for e in exams:
        members.setdefault(group_of.get(e.patient_id, e.patient_id), []).append(e.source_patient_id)
    prev_by_id = previous_splits(out)
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
