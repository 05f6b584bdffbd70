"""``CLAIM.md``: the data items of the CLAIM 2024 checklist, filled from the build.

CLAIM, the Checklist for Artificial Intelligence in Medical Imaging, 2024 update: Tejani AS,
Klontzas ME, Gatti AA, Mongan JT, Moy L, Park SH, Kahn CE Jr. Radiol Artif Intell
2024;6(4):e240300 (https://pubs.rsna.org/doi/10.1148/ryai.240300, PubMed Central
PMC11304031). Its 44 items are numbered as in the update's checklist table (Methods, data:
7-13; reference standard: 14-18; data partitions: 19-20; Results, data: 35-36; limitations:
40; availability: 43); the short item names here are ours.

The items a build knows are answered with its numbers (sources and dates, inclusion and
exclusion, preprocessing, subsets, de-identification, missing data, what is known of the
acquisition, the labels, the partitions and how they were assigned, the flow, demographics per
partition, the dataset's limitations, availability); every other item is listed for the
authors to fill. No PHI: counts, settings and dates of delivery only, exam dates as years, as
in the dataset card (:mod:`hiroml.report.card`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hiroml._version import __version__
from hiroml.report import card
from hiroml.report.croissant import missing_text
from hiroml.report.flow import Flow, compute_flow, text_column
from hiroml.report.html import arrow_lists
from hiroml.report.representativeness import (
    JOINT,
    markdown_table,
    representativeness,
    weekly_rows,
)
from hiroml.vocab import SPLITS, Modality

#: The source of the item numbering (see the module docstring).
SOURCE = (
    "CLAIM 2024 update: Tejani AS et al. Radiol Artif Intell 2024;6(4):e240300, "
    "https://pubs.rsna.org/doi/10.1148/ryai.240300"
)
#: The items the build cannot know, by number: (short name, what to state).
FOR_AUTHORS: tuple[tuple[int, str, str], ...] = (
    (1, "Title", "the AI methodology and its category"),
    (2, "Abstract", "a structured summary"),
    (3, "Background", "clinical background and intended use"),
    (4, "Objectives", "aims and hypotheses"),
    (5, "Study design", "prospective or retrospective (data from this build: retrospective)"),
    (6, "Study goal", "model creation, feasibility, ..."),
    (15, "Reference standard rationale", "why these labels"),
    (16, "Annotators", "source and qualifications of who set the labels"),
    (17, "Annotation procedures", "tools and procedures of the labels"),
    (18, "Annotation variability", "inter- and intra-rater variability"),
    (21, "Test set size", "how the size of the test set was determined"),
    (22, "Model", "the model's architecture"),
    (23, "Software", "libraries and versions of the model (the data's are in DATASET.md)"),
    (24, "Initialization", "parameter initialization, transfer learning"),
    (25, "Training", "training procedure, augmentation, hyperparameters"),
    (26, "Model selection", "how the final model was chosen"),
    (27, "Ensembling", "if used"),
    (28, "Performance metrics", "metrics and comparisons"),
    (29, "Uncertainty", "confidence intervals, significance tests"),
    (30, "Robustness", "sensitivity analyses"),
    (31, "Explainability", "if used"),
    (32, "Internal testing", "performance on the internal test split"),
    (33, "External testing", "external data, or why none"),
    (34, "Registration", "trial registration, if applicable"),
    (37, "Performance per partition", "the model's performance on each split and subgroup"),
    (38, "Accuracy estimates", "with 95% confidence intervals"),
    (39, "Failure analysis", "misclassified cases"),
    (41, "Implications", "clinical implications"),
    (42, "Protocol", "where the full protocol is"),
    (44, "Funding", "sources and role of funders"),
)


def _split_counts(manifest: pd.DataFrame) -> list[list[Any]]:
    split = text_column(manifest, "split")
    group = text_column(manifest, "patient_group")
    mod = text_column(manifest, "modality")
    total = max(1, group[group != ""].nunique())
    rows = []
    for s in SPLITS:
        r = split == s
        n = group[r & (group != "")].nunique()
        rows.append(
            [
                s,
                f"{n} ({100.0 * n / total:.0f}%)",
                int(r.sum()),
                int((r & (mod == Modality.CXR)).sum()),
                int((r & (mod == Modality.CT)).sum()),
            ]
        )
    return rows


def _acquisition(manifest: pd.DataFrame) -> str:
    mod = text_column(manifest, "modality")
    views = text_column(manifest, "view")[mod == Modality.CXR].value_counts()
    parts = [f"radiograph views: {', '.join(f'{k} {v}' for k, v in views.items()) or 'none'}"]
    if "spacing_xyz" in manifest.columns and (mod == Modality.CT).any():
        z = _third_values(manifest.loc[mod == Modality.CT, "spacing_xyz"])
        if len(z):
            s = pd.Series(z)
            parts.append(
                f"CT slice spacing {s.median():.2f} mm median ({s.min():.2f}-{s.max():.2f})"
            )
    return (
        "; ".join(parts) + ". Manufacturer, protocol and dose are not recorded by hiroml: "
        "**authors to state.**"
    )


def _third_values(cells: pd.Series) -> np.ndarray:
    """The third value (float) of each cell of three values, through Arrow when the cells
    are lists (or missing); the others are passed over."""
    arr = arrow_lists(cells)
    if arr is not None:
        three = arr.filter(pc.equal(pc.list_value_length(arr), 3))
        flat = pc.list_flatten(three).cast(pa.float64())
        return np.asarray(flat, dtype=np.float64)[2::3]
    return np.array([float(v[2]) for v in cells if v is not None and len(v) == 3], dtype=np.float64)


def _labels(manifest: pd.DataFrame) -> str:
    labels = card._label_columns(manifest)
    if not labels:
        return "No label column (no clinical table, or none binary). **Authors to state.**"
    table = card._table(["label", *SPLITS], card._prevalence(manifest, labels))
    return (
        f"Binary columns of the clinical table, joined by current patient id, one value per "
        f"patient: {', '.join(labels)}. Their definition: **authors to state.**\n\n{table}"
    )


def _exclusions(f: Flow, settings: Mapping[str, Any]) -> str:
    picked = ", ".join(
        f"{k}={settings[k]}"
        for k in ("cxr.views", "cxr.drop_derived", "ct.series", "ct.min_slices")
        if k in settings
    )
    rows = card._table(["step", "count"], card._flow_rows(f))
    return (
        "Included: every exam zip of a COMPLETE batch with a usable image; excluded: zips of "
        "IN-PROGRESS batches (read once complete), unreadable or invalid files (audit.csv, "
        f"action error), duplicate deliveries, and images outside the selection ({picked}).\n\n"
        f"{rows}"
    )


_DEIDENTIFICATION = (
    "hiroml copies an allow-list of DICOM header fields: patient names, birth dates and "
    "free-text identifying tags are never copied. Patient ids, ages, sex and exam times are "
    "those the datamart delivered (a limited data set): how the datamart de-identified them, "
    "**authors to state.**"
)
_DISJOINT = (
    "By patient group: ids linked by the remap sheet, a shared image or identical pixels are "
    "one group, and a group lies in one split (patient level, hence exam and image level too)."
)
_Item = tuple[int, str, str]


def _data_items(manifest: pd.DataFrame, f: Flow, info: Mapping[str, Any]) -> list[_Item]:
    """Items 7 to 14: sources, eligibility, preprocessing, subsets, de-identification,
    missing data, acquisition, reference standard."""
    settings = info.get("settings") or {}
    batches = info.get("batch_rows") or []
    sources = (
        f"CRDW COVID-19 Limited Datamart (one hospital), weekly batch folders; {len(batches)} "
        "batch(es):\n\n"
        + card._table(["batch", "modality", "delivered", "status", "samples"], batches)
        + f"\n\nExam years: {card._years(manifest)}."
    )
    preprocessing = f"hiroml {__version__}: " + "; ".join(
        f"`{k}={v}`" for k, v in settings.items() if k != "splits"
    )
    subsets = (
        f"Radiographs and CT volumes; a CT exam keeps `ct.series={settings.get('ct.series')}`; "
        f"radiograph views kept: `{settings.get('cxr.views')}`."
    )
    return [
        (7, "Data sources", sources),
        (8, "Inclusion and exclusion", _exclusions(f, settings)),
        (9, "Preprocessing", preprocessing),
        (10, "Data subsets", subsets),
        (11, "De-identification", _DEIDENTIFICATION),
        (12, "Missing data", missing_text(manifest)),
        (13, "Acquisition", _acquisition(manifest)),
        (14, "Reference standard", _labels(manifest)),
    ]


def _partition_items(
    manifest: pd.DataFrame, audit: pd.DataFrame, f: Flow, info: Mapping[str, Any]
) -> list[_Item]:
    """Items 19, 20, 35, 36, 40 and 43: partitions, flow, demographics, limitations and
    availability."""
    rep = representativeness(manifest)
    distances = ", ".join(
        f"{s} {d[JOINT]:.3f}" for s, d in rep.split_distance.items() if d[JOINT] is not None
    )
    heads = ["split", "patient groups", "samples", "radiographs", "CT volumes"]
    partitions = (
        f"{info.get('split_rule') or 'not recorded'}. A patient keeps its split across weekly "
        f"versions.\n\n{card._table(heads, _split_counts(manifest))}"
    )
    by_attribute = [
        "week",
        "split",
        "patients",
        "samples",
        *(a.replace("_", " ") for a in rep.attributes),
    ]
    demographics = (
        card._table(card._DEMOGRAPHIC_HEADERS, card._demographics(manifest))
        + "\n\nPatient groups per split by the attributes of their first exam (and the "
        "clinical table's race/ethnicity columns, when it has them):\n\n"
        + markdown_table(by_attribute, weekly_rows(rep, totals=True))
        + "\n\nJensen-Shannon distance (base 2) of each split's patients from all patients "
        f"(joint over {', '.join(rep.attributes) or 'nothing'}): {distances or '—'}; per "
        "delivery week in DATASET.md and report.html."
    )
    limits = card._limitations(manifest, audit, f, card._label_columns(manifest))
    availability = (
        f"hiroml dataset version {info.get('version') or '(unversioned)'}, dataset_hash "
        f"`{info.get('dataset_hash') or '(not recorded)'}`; machine-readable description in "
        "croissant.json. Access conditions: **authors to state.**"
    )
    return [
        (19, "Partitions and their assignment", partitions),
        (20, "Partition disjointness", _DISJOINT),
        (35, "Flow", "See item 8 and flow.svg (the inclusion/exclusion flow diagram)."),
        (36, "Demographics per partition", demographics),
        (40, "Limitations (of the data)", "\n".join(f"- {x}" for x in limits)),
        (43, "Availability", availability),
    ]


def _rows(
    manifest: pd.DataFrame, audit: pd.DataFrame, info: Mapping[str, Any], f: Flow | None
) -> list[str]:
    """The items the build answers, each a ``### n. name`` heading and its text."""
    f = compute_flow(audit, manifest) if f is None else f
    info = {**info, "batch_rows": card._batches(audit, manifest)}
    items = [*_data_items(manifest, f, info), *_partition_items(manifest, audit, f, info)]
    return [f"### {n}. {name}\n\n{text}\n" for n, name, text in items]


