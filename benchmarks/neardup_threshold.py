"""Measure the near-duplicate threshold: signature similarity (hiroml.exams.neardup) of the same
radiograph re-exported versus different radiographs.

Pairs built, each image taken through hiroml's radiograph pipeline (decode, grey levels to
[0, 1], MONOCHROME1 inverted, resized to 512 x 512 keeping the aspect, float16 storage):

* different patients of the synthetic datamart (``tiny`` and ``demo``; every pair of
  radiographs of two patient groups, groups as the build links them without near duplicates);
* different real images: pydicom's and pydicom-data's grey-level images (the CR radiographs
  RG1 and RG3, and the other large grey images shipped: NM, US, OT);
* crops (5-20 % off a side) and shifts (2-5 %) of the real radiographs and of synthetic
  phantoms, against their original (reported apart: neither clearly the same nor another
  image);
* the same image re-exported: windowed to 8 bits and saved as JPEG baseline (quality 90 and
  75), at half and quarter resolution, both combined.

    python benchmarks/neardup_threshold.py [--sizes tiny demo] [--phantoms 20]

Prints, per kind of pair, the count and the min / 1st percentile / median / 99th percentile
/ max similarity, then the margins of ``splits.near_duplicate_threshold``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
from PIL import Image

from hiroml import pipeline as build
from hiroml import synth
from hiroml.config import BuildConfig, ExecutorConfig, PathsConfig, SplitsConfig
from hiroml.cxr import pixels as cxr_pixels
from hiroml.exams import neardup

REAL_NAMES = (
    "RG1_UNCR.dcm",  # CR, 1955 x 1841, 15 bits, MONOCHROME1
    "RG3_UNCR.dcm",  # CR, 1760 x 1760, 10 bits, MONOCHROME1
    "JPEG2000_UNC.dcm",  # NM, 1024 x 256
    "mlut_18.dcm",  # OT, 512 x 512 (vlut_04.dcm is the same image in 8 bits: see SAME_REAL)
    "image_dfl.dcm",  # OT, 512 x 512
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # US, 768 x 1024
)


def stored(arr: np.ndarray, *, monochrome1: bool = False) -> np.ndarray:
    """An array of stored values as hiroml stores a radiograph (minmax normalisation)."""
    a = cxr_pixels.normalize_minmax(np.asarray(arr, dtype=np.float32))
    if monochrome1:
        a = 1.0 - a
    small, _ = cxr_pixels.resize(a, (512, 512), keep_aspect=True)
    return small.astype(np.float16)


def sig(arr: np.ndarray, *, monochrome1: bool = False) -> np.ndarray:
    return neardup.signature(stored(arr, monochrome1=monochrome1))


def jpeg8(arr: np.ndarray, quality: int) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float32)
    u8 = np.rint((a - a.min()) / max(float(a.max() - a.min()), 1e-6) * 255.0).astype(np.uint8)
    bio = io.BytesIO()
    Image.fromarray(u8).save(bio, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(bio.getvalue())))


def scaled(arr: np.ndarray, f: float) -> np.ndarray:
    h, w = arr.shape
    size = (max(8, round(w * f)), max(8, round(h * f)))
    return cv2.resize(np.asarray(arr, dtype=np.float32), size, interpolation=cv2.INTER_AREA)


def crop(arr: np.ndarray, frac: float, side: int) -> np.ndarray:
    h, w = arr.shape
    dy, dx = round(h * frac), round(w * frac)
    return [arr[dy:], arr[:-dy], arr[:, dx:], arr[:, :-dx]][side % 4]


def shift(arr: np.ndarray, frac: float) -> np.ndarray:
    h, w = arr.shape
    m = np.float32([[1, 0, w * frac], [0, 1, h * frac]])
    return cv2.warpAffine(
        np.asarray(arr, dtype=np.float32), m, (w, h), borderMode=cv2.BORDER_REPLICATE
    )


#: real pairs of one image delivered twice: (original, other delivery, what differs)
SAME_REAL = (
    ("RG1_UNCR.dcm", "RG1_J2KI.dcm", "lossy JPEG 2000 (pydicom-data)"),
    ("RG3_UNCR.dcm", "RG3_J2KI.dcm", "lossy JPEG 2000 (pydicom-data)"),
    ("mlut_18.dcm", "vlut_04.dcm", "12 bits vs 8 bits (pydicom)"),
)

REEXPORTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "8-bit JPEG q90": lambda a: jpeg8(a, 90),
    "8-bit JPEG q75": lambda a: jpeg8(a, 75),
    "half resolution": lambda a: scaled(a, 0.5),
    "quarter resolution": lambda a: scaled(a, 0.25),
    "half resolution + JPEG q90": lambda a: jpeg8(scaled(a, 0.5), 90),
}
MOVES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "crop 5%": lambda a: crop(a, 0.05, 0),
    "crop 10%": lambda a: crop(a, 0.10, 1),
    "crop 20%": lambda a: crop(a, 0.20, 2),
    "shift 2%": lambda a: shift(a, 0.02),
    "shift 5%": lambda a: shift(a, 0.05),
}


def real_images(names: tuple[str, ...] = REAL_NAMES) -> list[tuple[str, np.ndarray, bool]]:
    """(name, stored values, MONOCHROME1) of pydicom's and pydicom-data's grey images."""
    roots = [Path(pydicom.__file__).parent / "data"]
    try:
        import data_store  # pydicom-data

        roots.append(Path(data_store.__file__).parent)
    except ImportError:
        logging.warning("pydicom-data is not installed: fewer real images")
    out = []
    for name in names:
        path = next((p for r in roots for p in r.rglob(name)), None)
        if path is None:
            continue
        ds = pydicom.dcmread(path)
        arr = cxr_pixels.to_grayscale(cxr_pixels.decode(ds), ds)
        mono1 = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
        out.append((name, arr, mono1))
    return out


def synthetic_pairs(size: str, work: Path) -> tuple[list[float], list[float]]:
    """Similarities of radiographs of different / the same patient group of the synthetic
    datamart of ``size`` (built without the near-duplicate search)."""
    root = work / f"datamart-{size}"
    if not (root / synth.TRUTH_NAME).is_file():
        synth.generate(root, seed=0, size=size)
    out = work / f"out-{size}"
    cfg = BuildConfig(
        paths=PathsConfig(datamart=str(root), output=str(out)),
        splits=SplitsConfig(near_duplicate_threshold=None),
        executor=ExecutorConfig(workers=2),
        progress=False,
    )
    build.run(cfg)
    m = pd.read_parquet(out / "manifest.parquet")
    m = m[m["modality"] == "cxr"].reset_index(drop=True)
    u = neardup.unit_vectors(np.stack([np.asarray(s, dtype=np.uint8) for s in m["signature"]]))
    s = u @ u.T
    g = m["patient_group"].to_numpy()
    i, j = np.triu_indices(len(m), 1)
    same = g[i] == g[j]
    return s[i, j][~same].tolist(), s[i, j][same].tolist()


def stats(values: list[float]) -> str:
    v = np.asarray(values)
    if not len(v):
        return "n 0"
    q = np.quantile(v, [0.0, 0.01, 0.5, 0.99, 1.0])
    return (
        f"n {len(v):6d}  min {q[0]:.3f}  p1 {q[1]:.3f}  median {q[2]:.3f}  "
        f"p99 {q[3]:.3f}  max {q[4]:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="*", default=["tiny", "demo"])
    parser.add_argument("--phantoms", type=int, default=20)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "hiroml-neardup"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[float]] = {}

    for size in args.sizes:
        diff, same = synthetic_pairs(size, work)
        rows[f"different patients, synthetic {size}"] = diff
        rows[f"same patient, other image, synthetic {size}"] = same

    reals = real_images()
    rsigs = [sig(a, monochrome1=m) for _, a, m in reals]
    rows["different real images (pydicom, pydicom-data)"] = [
        neardup.similarity(a, b) for a, b in itertools.combinations(rsigs, 2)
    ]
    rng = np.random.default_rng(0)
    phantoms = [
        (
            f"phantom {k}",
            synth.phantom_chest_2d(
                (int(rng.integers(1400, 2600)), int(rng.integers(1400, 2600))),
                np.random.default_rng(1000 + k),
                bits_stored=12,
            ),
            False,
        )
        for k in range(args.phantoms)
    ]
    psigs = [sig(a) for _, a, _m in phantoms]
    rows["different synthetic phantoms"] = [
        neardup.similarity(a, b) for a, b in itertools.combinations(psigs, 2)
    ]
    for a_name, b_name, what in SAME_REAL:
        pair = real_images((a_name, b_name))
        if len(pair) == 2:
            (_, a, ma), (_, b, mb) = pair
            rows.setdefault(f"same image re-exported: real, {what}", []).append(
                neardup.similarity(sig(a, monochrome1=ma), sig(b, monochrome1=mb))
            )
    radiographs = [r for r in reals if r[0].startswith("RG")] + phantoms
    for label, moves in (("re-exported", REEXPORTS), ("moved", MOVES)):
        for what, f in moves.items():
            vals = []
            for _name, a, mono1 in radiographs:
                vals.append(
                    neardup.similarity(sig(a, monochrome1=mono1), sig(f(a), monochrome1=mono1))
                )
            rows[f"same image {label}: {what}"] = vals

    print(f"signature: {neardup.SIGNATURE_SIDE} x {neardup.SIGNATURE_SIDE}, rank correlation")
    for name, vals in rows.items():
        print(f"{name:52s} {stats(vals)}")
    diff_max = max(max(v) for k, v in rows.items() if k.startswith("different") and v)
    same_min = min(min(v) for k, v in rows.items() if "re-exported" in k and v)
    t = neardup.DEFAULT_THRESHOLD
    print(
        f"\nthreshold {t}: {t - diff_max:+.3f} above the most similar different images "
        f"({diff_max:.3f}), {same_min - t:+.3f} below the least similar re-export ({same_min:.3f})"
    )
    print(f"measured in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
