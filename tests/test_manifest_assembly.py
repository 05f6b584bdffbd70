"""pipeline.samples: the manifest assembled column by column from the samples' records, the
same frame as one :class:`~hiroml.records.ManifestRow` per sample; signatures as bytes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import numpy as np
import pandas as pd

from hiroml.exams.linking import LinkResult
from hiroml.pipeline.samples import age_years, manifest_frame, with_signatures
from hiroml.pipeline.tasks import TaskResult
from hiroml.records import Exam, Instance, ManifestRow, SampleRecord
from hiroml.store.tables import manifest_table
from hiroml.vocab import Modality, Split, View


def _instance(zip_name: str, age: str, sex: str) -> Instance:
    return Instance(
        batch="b1", zip=zip_name, member="m.dcm", member_size=10, sop_uid="1.2.3",
        series_uid="1.2", study_uid="1", sop_class_uid="1.2.840", modality="CR",
        patient_id="P1", patient_age=age, sex=sex,
    )  # fmt: skip


def _exam(key: str, pid: str, modality: Modality, zips: tuple[str, ...], insts: int) -> Exam:
    inst = tuple(_instance(z.partition("/")[2], "057Y", "F") for z in zips[:insts])
    return Exam(
        exam_key=key, modality=modality, patient_id=pid, source_patient_id=f"old-{pid}",
        hiro_id=f"H{key}", time=dt.datetime(2020, 1, 2, 3, 4, 5), description="XR-CHEST",
        pediatric=False, batch=zips[0].partition("/")[0], zips=zips, instances=inst,
    )  # fmt: skip


def _sample(key: str, exam: str, modality: str, **kw: object) -> SampleRecord:
    fields: dict[str, object] = dict(
        sample_key=key, exam_key=exam, modality=modality, shard="shards/t-0.h5",
        shard_sha256="ab", data_hash=f"d{key}", shape=(1, 8, 8), series_uid="1.2",
        sop_uid="1.2.3", sop_uids=("1.2.3",), pixel_hashes=("x",), view=str(View.FRONTAL),
    )  # fmt: skip
    fields.update(kw)
    return SampleRecord(**fields)  # type: ignore[arg-type]


#: the manifest columns that hold a sample record's tuple
SAMPLE_TUPLES = (
    "shape", "sop_uids", "pixel_hashes", "ct_decisions", "stitched_series", "seams_mm",
    "seam_slices",
)  # fmt: skip


def _reference(results, exams, group_of, split_of, days, orphans, labels) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """One ManifestRow per sample, as the manifest was first assembled."""
    rows = []
    for s in (s for r in results for s in r.samples):
        e = exams[s.exam_key]
        first = e.instances[0] if e.instances else None
        group = group_of.get(e.patient_id, e.patient_id)
        geometry: dict[str, Any] = {
            k: list(getattr(s, k)) if getattr(s, k) else None
            for k in ("size_xyz", "spacing_xyz", "origin_xyz", "direction")
        }
        lists: dict[str, Any] = {
            k: list(getattr(s, k))
            for k in ("shape", "sop_uids", "pixel_hashes", "ct_decisions", "stitched_series")
        }
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
                shard_sha256=s.shard_sha256,
                data_hash=s.data_hash,
                batches=sorted({z.partition("/")[0] for z in e.zips}),
                scale=s.scale,
                seams_mm=list(s.seams_mm),
                seam_slices=list(s.seam_slices),
                frame=s.frame,
                for_processing=s.for_processing,
                days_from_encounter=days.get(e.exam_key),
                orphan=e.patient_id in orphans,
                **geometry,
                **lists,
            )
        )
    names = [f.name for f in dataclasses.fields(ManifestRow)]
    df = pd.DataFrame([[getattr(r, n) for n in names] for r in rows], columns=names)
    lab = labels.rename(columns={"sex": "label_sex"})
    df = df.join(lab, on="patient_id")
    return df.sort_values("sample_key", kind="stable").reset_index(drop=True)


def test_manifest_columns_are_those_of_one_row_per_sample() -> None:
    exams = {
        "e1": _exam("e1", "P1", Modality.CXR, ("b2/z1.zip", "b1/z0.zip"), 1),
        "e2": _exam("e2", "P2", Modality.CT, ("b1/z2.zip",), 0),
    }
    sig = bytes(range(256)) * 4
    ct = dict(
        size_xyz=(8, 8, 1), spacing_xyz=(0.5, 0.5, 2.0), origin_xyz=(0.0, 1.0, 2.0),
        direction=(1.0, 0, 0, 0, 1, 0, 0, 0, 1), scale=1.0, ct_decisions=("tilt 2.0 deg",),
        stitched_series=("1.2", "1.3"), seams_mm=(10.5,), seam_slices=(3,), sop_uid="",
    )  # fmt: skip
    results = [
        TaskResult("t1", (_sample("e1:2", "e1", "cxr", frame=0, signature=sig),), (), (), 1, 1),
        TaskResult(
            "t2",
            (_sample("e2:1", "e2", "ct", **ct), _sample("e1:1", "e1", "cxr", frame=1)),
            (),
            (),
            1,
            1,
        ),
    ]
    args = (results, exams, {"P2": "P1"}, {"P1": str(Split.TRAIN)}, {"e1": 12}, {"P2"})
    labels = pd.DataFrame({"icu": [1.0, 0.0], "sex": ["F", "M"]}, index=["P1", "P2"])
    got = manifest_frame(*args, labels)
    want = _reference(*args, labels)
    # a sample's list cells are its record's own tuples (no list object per cell); the
    # exams' list cells are lists, each row its own; nulls stay None
    by_key = {s.sample_key: s for r in results for s in r.samples}
    for col in SAMPLE_TUPLES:
        for key, cell in zip(got["sample_key"], got[col], strict=True):
            assert cell is getattr(by_key[key], col), col
    as_lists = got.assign(**{c: [list(v) for v in got[c]] for c in SAMPLE_TUPLES})
    pd.testing.assert_frame_equal(as_lists, want, check_exact=True)
    for col in want.columns:
        assert [type(v) for v in as_lists[col]] == [type(v) for v in want[col]], col
    # the table written and hashed is the same as of list cells
    assert manifest_table(got).equals(manifest_table(want))
    assert got["sample_key"].tolist() == ["e1:1", "e1:2", "e2:1"]
    assert got["patient_group"].tolist() == ["P1", "P1", "P1"]
    cells = got["source_zips"].tolist()
    assert cells[0] == cells[1] and cells[0] is not cells[1]  # each row its own list

    linked = LinkResult(group_of={}, links=())
    signatures = {"e1:2": sig, "e2:1": b""}
    m = with_signatures(got, signatures, linked)
    assert m["signature"].tolist() == [None, sig, None]
    table = manifest_table(m)
    as_tuples = m.assign(signature=[tuple(v) if v else None for v in m["signature"]])
    assert table.equals(manifest_table(as_tuples))  # bytes and tuples: the same list<uint8>
    stored = table.column("signature").to_pylist()
    assert stored[0] is None and stored[2] is None
    assert np.array_equal(np.array(stored[1], dtype=np.uint8), np.frombuffer(sig, np.uint8))


def test_no_samples_make_the_empty_manifest() -> None:
    got = manifest_frame([], {}, {}, {}, {}, set(), None)
    assert got.empty and "sample_key" in got.columns and "split" in got.columns
