"""The DICOM factory: datasets (radiograph, CT image, dose report, screen save), Part 10
bytes, deterministic zips and the remap sheet.

Every function is pure given its arguments (random draws only from the ``rng`` passed in),
so the same inputs give byte-identical files, whatever the versions of pydicom, openpyxl
and the codec packages within the dependency bounds (see :func:`dicom_bytes`,
:func:`write_remap_sheet` and ``_set_pixels``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.encoders import JPEG2000LosslessEncoder, RLELosslessEncoder
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from hiroml.ingest.discover import REMAP_SHEET_NAME

REMAP_SHEET = REMAP_SHEET_NAME  # the datamart's remap sheet, named once in hiroml.ingest.discover
CLINICAL_NAME = "clinical.csv"

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
DOSE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.67"

SOP_CLASSES = {"CR": CR_STORAGE, "DX": DX_STORAGE, "SC": SC_STORAGE, "CT": CT_STORAGE}

#: Transfer syntaxes used for radiographs, in the order fillers cycle through them.
CXR_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    RLELossless,
)

#: Values planted in identifying tags; none of them may appear in any output.
PRIVATE_STRINGS: dict[str, str] = {
    "InstitutionName": "Mercy Lakeside Hospital Campus 7",
    "ReferringPhysicianName": "Quackenbush^Evangeline^T",
    "OperatorsName": "Technologist^Bartholomew",
    "ImageComments": "pt Zebulon Featherstonehaugh MRN 88812345 called back for repeat",
}

#: (0002,0012) Implementation Class UID and (0002,0013) Implementation Version Name of every
#: generated file: fixed, so that the bytes do not depend on the pydicom version.
SYNTH_IMPLEMENTATION_UID = "2.25." + str(
    int.from_bytes(hashlib.sha256(b"hiroml-synth implementation").digest()[:16], "big")
)
SYNTH_IMPLEMENTATION_VERSION = "HIROML_SYNTH_1"

#: Date of the remap workbook: its created/modified properties and its zip entries.
REMAP_SHEET_DATE = dt.datetime(2020, 6, 1)


def derive_uid(seed: int, *parts: object) -> str:
    """A deterministic UID ("2.25." form) derived from the seed and a label."""
    text = "\x1f".join([f"hiroml-synth:{seed}", *map(str, parts)])
    return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big"))


def values_hash(arr: np.ndarray) -> str:
    """BLAKE2b-128 hex digest of stored pixel values as little-endian 16-bit, C order
    (signed arrays as int16, else uint16); the form used in the ground truth."""
    a = np.ascontiguousarray(arr)
    a = a.astype("<i2") if a.dtype.kind == "i" else a.astype("<u2")
    return hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest()


def dicom_bytes(ds: Dataset) -> bytes:
    """Encode ``ds`` as a DICOM Part 10 file (preamble, File Meta) and return the bytes.

    (0002,0012) Implementation Class UID and (0002,0013) Implementation Version Name are the
    generator's own, fixed: pydicom would write its own version there."""
    ds.file_meta.ImplementationClassUID = UID(SYNTH_IMPLEMENTATION_UID)
    ds.file_meta.ImplementationVersionName = SYNTH_IMPLEMENTATION_VERSION
    bio = io.BytesIO()
    ds.save_as(bio, enforce_file_format=True)
    return bio.getvalue()


def zip_bytes(members: Sequence[tuple[str, bytes]], when: dt.datetime) -> bytes:
    """A deterministic deflated zip: fixed dates and attributes, members in the given order."""
    bio = io.BytesIO()
    stamp = (when.year, when.month, when.day, when.hour, when.minute, when.second)
    with zipfile.ZipFile(bio, "w") as zf:
        for name, data in members:
            zi = zipfile.ZipInfo(name, date_time=stamp)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            zi.create_system = 3
            zf.writestr(zi, data, compresslevel=6)
    return bio.getvalue()


