"""The hostile corpus: bad inputs added, seeded and built in code, to a copy of a datamart.

:func:`add_hostile` writes each hostile input into its own zip with a valid exam name, in two
extra COMPLETE batch folders (one radiograph, one CT) dated after every normal batch, so the
normal exams keep their tasks, and returns one :class:`Hostile` per input: the zip's path
relative to the datamart root and a substring that the reason of at least one of its audit
rows must hold. Patient ids (``7xxx``), timestamps, UIDs and pixels are all new, so nothing
links or deduplicates a hostile exam with a normal one.

One hostile exam is valid (unicode and spaces in its description and member name): it must
be built, and is listed in :attr:`Corpus.valid`. Hostile instances carry a patient name
(:data:`PATIENT_NAME`) and a birth date (:data:`BIRTH_DATE`) that must reach no output and
no log.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

from hiroml import synth

CXR_BATCH = "CXR-UPDATE-20200613-COMPLETE"
CT_BATCH = "CT-UPDATE-20200613-COMPLETE"
PATIENT_NAME = "Hostilewaite^Philippa^Quintessa"
BIRTH_DATE = "19470316"
INSTITUTION = "Saint Obadiah Hostile Infirmary"
#: A valid exam whose description holds unicode and spaces (it must be built).
UNICODE_DESCRIPTION = "XR-CHEST-PA Thorax ümlaut 胸部 x"
#: Bytes of zeros inflated by the ratio bomb (deflated to about 1/1000 of that).
BOMB_BYTES = 256 * 1024**2


@dataclass(frozen=True, slots=True)
class Hostile:
    rel: str  # "<batch>/<zip name>" (or a folder inside a batch)
    reason: str  # a substring of the reason of one of its audit rows
    kind: str


@dataclass
class Corpus:
    hostile: list[Hostile] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)  # rel paths of hostile-batch exams to build


# --------------------------------------------------------------------------- helpers


def _study(n: int, *, description: str = "XR-CHEST-PA") -> synth.StudyInfo:
    return synth.StudyInfo(
        patient_id=f"{7000 + n}",
        time=dt.datetime(2020, 5, 1, 8, 0, 0) + dt.timedelta(hours=n),
        study_uid=f"2.25.7{n:04d}1",
        description=description,
    )


def _name(study: synth.StudyInfo, n: int) -> str:
    return f"{study.patient_id}_{study.time:%Y%m%d-%H%M%S}_H{n:03d}_{study.description}.zip"


def _privatize(ds: Dataset) -> Dataset:
    ds.PatientName = PATIENT_NAME
    ds.PatientBirthDate = BIRTH_DATE
    ds.InstitutionName = INSTITUTION
    return ds


def make_cxr(n: int, rng: np.random.Generator, *, description: str = "XR-CHEST-PA") -> Dataset:
    """A valid 64 x 48 DX radiograph of hostile patient ``7000 + n``."""
    study = _study(n, description=description)
    pixels = rng.integers(100, 4000, size=(64, 48), dtype=np.uint16)
    ds = synth.make_cxr(
        pixels,
        study=study,
        sop_uid=f"2.25.7{n:04d}2",
        series_uid=f"2.25.7{n:04d}3",
        transfer_syntax=ExplicitVRLittleEndian,
    )
    return _privatize(ds)


def dicom_bytes(ds: Dataset) -> bytes:
    """Part 10 bytes of ``ds``, whatever its (0002,0010) Transfer Syntax UID claims (the
    data set is always encoded explicit VR little endian)."""
    bio = io.BytesIO()
    ds.save_as(bio, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return bio.getvalue()


def zip_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zi = zipfile.ZipInfo(name, date_time=(2020, 6, 13, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return bio.getvalue()


def declared_size_bomb(size: int = 3 * 1024**3) -> bytes:
    """A small zip whose central directory and local header declare ``size`` bytes."""
    data = bytearray(zip_bytes([("bomb.dcm", b"\0" * 1024)]))
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<L", data, cd + 24, size)  # central directory: uncompressed size
    struct.pack_into("<L", data, 22, size)  # local header: uncompressed size
    return bytes(data)


def lying_size(declared: int = 1000, real: int = 32 * 1024**2) -> bytes:
    """A zip whose one member inflates to ``real`` bytes of zeros while its headers declare
    ``declared`` (under the ratio exemption): inflating must stop at the declared size."""
    data = bytearray(zip_bytes([("liar.dcm", b"\0" * real)]))
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<L", data, cd + 24, declared)
    struct.pack_into("<L", data, 22, declared)
    return bytes(data)


def ratio_bomb(path: Path, n_bytes: int = BOMB_BYTES) -> None:
    """A real deflate bomb: ``n_bytes`` zeros streamed in 4 MiB chunks into one member."""
    chunk = b"\0" * (4 * 1024**2)
    with zipfile.ZipFile(path, "w") as zf:
        zi = zipfile.ZipInfo("bomb.dcm", date_time=(2020, 6, 13, 0, 0, 0))
        zi.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(zi, "w", force_zip64=True) as fh:
            for _ in range(n_bytes // len(chunk)):
                fh.write(chunk)


def _ct_series(n: int, rng: np.random.Generator, *, nan_slice: int | None) -> list[Dataset]:
    study = _study(n, description="CT-CHEST-WO")
    k = 12
    slices = synth.make_ct_series(
        study=study,
        series_uid=f"2.25.7{n:04d}3",
        sop_uids=[f"2.25.7{n:04d}4{i:03d}" for i in range(k)],
        frame_uid=f"2.25.7{n:04d}5",
        positions=[(-180.0, -180.0, -30.0 + 2.5 * i) for i in range(k)],
        rng=rng,
        matrix=32,
    )
    if nan_slice is not None:
        slices[nan_slice].ImagePositionPatient = ["-180", "NaN", "nan"]
    return [_privatize(s) for s in slices]


# --------------------------------------------------------------------------- the corpus


def _cxr_cases(
    rng: np.random.Generator,
) -> list[tuple[str, Callable[[int], bytes], str | None]]:
    """(kind, make(n) -> zip bytes, expected reason substring) for the radiograph batch; a
    reason None marks an input that is odd but must be built."""

    def dcm(n: int, edit: Callable[[Dataset], None] | None = None, **kw: str) -> bytes:
        ds = make_cxr(n, rng, **kw)
        if edit is not None:
            edit(ds)
        return dicom_bytes(ds)

    def one(member: str, data: bytes) -> bytes:
        return zip_bytes([(member, data)])

    def truncated_zip(n: int) -> bytes:
        whole = one("image.dcm", dcm(n))
        return whole[: len(whole) // 2]

    def truncated_pixels(n: int) -> bytes:
        data = dcm(n)
        return one("image.dcm", data[: len(data) - 1001])

    def short_pixel_data(ds: Dataset) -> None:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2 + 3]

    def long_pixel_data(ds: Dataset) -> None:
        ds.PixelData = ds.PixelData + b"\x07" * 2001 + b"\x00"

    def no_dims(ds: Dataset) -> None:
        del ds.Rows, ds.Columns, ds.BitsAllocated

    def bad_syntax(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5.6.7.8.9")

    def jpeg_label(ds: Dataset) -> None:  # a known syntax whose bytes are no JPEG stream
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([b"\xff\xd8" + rng.bytes(998)])
        ds["PixelData"].VR = "OB"

    def unknown_sop_class(ds: Dataset) -> None:
        ds.SOPClassUID = "1.2.826.0.1.3680043.99.1.1"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.Modality = "XX"
        del ds.PixelData, ds.Rows, ds.Columns

    def zero_by_zero(ds: Dataset) -> None:
        ds.Rows = 0
        ds.Columns = 0
        ds.PixelData = b""

    def zero_spacing(ds: Dataset) -> None:
        ds.PixelSpacing = ["0", "0"]
        ds.ImagerPixelSpacing = ["0", "0"]

    def damaged_vr(n: int) -> bytes:  # a bit flip turns the VR of a time element into "UM"
        data = dcm(n)
        at = data.index(b"TM\x06\x00")
        return one("image.dcm", data[:at] + b"U" + data[at + 1 :])

    def empty_window(ds: Dataset) -> None:  # (0028,1050) present but empty
        ds.WindowCenter = None
        ds.WindowWidth = "400"

    def traversal(n: int) -> bytes:
        return one("../../../etc/cron.d/evil.dcm", dcm(n))

    def absolute(n: int) -> bytes:
        return one("/tmp/evil.dcm", dcm(n))

    def corrupt(n: int) -> bytes:
        return b"PK\x03\x04" + rng.bytes(4000)

    def empty(n: int) -> bytes:
        return zip_bytes([])

    def empty_series_folders(n: int) -> bytes:
        bio = io.BytesIO()
        with zipfile.ZipFile(bio, "w") as zf:
            zf.writestr(zipfile.ZipInfo("SERIES 1/"), b"")
            zf.writestr(zipfile.ZipInfo("SERIES 2/"), b"")
        return bio.getvalue()

    def non_dicom(n: int) -> bytes:
        return one("report.txt", b"radiology report: see attached\n" * 40)

    def truncated_header(n: int) -> bytes:
        return one("image.dcm", dcm(n)[:300])

    return [
        ("corrupt_zip", corrupt, "not a readable zip"),
        ("truncated_zip", truncated_zip, "not a readable zip"),
        ("path_traversal", traversal, "path traversal"),
        ("absolute_member", absolute, "absolute member path"),
        ("declared_bomb", lambda n: declared_size_bomb(), "max_member_bytes"),
        ("lying_size", lambda n: lying_size(), "its header says 1000"),
        ("empty_zip", empty, "the zip holds no files"),
        ("empty_series_folders", empty_series_folders, "the zip holds no files"),
        ("non_dicom", non_dicom, "not a DICOM file"),
        ("truncated_header", truncated_header, "no (0008,0018) SOP Instance UID"),
        ("truncated_pixel_data", truncated_pixels, "truncated"),
        ("damaged_vr", damaged_vr, "unreadable DICOM (NotImplementedError: Unknown Value"),
        ("short_pixel_data", lambda n: one("i.dcm", dcm(n, short_pixel_data)), "truncated pixel"),
        ("long_pixel_data", lambda n: one("i.dcm", dcm(n, long_pixel_data)), "wrong length"),
        (
            "no_rows_columns_bits",
            lambda n: one("i.dcm", dcm(n, no_dims)),
            "no valid (0028,0010) Rows, (0028,0011) Columns, (0028,0100) Bits Allocated",
        ),
        ("unknown_transfer_syntax", lambda n: one("i.dcm", dcm(n, bad_syntax)), "Transfer Syntax"),
        (
            "mislabelled_syntax",
            lambda n: one("i.dcm", dcm(n, jpeg_label)),
            "1.2.840.10008.1.2.4.50",
        ),
        (
            "unknown_sop_class",
            lambda n: one("i.dcm", dcm(n, unknown_sop_class)),
            "without Pixel Data",
        ),
        ("zero_by_zero", lambda n: one("i.dcm", dcm(n, zero_by_zero)), "is a 0 x 0 image"),
        # valid: a zero spacing is taken for an unknown one (stored as None), the image is kept
        ("zero_spacing", lambda n: one("i.dcm", dcm(n, zero_spacing)), None),
        # valid: an empty Window Center is an unusable window, the percentile fallback applies
        ("empty_window", lambda n: one("i.dcm", dcm(n, empty_window)), None),
    ]


def add_hostile(root: Path, *, seed: int = 0, max_members: int = 60) -> Corpus:
    """Add the hostile corpus to the datamart at ``root`` (a copy: it is written to).

    ``max_members`` is the ``index.max_members`` cap the build will use: the member-count
    zip gets ten members more (the test lowers the cap instead of writing 20,000 members).
    """
    with warnings.catch_warnings():  # pydicom warns about the values planted on purpose
        warnings.simplefilter("ignore", UserWarning)
        return _add_hostile(root, seed=seed, max_members=max_members)


def _add_hostile(root: Path, *, seed: int, max_members: int) -> Corpus:
    rng = np.random.default_rng([seed, 7])
    corpus = Corpus()
    cxr_dir, ct_dir = root / CXR_BATCH, root / CT_BATCH
    cxr_dir.mkdir()
    ct_dir.mkdir()
    n = 0
    for kind, make, reason in _cxr_cases(rng):
        n += 1
        study = _study(n)
        name = _name(study, n)
        (cxr_dir / name).write_bytes(make(n))
        if reason is None:
            corpus.valid.append(f"{CXR_BATCH}/{name}")
        else:
            corpus.hostile.append(Hostile(f"{CXR_BATCH}/{name}", reason, kind))

    n += 1
    name = _name(_study(n), n)
    ratio_bomb(cxr_dir / name)
    corpus.hostile.append(Hostile(f"{CXR_BATCH}/{name}", "possible zip bomb", "ratio_bomb"))

    n += 1
    name = _name(_study(n), n)
    base = synth.dicom_bytes(make_cxr(n, rng))
    members = [(f"m{i:05d}.dcm", base) for i in range(max_members + 10)]
    (cxr_dir / name).write_bytes(zip_bytes(members))
    corpus.hostile.append(Hostile(f"{CXR_BATCH}/{name}", "index.max_members", "member_count"))

    folder = cxr_dir / "an empty series folder"
    folder.mkdir()
    corpus.hostile.append(
        Hostile(f"{CXR_BATCH}/{folder.name}", "a folder inside a batch folder", "empty_folder")
    )

    n += 1
    study = _study(n, description=UNICODE_DESCRIPTION)
    data = synth.dicom_bytes(make_cxr(n, rng, description=UNICODE_DESCRIPTION))
    name = _name(study, n)
    (cxr_dir / name).write_bytes(zip_bytes([("série 1/ímage 1 胸.dcm", data)]))
    corpus.valid.append(f"{CXR_BATCH}/{name}")

    n += 1
    study = _study(n, description="CT-CHEST-WO")
    slices = _ct_series(n, rng, nan_slice=5)
    name = _name(study, n)
    (ct_dir / name).write_bytes(
        zip_bytes([(f"S1/{i:03d}.dcm", synth.dicom_bytes(s)) for i, s in enumerate(slices)])
    )
    corpus.hostile.append(
        Hostile(f"{CT_BATCH}/{name}", "missing (0020,0032) Image Position", "nan_positions")
    )
    return corpus
