"""A seeded, deterministic synthetic CRDW COVID-19 imaging datamart, with its ground truth.

``generate(root, seed=0, size="tiny")`` writes a datamart laid out exactly as the data
provider's tip sheet describes (DESIGN.md §1)::

    root/
      C19_HIRO_LDS_REMAP_PUB-LIST.xlsx          OLD_C19_ID -> NEW_C19_ID (text cells)
      clinical.csv                               patient_id, covid_encounter_date, icu, ...
      CXR-UPDATE-20200509-COMPLETE/
        1001_20200302-081500_A001_XR-CHEST-PA-LATERAL.zip
          1_PA/IM-0001.dcm  2_LATERAL/IM-0001.dcm
      CT-UPDATE-20200602-IN-PROGRESS/ ...
      hiroml-synth-truth.json                    the ground truth (below)

and plants every situation of the tip sheet and of DESIGN.md §2 (remap chains, cross-batch
and pediatric duplicates, same-timestamp non-duplicates, partial overlaps, a missed remap,
split CT exams, localizers, dose reports, screen saves, tilted / uneven / gapped CT series,
every common transfer syntax, and one zip per kind of bad input). The same ``seed`` and
``size`` give byte-identical files (given the same zlib, libjpeg and OpenJPEG builds).

Sizes: ``tiny`` (seconds; 41 zips, radiographs 128-192 px, CT 64x64 with 12-24 slices) for
tests; ``demo`` (under a minute; ~75 zips, radiographs 512-1024 px, CT 128x128 with 32-64
slices) for the README; ``bench`` (about 10 CPU-minutes, 4 GB, under 1 GB of memory; 194 zips,
269 radiographs of 2500-3000 px, 4739 instances, CT 512x512 with 300-slice series) for
throughput measurements.

Images are phantoms, not noise: radiographs show a body outline, lungs, heart, spine, ribs
and clavicles (:func:`phantom_chest_2d`); CT slices sample an analytic chest in world
coordinates, in HU (:func:`ct_hu_at`), so that every geometry (tilt, gaps, uneven spacing,
split series) is consistent.

Ground truth (``root / "hiroml-synth-truth.json"``; every id is a string)
------------------------------------------------------------------------
``seed``, ``size``
    As given.
``remap_sheet``
    File name of the remap sheet (relative to root).
``remap``
    ``{old_id: new_id}``, the raw rows of the sheet.
``remap_resolved``
    ``{old_id: final_id}``, chains followed to their end.
``batches``
    ``[{"name", "modality" ("cxr"|"ct"), "status" ("COMPLETE"|"IN-PROGRESS"), "date"}]``,
    sorted by name.
``zips``
    ``{"<batch>/<file>": {...}}`` for every ``.zip`` file written, with
    ``batch``, ``file``, ``modality``;
    ``patient_id_source`` (id in the zip name, "" when the name does not parse),
    ``patient_id`` (current id after the remap sheet), ``hiro_id``, ``time`` (ISO 8601,
    from the name), ``description``, ``pediatric`` (bool);
    ``expected``: ``"kept"`` (primary zip of a kept exam), ``"duplicate"`` (whole zip
    dropped as a copy of ``kept_as``), ``"merged"`` (a part of the split CT exam whose
    primary is ``kept_as``), ``"skipped"`` (IN-PROGRESS batch) or ``"error"`` (bad input,
    nothing usable);
    ``kept_as``: rel path of the kept zip for duplicate/merged, else "";
    ``kind``: ``normal``, ``cross_batch_duplicate`` (on both zips of the pair),
    ``pediatric_duplicate_same_uids``, ``pediatric_duplicate_new_uids``,
    ``same_timestamp_different``, ``partial_overlap``, ``split_ct_part``,
    ``resumed_ct_part`` (a CT exam in two zips whose scan resumed as a new series),
    ``in_progress``, ``missed_remap_shared_pixels``, ``mixed_bad_member``, and for bad inputs
    ``corrupt_zip``, ``truncated_zip``, ``non_dicom``, ``truncated_dicom``,
    ``no_pixel_data``, ``bad_name``, ``path_traversal``;
    ``exam``: the logical exam id (also on duplicates: the exam they duplicate; "" for
    skipped and error zips); ``n_members`` (zip entries; 0 for an unreadable zip);
    ``n_instances`` (members that are valid DICOM); ``bad_members`` (member paths that must
    give an error record); ``members`` (every member path, in archive order).
    Duplicates resolve to the earliest copy: earliest batch date, then file name.
``exams``
    ``{exam_id: {"modality", "patient_id" (current), "source_patient_id", "hiro_id", "time",
    "description", "pediatric", "batch", "zips" (primary first, then merged parts by
    time), "sop_uids" (sorted; each SOP Instance UID of the output once, localizers, dose
    reports and screen saves included, bad members excluded; an instance already delivered
    by an earlier exam, in batch-date then file-name order, belongs to that exam only),
    "n_instances" (= len(sop_uids))}}`` for every kept logical exam.
``not_duplicates``
    ``[[zip_a, zip_b]]``: equal patient and timestamp, other HIRO ids, yet both kept (the
    same-timestamp pair with different images, and the partial-overlap pair).
``partial_overlaps``
    ``[{"zips": [earlier, later], "shared_sops": n, "shared_sop_uids": [...]}]``.
``missed_remaps``
    ``[{"zips": [a, b], "patient_ids": [a_id, b_id], "sop_uids": [...]}]``: the same
    instance (SOP Instance UID and pixel bytes) delivered under two patient ids.
``patient_groups``
    Sorted list of sorted id lists, one per group of more than one id: every id of a remap
    component (connected by the sheet, images or not) and ids linked by a shared instance.
``cxr_images``
    ``{sop_uid: {"zip" (the zip whose copy belongs in the output: the first good holder),
    "zips" (every zip holding it), "member", "exam", "view" ("frontal"|"lateral"|"unknown"),
    "view_position" (the (0018,5101) value, "" when absent), "series_description",
    "photometric", "transfer_syntax", "bits_stored", "bits_allocated", "shape" [rows, cols],
    "rescale" [slope, intercept] or null, "windows" [[center, width], ...], "voi_lut" (bool),
    "pixel_hash" (BLAKE2b-128 hex of the intended stored values as little-endian uint16,
    C order: decoding must reproduce it exactly), "sop_class", "keep" (bool: belongs in the
    output), "drop_reason" ("" | "screen_save" | "duplicate" | "in_progress" | "bad_input"),
    "kind" ("image" | "screen_save")}}`` for every radiograph-batch instance with pixels.
``ct_series``
    ``{series_uid: {"exam", "zips", "folder", "description", "series_number", "n_slices"
    (instances in the series), "kind" ("axial" | "localizer" | "dose" | "screen_save" |
    "tilted" | "uneven" | "missing_slice" | "duplicate_slice" | "rescale_varies" |
    "split_across_zips" | "resumed_part"), "kernel", "tilt_deg", "keep" (false for
    localizer, dose report, screen save, anything not in the output, and a resumed part
    stitched into another series' volume), "best" (the series the default
    ``ct.preferred_kernels`` order picks for the exam), "rows", "columns", "pixel_spacing"
    [row, col] mm, "slice_thickness", "orientation" (6 numbers), "positions" ([[x, y, z]] mm
    in instance order), "missing_z" (z of the removed slice), "duplicate_z" (z given twice),
    "spacings" (sorted distinct z steps, mm), "rescale_varies" (bool), "signed" (bool)}}``.
    A scan resumed as a new series ("resumed_part", two series in two zips): the part
    acquired first also has "stitched_series" (both Series Instance UIDs, in order along z),
    "stitched_zips" (both zips), "seams_z" (z of the second part's first slice, mm) and
    "n_stitched" (slices of the whole scan); the other part has "stitched_into" (the first
    part's Series Instance UID).
    Tilted series: IOP is axial, and ``y_i - y_0 = (z_i - z_0) * tan(radians(tilt_deg))``.
``clinical``
    Path of the clinical CSV relative to root (``"clinical.csv"``). Columns
    ``patient_id`` (string, may have leading zeros), ``covid_encounter_date`` (ISO date),
    ``icu`` (0/1), ``sex``. One row per current id with images except the orphans, plus
    clinical-only patients.
``orphans``
    Current ids with images (in kept exams) but no clinical row.
``private_strings``
    Values written into identifying tags (InstitutionName, ReferringPhysicianName,
    OperatorsName, ImageComments) that must never reach any output.
``counts``
    ``{"batches", "zips", "members", "instances", "bytes"}`` as written.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import imagecodecs
import numpy as np
import openpyxl
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from hiroml.config import CtConfig

log = logging.getLogger(__name__)

TRUTH_NAME = "hiroml-synth-truth.json"
REMAP_SHEET = "C19_HIRO_LDS_REMAP_PUB-LIST.xlsx"
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

_PREFERRED_KERNELS = tuple(CtConfig().preferred_kernels)  # the "best" hint follows the config
_ZIP_EPOCH = (2020, 6, 1, 0, 0, 0)


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True, slots=True)
class SizeSpec:
    """How big the generated datamart is. Planted situations are the same at every size."""

    cxr_min: int  # radiograph side lengths, pixels
    cxr_max: int
    ct_matrix: int  # CT rows = columns
    ct_thin: int  # slices of a thin (lung kernel) series over the chest
    ct_thick: int  # slices of a thick (soft-tissue kernel) series
    n_fill_cxr: int  # extra normal radiograph exams
    n_fill_ct: int  # extra normal CT exams


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(128, 192, 64, 24, 12, 2, 1),
    "demo": SizeSpec(512, 1024, 128, 64, 32, 30, 8),
    "bench": SizeSpec(2500, 3000, 512, 300, 60, 150, 6),
}


# --------------------------------------------------------------------------- small helpers


def _uid(seed: int, *parts: object) -> str:
    """A deterministic UID ("2.25." form) derived from the seed and a label."""
    text = "\x1f".join([f"hiroml-synth:{seed}", *map(str, parts)])
    return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big"))


def pixel_hash(arr: np.ndarray) -> str:
    """BLAKE2b-128 hex digest of stored pixel values as little-endian 16-bit, C order
    (signed arrays as int16, else uint16); the form used in the ground truth."""
    a = np.ascontiguousarray(arr)
    a = a.astype("<i2") if a.dtype.kind == "i" else a.astype("<u2")
    return hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest()


def dicom_bytes(ds: Dataset) -> bytes:
    """Encode ``ds`` as a DICOM Part 10 file (preamble, File Meta) and return the bytes."""
    bio = io.BytesIO()
    ds.save_as(bio, enforce_file_format=True)
    return bio.getvalue()


def _zip_bytes(members: Sequence[tuple[str, bytes]], when: dt.datetime) -> bytes:
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


def _fmt_date(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d")


def _fmt_time(t: dt.datetime) -> str:
    return t.strftime("%H%M%S")


def _ds(value: float) -> str:
    """A DICOM DS string (at most 16 characters)."""
    for digits in (10, 8, 6):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{value:.6g}"


# --------------------------------------------------------------------------- phantoms


def phantom_chest_2d(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    bits_stored: int = 12,
    lateral: bool = False,
    noise: float = 0.01,
) -> np.ndarray:
    """A chest-radiograph phantom as stored values, numpy (rows, columns) uint16.

    High values are dense (bone, heart) as in (0028,0004) Photometric Interpretation
    MONOCHROME2; invert (``2**bits_stored - 1 - a``) for MONOCHROME1. The frontal view has a
    body outline with shoulders, two dark lung fields with diaphragm domes, heart and
    mediastinum, spine, ribs and clavicles; ``lateral=True`` draws a lateral projection.
    Positions jitter with ``rng`` so that every call gives a different image. Shapes larger
    than 1024 pixels are drawn at about 640 pixels and resized (fast); noise is full size.
    """
    full_h, full_w = shape
    f = min(1.0, 640.0 / max(full_h, full_w)) if max(full_h, full_w) > 1024 else 1.0
    h, w = max(round(full_h * f), 8), max(round(full_w * f), 8)
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    j = rng.uniform(-0.04, 0.04, size=8).astype(np.float32)
    att: np.ndarray = np.full((h, w), 0.03, dtype=np.float32)
    if not lateral:
        body = ((x / (0.84 + j[0])) ** 2 + ((y - 0.2) / 1.05) ** 2) <= 1.0
        body |= ((x / (0.97 + j[1])) ** 2 + ((y + 0.55) / 0.3) ** 2) <= 1.0
        att[body] = 0.55
        for side in (-1.0, 1.0):
            cx = side * (0.36 + j[2])
            dome = 0.38 + j[3] + 0.18 * ((x - cx) / 0.26) ** 2
            lung = (((x - cx) / 0.26) ** 2 + ((y + 0.02) / 0.6) ** 2 <= 1.0) & (y < dome)
            att[lung] = 0.16
        heart = ((x - 0.11 - j[4]) / 0.25) ** 2 + ((y - 0.24) / 0.25) ** 2 <= 1.0
        att[heart] = 0.6
        att[(np.abs(x - 0.02) < 0.1) & (y < 0.25) & (y > -0.75)] = 0.6
        spine = (np.abs(x - j[5]) < 0.06) & body
        att[spine] += 0.22
        for k in range(10):
            yk = -0.62 + k * 0.115 + j[6]
            rib = np.abs(y - (yk + 0.14 * (np.abs(x) / 0.6) ** 2)) < 0.016
            att[rib & (np.abs(x) > 0.08) & (np.abs(x) < 0.72) & (y < 0.5) & body] += 0.2
        clav = np.abs(y - (-0.7 + 0.12 * np.abs(x) + j[7])) < 0.022
        att[clav & (np.abs(x) > 0.05) & (np.abs(x) < 0.58)] += 0.25
    else:
        body = ((x / (0.62 + j[0])) ** 2 + ((y - 0.15) / 1.1) ** 2) <= 1.0
        att[body] = 0.55
        lung = ((x + 0.02) / (0.44 + j[1])) ** 2 + ((y + 0.02) / 0.56) ** 2 <= 1.0
        att[lung & (y < 0.42 + j[2])] = 0.2
        heart = ((x + 0.2 + j[3]) / 0.22) ** 2 + ((y - 0.22) / 0.24) ** 2 <= 1.0
        att[heart] = 0.55
        for k in range(12):
            yk = -0.7 + k * 0.13
            vert = (np.abs(x - 0.38 - j[4]) < 0.07) & (np.abs(y - yk) < 0.05)
            att[vert & body] = 0.85
        att[(np.abs(x + 0.52 + j[5]) < 0.025) & (y > -0.55) & (y < 0.2)] = 0.8
    # Each person's own texture (lung markings, soft tissue): a smooth random field, +-10 %,
    # from a generator seeded by this image's jitter (the caller's stream is not consumed),
    # so that two patients are never near duplicates of each other (hiroml.neardup).
    tex_rng = np.random.default_rng(np.frombuffer(j.tobytes(), dtype=np.uint32))
    cells = tex_rng.normal(0.0, 1.0, size=(24, 24)).astype(np.float32)
    att *= 1.0 + 0.1 * cv2.resize(cells, (w, h), interpolation=cv2.INTER_CUBIC)
    sigma = max(w / 256.0, 0.6)
    att = cv2.GaussianBlur(att, (0, 0), sigmaX=sigma)
    att += (0.05 * (y + 1.0)).astype(np.float32)  # heel effect
    if (h, w) != (full_h, full_w):
        att = cv2.resize(att, (full_w, full_h), interpolation=cv2.INTER_LINEAR)
    att += rng.normal(0.0, noise, size=(full_h, full_w)).astype(np.float32)
    vmax = (1 << bits_stored) - 1
    out = np.clip(att, 0.0, 1.0) * np.float32(vmax * 0.95)
    return np.rint(out).astype(np.uint16)


def ct_hu_at(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, *, scale: float = 1.0, contrast: bool = False
) -> np.ndarray:
    """HU of the analytic chest phantom at patient coordinates (LPS, mm), broadcast.

    Air -1000 outside the body; subcutaneous fat -100; soft tissue 40; lungs -850; heart 40
    (blood 300 with ``contrast``); spine and ribs 700. The chest spans z in about
    [-140, 140] mm; anterior is -y.
    """
    s = scale
    hu = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), -1000.0, dtype=np.float32)
    ex, ey = (x / (165 * s)) ** 2, ((y - 5) / (115 * s)) ** 2
    body = ex + ey <= 1.0
    hu[body] = -100.0
    inner = (x / (150 * s)) ** 2 + ((y - 5) / (100 * s)) ** 2 <= 1.0
    hu[inner] = 40.0
    for side in (-1.0, 1.0):
        lung = ((x - side * 72 * s) / (55 * s)) ** 2 + ((y + 2) / (72 * s)) ** 2 + (
            (z - 5) / 150.0
        ) ** 2 <= 1.0
        hu[lung] = -850.0
    heart = ((x - 18 * s) / (52 * s)) ** 2 + ((y + 22) / (48 * s)) ** 2 + ((z + 55) / 60.0) ** 2
    hu[heart <= 1.0] = 300.0 if contrast else 40.0
    aorta = ((x + 18 * s) ** 2 + (y - 45) ** 2) <= (13 * s) ** 2
    hu[aorta & (np.abs(z) < 160)] = 300.0 if contrast else 45.0
    spine = (x**2 + (y - 82 * s) ** 2) <= (19 * s) ** 2
    hu[spine] = 700.0
    canal = (x**2 + (y - 107 * s) ** 2) <= (7 * s) ** 2
    hu[canal] = 10.0
    ring = (x / (142 * s)) ** 2 + ((y - 5) / (96 * s)) ** 2
    ribs = (np.abs(ring - 1.0) < 0.06) & (np.mod(z + 200.0, 26.0) < 9.0) & (y > -60 * s)
    hu[ribs] = 700.0
    sternum = (np.abs(x) < 14 * s) & (np.abs(y + 100 * s) < 7 * s)
    hu[sternum & (np.abs(z) < 120)] = 600.0
    return hu


def render_ct_slice(
    position: Sequence[float],
    shape: tuple[int, int],
    pixel_spacing: tuple[float, float],
    rng: np.random.Generator,
    *,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    noise_hu: float = 10.0,
    scale: float = 1.0,
    contrast: bool = False,
) -> np.ndarray:
    """One CT image in HU, numpy (rows, columns) float32, sampled from :func:`ct_hu_at`.

    ``position`` is (0020,0032) Image Position (Patient) of the first pixel's centre,
    ``orientation`` (0020,0037) Image Orientation (Patient) (row cosines, then column
    cosines), ``pixel_spacing`` (0028,0030) as (row spacing, column spacing) in mm.
    """
    rows, cols = shape
    p = np.asarray(position, dtype=np.float64)
    rdir = np.asarray(orientation[:3], dtype=np.float64)
    cdir = np.asarray(orientation[3:], dtype=np.float64)
    c = np.arange(cols, dtype=np.float64)[None, :] * pixel_spacing[1]
    r = np.arange(rows, dtype=np.float64)[:, None] * pixel_spacing[0]
    xyz = [p[k] + c * rdir[k] + r * cdir[k] for k in range(3)]
    hu = ct_hu_at(xyz[0], xyz[1], xyz[2], scale=scale, contrast=contrast)
    hu = np.broadcast_to(hu, (rows, cols)).astype(np.float32)
    if noise_hu > 0:
        hu = hu + rng.normal(0.0, noise_hu, size=(rows, cols)).astype(np.float32)
    return hu


def phantom_chest_3d(
    shape_zyx: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    spacing_zyx: tuple[float, float, float] | None = None,
    noise_hu: float = 10.0,
) -> np.ndarray:
    """A chest CT phantom volume in HU, numpy (z, y, x) float32.

    Slices are axial and centred on the chest; ``spacing_zyx`` (mm) defaults to a 360 mm
    field of view and 280 mm of z coverage.
    """
    nz, ny, nx = shape_zyx
    if spacing_zyx is None:
        spacing_zyx = (280.0 / nz, 360.0 / ny, 360.0 / nx)
    dz, dy, dx = spacing_zyx
    out = np.empty(shape_zyx, dtype=np.float32)
    x0, y0 = -dx * (nx - 1) / 2.0, -dy * (ny - 1) / 2.0
    z0 = -dz * (nz - 1) / 2.0
    for k in range(nz):
        out[k] = render_ct_slice((x0, y0, z0 + k * dz), (ny, nx), (dy, dx), rng, noise_hu=noise_hu)
    return out


# --------------------------------------------------------------------------- DICOM factories


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
    ds.StudyDate = _fmt_date(study.time)
    ds.SeriesDate = _fmt_date(study.time)
    ds.ContentDate = _fmt_date(study.time)
    ds.StudyTime = _fmt_time(study.time)
    ds.SeriesTime = _fmt_time(study.time)
    ds.ContentTime = _fmt_time(study.time)
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
    """Store ``arr`` (rows, columns) as (7FE0,0010) Pixel Data in ``transfer_syntax``."""
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
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(
            transfer_syntax,
            arr,
            encoding_plugin="pylibjpeg" if transfer_syntax == JPEG2000Lossless else "",
            generate_instance_uid=False,
        )
    else:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}")
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)


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
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PatientOrientation = (
            ["P", "F"] if view_position in ("LL", "RL", "LATERAL") else ["L", "F"]
        )
        ds.ImagerPixelSpacing = [_ds(pixel_spacing_mm), _ds(pixel_spacing_mm)]
        ds.PixelSpacing = [_ds(pixel_spacing_mm), _ds(pixel_spacing_mm)]
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
        if rescale is not None:
            ds.RescaleSlope = _ds(rescale[0])
            ds.RescaleIntercept = _ds(rescale[1])
            ds.RescaleType = "US"
        if windows:
            ds.WindowCenter = [_ds(c) for c, _ in windows]
            ds.WindowWidth = [_ds(w) for _, w in windows]
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
    ds.AcquisitionTime = _fmt_time(study.time)
    ds.KVP = "120"
    ds.XRayTubeCurrent = 180
    ds.SliceThickness = _ds(slice_thickness)
    ds.ConvolutionKernel = kernel
    ds.GantryDetectorTilt = _ds(tilt_deg)
    ds.PatientPosition = "FFS"
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.SliceLocation = _ds(position[2] if slice_location is None else slice_location)
    ds.PixelSpacing = [_ds(pixel_spacing[0]), _ds(pixel_spacing[1])]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(hu.shape[0]), int(hu.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = _ds(rescale[0])
    ds.RescaleIntercept = _ds(rescale[1])
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
    mv.NumericValue = _ds(dlp)
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


# --------------------------------------------------------------------------- the generator


@dataclass
class _Zip:
    batch: str
    file: str
    time: dt.datetime
    members: list[tuple[str, bytes]] = field(default_factory=list)
    raw: bytes | None = None  # written as is (corrupt / truncated zips)
    pid: str = ""  # patient id written into the headers
    flushed: bool = False  # written to disk; members dropped from memory
    size: int = 0  # bytes on disk once flushed
    # (member, sop_uid, series_uid, bad) of every DICOM-ish member, archive order
    sops: list[tuple[str, str, str, bool]] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)


@dataclass
class _CxrImg:
    """One radiograph to write (internal plan)."""

    folder: str
    file: str
    pixels: np.ndarray
    view_position: str | None
    series_description: str
    series_number: int
    photometric: str
    bits_stored: int
    transfer_syntax: str
    sop_class: str
    view: str
    rescale: tuple[float, float] | None = None
    windows: tuple[tuple[float, float], ...] = ()
    voi_lut: bool = False
    instance_number: int = 1

    @property
    def member(self) -> str:
        return f"{self.folder}/{self.file}"


class _Builder:
    """Plans and writes one datamart; collects the ground truth as it goes."""

    def __init__(self, root: Path, seed: int, size: str) -> None:
        self.root = root
        self.seed = seed
        self.size = size
        self.spec = SIZES[size]
        self.rng = np.random.default_rng([seed, 0x41B0])
        self.zips: dict[str, _Zip] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.cxr_images: dict[str, dict[str, Any]] = {}
        self.ct_series: dict[str, dict[str, Any]] = {}
        self.exam_meta: dict[str, dict[str, Any]] = {}
        self.patients: dict[str, tuple[str, str]] = {}  # id -> (sex, age)
        self.not_duplicates: list[list[str]] = []
        self.partial: list[tuple[str, str]] = []
        self.missed: list[tuple[str, str]] = []
        self._hiro = 0
        self._exam = 0
        self._syntax = 0
        self.remap: dict[str, str] = {}

    # ------------------------------------------------------------ ids, times, patients

    def uid(self, *parts: object) -> str:
        return _uid(self.seed, *parts)

    def hiro(self) -> str:
        self._hiro += 1
        return f"A{self._hiro:03d}"

    def exam_id(self, modality: str) -> str:
        self._exam += 1
        return f"{modality}-{self._exam:04d}"

    def when(self, day: int, hour: int | None = None) -> dt.datetime:
        """A study time ``day`` days after 2020-03-01 with seeded hour/minute/second."""
        h = int(self.rng.integers(0, 24)) if hour is None else hour
        m, s = int(self.rng.integers(0, 60)), int(self.rng.integers(0, 60))
        return dt.datetime(2020, 3, 1, h, m, s) + dt.timedelta(days=day)

    def patient(self, pid: str, *, pediatric: bool = False) -> tuple[str, str]:
        if pid not in self.patients:
            sex = "F" if self.rng.random() < 0.5 else "M"
            if pediatric:
                unit = ["M", "D", "W"][len(self.patients) % 3]
                n = {
                    "M": int(self.rng.integers(1, 24)),
                    "D": int(self.rng.integers(1, 28)),
                    "W": int(self.rng.integers(1, 8)),
                }[unit]
                age = f"{n:03d}{unit}"
            else:
                age = f"{int(self.rng.integers(19, 90)):03d}Y"
            self.patients[pid] = (sex, age)
        return self.patients[pid]

    def current(self, pid: str) -> str:
        seen = set()
        while pid in self.remap and pid not in seen:
            seen.add(pid)
            pid = self.remap[pid]
        return pid

    def batch(self, name: str) -> str:
        m = re.fullmatch(r"(CXR|CT)-UPDATE-(\d{8})-(COMPLETE|IN-PROGRESS)", name)
        assert m, name
        d = m.group(2)
        self.batches[name] = {
            "name": name,
            "modality": m.group(1).lower(),
            "status": m.group(3),
            "date": f"{d[:4]}-{d[4:6]}-{d[6:]}",
        }
        (self.root / name).mkdir(exist_ok=True)
        return name

    def next_syntax(self) -> str:
        ts = CXR_SYNTAXES[self._syntax % len(CXR_SYNTAXES)]
        self._syntax += 1
        return ts

    # ------------------------------------------------------------ zips

    def add_zip(
        self,
        batch: str,
        pid: str,
        t: dt.datetime,
        hiro: str,
        desc: str,
        *,
        kind: str = "normal",
        expected: str = "kept",
        kept_as: str = "",
        exam: str = "",
        file: str | None = None,
    ) -> _Zip:
        name = file or f"{pid}_{t:%Y%m%d-%H%M%S}_{hiro}_{desc}.zip"
        rel = f"{batch}/{name}"
        if rel in self.zips:
            raise AssertionError(f"zip planned twice: {rel}")
        status = self.batches[batch]["status"]
        if status == "IN-PROGRESS":
            expected, kind, exam = "skipped", "in_progress", ""
        z = _Zip(batch, name, t, pid=pid)
        z.truth = {
            "batch": batch,
            "file": name,
            "modality": self.batches[batch]["modality"],
            "patient_id_source": pid if file is None else "",
            "patient_id": self.current(pid) if file is None else "",
            "hiro_id": hiro if file is None else "",
            "time": t.isoformat() if file is None else "",
            "description": desc if file is None else "",
            "pediatric": bool(re.match(r"^[A-Z]{2,3}[-_ ]P[-_ ]", desc)) if file is None else False,
            "expected": expected,
            "kept_as": kept_as,
            "kind": kind,
            "exam": exam,
            "bad_members": [],
        }
        self.zips[rel] = z
        return z

    def cxr_img(
        self,
        shape: tuple[int, int] | None = None,
        *,
        folder: str,
        view_position: str | None,
        series_description: str,
        series_number: int,
        view: str,
        lateral: bool = False,
        sop_class: str = "DX",
        transfer_syntax: str | None = None,
        photometric: str | None = None,
        bits_stored: int | None = None,
        rescale: tuple[float, float] | None = None,
        windows: tuple[tuple[float, float], ...] | None = None,
        voi_lut: bool = False,
        file: str = "IM-0001.dcm",
    ) -> _CxrImg:
        sp = self.spec
        if shape is None:
            h = int(self.rng.integers(sp.cxr_min, sp.cxr_max + 1))
            w = int(h * self.rng.uniform(0.8, 1.0))
            shape = (h, w)
        bits = bits_stored if bits_stored is not None else int(self.rng.choice([12, 14, 15, 16]))
        phot = photometric or ("MONOCHROME1" if self.rng.random() < 0.3 else "MONOCHROME2")
        pix = phantom_chest_2d(shape, self.rng, bits_stored=bits, lateral=lateral)
        if phot == "MONOCHROME1":
            pix = ((1 << bits) - 1 - pix).astype(np.uint16)
        if windows is None:
            vmax = (1 << bits) - 1
            windows = ((round(vmax * 0.45), round(vmax * 0.9)),)
        return _CxrImg(
            folder=folder,
            file=file,
            pixels=pix,
            view_position=view_position,
            series_description=series_description,
            series_number=series_number,
            photometric=phot,
            bits_stored=bits,
            transfer_syntax=transfer_syntax or self.next_syntax(),
            sop_class=sop_class,
            view=view,
            rescale=rescale,
            windows=windows,
            voi_lut=voi_lut,
        )

    def pa_lat(self, *, lat_position: str = "LL") -> list[_CxrImg]:
        return [
            self.cxr_img(
                folder="1_PA",
                view_position="PA",
                series_description="PA",
                series_number=1,
                view="frontal",
            ),
            self.cxr_img(
                folder="2_LATERAL",
                view_position=lat_position,
                series_description="LATERAL",
                series_number=2,
                view="lateral",
                lateral=True,
            ),
        ]

    def portable(self) -> list[_CxrImg]:
        return [
            self.cxr_img(
                folder="1_AP_PORTABLE",
                view_position="AP",
                series_description="AP PORTABLE",
                series_number=1,
                view="frontal",
                sop_class="CR",
                rescale=(1.0, 0.0),
            )
        ]

    def write_cxr(
        self, z: _Zip, imgs: Sequence[_CxrImg], *, uid_tag: str, study_uid: str | None = None
    ) -> list[tuple[str, bytes]]:
        """Encode ``imgs`` into ``z`` (UIDs derived from ``uid_tag``) and record the truth."""
        pid = z.pid
        sex, age = self.patient(pid)
        study = StudyInfo(
            patient_id=pid,
            time=z.time,
            study_uid=study_uid or self.uid(uid_tag, "study"),
            sex=sex,
            age=age,
            description=z.truth["description"] or "XR-CHEST",
        )
        members = []
        for k, im in enumerate(imgs):
            series_uid = self.uid(uid_tag, "series", im.series_number)
            sop = self.uid(uid_tag, "sop", im.member)
            ds = make_cxr(
                im.pixels,
                study=study,
                sop_uid=sop,
                series_uid=series_uid,
                sop_class=im.sop_class,
                view_position=im.view_position,
                series_description=im.series_description,
                series_number=im.series_number,
                instance_number=im.instance_number,
                photometric=im.photometric,
                bits_stored=im.bits_stored,
                transfer_syntax=im.transfer_syntax,
                rescale=im.rescale,
                windows=im.windows,
                voi_lut=im.voi_lut,
                image_comments=k == 0,
            )
            data = dicom_bytes(ds)
            members.append((im.member, data))
            z.sops.append((im.member, sop, series_uid, False))
            self.record_cxr(z, im, sop, ds)
        z.members.extend(members)
        return members

    def record_cxr(self, z: _Zip, im: _CxrImg, sop: str, ds: Dataset) -> None:
        rel = f"{z.batch}/{z.file}"
        if sop in self.cxr_images:
            self.cxr_images[sop]["zips"].append(rel)
            return
        sc = im.sop_class == "SC"
        self.cxr_images[sop] = {
            "zip": rel,
            "zips": [rel],
            "member": im.member,
            "exam": "",
            "view": "unknown" if sc else im.view,
            "view_position": im.view_position or "",
            "series_description": im.series_description,
            "photometric": im.photometric,
            "transfer_syntax": im.transfer_syntax,
            "bits_stored": int(ds.BitsStored),
            "bits_allocated": int(ds.BitsAllocated),
            "shape": [int(ds.Rows), int(ds.Columns)],
            "rescale": None if sc or im.rescale is None else list(im.rescale),
            "windows": [] if sc else [list(w) for w in im.windows],
            "voi_lut": im.voi_lut and not sc,
            "pixel_hash": pixel_hash(im.pixels.astype(np.uint8) if sc else im.pixels),
            "sop_class": str(ds.SOPClassUID),
            "keep": not sc,
            "drop_reason": "screen_save" if sc else "",
            "kind": "screen_save" if sc else "image",
        }

    def copy_members(self, src: _Zip, dst: _Zip) -> None:
        """Deliver ``src``'s members again, byte for byte, in ``dst``."""
        dst.members = list(src.members)
        dst.sops = list(src.sops)
        rel = f"{dst.batch}/{dst.file}"
        for _m, sop, _s, _b in src.sops:
            if sop in self.cxr_images:
                self.cxr_images[sop]["zips"].append(rel)

    # ------------------------------------------------------------ CT

    def ct_study(self, z: _Zip, uid_tag: str) -> StudyInfo:
        pid = z.truth["patient_id_source"]
        sex, age = self.patient(pid)
        return StudyInfo(
            patient_id=pid,
            time=z.time,
            study_uid=self.uid(uid_tag, "study"),
            sex=sex,
            age=age,
            description=z.truth["description"],
            manufacturer="SIEMENS" if "B70f" in uid_tag else "GE MEDICAL SYSTEMS",
        )

    def axial_positions(
        self, n: int, *, z_top: float = -135.0, z_bottom: float = 135.0
    ) -> list[list[float]]:
        fov = 360.0
        sp = fov / self.spec.ct_matrix
        x0 = y0 = -fov / 2 + sp / 2
        step = round((z_bottom - z_top) / max(n - 1, 1), 1)
        return [[x0, y0, round(z_top + i * step, 3)] for i in range(n)]

    def ct_series_add(
        self,
        zips: Sequence[_Zip],
        study: StudyInfo,
        *,
        uid_tag: str,
        exam: str,
        number: int,
        description: str,
        kind: str,
        kernel: str,
        positions: list[list[float]],
        split_at: Sequence[int] = (),
        tilt_deg: float = 0.0,
        rescales: list[tuple[float, float]] | None = None,
        signed: bool = False,
        thickness: float | None = None,
        noise: float = 10.0,
        contrast: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write one axial series into ``zips`` (divided at ``split_at`` slice indices)."""
        series_uid = self.uid(uid_tag, "series", number)
        folder = f"{number}_{description.replace(' ', '_')}"
        sops = [self.uid(uid_tag, "sop", number, i) for i in range(len(positions))]
        zs = sorted({p[2] for p in positions})
        steps = sorted({round(b - a, 3) for a, b in itertools.pairwise(zs)})
        if thickness is None:
            thickness = steps[0] if steps else 2.5
        dss = make_ct_series(
            study=study,
            series_uid=series_uid,
            sop_uids=sops,
            frame_uid=self.uid(uid_tag, "frame"),
            positions=positions,
            rng=self.rng,
            matrix=self.spec.ct_matrix,
            slice_thickness=thickness,
            kernel=kernel,
            tilt_deg=tilt_deg,
            rescales=rescales,
            signed=signed,
            series_number=number,
            series_description=description,
            noise_hu=noise,
            contrast=contrast,
            scale=study_scale(study),
        )
        bounds = [0, *split_at, len(dss)]
        holders = []
        for part, z in enumerate(zips[: len(bounds) - 1]):
            for i in range(bounds[part], bounds[part + 1]):
                member = f"{folder}/IM-{i + 1:04d}.dcm"
                if z.time != study.time:  # a split exam: each zip has its own study time
                    dss[i].StudyDate, dss[i].StudyTime = _fmt_date(z.time), _fmt_time(z.time)
                z.members.append((member, dicom_bytes(dss[i])))
                z.sops.append((member, sops[i], series_uid, False))
            holders.append(f"{z.batch}/{z.file}")
        sp = 360.0 / self.spec.ct_matrix
        self.ct_series[series_uid] = {
            "exam": exam,
            "zips": holders,
            "folder": folder,
            "description": description,
            "series_number": number,
            "n_slices": len(dss),
            "kind": kind,
            "kernel": kernel,
            "tilt_deg": tilt_deg,
            "keep": True,
            "best": False,
            "rows": self.spec.ct_matrix,
            "columns": self.spec.ct_matrix,
            "pixel_spacing": [float(_ds(sp)), float(_ds(sp))],
            "slice_thickness": float(_ds(thickness)),
            "orientation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            "positions": [[float(_ds(v)) for v in p] for p in positions],
            "missing_z": [],
            "duplicate_z": [],
            "spacings": steps,
            "rescale_varies": rescales is not None and len(set(rescales)) > 1,
            "signed": signed,
            **(extra or {}),
        }

    def ct_localizer(self, z: _Zip, study: StudyInfo, *, uid_tag: str, exam: str) -> None:
        """A two-image scout series (AP and lateral topograms, ImageType ...\\LOCALIZER)."""
        n = self.spec.ct_matrix
        series_uid = self.uid(uid_tag, "series", 1)
        frame = self.uid(uid_tag, "frame")
        sp = 500.0 / n
        positions, members = [], []
        for i, (orient, label) in enumerate(
            [((1, 0, 0, 0, 0, -1), "AP"), ((0, 1, 0, 0, 0, -1), "LAT")]
        ):
            pos = [-250.0 + sp / 2, -250.0 + sp / 2, 250.0 - sp / 2]
            if label == "AP":
                pos[1] = 0.0
            else:
                pos[0] = 0.0
            # a projection: mean attenuation along the viewing direction
            acc = np.zeros((n, n), dtype=np.float32)
            depth = np.linspace(-180.0, 180.0, 24)
            for d in depth:
                p = list(pos)
                p[1 if label == "AP" else 0] = float(d)
                acc += render_ct_slice(
                    p,
                    (n, n),
                    (sp, sp),
                    self.rng,
                    orientation=orient,
                    noise_hu=0.0,
                    scale=study_scale(study),
                )
            hu = acc / len(depth) + self.rng.normal(0.0, 4.0, size=(n, n)).astype(np.float32)
            sop = self.uid(uid_tag, "sop", 1, i)
            ds = make_ct_image(
                hu,
                study=study,
                sop_uid=sop,
                series_uid=series_uid,
                frame_uid=frame,
                position=pos,
                orientation=orient,
                pixel_spacing=(sp, sp),
                slice_thickness=1.0,
                series_number=1,
                instance_number=i + 1,
                series_description="Topogram",
                kernel="T20s",
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
            )
            member = f"1_SCOUT/IM-{i + 1:04d}.dcm"
            members.append((member, dicom_bytes(ds)))
            z.sops.append((member, sop, series_uid, False))
            positions.append(pos)
        z.members.extend(members)
        self.ct_series[series_uid] = self._aux_series(
            exam, z, "1_SCOUT", "Topogram", 1, 2, "localizer", "T20s", n, sp, positions
        )

    def _aux_series(
        self,
        exam: str,
        z: _Zip,
        folder: str,
        description: str,
        number: int,
        n: int,
        kind: str,
        kernel: str,
        matrix: int,
        sp: float,
        positions: list[list[float]],
    ) -> dict[str, Any]:
        return {
            "exam": exam,
            "zips": [f"{z.batch}/{z.file}"],
            "folder": folder,
            "description": description,
            "series_number": number,
            "n_slices": n,
            "kind": kind,
            "kernel": kernel,
            "tilt_deg": 0.0,
            "keep": False,
            "best": False,
            "rows": matrix,
            "columns": matrix,
            "pixel_spacing": [float(_ds(sp))] * 2 if sp else [],
            "slice_thickness": None,
            "orientation": [],
            "positions": positions,
            "missing_z": [],
            "duplicate_z": [],
            "spacings": [],
            "rescale_varies": False,
            "signed": False,
        }

    def ct_dose(self, z: _Zip, study: StudyInfo, *, uid_tag: str, exam: str) -> None:
        series_uid, sop = self.uid(uid_tag, "series", 999), self.uid(uid_tag, "sop", 999)
        ds = make_dose_report(
            study=study,
            sop_uid=sop,
            series_uid=series_uid,
            dlp=round(float(self.rng.uniform(150, 900)), 1),
        )
        member = "999_DOSE_REPORT/IM-0001.dcm"
        z.members.append((member, dicom_bytes(ds)))
        z.sops.append((member, sop, series_uid, False))
        self.ct_series[series_uid] = self._aux_series(
            exam, z, "999_DOSE_REPORT", "Dose Report", 999, 1, "dose", "", 0, 0.0, []
        )

    def ct_screen_save(self, z: _Zip, study: StudyInfo, *, uid_tag: str, exam: str) -> None:
        n = self.spec.ct_matrix
        series_uid, sop = self.uid(uid_tag, "series", 99), self.uid(uid_tag, "sop", 99)
        sp = 360.0 / n
        hu = render_ct_slice((-180 + sp / 2, -180 + sp / 2, 0.0), (n, n), (sp, sp), self.rng)
        ds = make_screen_save(
            np.clip(hu, -160, 240), study=study, sop_uid=sop, series_uid=series_uid
        )
        member = "99_SCREEN_SAVE/IM-0001.dcm"
        z.members.append((member, dicom_bytes(ds)))
        z.sops.append((member, sop, series_uid, False))
        self.ct_series[series_uid] = self._aux_series(
            exam, z, "99_SCREEN_SAVE", "SCREEN SAVE", 99, 1, "screen_save", "", n, sp, []
        )

    def ct_exam(
        self, batch: str, pid: str, t: dt.datetime, desc: str, *, siemens: bool = False
    ) -> tuple[_Zip, StudyInfo, str, str]:
        """A normal CT exam: scout, thin lung-kernel and thick soft-tissue series."""
        exam = self.exam_id("ct")
        z = self.add_zip(batch, pid, t, self.hiro(), desc, exam=exam)
        tag = f"{exam}{'-B70f' if siemens else ''}"
        study = self.ct_study(z, tag)
        self.ct_localizer(z, study, uid_tag=tag, exam=exam)
        sp = self.spec
        lung, soft = ("B70f", "B30f") if siemens else ("LUNG", "STANDARD")
        self.ct_series_add(
            [z],
            study,
            uid_tag=tag,
            exam=exam,
            number=2,
            description="CHEST LUNG",
            kind="axial",
            kernel=lung,
            positions=self.axial_positions(sp.ct_thin),
            noise=30.0,
        )
        self.ct_series_add(
            [z],
            study,
            uid_tag=tag,
            exam=exam,
            number=3,
            description="CHEST SOFT",
            kind="axial",
            kernel=soft,
            positions=self.axial_positions(sp.ct_thick),
            noise=8.0,
            signed=self.rng.random() < 0.5,
        )
        return z, study, tag, exam

    # ------------------------------------------------------------ bad inputs

    def bad_inputs(self, batch: str) -> None:
        """One zip per kind of bad input, all in the complete batch ``batch``."""
        rng = self.rng

        def bad(pid: str, day: int, kind: str, desc: str = "XR-CHEST-PA") -> _Zip:
            return self.add_zip(
                batch, pid, self.when(day), self.hiro(), desc, kind=kind, expected="error"
            )

        z = bad("1901", 50, "corrupt_zip")
        z.raw = b"PK\x03\x04" + rng.bytes(4096)

        z = bad("1902", 51, "truncated_zip")
        tmp = _Zip(batch, "tmp", z.time, truth=dict(z.truth), pid=z.pid)
        self.write_cxr(
            tmp,
            [
                self.cxr_img(
                    (128, 112),
                    folder="1_PA",
                    view_position="PA",
                    series_description="PA",
                    series_number=1,
                    view="frontal",
                    transfer_syntax=ExplicitVRLittleEndian,
                )
            ],
            uid_tag="truncated-zip",
        )
        full = _zip_bytes(tmp.members, z.time)
        z.raw = full[: len(full) // 2]
        for m, sop, _s, _b in tmp.sops:
            self.cxr_images[sop]["zip"] = self.cxr_images[sop]["zips"][0] = f"{z.batch}/{z.file}"
            z.truth["bad_members"].append(m)

        z = bad("1903", 52, "non_dicom")
        z.members = [
            ("1_PA/IM-0001.dcm", b"This is not a DICOM file.\r\nExport failed.\r\n" * 20),
            ("README.txt", b"Exported by PACS viewer. Not for diagnostic use.\n"),
        ]
        z.truth["bad_members"] = ["1_PA/IM-0001.dcm", "README.txt"]

        z = bad("1904", 53, "truncated_dicom")
        tmp = _Zip(batch, "tmp", z.time, truth=dict(z.truth), pid=z.pid)
        self.write_cxr(
            tmp,
            [
                self.cxr_img(
                    (96, 96),
                    folder="1_PA",
                    view_position="PA",
                    series_description="PA",
                    series_number=1,
                    view="frontal",
                    transfer_syntax=ExplicitVRLittleEndian,
                )
            ],
            uid_tag="truncated-dicom",
        )
        m, data = tmp.members[0]
        cut = data.index(b"\xe0\x7f\x10\x00")  # the Pixel Data tag: cut inside the header
        z.members = [(m, data[: cut // 2])]
        z.truth["bad_members"] = [m]
        for _m, sop, _s, _b in tmp.sops:
            del self.cxr_images[sop]

        z = bad("1905", 54, "no_pixel_data")
        sex, age = self.patient("1905")
        ds = make_cxr(
            phantom_chest_2d((64, 64), rng, bits_stored=12),
            study=StudyInfo("1905", z.time, self.uid("nopix", "study"), sex, age),
            sop_uid=self.uid("nopix", "sop"),
            series_uid=self.uid("nopix", "series"),
        )
        del ds.PixelData
        z.members = [("1_PA/IM-0001.dcm", dicom_bytes(ds))]
        z.truth["bad_members"] = ["1_PA/IM-0001.dcm"]

        t = self.when(55)
        z = self.add_zip(
            batch,
            "1906",
            t,
            "",
            "",
            kind="bad_name",
            expected="error",
            file=f"1906-{t:%Y%m%d}-XR CHEST PA.zip",
        )
        self.write_cxr(
            z,
            [
                self.cxr_img(
                    (96, 96),
                    folder="1_PA",
                    view_position="PA",
                    series_description="PA",
                    series_number=1,
                    view="frontal",
                )
            ],
            uid_tag="bad-name",
        )
        z.truth["bad_members"] = []

        z = bad("1907", 56, "path_traversal")
        self.write_cxr(
            z,
            [
                self.cxr_img(
                    (96, 96),
                    folder="1_PA",
                    view_position="PA",
                    series_description="PA",
                    series_number=1,
                    view="frontal",
                )
            ],
            uid_tag="evil",
        )
        (m, data), (_m2, sop, s, _b) = z.members[0], z.sops[0]
        z.members = [("../evil.dcm", data)]
        z.sops = [("../evil.dcm", sop, s, True)]
        self.cxr_images[sop]["member"] = "../evil.dcm"
        z.truth["bad_members"] = ["../evil.dcm"]

        # a good exam with one bad member: the zip is kept, the member reported
        exam = self.exam_id("cxr")
        z = self.add_zip(
            batch,
            "1908",
            self.when(57),
            self.hiro(),
            "XR-CHEST-PA-LATERAL",
            kind="mixed_bad_member",
            exam=exam,
        )
        self.write_cxr(z, self.pa_lat(), uid_tag=exam)
        m, data = z.members[1]
        pix_at = data.index(b"\xe0\x7f\x10\x00")
        z.members[1] = (m, data[: pix_at + (len(data) - pix_at) // 2])  # cut in Pixel Data
        mm, sop, s, _b = z.sops[1]
        z.sops[1] = (mm, sop, s, True)
        z.truth["bad_members"] = [m]

    # ------------------------------------------------------------ the plan

    def plan(self) -> None:
        """Plan every zip: one linear script of the planted situations."""
        sp = self.spec
        rng = self.rng
        b1 = self.batch("CXR-UPDATE-20200509-COMPLETE")
        b2 = self.batch("CXR-UPDATE-20200516-COMPLETE")
        b3 = self.batch("CXR-UPDATE-20200523-COMPLETE")
        b4 = self.batch("CXR-UPDATE-20200530-COMPLETE")
        c1 = self.batch("CT-UPDATE-20200512-COMPLETE")
        c2 = self.batch("CT-UPDATE-20200526-COMPLETE")
        c3 = self.batch("CT-UPDATE-20200602-IN-PROGRESS")

        # remap sheet: a chain 0042 -> 2001 -> 3001 (rows out of order), 1500 -> 1501 with
        # images under both ids, 1600 -> 1601 with images under the old id only
        self.remap = {"2001": "3001", "0042": "2001", "1500": "1501", "1600": "1601"}

        # ---- B1: normal PA+LAT with every CXR flavour spread over the exams
        exam = self.exam_id("cxr")
        z = self.add_zip(b1, "1001", self.when(1), self.hiro(), "XR-CHEST-PA-LATERAL", exam=exam)
        self.write_cxr(
            z,
            [
                self.cxr_img(
                    folder="1_PA",
                    view_position="PA",
                    series_description="PA",
                    series_number=1,
                    view="frontal",
                    transfer_syntax=ExplicitVRLittleEndian,
                    photometric="MONOCHROME2",
                    bits_stored=12,
                ),
                self.cxr_img(
                    folder="2_LATERAL",
                    view_position="LATERAL",
                    series_description="LATERAL",
                    series_number=2,
                    view="lateral",
                    lateral=True,
                    transfer_syntax=JPEGLosslessSV1,
                    photometric="MONOCHROME1",
                    bits_stored=14,
                ),
            ],
            uid_tag=exam,
        )

        # ---- cross-batch duplicate: original in B1, copy (new HIRO id) in B3
        exam = self.exam_id("cxr")
        t = self.when(3)
        orig = self.add_zip(
            b1,
            "1100",
            t,
            self.hiro(),
            "XR-CHEST-PA-LATERAL",
            kind="cross_batch_duplicate",
            exam=exam,
        )
        self.write_cxr(orig, self.pa_lat(), uid_tag=exam)
        dup = self.add_zip(
            b3,
            "1100",
            t,
            self.hiro(),
            "XR-CHEST-PA-LATERAL",
            kind="cross_batch_duplicate",
            expected="duplicate",
            kept_as=f"{b1}/{orig.file}",
            exam=exam,
        )
        self.copy_members(orig, dup)

        # ---- pediatric duplicate, same UIDs, both in B1
        exam = self.exam_id("cxr")
        self.patient("1300", pediatric=True)
        t = self.when(5)
        desc = "XR-P-PORT-CHEST-1-VIEW"
        pa = self.add_zip(
            b1, "1300", t, self.hiro(), desc, kind="pediatric_duplicate_same_uids", exam=exam
        )
        self.write_cxr(
            pa,
            [
                self.cxr_img(
                    folder="1_AP",
                    view_position="AP",
                    series_description="AP",
                    series_number=1,
                    view="frontal",
                    sop_class="CR",
                    transfer_syntax=RLELossless,
                    photometric="MONOCHROME1",
                    bits_stored=12,
                    rescale=(1.0, 0.0),
                )
            ],
            uid_tag=exam,
        )
        pb = self.add_zip(
            b1,
            "1300",
            t,
            self.hiro(),
            desc,
            kind="pediatric_duplicate_same_uids",
            expected="duplicate",
            kept_as=f"{b1}/{pa.file}",
            exam=exam,
        )
        self.copy_members(pa, pb)

        # ---- same timestamp, different images: B1 and B2
        t = self.when(7)
        ex_a, ex_b = self.exam_id("cxr"), self.exam_id("cxr")
        sa = self.add_zip(
            b1,
            "1400",
            t,
            self.hiro(),
            "XR-PORT-CHEST-1V",
            kind="same_timestamp_different",
            exam=ex_a,
        )
        self.write_cxr(sa, self.portable(), uid_tag=ex_a)
        sb = self.add_zip(
            b2,
            "1400",
            t,
            self.hiro(),
            "XR-PORT-CHEST-1V",
            kind="same_timestamp_different",
            exam=ex_b,
        )
        self.write_cxr(sb, self.portable(), uid_tag=ex_b)
        self.not_duplicates.append([f"{b1}/{sa.file}", f"{b2}/{sb.file}"])

        # ---- partial overlap: B1 zip with 3 images, B3 zip sharing 2 of them plus 1 new
        t = self.when(9)
        ex_a, ex_b = self.exam_id("cxr"), self.exam_id("cxr")
        oa = self.add_zip(
            b1, "1450", t, self.hiro(), "XR-CHEST-PA-LATERAL", kind="partial_overlap", exam=ex_a
        )
        imgs = self.pa_lat()
        extra = self.cxr_img(
            folder="1_PA",
            file="IM-0002.dcm",
            view_position="PA",
            series_description="PA",
            series_number=1,
            view="frontal",
        )
        extra.instance_number = 2
        self.write_cxr(oa, [imgs[0], extra, imgs[1]], uid_tag=ex_a)
        ob = self.add_zip(
            b3, "1450", t, self.hiro(), "XR-CHEST-PA-LATERAL", kind="partial_overlap", exam=ex_b
        )
        shared = [0, 2]
        for i in shared:
            ob.members.append(oa.members[i])
            ob.sops.append(oa.sops[i])
            self.cxr_images[oa.sops[i][1]]["zips"].append(f"{b3}/{ob.file}")
        new = self.cxr_img(
            folder="1_PA",
            file="IM-0003.dcm",
            view_position="PA",
            series_description="PA",
            series_number=1,
            view="frontal",
        )
        new.instance_number = 3
        self.write_cxr(ob, [new], uid_tag=ex_b, study_uid=self.uid(ex_a, "study"))
        ob.members.sort()
        ob.sops.sort()
        self.partial.append((f"{b1}/{oa.file}", f"{b3}/{ob.file}"))
        self.not_duplicates.append([f"{b1}/{oa.file}", f"{b3}/{ob.file}"])

        # ---- missed remap: an image of 1700 delivered again under 1701 (B3), plus a new one
        ex_a, ex_b = self.exam_id("cxr"), self.exam_id("cxr")
        t = self.when(11)
        ma = self.add_zip(b1, "1700", t, self.hiro(), "XR-PORT-CHEST-1V", exam=ex_a)
        self.write_cxr(ma, self.portable(), uid_tag=ex_a)
        mb = self.add_zip(
            b3,
            "1701",
            t,
            self.hiro(),
            "XR-CHEST-PA-LATERAL",
            kind="missed_remap_shared_pixels",
            exam=ex_b,
        )
        again = dcmread(io.BytesIO(ma.members[0][1]))  # same SOP UID and pixels, other id
        again.PatientID = again.PatientName = "1701"
        again.PatientSex, again.PatientAge = self.patient("1701")
        mb.members.append((ma.members[0][0], dicom_bytes(again)))
        mb.sops.append(ma.sops[0])
        self.cxr_images[ma.sops[0][1]]["zips"].append(f"{b3}/{mb.file}")
        lat = self.cxr_img(
            folder="2_LATERAL",
            view_position="LL",
            series_description="LATERAL",
            series_number=2,
            view="lateral",
            lateral=True,
        )
        self.write_cxr(mb, [lat], uid_tag=ex_b, study_uid=self.uid(ex_a, "study"))
        ma.truth["kind"] = "missed_remap_shared_pixels"
        self.missed.append((f"{b1}/{ma.file}", f"{b3}/{mb.file}"))

        self.flush_all()  # bounded memory: finished zips go to disk now
        # ---- remapped ids: chain start 0042 (B1), chain middle 2001 (B2), 1500 / 1501, 1600
        for batch, pid, day in (
            (b1, "0042", 13),
            (b2, "2001", 14),
            (b1, "1500", 15),
            (b2, "1501", 16),
            (b2, "1600", 17),
        ):
            exam = self.exam_id("cxr")
            z = self.add_zip(batch, pid, self.when(day), self.hiro(), "XR-PORT-CHEST-1V", exam=exam)
            self.write_cxr(z, self.portable(), uid_tag=exam)

        # ---- a leading-zero current id, with a screen save in the exam (B1)
        exam = self.exam_id("cxr")
        z = self.add_zip(b1, "0815", self.when(18), self.hiro(), "XR-CHEST-PA-LATERAL", exam=exam)
        imgs = self.pa_lat()
        ss = self.cxr_img(
            folder="99_SCREEN_SAVE",
            view_position=None,
            series_description="SCREEN SAVE",
            series_number=99,
            view="unknown",
            sop_class="SC",
            transfer_syntax=ExplicitVRLittleEndian,
            photometric="MONOCHROME2",
            bits_stored=8,
        )
        ss.pixels = (ss.pixels >> 0).astype(np.uint8)
        self.write_cxr(z, [*imgs, ss], uid_tag=exam)

        # ---- B2: pediatric duplicate with new UIDs (copy in B3), views from descriptions
        exam = self.exam_id("cxr")
        self.patient("1350", pediatric=True)
        t = self.when(20)
        desc = "XR-P-CHEST-2-VIEWS"
        qa = self.add_zip(
            b2, "1350", t, self.hiro(), desc, kind="pediatric_duplicate_new_uids", exam=exam
        )
        imgs = self.pa_lat()
        for im in imgs:
            im.transfer_syntax = ExplicitVRLittleEndian
        self.write_cxr(qa, imgs, uid_tag=exam)
        qb = self.add_zip(
            b3,
            "1350",
            t,
            self.hiro(),
            desc,
            kind="pediatric_duplicate_new_uids",
            expected="duplicate",
            kept_as=f"{b2}/{qa.file}",
            exam=exam,
        )
        self.write_cxr(qb, imgs, uid_tag=f"{exam}-pacs-copy")
        for _m, sop, _s, _b in qb.sops:
            self.cxr_images[sop]["keep"] = False
            self.cxr_images[sop]["drop_reason"] = "duplicate"

        exam = self.exam_id("cxr")
        z = self.add_zip(b2, "1002", self.when(22), self.hiro(), "XR-CHEST-PA-LATERAL", exam=exam)
        self.write_cxr(
            z,
            [
                self.cxr_img(
                    folder="1_CHEST",
                    view_position=None,
                    series_description="PA",
                    series_number=1,
                    view="frontal",
                    transfer_syntax=JPEG2000Lossless,
                    bits_stored=16,
                ),
                self.cxr_img(
                    folder="2_CHEST",
                    view_position=None,
                    series_description="LATERAL",
                    series_number=2,
                    view="lateral",
                    lateral=True,
                    transfer_syntax=JPEG2000Lossless,
                    bits_stored=15,
                ),
                self.cxr_img(
                    folder="3_CHEST",
                    view_position=None,
                    series_description="CHEST",
                    series_number=3,
                    view="unknown",
                    transfer_syntax=ImplicitVRLittleEndian,
                    bits_stored=12,
                ),
            ],
            uid_tag=exam,
        )

        # ---- B3: VOI LUT sequence, two windows, rescale, JPEG lossless, RLE
        exam = self.exam_id("cxr")
        z = self.add_zip(b3, "1003", self.when(24), self.hiro(), "XR-CHEST-PA-LATERAL", exam=exam)
        self.write_cxr(
            z,
            [
                self.cxr_img(
                    folder="1_PA",
                    view_position="PA",
                    series_description="PA",
                    series_number=1,
                    view="frontal",
                    transfer_syntax=JPEGLosslessSV1,
                    bits_stored=16,
                    photometric="MONOCHROME2",
                    windows=((30000.0, 60000.0), (26000.0, 20000.0)),
                    rescale=(1.0, 0.0),
                ),
                self.cxr_img(
                    folder="2_LATERAL",
                    view_position="RL",
                    series_description="LATERAL",
                    series_number=2,
                    view="lateral",
                    lateral=True,
                    transfer_syntax=RLELossless,
                    bits_stored=12,
                    windows=(),
                    voi_lut=True,
                    photometric="MONOCHROME2",
                ),
            ],
            uid_tag=exam,
        )
        exam = self.exam_id("cxr")
        z = self.add_zip(b3, "1004", self.when(25), self.hiro(), "XR-PORT-CHEST-1V", exam=exam)
        self.write_cxr(
            z,
            [
                self.cxr_img(
                    folder="1_AP",
                    view_position="AP",
                    series_description="AP PORTABLE",
                    series_number=1,
                    view="frontal",
                    sop_class="CR",
                    transfer_syntax=JPEG2000Lossless,
                    photometric="MONOCHROME1",
                    bits_stored=14,
                    rescale=(2.0, -1024.0),
                )
            ],
            uid_tag=exam,
        )

        self.flush_all()  # bounded memory: finished zips go to disk now
        # ---- B4: bad inputs, plus fillers spread over the complete CXR batches
        self.bad_inputs(b4)
        for i in range(sp.n_fill_cxr):
            exam = self.exam_id("cxr")
            batch = (b1, b2, b3, b4)[i % 4]
            pid = f"{5000 + i}"
            if rng.random() < 0.5:
                z = self.add_zip(
                    batch,
                    pid,
                    self.when(26 + i % 40),
                    self.hiro(),
                    "XR-CHEST-PA-LATERAL",
                    exam=exam,
                )
                self.write_cxr(
                    z, self.pa_lat(lat_position=str(rng.choice(["LL", "LATERAL"]))), uid_tag=exam
                )
                self.flush(z)
            else:
                z = self.add_zip(
                    batch, pid, self.when(26 + i % 40), self.hiro(), "XR-PORT-CHEST-1V", exam=exam
                )
                self.write_cxr(z, self.portable(), uid_tag=exam)
                self.flush(z)

        self.flush_all()  # bounded memory: finished zips go to disk now
        # ---- CT, batch c1: standard exam with dose report (GE kernels)
        z, study, tag, exam = self.ct_exam(c1, "2100", self.when(30), "CT-CHEST-WO")
        self.ct_dose(z, study, uid_tag=tag, exam=exam)

        self.flush_all()  # bounded memory: finished zips go to disk now
        # ---- a CT exam split over three zips minutes apart, same HIRO id (Siemens kernels)
        exam = self.exam_id("ct")
        hiro = self.hiro()
        t0 = self.when(31, hour=10)
        times = [t0, t0 + dt.timedelta(minutes=9), t0 + dt.timedelta(minutes=12, seconds=30)]
        parts: list[_Zip] = []
        for k, tk in enumerate(times):
            parts.append(
                self.add_zip(
                    c1,
                    "2200",
                    tk,
                    hiro,
                    "CT-CHEST-ABD-PEL-W",
                    kind="split_ct_part",
                    exam=exam,
                    expected="kept" if k == 0 else "merged",
                    kept_as="" if k == 0 else f"{c1}/{parts[0].file}" if parts else "",
                )
            )
        tag = f"{exam}-B70f"
        study = self.ct_study(parts[0], tag)
        self.ct_localizer(parts[0], study, uid_tag=tag, exam=exam)
        thin = sp.ct_thin
        self.ct_series_add(
            parts[:2],
            study,
            uid_tag=tag,
            exam=exam,
            number=2,
            description="CHEST LUNG",
            kind="split_across_zips",
            kernel="B70f",
            positions=self.axial_positions(thin),
            split_at=[thin // 2],
            noise=30.0,
            contrast=True,
        )
        self.ct_series_add(
            parts[2:],
            study,
            uid_tag=tag,
            exam=exam,
            number=3,
            description="ABD PEL SOFT",
            kind="axial",
            kernel="B30f",
            positions=self.axial_positions(sp.ct_thick, z_bottom=300.0),
            noise=8.0,
            contrast=True,
        )

        self.flush_all()  # bounded memory: finished zips go to disk now
        # ---- positive gantry tilt + screen save
        z, study, tag, exam = self.ct_exam(c1, "2300", self.when(33), "CT-CHEST-WO")
        self.tilted(z, study, tag, exam, 4, 15.0)
        self.ct_screen_save(z, study, uid_tag=tag, exam=exam)

        self.flush_all()  # bounded memory: finished zips go to disk now
        # ---- batch c2: CTA with negative tilt and uneven spacing (patient 0042, old id)
        exam = self.exam_id("ct")
        z = self.add_zip(c2, "0042", self.when(34), self.hiro(), "CTA_CHEST-PE", exam=exam)
        tag = exam
        study = self.ct_study(z, tag)
        self.ct_localizer(z, study, uid_tag=tag, exam=exam)
        self.tilted(z, study, tag, exam, 2, -12.0, kernel="STANDARD", contrast=True)
        n = sp.ct_thin
        first = self.axial_positions(n // 2 + 1, z_top=-135.0, z_bottom=0.0)
        step = round(first[1][2] - first[0][2], 3)
        z_last = first[-1][2]
        second = [
            [p[0], p[1], round(z_last + k * round(step * 1.6, 1), 3)]
            for k, p in enumerate(first[1:], start=1)
        ]
        self.ct_series_add(
            [z],
            study,
            uid_tag=tag,
            exam=exam,
            number=3,
            description="CHEST LUNG UNEVEN",
            kind="uneven",
            kernel="LUNG",
            positions=first + second,
            noise=30.0,
            contrast=True,
            thickness=step,
        )

        self.flush_all()  # bounded memory: finished zips go to disk now
        # ---- gaps, duplicates, per-slice rescale (patient 1501, current id of a remap)
        exam = self.exam_id("ct")
        z = self.add_zip(c2, "1501", self.when(36), self.hiro(), "CT-CHEST-WO", exam=exam)
        tag = exam
        study = self.ct_study(z, tag)
        self.ct_localizer(z, study, uid_tag=tag, exam=exam)
        pos = self.axial_positions(sp.ct_thin)
        gone = len(pos) // 3
        missing_z = pos[gone][2]
        self.ct_series_add(
            [z],
            study,
            uid_tag=tag,
            exam=exam,
            number=2,
            description="CHEST LUNG",
            kind="missing_slice",
            kernel="LUNG",
            positions=pos[:gone] + pos[gone + 1 :],
            noise=30.0,
            thickness=pos[1][2] - pos[0][2],
            extra={"missing_z": [missing_z]},
        )
        self.ct_series[self.uid(tag, "series", 2)]["spacings"] = [round(pos[1][2] - pos[0][2], 3)]
        pos = self.axial_positions(sp.ct_thick)
        twice = len(pos) // 2
        self.ct_series_add(
            [z],
            study,
            uid_tag=tag,
            exam=exam,
            number=3,
            description="CHEST SOFT",
            kind="duplicate_slice",
            kernel="STANDARD",
            positions=[*pos, pos[twice]],
            noise=8.0,
            extra={"duplicate_z": [pos[twice][2]]},
        )
        rescales = [
            ((1.0, -1024.0), (0.5, -1000.0), (2.0, -2048.0))[i % 3] for i in range(sp.ct_thick)
        ]
        self.ct_series_add(
            [z],
            study,
            uid_tag=tag,
            exam=exam,
            number=4,
            description="CHEST SOFT VARIED",
            kind="rescale_varies",
            kernel="B30f",
            positions=self.axial_positions(sp.ct_thick),
            rescales=rescales,
            noise=8.0,
        )

        for i in range(sp.n_fill_ct):
            pid = f"{5000 + i}" if i < sp.n_fill_cxr else f"{6000 + i}"
            z, *_ = self.ct_exam(
                (c1, c2)[i % 2], pid, self.when(38 + i % 30), "CT-CHEST-W", siemens=i % 2 == 1
            )
            self.flush(z)

        self.flush_all()  # bounded memory: finished zips go to disk now
        self.resumed_scan(c2)

        self.flush_all()  # bounded memory: finished zips go to disk now
        # ---- the upload still in progress
        self.ct_exam(c3, "2500", self.when(45), "CT-CHEST-WO")

    def resumed_scan(self, batch: str) -> None:
        """A scan interrupted and resumed as a new series: two zips 9 minutes apart, one
        patient and HIRO id; the second part (new Series Instance UID, number and time)
        starts one slice step after the first stopped, in the same frame of reference."""
        exam = self.exam_id("ct")
        hiro = self.hiro()
        t0 = self.when(40, hour=10)
        t1 = t0 + dt.timedelta(minutes=9)
        first = self.add_zip(
            batch, "2600", t0, hiro, "CT-CHEST-WO", kind="resumed_ct_part", exam=exam
        )
        second = self.add_zip(
            batch,
            "2600",
            t1,
            hiro,
            "CT-CHEST-WO",
            kind="resumed_ct_part",
            exam=exam,
            expected="merged",
            kept_as=f"{batch}/{first.file}",
        )
        tag = exam
        study = self.ct_study(first, tag)
        self.ct_localizer(first, study, uid_tag=tag, exam=exam)
        pos = self.axial_positions(self.spec.ct_thin)
        cut = len(pos) // 2
        uids = [self.uid(tag, "series", number) for number in (2, 3)]
        zips = [f"{batch}/{first.file}", f"{batch}/{second.file}"]
        for k, (z, part, st) in enumerate(
            ((first, pos[:cut], study), (second, pos[cut:], replace(study, time=t1)))
        ):
            self.ct_series_add(
                [z],
                st,
                uid_tag=tag,
                exam=exam,
                number=2 + k,
                description="CHEST LUNG",
                kind="resumed_part",
                kernel="LUNG",
                positions=part,
                noise=30.0,
                thickness=round(pos[1][2] - pos[0][2], 3),
                extra=(
                    {
                        "stitched_series": uids,
                        "stitched_zips": zips,
                        "seams_z": [pos[cut][2]],
                        "n_stitched": len(pos),
                    }
                    if k == 0
                    else {"stitched_into": uids[0], "keep": False}
                ),
            )

    def tilted(
        self,
        z: _Zip,
        study: StudyInfo,
        tag: str,
        exam: str,
        number: int,
        tilt: float,
        *,
        kernel: str = "LUNG",
        contrast: bool = False,
    ) -> None:
        """A gantry-tilted series: axial IOP, IPP y shifted by tan(tilt) per mm of z."""
        pos = self.axial_positions(self.spec.ct_thick)
        tan = math.tan(math.radians(tilt))
        z0 = pos[0][2]
        shifted = [[p[0], round(p[1] + (p[2] - z0) * tan, 4), p[2]] for p in pos]
        self.ct_series_add(
            [z],
            study,
            uid_tag=tag,
            exam=exam,
            number=number,
            description=f"CHEST TILT {tilt:+.0f}",
            kind="tilted",
            kernel=kernel,
            positions=shifted,
            tilt_deg=tilt,
            noise=10.0,
            contrast=contrast,
        )

    # ------------------------------------------------------------ truth and output

    def finish_truth(self) -> dict[str, Any]:
        batch_dates = {n: b["date"] for n, b in self.batches.items()}

        def order(rel: str) -> tuple[str, str]:
            b, _, f = rel.partition("/")
            return (batch_dates[b], f)

        # members and instance counts
        for rel, z in self.zips.items():
            assert z.flushed, rel
            z.truth["n_members"] = len(z.truth["members"])
            bad = set(z.truth["bad_members"])
            z.truth["n_instances"] = (
                0 if z.raw is not None else sum(1 for m, *_ in z.sops if m not in bad)
            )
            if z.truth["kind"] in ("non_dicom", "truncated_dicom", "corrupt_zip", "truncated_zip"):
                z.truth["n_instances"] = 0
            del rel

        # exams: primary zip first, then merged parts by time; instances assigned once
        exams: dict[str, dict[str, Any]] = {}
        for rel in sorted(self.zips, key=order):
            t = self.zips[rel].truth
            if t["expected"] not in ("kept", "merged"):
                continue
            e = exams.setdefault(t["exam"], {"zips": []})
            e["zips"].append(rel)
        seen: set[str] = set()
        for ex in sorted(exams, key=lambda k: order(exams[k]["zips"][0])):
            e = exams[ex]
            e["zips"].sort(key=lambda r: (self.zips[r].truth["expected"] != "kept", order(r)))
            prim = self.zips[e["zips"][0]].truth
            sops: list[str] = []
            for rel in e["zips"]:
                z = self.zips[rel]
                bad = set(z.truth["bad_members"])
                for m, sop, _s, _b in z.sops:
                    if m in bad or sop in seen:
                        continue
                    seen.add(sop)
                    sops.append(sop)
                    if sop in self.cxr_images:
                        self.cxr_images[sop]["zip"] = rel
                        self.cxr_images[sop]["exam"] = ex
            exams[ex] = {
                "modality": prim["modality"],
                "patient_id": prim["patient_id"],
                "source_patient_id": prim["patient_id_source"],
                "hiro_id": prim["hiro_id"],
                "time": prim["time"],
                "description": prim["description"],
                "pediatric": prim["pediatric"],
                "batch": prim["batch"],
                "zips": e["zips"],
                "sop_uids": sorted(sops),
                "n_instances": len(sops),
            }
        for sop, c in self.cxr_images.items():
            if sop not in seen and c["keep"]:
                c["keep"] = False
                kinds = {self.zips[r].truth["expected"] for r in c["zips"]}
                c["drop_reason"] = (
                    "in_progress"
                    if "skipped" in kinds
                    else ("duplicate" if "duplicate" in kinds else "bad_input")
                )
        for _uid, s in self.ct_series.items():
            if not any(self.zips[r].truth["expected"] in ("kept", "merged") for r in s["zips"]):
                s["keep"] = False
        # "best" series per exam: preferred kernel order, then most slices
        by_exam: dict[str, list[str]] = {}
        for su, s in self.ct_series.items():
            if s["keep"]:
                by_exam.setdefault(s["exam"], []).append(su)
        for sus in by_exam.values():

            def rank(su: str) -> tuple[int, int]:
                k = self.ct_series[su]["kernel"].upper()
                idx = next((i for i, p in enumerate(_PREFERRED_KERNELS) if p in k), 99)
                return (idx, -self.ct_series[su]["n_slices"])

            self.ct_series[min(sus, key=rank)]["best"] = True

        # patient groups: remap components plus missed-remap links
        parent: dict[str, str] = {}

        def find(a: str) -> str:
            parent.setdefault(a, a)
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        def union(a: str, b: str) -> None:
            parent[find(a)] = find(b)

        for old, new in self.remap.items():
            union(old, new)
        missed = []
        for a, b in self.missed:
            za, zb = self.zips[a], self.zips[b]
            shared = sorted({s for _m, s, *_ in za.sops} & {s for _m, s, *_ in zb.sops})
            ids = [za.truth["patient_id"], zb.truth["patient_id"]]
            union(*ids)
            missed.append({"zips": [a, b], "patient_ids": ids, "sop_uids": shared})
        groups: dict[str, list[str]] = {}
        for a in list(parent):
            groups.setdefault(find(a), []).append(a)
        patient_groups = sorted(sorted(g) for g in groups.values() if len(g) > 1)

        partial = []
        for a, b in self.partial:
            shared = sorted(
                {s for _m, s, *_ in self.zips[a].sops} & {s for _m, s, *_ in self.zips[b].sops}
            )
            partial.append({"zips": [a, b], "shared_sops": len(shared), "shared_sop_uids": shared})

        # clinical table: every current id with kept images except the orphans
        with_images = sorted({e["patient_id"] for e in exams.values()})
        orphans = ["1701"]
        first_day: dict[str, dt.date] = {}
        for e in exams.values():
            d = dt.date.fromisoformat(e["time"][:10])
            first_day[e["patient_id"]] = min(first_day.get(e["patient_id"], d), d)
        rows = []
        for pid in with_images:
            if pid in orphans:
                continue
            enc = first_day[pid] - dt.timedelta(days=int(self.rng.integers(0, 6)))
            sex = self.patients.get(
                pid,
                self.patients.get(
                    next((o for o, n in self.remap.items() if self.current(o) == pid), pid),
                    ("F", ""),
                ),
            )[0]
            rows.append(
                {
                    "patient_id": pid,
                    "covid_encounter_date": enc.isoformat(),
                    "icu": int(self.rng.random() < 0.3),
                    "sex": sex,
                }
            )
        rows.append(
            {
                "patient_id": "2500",
                "covid_encounter_date": "2020-04-12",
                "icu": 1,
                "sex": self.patients["2500"][0],
            }
        )
        rows.append(
            {"patient_id": "9001", "covid_encounter_date": "2020-04-02", "icu": 0, "sex": "M"}
        )
        self.clinical_rows = rows

        remap_resolved = {old: self.current(old) for old in sorted(self.remap)}
        return {
            "seed": self.seed,
            "size": self.size,
            "remap_sheet": REMAP_SHEET,
            "remap": dict(sorted(self.remap.items())),
            "remap_resolved": remap_resolved,
            "batches": [self.batches[k] for k in sorted(self.batches)],
            "zips": {rel: self.zips[rel].truth for rel in sorted(self.zips)},
            "exams": dict(sorted(exams.items())),
            "not_duplicates": self.not_duplicates,
            "partial_overlaps": partial,
            "missed_remaps": missed,
            "patient_groups": patient_groups,
            "cxr_images": dict(sorted(self.cxr_images.items())),
            "ct_series": dict(sorted(self.ct_series.items())),
            "clinical": CLINICAL_NAME,
            "orphans": orphans,
            "private_strings": sorted(PRIVATE_STRINGS.values()),
        }

    def flush_all(self) -> None:
        """Flush every zip planned so far (none of them changes any more)."""
        for rel in sorted(self.zips):
            self.flush(self.zips[rel])

    def flush(self, z: _Zip) -> None:
        """Write ``z`` to disk (CT members in a seeded shuffled order) and free its members."""
        if z.flushed:
            return
        members = list(z.members)
        if z.truth["modality"] == "ct" and z.raw is None:
            order = np.random.default_rng([self.seed, len(members), z.time.toordinal()])
            members = [members[i] for i in order.permutation(len(members))]
        data = z.raw if z.raw is not None else _zip_bytes(members, z.time)
        (self.root / z.batch / z.file).write_bytes(data)
        z.truth["members"] = [m for m, _ in members] if z.raw is None else []
        z.size = len(data)
        z.members = []
        z.flushed = True

    def write(self) -> dict[str, int]:
        """Write the remap sheet and the clinical table; count what was written."""
        root = self.root
        n_bytes = n_members = n_inst = 0
        for z in self.zips.values():
            n_bytes += z.size
            n_members += z.truth["n_members"]
            n_inst += z.truth["n_instances"]
        n_bytes += _write_remap_sheet(root / REMAP_SHEET, self.remap)
        with open(root / CLINICAL_NAME, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["patient_id", "covid_encounter_date", "icu", "sex"])
            w.writeheader()
            w.writerows(self.clinical_rows)
        return {
            "batches": len(self.batches),
            "zips": len(self.zips),
            "members": n_members,
            "instances": n_inst,
            "bytes": n_bytes,
        }


def study_scale(study: StudyInfo) -> float:
    """Body size factor of a patient (0.85 .. 1.1, from the patient id): stable per patient."""
    h = int(hashlib.blake2b(study.patient_id.encode(), digest_size=2).hexdigest(), 16)
    return 0.85 + 0.25 * (h / 65535.0)


def _write_remap_sheet(path: Path, remap: dict[str, str]) -> int:
    """Write the remap sheet with text cells; rewritten so that the bytes are deterministic."""
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "REMAP"
    ws.append(["OLD_C19_ID", "NEW_C19_ID"])
    for old, new in remap.items():
        ws.append([old, new])
    for row in ws.iter_rows(min_row=2):
        for cell in row:
            cell.number_format = "@"
            cell.data_type = "s"
    fixed = dt.datetime(2020, 6, 1)
    wb.properties.created = fixed
    wb.properties.modified = fixed
    bio = io.BytesIO()
    wb.save(bio)
    out = io.BytesIO()
    with zipfile.ZipFile(bio) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = re.sub(
                    rb"(<dcterms:(created|modified)[^>]*>)[^<]*",
                    rb"\g<1>2020-06-01T00:00:00Z",
                    data,
                )
            zi = zipfile.ZipInfo(info.filename, date_time=_ZIP_EPOCH)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            zi.create_system = 3
            dst.writestr(zi, data)
    data = out.getvalue()
    path.write_bytes(data)
    return len(data)


# --------------------------------------------------------------------------- public API


def generate(root: str | os.PathLike[str], *, seed: int = 0, size: str = "tiny") -> dict[str, Any]:
    """Write a synthetic datamart into ``root`` and return its ground truth.

    ``root`` must not exist or be an empty folder. ``size`` is ``"tiny"`` (seconds; for
    tests), ``"demo"`` (tens of seconds) or ``"bench"`` (minutes; hundreds of full-size
    radiographs and 300-slice CTs). The truth is also written to
    ``root / "hiroml-synth-truth.json"``; its format is described in the module docstring.
    The same ``seed`` and ``size`` give byte-identical files.
    """
    if size not in SIZES:
        raise ValueError(f"size={size!r}: choose one of {', '.join(SIZES)}")
    out = Path(root)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    b = _Builder(out, seed, size)
    b.plan()
    b.flush_all()
    truth = b.finish_truth()
    truth["counts"] = b.write()
    text = json.dumps(truth, indent=1, sort_keys=False)
    (out / TRUTH_NAME).write_text(text + "\n", encoding="utf-8")
    log.info(
        "synthetic datamart %s (seed %d, %s): %d zips in %.1f s",
        out,
        seed,
        size,
        truth["counts"]["zips"],
        time.perf_counter() - t0,
    )
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    """``hiroml-synth OUT [--seed N] [--size tiny|demo|bench]``: write a synthetic datamart."""
    p = argparse.ArgumentParser(prog="hiroml-synth", description=main.__doc__)
    p.add_argument("out", help="folder to create (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="demo")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        truth = generate(a.out, seed=a.seed, size=a.size)
    except (FileExistsError, ValueError) as e:
        print(f"hiroml-synth: {e}")
        return 2
    c = truth["counts"]
    print(
        f"hiroml-synth: wrote {a.out} (seed {a.seed}, size {a.size}): {c['batches']} batches, "
        f"{c['zips']} zips, {c['instances']} DICOM instances, {c['bytes'] / 1e6:.1f} MB in "
        f"{time.perf_counter() - t0:.1f} s; ground truth in {Path(a.out) / TRUTH_NAME}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
