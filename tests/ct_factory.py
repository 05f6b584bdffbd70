"""A small, seeded factory of synthetic CT series, built in code (nothing written to the repo).

Each slice is a complete DICOM CT Image Storage dataset (uncompressed, explicit VR little
endian) whose stored values come from a function of the *physical position* of each pixel, so a
test can check any resampled volume against the truth. Geometry conventions (DICOM, LPS, mm):
pixel (row j, column i) of a slice lies at IPP + i * dx * rowdir + j * dy * coldir, with
(0028,0030) Pixel Spacing = [dy, dx] (row spacing, column spacing).
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from hiroml.records import Exam, Instance
from hiroml.vocab import Modality

# HU as a function of physical position: (N, 3) mm -> (N,) HU
ValueFn = Callable[[np.ndarray], np.ndarray]


def smooth_phantom(points: np.ndarray) -> np.ndarray:
    """A smooth HU field, steep but gently curved (gradient up to ~45 HU/mm, features ~30 mm):
    linear interpolation at 0.7 to 2.5 mm spacing errs by a few HU, while a geometry error of
    0.1 mm already costs about as much."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    return (
        100.0
        + 1.5 * x
        - 1.0 * y
        + 2.0 * z
        + 200.0 * np.sin(x / 5.0) * np.cos(y / 6.0)
        + 40.0 * np.sin(z / 6.0)
    )


@dataclass
class SeriesSpec:
    """Parameters of one synthetic series; every length in mm, angles in degrees.

    ``tilt_deg`` tilts the image plane about the patient x axis (a gantry tilt): the column
    direction becomes (0, cos t, -sin t) while the slices still advance along the table (z),
    so the step between positions is no longer parallel to the slice normal.
    """

    n: int = 12
    rows: int = 24
    cols: int = 20
    pixel_spacing: tuple[float, float] = (0.8, 0.7)  # (dy, dx)
    step: float = 2.5  # table advance between slices
    thickness: float | None = None  # default: step
    origin: tuple[float, float, float] = (-8.0, -10.0, -40.0)
    tilt_deg: float = 0.0
    positions_z: Sequence[float] | None = None  # explicit table positions (gaps, uneven)
    orientation: Sequence[float] | None = None  # explicit (0020,0037); overrides tilt_deg
    slope: Sequence[float] | float = 1.0
    intercept: Sequence[float] | float = -1024.0
    values: ValueFn | None = smooth_phantom  # None: seeded random integers
    seed: int = 0
    series_uid: str = field(default_factory=generate_uid)
    study_uid: str = "1.2.826.0.1.3680043.8.498.1"
    kernel: str = "B70f"
    description: str = "CHEST"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    signed: bool = True
    bits_stored: int = 16
    acquisition_number: int = 1
    instance_offset: int = 0


def orientation_for(tilt_deg: float) -> tuple[float, float, float, float, float, float]:
    t = math.radians(tilt_deg)
    return (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t))


def _per_slice(v: Sequence[float] | float, n: int) -> list[float]:
    if isinstance(v, int | float):
        return [float(v)] * n
    out = [float(x) for x in v]
    assert len(out) == n
    return out


def pixel_points(
    ipp: Sequence[float], iop: Sequence[float], pixel_spacing: Sequence[float], rows: int, cols: int
) -> np.ndarray:
    """Physical positions (rows*cols, 3) of every pixel of a slice, row-major (j, i)."""
    r = np.asarray(iop[:3], float)
    c = np.asarray(iop[3:], float)
    dy, dx = float(pixel_spacing[0]), float(pixel_spacing[1])
    jj, ii = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pts = (
        np.asarray(ipp, float)[None, :]
        + (ii.reshape(-1, 1) * dx) * r[None, :]
        + (jj.reshape(-1, 1) * dy) * c[None, :]
    )
    return pts


def make_slice(
    spec: SeriesSpec,
    *,
    ipp: Sequence[float],
    iop: Sequence[float],
    index: int,
    slope: float,
    intercept: float,
    rng: np.random.Generator,
    hu: np.ndarray | None = None,
) -> Dataset:
    """One CT slice; stored value = round((HU - intercept) / slope). ``hu`` (rows, cols), when
    given, replaces ``spec.values``."""
    if hu is not None:
        pass
    elif spec.values is None:
        hu = rng.integers(-1000, 2000, size=(spec.rows, spec.cols)).astype(np.float64)
    else:
        pts = pixel_points(ipp, iop, spec.pixel_spacing, spec.rows, spec.cols)
        hu = spec.values(pts).reshape(spec.rows, spec.cols)
    stored = np.round((hu - intercept) / slope)
    if spec.signed:
        lo, hi = -(2 ** (spec.bits_stored - 1)), 2 ** (spec.bits_stored - 1) - 1
        arr = np.clip(stored, lo, hi).astype("<i2")
    else:
        arr = np.clip(stored, 0, 2**spec.bits_stored - 1).astype("<u2")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    sop = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.Modality = "CT"
    ds.PatientID = "1234"
    ds.PatientName = "1234"
    ds.ImageType = list(spec.image_type)
    ds.SeriesDescription = spec.description
    ds.SeriesNumber = 2
    ds.InstanceNumber = spec.instance_offset + index + 1
    ds.AcquisitionNumber = spec.acquisition_number
    ds.ConvolutionKernel = spec.kernel
    ds.SliceThickness = spec.thickness if spec.thickness is not None else spec.step
    ds.GantryDetectorTilt = spec.tilt_deg
    ds.FrameOfReferenceUID = spec.study_uid + ".9"
    ds.ImagePositionPatient = [round(float(v), 6) for v in ipp]
    ds.ImageOrientationPatient = [round(float(v), 8) for v in iop]
    ds.PixelSpacing = list(spec.pixel_spacing)
    ds.Rows = spec.rows
    ds.Columns = spec.cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 1 if spec.signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "HU"
    ds.PixelData = arr.tobytes()
    return ds


