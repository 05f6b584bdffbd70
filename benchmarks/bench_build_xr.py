"""Radiograph-only build modes of ``bench_build`` (issues 14 and 16): the whole build beside a
loop that only reads each zip and decodes each image with pydicom, over the same zips.

``xr``: one datamart per transfer syntax (uncompressed, JPEG lossless, JPEG 2000) of
full-size chest radiographs (``--rows`` x ``--cols``, 12 of 16 bits), one image per zip, one
patient per zip, in one weekly batch. ``small-zips``: ``-n`` single-image zips of 256 x 256
uncompressed CR in six weekly batches; also the re-run with nothing new. Per zip (ms):

- ``build``: ``hiroml-build`` with 1 worker, as a subprocess, start-up to report;
- ``decode``: :class:`zipfile.ZipFile` read + ``pydicom.dcmread(...).pixel_array``, the peer;
- ``ratio`` = build / decode (issue 14's goal: <= 0.8 overall, <= 1.0 uncompressed);
- ``--datamart`` also prints ``+ last week``: the build once the last batch folder arrives
  after a build of the others, per new zip (the weekly case: only the new zips are read and
  converted, the tables, diff and report cover the whole dataset);
- small-zips also prints ``floor`` (:func:`floor_loop`: the decode loop plus the output work
  no build can skip: resize, float16, one HDF5 write and the two hashes per image) and
  ``build / floor``, what hiroml's own bookkeeping adds.

The datamarts are generated here with pydicom (seeded; :mod:`bench_cxr`'s images) under a
temporary folder. Develop at small sizes on a shared machine; the lead runs the full tables:

    python benchmarks/bench_build.py --mode xr --xr-uncompressed 60 --xr-j2k 20
    python benchmarks/bench_build.py --mode small-zips -n 4000
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from io import BytesIO
from pathlib import Path

import pydicom
from bench_cxr import SYNTAXES, dicom_bytes, radiograph

XR_SYNTAXES = ("explicit-le", "jpeg-lossless", "j2k-lossless")


def _patient(data: bytes, pid: int, when: dt.datetime) -> bytes:
    """The image with its own patient, study and date (one exam per zip)."""
    ds = pydicom.dcmread(BytesIO(data))
    ds.PatientID = str(pid)
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.StudyDate, ds.StudyTime = f"{when:%Y%m%d}", f"{when:%H%M%S}"
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_datamart(root: Path, images: list[bytes], weeks: int) -> list[Path]:
    """One zip per image in ``weeks`` weekly COMPLETE batches, laid out as the datamart is."""
    paths = []
    for i, data in enumerate(images):
        day = dt.datetime(2020, 5, 9) + dt.timedelta(weeks=i % weeks)
        batch = root / f"CXR-UPDATE-{day:%Y%m%d}-COMPLETE"
        batch.mkdir(parents=True, exist_ok=True)
        when = day - dt.timedelta(days=3, hours=i % 24)
        pid = 1000 + i
        path = batch / f"{pid}_{when:%Y%m%d-%H%M%S}_A{i:05d}_XR-CHEST-PA.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
            z.writestr(f"1/{i}.dcm", _patient(data, pid, when))
        paths.append(path)
    return paths


def decode_loop(paths: list[Path]) -> float:
    """Seconds to read every zip and decode every member with pydicom (the peer)."""
    t = time.perf_counter()
    for path in paths:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                _ = pydicom.dcmread(BytesIO(z.read(name))).pixel_array
    return time.perf_counter() - t


def floor_loop(paths: list[Path], out: Path, size: tuple[int, int] = (512, 512)) -> float:
    """Seconds for the work any build that stores these images must do beyond the decode
    loop, with nothing else: the decode loop, then each image scaled to [0, 1] and resized
    to the output size (:func:`hiroml.cxr.pixels.resize`), cast to float16, written as one chunk of
    one HDF5 dataset and hashed (:func:`hiroml.store.shards.array_hash`, the manifest's
    ``data_hash``); then the file's fsync and SHA-256 (``shard_sha256``). No index, no
    decisions, no tables, no report: the build's "floor" on this machine."""
    import h5py
    import numpy as np

    from hiroml.cxr import pixels as cxr_pixels
    from hiroml.store import shards

    t = time.perf_counter()
    with h5py.File(out, "w") as f:
        ds = f.create_dataset(
            "x", shape=(0, *size), maxshape=(None, *size), chunks=(1, *size), dtype=np.float16
        )
        row = 0
        for path in paths:
            with zipfile.ZipFile(path) as z:
                for name in z.namelist():
                    a = pydicom.dcmread(BytesIO(z.read(name))).pixel_array.astype(np.float32)
                    lo, hi = float(a.min()), float(a.max())
                    a = (a - lo) / (hi - lo or 1.0)
                    small, _ = cxr_pixels.resize(a, size, keep_aspect=True)
                    stored, _ = cxr_pixels.to_storage(small, "float16")
                    ds.resize(row + 1, axis=0)
                    ds.id.write_direct_chunk((row, 0, 0), np.ascontiguousarray(stored).data)
                    shards.array_hash(stored)
                    row += 1
    with open(out, "rb") as fh:
        os.fsync(fh.fileno())
    shards.shard_sha256(out)
    return time.perf_counter() - t