def fmt_date(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d")


def fmt_time(t: dt.datetime) -> str:
    return t.strftime("%H%M%S")


def ds_str(value: float) -> str:
    """A DICOM DS string (at most 16 characters)."""
    for digits in (10, 8, 6):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{value:.6g}"


@dataclass(frozen=True, slots=True)
class StudyInfo:
    """Patient and study attributes shared by every instance of one exam."""

    patient_id: str  # (0010,0010) Patient's Name and (0010,0020) Patient ID
    time: dt.datetime  # (0008,0020) Study Date + (0008,0030) Study Time
    study_uid: str  # (0020,000D)
    sex: str = "F"  # (0010,0040)
    age: str = "057Y"  # (0010,1010)
    description: str = "XR-CHEST-PA-LATERAL"  # (0008,1030) Study Description
    manufacturer: str = "SYNTH"
    private: bool = True  # fill InstitutionName etc. with PRIVATE_STRINGS


def _base_dataset(
    study: StudyInfo,
    *,
    sop_class: str,
    sop_uid: str,
    series_uid: str,
    modality: str,
    series_number: int,
    instance_number: int,
    series_description: str,
    transfer_syntax: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = fmt_date(study.time)
    ds.SeriesDate = fmt_date(study.time)
    ds.ContentDate = fmt_date(study.time)
    ds.StudyTime = fmt_time(study.time)
    ds.SeriesTime = fmt_time(study.time)
    ds.ContentTime = fmt_time(study.time)
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = study.manufacturer
    if study.private:
        for key, value in PRIVATE_STRINGS.items():
            if key != "ImageComments":
                setattr(ds, key, value)
    else:
        ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.description.replace("-", " ")
    ds.SeriesDescription = series_description
    ds.PatientName = study.patient_id
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = study.sex
    ds.PatientAge = study.age
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    return ds


def _set_pixels(ds: Dataset, arr: np.ndarray, transfer_syntax: str) -> None:
    """Store ``arr`` (rows, columns) as (7FE0,0010) Pixel Data in ``transfer_syntax``.

    Every encoder is chosen so that its bytes depend on the pixels only, not on the library
    version: JPEG Lossless by imagecodecs' libjpeg-turbo, RLE Lossless by pydicom's own
    encoder (pylibjpeg-rle's runs differ between its releases), JPEG 2000 Lossless by
    OpenJPEG with its comment marker removed (it names the OpenJPEG version).
    """
    arr = np.ascontiguousarray(arr)
    if transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW" if arr.dtype.itemsize == 2 else "OB"
    elif transfer_syntax == JPEGLosslessSV1:
        frame = imagecodecs.jpeg8_encode(
            arr, lossless=True, predictor=1, bitspersample=int(ds.BitsStored)
        )
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
    elif transfer_syntax in (JPEG2000Lossless, RLELossless):
        pixel_module: dict[str, Any] = {
            "rows": int(ds.Rows),
            "columns": int(ds.Columns),
            "samples_per_pixel": 1,
            "bits_allocated": int(ds.BitsAllocated),
            "bits_stored": int(ds.BitsStored),
            "pixel_representation": int(ds.PixelRepresentation),
            "photometric_interpretation": str(ds.PhotometricInterpretation),
            "number_of_frames": 1,
        }
        if transfer_syntax == JPEG2000Lossless:
            frame = JPEG2000LosslessEncoder.encode(arr, encoding_plugin="pylibjpeg", **pixel_module)
            frame = strip_j2k_comments(frame)
        else:
            frame = RLELosslessEncoder.encode(arr, encoding_plugin="pydicom", **pixel_module)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
    else:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}")
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)


def strip_j2k_comments(codestream: bytes) -> bytes:
    """``codestream`` (JPEG 2000 Part 1) without the COM (FF64) segments of its main header.

    The main header runs from SOC (FF4F) to the first SOT (FF90); every marker in it other
    than SOC carries a 2-byte big-endian length that counts itself."""
    if codestream[:2] != b"\xff\x4f":
        raise ValueError("not a JPEG 2000 codestream: no SOC marker")
    out = bytearray(codestream[:2])
    pos = 2
    while codestream[pos : pos + 2] != b"\xff\x90":
        if pos + 4 > len(codestream) or codestream[pos] != 0xFF:
            raise ValueError(f"JPEG 2000 main header: no marker at byte {pos}")
        end = pos + 2 + int.from_bytes(codestream[pos + 2 : pos + 4], "big")
        if codestream[pos + 1] != 0x64:
            out += codestream[pos:end]
        pos = end
    return bytes(out + codestream[pos:])


