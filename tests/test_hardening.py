"""Hardening, tested on whole builds: the hostile corpus (tests/hostile.py), faults (full
disk, read-only datamart), determinism and privacy. Kills at named points of a build are in
tests/test_versions.py.

Every build here runs on the tiny synthetic datamart (seconds); the hostile corpus is added
to a copy of it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import hostile
import numpy as np
import pandas as pd
import pytest
from conftest import MakeCfg

from hiroml import pipeline as build
from hiroml.config import IndexConfig
from hiroml.errors import EXIT_NO_SPACE, DiskFullError
from hiroml.ingest.discover import discover
from hiroml.ingest.index import index_zip
from hiroml.store.shards import read_sample
from hiroml.store.verify import verify

#: index.max_members for the hostile builds: above every normal zip of the tiny datamart
#: (51 members at most), below the member-count zip of the corpus.
MAX_MEMBERS = 60
ACTIONS_FOR_BAD_INPUT = {"error", "skipped", "dropped"}


def _cli(datamart: Path, out: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hiroml",
        f"paths.datamart={datamart}",
        f"paths.output={out}",
        "progress=false",
        "executor.workers=1",
        f"index.max_members={MAX_MEMBERS}",
        *overrides,
    ]


#: ``python -m hiroml`` that reports its peak resident memory on stderr when it ends.
_MEASURED = (
    "import resource, runpy, sys\n"
    "sys.argv = ['hiroml', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('hiroml', run_name='__main__')\n"
    "finally:\n"
    "    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "    print(f'peak-rss-kib={kib}', file=sys.stderr)\n"
)


def _measured(cmd: list[str]) -> list[str]:
    assert cmd[1:3] == ["-m", "hiroml"]
    return [cmd[0], "-c", _MEASURED, *cmd[3:]]


def _peak_rss(stderr: str) -> int:
    """Peak resident memory (bytes) printed by a :data:`_MEASURED` run (Linux: KiB)."""
    line = next(x for x in stderr.splitlines() if x.startswith("peak-rss-kib="))
    return int(line.partition("=")[2]) * 1024


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with (mode, size, mtime_ns)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _frame(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "manifest.parquet")


@pytest.fixture(scope="module")
def normal(
    tiny_datamart: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An uninterrupted build of the tiny datamart, through the command line."""
    root, _ = tiny_datamart
    out = tmp_path_factory.mktemp("normal") / "out"
    done = subprocess.run(_measured(_cli(root, out)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (out.parent / "peak-rss").write_text(str(_peak_rss(done.stderr)))
    return out


@pytest.fixture(scope="module")
def hostile_dm(
    tiny_datamart: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, hostile.Corpus]]:
    """A copy of the tiny datamart with the hostile corpus added, then made read-only
    (chmod a-w; root ignores it, so the tests also compare snapshots of the folder)."""
    root, _ = tiny_datamart
    dm = tmp_path_factory.mktemp("hostile") / "datamart"
    shutil.copytree(root, dm)
    corpus = hostile.add_hostile(dm, seed=0, max_members=MAX_MEMBERS)
    for p in [dm, *dm.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield dm, corpus
    for p in [dm, *dm.rglob("*")]:  # let pytest clean its temporary folder
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture(scope="module")
def hostile_build(
    hostile_dm: tuple[Path, hostile.Corpus], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str], dict[str, Any]]:
    """The build of the hostile datamart through the command line (its stderr kept), with
    snapshots of the datamart taken before and after."""
    dm, _ = hostile_dm
    out = tmp_path_factory.mktemp("hostile-build") / "out"
    before = _snapshot(dm)
    done = subprocess.run(_measured(_cli(dm, out)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out, done, {"before": before, "after": _snapshot(dm)}


# --------------------------------------------------------------------------- hostile corpus


def test_hostile_build_is_the_normal_build_plus_one_audit_row_per_input(
    normal: Path,
    hostile_dm: tuple[Path, hostile.Corpus],
    hostile_build: tuple[Path, subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, corpus = hostile_dm
    out, _, _ = hostile_build
    assert verify(out) == []
    ref = _frame(normal)
    got = _frame(out)
    hostile_zips = {rel.partition("/")[2] for rel in [h.rel for h in corpus.hostile]}
    hostile_zips |= {rel.partition("/")[2] for rel in corpus.valid}
    from_normal = got[[not set(z) & hostile_zips for z in got["source_zips"]]]
    cols = ["sample_key", "data_hash", "split", "patient_id", "exam_key", "shape"]
    pd.testing.assert_frame_equal(
        ref[cols].reset_index(drop=True), from_normal[cols].reset_index(drop=True)
    )
    # no exam lost: every normal sample is there with the same pixels and split
    assert set(ref["sample_key"]) == set(from_normal["sample_key"])

    audit = pd.read_csv(out / "audit.csv", dtype=str, keep_default_na=False)
    assert len(corpus.hostile) >= 20
    for h in corpus.hostile:
        batch, _, name = h.rel.partition("/")
        rows = audit[(audit["batch"] == batch) & (audit["zip"] == name)]
        bad = rows[rows["action"].isin(ACTIONS_FOR_BAD_INPUT)]
        assert any(h.reason in r for r in bad["reason"]), (h.kind, rows.values.tolist())
        if h.kind != "nan_positions":  # the other 11 slices of that series are good
            assert not any(name in z for z in got["source_zips"]), h.kind

    # the odd but valid exams are built: unicode and spaces in the names, zero spacing,
    # empty window
    assert len(corpus.valid) == 3
    for rel in corpus.valid:
        name = rel.partition("/")[2]
        rows = got[[name in z for z in got["source_zips"]]]
        assert len(rows) == 1, rel
        arr, meta = read_sample(out / rows["shard"].iloc[0], rows["sample_key"].iloc[0])
        assert np.isfinite(arr.astype(np.float32)).all() and arr.shape == (512, 512)
        if hostile.UNICODE_DESCRIPTION in name:
            assert rows["description"].iloc[0] == hostile.UNICODE_DESCRIPTION
            assert meta["member"] == "série 1/ímage 1 胸.dcm"
        elif meta["pixel_spacing"] is None:  # zero spacing: taken for unknown, never 0
            assert meta["spacing_after"] is None
        else:  # an empty (0028,1050) Window Center: the percentile fallback
            assert meta["lut"].startswith("percentile"), meta["lut"]

    # the NaN-position slice is left out of its volume
    nan = next(h for h in corpus.hostile if h.kind == "nan_positions")
    vol = got[[nan.rel.partition("/")[2] in z for z in got["source_zips"]]]
    assert len(vol) == 1 and len(vol["sop_uids"].iloc[0]) == 11


def test_read_only_datamart_is_never_written(
    hostile_build: tuple[Path, subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, _, snaps = hostile_build
    assert snaps["before"] == snaps["after"]
    assert len(snaps["before"]) > 60


def test_the_console_shows_hiroml_lines_only_and_the_run_log_the_rest(
    hostile_build: tuple[Path, subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    """A person watching a build over the hostile corpus sees hiroml's own warnings, one line
    per problem, and the summary: no third-party message, no traceback (the build handles
    every bad input and writes its audit row). Those go to the run log."""
    out, done, _ = hostile_build
    console = done.stdout + done.stderr
    assert "Traceback" not in console
    lines = [x for x in done.stderr.splitlines() if not x.startswith("peak-rss-kib=")]
    assert lines, "the hostile corpus gives hiroml warnings"
    assert all(x.startswith(("WARNING hiroml", "ERROR hiroml")) for x in lines), lines
    assert "pydicom" not in done.stderr.replace("pydicom-data", "")
    assert "hiroml" in done.stdout and "errors" in done.stdout  # the summary
    audit = pd.read_csv(out / "audit.csv", keep_default_na=False)
    undecodable = audit[audit["reason"].str.contains("cannot decode pixel data")]
    assert len(undecodable) >= 1 and set(undecodable["action"]) == {"error"}
    (run_log,) = (out / ".hiroml" / "runs").glob("*/*.log")
    text = run_log.read_text()
    assert "[pydicom." in text and "Traceback" in text


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_hostile_build_peak_memory_is_that_of_the_normal_build(
    normal: Path,
    hostile_build: tuple[Path, subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    """Both builds run in one process (executor.workers=1); the hostile one holds a 256 MiB
    zip bomb: inflated (index.max_ratio lifted) it adds about 95 MiB to the peak of the whole
    build here (the index stage peaks lower than conversion), refused it adds about 5 MiB."""
    _, done, _ = hostile_build
    normal_peak = int((normal.parent / "peak-rss").read_text())
    hostile_peak = _peak_rss(done.stderr)
    assert hostile_peak < normal_peak + 32 * 1024**2, (normal_peak, hostile_peak)


def test_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    """Python's peak allocation while indexing a 256 MiB bomb stays at a few MiB."""
    path = tmp_path / "7100_20200601-000000_B1_XR-CHEST-PA.zip"
    hostile.ratio_bomb(path)
    assert path.stat().st_size < 2 * 1024**2
    (tmp_path / "CXR-UPDATE-20200601-COMPLETE").mkdir()
    target = tmp_path / "CXR-UPDATE-20200601-COMPLETE" / path.name
    path.rename(target)
    (ezip,) = discover(tmp_path).zips
    tracemalloc.start()
    try:
        zi = index_zip(target, ezip, IndexConfig())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert zi.instances == ()
    assert "possible zip bomb" in zi.problems[0].reason
    assert peak < 8 * 1024**2, peak
    # a member whose header lies about its size is cut off at the declared size
    liar = target.with_name("7101_20200601-000000_B2_XR-CHEST-PA.zip")
    liar.write_bytes(hostile.lying_size(declared=1000, real=64 * 1024**2))
    ezip = next(z for z in discover(tmp_path).zips if z.file_name == liar.name)
    tracemalloc.start()
    try:
        zi = index_zip(liar, ezip, IndexConfig())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "inflates to 1001 bytes, its header says 1000" in zi.problems[0].reason
    assert peak < 8 * 1024**2, peak


def test_an_unforeseen_error_on_one_member_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """index_zip never raises for one member, whatever pydicom does."""
    import hiroml.ingest.index

    batch = tmp_path / "CXR-UPDATE-20200601-COMPLETE"
    batch.mkdir()
    data = hostile.dicom_bytes(hostile.make_cxr(990, np.random.default_rng(0)))
    path = batch / "7990_20200601-000000_B9_XR-CHEST-PA.zip"
    path.write_bytes(hostile.zip_bytes([("a.dcm", data), ("b.dcm", data[:-7])]))
    (ezip,) = discover(tmp_path).zips

    def boom(ds: Any, **kw: Any) -> Any:
        raise RecursionError("deep")

    monkeypatch.setattr(hiroml.ingest.index, "instance_from_dataset", boom)
    zi = index_zip(path, ezip, IndexConfig())
    assert [p.member for p in zi.problems] == ["a.dcm", "b.dcm"]
    assert "unreadable DICOM (RecursionError: deep)" in zi.problems[0].reason
    # a.dcm met our bug (its traceback kept, for the run log); b.dcm is bad input (truncated)
    assert (
        "Traceback" in zi.problems[0].internal and "RecursionError: deep" in zi.problems[0].internal
    )
    assert zi.problems[1].internal == ""


@pytest.mark.parametrize("content", [b"this is not a spreadsheet\n", b"zip"])
def test_remap_sheet_that_is_not_a_spreadsheet_stops_the_build(
    tiny_datamart: tuple[Path, dict[str, Any]], tmp_path: Path, content: bytes
) -> None:
    root, _ = tiny_datamart
    dm = tmp_path / "dm"
    shutil.copytree(root, dm)
    sheet = dm / "C19_HIRO_LDS_REMAP_PUB-LIST.xlsx"
    if content == b"zip":  # a zip archive, but no workbook
        content = hostile.zip_bytes([("notes.txt", b"old id -> new id\n")])
    sheet.write_bytes(content)
    out = tmp_path / "out"
    done = subprocess.run(_cli(dm, out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert (
        "hiroml-build: C19_HIRO_LDS_REMAP_PUB-LIST.xlsx: cannot be read as an xlsx workbook"
        in done.stderr
    )
    assert "Traceback" not in done.stderr
    assert not (out / "manifest.parquet").exists()


# --------------------------------------------------------------------------- faults


def _enospc(*args: Any, **kwargs: Any) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["shards", "manifest"])
def test_full_disk_gives_a_clear_error_and_keeps_the_previous_output(
    normal: Path,
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    """ENOSPC simulated (in-process) where the build writes shards or the manifest."""
    root, _ = tiny_datamart
    out = tmp_path / "out"
    shutil.copytree(normal, out)
    before = (out / "manifest.parquet").read_bytes()
    if where == "shards":
        from hiroml.store.shards import ShardWriter

        monkeypatch.setattr(ShardWriter, "add", _enospc)
    else:
        import hiroml.store.tables

        monkeypatch.setattr(hiroml.store.tables.pq, "write_table", _enospc)
    # cxr.dtype changes what is stored: every radiograph task is redone
    cfg = make_cfg(root, out, "cxr.dtype=uint8", f"index.max_members={MAX_MEMBERS}")
    with pytest.raises(
        DiskFullError, match=r"no space left on .*; the previous version \S+ is intact"
    ):
        build.run(cfg)
    assert (out / "manifest.parquet").read_bytes() == before
    assert verify(out) == []


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0


def test_full_tmpfs_gives_a_clear_error_and_keeps_the_previous_output(
    tiny_datamart: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A real full disk: a 32 MiB tmpfs, filled after a first build, then a build with
    another radiograph size (needs new shards). Skipped where tmpfs cannot be mounted."""
    root, _ = tiny_datamart
    disk = tmp_path / "tmpfs"
    if not _mount_tmpfs(disk, "32m"):
        pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN)")
    try:
        out = disk / "out"
        first = subprocess.run(_cli(root, out), capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        before = (out / "manifest.parquet").read_bytes()
        free = shutil.disk_usage(disk).free
        with open(disk / "filler", "wb") as fh:
            fh.truncate(0)
            fh.write(b"\0" * max(free - 256 * 1024, 0))
        second = subprocess.run(
            _cli(root, out, "cxr.size=[600,600]", "cxr.dtype=uint16"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == EXIT_NO_SPACE, second.stderr
        assert f"hiroml-build: no space left on tmpfs at {disk} (" in second.stderr
        assert "Traceback" not in second.stderr
        assert (out / "manifest.parquet").read_bytes() == before
        assert verify(out) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


# --------------------------------------------------------------------------- determinism


def _shard_contents(out: Path) -> dict[str, Any]:
    """{sample key: (array bytes, dtype, shape, meta)} and every shard's attributes."""
    found: dict[str, Any] = {}
    m = _frame(out)
    for key, shard in zip(m["sample_key"], m["shard"], strict=True):
        arr, meta = read_sample(out / shard, key)
        found[key] = (arr.tobytes(), str(arr.dtype), arr.shape, json.dumps(meta, sort_keys=True))
    for shard in sorted(set(m["shard"])):
        with h5py.File(out / shard, "r") as f:
            found[shard] = {k: str(v) for k, v in f.attrs.items()}
    return found


def test_builds_are_deterministic_whatever_the_worker_count(
    normal: Path, tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, _ = tiny_datamart
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"w{workers}"
        build.run(
            make_cfg(
                root,
                outs[workers],
                f"executor.workers={workers}",
                f"index.max_members={MAX_MEMBERS}",
            )
        )
    ref = (normal / "manifest.parquet").read_bytes()
    for out in outs.values():
        assert (out / "manifest.parquet").read_bytes() == ref
        assert (out / "patients.parquet").read_bytes() == (normal / "patients.parquet").read_bytes()
        assert (out / "audit.csv").read_bytes() == (normal / "audit.csv").read_bytes()
    a, b = _shard_contents(outs[1]), _shard_contents(outs[2])
    assert a.keys() == b.keys() and len(a) > 20
    for key in a:
        assert a[key] == b[key], key
    assert a == _shard_contents(normal)


# --------------------------------------------------------------------------- privacy


def _strings_in_h5(path: Path) -> list[str]:
    """Every name, attribute name and value, and string dataset of an HDF5 file."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        found.append(name)
        for k, v in obj.attrs.items():
            found.extend([k, str(v)])
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "OSU":
            found.extend(str(v) for v in np.asarray(obj[()]).ravel())

    with h5py.File(path, "r") as f:
        for k, v in f.attrs.items():
            found.extend([k, str(v)])
        f.visititems(visit)
    return found


def _decoded_text(path: Path) -> str:
    """What a reader sees in an output file: parquet cells, HDF5 strings, SQLite rows."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path).astype(str).to_csv()
    if path.suffix == ".h5":
        return "\n".join(_strings_in_h5(path))
    if path.suffix == ".sqlite":
        with sqlite3.connect(path) as db:
            return "\n".join(db.iterdump())
    return path.read_bytes().decode("utf-8", "replace")


#: The manifest columns (DESIGN.md section 4 and the pipeline's extras): a new column must
#: be added here on purpose, after checking that it carries no identifying header value.
ALLOWED_COLUMNS = {
    "sample_key", "shard", "modality", "patient_id", "source_patient_id", "patient_group",
    "split", "exam_key", "hiro_id", "exam_time", "description", "batch", "source_zips",
    "series_uid", "sop_uid", "view", "age_years", "sex", "shape", "size_xyz", "spacing_xyz",
    "origin_xyz", "direction", "shard_sha256", "data_hash", "sop_uids", "pixel_hashes",
    "batches", "days_from_encounter", "orphan", "scale", "ct_decisions",
    "signature", "near_duplicates",  # derived from pixels and sample keys
    "stitched_series", "seams_mm", "seam_slices",  # UIDs and geometry of a stitched CT
    "frame", "for_processing",  # a frame number and a flag, computed
}  # fmt: skip
#: The shard metadata keys a sample may carry (hiroml.pipeline.worker: _cxr_meta / _ct_meta).
ALLOWED_META = {
    "exam_key", "patient_id", "modality", "sop_uid", "series_uid", "view", "view_source",
    "original_shape", "pixel_spacing", "spacing_after", "photometric", "bits_stored",
    "transfer_syntax", "lut", "inverted", "scale", "exam_time", "description", "source_zip",
    "member", "series_description", "kernel", "size_xyz", "spacing_xyz", "origin_xyz",
    "direction", "slice_thickness", "resampled", "decisions", "n_source_slices",
    "source_zips", "data_hash", "decoder", "decode_reduction",
    "stitched_series", "seams_mm", "seam_slices",  # UIDs and geometry of a stitched CT
    # frame numbers, a flag and the padding note (attribute name, value, pixel count)
    "frame", "n_frames", "for_processing", "padding",
}  # fmt: skip


def test_outputs_and_logs_hold_no_private_header_value(
    hostile_dm: tuple[Path, hostile.Corpus],
    hostile_build: tuple[Path, subprocess.CompletedProcess[str], dict[str, Any]],
    tiny_datamart: tuple[Path, dict[str, Any]],
) -> None:
    out, done, _ = hostile_build
    _, corpus = hostile_dm
    _, truth = tiny_datamart
    private = [*truth["private_strings"], hostile.INSTITUTION, hostile.BIRTH_DATE]
    names = [hostile.PATIENT_NAME, *hostile.PATIENT_NAME.split("^")]  # all >= 4 letters
    assert len(private) >= 6
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"manifest.parquet", "audit.csv", "report.html", "index.sqlite"} <= {
        p.name for p in files
    }
    logs = list((out / ".hiroml" / "runs").glob("*/*.log"))
    assert logs and all(p in files for p in logs)
    for path in files:
        raw = path.read_bytes()
        text = _decoded_text(path)
        for s in [*private, *names]:
            for part in {s, *(p for p in s.split("^") if len(p) >= 4)}:
                assert part.encode() not in raw, (path, part)
                assert part not in text, (path, part)
    for s in names:
        assert s not in done.stderr and s not in done.stdout
    # the odd but valid hostile exams, built, did carry that name, birth date and institution
    m = _frame(out)
    built_ids = {Path(rel).name.split("_")[0] for rel in corpus.valid}
    assert built_ids <= set(m["patient_id"])
    # only allow-listed header fields: manifest columns and shard metadata keys
    assert set(m.columns) <= ALLOWED_COLUMNS, set(m.columns) - ALLOWED_COLUMNS
    assert not [c for c in m.columns if "birth" in c.lower() or "name" in c.lower()]
    for key, shard in zip(m["sample_key"], m["shard"], strict=True):
        _, meta = read_sample(out / shard, key)
        assert set(meta) <= ALLOWED_META, set(meta) - ALLOWED_META


def test_a_bug_in_a_worker_is_counted_apart_from_bad_input_with_its_traceback(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected exception while an exam converts (a hiroml bug, not bad input) still
    costs only that exam (an ``error`` row), but its traceback reaches the run log and the
    summary counts it apart: "internal errors: N - please report"."""
    from hiroml.errors import DecodeError
    from hiroml.pipeline import worker
    from hiroml.vocab import Modality

    root, _ = tiny_datamart
    convert = worker._convert_exam
    failed: dict[str, str] = {}

    def flaky(exam: Any, *args: Any) -> Any:
        if exam.modality is Modality.CT and not failed:
            failed[exam.exam_key] = "bug"
            raise KeyError("a bug of ours")
        if exam.modality is Modality.CT and len(failed) == 1:
            failed[exam.exam_key] = "bad input"
            raise DecodeError("a damaged slice")
        return convert(exam, *args)

    monkeypatch.setattr(worker, "_convert_exam", flaky)
    with caplog.at_level("INFO", logger="hiroml"):
        summary = build.run(make_cfg(root, tmp_path / "out"))
    assert sorted(failed.values()) == ["bad input", "bug"]
    assert summary.internal_errors == 1 and summary.errors >= 2
    assert any("internal errors: 1 - please report" in line for line in summary.lines())
    bug = next(k for k, v in failed.items() if v == "bug")
    # one line for the console (ERROR), the traceback for the run log (INFO)
    logged = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert [r.levelname for r in logged] == ["ERROR", "INFO"]
    assert all(bug in r.getMessage() for r in logged)
    assert "Traceback" not in logged[0].getMessage()
    assert "Traceback" in logged[1].getMessage()
    assert "KeyError: 'a bug of ours'" in logged[1].getMessage()
    audit = pd.read_csv(tmp_path / "out" / "audit.csv", dtype=str, keep_default_na=False)
    rows = audit[audit["reason"].str.contains("a bug of ours|a damaged slice")]
    assert set(rows["action"]) == {"error"} and len(rows) >= 2
