"""Manifest assembly: the driver's :class:`~hiroml.records.SampleRecord`\\ s, with their exams,
patient groups and splits, as the manifest table (``docs/design.md`` §4)."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from hiroml.exams.linking import LinkResult
from hiroml.pipeline.tasks import TaskResult
from hiroml.records import Exam, ManifestRow


def age_years(age: str) -> float | None:
    """(0010,1010) Patient's Age (``057Y``, ``006M``, ``002W``, ``010D``) in years."""
    age = age.strip().upper()
    if len(age) < 2 or not age[:-1].isdigit():
        return None
    n = int(age[:-1])
    per_year = {"Y": 1.0, "M": 12.0, "W": 365.25 / 7, "D": 365.25}.get(age[-1])
    return None if per_year is None else round(n / per_year, 4)


#: manifest columns that are a sample record's field of the same name, as it is
_SAMPLE_VALUES = (
    "sample_key", "shard", "modality", "series_uid", "sop_uid", "view", "shard_sha256",
    "data_hash", "scale", "frame", "for_processing",
)  # fmt: skip
#: ... as a list (every row has one): the record's own tuple, which the table writer stores
#: as the same list (no list object per cell: a sample's tuples are never changed)
_SAMPLE_LISTS = (
    "shape", "sop_uids", "pixel_hashes", "ct_decisions", "stitched_series", "seams_mm",
    "seam_slices",
)  # fmt: skip
#: ... as a list, null where the record has none (CT geometry)
_SAMPLE_GEOMETRY = ("size_xyz", "spacing_xyz", "origin_xyz", "direction")


def manifest_frame(
    results: Sequence[TaskResult],
    exams: Mapping[str, Exam],
    group_of: Mapping[str, str],
    split_of: Mapping[str, str],
    days: Mapping[str, int | None],
    orphans: set[str],
    labels: pd.DataFrame | None,
) -> pd.DataFrame:
    """The manifest: one row (the columns of :class:`~hiroml.records.ManifestRow`) per stored
    sample, sorted by ``sample_key``, with the clinical ``labels`` joined on ``patient_id`` (a
    label named like a manifest column becomes ``label_<name>``).

    Made column by column: the samples sorted by key first (no sorted copy of the frame),
    each record field's column in one pass over them, each exam's values once per exam (no
    row object per sample)."""
    samples = sorted((s for r in results for s in r.samples), key=operator.attrgetter("sample_key"))
    if not samples:
        from hiroml.store.tables import CT_COLUMNS, EXTRA_COLUMNS, MANIFEST_COLUMNS

        return pd.DataFrame(columns=[*MANIFEST_COLUMNS, *CT_COLUMNS, *EXTRA_COLUMNS])
    # every record field the manifest takes, per sample in one call, then turned into columns
    own = zip(*map(_SAMPLE_FIELDS, samples), strict=True)
    columns: dict[str, list[Any]] = dict(zip(_SAMPLE_NAMES, map(list, own), strict=True))
    for name in _SAMPLE_GEOMETRY:
        columns[name] = [list(v) if v else None for v in columns[name]]
    per_exam = _exam_values(exams, set(columns["exam_key"]), group_of, split_of, days, orphans)
    rows = list(map(per_exam.__getitem__, columns.pop("exam_key")))
    for name, values in zip(_EXAM_VALUES, zip(*rows, strict=True), strict=True):
        copy = name in _EXAM_LISTS  # a list cell of its own in each row
        columns[name] = list(map(list, values)) if copy else list(values)
    names = [f.name for f in dataclasses.fields(ManifestRow)]
    df = pd.DataFrame({n: columns[n] for n in names})
    if labels is not None and not labels.empty:
        lab = labels.copy()
        lab.index = lab.index.astype(str)
        clash = [c for c in lab.columns if c in df.columns]
        lab = lab.rename(columns={c: f"label_{c}" for c in clash})
        df = df.join(lab, on="patient_id").reset_index(drop=True)
    return df  # in sample_key order already: the samples were sorted (stable) first


#: manifest columns that come from a sample's exam, its patient group and split
_EXAM_VALUES = (
    "patient_id", "source_patient_id", "exam_key", "hiro_id", "exam_time", "description",
    "batch", "patient_group", "split", "source_zips", "age_years", "sex", "batches",
    "days_from_encounter", "orphan",
)  # fmt: skip
#: the first of them, an exam's own fields (``exam_time``: its ``time``)
_EXAM_FIELDS = operator.attrgetter(
    "patient_id", "source_patient_id", "exam_key", "hiro_id", "time", "description", "batch"
)
_EXAM_LISTS = frozenset({"source_zips", "batches"})
#: the record fields :func:`manifest_frame` reads, and a getter of all of them at once (its
#: sample's exam key last: it finds the exam's values, and is an exam value itself)
_SAMPLE_NAMES = (*_SAMPLE_VALUES, *_SAMPLE_LISTS, *_SAMPLE_GEOMETRY, "exam_key")
_SAMPLE_FIELDS = operator.attrgetter(*_SAMPLE_NAMES)


def _exam_values(
    exams: Mapping[str, Exam],
    keys: set[str],
    group_of: Mapping[str, str],
    split_of: Mapping[str, str],
    days: Mapping[str, int | None],
    orphans: set[str],
) -> dict[str, tuple[Any, ...]]:
    """exam key -> the values of :data:`_EXAM_VALUES` of each exam of ``keys``. The exam
    time as its datetime, which the frame holds as datetime64 (as it would a Timestamp)."""
    out: dict[str, tuple[Any, ...]] = {}
    ages: dict[str, float | None] = {}  # age_years of each Patient's Age text met
    for key in keys:
        e = exams[key]
        first = e.instances[0] if e.instances else None
        group = group_of.get(e.patient_id, e.patient_id)
        age = None
        if first is not None:
            if first.patient_age not in ages:
                ages[first.patient_age] = age_years(first.patient_age)
            age = ages[first.patient_age]
        zips: tuple[str, ...]
        batches: tuple[str, ...]
        if len(e.zips) == 1:  # the usual exam: one zip, one batch
            batch, _, name = e.zips[0].partition("/")
            zips, batches = (name,), (batch,)
        else:
            zips = tuple(z.partition("/")[2] for z in e.zips)
            batches = tuple(sorted({z.partition("/")[0] for z in e.zips}))
        out[key] = (
            *_EXAM_FIELDS(e),
            group,
            split_of[group],
            zips,
            age,
            first.sex if first else "",
            batches,
            days.get(e.exam_key),
            e.patient_id in orphans,
        )
    return out


def with_signatures(
    manifest: pd.DataFrame, signatures: Mapping[str, bytes], linked: LinkResult
) -> pd.DataFrame:
    """The manifest with ``signature`` (radiographs: the 1,024 uint8 values as bytes, which
    the table writer stores as a list of uint8; null for CT) and
    ``near_duplicates`` (the other sample keys of its near-duplicate pairs across groups; the
    first :data:`hiroml.exams.linking.NEAR_DUPLICATES_LISTED` by key, the build warns when cut)."""
    near = linked.near_duplicates
    m = manifest.copy()
    keys = m["sample_key"].astype(str).tolist()
    m["signature"] = [signatures.get(k) or None for k in keys]  # the bytes, not copies
    m["near_duplicates"] = [sorted(near.get(k, ())) for k in keys]
    return m
