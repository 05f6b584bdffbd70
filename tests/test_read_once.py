"""Read each radiograph member once: the index converts it, the conversion takes it
from the scratch store (hiroml.pipeline.scratch)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import MakeCfg

from hiroml import pipeline as build
from hiroml.config import CxrConfig, IndexConfig
from hiroml.cxr import convert as cxr_convert
from hiroml.ingest import zipio
from hiroml.ingest.discover import discover
from hiroml.ingest.index import index_zip
from hiroml.pipeline import scratch
from hiroml.store import shards
from hiroml.vocab import Modality


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, str]]:
    """Every SafeZip.read from now on, counted by (zip file name, member)."""
    reads: Counter[tuple[str, str]] = Counter()
    real = zipio.SafeZip.read

    def counted(self: zipio.SafeZip, member: str) -> bytes:
        reads[(os.path.basename(self.name), member)] += 1
        return real(self, member)

    monkeypatch.setattr(zipio.SafeZip, "read", counted)
    return reads


def test_each_radiograph_member_is_inflated_once_per_build(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, _ = tiny_datamart
    reads = _count_reads(monkeypatch)
    hashed: list[str] = []
    real_hash = shards.array_hash

    def counted_hash(arr: np.ndarray) -> str:
        hashed.append(real_hash(arr))
        return hashed[-1]

    monkeypatch.setattr(shards, "array_hash", counted_hash)
    out = tmp_path / "out"
    summary = build.run(make_cfg(root, out, "cxr.views=[frontal,lateral,unknown]"))
    cxr_zips = {z.file_name for z in discover(root).zips if z.batch.modality is Modality.CXR}
    manifest = pd.read_parquet(out / "manifest.parquet")
    stored = manifest[manifest["modality"] == "cxr"]
    assert len(stored) > 0
    cxr_reads = {k: n for k, n in reads.items() if k[0] in cxr_zips}
    assert cxr_reads, "the index read no radiograph"
    assert max(cxr_reads.values()) == 1, {k: n for k, n in cxr_reads.items() if n > 1}
    # every stored radiograph came from the store, and the store is gone afterwards
    assert summary.read_once >= len(stored)
    assert summary.read_once - summary.read_once_unused == len(stored)
    assert not scratch.scratch_dir(out).exists()
    assert any("converted in the index's read" in line for line in summary.lines())
    # each stored array hashed once, radiographs and CT volumes alike
    assert len(hashed) == len(manifest)


def test_a_rerun_reads_the_zips_again_and_stores_the_same_arrays(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    """A zip indexed by an earlier build has nothing in the store: the conversion reads it,
    and the stored arrays are the same as those converted in the index's read."""
    root, _ = tiny_datamart
    first = tmp_path / "first"
    build.run(make_cfg(root, first))
    again = tmp_path / "again"
    shutil.copytree(first / ".hiroml", again / ".hiroml", ignore=shutil.ignore_patterns("tasks"))
    summary = build.run(make_cfg(root, again))
    assert summary.zips_indexed_now == 0 and summary.read_once == 0
    cols = ["sample_key", "data_hash", "view", "shape"]
    a = pd.read_parquet(first / "manifest.parquet").sort_values("sample_key")[cols]
    b = pd.read_parquet(again / "manifest.parquet").sort_values("sample_key")[cols]
    assert a.astype(str).values.tolist() == b.astype(str).values.tolist()


def _one_cxr_zip(root: Path, tmp_path: Path) -> tuple[Path, Any]:
    """A copy of one radiograph zip of the tiny datamart, in a datamart of its own."""
    found = discover(root)
    ezip = next(z for z in found.zips if z.batch.modality is Modality.CXR)
    dest = tmp_path / "dm" / ezip.batch.name
    dest.mkdir(parents=True)
    shutil.copy2(root / ezip.rel_path, dest / ezip.file_name)
    ezip = next(z for z in discover(tmp_path / "dm").zips if z.file_name == ezip.file_name)
    return tmp_path / "dm", ezip