def whole_build(root: Path, out: Path) -> float:
    """Seconds for ``hiroml-build`` (1 worker) as a new process, start-up to report; the
    build's "written:" summary line is echoed, to show what it converted."""
    cmd = [sys.executable, "-c", "from hiroml.cli.build import main; main()"]
    cmd += [f"paths.datamart={root}", f"paths.output={out}", "executor.workers=1"]
    t = time.perf_counter()
    # cwd: not this checkout, whose hiroml/ would come before --build-with's on sys.path
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=out.parent)
    wall = time.perf_counter() - t
    written = [x.strip() for x in (done.stdout + done.stderr).splitlines() if "written:" in x]
    shown = written or [x.strip() for x in done.stdout.splitlines() if "up to date" in x]
    print(f"  {root.name}: {shown[-1] if shown else '(no summary line)'}", flush=True)
    return wall


def build_with(checkout: Path) -> None:
    """Run every later build subprocess on the hiroml of ``checkout`` (a previous release's
    root folder): its package and its configs come first on ``PYTHONPATH``."""
    if not (checkout / "hiroml" / "__init__.py").is_file():
        raise SystemExit(f"--build-with {checkout}: no hiroml/__init__.py there")
    conf = checkout / "hiroml" / "conf"
    if not conf.exists() and (checkout / "configs").is_dir():
        conf.symlink_to(checkout / "configs")  # how the package ships them (hiroml.conf)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])]
    )


def run_existing(root: Path) -> None:
    """The small-zips table over an existing datamart's zips (first build, then a re-run)."""
    paths = sorted(root.rglob("*.zip"))
    decode_loop(paths[:1])
    decode = decode_loop(paths)
    with tempfile.TemporaryDirectory() as tmp:
        floor = floor_loop(paths, Path(tmp) / "floor.h5")
        build = whole_build(root, Path(tmp) / "out")
        again = whole_build(root, Path(tmp) / "out")
        week, new = one_more_week(root, Path(tmp))
    print(f"{'datamart':16}{'zips':>6}{'build ms':>10}{'decode ms':>10}{'ratio':>7}")
    _row(root.name[:16], len(paths), build, decode)
    _row("  re-run", len(paths), again, decode)
    _floor_rows(len(paths), floor, build, decode)
    if new:
        _row("  + last week", new, week, decode * new / len(paths))


def one_more_week(root: Path, tmp: Path) -> tuple[float, int]:
    """The weekly case: a build of every batch folder of ``root`` but the last, then the
    build once the last one has arrived (timed); its seconds and the new zips. The row it
    makes is per new zip, beside the decode loop over those zips."""
    batches = sorted(p for p in root.iterdir() if p.is_dir())
    if len(batches) < 2:
        return 0.0, 0
    dm = tmp / "weekly"
    dm.mkdir()
    for b in batches[:-1]:
        (dm / b.name).symlink_to(b.resolve())
    whole_build(dm, tmp / "out-weekly")
    (dm / batches[-1].name).symlink_to(batches[-1].resolve())
    return whole_build(dm, tmp / "out-weekly"), len(list(batches[-1].rglob("*.zip")))


def _row(name: str, n: int, build: float, decode: float) -> None:
    print(
        f"{name:16}{n:6d}{1000 * build / n:10.1f}{1000 * decode / n:10.1f}{build / decode:7.2f}",
        flush=True,
    )


def _floor_rows(n: int, floor: float, build: float, decode: float) -> None:
    """The floor beside the decode loop, and the build against the floor: what hiroml's own
    bookkeeping (index, decisions, tables, report) adds to the work it cannot skip."""
    _row("  floor", n, floor, decode)
    print(f"{'  build / floor':16}{'':6}{'':10}{'':10}{build / floor:7.2f}", flush=True)


def run_xr(tmp: Path, rows: int, cols: int, n_plain: int, n_j2k: int) -> None:
    """Issue 14's side-by-side table for full-size radiographs."""
    print(f"{'datamart':16}{'zips':>6}{'build ms':>10}{'decode ms':>10}{'ratio':>7}")
    totals = [0, 0.0, 0.0]
    for name in XR_SYNTAXES:
        n = n_j2k if name.startswith("j2k") else n_plain
        images = [dicom_bytes(radiograph(i, rows, cols), SYNTAXES[name]) for i in range(n)]
        paths = write_datamart(tmp / name, images, weeks=1)
        decode_loop(paths[:1])  # warm-up: imports and codecs, as the build's start-up has
        decode = decode_loop(paths)
        build = whole_build(tmp / name, tmp / f"out-{name}")
        _row(name, n, build, decode)
        totals = [totals[0] + n, totals[1] + build, totals[2] + decode]
    _row("all", int(totals[0]), totals[1], totals[2])


def run_small_zips(tmp: Path, n: int) -> None:
    """Issue 16's many-small-zips table: N single-image 256 x 256 CR zips in six batches."""
    # one seeded radiograph each: copies of one image would all be near duplicates of each
    # other, one patient group for the whole datamart, which no real datamart is
    images = [dicom_bytes(radiograph(i, 256, 256), SYNTAXES["explicit-le"]) for i in range(n)]
    paths = write_datamart(tmp / "small", images, weeks=6)
    decode_loop(paths[:1])
    decode = decode_loop(paths)
    floor = floor_loop(paths, tmp / "floor.h5")
    build = whole_build(tmp / "small", tmp / "out-small")
    again = whole_build(tmp / "small", tmp / "out-small")
    print(f"{'datamart':16}{'zips':>6}{'build ms':>10}{'decode ms':>10}{'ratio':>7}")
    _row("small-zips", n, build, decode)
    _row("  re-run", n, again, decode)
    _floor_rows(n, floor, build, decode)
