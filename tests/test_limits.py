"""Sizes checked before any decode (hiroml.dicom.limits): headers that promise huge images,
codestreams that disagree with the DICOM header and deflate bombs become error rows."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import hostile
import imagecodecs
import numpy as np
import pandas as pd
import pytest
from conftest import MakeCfg
from pydicom.encaps import encapsulate
from pydicom.uid import UID, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from hiroml import pipeline as build
from hiroml import synth
from hiroml.config import IndexConfig, LimitsConfig
from hiroml.dicom import decode as dicom
from hiroml.dicom import limits, uids
from hiroml.errors import BadInputError, ConfigError, DecodeError
from hiroml.ingest.discover import discover
from hiroml.ingest.index import index_zip

BATCH = "CXR-UPDATE-20200614-COMPLETE"
DEFLATED_LE = UID("1.2.840.10008.1.2.1.99")
ZEROS = 2 * 1024**3  # what the deflate bomb inflates to


def _cxr(n: int, pixels: np.ndarray, syntax: str) -> Any:
    return synth.make_cxr(
        pixels,
        study=hostile._study(n),
        sop_uid=f"2.25.7{n:04d}2",
        series_uid=f"2.25.7{n:04d}3",
        transfer_syntax=syntax,
    )


def rle_huge(n: int) -> bytes:
    """RLE Lossless of 16 x 16 pixels whose header says Rows = Columns = 65535."""
    rng = np.random.default_rng(n)
    ds = _cxr(n, rng.integers(0, 4000, (16, 16), dtype=np.uint16), RLELossless)
    ds.Rows = ds.Columns = 65535
    return synth.dicom_bytes(ds)


def j2k_huge(n: int) -> bytes:
    """JPEG 2000 of a 64 x 48 image (so says the DICOM header) whose SIZ says 60000 x 60000."""
    rng = np.random.default_rng(n)
    ds = _cxr(n, rng.integers(0, 4000, (64, 48), dtype=np.uint16), JPEG2000Lossless)
    frame = bytearray(limits.first_fragment(ds.PixelData))
    siz = frame.find(b"\xff\x4f\xff\x51") + 4
    struct.pack_into(">II", frame, siz + 4, 60000, 60000)
    ds.PixelData = encapsulate([bytes(frame)])
    return synth.dicom_bytes(ds)


def jpeg_huge(n: int) -> bytes:
    """Baseline JPEG whose SOF0 says 65000 x 65000 while the DICOM header says 64 x 48."""
    rng = np.random.default_rng(n)
    ds = _cxr(n, rng.integers(0, 4000, (64, 48), dtype=np.uint16), RLELossless)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    frame = bytearray(imagecodecs.jpeg8_encode(rng.integers(0, 255, (64, 48), dtype=np.uint8)))
    sof = frame.find(b"\xff\xc0")
    struct.pack_into(">HH", frame, sof + 5, 65000, 65000)
    ds.PixelData = encapsulate([bytes(frame)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return synth.dicom_bytes(ds)


def jxl_header(rows: int, cols: int) -> bytes:
    """A JPEG XL codestream's signature and SizeHeader (not small, ratio 0: both sizes
    written as ``1 + u(18)`` or ``1 + u(30)``), bits least significant first."""
    bits: list[int] = []

    def put(value: int, n: int) -> None:
        bits.extend((value >> i) & 1 for i in range(n))

    put(0, 1)  # not small
    for i, size in enumerate((rows, cols)):
        selector, n = (2, 18) if size <= 1 << 18 else (3, 30)
        put(selector, 2)
        put(size - 1, n)
        if i == 0:
            put(0, 3)  # ratio 0: the width follows
    bits += [0] * (-len(bits) % 8)
    body = bytes(sum(b << j for j, b in enumerate(bits[k : k + 8])) for k in range(0, len(bits), 8))
    return b"\xff\x0a" + body + bytes(64)


def jxl_huge(n: int) -> bytes:
    """JPEG XL Lossless whose SizeHeader says 65535 x 65535 while the DICOM header says 64 x 48."""
    rng = np.random.default_rng(n)
    ds = _cxr(n, rng.integers(0, 4000, (64, 48), dtype=np.uint16), RLELossless)
    ds.PixelData = encapsulate([jxl_header(65535, 65535)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uids.HTJ2K_LOSSLESS  # one pydicom writes, as long
    data = hostile.dicom_bytes(ds)
    assert len(uids.HTJ2K_LOSSLESS) == len(uids.JPEG_XL_LOSSLESS)
    return data.replace(uids.HTJ2K_LOSSLESS.encode(), uids.JPEG_XL_LOSSLESS.encode(), 1)


def deflate_bomb(n: int) -> bytes:
    """A Deflated Explicit VR Little Endian file of about 2 MB whose dataset inflates to
    2 GiB of zeros after its elements. The zero blocks are compressed once, after a full
    flush, and repeated: nothing of 2 GiB is ever allocated."""
    rng = np.random.default_rng(n)
    ds = _cxr(n, rng.integers(0, 4000, (64, 48), dtype=np.uint16), hostile.ExplicitVRLittleEndian)
    plain = synth.dicom_bytes(ds)
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DEFLATED_LE
    head = hostile.dicom_bytes(ds)  # written explicit VR little endian, not deflated
    end = limits.meta_end(head)
    assert end is not None and len(plain) > end
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [c.compress(head[end:]) + c.flush(zlib.Z_FULL_FLUSH)]
    block = 1024**2
    zeros = bytes(block)
    one = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    two = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert one == two  # after a full flush, a block of zeros compresses the same way
    out += [one] * (ZEROS // block - 1) + [c.flush()]
    return head[:end] + b"".join(out)


CASES = {
    "rle": (rle_huge, "the header says 65535 x 65535 = 4294836225 pixels a frame"),
    "j2k": (j2k_huge, "JPEG 2000 SIZ says 60000 x 60000 x 1 components, the header 64 x 48"),
    "jpeg": (jpeg_huge, "JPEG SOF0 says 65000 x 65000 x 1 components, the header 64 x 48"),
    "deflate": (deflate_bomb, "inflates to more than 1073741824 bytes"),
    "jxl": (jxl_huge, "JPEG XL SizeHeader says 65535 x 65535, the header 64 x 48"),
}


def _zip(path: Path, member: str, data: bytes) -> None:
    """One member, stored (the deflate bomb's ratio is then no zip-level bomb)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo(member, date_time=(2020, 6, 14, 0, 0, 0)), data)


def add_cases(root: Path) -> dict[str, str]:
    """Write each case as its own exam zip in a new batch; {zip name: expected reason}."""
    (root / BATCH).mkdir()
    names = {}
    for i, (make, reason) in enumerate(CASES.values()):
        n = 901 + i
        name = hostile._name(hostile._study(n), n)
        _zip(root / BATCH / name, "IMG0001.dcm", make(n))
        names[name] = reason
    return names


@pytest.mark.parametrize("case", list(CASES))
def test_member_over_the_limits_is_an_index_error_naming_the_numbers(
    tmp_path: Path, case: str
) -> None:
    reason = CASES[case][1]
    names = add_cases(tmp_path)
    name = next(k for k, v in names.items() if v == reason)
    ezip = next(z for z in discover(tmp_path).zips if z.file_name == name)
    zi = index_zip(tmp_path / BATCH / name, ezip, IndexConfig())
    assert zi.instances == ()
    (problem,) = zi.problems
    assert problem.member == "IMG0001.dcm" and problem.action == "error"
    assert problem.reason.startswith(f"{name}: IMG0001.dcm: ")
    assert reason in problem.reason


@pytest.mark.parametrize("case", ["rle", "j2k", "jpeg", "jxl"])
def test_decode_checks_the_limits_before_any_decoder(case: str) -> None:
    make, reason = CASES[case]
    ds = dicom.parse(make(950), label="x").dataset
    with pytest.raises(DecodeError, match=reason.split(", ")[0]):
        dicom.decode(ds, limits=LimitsConfig())


@pytest.mark.parametrize(
    "shape", [(64, 48), (48, 64), (8, 8), (100, 133), (3000, 2500), (8750, 12)]
)
def test_jpeg_xl_sizes_are_read_from_the_container_and_the_bare_codestream(
    shape: tuple[int, int],
) -> None:
    image = (np.arange(shape[0] * shape[1]) % 4000).astype(np.uint16).reshape(shape)
    container = bytes(imagecodecs.jpegxl_encode(image, lossless=True))
    assert container[4:8] == b"JXL "
    assert limits.jxl_size(container[:256]) == (*shape, 0, 0, "JPEG XL SizeHeader")
    assert limits.jxl_size(jxl_header(*shape)) == (*shape, 0, 0, "JPEG XL SizeHeader")
    assert limits.jxl_size(jxl_header(1 << 20, 7)) == (1 << 20, 7, 0, 0, "JPEG XL SizeHeader")
    assert limits.jxl_size(b"\xff\x0a") is None  # ends before its SizeHeader
    assert limits.jxl_size(b"\xff\xd8\xff") is None


def test_deflated_dataset_is_inflated_with_a_cap() -> None:
    data = deflate_bomb(951)
    assert len(data) < 3 * 1024**2
    with pytest.raises(BadInputError, match=r"z\.dcm: the Deflated .* inflates to more than 1024"):
        dicom.parse(data, label="z.dcm", limits=LimitsConfig(max_decoded_bytes=1024))


def test_small_limits_refuse_an_ordinary_image_and_config_checks_them() -> None:
    rng = np.random.default_rng(3)
    ds = _cxr(952, rng.integers(0, 4000, (64, 48), dtype=np.uint16), JPEG2000Lossless)
    assert dicom.decode(ds).array.shape == (64, 48)  # the defaults fit it
    with pytest.raises(
        DecodeError, match=r"64 x 48 = 3072 pixels a frame, over limits\.max_pixels=3000"
    ):
        dicom.decode(ds, limits=LimitsConfig(max_pixels=3000))
    with pytest.raises(DecodeError, match="= 6144 bytes decoded, over"):
        dicom.decode(ds, limits=LimitsConfig(max_decoded_bytes=6000))
    with pytest.raises(ConfigError, match=r"limits\.max_pixels=0"):
        LimitsConfig(max_pixels=0)


def test_rle_segment_count_must_match_the_header() -> None:
    rng = np.random.default_rng(4)
    ds = _cxr(953, rng.integers(0, 4000, (16, 16), dtype=np.uint16), RLELossless)
    frame = bytearray(limits.first_fragment(ds.PixelData))
    struct.pack_into("<I", frame, 0, 15)
    ds.PixelData = encapsulate([bytes(frame)])
    with pytest.raises(DecodeError, match="the RLE header holds 15 segments, the header 1 "
                       "samples x 16 bits needs 2"):  # fmt: skip
        dicom.decode(ds)


#: ``python -m hiroml`` reporting on stderr the peak resident memory of the build: its own
#: (VmHWM: the high-water mark of the memory it mapped since its exec) and that of its
#: waited-for children (the pool's workers). Not ``ru_maxrss`` of RUSAGE_SELF: Linux folds
#: into it the high-water mark of the memory the process had before its exec, a copy of (or,
#: with vfork, the very) memory of the process that started it, so inside the whole suite it
#: reported the pytest process's size (up to 1.2 GB) rather than the build's.
_MEASURED = (
    "import resource, runpy, sys\n"
    "sys.argv = ['hiroml', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('hiroml', run_name='__main__')\n"
    "finally:\n"
    "    own = next(int(x.split()[1]) for x in open('/proc/self/status')\n"
    "               if x.startswith('VmHWM:'))\n"
    "    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "    print(f'peak-rss-kib={max(own, kids)}', file=sys.stderr)\n"
)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_build_with_the_hostile_members_keeps_every_good_sample_in_bounded_memory(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, _ = tiny_datamart
    plain = tmp_path / "plain"
    build.run(make_cfg(root, plain))
    dm = tmp_path / "datamart"
    shutil.copytree(root, dm)
    names = add_cases(dm)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", _MEASURED, f"paths.datamart={dm}", f"paths.output={out}",
           "progress=false", "executor.workers=1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("peak-rss-kib="))
    peak = int(line.partition("=")[2]) * 1024
    # measured 0.49 GiB, alone or started from a process holding 1 GiB (the whole suite's
    # pytest); the issue asks for under 1.5 GB
    assert peak < 1.0e9, peak
    audit = pd.read_csv(out / "audit.csv", dtype=str).fillna("")
    for name, reason in names.items():
        rows = audit[audit["zip"] == name]
        assert (rows["action"] == "error").any(), name
        assert rows["reason"].str.contains(reason, regex=False).any(), (name, rows["reason"])
    kept = pd.read_parquet(out / "manifest.parquet")
    ref = pd.read_parquet(plain / "manifest.parquet")
    assert len(kept) == len(ref)
    assert sorted(kept["sample_key"]) == sorted(ref["sample_key"])


def test_the_configured_limits_reach_the_index(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    """``limits.max_pixels`` lowered on the command line refuses the tiny datamart's larger
    images, each with its numbers; the smaller ones are built."""
    root, _ = tiny_datamart
    out = tmp_path / "out"
    summary = build.run(make_cfg(root, out, "limits.max_pixels=5000"))
    audit = pd.read_csv(out / "audit.csv", dtype=str).fillna("")
    over = audit[audit["reason"].str.contains("pixels a frame, over limits.max_pixels=5000")]
    assert len(over) > 0 and (over["action"] == "error").all()
    assert summary.cxr_images + summary.ct_volumes > 0