def make_series(spec: SeriesSpec) -> list[Dataset]:
    """The slices of ``spec`` in acquisition order (tests shuffle them themselves)."""
    rng = np.random.default_rng(spec.seed)
    iop = (
        tuple(spec.orientation) if spec.orientation is not None else orientation_for(spec.tilt_deg)
    )
    zs = (
        list(spec.positions_z)
        if spec.positions_z is not None
        else [spec.origin[2] + k * spec.step for k in range(spec.n)]
    )
    slopes = _per_slice(spec.slope, len(zs))
    intercepts = _per_slice(spec.intercept, len(zs))
    out = []
    for k, z in enumerate(zs):
        ipp = (spec.origin[0], spec.origin[1], float(z))
        out.append(
            make_slice(
                spec, ipp=ipp, iop=iop, index=k, slope=slopes[k], intercept=intercepts[k], rng=rng
            )
        )
    return out


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def to_instance(
    ds: Dataset, *, zip_name: str = "1234_20200301-140030_A003_CT-CHEST.zip", member: str = ""
) -> Instance:
    """The header record the index stage would produce for ``ds`` (no pixel hash)."""

    def f(kw: str) -> float | None:
        v = ds.get(kw)
        return float(v) if v is not None and v != "" else None

    def t(kw: str) -> tuple[float, ...] | None:
        v = ds.get(kw)
        return tuple(float(x) for x in v) if v is not None else None

    it = ds.get("ImageType")
    return Instance(
        batch="CT-UPDATE-20200602-COMPLETE",
        zip=zip_name,
        member=member or f"{ds.SeriesInstanceUID[-8:]}/{ds.SOPInstanceUID[-10:]}.dcm",
        member_size=0,
        sop_uid=str(ds.SOPInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        modality=str(ds.get("Modality", "")),
        patient_id=str(ds.get("PatientID", "")),
        acquisition_time=str(ds.get("AcquisitionTime", "")),
        image_type=tuple(str(x) for x in it) if it is not None else (),
        position=t("ImagePositionPatient"),  # type: ignore[arg-type]
        orientation=t("ImageOrientationPatient"),  # type: ignore[arg-type]
        pixel_spacing=t("PixelSpacing"),  # type: ignore[arg-type]
        slice_thickness=f("SliceThickness"),
        rows=int(ds.get("Rows", 0)),
        columns=int(ds.get("Columns", 0)),
        number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1)),
        photometric=str(ds.get("PhotometricInterpretation", "")),
        bits_allocated=int(ds.get("BitsAllocated", 0)),
        bits_stored=int(ds.get("BitsStored", 0)),
        pixel_representation=int(ds.get("PixelRepresentation", 0)),
        rescale_slope=f("RescaleSlope"),
        rescale_intercept=f("RescaleIntercept"),
        transfer_syntax=str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "")),
        series_description=str(ds.get("SeriesDescription", "")),
        series_number=int(ds.SeriesNumber) if ds.get("SeriesNumber") is not None else None,
        instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") is not None else None,
        kernel="\\".join(ds.ConvolutionKernel)
        if ds.get("ConvolutionKernel") is not None and not isinstance(ds.ConvolutionKernel, str)
        else str(ds.get("ConvolutionKernel", "")),
        gantry_tilt=f("GantryDetectorTilt"),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        has_pixels="PixelData" in ds,
    )


def ct_exam(insts: Sequence[Instance], exam_key: str = "1234_20200508-105300_A002") -> Exam:
    """One chest CT exam of patient 1234 holding ``insts`` (its zips: theirs)."""
    return Exam(
        exam_key=exam_key,
        modality=Modality.CT,
        patient_id="1234",
        source_patient_id="1234",
        hiro_id="A002",
        time=dt.datetime(2020, 5, 8, 10, 53),
        description="CT-CHEST-WO",
        pediatric=False,
        batch="CT-UPDATE-20200602-COMPLETE",
        zips=tuple(sorted({i.zip for i in insts})),
        instances=tuple(insts),
    )
