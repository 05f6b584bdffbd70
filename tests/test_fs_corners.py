"""The file system's odd corners in a datamart: an unreadable batch folder is refused before
anything is written; symlink loops, dangling symlinks, FIFOs, devices and folders named like
exam zips are skipped with an audit row; none of them is opened or hangs the build."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import MakeCfg

from hiroml import pipeline as build
from hiroml.cli.build import exit_code
from hiroml.errors import EXIT_SHRINK, BadInputError, ShrinkRefusedError
from hiroml.ingest.zipio import SafeZip
from hiroml.vocab import AUDIT, Action

BATCH = "CXR-UPDATE-20200516-COMPLETE"


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail the test instead of hanging when the block runs past ``seconds``."""

    def _alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: the build hangs")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_an_unreadable_batch_folder_is_refused_before_anything_is_written(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, _ = tiny_datamart
    dm = tmp_path / "dm"
    shutil.copytree(root, dm)
    locked = dm / BATCH
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "out"
    with pytest.raises(ShrinkRefusedError) as err:
        build.run(make_cfg(dm, out))
    msg = str(err.value)
    assert f"batch folder {locked} cannot be read (Permission denied)" in msg
    assert "nothing was built" in msg
    assert exit_code(err.value) == EXIT_SHRINK
    assert not (out / AUDIT).exists() and not (out / "versions").exists()


def _odd_entries(batch: Path) -> dict[str, str]:
    """Plant the odd corners, named like exam zips; returns name -> expected reason part."""
    made = {
        "LOOP_20200516-100000_H900_XR-CHEST-PA.zip": "symlink that cannot be followed",
        "GONE_20200516-100100_H901_XR-CHEST-PA.zip": "symlink that cannot be followed",
        "PIPE_20200516-100200_H902_XR-CHEST-PA.zip": "a FIFO",
        "ZERO_20200516-100300_H903_XR-CHEST-PA.zip": "a character device",
        "DIRZ_20200516-100400_H904_XR-CHEST-PA.zip": "a folder inside a batch folder",
    }
    loop, gone, pipe, zero, folder = (batch / n for n in made)
    os.symlink(loop.name, loop)
    os.symlink(batch / "nowhere.zip", gone)
    os.mkfifo(pipe)
    os.symlink("/dev/zero", zero)
    folder.mkdir()
    return made


def test_symlinks_fifos_devices_and_folders_named_like_zips_are_skipped_with_a_row(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, _ = tiny_datamart
    dm = tmp_path / "dm"
    shutil.copytree(root, dm)
    made = _odd_entries(dm / BATCH)
    out = tmp_path / "out"
    with _deadline(120):
        build.run(make_cfg(dm, out))
    audit = pd.read_csv(out / AUDIT, dtype=str, keep_default_na=False)
    for name, why in made.items():
        rows = audit[audit["zip"] == name]
        assert len(rows) == 1, f"{name}: {len(rows)} audit rows"
        reason = rows["reason"].iloc[0]
        assert "not a regular file" in reason and why in reason, reason
        assert rows["action"].iloc[0] == Action.SKIPPED


def test_safezip_never_reads_a_fifo_or_a_device(tmp_path: Path) -> None:
    """A zip path swapped for a FIFO or /dev/zero after discovery: refused at once."""
    pipe = tmp_path / "P_20200516-100200_H902_XR.zip"
    os.mkfifo(pipe)
    zero = tmp_path / "Z_20200516-100300_H903_XR.zip"
    os.symlink("/dev/zero", zero)
    loop = tmp_path / "L_20200516-100300_H903_XR.zip"
    os.symlink(loop.name, loop)
    with _deadline(10):
        with pytest.raises(BadInputError, match=f"{pipe.name}: not a regular file"):
            SafeZip(pipe)
        with pytest.raises(BadInputError, match=f"{zero.name}: not a regular file"):
            SafeZip(zero)
        with pytest.raises(BadInputError, match=f"{loop.name}: cannot be opened"):
            SafeZip(loop)


def test_new_zips_that_fail_are_recorded_when_nothing_new_is_published(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    """A week of truncated downloads adds no sample: no version is published, yet the build
    records the zips' error rows and its summary counts them; a re-run stays fast."""
    from hiroml.pipeline.failures import LATEST_BUILD_AUDIT, failed_zips
    from hiroml.store.reader import read_audit
    from hiroml.vocab import STATE_DIR, VERSIONS_DIR

    root, _ = tiny_datamart
    dm = tmp_path / "dm"
    shutil.copytree(root, dm)
    out = tmp_path / "out"
    first = build.run(make_cfg(dm, out))
    assert first.published and first.new_failed_zips == len(failed_zips(read_audit(out)))
    record = out / STATE_DIR / LATEST_BUILD_AUDIT
    # published: the version's audit.csv is the record, byte for byte (copied, not rewritten)
    assert record.read_bytes() == (out / VERSIONS_DIR / first.version / "audit.csv").read_bytes()
    week = dm / "CXR-UPDATE-20200606-COMPLETE"
    week.mkdir()
    good = sorted((dm / BATCH).glob("*.zip"))[0].read_bytes()
    names = [f"NEW{i}_20200606-10000{i}_H95{i}_XR-CHEST-PA.zip" for i in range(3)]
    for name in names:
        (week / name).write_bytes(good[: len(good) // 3])  # a truncated download

    second = build.run(make_cfg(dm, out))
    assert not second.published and second.version == first.version
    assert second.new_failed_zips == 3 and second.failures_record == str(record)
    assert f"  3 new zips failed (see {record})" in second.lines()
    recorded = pd.read_csv(record, dtype=str, keep_default_na=False)
    for name in names:
        mine = recorded[recorded["zip"] == name]
        assert len(mine) >= 1 and (mine["action"] == Action.ERROR).all(), name
    assert not set(names) & set(read_audit(out)["zip"])  # the version's audit is unchanged

    versions = sorted(p.name for p in (out / VERSIONS_DIR).iterdir())
    third = build.run(make_cfg(dm, out))
    assert third.unchanged and not third.published
    assert sorted(p.name for p in (out / VERSIONS_DIR).iterdir()) == versions
