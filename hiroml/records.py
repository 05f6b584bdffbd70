"""Typed records that flow between the stages.

Every record is a frozen, slotted dataclass; update with :func:`dataclasses.replace`.
Code strings that end up in output files are :class:`enum.StrEnum` members, so they
compare equal to (and serialise as) their plain string values.

Axis conventions: numpy arrays are (z, y, x) for volumes and (y, x) for images;
geometry tuples named ``*_xyz`` and ``direction`` follow SimpleITK's (x, y, z) order
in the DICOM patient coordinate system (LPS), lengths in mm.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from hiroml.vocab import Action, BatchStatus, Modality, View

# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True, slots=True)
class Batch:
    """One weekly batch folder, e.g. ``CXR-UPDATE-20200523-COMPLETE``."""

    name: str
    modality: Modality
    date: dt.date
    status: BatchStatus


@dataclass(frozen=True, slots=True)
class ZipName:
    """The parts of ``PATIENT_yyyymmdd-hhmmss_HIROID_Description.zip``."""

    patient_id: str
    time: dt.datetime
    hiro_id: str
    description: str
    pediatric: bool


@dataclass(frozen=True, slots=True)
class ExamZip:
    """One exam zip found in a batch folder.

    ``rel_path`` is ``<batch>/<file name>``, relative to the datamart root: the key by which
    every later stage refers to the zip.
    """

    batch: Batch
    file_name: str
    name: ZipName
    size: int
    mtime_ns: int

    @property
    def rel_path(self) -> str:
        return f"{self.batch.name}/{self.file_name}"


@dataclass(frozen=True, slots=True)
class Problem:
    """A bad input found by any stage: becomes an ``error`` (or ``skipped``/``dropped``) audit
    row. ``zip`` is the zip file name ("" for problems with a folder), ``member`` the member
    path inside the zip ("" when the whole zip is concerned)."""

    zip: str
    batch: str
    member: str
    stage: str
    reason: str
    action: Action = Action.ERROR
    kept_as: str = ""  # the sample or exam a merged part went to (audit ``kept_as``)
    detail: str = ""  # supporting evidence (audit ``detail``), e.g. the seams of a stitch
    #: The traceback of an unexpected exception (a hiroml bug, not bad input:
    #: :func:`hiroml.errors.internal_trace`); "" for bad input. Not a column of audit.csv.
    internal: str = field(default="", compare=False, repr=False)


# --------------------------------------------------------------------------- index


@dataclass(frozen=True, slots=True)
class Instance:
    """The header of one DICOM instance (no pixels), as indexed from a zip member.

    DICOM attributes are named by keyword; tuples of numbers are ``None`` when the tag is
    absent or unreadable. ``pixel_hash`` is an XXH3-128 digest (hex) of the raw, still encoded
    (7FE0,0010) Pixel Data bytes ("" when there is none): equal hashes mean identical stored
    pixels. (A content fingerprint, not for security: 0.4 ms for a 15 MB radiograph where
    SHA-1 takes 8.)
    """

    batch: str
    zip: str  # zip file name
    member: str  # member path inside the zip
    member_size: int
    sop_uid: str  # (0008,0018) SOP Instance UID
    series_uid: str  # (0020,000E) Series Instance UID
    study_uid: str  # (0020,000D) Study Instance UID
    sop_class_uid: str  # (0008,0016) SOP Class UID
    modality: str  # (0008,0060) Modality, e.g. "CR", "DX", "CT"
    patient_id: str  # (0010,0020) Patient ID, as in the header
    patient_age: str = ""  # (0010,1010) Patient's Age, e.g. "057Y"
    sex: str = ""  # (0010,0040) Patient's Sex
    study_date: str = ""  # (0008,0020) DA
    study_time: str = ""  # (0008,0030) TM
    series_date: str = ""
    series_time: str = ""
    acquisition_time: str = ""
    image_type: tuple[str, ...] = ()  # (0008,0008)
    position: tuple[float, float, float] | None = None  # (0020,0032) mm
    orientation: tuple[float, float, float, float, float, float] | None = None  # (0020,0037)
    pixel_spacing: tuple[float, float] | None = None  # (0028,0030) row, column spacing mm
    imager_pixel_spacing: tuple[float, float] | None = None  # (0018,1164) mm
    slice_thickness: float | None = None  # (0018,0050) mm
    rows: int = 0
    columns: int = 0
    number_of_frames: int = 1
    samples_per_pixel: int = 1
    photometric: str = ""  # (0028,0004)
    bits_allocated: int = 0
    bits_stored: int = 0
    pixel_representation: int = 0
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    transfer_syntax: str = ""  # (0002,0010) Transfer Syntax UID
    view_position: str = ""  # (0018,5101)
    laterality: str = ""  # (0020,0062) Image Laterality
    body_part: str = ""  # (0018,0015)
    series_description: str = ""  # (0008,103E)
    series_number: int | None = None
    instance_number: int | None = None
    kernel: str = ""  # (0018,1210) Convolution Kernel, joined with "\\"
    gantry_tilt: float | None = None  # (0018,1120) degrees
    frame_of_reference_uid: str = ""  # (0020,0052) Frame of Reference UID
    has_pixels: bool = True
    pixel_hash: str = ""
    read_note: str = ""  # how a file without a Part 10 header was read ("" for a normal file)
    presentation_intent: str = ""  # (0008,0068) Presentation Intent Type, e.g. FOR PROCESSING
    # A frame of a multi-frame instance taken as a slice of its own (0-based; None for the
    # instance itself, as the index records it): see hiroml.ct.enhanced.
    frame: int | None = None

    @property
    def rel_zip(self) -> str:
        return f"{self.batch}/{self.zip}"

    @property
    def folder(self) -> str:
        """The series folder of the member (its parent path inside the zip)."""
        return self.member.rpartition("/")[0]


# --------------------------------------------------------------------------- exams


@dataclass(frozen=True, slots=True)
class Exam:
    """A logical exam after dedupe and split-scan merge.

    ``zips`` are rel paths (``<batch>/<file>``) of every zip whose instances it holds, the
    primary (earliest) first; ``instances`` hold each SOP Instance UID once.
    """

    exam_key: str
    modality: Modality
    patient_id: str  # current id, after the remap sheet
    source_patient_id: str  # as in the primary zip's name
    hiro_id: str
    time: dt.datetime
    description: str
    pediatric: bool
    batch: str  # batch of the primary zip
    zips: tuple[str, ...]
    instances: tuple[Instance, ...]


@dataclass(frozen=True, slots=True)
class ZipIndex:
    """What one zip holds: its instances and the problems met while reading it."""

    rel_path: str
    instances: tuple[Instance, ...]
    problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One decision; a row of audit.csv. ``kept_as`` names the zip or exam a duplicate or a
    merged part went to."""

    zip: str
    batch: str
    action: Action
    reason: str
    kept_as: str = ""
    detail: str = ""
    exam_key: str = ""
    member: str = ""
    #: What made the row, for code that filters rows (never matched on ``reason``, which is
    #: text for people); not a column of audit.csv. Empty for most rows.
    code: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class PatientGroup:
    """Patient ids that must share a split: linked by the remap sheet, a shared SOP Instance
    UID or identical pixels. ``links`` explain each non-remap link, for the report."""

    group: str
    patient_ids: tuple[str, ...]
    links: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # other ids of these patients: old ids (remap sheet, zip names)


