"""The self-check of the numeric paths: reference images through every decode and cast path,
compared with the golden values (:data:`GOLDEN`)."""

from __future__ import annotations

import functools
import hashlib
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hiroml.errors import SelfCheckError

if TYPE_CHECKING:
    import numpy as np
    from pydicom.dataset import Dataset

    from hiroml.config import CxrConfig
from hiroml.doctor import cache as passes
from hiroml.doctor.libraries import environment, halfcast_backend, library_label, tested_range

OK = "ok"


MISMATCH = "MISMATCH"


FAILED = "FAILED"


#: Which library decodes, by the decoder name a sample records (``hiroml.dicom.decode``'s names).
_DECODER_LIBRARY = {
    "numpy": "numpy",
    "libjpeg-turbo": "imagecodecs",
    "charls": "imagecodecs",
    "openjpeg": "imagecodecs",
    "libjxl": "imagecodecs",
    "libdeflate": "imagecodecs",
    "pylibjpeg-rle": "pylibjpeg-rle",
    "pydicom": "pydicom",
    "pillow-openjpeg": "pillow",
    "pillow-libjpeg-turbo": "pillow",
}

#: The golden values of every check, computed with :func:`values` in the tested environment
#: (numpy 2.4.6, OpenCV 5.1.0, Pillow 13.0.0, imagecodecs 2026.3.6, pylibjpeg-rle 2.2.0,
#: pylibjpeg-libjpeg 2.5.0, SimpleITK 2.5.7, pydicom 3.0.2). Decodes: "<decoder> <hash of
#: the stored values>"; radiographs and CT volumes: their ``data_hash``; signatures: the
#: BLAKE2b (128 bit) of the signature's bytes.
GOLDEN: dict[str, str] = {
    "float16 cast": "as numpy",
    "float32 cast": "as numpy",
    "MR_small.dcm: decode": "numpy 8fdb74d882ec0a38dac97cbcc44d168b",
    "MR_small.dcm: data_hash": "bf7fc96a15b7cf0578cdd46d406b75f8",
    "MR_small.dcm: signature": "e0ad453e009120b3338c1e51a697bd1b",
    "MR_small_RLE.dcm: decode": "pylibjpeg-rle 8fdb74d882ec0a38dac97cbcc44d168b",
    "MR_small_RLE.dcm: data_hash": "bf7fc96a15b7cf0578cdd46d406b75f8",
    "MR_small_RLE.dcm: signature": "e0ad453e009120b3338c1e51a697bd1b",
    "MR_small_jp2klossless.dcm: decode": "openjpeg 8fdb74d882ec0a38dac97cbcc44d168b",
    "MR_small_jp2klossless.dcm: data_hash": "bf7fc96a15b7cf0578cdd46d406b75f8",
    "MR_small_jp2klossless.dcm: signature": "e0ad453e009120b3338c1e51a697bd1b",
    "JPEG2000.dcm: decode": "openjpeg dca912fc1e92a5e1adf1c998f3fd522c",
    "JPEG2000.dcm: data_hash": "c7cde1d4d3bd1867a1dc758afb593a17",
    "JPEG2000.dcm: signature": "ceea0dea4efbd221c5a2017dac5c6973",
    "JPEG-lossy.dcm: decode": "libjpeg-turbo c6f118ae2eb18e55c9b397f7b5d15614",
    "JPEG-lossy.dcm: data_hash": "6d796a6086e0b81e2edb34950b02aeb6",
    "JPEG-lossy.dcm: signature": "f870d6b9af38b82d240c94a7a3eced67",
    "MR_small_jpeg_ls_lossless.dcm: decode": "charls 8fdb74d882ec0a38dac97cbcc44d168b",
    "MR_small_jpeg_ls_lossless.dcm: data_hash": "bf7fc96a15b7cf0578cdd46d406b75f8",
    "MR_small_jpeg_ls_lossless.dcm: signature": "e0ad453e009120b3338c1e51a697bd1b",
    "SC_rgb_jpeg_gdcm.dcm: decode": "pydicom c74bb092c0fb5e2dd7ff8ccf5d019994",
    "SC_rgb_jpeg_gdcm.dcm: data_hash": "42b05162a2e1342734950b473409aff4",
    "SC_rgb_jpeg_gdcm.dcm: signature": "7e226aab4e270896179f54d72fc7d0b5",
    "jpeg-lossless-grey: decode": "libjpeg-turbo cbfd25b85a01d1974613851b60634437",
    "jpeg-lossless-grey: data_hash": "06d334ae31b343e05186c43adcf6b008",
    "jpeg-lossless-grey: signature": "10605df1e26d02766bbc1167b7f6e26f",
    "jpeg2000-reduced: decode": "pillow-openjpeg 8a75e50bbbd74fd0d4b6c6b46e322c5c",
    "jpeg2000-reduced: data_hash": "eb88be950fec5a56653cb20203590e79",
    "jpeg2000-reduced: signature": "d7eea92ce04255a788036600695261db",
    "resize 3000x2500": "6b380aa29cee00bee0d8aa520d1c9c71 10df8b35798b01bb990ba3d3f112f764",
    "resize 2140x1760": "29440d02df2c9c4ca320d345ae10112b 0008047b2dfa68e197ca439e8cfe64b8",
    "resize 777x913": "f52ecd5acba450c6ab6e59f5852f17c9 95c9471b405d327630d5b854379b97ec",
    "resize 2049x1537": "4920b8b6fbd4e0d20e00c1345b1fa0c5 3323430d72b63a7d5fb334f9c0a89a16",
    "CT_small.dcm: HU volume": "4a2be547948cc258789c977b00c06e2e",
    "CT_small.dcm: resampled": "cb1e7fc97ff497e8aed7337e5e081e14",
}


