"""The report's sections: header, counts, split balance, decisions, errors, groups, thumbnails."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from hiroml._version import __version__
from hiroml.ingest.discover import REMAP_SHEET_NAME as REMAP_SHEET
from hiroml.report.html import (
    ACTION_ORDER,
    CT_WINDOW,
    MAX_DECISION_ROWS,
    MISSING,
    ReadArray,
    _bar,
    _col,
    _e,
    _keys,
    _note,
    _split_label,
    _splits_in,
    _table,
    _text,
)
from hiroml.report.thumbnails import _ct_sheet, _cxr_sheet
from hiroml.store.reader import cell_list, is_missing
from hiroml.vocab import SPLITS, Action


def _section(anchor: str, title: str, body: str, *, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<section id="{anchor}"{c}><h2>{html.escape(title)}</h2>{body}</section>'


def _header(summary: Mapping[str, Any], n_errors: int) -> str:
    badge = (
        f'<span class="badge bad">{n_errors} error{"s" if n_errors != 1 else ""}</span>'
        if n_errors
        else '<span class="badge ok">no errors</span>'
    )
    rows = [(str(k), _text(v)) for k, v in summary.items()]
    table = _table(["", ""], rows, cls="kv") if rows else _note("No build summary was given.")
    return (
        f"<header><h1>hiroml build report {badge}</h1>"
        f'<p class="sub">Generated {html.escape(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))}'
        f" by hiroml {html.escape(__version__)}</p>{table}</header>"
    )


def _flow_section(svg: str) -> str:
    # inline SVG in HTML needs no namespace: the page keeps no external reference at all
    inline = svg.replace(' xmlns="http://www.w3.org/2000/svg"', "", 1).strip()
    body = f'<div class="flow">{inline}</div>' + _note(
        "From the zips found to the samples of each split, as counted in audit.csv and the "
        "manifest. The same figure is in <code>flow.svg</code> beside this page; the numbers "
        "are in <code>DATASET.md</code>."
    )
    return _section("flow", "Flow", body)


def _counts(manifest: pd.DataFrame, patients: pd.DataFrame, audit: pd.DataFrame) -> str:
    mod = _keys(_col(manifest, "modality"))
    cards: list[tuple[str, int | str]] = [
        ("samples", len(manifest)),
        ("radiographs", int((mod == "cxr").sum())),
        ("CT volumes", int((mod == "ct").sum())),
        ("exams", int(_keys(_col(manifest, "exam_key")).replace("", np.nan).nunique())),
        ("patients", int(_keys(_col(manifest, "patient_id")).replace("", np.nan).nunique())),
        ("patient groups", len(patients) if len(patients) else
         int(_keys(_col(manifest, "patient_group")).replace("", np.nan).nunique())),
    ]  # fmt: skip
    actions = _keys(_col(audit, "action")).value_counts()
    for a in (Action.KEPT, *ACTION_ORDER):
        cards.append((f"audit: {a}", int(actions.get(a, 0))))
    for a, c in actions.items():
        if a not in (Action.KEPT, *ACTION_ORDER):
            cards.append((f"audit: {a or '(none)'}", int(c)))
    html_cards = "".join(
        f'<div class="card{" bad" if k == "audit: error" and v else ""}">'
        f'<div class="v">{_e(v)}</div><div class="k">{html.escape(k)}</div></div>'
        for k, v in cards
    )
    body = f'<div class="cards">{html_cards}</div>'
    if manifest.empty:
        body += _note(
            "The manifest is empty: no sample was written. See the errors and decisions below.",
            cls="warn",
        )
    return _section("counts", "Counts", body)


def split_balance(manifest: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    """Per split: patient groups, patients, exams, samples per modality, age (median and
    quartiles of ``age_years`` over exams, years) and sex counts (over patients).
    Splits are in the order train, val, test, then any other value ("" for none)."""
    split = _keys(_col(manifest, "split"))
    m = pd.DataFrame(
        {
            "split": split,
            "patient_id": _keys(_col(manifest, "patient_id")),
            "patient_group": _keys(_col(manifest, "patient_group")),
            "exam_key": _keys(_col(manifest, "exam_key")),
            "modality": _keys(_col(manifest, "modality")),
            "sex": _keys(_col(manifest, "sex")).str.upper(),
            "age": pd.to_numeric(_col(manifest, "age_years"), errors="coerce").astype(float),
        }
    )
    psplit = _keys(_col(patients, "split"))
    # train, val and test always (a missing split shows as zeros), then any other value
    names = [*SPLITS, *(s for s in _splits_in([*split, *psplit]) if s not in SPLITS)]
    out = []
    for s in names:
        r = m[m["split"] == s]
        exams = r[r["exam_key"] != ""].drop_duplicates("exam_key")
        ages = exams["age"].dropna() if len(exams) else r["age"].dropna()
        pats = r[r["patient_id"] != ""].drop_duplicates("patient_id")
        sex = pats["sex"].value_counts()
        groups = int((psplit == s).sum()) if len(patients) else r["patient_group"].nunique()
        out.append(
            {
                "split": s,
                "patient_groups": groups,
                "patients": len(pats),
                "exams": int(r["exam_key"].replace("", np.nan).nunique()),
                "samples": len(r),
                "cxr": int((r["modality"] == "cxr").sum()),
                "ct": int((r["modality"] == "ct").sum()),
                "age_n": len(ages),
                "age_median": float(ages.median()) if len(ages) else math.nan,
                "age_q1": float(ages.quantile(0.25)) if len(ages) else math.nan,
                "age_q3": float(ages.quantile(0.75)) if len(ages) else math.nan,
                "sex_F": int(sex.get("F", 0)),
                "sex_M": int(sex.get("M", 0)),
                "sex_other": int(len(pats) - sex.get("F", 0) - sex.get("M", 0)),
            }
        )
    return pd.DataFrame(out)


def _age_cell(r: Mapping[str, Any]) -> str:
    if not r["age_n"]:
        return MISSING
    med, q1, q3 = r["age_median"], r["age_q1"], r["age_q3"]
    lo, hi = (max(0.0, min(100.0, x)) for x in (q1, q3))
    m = max(0.0, min(100.0, med))
    w = max(hi - lo, 0.8)
    return (
        f'<div class="age"><span class="num">{med:.0f} ({q1:.0f}–{q3:.0f})</span>'
        f'<span class="track"><span class="iqr" style="left:{lo:.1f}%;width:{w:.1f}%">'
        f'</span><span class="med" style="left:{m:.1f}%"></span></span>'
        f'<span class="pct">n={r["age_n"]}</span></div>'
    )


def _sex_cell(r: Mapping[str, Any]) -> str:
    f, m, o = r["sex_F"], r["sex_M"], r["sex_other"]
    n = f + m + o
    if not n:
        return MISSING
    segs = "".join(
        f'<span class="{c}" style="width:{100.0 * v / n:.1f}%"></span>'
        for c, v in (("f", f), ("m", m), ("o", o))
        if v
    )
    return (
        f'<div class="sex"><span class="num">F {f} · M {m}{f" · ? {o}" if o else ""}</span>'
        f'<span class="track stack">{segs}</span></div>'
    )


def _balance(manifest: pd.DataFrame, patients: pd.DataFrame, rule: str = "") -> str:
    """The split balance table, under the split rule in words (``rule``) when given."""
    b = split_balance(manifest, patients)
    tot = {c: float(b[c].sum()) for c in ("patient_groups", "patients", "exams", "cxr", "ct")}
    rows = []
    for r in b.to_dict("records"):
        rows.append(
            [
                f"<b>{html.escape(_split_label(r['split']))}</b>",
                _bar(r["patient_groups"], tot["patient_groups"]),
                _bar(r["patients"], tot["patients"]),
                _bar(r["exams"], tot["exams"]),
                _bar(r["cxr"], tot["cxr"]),
                _bar(r["ct"], tot["ct"]),
                _age_cell(r),
                _sex_cell(r),
            ]
        )
    headers = ["split", "patient groups", "patients", "exams", "radiographs", "CT volumes",
               "age, years: median (IQR)", "sex (patients)"]  # fmt: skip
    body = f'<p class="rule">{html.escape(rule)}</p>' if rule else ""
    body += f'<div class="scroll">{_table(headers, rows, cls="balance", raw=True)}</div>'
    body += _note(
        "Bars show each split's share of the column total. Age is counted once per exam (bar: "
        "0 to 100 years, the box is the IQR, the line the median), sex once per patient "
        '(F pink, M blue); "?" is unknown or other. A patient group (ids linked by the remap '
        "sheet, a shared image or identical pixels) always lies in one split.",
    )
    return _section("splits", "Split balance", body)


def _audit_rows(rows: pd.DataFrame, cols: Sequence[str]) -> str:
    shown = rows.head(MAX_DECISION_ROWS)
    body = _table(cols, ([r.get(c) for c in cols] for r in shown.to_dict("records")))
    if len(rows) > len(shown):
        body += _note(f"{len(rows) - len(shown)} more rows: see audit.csv.", cls="warn")
    return body


def _audit_columns(audit: pd.DataFrame, first: Sequence[str]) -> list[str]:
    cols = [c for c in first if c in audit.columns]
    for c in ("exam_key", "member"):
        if c in audit.columns and c not in cols and _keys(audit[c]).ne("").any():
            cols.append(c)
    return cols


def _reason_counts(rows: pd.DataFrame) -> str:
    counts = _keys(_col(rows, "reason")).value_counts()
    return _table(["reason", "count"], ([r or MISSING, c] for r, c in counts.items()), cls="narrow")


def _errors(audit: pd.DataFrame) -> str:
    rows = audit[_keys(_col(audit, "action")) == Action.ERROR]
    if rows.empty:
        body = _note("No errors: every exam that was read was either kept or accounted for below.")
        return _section("errors", "Errors (0)", body, cls="ok-box")
    cols = _audit_columns(audit, ["zip", "batch", "reason", "detail"])
    body = _note(
        f"{len(rows)} exam{'s' if len(rows) != 1 else ''} or file{'s' if len(rows) != 1 else ''} "
        "could not be converted and are <b>not</b> in the dataset. Run with <code>strict=true"
        "</code> to make any error fail the build.",
    )
    body += _reason_counts(rows) + _audit_rows(rows, cols)
    return _section("errors", f"Errors ({len(rows)})", body, cls="error-box")


_ACTION_HELP = {
    Action.ERROR: "could not be converted (listed in full under Errors above)",
    Action.DUPLICATE: "the same exam arrived again (a re-upload or a later weekly batch); the copy "
    "named in <i>kept as</i> is in the dataset",
    Action.MERGED: "one exam split over several zips; the parts were merged into <i>kept as</i> "
    "(a CT series stitched into one scan with another names the sample and its seams)",
    Action.DROPPED: "read but not used (e.g. not a chest image, a localizer, a filtered view)",
    Action.SKIPPED: "not read (e.g. an IN-PROGRESS batch still uploading, an unreadable zip name)",
}


def _decisions(audit: pd.DataFrame) -> str:
    action = _keys(_col(audit, "action"))
    others = sorted(set(action) - {Action.KEPT, *ACTION_ORDER})
    parts = []
    summary_rows = []
    for a in [*ACTION_ORDER, *others]:
        rows = audit[action == a]
        summary_rows.append([a or "(none)", str(len(rows)), _ACTION_HELP.get(a, "")])
        if rows.empty or a == Action.ERROR:
            continue
        cols = _audit_columns(audit, ["zip", "batch", "reason", "kept_as", "detail"])
        parts.append(
            f"<details open><summary><b>{html.escape(a or '(none)')}</b> ({len(rows)})</summary>"
            f"{_reason_counts(rows)}{_audit_rows(rows, cols)}</details>"
        )
    body = _table(["action", "count", "meaning"], summary_rows, cls="narrow", raw=True)
    zip_level = _keys(_col(audit, "member")) == ""
    n_kept = int(((action == Action.KEPT) & zip_level).sum())  # not a CT series kept unstitched
    kept = f"{n_kept} zip was" if n_kept == 1 else f"{n_kept} zips were"
    body += _note(f"{kept} kept as they are.")
    apart = audit[(action == Action.KEPT) & ~zip_level]
    if not apart.empty:  # CT series kept as their own volume though a stitch candidate
        cols = _audit_columns(audit, ["zip", "batch", "reason"])
        body += (
            f"<details open><summary><b>kept, not stitched</b> ({len(apart)})</summary>"
            f"{_audit_rows(apart, cols)}</details>"
        )
    body += "".join(parts) if parts else _note("No duplicate, merged, dropped or skipped input.")
    return _section("decisions", "Decisions (non-kept)", body)


def _orphans(manifest: pd.DataFrame) -> str:
    if "orphan" not in manifest.columns:
        body = _note("No clinical table was given (no <code>orphan</code> column): not checked.")
        return _section("orphans", "Orphans", body)
    flag = manifest["orphan"].map(lambda v: bool(v) if not is_missing(v) else False).astype(bool)
    rows = manifest[flag]
    if rows.empty:
        return _section("orphans", "Orphans (0)", _note("Every patient has clinical rows."))
    g = pd.DataFrame(
        {
            "patient_id": _keys(_col(rows, "patient_id")),
            "source_patient_id": _keys(_col(rows, "source_patient_id")),
            "split": _keys(_col(rows, "split")),
            "exam_key": _keys(_col(rows, "exam_key")),
        }
    )
    t = (
        g.groupby("patient_id", sort=True)
        .agg(
            source=("source_patient_id", lambda s: ", ".join(sorted(set(s) - {""}))),
            split=("split", lambda s: ", ".join(sorted(set(s) - {""}))),
            exams=("exam_key", "nunique"),
            samples=("exam_key", "size"),
        )
        .reset_index()
    )
    body = _note(
        f"{'<b>1 patient</b> has' if len(t) == 1 else f'<b>{len(t)} patients</b> have'} "
        "images but no rows in the clinical table. Most often the id was remapped: "
        "check the remap sheet "
        f"<code>{html.escape(REMAP_SHEET)}</code> at the datamart root (old C19 id → current "
        "id) and that it is the latest one, then rebuild.",
        cls="warn",
    )
    body += _table(
        ["patient id", "id in zip name", "split", "exams", "samples"],
        t[["patient_id", "source", "split", "exams", "samples"]].itertuples(index=False),
    )
    return _section("orphans", f"Orphans ({len(t)})", body)


def _groups(patients: pd.DataFrame) -> str:
    if patients.empty or "patient_ids" not in patients.columns:
        return _section("groups", "Linked patient ids", _note("No patients table."))
    ids = patients["patient_ids"].map(cell_list)
    multi = patients[ids.map(len) > 1]
    if multi.empty:
        body = _note("No patient group links several ids.")
        return _section("groups", "Linked patient ids (0)", body)
    cols = ["patient_group", "patient_ids", "split"]
    cols += [c for c in ("source_ids", "links") if c in patients.columns]
    cols += [c for c in patients.columns if c.startswith("n_") and c not in cols]
    body = _note(
        "These ids are one person or must share a split: linked by the remap sheet, a shared "
        "SOP Instance UID, identical pixels (encoded bytes or decoded values, whatever the "
        "transfer syntax) or a near-duplicate radiograph (see links). All their samples are "
        "in the same split.",
    )
    body += _table(cols, ([r.get(c) for c in cols] for r in multi.to_dict("records")))
    return _section("groups", f"Linked patient ids ({len(multi)})", body)


def _thumbnails(manifest: pd.DataFrame, read_array: ReadArray | None, max_thumbnails: int) -> str:
    title = "Thumbnails"
    if read_array is None:
        return _section("thumbs", title, _note("No array reader was given: no thumbnails."))
    if manifest.empty:
        return _section("thumbs", title, _note("No samples, no thumbnails."))
    mod = _keys(_col(manifest, "modality"))
    split = _keys(_col(manifest, "split"))
    n_ct = max(1, max_thumbnails // 4)
    parts = []
    for s in _splits_in(split):
        cxr = manifest[(split == s) & (mod == "cxr")]
        ct = manifest[(split == s) & (mod == "ct")]
        if cxr.empty and ct.empty:
            continue
        parts.append(f"<h3>{html.escape(_split_label(s))}</h3>")
        if not cxr.empty:
            k = min(len(cxr), max_thumbnails)
            parts.append(
                f"<h4>Radiographs: {k} of {len(cxr)}</h4>"
                + _note("Each shown by its own min/max; caption: view · patient.")
                + _cxr_sheet(cxr, read_array, max_thumbnails)
            )
        if not ct.empty:
            k = min(len(ct), n_ct)
            w, lvl = CT_WINDOW
            parts.append(
                f"<h4>CT volumes: {k} of {len(ct)}</h4>"
                + _note(f"Mid-slices, lung window W{w:.0f}/L{lvl:.0f} HU, physical aspect.")
                + _ct_sheet(ct, read_array, n_ct)
            )
    return _section("thumbs", title, "".join(parts) or _note("No radiograph or CT sample."))