def render_claim(
    manifest: pd.DataFrame,
    audit: pd.DataFrame,
    *,
    info: Mapping[str, Any],
    flow: Flow | None = None,
) -> str:
    """The CLAIM 2024 data items as Markdown. ``info``: ``version``, ``dataset_hash``,
    ``settings`` (config key -> value) and ``split_rule`` (the rule in words), each optional;
    ``flow``: :func:`hiroml.report.flow.compute_flow` of the tables (computed when None)."""
    version = info.get("version")
    head = [
        f"# CLAIM 2024 data items: hiroml dataset{f' version {version}' if version else ''}",
        "",
        f"Item numbers of the {SOURCE}. The items below are filled from this build; copy "
        "them into the checklist with the manuscript's locations. The items after them are "
        "the study's, for the authors to fill.",
        "",
        "## Filled from the build",
        "",
    ]
    rest = [
        "## For the authors",
        "",
        "| item | name | to state |",
        "|---|---|---|",
        *[f"| {n} | {name} | {what} |" for n, name, what in FOR_AUTHORS],
        "",
    ]
    return "\n".join([*head, *_rows(manifest, audit, info, flow), *rest])


def write_claim(
    folder: Path,
    manifest: pd.DataFrame,
    audit: pd.DataFrame,
    *,
    info: Mapping[str, Any],
    flow: Flow | None = None,
) -> Path:
    """Write ``folder/CLAIM.md`` (atomically); return its path."""
    from hiroml.store.atomic import write_text_atomic
    from hiroml.vocab import CLAIM_NAME

    path = Path(folder) / CLAIM_NAME
    write_text_atomic(path, render_claim(manifest, audit, info=info, flow=flow))
    return path