def make_cxr(
    pixels: np.ndarray,
    *,
    study: StudyInfo,
    sop_uid: str,
    series_uid: str,
    sop_class: str = "DX",
    view_position: str | None = "PA",
    series_description: str = "PA",
    series_number: int = 1,
    instance_number: int = 1,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    transfer_syntax: str = ExplicitVRLittleEndian,
    rescale: tuple[float, float] | None = None,
    windows: Sequence[tuple[float, float]] = (),
    voi_lut: bool = False,
    pixel_spacing_mm: float = 0.15,
    image_comments: bool = False,
) -> Dataset:
    """A chest radiograph dataset holding ``pixels`` (rows, columns; uint16 stored values).

    ``sop_class`` is ``"CR"`` (Computed Radiography), ``"DX"`` (Digital X-Ray for
    Presentation) or ``"SC"`` (Secondary Capture "screen save", 8-bit, ImageType
    DERIVED\\SECONDARY). ``view_position=None`` leaves (0018,5101) View Position out.
    ``rescale`` sets (0028,1053) Rescale Slope and (0028,1052) Rescale Intercept;
    ``windows`` one or more (0028,1050)/(0028,1051) Window Center/Width pairs; ``voi_lut``
    adds a (0028,3010) VOI LUT Sequence with one linear LUT. Pixels are stored losslessly
    in ``transfer_syntax``.
    """
    modality = {"CR": "CR", "DX": "DX", "SC": "OT"}[sop_class]
    ds = _base_dataset(
        study,
        sop_class=SOP_CLASSES[sop_class],
        sop_uid=sop_uid,
        series_uid=series_uid,
        modality=modality,
        series_number=series_number,
        instance_number=instance_number,
        series_description=series_description,
        transfer_syntax=transfer_syntax,
    )
    if image_comments and study.private:
        ds.ImageComments = PRIVATE_STRINGS["ImageComments"]
    ds.BodyPartExamined = "CHEST"
    rows, cols = pixels.shape
    if sop_class == "SC":
        ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
        ds.ConversionType = "WSD"
        bits_stored = 8
        pixels = pixels.astype(np.uint8)
    else:
        _set_acquisition(ds, sop_class, view_position, photometric, pixel_spacing_mm)
        _set_presentation(ds, pixels, rescale, windows, voi_lut)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8 if sop_class == "SC" else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    _set_pixels(ds, pixels, transfer_syntax)
    return ds


def _set_acquisition(
    ds: Dataset,
    sop_class: str,
    view_position: str | None,
    photometric: str,
    pixel_spacing_mm: float,
) -> None:
    """Attributes of an original radiograph: (0008,0008) Image Type, (0020,0020) Patient
    Orientation, (0018,1164) Imager Pixel Spacing and (0028,0030) Pixel Spacing in mm,
    exposure, (0018,5101) View Position (left out when ``None``) and, for DX, the
    presentation intent and (2050,0020) Presentation LUT Shape."""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["P", "F"] if view_position in ("LL", "RL", "LATERAL") else ["L", "F"]
    ds.ImagerPixelSpacing = [ds_str(pixel_spacing_mm), ds_str(pixel_spacing_mm)]
    ds.PixelSpacing = [ds_str(pixel_spacing_mm), ds_str(pixel_spacing_mm)]
    ds.KVP = "110" if view_position != "AP" else "90"
    ds.ExposureTime = 12
    ds.XRayTubeCurrent = 200
    if view_position is not None:
        ds.ViewPosition = view_position
    if sop_class == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"


def _set_presentation(
    ds: Dataset,
    pixels: np.ndarray,
    rescale: tuple[float, float] | None,
    windows: Sequence[tuple[float, float]],
    voi_lut: bool,
) -> None:
    """(0028,1053)/(0028,1052) Rescale Slope/Intercept, (0028,1050)/(0028,1051) Window
    Center/Width pairs and a (0028,3010) VOI LUT Sequence with one linear LUT from the 1st
    to the 99th percentile of the stored values."""
    if rescale is not None:
        ds.RescaleSlope = ds_str(rescale[0])
        ds.RescaleIntercept = ds_str(rescale[1])
        ds.RescaleType = "US"
    if windows:
        ds.WindowCenter = [ds_str(c) for c, _ in windows]
        ds.WindowWidth = [ds_str(w) for _, w in windows]
        expl = ["NORMAL", "HARD", "SOFT"]
        ds.WindowCenterWidthExplanation = expl[: len(windows)]
    if voi_lut:
        lo = int(np.percentile(pixels, 1))
        hi = int(np.percentile(pixels, 99))
        n = max(min(hi - lo, 65535), 2)  # one entry per stored value from lo
        item = Dataset()
        item.add_new(0x00283002, "US", [n, lo, 16])
        item.LUTExplanation = "LINEAR"
        item.add_new(0x00283006, "US", [int(v) for v in np.linspace(0, 65535, n)])
        ds.VOILUTSequence = DicomSequence([item])


def study_scale(study: StudyInfo) -> float:
    """Body size factor of a patient (0.85 .. 1.1, from the patient id): stable per patient."""
    h = int(hashlib.blake2b(study.patient_id.encode(), digest_size=2).hexdigest(), 16)
    return 0.85 + 0.25 * (h / 65535.0)


_XLSX_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_XLSX_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_XLSX_CT = "application/vnd.openxmlformats-officedocument"
_XLSX_CREATED = f"{REMAP_SHEET_DATE:%Y-%m-%dT%H:%M:%S}Z"

