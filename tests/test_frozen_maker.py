"""hiroml.frozen.maker: the records a build reads back from its caches (index instances,
task records' samples) made without the frozen ``__init__``, equal to the ordinary ones."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import pickle
from pathlib import Path

import pytest

from hiroml.frozen import maker
from hiroml.ingest.cache import IndexCache
from hiroml.pipeline.tasks import TaskResult, load_task_record, read_record, save_task_record
from hiroml.records import Batch, ExamZip, Instance, SampleRecord, ZipIndex, ZipName
from hiroml.vocab import STATE_DIR, BatchStatus, Modality

INSTANCE = Instance(
    batch="CXR-UPDATE-20200104-COMPLETE", zip="1_20200101-000000_A1_X.zip", member="1/1.dcm",
    member_size=123, sop_uid="1.2.3", series_uid="1.2", study_uid="1", sop_class_uid="1.2.840",
    modality="CR", patient_id="1", patient_age="057Y", sex="F", image_type=("ORIGINAL",),
    position=(1.0, 2.0, 3.0), pixel_spacing=(0.1, 0.1), rows=8, columns=9,
    rescale_slope=None, series_number=4, pixel_hash="abc", frame=None,
)  # fmt: skip
SAMPLE = SampleRecord(
    sample_key="e1:1.2.3:0", exam_key="e1", modality="cxr", shard="shards/t-0.h5",
    shard_sha256="ab", data_hash="cd", shape=(8, 9), series_uid="1.2", sop_uid="1.2.3",
    sop_uids=("1.2.3",), pixel_hashes=("abc",), view="PA", scale=0.5,
    signature=bytes(range(256)) * 4, frame=0, decoder="pydicom",
)  # fmt: skip


@pytest.mark.parametrize("record", [INSTANCE, SAMPLE])
def test_maker_makes_the_record(record: object) -> None:
    cls = type(record)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    made = maker(cls)(*[getattr(record, n) for n in names])
    assert type(made) is cls and made == record and hash(made) == hash(record)
    assert [getattr(made, n) for n in names] == [getattr(record, n) for n in names]
    assert pickle.loads(pickle.dumps(made)) == record and copy.copy(made) == record
    assert dataclasses.replace(made, modality="x") == dataclasses.replace(record, modality="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.modality = "CT"  # type: ignore[misc]
    with pytest.raises(TypeError):  # every field, no more, no fewer
        maker(cls)(*[getattr(record, n) for n in names[:-1]])


def test_maker_refuses_other_classes() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            assert self.a > 0

    for cls in (NoSlots, Checked):
        with pytest.raises(TypeError):
            maker(cls)


def test_index_cache_reads_back_instances(tmp_path: Path) -> None:
    batch = Batch(INSTANCE.batch, Modality.CXR, dt.date(2020, 1, 4), BatchStatus.COMPLETE)
    name = ZipName("1", dt.datetime(2020, 1, 1), "A1", "X", False)
    ezip = ExamZip(batch, INSTANCE.zip, name, 10, 20)
    other = dataclasses.replace(INSTANCE, member="1/2.dcm", orientation=(1.0, 0, 0, 0, 1.0, 0))
    cache = IndexCache(tmp_path / "index.sqlite", root=str(tmp_path))
    cache.store(ezip, ZipIndex(ezip.rel_path, (INSTANCE, other), ()))
    cache.commit()
    (back,) = cache.load([ezip.rel_path])
    cache.close()
    assert back.instances == (INSTANCE, other)
    assert all(type(i) is Instance for i in back.instances)
    assert type(back.instances[1].orientation) is tuple


def test_index_cache_reads_shared_texts_back_as_one_object(tmp_path: Path) -> None:
    """The texts instances share (a batch, a study, a series, the image type) are one object
    across the zips read back, not one per instance; each instance's own UID stays its own.
    The values are those stored."""
    batch = Batch(INSTANCE.batch, Modality.CXR, dt.date(2020, 1, 4), BatchStatus.COMPLETE)
    cache = IndexCache(tmp_path / "index.sqlite", root=str(tmp_path))
    stored = []
    for k in range(3):
        name = ZipName(str(k), dt.datetime(2020, 1, 1), f"A{k}", "X", False)
        ezip = ExamZip(batch, f"{k}_20200101-000000_A{k}_X.zip", name, 10, 20)
        slices = tuple(
            dataclasses.replace(
                INSTANCE, zip=ezip.file_name, member=f"{k}/{m}.dcm", sop_uid=f"1.{k}.{m}"
            )
            for m in range(2)
        )
        cache.store(ezip, ZipIndex(ezip.rel_path, slices, ()))
        stored.append((ezip.rel_path, slices))
    cache.commit()
    back = list(cache.load([rel for rel, _ in stored]))
    cache.close()
    assert [(z.rel_path, z.instances) for z in back] == stored
    got = [i for z in back for i in z.instances]
    for name in ("batch", "study_uid", "series_uid", "modality", "patient_age", "image_type"):
        assert len({id(getattr(i, name)) for i in got}) == 1, name
    assert len({id(i.zip) for i in got}) == 3  # one per zip, shared by its two instances
    assert len({id(i.sop_uid) for i in got}) == len({i.sop_uid for i in got}) == 6


def test_index_cache_reads_a_damaged_rows_other_values_as_they_are(tmp_path: Path) -> None:
    """A text field that holds a list, or an image type of numbers (a row the cache did not
    write), is read back as it is: only texts are shared, nothing else is hashed."""
    batch = Batch(INSTANCE.batch, Modality.CXR, dt.date(2020, 1, 4), BatchStatus.COMPLETE)
    name = ZipName("1", dt.datetime(2020, 1, 1), "A1", "X", False)
    ezip = ExamZip(batch, INSTANCE.zip, name, 10, 20)
    cache = IndexCache(tmp_path / "index.sqlite", root=str(tmp_path))
    cache.store(ezip, ZipIndex(ezip.rel_path, (INSTANCE,), ()))
    cache.commit()
    (text,) = cache.db.execute("SELECT instances FROM zips").fetchone()
    (row,) = json.loads(text)
    names = [f.name for f in dataclasses.fields(Instance)]
    row[names.index("modality")] = ["CR", "DX"]
    row[names.index("image_type")] = [1, [2]]
    cache.db.execute("UPDATE zips SET instances = ?", (json.dumps([row]),))
    cache.commit()
    (back,) = cache.load([ezip.rel_path])
    cache.close()
    (got,) = back.instances
    assert got.modality == ["CR", "DX"] and got.image_type == (1, [2])
    assert got.study_uid == INSTANCE.study_uid


def test_task_record_reads_a_tasks_shard_back_as_one_object(tmp_path: Path) -> None:
    """The samples of a task record share one object for its shard, the shard's checksum,
    the modality, view and decoder; each sample's own values stay its own."""
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "t-0.h5").write_bytes(b"")
    samples = tuple(
        dataclasses.replace(SAMPLE, sample_key=f"e1:1.2.{k}:0", sop_uid=f"1.2.{k}")
        for k in range(3)
    )
    save_task_record(str(tmp_path), TaskResult("t", samples, (), ("shards/t-0.h5",), 1.0, 2))

    class Spec:  # what load_task_record reads of a TaskSpec
        out_dir = str(tmp_path)
        task_id = "t"

    again = load_task_record(Spec)  # type: ignore[arg-type]
    assert again is not None and again.samples == samples
    for name in ("shard", "shard_sha256", "modality", "view", "decoder"):
        assert len({id(getattr(s, name)) for s in again.samples}) == 1, name
    assert len({id(s.sample_key) for s in again.samples}) == 3


