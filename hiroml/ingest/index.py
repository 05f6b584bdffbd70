"""Header indexing: one :class:`~hiroml.records.Instance` per DICOM member, cached in SQLite.

Each zip is read in memory through :class:`hiroml.ingest.zipio.SafeZip`; each member is parsed
with pydicom and fingerprinted (XXH3-128 of the raw (7FE0,0010) Pixel Data bytes); no pixel is
decoded. Results are cached per zip in an SQLite database keyed by the zip's path relative
to the datamart root, its size and its modification time, so a weekly re-run reads only new
or changed zips, and zips that disappeared leave the index.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
import xxhash
from pydicom.dataset import Dataset

from hiroml.config import ExecutorConfig, IndexConfig, LimitsConfig
from hiroml.dicom import decode as dicom
from hiroml.dicom import rawheader
from hiroml.dicom import uids as dicom_uids
from hiroml.dicom.limits import DEFAULT as DEFAULT_LIMITS
from hiroml.dicom.limits import check_pixels
from hiroml.errors import BadInputError, ZipSafetyError, internal_trace
from hiroml.ingest.cache import IndexCache
from hiroml.pipeline import faults
from hiroml.pipeline.executor import Retry, map_items
from hiroml.records import ExamZip, Instance, Problem, ZipIndex
from hiroml.vocab import Action

log = logging.getLogger(__name__)
_IMAGE_SIZE_TAGS = (
    ("(0028,0010) Rows", "Rows"),
    ("(0028,0011) Columns", "Columns"),
    ("(0028,0100) Bits Allocated", "BitsAllocated"),
)
# The header values an Instance is made of, read once per member: keyword -> value,
# for the elements present. The helpers below read from it, never from the Dataset again.
Header = Mapping[str, Any]
_HEADER_KEYWORDS = (
    "AcquisitionTime",
    "BitsAllocated",
    "BitsStored",
    "BodyPartExamined",
    "Columns",
    "ConvolutionKernel",
    "FrameOfReferenceUID",
    "GantryDetectorTilt",
    "ImageLaterality",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "ImageType",
    "ImagerPixelSpacing",
    "InstanceNumber",
    "Modality",
    "NumberOfFrames",
    "PatientAge",
    "PatientID",
    "PatientSex",
    "PhotometricInterpretation",
    "PixelRepresentation",
    "PixelSpacing",
    "PresentationIntentType",
    "RescaleIntercept",
    "RescaleSlope",
    "Rows",
    "SOPClassUID",
    "SOPInstanceUID",
    "SamplesPerPixel",
    "SeriesDate",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesTime",
    "SliceThickness",
    "StudyDate",
    "StudyInstanceUID",
    "StudyTime",
    "ViewPosition",
)
_HEADER_TABLE = rawheader.vr_table(_HEADER_KEYWORDS)


def header_values(ds: Dataset) -> dict[str, Any]:
    """The values of the (top-level) elements :func:`instance_from_dataset` reads, each read
    once by tag, most of them from the raw element (:func:`hiroml.dicom.rawheader.values`: several
    values come as a list, an empty element as None)."""
    return rawheader.values(ds, _HEADER_TABLE)


def _text(h: Header, keyword: str) -> str:
    value = h.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(h: Header, keyword: str) -> int | None:
    try:
        value = h.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _floats(h: Header, keyword: str, n: int) -> tuple[float, ...] | None:
    try:
        value = h.get(keyword)
        if value is None or value == "":
            return None
        seq = list(value) if isinstance(value, pydicom.multival.MultiValue | list) else [value]
        out = tuple(float(v) for v in seq)
    except (TypeError, ValueError):
        return None
    # NaN and infinities are no valid DS value: such an attribute counts as absent.
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _float(h: Header, keyword: str) -> float | None:
    vals = _floats(h, keyword, 1)
    return vals[0] if vals else None


def _check_pixel_size(h: Header, n_bytes: int, tsyntax: str, *, label: str) -> None:
    """:class:`BadInputError` naming ``label`` when (7FE0,0010) Pixel Data of ``n_bytes``
    cannot be what the header describes: (0028,0010) Rows, (0028,0011) Columns or (0028,0100)
    Bits Allocated absent or zero; or, for a native transfer syntax, fewer bytes than Rows x
    Columns x Bits Allocated x (0028,0008) Number of Frames x (0028,0002) Samples per Pixel
    (truncated) or more than one padding byte beyond them (a header that lies)."""
    rows, cols = _int(h, "Rows") or 0, _int(h, "Columns") or 0
    bits = _int(h, "BitsAllocated") or 0
    frames = _int(h, "NumberOfFrames") or 1
    spp = _int(h, "SamplesPerPixel") or 1
    absent = [tag for tag, kw in _IMAGE_SIZE_TAGS if not isinstance(_int(h, kw), int)]
    if absent:
        raise BadInputError(
            f"{label} has (7FE0,0010) Pixel Data but no valid "
            f"{', '.join(absent)}: its pixels cannot be decoded"
        )
    if rows <= 0 or cols <= 0 or bits <= 0:
        raise BadInputError(
            f"{label} is a {rows} x {cols} image of {bits} bits "
            "((0028,0010) Rows x (0028,0011) Columns, (0028,0100) Bits Allocated): "
            "no pixels to store"
        )
    if tsyntax not in dicom_uids.UNCOMPRESSED or bits < 8:
        return
    want = rows * cols * frames * spp * bits // 8
    header = f"(Rows {rows} x Columns {cols} x {bits} bits x {frames} frames) needs {want}"
    if n_bytes < want:
        raise BadInputError(
            f"{label} has {n_bytes} bytes of pixel data, its header {header}: truncated pixel data"
        )
    # One trailing byte pads an odd length to an even one; more means that the header
    # does not describe the data (wrong Rows/Columns/Bits Allocated/Number of Frames).
    if n_bytes > want + 1:
        raise BadInputError(
            f"{label} has {n_bytes} bytes of pixel data, its header {header}: "
            "pixel data of the wrong length"
        )


def _check_pixels(
    h: Header, pixels: bytes | memoryview, tsyntax: str, *, label: str, limits: LimitsConfig
) -> None:
    """:func:`_check_pixel_size`, then :func:`hiroml.dicom.limits.check_pixels`: the sizes
    within ``limits``, the codestream header in agreement with the DICOM header."""
    _check_pixel_size(h, len(pixels), tsyntax, label=label)
    check_pixels(
        tsyntax=tsyntax, rows=_int(h, "Rows") or 0, cols=_int(h, "Columns") or 0,
        samples=_int(h, "SamplesPerPixel") or 1, bits_allocated=_int(h, "BitsAllocated") or 0,
        frames=_int(h, "NumberOfFrames") or 1, pixel_data=pixels, label=label, limits=limits,
    )  # fmt: skip


def _pixel_value(ds: Dataset) -> bytes | None:
    """The (7FE0,0010) Pixel Data value of a dataset read whole, as bytes; None without it."""
    if "PixelData" not in ds:
        return None
    raw = ds["PixelData"].value
    return raw if isinstance(raw, bytes) else bytes(raw or b"")


def instance_from_dataset(
    ds: Dataset,
    *,
    batch: str,
    zip_name: str,
    member: str,
    member_size: int,
    pixels: bytes | memoryview | None = None,
    read_note: str = "",
    limits: LimitsConfig = DEFAULT_LIMITS,
) -> Instance:
    """Build the header record of one instance. Tolerates absent or malformed optional
    attributes (they become ``None``/""); raises :class:`BadInputError` when (0008,0018)
    SOP Instance UID is missing or the pixel data is shorter than its header promises.
    ``pixels`` is the raw (7FE0,0010) Pixel Data value when the dataset was read without it
    (:func:`read_member`); ``read_note`` says how a file without a Part 10 header was read
    (:func:`hiroml.dicom.decode.parse`). Pixels over ``limits`` or a codestream header that
    disagrees with the DICOM header: :class:`BadInputError` (:func:`_check_pixels`)."""
    h = header_values(ds)
    sop = _text(h, "SOPInstanceUID")
    if not sop:
        raise BadInputError(f"{zip_name}: {member} has no (0008,0018) SOP Instance UID")
    tsyntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    pixel_bytes = pixels if pixels is not None else _pixel_value(ds)
    rows, cols = _int(h, "Rows") or 0, _int(h, "Columns") or 0
    bits = _int(h, "BitsAllocated") or 0
    frames = _int(h, "NumberOfFrames") or 1
    spp = _int(h, "SamplesPerPixel") or 1
    if pixel_bytes is not None:
        _check_pixels(h, pixel_bytes, tsyntax, label=f"{zip_name}: {member}", limits=limits)
    return Instance(
        batch=batch,
        zip=zip_name,
        member=member,
        member_size=member_size,
        sop_uid=sop,
        series_uid=_text(h, "SeriesInstanceUID"),
        study_uid=_text(h, "StudyInstanceUID"),
        sop_class_uid=_text(h, "SOPClassUID"),
        modality=_text(h, "Modality"),
        patient_id=_text(h, "PatientID"),
        patient_age=_text(h, "PatientAge"),
        sex=_text(h, "PatientSex"),
        study_date=_text(h, "StudyDate"),
        study_time=_text(h, "StudyTime"),
        series_date=_text(h, "SeriesDate"),
        series_time=_text(h, "SeriesTime"),
        acquisition_time=_text(h, "AcquisitionTime"),
        image_type=tuple(_text(h, "ImageType").split("\\")) if "ImageType" in h else (),
        position=_floats(h, "ImagePositionPatient", 3),  # type: ignore[arg-type]
        orientation=_floats(h, "ImageOrientationPatient", 6),  # type: ignore[arg-type]
        pixel_spacing=_floats(h, "PixelSpacing", 2),  # type: ignore[arg-type]
        imager_pixel_spacing=_floats(h, "ImagerPixelSpacing", 2),  # type: ignore[arg-type]
        slice_thickness=_float(h, "SliceThickness"),
        rows=rows,
        columns=cols,
        number_of_frames=frames,
        samples_per_pixel=spp,
        photometric=_text(h, "PhotometricInterpretation"),
        bits_allocated=bits,
        bits_stored=_int(h, "BitsStored") or 0,
        pixel_representation=_int(h, "PixelRepresentation") or 0,
        rescale_slope=_float(h, "RescaleSlope"),
        rescale_intercept=_float(h, "RescaleIntercept"),
        transfer_syntax=tsyntax,
        view_position=_text(h, "ViewPosition"),
        laterality=_text(h, "ImageLaterality"),
        body_part=_text(h, "BodyPartExamined"),
        series_description=_text(h, "SeriesDescription"),
        series_number=_int(h, "SeriesNumber"),
        instance_number=_int(h, "InstanceNumber"),
        kernel=_text(h, "ConvolutionKernel"),
        gantry_tilt=_float(h, "GantryDetectorTilt"),
        frame_of_reference_uid=_text(h, "FrameOfReferenceUID"),
        has_pixels=pixel_bytes is not None,
        pixel_hash=xxhash.xxh3_128_hexdigest(pixel_bytes) if pixel_bytes is not None else "",
        read_note=read_note,
        presentation_intent=_text(h, "PresentationIntentType"),
    )


_PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) Pixel Data, little endian
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0


def _parse(
    data: bytes, *, label: str, stop_before_pixels: bool, limits: LimitsConfig = DEFAULT_LIMITS
) -> tuple[Dataset, int, str]:
    """:func:`hiroml.dicom.decode.parse` of a member's bytes: the dataset, the offset where reading
    stopped (the Pixel Data tag when ``stop_before_pixels``) and the note on how a file
    without a Part 10 header was read. :class:`BadInputError` names ``label`` and the cause."""
    parsed = dicom.parse(data, label=label, stop_before_pixels=stop_before_pixels, limits=limits)
    return parsed.dataset, parsed.stopped_at, parsed.note


def _pixel_data_value(data: bytes, pos: int, tsyntax: str, *, label: str) -> memoryview | None:
    """The raw Pixel Data value that starts at ``pos`` in a little-endian, non-deflated
    file, without copying it (encapsulated: the items, without the sequence delimiter)."""
    if data[pos : pos + 4] != _PIXEL_TAG:
        return None
    if tsyntax == dicom_uids.IMPLICIT_VR_LE:
        (length,) = struct.unpack_from("<I", data, pos + 4)
        start = pos + 8
    else:
        (length,) = struct.unpack_from("<I", data, pos + 8)
        start = pos + 12
    view = memoryview(data)
    if length == 0xFFFFFFFF:
        end = data.rfind(_SEQ_DELIMITER, start)
        if end < 0:
            raise BadInputError(
                f"{label}: truncated DICOM (the encapsulated (7FE0,0010) Pixel Data has no "
                "sequence delimiter)"
            )
        return view[start:end]
    if start + length > len(data):
        raise BadInputError(
            f"{label}: truncated DICOM ((7FE0,0010) Pixel Data declares {length} bytes, "
            f"{len(data) - start} remain): truncated pixel data"
        )
    return view[start : start + length]


def read_member(data: bytes, *, label: str) -> tuple[Dataset, bytes | memoryview | None]:
    """The header of a DICOM member (no pixel data) and its raw Pixel Data value (None when
    it has none). The pixel value is sliced from ``data`` rather than parsed and copied by
    pydicom, except for deflated and big-endian files, which are read whole."""
    ds, pixels, _ = _read_member(data, label=label)
    return ds, pixels


def _read_member(
    data: bytes, *, label: str, limits: LimitsConfig = DEFAULT_LIMITS
) -> tuple[Dataset, bytes | memoryview | None, str]:
    """:func:`read_member`, and the note on how a file without a Part 10 header was read."""
    ds, pos, note = _parse(data, label=label, stop_before_pixels=True, limits=limits)
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    tsyntax = str(ts) if ts is not None else ""
    if ts is not None and not dicom_uids.is_transfer_syntax(tsyntax):
        raise BadInputError(f"{label}: unknown (0002,0010) Transfer Syntax UID {ts}")
    pixels: bytes | memoryview | None = None
    if tsyntax and dicom_uids.is_little_endian(tsyntax) and not dicom_uids.is_deflated(tsyntax):
        pixels = _pixel_data_value(data, pos, tsyntax, label=label) if pos < len(data) else None
        whole = pixels is None and pos < len(data)  # e.g. float pixel data: pydicom decides
    else:  # deflated, big endian or no transfer syntax: the offset means nothing here
        whole = True
    if whole:
        full, _, _ = _parse(data, label=label, stop_before_pixels=False, limits=limits)
        pixels = _pixel_value(full)
    if pixels is None and "Rows" in ds and "Columns" in ds:
        raise BadInputError(
            f"{label}: an image (Rows/Columns set) without (7FE0,0010) Pixel Data: the file is "
            "truncated or its pixels are missing"
        )
    return ds, pixels, note


# What the index hands each member it read, besides indexing it: the zip, the member's record
# and its bytes (hiroml.pipeline.scratch converts radiographs there, so that they are read once).
# The parsed header (no Pixel Data) and the Pixel Data value sliced from the bytes come along
# when the member is a little-endian, non-deflated file (None otherwise), so that the hook
# need not parse the member again.
MemberHook = Callable[[ExamZip, Instance, bytes, Dataset | None, memoryview | None], None]


def index_zip(
    path: str | os.PathLike[str],
    ezip: ExamZip,
    limits: IndexConfig,
    on_member: MemberHook | None = None,
    pixel_limits: LimitsConfig = DEFAULT_LIMITS,
) -> ZipIndex:
    """Index one exam zip; a bad zip or member (over ``pixel_limits`` too) is a :class:`Problem`
    naming it, never raised. ``on_member`` gets each indexed member's bytes, once per SOP UID."""
    from hiroml.ingest.zipio import SafeZip

    batch, name = ezip.batch.name, ezip.file_name
    faults.zip_read(name)
    instances: list[Instance] = []
    problems: list[Problem] = []

    def problem(
        member: str, reason: str, action: Action = Action.ERROR, internal: str = ""
    ) -> None:
        problems.append(Problem(name, batch, member, "index", reason, action, internal=internal))

    try:
        z = SafeZip(path, limits)
    except (BadInputError, ZipSafetyError, OSError) as e:
        problem("", str(e))
        return ZipIndex(ezip.rel_path, (), tuple(problems))
    with z:
        for member, reason in z.rejected:
            problem(member, f"{name}: member {member!r} refused: {reason}")
        members = z.members()
        if not members:
            what = "no usable files" if z.rejected else "no files"
            problem("", f"{name}: the zip holds {what}")
        seen: dict[str, str] = {}
        for member in members:
            label = f"{name}: {member}"
            try:
                data = z.read(member)
                ds, pixels, note = _read_member(data, label=label, limits=pixel_limits)
                inst = instance_from_dataset(
                    ds,
                    batch=batch,
                    zip_name=name,
                    member=member,
                    member_size=len(data),
                    pixels=pixels,
                    read_note=note,
                    limits=pixel_limits,
                )
            except BadInputError as e:
                problem(member, str(e))
                continue
            except Exception as e:  # an unforeseen failure on one member: never fatal
                log.warning("%s: unexpected %s while indexing", label, type(e).__name__)
                reason = f"{label}: unreadable DICOM ({type(e).__name__}: {e})"
                problem(member, reason, internal=internal_trace(e))
                continue
            if inst.sop_uid in seen:
                problem(
                    member,
                    f"{label}: SOP Instance UID {inst.sop_uid} repeats member "
                    f"{seen[inst.sop_uid]}; kept once",
                    Action.DUPLICATE,
                )
                continue
            seen[inst.sop_uid] = member
            instances.append(inst)
            if on_member is not None:
                sliced = pixels if isinstance(pixels, memoryview) else None
                on_member(ezip, inst, data, ds if sliced is not None else None, sliced)
    return ZipIndex(ezip.rel_path, tuple(instances), tuple(problems))


