"""The build package's parts on their own: the one executor, atomic writes, task records,
and a torch-free ``hiroml-verify``."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_manifest import make_output

from hiroml.config import ExecutorConfig
from hiroml.pipeline.executor import map_items
from hiroml.pipeline.tasks import TaskResult, load_task_record, read_record, save_task_record
from hiroml.records import Problem, SampleRecord
from hiroml.store.atomic import temp_path, write_atomic, write_text_atomic
from hiroml.vocab import STATE_DIR, Action


def _square(n: int) -> int:
    return n * n


@pytest.mark.parametrize("workers", [1, 2])
def test_map_items_yields_every_item_once_with_its_result(workers: int) -> None:
    seen = list(
        map_items(
            _square,
            [3, 1, 2],
            ExecutorConfig(workers=workers),
            desc="squares",
            unit="n",
            weight=float,
            progress=False,
        )
    )
    assert sorted(seen) == [(1, 1), (2, 4), (3, 9)]
    if workers == 1:  # run here, heaviest first
        assert [item for item, _ in seen] == [3, 2, 1]


def test_map_items_of_nothing_starts_nothing() -> None:
    assert list(map_items(_square, [], ExecutorConfig(kind="dask"), desc="x", unit="n")) == []


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    write_text_atomic(target, "old\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert not temp_path(target).exists()
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n" and os.listdir(tmp_path) == ["table.csv"]


def test_task_record_round_trip(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "t-0.h5").write_bytes(b"")
    sample = SampleRecord(
        sample_key="e1:1.2",
        exam_key="e1",
        modality="ct",
        shard="shards/t-0.h5",
        shard_sha256="ab",
        data_hash="cd",
        shape=(1, 4, 5, 6),
        series_uid="1.2",
        sop_uid="",
        sop_uids=("1.2.1", "1.2.2"),
        pixel_hashes=("x", "y"),
        view="unknown",
        size_xyz=(6, 5, 4),
        spacing_xyz=(0.7, 0.7, 2.5),
        origin_xyz=(0.0, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        ct_decisions=("gap filled",),
        seams_mm=(12.5,),
        seam_slices=(2,),
    )
    problem = Problem(zip="a.zip", batch="b1", member="m", stage="ct", reason="r",
                      action=Action.DROPPED)  # fmt: skip
    result = TaskResult("t", (sample,), (("e1", problem),), ("shards/t-0.h5",), 1.5, 10)
    save_task_record(str(tmp_path), result)

    class Spec:  # what load_task_record reads of a TaskSpec
        out_dir = str(tmp_path)
        task_id = "t"

    again = load_task_record(Spec)  # type: ignore[arg-type]
    assert again is not None and again.reused
    assert again.samples == (sample,) and again.problems == result.problems
    # a record written when ct_decisions was named notes loads the same
    path = tmp_path / STATE_DIR / "tasks" / "t.json"
    d, _ = read_record(path)
    (row,) = d.pop("sample_rows")
    fields = dict(zip(d.pop("sample_fields"), row, strict=True))
    fields["notes"] = fields.pop("ct_decisions")
    fields["signature"] = sample.signature.hex()  # a record of JSON alone holds it as hex
    path.write_text(json.dumps({**d, "samples": [fields]}))  # one object per sample, as then
    older = load_task_record(Spec)  # type: ignore[arg-type]
    assert older is not None and older.samples == (sample,)
    (tmp_path / "shards" / "t-0.h5").unlink()
    assert load_task_record(Spec) is None  # type: ignore[arg-type]  # its shard is gone


def test_task_record_json_is_what_asdict_gave(tmp_path: Path) -> None:
    """The record is written field by field (no ``dataclasses.asdict`` deep copy) in the same
    JSON as ``asdict`` gave but for the signature: its length, its bytes after the JSON's
    line; it reads back as the sample, its signature as bytes. Records of earlier releases,
    JSON alone, the signature as hex text or as a list of numbers, load the same sample;
    one with a number out of 0..255, or with a length but no bytes after it, is unreadable
    (the task is redone)."""
    sample = SampleRecord(
        sample_key="e1:1.2:0", exam_key="e1", modality="cxr", shard="shards/t-0.h5",
        shard_sha256="ab", data_hash="cd", shape=(8, 9), series_uid="1.2", sop_uid="1.2.1",
        sop_uids=("1.2.1",), pixel_hashes=("x",), view="PA", scale=0.5,
        signature=bytes(range(256)) * 4, frame=0,
    )  # fmt: skip
    problem = Problem(zip="a.zip", batch="b1", member="m", stage="cxr", reason="r")
    result = TaskResult("t", (sample,), (("e1", problem),), ("shards/t-0.h5",), 1.5, 10)
    save_task_record(str(tmp_path), result)
    path = tmp_path / STATE_DIR / "tasks" / "t.json"
    written, tail = read_record(path)
    assert path.read_bytes() == json.dumps(written).encode() + b"\n" + sample.signature
    assert tail is not None and tail.tobytes() == sample.signature
    fields = dataclasses.asdict(dataclasses.replace(sample, signature=b""))
    as_before = json.loads(json.dumps({**fields, "signature": list(sample.signature)}))
    assert written["sample_fields"] == [f.name for f in dataclasses.fields(SampleRecord)]
    (row,) = written["sample_rows"]
    as_length = {**as_before, "signature": len(sample.signature)}
    assert dict(zip(written["sample_fields"], row, strict=True)) == as_length
    as_hex = {**as_before, "signature": sample.signature.hex()}
    at = written["sample_fields"].index("signature")
    row = [*row[:at], as_hex["signature"], *row[at + 1 :]]  # a record of JSON alone: hex
    assert written["problems"] == [["e1", json.loads(json.dumps(dataclasses.asdict(problem)))]]
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "t-0.h5").write_bytes(b"")

    class Spec:  # what load_task_record reads of a TaskSpec
        out_dir = str(tmp_path)
        task_id = "t"

    objects = {k: v for k, v in written.items() if k not in ("sample_fields", "sample_rows")}
    reordered = {
        **written,
        "sample_fields": [*written["sample_fields"]][::-1],
        "sample_rows": [row[::-1]],
    }
    records = (  # rows; rows of another field order; one object per sample, hex or numbers
        {**written, "sample_rows": [row]},
        reordered,
        {**objects, "samples": [as_hex]},
        {**objects, "samples": [as_before]},
    )
    for record in records:
        path.write_text(json.dumps(record))
        again = load_task_record(Spec)  # type: ignore[arg-type]
        assert again is not None and again.samples == (sample,)
        assert type(again.samples[0].signature) is bytes
        # written again as this release writes it: the signature's bytes after the JSON
        assert path.read_bytes() == json.dumps(written).encode() + b"\n" + sample.signature
    bad = {**objects, "samples": [{**as_before, "signature": [256, *as_before["signature"][1:]]}]}
    path.write_text(json.dumps(bad))
    assert load_task_record(Spec) is None  # type: ignore[arg-type]
    path.write_text(json.dumps(written))  # the lengths, but not the bytes they count
    assert load_task_record(Spec) is None  # type: ignore[arg-type]
    for cut in (1, len(sample.signature)):  # fewer bytes than counted, or none
        path.write_bytes(json.dumps(written).encode() + b"\n" + sample.signature[:-cut])
        assert load_task_record(Spec) is None  # type: ignore[arg-type]
    path.write_bytes(json.dumps(written).encode() + b"\n" + sample.signature + b"\x00")
    assert load_task_record(Spec) is None  # type: ignore[arg-type]  # one byte too many


def test_verify_imports_no_torch(tmp_path: Path) -> None:
    out = make_output(tmp_path, n_patients=4, n_ct=1)
    code = (
        "import sys\nfrom hiroml.store.verify import verify\n"
        f"assert verify({str(out)!r}) == []\nassert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_audit_code_filters_rows_but_is_no_audit_column() -> None:
    from hiroml.records import AuditRow
    from hiroml.store.tables import AUDIT_COLUMNS, audit_frame

    tagged = AuditRow(zip="a.zip", batch="b1", action=Action.ERROR, reason="r", code="x.y")
    assert tagged == AuditRow(zip="a.zip", batch="b1", action=Action.ERROR, reason="r")
    df = audit_frame([tagged])
    assert list(df.columns) == [*AUDIT_COLUMNS, "exam_key", "member"]
    assert df.iloc[0]["zip"] == "a.zip" and df.iloc[0]["action"] == "error"
