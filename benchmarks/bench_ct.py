"""CT volume build speed: hiroml from zip bytes versus SimpleITK and dcm2niix from a folder.

Builds in code a synthetic chest CT series (default 300 slices of 512 x 512, int16, a body
ellipse with lungs plus noise, so deflate compresses it about as much as real CT), zips it
(stdlib zipfile, deflate level 6), then measures, each in a fresh process (peak RSS above the
process's baseline after imports and after the input is loaded):

- ``hiroml``: zip bytes -> :class:`hiroml.ingest.zipio.SafeZip` (ISA-L inflate, CRC check) ->
  :func:`hiroml.ct.convert.convert_exam` (header selection, pydicom parse, pixels copied into one
  preallocated int16 volume, sort along the normal, duplicate / spacing / tilt checks). The
  header records (:class:`Instance`) come from the index stage and are built beforehand,
  untimed.
- the same split into its two shares: inflating the members, and converting the inflated
  bytes (the latter's peak memory includes the inflated members it is given).
- ``pydicom+stack``: zip bytes -> zipfile -> dcmread -> pixel_array -> modality LUT ->
  np.stack (the naive path).
- ``unzip``: zip bytes -> files in a folder (what the two reference tools need first).
- ``sitk``: SimpleITK ``ImageSeriesReader`` on the unzipped folder.
- ``dcm2niix``: ``dcm2niix -z n`` on the unzipped folder (when on PATH).

Run: ``python benchmarks/bench_ct.py [--slices 300] [--size 512] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

ZIP_NAME = "1234_20200508-105300_A002_CT-CHEST-WO.zip"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_zip(n: int, size: int, seed: int = 0) -> bytes:
    """A zipped CT series of ``n`` slices of ``size`` x ``size``."""
    from ct_factory import SeriesSpec, make_slice, orientation_for, to_bytes

    rng = np.random.default_rng(seed)
    spec = SeriesSpec(n=n, rows=size, cols=size, pixel_spacing=(0.7, 0.7), step=1.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    body = (xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1
    iop = orientation_for(0.0)
    noise = rng.normal(0, 12, (2 * size, 2 * size)).astype(np.float32)  # windows of it per slice
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for k in range(n):
            r = 0.12 + 0.05 * np.sin(k / n * np.pi)
            lungs = ((np.abs(xx) - 0.2) / r) ** 2 + (yy / (1.6 * r)) ** 2 < 1
            hu = np.where(body, 40.0, -1000.0)
            hu[lungs & body] = -850.0
            oy, ox = (k * 37) % size, (k * 61) % size
            hu += noise[oy : oy + size, ox : ox + size]
            ds = make_slice(
                spec,
                ipp=(-180.0, -180.0, -300.0 + k * spec.step),
                iop=iop,
                index=k,
                slope=1.0,
                intercept=-1024.0,
                rng=rng,
                hu=np.round(hu),
            )
            # shuffled member order, as zips do not promise any
            zf.writestr(f"series1/IM{(k * 7919) % n:05d}.dcm", to_bytes(ds))
    return buf.getvalue()


def _instances(zip_bytes: bytes) -> list[Any]:
    """The index stage's header records (not timed)."""
    import pydicom
    from ct_factory import to_instance

    out = []
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        for name in zf.namelist():
            ds = pydicom.dcmread(io.BytesIO(zf.read(name)), stop_before_pixels=True)
            ds.PixelData = b""  # header only; marks has_pixels
            out.append(to_instance(ds, zip_name=ZIP_NAME, member=name))
    return out


# ----------------------------------------------------------------------------- methods


def run_hiroml(zip_bytes: bytes, folder: str) -> tuple[float, str]:
    import datetime as dt

    from hiroml.config import CtConfig
    from hiroml.ct import convert as ct_convert
    from hiroml.ingest.zipio import SafeZip
    from hiroml.records import Exam
    from hiroml.vocab import Modality

    insts = _instances(zip_bytes)
    exam = Exam(
        exam_key="bench", modality=Modality.CT, patient_id="1234", source_patient_id="1234",
        hiro_id="A002", time=dt.datetime(2020, 5, 8), description="CT", pediatric=False,
        batch="b", zips=(ZIP_NAME,), instances=tuple(insts),
    )  # fmt: skip
    t0 = time.perf_counter()
    with SafeZip(zip_bytes) as z:
        vols, problems = ct_convert.convert_exam(exam, lambda inst: z.read(inst.member), CtConfig())
    dt_s = time.perf_counter() - t0
    assert not problems and len(vols) == 1, problems
    v = vols[0]
    return dt_s, f"{v.size_xyz} {v.array.dtype}"


def run_hiroml_inflate(zip_bytes: bytes, folder: str) -> tuple[float, str]:
    """The inflate share of ``run_hiroml``: SafeZip.read of every member."""
    from hiroml.ingest.zipio import SafeZip

    t0 = time.perf_counter()
    with SafeZip(zip_bytes) as z:
        n = sum(len(z.read(m)) for m in z.members())
    return time.perf_counter() - t0, f"{n / 2**20:.0f} MiB inflated"