@dataclass(frozen=True, slots=True)
class IndexResult:
    instances: tuple[Instance, ...]
    problems: tuple[Problem, ...]
    read: int  # zips read now
    cached: int  # zips taken from the cache
    removed: int  # zips that left the index
    seconds: float
    bytes_read: int


_IndexJob = tuple[str, ExamZip, IndexConfig, "MemberHook | None", LimitsConfig]


def _index_job(args: _IndexJob) -> ZipIndex:
    return index_zip(*args)


def build_index(
    root: str | os.PathLike[str],
    zips: Sequence[ExamZip],
    *,
    db_path: str | os.PathLike[str],
    limits: IndexConfig,
    workers: int = 1,
    executor: ExecutorConfig | None = None,
    progress: bool = True,
    on_zip: Callable[[ZipIndex], None] | None = None,
    on_member: MemberHook | None = None,
    pixel_limits: LimitsConfig = DEFAULT_LIMITS,
) -> IndexResult:
    """Index ``zips`` (from :func:`hiroml.ingest.discover.discover`), reading only the new or
    changed ones; the database at ``db_path`` is updated in place.

    The zips are read by :func:`hiroml.pipeline.executor.map_items` on ``executor`` (a local pool or
    Dask); without one, by a local pool of ``workers`` processes. Results come back in the
    order of ``zips``, whatever the executor. ``on_member`` (picklable) runs in the worker on
    each member read now (:func:`index_zip`); zips taken from the cache are not read.
    """
    t0 = time.perf_counter()
    root = os.fspath(root)
    cache = IndexCache(db_path, root=root)
    try:
        known = cache.keys()
        current = {z.rel_path: z for z in zips}
        gone = [r for r in known if r not in current]
        cache.forget(gone)
        todo = [z for z in zips if known.get(z.rel_path) != (z.size, z.mtime_ns)]
        fresh = {z.rel_path for z in todo}
        results: dict[str, ZipIndex] = {
            zi.rel_path: zi for zi in cache.load(r for r in current if r not in fresh)
        }
        nbytes = sum(z.size for z in todo)
        jobs = [
            (os.path.join(root, z.batch.name, z.file_name), z, limits, on_member, pixel_limits)
            for z in todo
        ]
        done = [0]

        def status(_zi: ZipIndex, _seconds: float) -> str:
            done[0] += 1
            return f"{done[0]}/{len(todo)} zips"

        stream = map_items(
            _index_job,
            jobs,
            executor if executor is not None else ExecutorConfig(workers=workers),
            # largest first: a big CT zip last would leave a worker idle
            weight=lambda job: job[1].size,
            step=lambda job: job[1].size,
            desc=f"index {len(todo)} zips",
            unit="B",
            unit_scale=True,
            progress=progress,
            status=status,
            retry=Retry(lambda job: [job], _index_died, lambda _job, parts: parts[0]),
        )
        _collect(((job[1], zi) for job, zi in stream), cache, results, on_zip)
        cache.commit()
    finally:
        cache.close()
    ordered = [results[z.rel_path] for z in zips if z.rel_path in results]
    return IndexResult(
        instances=tuple(i for zi in ordered for i in zi.instances),
        problems=tuple(p for zi in ordered for p in zi.problems),
        read=len(todo),
        cached=len(zips) - len(todo),
        removed=len(gone),
        seconds=time.perf_counter() - t0,
        bytes_read=nbytes,
    )


def _index_died(job: _IndexJob, reason: str) -> ZipIndex:
    """The index of a zip whose worker process died reading it, alone: an error row."""
    ezip = job[1]
    reason = f"{ezip.file_name}: {reason} while it was indexed"
    return ZipIndex(
        ezip.rel_path, (), (Problem(ezip.file_name, ezip.batch.name, "", "index", reason),)
    )


def _collect(
    stream: Iterable[tuple[ExamZip, ZipIndex]],
    cache: IndexCache,
    results: dict[str, ZipIndex],
    on_zip: Callable[[ZipIndex], None] | None,
) -> None:
    for n, (ezip, zi) in enumerate(stream, 1):
        cache.store(ezip, zi)
        results[zi.rel_path] = zi
        if on_zip is not None:
            on_zip(zi)
        if n % 64 == 0:
            cache.commit()  # a crash keeps what was indexed so far
