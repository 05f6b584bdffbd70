"""The output contract checked on a written output folder (``docs/design.md`` §4, §4b).

:func:`check_tables` reads the files and tables only (no torch: what ``hiroml-verify`` runs);
:func:`check_contract` adds what ``HiromlDataset`` makes of them. The value checks are those
:func:`hiroml.store.tables.validate_manifest` makes before writing (:func:`value_problems`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hiroml.store.reader import read_audit, read_manifest
from hiroml.store.tables import (
    ACTIONS,
    AUDIT_COLUMNS,
    CT_COLUMNS,
    MANIFEST_COLUMNS,
    value_problems,
)
from hiroml.versions.listing import tables_dir
from hiroml.vocab import AUDIT, BUILD_JSON, MANIFEST, PATIENTS, REPORT_NAME, SPLITS


def check_tables(out_dir: Path | str, *, version: str | int | None = None) -> list[str]:
    """Every shortfall of an output folder's files and tables against docs/design.md section 4
    (empty: it holds): files present, columns, values (:func:`value_problems`), shards
    present, audit actions. Names and types only, not correctness; imports no torch (what
    ``hiroml-verify`` runs). ``version`` as in :func:`check_contract`."""
    out = Path(out_dir)
    where, name = tables_dir(out, version)
    names = [MANIFEST, PATIENTS, AUDIT, REPORT_NAME]
    if name is not None:
        names.append(BUILD_JSON)
    bad = [
        f"missing {n}" if name is None else f"missing {n} in version {name}"
        for n in names
        if not (where / n).exists()
    ]
    if bad:
        return bad
    m = read_manifest(where)
    a = read_audit(where)
    bad += [f"manifest.parquet lacks column {c}" for c in MANIFEST_COLUMNS if c not in m.columns]
    if bad:
        return bad
    if (m["modality"] == "ct").any():
        bad += [f"manifest.parquet lacks CT column {c}" for c in CT_COLUMNS if c not in m.columns]
    bad += value_problems(m)
    if (m.groupby("patient_group")["split"].nunique() > 1).any():
        bad.append("a patient group appears in more than one split")
    for s in m["shard"].unique():
        if not (out / s).exists():
            bad.append(f"shard {s} named in the manifest does not exist")
    bad += [f"audit.csv lacks column {c}" for c in AUDIT_COLUMNS if c not in a.columns]
    if "action" in a.columns and not set(a["action"]) <= ACTIONS:
        bad.append(f"unexpected audit actions {sorted(set(a['action']) - ACTIONS)}")
    return bad


def check_contract(out_dir: Path | str, *, version: str | int | None = None) -> list[str]:
    """Every shortfall of an output folder against docs/design.md section 4 (empty: it holds):
    :func:`check_tables`, then ``HiromlDataset`` sizes and sample shapes (imports torch).

    Where the output has published versions (section 4b) the tables checked are those of
    ``version`` (default: the latest), in ``versions/<version>/`` with its ``build.json``;
    an output without ``versions/`` is checked at its root. Shards are under ``out_dir``."""
    bad = check_tables(out_dir, version=version)
    if bad:
        return bad  # the Dataset checks below would only fail on the missing files or columns
    out = Path(out_dir)
    where, name = tables_dir(out, version)
    return _dataset_problems(out, read_manifest(where), name)


def _dataset_problems(out: Path, m: pd.DataFrame, name: str | None) -> list[str]:
    """What ``HiromlDataset`` of version ``name`` gets wrong against manifest ``m``: sizes
    per split and modality, sample keys, image dtype and dims (channel first)."""
    from hiroml.data.dataset import HiromlDataset

    bad: list[str] = []
    for modality in sorted(set(m["modality"])):
        for split in SPLITS:
            ds = HiromlDataset(out, split=split, modality=modality, version=name)
            want = int(((m["modality"] == modality) & (m["split"] == split)).sum())
            if len(ds) != want:
                bad.append(
                    f"HiromlDataset({split}, {modality}) has {len(ds)} samples, manifest {want}"
                )
            if len(ds):
                s = ds[0]
                bad += [
                    f"{modality} sample lacks key {k}"
                    for k in ("image", "sample_key", "patient_id", "meta")
                    if k not in s
                ]
                img = s.get("image")
                nd = 3 if modality == "cxr" else 4
                if (
                    img is None
                    or getattr(img, "ndim", 0) != nd
                    or str(img.dtype) != "torch.float32"
                ):
                    bad.append(
                        f"{modality} image must be a float32 tensor with {nd} dims (channel first)"
                    )
    return bad