def test_task_record_of_fewer_or_unknown_fields(tmp_path: Path) -> None:
    """A record of an earlier release without a later field loads with its default; one
    with a field no SampleRecord has is unreadable (its task is redone)."""
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "t-0.h5").write_bytes(b"")
    save_task_record(str(tmp_path), TaskResult("t", (SAMPLE,), (), ("shards/t-0.h5",), 1.0, 2))

    class Spec:  # what load_task_record reads of a TaskSpec
        out_dir = str(tmp_path)
        task_id = "t"

    path = tmp_path / STATE_DIR / "tasks" / "t.json"
    again = load_task_record(Spec)  # type: ignore[arg-type]
    assert again is not None and again.samples == (SAMPLE,)
    assert type(again.samples[0]) is SampleRecord
    rows, tail = read_record(path)
    fields, (row,) = rows["sample_fields"], rows["sample_rows"]
    assert tail is not None and tail.tobytes() == SAMPLE.signature
    row[fields.index("signature")] = SAMPLE.signature.hex()  # a record of JSON alone: hex
    unknown_rows = {**rows, "sample_fields": [*fields, "colour"], "sample_rows": [[*row, "red"]]}
    path.write_text(json.dumps(unknown_rows))
    assert load_task_record(Spec) is None  # type: ignore[arg-type]
    written = {k: v for k, v in rows.items() if k not in ("sample_fields", "sample_rows")}
    sample = dict(zip(fields, row, strict=True))  # one object per sample, as in older records
    older = {k: v for k, v in sample.items() if k not in ("decoder", "seam_slices")}
    path.write_text(json.dumps({**written, "samples": [older]}))
    again = load_task_record(Spec)  # type: ignore[arg-type]
    want = dataclasses.replace(SAMPLE, decoder="")
    assert again is not None and again.samples == (want,)
    unknown = {**older, "decoder": "x", "colour": "red"}  # as many fields, one unknown
    assert len(unknown) == len(sample)
    path.write_text(json.dumps({**written, "samples": [unknown]}))
    assert load_task_record(Spec) is None  # type: ignore[arg-type]


def test_listing_and_linking_records() -> None:
    """A zip name's record (its pediatric flag from a description met before included) and
    a sample's identity for linking are the records the classes make."""
    from hiroml.exams.linking import SampleIdentity, make_identity
    from hiroml.ingest.discover import is_pediatric, parse_zip_name

    for desc in ("XR-P-PORT-CHEST-1-VIEW", "XR-PA-CHEST", "XR P PORT", "XR-P-PORT-CHEST-1-VIEW"):
        name = parse_zip_name(f"12_20200101-083000_A7_{desc}.zip")
        want = ZipName("12", dt.datetime(2020, 1, 1, 8, 30), "A7", desc, is_pediatric(desc))
        assert type(name) is ZipName and name == want
    made = make_identity("k", "e", "p", "h", b"\x01" * 4)
    assert type(made) is SampleIdentity and made == SampleIdentity("k", "e", "p", "h", b"\x01" * 4)
