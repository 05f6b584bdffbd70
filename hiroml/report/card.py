"""``DATASET.md``: the dataset card (after "Datasheets for Datasets", Gebru et al.).

Plain Markdown written next to ``report.html`` and ``flow.svg`` by
:func:`hiroml.report.page.write_report`: what the dataset is, the source batches and their
delivery dates, the version and ``dataset_hash`` when the build summary has them, the flow
in numbers (:mod:`hiroml.report.flow`), demographics (age, sex) and label prevalence per split, the
conversion settings that shape the pixels, and known limitations.

No PHI: the card reads only the manifest columns in :data:`CARD_COLUMNS` (plus binary label
columns, summarised per split), never an id, a name, a path, a description or an exam date
finer than the year; the build summary only for :data:`SUMMARY_FIELDS`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hiroml._version import __version__
from hiroml.exams.splits import describe_rule
from hiroml.report import representativeness
from hiroml.report.flow import Flow, text_column
from hiroml.store import tables as manifest_columns
from hiroml.vocab import SPLITS, Action

#: manifest columns the card reads (aggregated, never printed row by row)
CARD_COLUMNS = ("split", "modality", "patient_id", "exam_key", "exam_time", "age_years", "sex")
#: build summary fields the card prints, when present
SUMMARY_FIELDS = ("version", "dataset_hash", "started", "seconds", "config_hash")
#: manifest columns written by hiroml itself (one list, :data:`hiroml.store.tables.OWN_COLUMNS`)
OWN_COLUMNS = manifest_columns.OWN_COLUMNS
_BATCH = re.compile(r"^(CXR|CT)-UPDATE-(\d{4})(\d{2})(\d{2})-(COMPLETE|IN-PROGRESS)$")


def settings_of(cfg: Any) -> dict[str, Any]:
    """The conversion settings a reader of the dataset needs, from a
    :class:`~hiroml.config.BuildConfig` (keys are the config keys to change them)."""
    return {
        "cxr.size": list(cfg.cxr.size),
        "cxr.keep_aspect": cfg.cxr.keep_aspect,
        "cxr.normalization": cfg.cxr.normalization,
        "cxr.dtype": cfg.cxr.dtype,
        "cxr.views": list(cfg.cxr.views),
        "cxr.drop_derived": cfg.cxr.drop_derived,
        "cxr.fast_jpeg2000": cfg.cxr.fast_jpeg2000,
        "cxr.fast_jpeg": cfg.cxr.fast_jpeg,
        "ct.series": cfg.ct.series,
        "ct.min_slices": cfg.ct.min_slices,
        "ct.spacing_policy": cfg.ct.spacing_policy,
        "ct.tilt_policy": cfg.ct.tilt_policy,
        "ct.resample_spacing": None if cfg.ct.resample_spacing is None
        else list(cfg.ct.resample_spacing),
        "ct.clip_hu": None if cfg.ct.clip_hu is None else list(cfg.ct.clip_hu),
        "exams.ct_split_window_minutes": cfg.exams.ct_split_window_minutes,
        "splits": describe_rule(cfg.splits),
    }  # fmt: skip


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return ", ".join(f"{k} {_cell(x)}" for k, x in v.items())
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _batches(audit: pd.DataFrame, manifest: pd.DataFrame) -> list[list[str]]:
    names = set(text_column(audit, "batch").unique()) | set(text_column(manifest, "batch").unique())
    used = manifest.groupby(text_column(manifest, "batch")).size() if len(manifest) else pd.Series()
    rows = []
    for name in sorted(n for n in names if n):
        m = _BATCH.match(name)
        date = f"{m[2]}-{m[3]}-{m[4]}" if m else "—"
        status = m[5] if m else "—"
        rows.append([name, m[1] if m else "—", date, status, str(int(used.get(name, 0)))])
    return rows


def _label_columns(manifest: pd.DataFrame) -> list[str]:
    """Binary (0/1) columns joined from the clinical table (labels), by name."""
    cols = []
    for c in manifest.columns:
        if c in OWN_COLUMNS:
            continue
        v = pd.to_numeric(manifest[c], errors="coerce")
        known = v.dropna()
        if len(known) and known.isin([0, 1]).all() and v.notna().sum() >= 1:
            cols.append(str(c))
    return sorted(cols)


def _demographics(manifest: pd.DataFrame) -> list[list[Any]]:
    split = text_column(manifest, "split")
    pid = text_column(manifest, "patient_id")
    exam = text_column(manifest, "exam_key")
    age = pd.to_numeric(manifest.get("age_years"), errors="coerce") if len(manifest) else None
    sex = text_column(manifest, "sex").str.upper()
    rows = []
    for s in SPLITS:
        r = split == s
        pats = pd.DataFrame({"p": pid[r], "sex": sex[r]}).drop_duplicates("p")
        pats = pats[pats["p"] != ""]
        ages = (
            pd.DataFrame({"e": exam[r], "a": age[r]}).drop_duplicates("e")["a"].dropna()
            if age is not None
            else pd.Series(dtype=float)
        )
        n_f = int((pats["sex"] == "F").sum())
        n_m = int((pats["sex"] == "M").sum())
        rows.append(
            [
                s,
                len(pats),
                int(exam[r].replace("", np.nan).nunique()),
                int(r.sum()),
                (
                    f"{ages.median():.0f} ({ages.quantile(0.25):.0f}–{ages.quantile(0.75):.0f}), "
                    f"n={len(ages)}"
                    if len(ages)
                    else "—"
                ),
                n_f,
                n_m,
                len(pats) - n_f - n_m,
            ]
        )
    return rows


def _prevalence(manifest: pd.DataFrame, labels: Sequence[str]) -> list[list[Any]]:
    split = text_column(manifest, "split")
    pid = text_column(manifest, "patient_id")
    rows = []
    for c in labels:
        v = pd.to_numeric(manifest[c], errors="coerce")
        row: list[Any] = [c]
        for s in SPLITS:
            per_patient = pd.DataFrame({"p": pid, "v": v})[split == s].drop_duplicates("p")["v"]
            known = per_patient.dropna()
            row.append(
                f"{int(known.sum())}/{len(known)} ({100.0 * known.mean():.0f}%)"
                if len(known)
                else "—"
            )
        rows.append(row)
    return rows


def _years(manifest: pd.DataFrame) -> str:
    if "exam_time" not in manifest.columns or manifest.empty:
        return "—"
    t = pd.to_datetime(manifest["exam_time"], errors="coerce").dropna()
    if t.empty:
        return "—"
    lo, hi = int(t.min().year), int(t.max().year)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _identification(summary: Mapping[str, Any], manifest: pd.DataFrame) -> list[list[Any]]:
    """The card's identification rows: the hiroml version, then :data:`SUMMARY_FIELDS`
    present in the build summary (``dataset_hash`` computed when a version has none)."""
    if summary.get("version") and not summary.get("dataset_hash") and len(manifest):
        from hiroml.versions.hashing import dataset_hash

        summary = {**summary, "dataset_hash": dataset_hash(manifest)}
    ident = [[k, summary[k]] for k in SUMMARY_FIELDS if summary.get(k) not in (None, "", {})]
    return [["hiroml", __version__], *ident]


def _flow_rows(f: Flow) -> list[list[Any]]:
    """The flow in numbers, one row per step (the figure's boxes, :mod:`hiroml.report.flow`)."""
    return [
        ["exam zips found", f.zips_found],
        ["skipped: upload in progress (IN-PROGRESS batch)", f.zips_skipped],
        ["zips read", f.zips_read],
        ["excluded: zips with nothing usable (errors)", f.zips_error],
        ["zips with usable images", f.zips_usable],
        ["excluded: duplicate zips (the same exam delivered again)", f.zips_duplicate],
        ["merged: parts of a CT exam split over several zips", f.zips_merged],
        ["exams", f.exams],
        *[[f"dropped inside exams: {k} (audit rows)", v] for k, v in f.dropped.items()],
        ["errors inside exams (audit rows)", f.errors_in_exams],
        ["exams with no sample", f.exams_without_sample],
        ["samples", f"{f.samples} ({f.cxr} radiographs, {f.ct} CT volumes)"],
        ["patients", f.patients],
        *[[f"{s.split}: patients / samples", f"{s.patients} / {s.samples}"] for s in f.splits],
    ]


def _limitations(
    manifest: pd.DataFrame,
    audit: pd.DataFrame,
    f: Flow,
    labels: Sequence[str],
    summary: Mapping[str, Any] | None = None,
) -> list[str]:
    """The known limitations: the fixed ones, then those this build's numbers call for."""
    synthetic = bool((summary or {}).get("synthetic"))
    n_err = int((text_column(audit, "action") == Action.ERROR).sum())
    orphans = (
        int(manifest.loc[manifest["orphan"].fillna(False).astype(bool), "patient_id"].nunique())
        if "orphan" in manifest.columns and len(manifest)
        else None
    )
    limits = [
        "Source: one hospital's COVID-19 research datamart (CRDW COVID-19 Limited Datamart); "
        "patients were selected by their COVID-19 encounter, radiographs reach back one year "
        "before it and CT one month. The dataset is not a sample of any general population.",
        "Labels, when present, come from the clinical table joined by current patient id; "
        "they are per patient, not per image.",
        "Splits are by patient group (ids linked by the remap sheet, a shared image or "
        "identical pixels), stable across weekly builds; stratification only when configured.",
        "Radiograph views are classified from (0018,5101) View Position, the series "
        "description and the exam description; an unknown view is kept only if "
        "`cxr.views` lists `unknown`.",
        f"{f.zips_error} zip(s) and {n_err} audit row(s) in all are errors: their images are "
        "not in the dataset (see audit.csv and report.html).",
    ]
    if synthetic:
        limits[0] = (
            "Source: hiroml's synthetic datamart, laid out like one hospital's COVID-19 research "
            "datamart (CRDW COVID-19 Limited Datamart): no patient's data; the numbers describe "
            "no population."
        )
    if f.zips_skipped:
        limits.append(
            f"{f.zips_skipped} zip(s) of IN-PROGRESS batches were not read; a later build "
            "adds them once the batch is COMPLETE."
        )
    if orphans:
        limits.append(f"{orphans} patient(s) have images but no row in the clinical table.")
    if not labels:
        limits.append("No clinical label column (no clinical table was given, or none binary).")
    return limits


_INTRO = (
    "Chest radiographs and chest CT volumes from the weekly imaging drops of the CRDW "
    "COVID-19 Limited Datamart, deduplicated and split by patient (no patient in two "
    "splits) by hiroml. Radiographs are stored as "
    "2-D arrays (y, x); CT volumes in HU as 3-D arrays (z, y, x) with their geometry "
    "(spacing, origin, direction in LPS, mm). Every decision is in `audit.csv`; the "
    "inclusion flow is drawn in `flow.svg`, and `report.html` shows it all."
)
_SYNTHETIC = (
    "**Synthetic data.** Every patient, exam and image of this dataset was generated by "
    "hiroml's synthetic datamart (the demo build, or `hiroml-synth`): made-up ids and phantom "
    "images laid out like the real datamart, not patient data. Its numbers show what a build "
    "does; they describe no population."
)
_CITE = (
    "Cite the dataset by this version and `dataset_hash` (when given) and the hiroml "
    "version, and include `flow.svg` (or the numbers below) as the data flow figure."
)
_PRIVACY = (
    "The outputs carry an allow-list of DICOM header fields; patient names, birth dates "
    "and free-text identifying tags are never copied. This card holds counts only."
)
_DEMOGRAPHIC_HEADERS = (
    "split",
    "patients",
    "exams",
    "samples",
    "age, years: median (IQR), per exam",
    "F",
    "M",
    "other / unknown",
)


def _section(title: str, body: str) -> list[str]:
    """A ``## title`` section: heading, blank line, body, blank line."""
    return [f"## {title}", "", body, ""]


def render_card(
    *,
    manifest: pd.DataFrame,
    audit: pd.DataFrame,
    summary: Mapping[str, Any],
    flow: Flow,
    settings: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
) -> str:
    """The dataset card as Markdown text; see :func:`hiroml.report.page.write_report`."""
    from hiroml.doctor.libraries import environment_rows

    version = summary.get("version")
    title = f"Dataset card: hiroml dataset{f' version {version}' if version else ''}"
    labels = _label_columns(manifest)
    batches = (
        _table(["batch", "modality", "delivered", "status", "samples"], _batches(audit, manifest))
        if len(audit) or len(manifest)
        else "No batch."
    )
    prevalence = (
        _table(["label", *SPLITS], _prevalence(manifest, labels)) if labels else "No label."
    )
    conversion = (
        _table(["config key", "value"], [[k, v] for k, v in settings.items()])
        if settings
        else "Not recorded by this build."
    )
    env_rows = environment_rows(environment)
    env = _table(["library", "version"], env_rows) if env_rows else "Not recorded by this build."
    parts = [
        f"# {title}",
        "",
        *([_SYNTHETIC, ""] if summary.get("synthetic") else []),
        _INTRO,
        "",
        *_section("Identification", _table(["field", "value"], _identification(summary, manifest))),
        _CITE,
        "",
        *_section("Source batches", batches),
        f"Exam years: {_years(manifest)}.",
        "",
        *_section("Flow in numbers", _table(["step", "count"], _flow_rows(flow))),
        *_section("Composition per split", _table(_DEMOGRAPHIC_HEADERS, _demographics(manifest))),
        *_section("Representativeness over time", representativeness.markdown_section(manifest)),
        *_section("Label prevalence per split (per patient: positives / known)", prevalence),
        *_section("Conversion settings", conversion),
        *_section("Environment (the libraries that decided the stored values)", env),
        "## Known limitations",
        "",
        *[f"- {x}" for x in _limitations(manifest, audit, flow, labels, summary)],
        "",
        *_section("Privacy", _PRIVACY),
    ]
    return "\n".join(parts)
