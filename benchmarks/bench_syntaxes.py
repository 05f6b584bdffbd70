"""Decode and convert speed per transfer syntax, every syntax of :data:`hiroml.dicom.uids.SYNTAXES`.

One chest-like 12-bit radiograph (default 3000 rows x 2500 columns, built in code by
``bench_cxr.radiograph``) is encoded once in each syntax (8-bit for JPEG baseline and JPEG
XL JPEG recompression, which take 8-bit samples only), then, on one core (one process, one
codec thread):

- ``decode``: :func:`hiroml.dicom.decode.parse` + :func:`hiroml.cxr.pixels.decode_frame` of the member's
  bytes, images per CPU second, and the decoder that produced the values;
- ``convert``: :func:`hiroml.cxr.convert.convert_instance` (parse, decode, VOI window, resize to
  512 x 512, float16), images per CPU second;
- ``exact``: whether the decoded values equal the encoded ones (max abs error otherwise).

CPU time is used (``time.process_time``) so that a shared machine gives per-core numbers.

    python benchmarks/bench_syntaxes.py            # 3 repeats per syntax
    python benchmarks/bench_syntaxes.py --quick    # 1 repeat, 1000 x 800 image
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cxr import CFG, CR, radiograph

from hiroml.cxr import convert as cxr_convert
from hiroml.cxr import pixels as cxr_pixels
from hiroml.dicom import decode as dicom
from hiroml.dicom import uids as dicom_uids
from hiroml.records import Instance

EIGHT_BIT = {dicom_uids.JPEG_BASELINE, dicom_uids.JPEG_XL_RECOMPRESSION}
ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    dicom_uids.JPEG_BASELINE: lambda a: imagecodecs.jpeg8_encode(a, level=95),
    dicom_uids.JPEG_EXTENDED: lambda a: imagecodecs.jpeg8_encode(a, level=95, bitspersample=12),
    dicom_uids.JPEG_LOSSLESS: lambda a: imagecodecs.jpeg8_encode(
        a, lossless=True, predictor=7, bitspersample=12
    ),
    dicom_uids.JPEG_LOSSLESS_SV1: lambda a: imagecodecs.jpeg8_encode(
        a, lossless=True, predictor=1, bitspersample=12
    ),
    dicom_uids.JPEG_LS_LOSSLESS: lambda a: imagecodecs.jpegls_encode(a, level=0),
    dicom_uids.JPEG_LS_NEAR_LOSSLESS: lambda a: imagecodecs.jpegls_encode(a, level=2),
    dicom_uids.JPEG_2000_LOSSLESS: lambda a: imagecodecs.jpeg2k_encode(
        a, codecformat="J2K", reversible=True
    ),
    dicom_uids.JPEG_2000: lambda a: imagecodecs.jpeg2k_encode(a, level=80, codecformat="J2K"),
    dicom_uids.HTJ2K_LOSSLESS: lambda a: imagecodecs.htj2k_encode(a, reversible=True),
    dicom_uids.HTJ2K_LOSSLESS_RPCL: lambda a: imagecodecs.htj2k_encode(a, reversible=True),
    dicom_uids.HTJ2K: lambda a: imagecodecs.htj2k_encode(a, reversible=False),
    dicom_uids.JPEG_XL_LOSSLESS: lambda a: imagecodecs.jpegxl_encode(a, lossless=True),
    dicom_uids.JPEG_XL_RECOMPRESSION: lambda a: imagecodecs.jpegxl_encode_jpeg(
        imagecodecs.jpeg8_encode(a, level=95)
    ),
    dicom_uids.JPEG_XL: lambda a: imagecodecs.jpegxl_encode(a, distance=1.0),
    dicom_uids.DEFLATED_IMAGE_FRAME: lambda a: imagecodecs.deflate_encode(a.tobytes(), raw=True),
}


def dicom_bytes(arr: np.ndarray, ts: str) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian if ts == RLELossless else ts)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = UID(CR)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.ViewPosition = "CR", "PA"
    ds.ImagerPixelSpacing = [0.139, 0.139]
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = 8 if arr.dtype == np.uint8 else 12
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = arr.dtype.itemsize * 8, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = (128, 256) if bits == 8 else (2048, 4096)
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    big = ts == dicom_uids.EXPLICIT_VR_BE
    if big:
        ds.PixelData = arr.astype(">u2").tobytes()
    if ts == RLELossless:
        ds.compress(RLELossless, arr, encoding_plugin="pylibjpeg")
    elif ts in ENCODERS:
        ds.PixelData = encapsulate([bytes(ENCODERS[ts](arr))])
        ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    implicit = ts == dicom_uids.IMPLICIT_VR_LE
    ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit, little_endian=not big)
    return buf.getvalue()


def per_cpu_second(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    t = time.process_time()
    for _ in range(repeats):
        fn()
    return repeats / (time.process_time() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat, 1000 x 800 image")
    ap.add_argument("-n", type=int, default=3, help="repeats per syntax")
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--cols", type=int, default=2500)
    args = ap.parse_args()
    rows, cols, n = (1000, 800, 1) if args.quick else (args.rows, args.cols, args.n)
    cv2.setNumThreads(1)
    img12 = radiograph(0, rows, cols)
    img8 = (img12 >> 4).astype(np.uint8)
    inst = Instance(
        batch="B", zip="z.zip", member="x.dcm", member_size=0, sop_uid="", series_uid="",
        study_uid="", sop_class_uid=CR, modality="CR", patient_id="1000",
    )  # fmt: skip
    print(f"{rows} x {cols} radiograph, {n} repeat(s), images per CPU second (one core)\n")
    print("| transfer syntax | UID | decoder | decode img/s | convert img/s | exact |")
    print("|---|---|---|---:|---:|---|")
    for uid, syntax in dicom_uids.SYNTAXES.items():
        src = img8 if uid in EIGHT_BIT else img12
        data = dicom_bytes(src, uid)
        got = cxr_pixels.decode_frame(dicom.parse(data, label="x").dataset)
        err = int(np.abs(got.array.astype(np.int64) - src.astype(np.int64)).max())
        dec = per_cpu_second(
            lambda d=data: cxr_pixels.decode_frame(dicom.parse(d, label="x").dataset), n
        )
        conv = per_cpu_second(
            lambda d=data: cxr_convert.convert_instance(
                d, inst, exam_description="XR-CHEST-PA", cfg=CFG
            ),
            n,
        )
        exact = "yes" if err == 0 else f"no (max err {err})"
        bits = "8-bit" if uid in EIGHT_BIT else "12-bit"
        print(
            f"| {syntax.name} ({bits}) | {uid} | {got.decoder} | {dec:.1f} | {conv:.1f} | {exact} |"
        )


if __name__ == "__main__":
    main()