@dataclass(frozen=True, slots=True)
class Check:
    """One check: ``name`` (the key of :data:`GOLDEN`), ``library`` (a :data:`LIBRARIES`
    name: the owner of the path), ``what`` (the path, in words), ``status`` (``ok``,
    ``MISMATCH`` or ``FAILED``), the value found and the one expected, and for ``FAILED``
    the exception's one-line message."""

    name: str
    library: str
    what: str
    status: str
    value: str = ""
    expected: str = ""
    error: str = ""

    def message(self, env: dict[str, str]) -> str:
        """One line naming the library, its version, the path, and the tested range."""
        who = library_label(self.library, env)
        if self.status == OK:
            return f"{who}: {self.what}: ok"
        if self.status == FAILED:
            said = f"{who}: {self.what} fails ({self.error})"
        else:
            said = f"{who}: {self.what} gives other values ({self.value}, expected {self.expected})"
        tested = tested_range(self.library)
        return said + (f"; hiroml is tested with {tested}" if tested else "")


@dataclass(frozen=True, slots=True)
class Report:
    """What :func:`run` found: the :func:`environment`, every check, and the seconds taken."""

    environment: dict[str, str]
    checks: tuple[Check, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(c.status == OK for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status != OK)

    def problem(self) -> str:
        """One line for a refusal: the first check that disagrees, and how many do."""
        bad = self.failed
        if not bad:
            return ""
        more = f" ({len(bad)} of {len(self.checks)} checks disagree: run hiroml-doctor)"
        return (
            f"the self-check of the numeric paths failed: {bad[0].message(self.environment)}"
            f"{more}; doctor.enabled=false builds anyway, with other stored values"
        )

    def lines(self) -> list[str]:
        """The environment table, then one line per check, then the verdict."""
        width = max(len(k) for k in self.environment)
        out = ["environment:"]
        out += [f"  {k:<{width}}  {v}" for k, v in self.environment.items()]
        out.append("checks:")
        for c in self.checks:
            text = c.name if c.status == OK else f"{c.name}: {c.message(self.environment)}"
            out.append(f"  {c.status:<8}  {text}")
        n = len(self.checks)
        if self.ok:
            out.append(f"all {n} checks pass ({self.seconds:.2f} s)")
        else:
            out.append(
                f"{len(self.failed)} of {n} checks disagree ({self.seconds:.2f} s): hiroml-build "
                "refuses to build in this environment"
            )
        return out


def _blake(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class _Probe:
    """A check before it is compared: how to compute its value."""

    name: str
    library: str
    what: str
    compute: Callable[[], str]
    #: compare the last word only (a decode's "<decoder> <hash>"): another decoder that gives
    #: the same stored values stores the same dataset
    last_word: bool = False


def _compare(probe: _Probe, golden: dict[str, str]) -> Check:
    try:
        value = probe.compute()
    except Exception as e:  # any library error is the finding, in one line
        error = f"{type(e).__name__}: {' '.join(str(e).split())}"
        return Check(probe.name, probe.library, probe.what, FAILED, error=error)
    expected = golden.get(probe.name)
    if probe.last_word and expected:
        same = value.split()[-1:] == expected.split()[-1:]
    else:
        same = value == expected
    status = OK if same else MISMATCH
    return Check(probe.name, probe.library, probe.what, status, value, expected or "(no golden)")


def _cast_library() -> str:
    """The library behind :mod:`hiroml.store.halfcast` (its ``backend()`` where it has one)."""
    return "numpy" if "numpy" in halfcast_backend().lower() else "opencv"


def _cast_inputs() -> Iterator[np.ndarray]:
    """float32 arrays of 1 to 4096 values: float16's limits, subnormals, signed zeros,
    infinities, ties, and seeded random values over float16's range."""
    import numpy as np

    special = np.array(
        [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, -65520.0, np.inf, -np.inf,
         6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, -5.96e-8, 1e-9, 0.1, 1.0 / 3.0, 2049.0, 2051.0],
        dtype=np.float32,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [special, rng.uniform(0.0, 1.0, 2028), rng.standard_normal(1024) * 1000.0,
         np.exp(rng.uniform(-20.0, 11.0, 1024))],
    ).astype(np.float32)  # fmt: skip
    for n in (1, 2, 3, 4, 5):
        yield values[:n]
        yield values[n : 2 * n].reshape(n, 1)
    yield values[:9].reshape(3, 3)
    yield values.reshape(64, 64)
    yield values[:4000].reshape(10, 20, 20)


def _cast_to_float16() -> str:
    import numpy as np

    from hiroml.store import halfcast

    with np.errstate(over="ignore"):  # 65520 and above are inf in float16, as they must be
        return _cast_verdict(halfcast.to_float16, lambda a: a.astype(np.float16), _cast_inputs())


def _cast_to_float32() -> str:
    import numpy as np

    from hiroml.store import halfcast

    with np.errstate(over="ignore"):
        halves = [a.astype(np.float16) for a in _cast_inputs()]
    return _cast_verdict(halfcast.to_float32, lambda a: a.astype(np.float32), iter(halves))


def _cast_verdict(
    cast: Callable[[np.ndarray], np.ndarray],
    reference: Callable[[np.ndarray], np.ndarray],
    inputs: Iterator[np.ndarray],
) -> str:
    """``"as numpy"`` when ``cast`` gives numpy's bits for every input, else what differs."""
    for a in inputs:
        got, want = cast(a), reference(a)
        if got.dtype != want.dtype or got.shape != want.shape:
            return f"{got.dtype}{got.shape} for {want.dtype}{want.shape}"
        bits = f"u{want.dtype.itemsize}"
        differ = int((got.view(bits) != want.view(bits)).sum())
        if differ:
            return f"{differ} of {a.size} values differ from numpy's astype"
    return "as numpy"


def _config() -> CxrConfig:
    """The radiograph settings of the checks: fixed here, so that a change of the defaults
    does not move the golden values. 128 x 128: the small references are enlarged
    (bilinear), the large ones shrunk (area)."""
    from hiroml.config import CxrConfig

    return CxrConfig(size=[128, 128], keep_aspect=True, normalization="voi", dtype="float16")


@functools.cache
def _shipped(name: str) -> bytes:
    """A reference file shipped inside pydicom (``pydicom/data/test_files``)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if not isinstance(path, str):
        raise FileNotFoundError(f"{name} is not among pydicom's test files")
    with open(path, "rb") as f:
        return f.read()


def _dataset(data: bytes) -> Dataset:
    from hiroml.dicom import decode as dicom

    return dicom.parse(data, label="doctor").dataset


def _encoded(name: str, source: np.ndarray, syntax: str, frame: bytes, bits: int) -> bytes:
    """``name``: MR_small.dcm's header over one grey unsigned frame of ``source``'s shape,
    ``bits`` stored, encapsulated under ``syntax``, as a Part 10 file."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds = _dataset(_shipped("MR_small.dcm"))
    ds.Rows, ds.Columns = (int(n) for n in source.shape)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 1024, 2048
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{len(name)}"
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _ct_values(scale: int) -> np.ndarray:
    """CT_small.dcm's stored values as unsigned 12-bit, each pixel repeated ``scale`` times
    along both axes."""
    import numpy as np

    from hiroml.dicom import decode as dicom

    arr = dicom.decode(_dataset(_shipped("CT_small.dcm"))).array
    grey = np.clip(arr.astype(np.int32), 0, 4095).astype(np.uint16)
    return np.ascontiguousarray(np.kron(grey, np.ones((scale, scale), np.uint16)))


@functools.cache
def _made(name: str) -> bytes:
    """The two references made from CT_small.dcm (lossless: any encoder gives them)."""
    import imagecodecs

    from hiroml.dicom import uids as dicom_uids

    if name == "jpeg-lossless-grey":
        src = _ct_values(1)
        frame = imagecodecs.jpeg8_encode(src, lossless=True, predictor=1, bitspersample=12)
        return _encoded(name, src, dicom_uids.JPEG_LOSSLESS_SV1, bytes(frame), 12)
    src = _ct_values(4)  # 512 x 512: decoded at half resolution for a 128 x 128 output
    frame = imagecodecs.jpeg2k_encode(
        src, level=0, codecformat="J2K", reversible=True, bitspersample=12, numthreads=1
    )
    return _encoded(name, src, dicom_uids.JPEG_2000_LOSSLESS, bytes(frame), 12)


#: (reference, its transfer syntax in words): pydicom's files, then the two made here
_RADIOGRAPHS: tuple[tuple[str, str], ...] = (
    ("MR_small.dcm", "uncompressed"),
    ("MR_small_RLE.dcm", "RLE Lossless"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 Lossless"),
    ("JPEG2000.dcm", "JPEG 2000"),
    ("JPEG-lossy.dcm", "JPEG Extended 12-bit"),
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless"),
    ("SC_rgb_jpeg_gdcm.dcm", "colour JPEG Lossless"),
    ("jpeg-lossless-grey", "grey JPEG Lossless"),
    ("jpeg2000-reduced", "JPEG 2000 at half resolution"),
)


_MADE = frozenset({"jpeg-lossless-grey", "jpeg2000-reduced"})


@dataclass(frozen=True, slots=True)
class _Converted:
    decoder: str
    decoded: np.ndarray
    stored: np.ndarray


@functools.cache
def _convert(name: str) -> _Converted:
    """Decode (as :func:`hiroml.cxr.convert.convert_instance` does) and convert one reference."""
    from hiroml.cxr import convert as cxr_convert
    from hiroml.cxr import pixels as cxr_pixels
    from hiroml.dicom import fastdecode
    from hiroml.ingest import index as index

    data = _made(name) if name in _MADE else _shipped(name)
    cfg = _config()
    ds = _dataset(data)
    inst = index.instance_from_dataset(
        ds, batch="doctor", zip_name="doctor", member=name, member_size=len(data)
    )
    size = (int(cfg.size[0]), int(cfg.size[1]))
    reduced = fastdecode.decode_reduced(
        ds, frame=0, size=size, keep_aspect=cfg.keep_aspect, jpeg2000=cfg.fast_jpeg2000,
        jpeg=cfg.fast_jpeg, normalization=cfg.normalization,
    )  # fmt: skip
    decoded = reduced.decoded if reduced else cxr_pixels.decode_frame(ds)
    img = cxr_convert.convert_instance(data, inst, exam_description="", cfg=cfg)
    if img.decoder != decoded.decoder:
        raise RuntimeError(f"the conversion decoded with {img.decoder}, {decoded.decoder} here")
    return _Converted(decoded.decoder, decoded.array, img.array)


def _decode_value(name: str) -> str:
    from hiroml.store.shards import array_hash

    c = _convert(name)
    return f"{c.decoder} {array_hash(c.decoded)}"


def _data_hash(name: str) -> str:
    from hiroml.store.shards import array_hash

    return array_hash(_convert(name).stored)


def _signature(name: str) -> str:
    from hiroml.exams import neardup

    return _blake(neardup.signature(_convert(name).stored).tobytes())


#: (rows, columns) of a detector-sized image and the (rows, columns) it is resized to: an
#: integer box mean then area interpolation, a shrink by less than 2, and keep_aspect padding
_RESIZES: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((3000, 2500), (512, 512)),
    ((2140, 1760), (512, 512)),
    ((777, 913), (512, 512)),
    ((2049, 1537), (256, 256)),
)


def _detector_image(rows: int, cols: int) -> np.ndarray:
    """A float32 image in [0, 1] of a detector's size with fine, irregular detail (integer
    arithmetic only, the same in every numpy): what a summation order shows up in."""
    import numpy as np

    i = np.arange(rows, dtype=np.int64)[:, None]
    j = np.arange(cols, dtype=np.int64)[None, :]
    codes = (i * 7919 + j * 104729 + (i * j) % 8191 + (i // 37) * (j // 29) * 13) % 4096
    return (codes.astype(np.float32) / np.float32(4095.0)).astype(np.float32)


def _resized(shape: tuple[int, int], size: tuple[int, int]) -> str:
    """The stored values (float16, as a build stores them) and the signature of a
    detector-sized image after :func:`hiroml.cxr.pixels.resize`."""
    from hiroml.cxr import pixels as cxr_pixels
    from hiroml.exams import neardup
    from hiroml.store import halfcast

    small, _ = cxr_pixels.resize(_detector_image(*shape), size, keep_aspect=True)
    stored = halfcast.to_float16(small)
    # the float32 values too: one rounding apart there is, in some image, a float16 apart
    return f"{_blake(small.tobytes())} {_blake(neardup.signature(stored).tobytes())}"


def _decoder_library(name: str) -> str:
    """The library of the decoder :data:`GOLDEN` expects for a reference."""
    expected = GOLDEN.get(f"{name}: decode", "pydicom x").split()[0]
    return _DECODER_LIBRARY.get(expected, "pydicom")


@functools.cache
def _ct_slices() -> tuple[tuple[Any, Dataset], ...]:
    """CT_small.dcm five times, 2.5 mm apart along its slice normal: (Instance, Dataset)."""
    import numpy as np

    from hiroml.ingest import index as index

    out = []
    for k in range(5):
        ds = _dataset(_shipped("CT_small.dcm"))
        o = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(o[:3], o[3:])
        pos = np.asarray([float(v) for v in ds.ImagePositionPatient]) + 2.5 * k * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k + 1}"
        ds.SliceThickness = 2.5
        inst = index.instance_from_dataset(
            ds, batch="doctor", zip_name="doctor", member=f"CT_small-{k}", member_size=0
        )
        out.append((inst, ds))
    return tuple(out)


def _ct_volume(resample: list[float] | None) -> str:
    from hiroml.config import CtConfig
    from hiroml.ct import volume as ct_volume
    from hiroml.store.shards import array_hash

    vol = ct_volume.build_volume(
        list(_ct_slices()), CtConfig(min_slices=1, resample_spacing=resample)
    )
    return array_hash(vol.array)


def _probes() -> list[_Probe]:
    cast = _cast_library()
    probes = [
        _Probe("float16 cast", cast, "the float16 cast", _cast_to_float16),
        _Probe("float32 cast", cast, "the float32 cast", _cast_to_float32),
    ]
    for name, syntax in _RADIOGRAPHS:
        probes += [
            _Probe(
                f"{name}: decode", _decoder_library(name), f"the {syntax} decode of {name}",
                functools.partial(_decode_value, name), last_word=True,
            ),
            _Probe(
                f"{name}: data_hash", "opencv",
                f"the radiograph pixel chain (VOI, resize, float16) of {name}",
                functools.partial(_data_hash, name),
            ),
            _Probe(
                f"{name}: signature", "opencv", f"the near-duplicate signature of {name}",
                functools.partial(_signature, name),
            ),
        ]  # fmt: skip
    for shape, size in _RESIZES:
        name = f"resize {shape[0]}x{shape[1]}"
        probes.append(
            _Probe(
                name, "opencv", f"the radiograph resize to {size[0]}x{size[1]} and signature",
                functools.partial(_resized, shape, size),
            )
        )  # fmt: skip
    probes += [
        _Probe("CT_small.dcm: HU volume", "numpy", "the CT volume in HU of CT_small.dcm",
               functools.partial(_ct_volume, None)),
        _Probe("CT_small.dcm: resampled", "SimpleITK", "the CT resampling of CT_small.dcm",
               functools.partial(_ct_volume, [0.9, 0.9, 2.0])),
    ]  # fmt: skip
    return probes


def _clear() -> None:
    for fn in (_shipped, _made, _convert, _ct_slices):
        fn.cache_clear()


def values() -> dict[str, str]:
    """What every check gives in this environment (``"FAILED: ..."`` where it raises): the
    source of :data:`GOLDEN`, printed by ``hiroml-doctor --values``."""
    _clear()
    out = {}
    for probe in _probes():
        check = _compare(probe, {})
        out[probe.name] = check.value if check.status != FAILED else f"FAILED: {check.error}"
    _clear()
    return out


def run() -> Report:
    """Run every check now, against :data:`GOLDEN`."""
    t = time.perf_counter()
    _clear()
    try:
        checks = tuple(_compare(p, GOLDEN) for p in _probes())
    finally:
        _clear()
    return Report(environment(), checks, time.perf_counter() - t)


@functools.cache
def checked() -> Report:
    """:func:`run`, once per process."""
    return run()


def require(*, cache: bool = False) -> Report:
    """:func:`checked`; raises :class:`SelfCheckError` (``hiroml-build`` exits 2) with one
    line naming the library, its version and the path, when any check disagrees. With
    ``cache``, a pass recorded for this environment (:mod:`hiroml.doctor.cache`) is trusted
    and the report holds no checks; a new pass is recorded."""
    key = ""
    if cache:
        key = passes.fingerprint(GOLDEN)
        if passes.recorded(key):
            return Report(environment(), (), 0.0)
    report = checked()
    if not report.ok:
        raise SelfCheckError(report.problem())
    if key:
        passes.record(key)
    return report
