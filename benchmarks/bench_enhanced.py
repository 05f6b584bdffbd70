"""Enhanced CT build speed: one Legacy Converted Enhanced CT file versus the classic series.

Builds the synthetic chest CT series of ``bench_ct.py`` (default 300 slices of 512 x 512),
converts it with highdicom into one Legacy Converted Enhanced CT instance (the peer: the same
pixels, one multi-frame file), zips each (deflate level 6), then measures in a fresh process
per method the time of :func:`hiroml.ct.convert.convert_exam` from zip bytes (header records built
beforehand, untimed, as the index stage does; best of ``--repeat``) and, in one more run under
:mod:`tracemalloc` (numpy reports its buffers to it), the peak memory allocated during the
conversion, in volumes. Both must give the same volume and geometry (checked).

Run: ``python benchmarks/bench_enhanced.py [--slices 300] [--size 512] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import multiprocessing as mp
import sys
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_ct import ZIP_NAME, _instances, make_zip  # noqa: E402


def enhanced_zip(classic: bytes) -> bytes:
    """The classic series of ``classic`` as one Legacy Converted Enhanced CT member."""
    import highdicom
    import pydicom
    from ct_factory import to_bytes

    with zipfile.ZipFile(io.BytesIO(classic)) as zf:
        slices = [pydicom.dcmread(io.BytesIO(zf.read(n))) for n in zf.namelist()]
    warnings.filterwarnings("ignore", "The string .* person name", UserWarning)
    multi = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=slices,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=3,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        zf.writestr("series1/enhanced.dcm", to_bytes(multi))
    return buf.getvalue()


def _convert(zip_bytes: bytes, repeat: int, q: Any) -> None:
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

    def convert() -> Any:
        with SafeZip(zip_bytes) as z:
            vols, problems = ct_convert.convert_exam(
                exam, lambda inst: z.read(inst.member), CtConfig()
            )
        assert not problems and len(vols) == 1, problems
        return vols[0]

    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        v = convert()
        best = min(best, time.perf_counter() - t0)
    del v
    tracemalloc.start()
    v = convert()
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    q.put((best, peak_mb, v.array, v.spacing_xyz, v.origin_xyz, v.direction))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    classic = make_zip(args.slices, args.size)
    zips = {"classic series": classic, "legacy converted enhanced": enhanced_zip(classic)}
    ctx = mp.get_context("spawn")
    results = {}
    for name, data in zips.items():
        q = ctx.Queue()
        p = ctx.Process(target=_convert, args=(data, args.repeat, q))
        p.start()
        results[name] = q.get()
        p.join()
    volume_mb = results["classic series"][2].nbytes / 2**20
    print(f"{args.slices} slices of {args.size} x {args.size}, volume {volume_mb:.0f} MB")
    for name, (secs, peak, *_) in results.items():
        print(
            f"{name:28s} {secs:6.2f} s  {args.slices / secs:7.0f} slices/s  "
            f"peak {peak:6.0f} MB ({peak / volume_mb:.2f} volumes)  "
            f"zip {len(zips[name]) / 2**20:.0f} MB"
        )
    a, b = results["classic series"], results["legacy converted enhanced"]
    np.testing.assert_array_equal(a[2], b[2])
    for x, y in zip(a[3:], b[3:], strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)
    print("same volume and geometry: yes")


if __name__ == "__main__":
    main()