#: The fixed parts of the remap workbook, in archive order; its one sheet,
#: ``xl/worksheets/sheet1.xml``, comes last.
_XLSX_PARTS: tuple[tuple[str, str], ...] = (
    (
        "[Content_Types].xml",
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package'
        '.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="{_XLSX_CT}'
        '.spreadsheetml.sheet.main+xml"/>'
        f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_XLSX_CT}'
        '.spreadsheetml.worksheet+xml"/>'
        f'<Override PartName="/xl/styles.xml" ContentType="{_XLSX_CT}'
        '.spreadsheetml.styles+xml"/>'
        '<Override PartName="/docProps/core.xml" ContentType="application/vnd'
        '.openxmlformats-package.core-properties+xml"/>'
        f'<Override PartName="/docProps/app.xml" ContentType="{_XLSX_CT}'
        '.extended-properties+xml"/></Types>',
    ),
    (
        "_rels/.rels",
        f'<Relationships xmlns="{_PKG_REL}">'
        f'<Relationship Id="rId1" Type="{_XLSX_REL}/officeDocument" Target="xl/workbook.xml"/>'
        f'<Relationship Id="rId2" Type="{_PKG_REL}/metadata/core-properties" '
        'Target="docProps/core.xml"/>'
        f'<Relationship Id="rId3" Type="{_XLSX_REL}/extended-properties" '
        'Target="docProps/app.xml"/></Relationships>',
    ),
    (
        "docProps/app.xml",
        '<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/'
        'extended-properties"><Application>hiroml-synth</Application></Properties>',
    ),
    (
        "docProps/core.xml",
        '<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/'
        'metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:dcterms="http://purl.org/dc/terms/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<dc:creator>hiroml-synth</dc:creator>"
        f'<dcterms:created xsi:type="dcterms:W3CDTF">{_XLSX_CREATED}</dcterms:created>'
        f'<dcterms:modified xsi:type="dcterms:W3CDTF">{_XLSX_CREATED}</dcterms:modified>'
        "</cp:coreProperties>",
    ),
    (
        "xl/workbook.xml",
        f'<workbook xmlns="{_XLSX_NS}" xmlns:r="{_XLSX_REL}"><sheets>'
        '<sheet name="REMAP" sheetId="1" r:id="rId1"/></sheets></workbook>',
    ),
    (
        "xl/_rels/workbook.xml.rels",
        f'<Relationships xmlns="{_PKG_REL}">'
        f'<Relationship Id="rId1" Type="{_XLSX_REL}/worksheet" '
        'Target="worksheets/sheet1.xml"/>'
        f'<Relationship Id="rId2" Type="{_XLSX_REL}/styles" Target="styles.xml"/>'
        "</Relationships>",
    ),
    (
        "xl/styles.xml",
        f'<styleSheet xmlns="{_XLSX_NS}">'
        '<fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>'
        '<fills count="2"><fill><patternFill patternType="none"/></fill>'
        '<fill><patternFill patternType="gray125"/></fill></fills>'
        '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border>'
        '</borders><cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" '
        'borderId="0"/></cellStyleXfs><cellXfs count="2">'
        '<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
        '<xf numFmtId="49" fontId="0" fillId="0" borderId="0" xfId="0" '
        'applyNumberFormat="1"/></cellXfs>'
        '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/>'
        "</cellStyles></styleSheet>",
    ),
)


def _xlsx_sheet(rows: Sequence[tuple[str, str]]) -> str:
    """``xl/worksheets/sheet1.xml``: the header row, then ``rows`` as inline-string cells in
    the text number format ("@", style 1), so that ids keep their leading zeros."""
    out = [f'<worksheet xmlns="{_XLSX_NS}"><dimension ref="A1:B{len(rows) + 1}"/><sheetData>']
    for r, (a, b) in enumerate([("OLD_C19_ID", "NEW_C19_ID"), *rows], start=1):
        style = "" if r == 1 else ' s="1"'
        out.append(f'<row r="{r}">')
        for col, text in (("A", a), ("B", b)):
            out.append(f'<c r="{col}{r}"{style} t="inlineStr"><is><t>{escape(text)}</t></is></c>')
        out.append("</row>")
    out.append("</sheetData></worksheet>")
    return "".join(out)


def write_remap_sheet(path: Path, remap: dict[str, str]) -> int:
    """Write the remap sheet (sheet ``REMAP``: OLD_C19_ID, NEW_C19_ID, text cells) and return
    its size in bytes.

    The workbook's XML is written here, not by openpyxl, so that its bytes depend on
    ``remap`` only: fixed parts, created/modified dates (docProps/core.xml) and zip entry
    dates all :data:`REMAP_SHEET_DATE`, entries deflated in a fixed order."""
    parts = [*_XLSX_PARTS, ("xl/worksheets/sheet1.xml", _xlsx_sheet(list(remap.items())))]
    head = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    data = zip_bytes([(name, (head + xml).encode()) for name, xml in parts], REMAP_SHEET_DATE)
    path.write_bytes(data)
    return len(data)
