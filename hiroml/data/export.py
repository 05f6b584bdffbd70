"""``hiroml-export``: a built dataset as plain files, for tools that read files, not Datasets
(nnU-Net, TotalSegmentator, 3D Slicer, CVAT, ...).

    hiroml-export OUT DEST --format nifti|png [--modality ct|cxr] [--split S] [--version V]

- ``--format nifti`` (CT, the default modality for it): one ``.nii.gz`` per volume, in HU
  (int16 as stored), written by SimpleITK, whose NIfTI writer turns the DICOM patient
  coordinates (LPS) of the manifest's ``spacing_xyz``, ``origin_xyz`` and ``direction`` into
  the RAS qform/sform that NIfTI readers expect: every voxel lands at its physical position
  (``affine = diag(-1, -1, 1, 1) @ [[direction * spacing, origin], [0, 0, 0, 1]]``).
- ``--format png`` (radiographs, the default modality for it): one 16-bit greyscale PNG per
  radiograph, the stored [0, 1] intensities times 65535 (integer storage multiplied by its
  ``scale`` first), array (y, x) as stored: the first row is the top of the image.

Files go to ``DEST/<split>/<sample key>.<ext>`` (characters other than letters, digits,
``.``, ``-`` and ``_`` replaced by ``_``), each with a JSON sidecar ``<name>.json`` holding
its provenance (sample key, patient id and group, split, version, source zips and batches,
exam, series and SOP Instance UIDs, the audit decisions about its exam, and for CT the
geometry and the conversion notes), and ``DEST/index.csv`` lists every file with its split,
demographics and the label columns of the manifest.

``--version V`` reads ``OUT/versions/V/manifest.parquet``; without it (or with ``latest``) the
root ``OUT/manifest.parquet``, which is always the latest version.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hiroml.errors import ExportError
from hiroml.store.reader import (
    OWN_COLUMNS,
    array_to_sitk,
    cell_plain,
    escape_frame,
    read_audit,
    read_manifest,
    read_sample,
)
from hiroml.vocab import AUDIT, EXPORT_INDEX_NAME, MANIFEST, VERSIONS_DIR

log = logging.getLogger(__name__)
FORMATS = {"nifti": "ct", "png": "cxr"}  # format -> the modality it exports
SUFFIX = {"nifti": ".nii.gz", "png": ".png"}
#: manifest columns copied into the sidecar (when present), as plain JSON values
SIDECAR_COLUMNS = (
    "sample_key", "modality", "patient_id", "source_patient_id", "patient_group", "split",
    "exam_key", "hiro_id", "exam_time", "description", "batch", "batches", "source_zips",
    "series_uid", "sop_uid", "view", "age_years", "sex", "shape", "size_xyz", "spacing_xyz",
    "origin_xyz", "direction", "ct_decisions", "data_hash",
)  # fmt: skip
#: manifest columns of index.csv (then every label column)
INDEX_COLUMNS = (
    "split", "sample_key", "patient_id", "patient_group", "exam_key", "modality", "view",
    "age_years", "sex",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ExportResult:
    dest: Path
    files: int
    index: Path
    version: str


def safe_name(key: str) -> str:
    """A sample key as a file name (``:`` and other odd characters become ``_``)."""
    return re.sub(r"[^\w.-]", "_", key)


def manifest_path(out: Path, version: str | None) -> tuple[Path, str]:
    """The manifest of ``version`` (None or ``latest``: the root manifest, the latest
    version) and the version's name ("" when the output has no ``versions/`` folder)."""
    versions = out / VERSIONS_DIR
    names = sorted(p.name for p in versions.iterdir() if p.is_dir()) if versions.is_dir() else []
    if version in (None, "", "latest"):
        path = out / MANIFEST
        name = names[-1] if names else ""
    else:
        path = versions / str(version) / MANIFEST
        name = str(version)
        if not path.is_file():
            known = ", ".join(names[-5:]) or "none"
            raise ExportError(
                f"{out}: no version {version!r} ({path} does not exist); retained versions: "
                f"{known}. Leave out --version for the latest."
            )
    if not path.is_file():
        raise ExportError(f"{out}: no manifest.parquet; is it a hiroml output folder?")
    return path, name


def _label_columns(manifest: pd.DataFrame) -> list[str]:
    return [str(c) for c in manifest.columns if c not in OWN_COLUMNS]


def _decisions(audit: pd.DataFrame, exam_key: str) -> list[dict[str, str]]:
    if audit.empty or "exam_key" not in audit.columns or not exam_key:
        return []
    rows = audit[audit["exam_key"] == exam_key]
    cols = [c for c in ("zip", "batch", "action", "reason", "kept_as", "member") if c in rows]
    return [{c: str(r[c]) for c in cols} for r in rows.to_dict("records")]


