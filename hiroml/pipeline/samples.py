"""Manifest assembly: the driver's :class:`~hiroml.records.SampleRecord`\\ s, with their exams,
patient groups and splits, as the manifest table (``docs/design.md`` §4)."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping, Sequence

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


def manifest_frame(
    results: Sequence[TaskResult],
    exams: Mapping[str, Exam],
    group_of: Mapping[str, str],
    split_of: Mapping[str, str],
    days: Mapping[str, int | None],
    orphans: set[str],
    labels: pd.DataFrame | None,
) -> pd.DataFrame:
    """The manifest: one :class:`~hiroml.records.ManifestRow` per stored sample, sorted by
    ``sample_key``, with the clinical ``labels`` joined on ``patient_id`` (a label named like
    a manifest column becomes ``label_<name>``)."""
    rows: list[ManifestRow] = []
    for r in results:
        for s in r.samples:
            e = exams[s.exam_key]
            first = e.instances[0] if e.instances else None
            group = group_of.get(e.patient_id, e.patient_id)
            rows.append(
                ManifestRow(
                    sample_key=s.sample_key,
                    shard=s.shard,
                    modality=s.modality,
                    patient_id=e.patient_id,
                    source_patient_id=e.source_patient_id,
                    patient_group=group,
                    split=split_of[group],
                    exam_key=e.exam_key,
                    hiro_id=e.hiro_id,
                    exam_time=pd.Timestamp(e.time),
                    description=e.description,
                    batch=e.batch,
                    source_zips=[z.partition("/")[2] for z in e.zips],
                    series_uid=s.series_uid,
                    sop_uid=s.sop_uid,
                    view=s.view,
                    age_years=age_years(first.patient_age) if first else None,
                    sex=first.sex if first else "",
                    shape=list(s.shape),
                    size_xyz=list(s.size_xyz) if s.size_xyz else None,
                    spacing_xyz=list(s.spacing_xyz) if s.spacing_xyz else None,
                    origin_xyz=list(s.origin_xyz) if s.origin_xyz else None,
                    direction=list(s.direction) if s.direction else None,
                    shard_sha256=s.shard_sha256,
                    data_hash=s.data_hash,
                    sop_uids=list(s.sop_uids),
                    pixel_hashes=list(s.pixel_hashes),
                    batches=sorted({z.partition("/")[0] for z in e.zips}),
                    scale=s.scale,
                    ct_decisions=list(s.ct_decisions),
                    stitched_series=list(s.stitched_series),
                    seams_mm=list(s.seams_mm),
                    seam_slices=list(s.seam_slices),
                    frame=s.frame,
                    for_processing=s.for_processing,
                    days_from_encounter=days.get(e.exam_key),
                    orphan=e.patient_id in orphans,
                )
            )
    # each row's fields as one tuple (its lists are its own already: no dataclasses.astuple
    # deep copy); the same columns and dtypes as from one dict per row, in half the time
    names = [f.name for f in dataclasses.fields(ManifestRow)]
    values = operator.attrgetter(*names)
    df = pd.DataFrame([values(r) for r in rows], columns=names) if rows else pd.DataFrame()
    if df.empty:
        from hiroml.store.tables import CT_COLUMNS, EXTRA_COLUMNS, MANIFEST_COLUMNS

        df = pd.DataFrame(columns=[*MANIFEST_COLUMNS, *CT_COLUMNS, *EXTRA_COLUMNS])
    elif labels is not None and not labels.empty:
        lab = labels.copy()
        lab.index = lab.index.astype(str)
        clash = [c for c in lab.columns if c in df.columns]
        lab = lab.rename(columns={c: f"label_{c}" for c in clash})
        df = df.join(lab, on="patient_id")
    return df.sort_values("sample_key", kind="stable").reset_index(drop=True)


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
