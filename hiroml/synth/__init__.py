"""A seeded, deterministic synthetic CRDW COVID-19 imaging datamart, with its ground truth.

``generate(root, seed=0, size="tiny")`` writes a datamart laid out exactly as the data
provider's tip sheet describes (docs/design.md §1)::

    root/
      C19_HIRO_LDS_REMAP_PUB-LIST.xlsx          OLD_C19_ID -> NEW_C19_ID (text cells)
      clinical.csv                               patient_id, covid_encounter_date, icu, ...
      CXR-UPDATE-20200509-COMPLETE/
        1001_20200302-081500_A001_XR-CHEST-PA-LATERAL.zip
          1_PA/IM-0001.dcm  2_LATERAL/IM-0001.dcm
      CT-UPDATE-20200602-IN-PROGRESS/ ...
      hiroml-synth-truth.json                    the ground truth (below)

and plants every situation of the tip sheet and of docs/design.md §2 (remap chains, cross-batch
and pediatric duplicates, same-timestamp non-duplicates, partial overlaps, a missed remap,
split CT exams, localizers, dose reports, screen saves, tilted / uneven / gapped CT series,
every common transfer syntax, and one zip per kind of bad input). The same ``seed`` and
``size`` give byte-identical files in every environment the dependency bounds allow (the
oldest set and the lock give the same bytes; ``tests/test_synth.py`` pins the tiny
datamart's digest): pixels are plain numpy arithmetic, zip and workbook dates are fixed,
DICOM headers name the generator instead of the pydicom version, and the encoders' output
depends on the pixels only. What the bytes still rest on: zlib's deflate (the zips),
libjpeg-turbo's lossless JPEG (imagecodecs), OpenJPEG's JPEG 2000 codestream
(pylibjpeg-openjpeg) and pydicom's RLE encoder.

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

Layout
------
``phantoms``    2D chest phantom (stored values) and the analytic chest in HU for CT.
``factory``     DICOM datasets (radiograph, CT, dose SR, screen save), Part 10 bytes,
                deterministic zips, the remap sheet; :func:`values_hash`.
``datamart``    sizes, planned zips, the shared state (one seeded random stream).
``radiographs`` plan and write radiographs; ``ctscans`` CT series, scouts, dose, screen saves.
``scenarios``   the table of planted situations (``SCENARIOS``), one function each;
``badinputs``   its rows of bad inputs.
``truth``       ground-truth assembly once every zip is written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hiroml.synth.ct_factory import (
    ct_stored_values,
    make_ct_image,
    make_ct_series,
    make_dose_report,
    make_screen_save,
)
from hiroml.synth.datamart import SIZES, Datamart, SizeSpec
from hiroml.synth.factory import (
    CLINICAL_NAME,
    CR_STORAGE,
    CT_STORAGE,
    CXR_SYNTAXES,
    DOSE_SR_STORAGE,
    DX_STORAGE,
    PRIVATE_STRINGS,
    REMAP_SHEET,
    REMAP_SHEET_DATE,
    SC_STORAGE,
    SOP_CLASSES,
    SYNTH_IMPLEMENTATION_UID,
    SYNTH_IMPLEMENTATION_VERSION,
    StudyInfo,
    dicom_bytes,
    make_cxr,
    strip_j2k_comments,
    study_scale,
    values_hash,
    write_remap_sheet,
)
from hiroml.synth.phantoms import ct_hu_at, phantom_chest_2d, phantom_chest_3d, render_ct_slice
from hiroml.synth.scenarios import SCENARIOS, plan
from hiroml.synth.truth import finish_truth
from hiroml.vocab import TRUTH_NAME

__all__ = [
    "CLINICAL_NAME",
    "CR_STORAGE",
    "CT_STORAGE",
    "CXR_SYNTAXES",
    "DOSE_SR_STORAGE",
    "DX_STORAGE",
    "PRIVATE_STRINGS",
    "REMAP_SHEET",
    "REMAP_SHEET_DATE",
    "SCENARIOS",
    "SC_STORAGE",
    "SIZES",
    "SOP_CLASSES",
    "SYNTH_IMPLEMENTATION_UID",
    "SYNTH_IMPLEMENTATION_VERSION",
    "TRUTH_NAME",
    "SizeSpec",
    "StudyInfo",
    "ct_hu_at",
    "ct_stored_values",
    "dicom_bytes",
    "generate",
    "make_ct_image",
    "make_ct_series",
    "make_cxr",
    "make_dose_report",
    "make_screen_save",
    "phantom_chest_2d",
    "phantom_chest_3d",
    "render_ct_slice",
    "strip_j2k_comments",
    "study_scale",
    "values_hash",
    "write_remap_sheet",
]

log = logging.getLogger(__name__)


def generate(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    size: str = "tiny",
    on_step: Callable[[int, int, int], None] | None = None,
) -> dict[str, Any]:
    """Write a synthetic datamart into ``root`` and return its ground truth.

    ``root`` must not exist or be an empty folder. ``size`` is ``"tiny"`` (seconds; for
    tests), ``"demo"`` (tens of seconds) or ``"bench"`` (minutes; hundreds of full-size
    radiographs and 300-slice CTs). The truth is also written to
    ``root / "hiroml-synth-truth.json"``; its format is described in the module docstring.
    The same ``seed`` and ``size`` give byte-identical files. ``on_step(done, total, zips)``
    reports progress (a bar's update): ``done`` of ``total`` planting steps finished, ``zips``
    zips planned; it is called as each zip is planned and after each step.
    """
    if size not in SIZES:
        raise ValueError(f"size={size!r}: choose one of {', '.join(SIZES)}")
    out = Path(root)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dm = Datamart(out, seed, size)
    plan(dm, on_step)
    dm.flush_all()
    truth = finish_truth(dm)
    truth["counts"] = dm.write()
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
