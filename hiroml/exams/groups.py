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
from hiroml.vocab import MANIFEST, SEQUESTERED_DIR, SplitStrategy, StratumKey

log = logging.getLogger(__name__)


def previous_splits(out: Path) -> dict[str, str]:
    """patient id -> split in the latest version (so that no patient changes split): of the
    output's own tables and, where the test split is sequestered, of the latest version of
    ``<out>/sequestered`` (:mod:`hiroml.pipeline.sequester`)."""
    prev = _latest_splits(out)
    held = out / SEQUESTERED_DIR
    if held.is_dir():
        for pid, split in _latest_splits(held).items():
            prev.setdefault(pid, split)
    return prev


def _latest_splits(out: Path) -> dict[str, str]:
    """patient id -> split in the latest version of the output folder ``out``."""
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
    split = old["split"].astype(str).tolist()  # lists: no Python iteration of Arrow cells
    for col in ("source_patient_id", "patient_id"):
        prev.update(zip(old[col].astype(str).tolist(), split, strict=True))
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
) -> tuple[LinkResult, dict[str, bytes]]:
    """Join patient groups whose samples show the same image (:mod:`hiroml.exams.linking`); also
    gives each sample's near-duplicate signature (its 1,024 bytes; empty for CT).

    A radiograph whose reused task record holds no signature gets its signature from its
    shard here."""
    from hiroml.exams import linking, neardup, paircache
    from hiroml.store.shards import read_sample

    samples = []
    for r in results:
        for s in r.samples:
            sig = s.signature
            if s.modality == "cxr" and not sig and cfg.splits.near_duplicate_threshold:
                arr, _ = read_sample(out / s.shard, s.sample_key)
                sig = neardup.signature(arr).tobytes()
            e = exams[s.exam_key]
            samples.append(
                linking.make_identity(s.sample_key, s.exam_key, e.patient_id, s.data_hash, sig)
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


def previous_strategy(out: Path) -> str | None:
    """``splits.strategy`` of the latest version's build (its ``build.json``); None when
    there is no version or it does not say."""
    import json

    from hiroml.versions.listing import VersionError, find_version
    from hiroml.vocab import BUILD_JSON

    try:
        latest = find_version(out, None)
        if latest is None:
            return None
        info = json.loads((latest.path / BUILD_JSON).read_text(encoding="utf-8"))
        return str(info["config"]["splits"].get("strategy", SplitStrategy.HASH))
    except (OSError, VersionError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("could not read the previous version's split strategy in %s (%s)", out, e)
        return None


def _strata(
    columns: Sequence[str],
    exams_of: Mapping[str, Sequence[Exam]],
    group_of: Mapping[str, str],
    clinical: Any,
) -> dict[str, str]:
    """group -> its stratum, the values of ``columns`` joined by ``|``: ``age_band`` and
    ``sex`` from (0010,1010) Patient's Age and (0010,0040) Patient's Sex of the group's first
    exam, ``modality`` from its exams, any other column from the clinical table (the first
    of the group's patient ids, sorted, that has a value)."""
    from hiroml.exams import splits
    from hiroml.pipeline.samples import age_years

    labels: dict[str, dict[str, str]] = {}
    for c in columns:
        if c in tuple(StratumKey):
            continue
        if clinical is None or c not in clinical.labels.columns:
            raise BuildError(
                f"splits.stratify: {c!r} is none of {', '.join(StratumKey)} and no column of "
                "the clinical table (paths.clinical)"
            )
        col = clinical.labels[c]
        per: dict[str, str] = {}
        for pid, v in sorted(zip(col.index.astype(str), col, strict=True)):
            g = group_of.get(pid, pid)
            if g not in per and not (v is None or (isinstance(v, float) and v != v) or v == ""):
                per[g] = str(v)
        labels[c] = per
    out: dict[str, str] = {}
    for g, exams in exams_of.items():
        first = min(exams, key=lambda e: (e.time, e.exam_key))
        inst = first.instances[0] if first.instances else None
        values = []
        for c in columns:
            if c == StratumKey.AGE_BAND:
                values.append(splits.age_band(age_years(inst.patient_age) if inst else None))
            elif c == StratumKey.SEX:
                values.append((inst.sex.strip().upper() if inst else "") or splits.MISSING)
            elif c == StratumKey.MODALITY:
                values.append(splits.modality_present({e.modality for e in exams}))
            else:
                values.append(labels[c].get(g, splits.MISSING))
        out[g] = "|".join(values)
    return out


def assign_splits(
    cfg: BuildConfig,
    exams: Sequence[Exam],
    group_of: Mapping[str, str],
    clinical: Any,
    out: Path,
    *,
    prev_by_id: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, list[str]], dict[str, Any]]:
    """The split of every patient group, each group's patient ids (current and source), and
    the split rule as ``build.json`` records it (strategy, its parameters, the temporal
    cut-off, the previous version's strategy, the rule in words). ``prev_by_id``: the
    latest version's splits (:func:`previous_splits` of ``out``, read here when not given).

    Groups keep the split their patients had in the latest version, whatever strategy gave
    it; a group that joins patients of different splits takes the split nearest train
    (train > val > test, see :func:`hiroml.exams.splits.inherited_splits`). New groups are
    dealt by ``splits.strategy``; test sequestration wins over all."""
    from hiroml.exams import splits

    sc = cfg.splits
    exams_of: dict[str, list[Exam]] = {}
    for e in exams:
        exams_of.setdefault(group_of.get(e.patient_id, e.patient_id), []).append(e)
    groups = sorted(exams_of)
    members: dict[str, list[str]] = {}
    for pid, g in group_of.items():
        members.setdefault(g, []).append(pid)
    for e in exams:
        members.setdefault(group_of.get(e.patient_id, e.patient_id), []).append(e.source_patient_id)
    if prev_by_id is None:
        prev_by_id = previous_splits(out)
    previous = splits.inherited_splits(groups, members, prev_by_id)
    test_ids = splits.load_test_ids(sc.test_list) if sc.test_list else set()
    strata = first_seen = cutoff = None
    if sc.strategy == SplitStrategy.STRATIFIED:
        strata = _strata(sc.stratify_columns, exams_of, group_of, clinical)
    elif sc.strategy == SplitStrategy.TEMPORAL:
        first_seen = {g: min(e.time for e in es).date() for g, es in exams_of.items()}
        cutoff = splits.temporal_cutoff(first_seen.values(), sc)
    split_of = splits.assign_splits(
        groups,
        sc,
        strata=strata,
        first_seen=first_seen,
        cutoff=cutoff,
        group_members=members,
        test_ids=test_ids,
        previous=previous,
    )
    before = previous_strategy(out) if previous else None
    rule: dict[str, Any] = {
        "strategy": sc.strategy,
        "rule": splits.describe_rule(sc, cutoff),
        "stratify": list(sc.stratify_columns),
        "test_after": cutoff.isoformat() if cutoff is not None else None,
        "groups_kept_from_previous": len(previous),
        "previous_strategy": before,
        "sequester": sc.sequester,
    }
    return split_of, members, rule