# --------------------------------------------------------------------------- conversion


@dataclass(frozen=True, slots=True)
class CxrImage:
    """One radiograph, normalised for training. ``array`` is (H, W) in the storage dtype
    (float16 in [0, 1], or uint8/uint16 spanning [0, 1] by ``scale``)."""

    sop_uid: str
    series_uid: str
    rel_zip: str  # the source zip as ``batch/file`` (Instance.rel_zip; Instance.zip is the file)
    member: str
    array: np.ndarray = field(repr=False)
    view: View
    view_source: str  # which attribute decided the view, e.g. "ViewPosition=PA"
    original_shape: tuple[int, int]
    pixel_spacing: tuple[float, float] | None  # mm, as stored in the DICOM (row, col)
    spacing_after: tuple[float, float] | None  # mm, after resizing (row, col)
    photometric: str
    bits_stored: int
    transfer_syntax: str
    lut: str  # what produced the intensities, e.g. "rescale+window(c=2048,w=4096)"
    inverted: bool
    scale: float = 1.0  # stored value * scale -> [0, 1]
    # library that decoded the pixels (hiroml.dicom.uids.SYNTAXES), e.g. "openjpeg"
    decoder: str = ""
    frame: int = 0  # 0-based frame of a multi-frame object ((0028,0008) Number of Frames)
    n_frames: int = 1
    for_processing: bool = False  # raw detector data kept by cxr.keep_for_processing=true
    padding: str = ""  # (0028,0120) Pixel Padding Value left out of the statistics, if any
    decode_reduction: int = 1  # JPEG 2000 decoded 1/n per dimension (cxr.fast_jpeg2000)


