"""The CT part of the DICOM factory: CT image slices and series, the dose report and the screen
save."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
)

from hiroml.synth.factory import (
    CT_STORAGE,
    DOSE_SR_STORAGE,
    StudyInfo,
    _base_dataset,
    _set_pixels,
    ds_str,
    fmt_time,
    make_cxr,
)
from hiroml.synth.phantoms import render_ct_slice


def make_ct_image(
    hu: np.ndarray,
    *,
    study: StudyInfo,
    sop_uid: str,
    series_uid: str,
    frame_uid: str,
    position: Sequence[float],
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    slice_thickness: float = 2.5,
    series_number: int = 2,
    instance_number: int = 1,
    series_description: str = "CHEST",
    kernel: str = "STANDARD",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    tilt_deg: float = 0.0,
    rescale: tuple[float, float] = (1.0, -1024.0),
    signed: bool = False,
    bits_stored: int = 12,
    transfer_syntax: str = ExplicitVRLittleEndian,
    slice_location: float | None = None,
) -> Dataset:
    """One CT Image Storage instance from an image in HU (rows, columns).

    Stored values are ``round((hu - intercept) / slope)``, clipped to ``bits_stored``
    (unsigned, or two's complement when ``signed``). Geometry: (0020,0032) Image Position
    (Patient) ``position`` and (0020,0037) ``orientation`` in LPS mm; (0018,1120) Gantry/
    Detector Tilt ``tilt_deg``; (0018,1210) Convolution Kernel ``kernel``.
    """
    ds = _base_dataset(
        study,
        sop_class=CT_STORAGE,
        sop_uid=sop_uid,
        series_uid=series_uid,
        modality="CT",
        series_number=series_number,
        instance_number=instance_number,
        series_description=series_description,
        transfer_syntax=transfer_syntax,
    )
    ds.ImageType = list(image_type)
    ds.BodyPartExamined = "CHEST"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionNumber = 1
    ds.AcquisitionTime = fmt_time(study.time)
    ds.KVP = "120"
    ds.XRayTubeCurrent = 180
    ds.SliceThickness = ds_str(slice_thickness)
    ds.ConvolutionKernel = kernel
    ds.GantryDetectorTilt = ds_str(tilt_deg)
    ds.PatientPosition = "FFS"
    ds.ImagePositionPatient = [ds_str(v) for v in position]
    ds.ImageOrientationPatient = [ds_str(v) for v in orientation]
    ds.SliceLocation = ds_str(position[2] if slice_location is None else slice_location)
    ds.PixelSpacing = [ds_str(pixel_spacing[0]), ds_str(pixel_spacing[1])]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(hu.shape[0]), int(hu.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = ds_str(rescale[0])
    ds.RescaleIntercept = ds_str(rescale[1])
    ds.RescaleType = "HU"
    ds.WindowCenter = ["-600", "40"]
    ds.WindowWidth = ["1500", "400"]
    _set_pixels(
        ds, ct_stored_values(hu, rescale, signed=signed, bits_stored=bits_stored), transfer_syntax
    )
    return ds


def ct_stored_values(
    hu: np.ndarray, rescale: tuple[float, float], *, signed: bool, bits_stored: int
) -> np.ndarray:
    """HU -> stored values for (0028,1053) slope and (0028,1052) intercept ``rescale``."""
    slope, intercept = rescale
    v = np.rint((hu.astype(np.float64) - intercept) / slope)
    if signed:
        lo, hi = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
        return np.clip(v, lo, hi).astype(np.int16)
    return np.clip(v, 0, (1 << bits_stored) - 1).astype(np.uint16)


def make_ct_series(
    *,
    study: StudyInfo,
    series_uid: str,
    sop_uids: Sequence[str],
    frame_uid: str,
    positions: Sequence[Sequence[float]],
    rng: np.random.Generator,
    matrix: int = 64,
    fov_mm: float = 360.0,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    slice_thickness: float = 2.5,
    kernel: str = "STANDARD",
    tilt_deg: float = 0.0,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    rescales: Sequence[tuple[float, float]] | None = None,
    signed: bool = False,
    series_number: int = 2,
    series_description: str = "CHEST",
    noise_hu: float = 10.0,
    contrast: bool = False,
    scale: float = 1.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Dataset]:
    """A CT series, one dataset per entry of ``positions`` (instance numbers 1..n in order).

    Each image samples :func:`ct_hu_at` at its own position and orientation, so any list of
    positions (uneven, gapped, repeated, sheared by a gantry tilt) gives consistent images.
    ``rescales`` gives a (slope, intercept) per slice (default (1, -1024), or (1, 0) when
    ``signed``).
    """
    if len(sop_uids) != len(positions):
        raise ValueError("one SOP Instance UID per position")
    spacing = fov_mm / matrix
    default = (1.0, 0.0) if signed else (1.0, -1024.0)
    out = []
    for i, (pos, sop) in enumerate(zip(positions, sop_uids, strict=True)):
        hu = render_ct_slice(
            pos,
            (matrix, matrix),
            (spacing, spacing),
            rng,
            orientation=orientation,
            noise_hu=noise_hu,
            scale=scale,
            contrast=contrast,
        )
        rescale = rescales[i] if rescales is not None else default
        out.append(
            make_ct_image(
                hu,
                study=study,
                sop_uid=sop,
                series_uid=series_uid,
                frame_uid=frame_uid,
                position=pos,
                orientation=orientation,
                pixel_spacing=(spacing, spacing),
                slice_thickness=slice_thickness,
                series_number=series_number,
                instance_number=i + 1,
                series_description=series_description,
                kernel=kernel,
                image_type=image_type,
                tilt_deg=tilt_deg,
                rescale=rescale,
                signed=signed,
                bits_stored=16 if signed else 12,
                transfer_syntax=transfer_syntax,
            )
        )
    return out


def make_dose_report(
    *, study: StudyInfo, sop_uid: str, series_uid: str, series_number: int = 999, dlp: float = 412.5
) -> Dataset:
    """An X-Ray Radiation Dose SR (no pixel data) with the exam's total DLP in mGy.cm."""
    ds = _base_dataset(
        study,
        sop_class=DOSE_SR_STORAGE,
        sop_uid=sop_uid,
        series_uid=series_uid,
        modality="SR",
        series_number=series_number,
        instance_number=1,
        series_description="Dose Report",
        transfer_syntax=ExplicitVRLittleEndian,
    )

    def code(value: str, scheme: str, meaning: str) -> Dataset:
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
        return c

    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence(
        [code("113701", "DCM", "X-Ray Radiation Dose Report")]
    )
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    tmpl = Dataset()
    tmpl.MappingResource = "DCMR"
    tmpl.TemplateIdentifier = "10011"
    ds.ContentTemplateSequence = DicomSequence([tmpl])
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "NUM"
    item.ConceptNameCodeSequence = DicomSequence(
        [code("113813", "DCM", "CT Dose Length Product Total")]
    )
    mv = Dataset()
    mv.NumericValue = ds_str(dlp)
    mv.MeasurementUnitsCodeSequence = DicomSequence([code("mGy.cm", "UCUM", "mGy.cm")])
    item.MeasuredValueSequence = DicomSequence([mv])
    ds.ContentSequence = DicomSequence([item])
    return ds


def make_screen_save(
    image: np.ndarray,
    *,
    study: StudyInfo,
    sop_uid: str,
    series_uid: str,
    modality: str = "CT",
    series_number: int = 99,
) -> Dataset:
    """A Secondary Capture "screen save" (8-bit MONOCHROME2, ImageType DERIVED\\SECONDARY)
    of ``image`` (any range; rescaled to 0..255) with a burned-in white banner."""
    a = image.astype(np.float32)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6) * 255.0
    a = np.rint(a).astype(np.uint8)
    a[: max(2, a.shape[0] // 16), :] = 255
    ds = make_cxr(
        a,
        study=study,
        sop_uid=sop_uid,
        series_uid=series_uid,
        sop_class="SC",
        view_position=None,
        series_description="SCREEN SAVE",
        series_number=series_number,
    )
    ds.Modality = modality
    return ds