def _ct_image(arr: np.ndarray, row: Mapping[str, Any]) -> Any:
    return array_to_sitk(
        arr,
        spacing_xyz=[float(v) for v in row["spacing_xyz"]],
        origin_xyz=[float(v) for v in row["origin_xyz"]],
        direction=[float(v) for v in row["direction"]],
    )


def cxr_uint16(arr: np.ndarray, scale: float | None = None) -> np.ndarray:
    """A stored radiograph (float in [0, 1], or integers times ``scale``) as uint16 (y, x)
    with 0..1 mapped to 0..65535; ValueError if ``arr`` is not 2-D (leading axes of length 1
    are dropped)."""
    a = np.asarray(arr)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"not a 2-D radiograph: shape {np.asarray(arr).shape}")
    if a.dtype.kind in "ui":
        s = scale if scale is not None and math.isfinite(scale) else 1.0 / np.iinfo(a.dtype).max
        f = a.astype(np.float64) * s
    else:
        f = a.astype(np.float64)
    return np.round(np.clip(np.nan_to_num(f), 0.0, 1.0) * 65535.0).astype(np.uint16)


def export(
    out: Path | str,
    dest: Path | str,
    *,
    fmt: str,
    modality: str | None = None,
    split: str | None = None,
    version: str | None = None,
) -> ExportResult:
    """Write the samples of ``modality`` (default: the one ``fmt`` exports) and ``split``
    (default: all) of an output folder as files under ``dest``; see the module docstring."""
    import cv2
    import SimpleITK as sitk

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {sorted(FORMATS)}")
    modality = modality or FORMATS[fmt]
    if FORMATS[fmt] != modality:
        raise ValueError(
            f"--format {fmt} exports {FORMATS[fmt]} samples, not {modality}: "
            f"use --format {'nifti' if modality == 'ct' else 'png'} for {modality}"
        )
    out, dest = Path(out), Path(dest)
    mpath, vname = manifest_path(out, version)
    manifest = read_manifest(mpath.parent)
    audit = read_audit(mpath.parent) if (mpath.parent / AUDIT).is_file() else pd.DataFrame()
    rows = manifest[manifest["modality"] == modality]
    if split is not None:
        if split not in set(manifest["split"]):
            raise ExportError(f"{mpath}: no sample in split {split!r}")
        rows = rows[rows["split"] == split]
    rows = rows.sort_values("sample_key", kind="stable")
    labels = _label_columns(manifest)
    index: list[dict[str, Any]] = []
    for row in rows.to_dict("records"):
        key = str(row["sample_key"])
        arr, _ = read_sample(out / str(row["shard"]), key)
        rel = Path(str(row["split"]) or "none") / (safe_name(key) + SUFFIX[fmt])
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "nifti":
            sitk.WriteImage(_ct_image(arr, row), str(path), useCompression=True)
        else:
            scale = row.get("scale")
            try:
                png = cxr_uint16(arr, None if scale is None else float(scale))
            except ValueError as e:
                raise ExportError(f"{out / str(row['shard'])}: sample {key}: {e}") from e
            if not cv2.imwrite(str(path), png):
                raise ExportError(f"{path}: could not write the PNG")
        sidecar = {c: cell_plain(row[c]) for c in SIDECAR_COLUMNS if c in row}
        sidecar.update(
            version=vname or None,
            file=rel.as_posix(),
            format=fmt,
            decisions=_decisions(audit, str(row.get("exam_key") or "")),
            labels={c: cell_plain(row[c]) for c in labels},
        )
        if fmt == "png":
            sidecar["pixel_values"] = "stored intensity in [0, 1] times 65535 (uint16)"
        else:
            sidecar["pixel_values"] = "HU; NIfTI affine in RAS mm (SimpleITK from LPS)"
        json_path = path.with_name(path.name.removesuffix(SUFFIX[fmt]) + ".json")
        json_path.write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
        entry = {"file": rel.as_posix(), "sidecar": json_path.relative_to(dest).as_posix()}
        entry.update({c: cell_plain(row.get(c)) for c in INDEX_COLUMNS})
        entry.update({c: cell_plain(row[c]) for c in labels})
        index.append(entry)
    dest.mkdir(parents=True, exist_ok=True)
    index_path = dest / EXPORT_INDEX_NAME
    cols = ["file", "sidecar", *INDEX_COLUMNS, *labels]
    escape_frame(pd.DataFrame(index, columns=cols)).to_csv(index_path, index=False)
    log.info("exported %d %s samples as %s to %s", len(index), modality, fmt, dest)
    return ExportResult(dest=dest, files=len(index), index=index_path, version=vname)