@dataclass(frozen=True, slots=True)
class CtVolume:
    """One CT series as a volume in HU. ``array`` is numpy (z, y, x): int16 where lossless,
    else float32. Geometry in SimpleITK order, mm."""

    series_uid: str
    series_description: str
    kernel: str
    sop_uids: tuple[str, ...]
    zips: tuple[str, ...]
    array: np.ndarray = field(repr=False)
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 numbers, row-major 3x3, columns are the axis directions
    slice_thickness: float | None
    resampled: bool
    decisions: tuple[str, ...] = ()  # human-readable notes: "tilt 12.0 deg resampled", ...
    tilt_deg: float = 0.0  # gantry tilt found from the geometry (0 when none), degrees
    # a scan stitched from several series (hiroml.ct.stitch); empty for an ordinary series:
    stitched_series: tuple[str, ...] = ()  # (0020,000E) of every part, in order along the normal
    seams_mm: tuple[float, ...] = ()  # n . (0020,0032) of each part's first slice after the first
    seam_slices: tuple[int, ...] = ()  # z index in ``array`` of those slices (nearest)
    # library(ies) that decoded the slices (hiroml.dicom.uids.SYNTAXES): "numpy"
    decoder: str = ""

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return (int(x), int(y), int(z))


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """What a task tells the driver about one stored sample (the shard-side half of a
    manifest row; the driver adds patient, group and split)."""

    sample_key: str
    exam_key: str
    modality: str
    shard: str  # relative to the output folder
    shard_sha256: str
    data_hash: str
    shape: tuple[int, ...]
    series_uid: str
    sop_uid: str  # radiographs; "" for CT
    sop_uids: tuple[str, ...]
    pixel_hashes: tuple[str, ...]
    view: str
    size_xyz: tuple[int, ...] | None = None
    spacing_xyz: tuple[float, ...] | None = None
    origin_xyz: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    scale: float = 1.0  # stored value * scale -> [0, 1] (radiographs); 1.0 for CT (HU)
    # CT: the geometry decisions (tilt resampled, gap filled...): CtVolume.decisions, the
    # manifest's ct_decisions column and the shard's "decisions" attribute
    ct_decisions: tuple[str, ...] = ()
    signature: bytes = b""  # radiographs: hiroml.exams.neardup.signature, its 1,024 uint8 bytes
    stitched_series: tuple[str, ...] = ()  # CT: series a stitched scan was joined from
    seams_mm: tuple[float, ...] = ()  # CT: seam positions along the slice normal, mm
    seam_slices: tuple[int, ...] = ()  # CT: seam slice indices (z) in the volume
    frame: int | None = None  # radiographs: 0-based frame (0 for single-frame); None for CT
    for_processing: bool = False  # radiographs kept by cxr.keep_for_processing=true
    decoder: str = ""  # the decoder(s) of its pixels, as in its shard meta ("" where not recorded)


#: ``ManifestRow`` field metadata: the part of the output contract a column belongs to
#: (``docs/design.md`` §4): core (every row), ct (CT rows), extra (checksums and source ids),
#: more (later releases' columns) and optional (filled with the field's default when absent).
PART = "part"
_CORE = {PART: "core"}
_CT = {PART: "ct"}
_EXTRA = {PART: "extra"}
_MORE = {PART: "more"}
_OPTIONAL = {PART: "optional"}


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One row of ``manifest.parquet``: a stored sample with its exam, patient group and split.
    The field names are the manifest's column names, in its column order (spelled here only;
    :mod:`hiroml.store.tables` takes its column lists from these fields)."""

    sample_key: str = field(metadata=_CORE)
    shard: str = field(metadata=_CORE)  # relative to the output folder
    modality: str = field(metadata=_CORE)
    patient_id: str = field(metadata=_CORE)
    source_patient_id: str = field(metadata=_CORE)
    patient_group: str = field(metadata=_CORE)
    split: str = field(metadata=_CORE)
    exam_key: str = field(metadata=_CORE)
    hiro_id: str = field(metadata=_CORE)
    exam_time: dt.datetime = field(metadata=_CORE)  # (0008,0020)/(0008,0030) Study Date and Time
    description: str = field(metadata=_CORE)
    batch: str = field(metadata=_CORE)
    source_zips: list[str] = field(metadata=_CORE)
    series_uid: str = field(metadata=_CORE)
    sop_uid: str = field(metadata=_CORE)
    view: str = field(metadata=_CORE)
    age_years: float | None = field(metadata=_CORE)  # (0010,1010) Patient's Age, in years
    sex: str = field(metadata=_CORE)  # (0010,0040) Patient's Sex
    shape: list[int] = field(metadata=_CORE)  # stored array: (C, H, W) radiographs, (C, Z, Y, X) CT
    size_xyz: list[int] | None = field(metadata=_CT)  # voxels along x, y, z
    spacing_xyz: list[float] | None = field(metadata=_CT)  # mm along x, y, z
    origin_xyz: list[float] | None = field(metadata=_CT)  # mm, patient coordinates (LPS)
    direction: list[float] | None = field(metadata=_CT)  # 3x3 direction cosines, row-major
    shard_sha256: str = field(metadata=_EXTRA)
    data_hash: str = field(metadata=_EXTRA)
    sop_uids: list[str] = field(metadata=_EXTRA)
    pixel_hashes: list[str] = field(metadata=_EXTRA)
    batches: list[str] = field(metadata=_MORE)
    scale: float = field(metadata=_MORE)  # stored value * scale -> [0, 1] (radiographs); 1.0 for CT
    ct_decisions: list[str] = field(metadata=_MORE)
    stitched_series: list[str] = field(metadata=_MORE)
    seams_mm: list[float] = field(metadata=_MORE)
    seam_slices: list[int] = field(metadata=_MORE)
    frame: int | None = field(metadata=_MORE)
    for_processing: bool = field(metadata=_MORE)
    days_from_encounter: int | None = field(default=None, metadata=_OPTIONAL)
    orphan: bool = field(default=False, metadata=_OPTIONAL)