def run_hiroml_convert(zip_bytes: bytes, folder: str) -> tuple[float, str]:
    """The conversion share of ``run_hiroml``: members already inflated (untimed)."""
    import datetime as dt

    from hiroml.config import CtConfig
    from hiroml.ct import convert as ct_convert
    from hiroml.ingest.zipio import SafeZip
    from hiroml.records import Exam
    from hiroml.vocab import Modality

    insts = _instances(zip_bytes)
    with SafeZip(zip_bytes) as z:
        data = {m: z.read(m) for m in z.members()}
    exam = Exam(
        exam_key="bench", modality=Modality.CT, patient_id="1234", source_patient_id="1234",
        hiro_id="A002", time=dt.datetime(2020, 5, 8), description="CT", pediatric=False,
        batch="b", zips=(ZIP_NAME,), instances=tuple(insts),
    )  # fmt: skip
    t0 = time.perf_counter()
    vols, _ = ct_convert.convert_exam(exam, lambda inst: data[inst.member], CtConfig())
    return time.perf_counter() - t0, f"{vols[0].size_xyz} {vols[0].array.dtype}"


def run_pydicom_stack(zip_bytes: bytes, folder: str) -> tuple[float, str]:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    t0 = time.perf_counter()
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        dss = [pydicom.dcmread(io.BytesIO(zf.read(n))) for n in zf.namelist()]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    vol = np.stack([apply_modality_lut(d.pixel_array, d) for d in dss])
    return time.perf_counter() - t0, f"{vol.shape[::-1]} {vol.dtype}"


def run_unzip(zip_bytes: bytes, folder: str) -> tuple[float, str]:
    out = Path(folder) / "unzip_check"
    t0 = time.perf_counter()
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        zf.extractall(out)
    dt_s = time.perf_counter() - t0
    shutil.rmtree(out)
    return dt_s, "files"


def run_sitk(zip_bytes: bytes, folder: str) -> tuple[float, str]:
    import SimpleITK as sitk

    t0 = time.perf_counter()
    rd = sitk.ImageSeriesReader()
    rd.SetFileNames(rd.GetGDCMSeriesFileNames(os.path.join(folder, "series1")))
    img = rd.Execute()
    return time.perf_counter() - t0, f"{img.GetSize()} {img.GetPixelIDTypeAsString()}"


def run_dcm2niix(zip_bytes: bytes, folder: str) -> tuple[float, str]:
    out = Path(folder) / "nii"
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run(
        ["dcm2niix", "-z", "n", "-b", "n", "-f", "vol", "-o", str(out),
         os.path.join(folder, "series1")],
        check=True, capture_output=True,
    )  # fmt: skip
    dt_s = time.perf_counter() - t0
    size = (out / "vol.nii").stat().st_size
    shutil.rmtree(out)
    return dt_s, f"nii {size / 1e6:.0f} MB"


def _child(name: str, zip_path: str, folder: str, repeat: int, q: Any) -> None:
    fn: Callable[[bytes, str], tuple[float, str]] = globals()[name]
    zip_bytes = Path(zip_path).read_bytes()
    import pydicom  # noqa: F401  (imports before the baseline)
    import SimpleITK  # noqa: F401

    import hiroml.ct.convert  # noqa: F401

    base = _rss_mb()
    times = []
    info = ""
    for _ in range(repeat):
        t, info = fn(zip_bytes, folder)
        times.append(t)
    peak = _rss_mb() - base
    if name == "run_dcm2niix":
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    q.put((min(times), peak, info))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench_ct_")
    try:
        t0 = time.perf_counter()
        zip_bytes = make_zip(args.slices, args.size)
        zip_path = os.path.join(tmp, ZIP_NAME)
        Path(zip_path).write_bytes(zip_bytes)
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
            zf.extractall(tmp)
            raw = sum(i.file_size for i in zf.infolist())
        vol_mb = args.slices * args.size * args.size * 2 / 2**20
        print(
            f"series: {args.slices} slices of {args.size}x{args.size}, zip {len(zip_bytes) / 2**20:.0f}"
            f" MiB (raw {raw / 2**20:.0f} MiB), int16 volume {vol_mb:.0f} MiB; made in "
            f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPU(s), best of {args.repeat}"
        )
        methods = [
            ("hiroml (zip bytes)", "run_hiroml"),
            ("  of which: inflate (SafeZip)", "run_hiroml_inflate"),
            ("  of which: parse + volume (bytes given)", "run_hiroml_convert"),
            ("pydicom+np.stack (zip bytes)", "run_pydicom_stack"),
            ("unzip to folder", "run_unzip"),
            ("SimpleITK ImageSeriesReader (folder)", "run_sitk"),
        ]
        if shutil.which("dcm2niix"):
            methods.append(("dcm2niix -z n (folder)", "run_dcm2niix"))
        else:
            print("dcm2niix not on PATH: skipped")
        ctx = mp.get_context("spawn")
        print(f"{'method':40s} {'s':>7s} {'slices/s':>9s} {'peak MiB':>9s} {'vol x':>6s}  output")
        for label, fn in methods:
            q = ctx.Queue()
            p = ctx.Process(target=_child, args=(fn, zip_path, tmp, args.repeat, q))
            p.start()
            t, peak, info = q.get()
            p.join()
            print(
                f"{label:40s} {t:7.3f} {args.slices / t:9.0f} {peak:9.0f} "
                f"{peak / vol_mb:6.2f}  {info}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