def test_an_entry_is_taken_once_and_only_for_the_same_zip_and_settings(
    tiny_datamart: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, ezip = _one_cxr_zip(tiny_datamart[0], tmp_path)
    cfg = CxrConfig(views=["frontal", "lateral", "unknown"])
    folder = scratch.scratch_dir(tmp_path / "out")
    zi = index_zip(root / ezip.rel_path, ezip, IndexConfig(), scratch.Preparer(str(folder), cfg))
    inst = zi.instances[0]
    assert scratch.count(tmp_path / "out") == len(zi.instances)
    other = scratch.ScratchReader(folder, str(root), CxrConfig(views=["frontal"], dtype="uint8"))
    assert other.take(inst) is None  # other settings: not this entry
    reader = scratch.ScratchReader(folder, str(root), cfg)
    ready = reader.take(inst)
    assert ready is not None and reader.taken == 1
    assert reader.take(inst) is None  # taken once
    # the same member read from the zip converts to the same frames
    with zipio.SafeZip(root / ezip.rel_path) as z:
        frames, _ = cxr_convert.convert_frames(
            z.read(inst.member), inst, exam_description="", cfg=cfg
        )
    assert [f.view for f in frames] == [f.view for f in ready.frames]
    for f, g in zip(frames, ready.frames, strict=True):
        np.testing.assert_array_equal(f.array, g.array)
    # a changed zip (new modification time) does not match what was stored before
    index_zip(root / ezip.rel_path, ezip, IndexConfig(), scratch.Preparer(str(folder), cfg))
    st = os.stat(root / ezip.rel_path)
    os.utime(root / ezip.rel_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert scratch.ScratchReader(folder, str(root), cfg).take(inst) is None
    assert scratch.sweep(tmp_path / "out") == len(zi.instances)
    assert not folder.exists()


def test_a_damaged_entry_is_dropped_and_the_zip_read_instead(
    tiny_datamart: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, ezip = _one_cxr_zip(tiny_datamart[0], tmp_path)
    cfg = CxrConfig(views=["frontal", "lateral", "unknown"])
    folder = scratch.scratch_dir(tmp_path / "out")
    zi = index_zip(root / ezip.rel_path, ezip, IndexConfig(), scratch.Preparer(str(folder), cfg))
    entries = sorted(folder.iterdir())
    assert entries
    for path in entries:
        path.write_bytes(b"not a pickle")  # a torn or foreign file
    reader = scratch.ScratchReader(folder, str(root), cfg)
    assert all(reader.take(inst) is None for inst in zi.instances)
    assert reader.taken == 0 and scratch.count(tmp_path / "out") == 0


def test_packs_a_cut_record_a_damaged_payload_and_two_readers(
    tiny_datamart: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store is append-only packs: a record cut short (a crash) ends its pack's scan and
    the records before it are taken; a damaged payload is dropped with a warning; an entry
    taken by one reader is not taken by another; a swept store is written again."""
    found = discover(tiny_datamart[0])
    for ezip in [z for z in found.zips if z.batch.modality is Modality.CXR][:3]:
        dest = tmp_path / "dm" / ezip.batch.name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tiny_datamart[0] / ezip.rel_path, dest / ezip.file_name)
    root = tmp_path / "dm"
    cfg = CxrConfig(views=["frontal", "lateral", "unknown"])
    out = tmp_path / "out"
    folder = scratch.scratch_dir(out)

    def index() -> list[Any]:
        preparer = scratch.Preparer(str(folder), cfg)
        return [
            inst
            for z in discover(root).zips
            for inst in index_zip(root / z.rel_path, z, IndexConfig(), preparer).instances
        ]

    insts = index()
    n = scratch.count(out)  # radiographs kept for the conversion
    assert n >= 3
    (pack,) = folder.glob("pack-*.bin")  # one pack per process, not one file per member
    # cut the last record short: the others are still there
    pack.write_bytes(pack.read_bytes()[:-10])
    first = scratch.ScratchReader(folder, str(root), cfg)
    second = scratch.ScratchReader(folder, str(root), cfg)
    blocks = pack.stat().st_blocks
    punched: list[bool] = []
    real_release = scratch._release
    monkeypatch.setattr(
        scratch, "_release", lambda *a: punched.append(real_release(*a)) or punched[-1]
    )
    assert sum(first.take(i) is not None for i in insts) == n - 1 == first.taken
    assert len(punched) == n - 1
    if all(punched):  # the file system freed the taken payloads' blocks
        assert pack.stat().st_blocks < blocks / 2
    assert all(second.take(i) is None for i in insts)  # taken by the first reader
    assert scratch.sweep(out) == 0 and not folder.exists()

    # written again after the sweep (a new pack); a damaged payload is dropped
    insts = index()
    (pack,) = folder.glob("pack-*.bin")
    data = bytearray(pack.read_bytes())
    data[scratch._HEAD.size : scratch._HEAD.size + 8] = b"garbage!"  # the first payload
    pack.write_bytes(bytes(data))
    reader = scratch.ScratchReader(folder, str(root), cfg)
    with caplog.at_level("WARNING"):
        assert sum(reader.take(i) is not None for i in insts) == n - 1
    assert caplog.text.count("scratch entry unreadable") == 1
    assert scratch.sweep(out) == 0  # the damaged one counts as taken: never tried again


def _frame(array: np.ndarray, frame: int, n_frames: int) -> Any:
    from hiroml.records import CxrImage
    from hiroml.vocab import View

    return CxrImage(
        sop_uid="1.2.3", series_uid="1.2", rel_zip="b/x.zip", member="m.dcm", array=array,
        view=View.LATERAL, view_source="ViewPosition=LL", original_shape=(40, 30),
        pixel_spacing=(0.5, 0.25), spacing_after=None, photometric="MONOCHROME1",
        bits_stored=12, transfer_syntax="1.2.840.10008.1.2.1", lut="minmax", inverted=True,
        scale=1 / 255, decoder="numpy", frame=frame, n_frames=n_frames, padding="p",
    )  # fmt: skip


def test_a_payload_holds_the_arrays_as_bytes_and_gives_back_the_same_frames() -> None:
    """A stored entry is a small header and the arrays' bytes (no array pickled): read back,
    every field, dtype, shape and value is the written one, and the arrays can be written."""
    from hiroml.cxr.view import ViewEvidence

    rng = np.random.default_rng(0)
    frames = (
        _frame(rng.random((40, 30)).astype(np.float16), 0, 2),
        _frame(rng.integers(0, 255, (7, 5), dtype=np.uint8)[:, ::2], 1, 2),  # not contiguous
    )
    ready = cxr_convert.Prepared(frames, ViewEvidence("LL", ("lateral",), "CHEST", "L"))
    parts = scratch._payload(ready)
    assert sum(memoryview(p).nbytes for p in parts) < 40 * 30 * 2 + 7 * 3 + 1024
    back = scratch._prepared(bytearray(b"".join(parts)))
    assert back.evidence == ready.evidence
    for f, g in zip(frames, back.frames, strict=True):
        assert (g.array.dtype, g.array.shape) == (f.array.dtype, f.array.shape)
        np.testing.assert_array_equal(g.array, f.array)
        assert g.array.flags.writeable
        assert g == dataclasses.replace(f, array=g.array)  # the other fields, the View too
    with pytest.raises(ValueError, match="after the arrays"):
        scratch._prepared(bytearray(b"".join(parts) + b"x"))


def test_an_entry_an_earlier_release_pickled_is_still_taken(
    tiny_datamart: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A pack left by an earlier release (a crashed build) holds records marked ``HRS1``
    whose payload is the pickled Prepared: they are taken as they were."""
    root, ezip = _one_cxr_zip(tiny_datamart[0], tmp_path)
    cfg = CxrConfig(views=["frontal", "lateral", "unknown"])
    folder = scratch.scratch_dir(tmp_path / "out")
    zi = index_zip(root / ezip.rel_path, ezip, IndexConfig(), scratch.Preparer(str(folder), cfg))
    inst = zi.instances[0]
    ready = scratch.ScratchReader(folder, str(root), cfg).take(inst)
    assert ready is not None
    scratch.sweep(tmp_path / "out")
    settings = scratch.Preparer(str(folder), cfg).settings
    key = scratch.entry_key(inst.rel_zip, ezip.size, ezip.mtime_ns, inst.member, settings)
    payload = pickle.dumps(ready, protocol=pickle.HIGHEST_PROTOCOL)
    folder.mkdir(parents=True)
    (folder / "pack-1-00000000.bin").write_bytes(
        scratch._HEAD.pack(b"HRS1", key, len(payload)) + payload
    )
    assert scratch.count(tmp_path / "out") == 1
    reader = scratch.ScratchReader(folder, str(root), cfg)
    old = reader.take(inst)
    assert old is not None and reader.taken == 1
    np.testing.assert_array_equal(old.frames[0].array, ready.frames[0].array)
    assert scratch.sweep(tmp_path / "out") == 0
