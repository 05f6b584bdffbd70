"""``report.html``: the one self-contained page a researcher opens first after a build.

It shows the build summary, counts, the split balance (patients, exams, samples per
modality, age and sex per split), every non-kept decision of the audit grouped by action,
the errors in their own section, orphans, patient groups that link several ids,
near-duplicate radiographs across patient groups (both thumbnails side by side), and
thumbnails: a contact sheet of radiographs per split and, for CT volumes, mid-slices in the
three planes under a lung window.

The page has no external reference: CSS is inline and every image is a base64 PNG data URI.
All text that comes from data is HTML-escaped. Thumbnails are drawn with Pillow.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from PIL import Image

from hiroml._version import __version__
from hiroml.datamart import REMAP_SHEET_NAME as REMAP_SHEET
from hiroml.splits import SPLITS

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
# non-kept actions, in the order the report lists them (errors have their own section too)
ACTION_ORDER = ("error", "duplicate", "merged", "dropped", "skipped")
THUMB_PX = 176  # longest side of a radiograph thumbnail, pixels
CT_THUMB_PX = 150  # longest side of one CT plane, pixels
CT_WINDOW = (1500.0, -600.0)  # lung window: width, level (HU)
MAX_DECISION_ROWS = 20_000  # per action; the rest are in audit.csv
MISSING = "—"

ReadArray = Callable[[str], np.ndarray]
T = TypeVar("T")


# --------------------------------------------------------------------------- value helpers


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, str):
        return v == ""
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # lists and arrays
        return False


def _as_list(v: Any) -> list[Any]:
    """A list cell (list, tuple, numpy array, or a lone string) as a Python list."""
    if _missing(v):
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, Iterable):
        return [x.item() if isinstance(x, np.generic) else x for x in v]
    return [v]


def _text(v: Any) -> str:
    """A cell as plain (unescaped) text."""
    if isinstance(v, list | tuple | np.ndarray):
        return ", ".join(_text(x) for x in _as_list(v)) or MISSING
    if _missing(v):
        return MISSING
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        f = float(v)
        return str(int(f)) if f.is_integer() and abs(f) < 1e15 else f"{f:.4g}"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={_text(x)}" for k, x in v.items()) or MISSING
    return str(v)


def _e(v: Any) -> str:
    """A cell as escaped HTML text."""
    return html.escape(_text(v), quote=True)


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` of ``df``, or a column of ``None`` when it is absent."""
    if name in df.columns:
        return df[name]
    return pd.Series([None] * len(df), index=df.index, dtype=object)


def _keys(s: pd.Series) -> pd.Series:
    """A column as plain strings, missing values as ``""`` (for grouping and counting)."""
    keys = [v if type(v) is str else _text(v) if not _missing(v) else "" for v in s]
    return pd.Series(keys, index=s.index, dtype=object)


def _splits_in(values: Iterable[str]) -> list[str]:
    present = set(values)
    rest = sorted(v for v in present if v not in SPLITS)
    return [s for s in SPLITS if s in present] + rest


def _split_label(s: str) -> str:
    return s if s else "(no split)"


# --------------------------------------------------------------------------- html helpers


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "", raw: bool = False
) -> str:
    """A table; cells are escaped unless ``raw`` (then they are trusted HTML)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bar(value: float, total: float, *, label: str = "") -> str:
    pct = 0.0 if total <= 0 else max(0.0, min(100.0, 100.0 * value / total))
    return (
        f'<div class="cell-bar"><span class="num">{html.escape(label or _text(value))}</span>'
        f'<span class="track"><span class="fill" style="width:{pct:.1f}%"></span></span>'
        f'<span class="pct">{pct:.0f}%</span></div>'
    )


def _png_uri(img: Image.Image) -> str:
    """``img`` as an inline PNG. zlib level 1: a 176-pixel thumbnail is about 15% larger than
    with ``optimize=True`` and encodes about 15 times faster (2 ms instead of 30), which
    counted once a report showed a few hundred near-duplicate pairs."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _note(text: str, *, cls: str = "note") -> str:
    return f'<p class="{cls}">{text}</p>'


# --------------------------------------------------------------------------- thumbnails


def _to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``arr`` mapped linearly from [lo, hi] (default: its own finite min/max) to uint8."""
    a = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(a)
    if lo is None or hi is None:
        if not finite.any():
            return np.zeros(a.shape, np.uint8)
        lo = float(a[finite].min()) if lo is None else lo
        hi = float(a[finite].max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    out = (np.where(finite, a, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0.0, 255.0).round().astype(np.uint8)


def _resized(u8: np.ndarray, width_mm: float, height_mm: float, px: int) -> Image.Image:
    """A 2-D uint8 array as an image whose longest side is ``px``, shaped by its physical
    width and height (so anisotropic pixels are shown with their true aspect)."""
    img = Image.fromarray(np.ascontiguousarray(u8), mode="L")
    if not (math.isfinite(width_mm) and math.isfinite(height_mm)) or min(width_mm, height_mm) <= 0:
        width_mm, height_mm = float(u8.shape[1]), float(u8.shape[0])
    k = px / max(width_mm, height_mm)
    size = (max(1, round(width_mm * k)), max(1, round(height_mm * k)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def cxr_thumbnail(arr: np.ndarray, *, px: int = THUMB_PX) -> Image.Image:
    """A radiograph (H, W) as a grey thumbnail, normalised by its own min/max (float16 in
    [0, 1], uint8 and uint16 storage all work); a leading axis of length 1 is dropped and a
    3-D array shows its middle slice."""
    a = np.asarray(arr)
    while a.ndim > 2:
        a = a[a.shape[0] // 2]
    if a.ndim < 2 or a.size == 0:
        raise ValueError(f"not an image: shape {np.asarray(arr).shape}")
    return _resized(_to_uint8(a), float(a.shape[1]), float(a.shape[0]), px)


def ct_planes(
    vol: np.ndarray,
    spacing_xyz: Sequence[float] | None = None,
    *,
    direction: Sequence[float] | None = None,
    window: tuple[float, float] = CT_WINDOW,
    px: int = CT_THUMB_PX,
) -> list[tuple[str, Image.Image]]:
    """Mid-slices of a CT volume, numpy (z, y, x) in HU, in the axial, coronal and sagittal
    planes under ``window`` (width, level in HU), each with the physical aspect given by
    ``spacing_xyz`` (mm, SimpleITK (x, y, z) order; isotropic when missing). Coronal and
    sagittal planes are shown head up when the slice index runs towards the head (the
    z component of the third ``direction`` column is positive, or unknown)."""
    v = np.asarray(vol)
    if v.ndim == 4 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 3 or v.size == 0:
        raise ValueError(f"not a volume: shape {v.shape}")
    sp = [float(s) for s in _as_list(spacing_xyz)]
    sx, sy, sz = sp if len(sp) == 3 and all(s > 0 for s in sp) else (1.0, 1.0, 1.0)
    d = [float(x) for x in _as_list(direction)]
    head_up = not (len(d) == 9 and d[8] < 0)
    width, level = window
    lo, hi = level - width / 2.0, level + width / 2.0
    nz, ny, nx = v.shape
    axial = v[nz // 2]
    coronal = v[:, ny // 2, :]
    sagittal = v[:, :, nx // 2]
    if head_up:
        coronal, sagittal = coronal[::-1], sagittal[::-1]
    return [
        ("axial", _resized(_to_uint8(axial, lo, hi), nx * sx, ny * sy, px)),
        ("coronal", _resized(_to_uint8(coronal, lo, hi), nx * sx, nz * sz, px)),
        ("sagittal", _resized(_to_uint8(sagittal, lo, hi), ny * sy, nz * sz, px)),
    ]


def _pick(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to ``n`` rows, one per patient first, deterministic (by sample key)."""
    if rows.empty or n <= 0:
        return rows.iloc[:0]
    r = rows.assign(_pid=_keys(_col(rows, "patient_id")), _key=_keys(_col(rows, "sample_key")))
    r = r.sort_values("_key", kind="stable")
    r = r.assign(_rank=r.groupby("_pid", sort=False).cumcount())
    return r.sort_values(["_rank", "_key"], kind="stable").head(n)


def _read(read_array: ReadArray, key: str) -> np.ndarray | None:
    try:
        return read_array(key)
    except Exception:  # a broken sample must not cost the whole report
        log.warning("report: could not read sample %s", key, exc_info=True)
        return None


def _drawn(read_array: ReadArray, key: str, draw: Callable[[np.ndarray], T], what: str) -> T | None:
    """``draw`` applied to sample ``key``'s array, or None (logged) when the sample cannot be
    read or ``draw`` finds no ``what`` in it (ValueError)."""
    arr = _read(read_array, key)
    if arr is None:
        return None
    try:
        return draw(arr)
    except ValueError:
        log.warning("report: sample %s has no drawable %s", key, what, exc_info=True)
        return None


def _figure(uri: str | None, caption_lines: Sequence[str], *, alt: str) -> str:
    cap = "<br>".join(html.escape(c) for c in caption_lines if c)
    if uri is None:
        pic = '<div class="broken">could not read</div>'
    else:
        pic = f'<img src="{uri}" alt="{html.escape(alt, quote=True)}">'
    return f"<figure>{pic}<figcaption>{cap}</figcaption></figure>"


def _cxr_sheet(rows: pd.DataFrame, read_array: ReadArray, n: int) -> str:
    figs = []
    for r in _pick(rows, n).to_dict("records"):
        key = _text(r.get("sample_key"))
        uri = _drawn(read_array, key, lambda a: _png_uri(cxr_thumbnail(a)), "image")
        view = _text(r.get("view"))
        caption = [f"{view} · {_text(r.get('patient_id'))}", _text(r.get("description")), key]
        figs.append(_figure(uri, caption, alt=f"{view} radiograph of {_text(r.get('patient_id'))}"))
    return f'<div class="sheet">{"".join(figs)}</div>'


def _ct_sheet(rows: pd.DataFrame, read_array: ReadArray, n: int) -> str:
    items = []
    for r in _pick(rows, n).to_dict("records"):
        key = _text(r.get("sample_key"))
        draw = partial(ct_planes, spacing_xyz=r.get("spacing_xyz"), direction=r.get("direction"))
        planes = _drawn(read_array, key, draw, "volume") or []
        if planes:
            imgs = "".join(
                f'<figure class="plane"><img src="{_png_uri(img)}" alt="{name} mid-slice">'
                f"<figcaption>{name}</figcaption></figure>"
                for name, img in planes
            )
        else:
            imgs = '<div class="broken">could not read</div>'
        shape = "×".join(_text(x) for x in _as_list(r.get("shape")))
        spacing = " × ".join(f"{float(s):.2g}" for s in _as_list(r.get("spacing_xyz")))
        cap = [
            f"{_text(r.get('patient_id'))} · {_text(r.get('description'))}",
            f"shape (z, y, x) {shape or MISSING}; spacing (x, y, z) {spacing or MISSING} mm",
            key,
        ]
        parts = _as_list(r.get("stitched_series"))
        if parts:
            seams = ", ".join(
                f"{float(mm):.1f} mm (slice {_text(z)})"
                for mm, z in zip(
                    _as_list(r.get("seams_mm")), _as_list(r.get("seam_slices")), strict=False
                )
            )
            cap.append(f"stitched from {len(parts)} series; seams at {seams or MISSING}")
        capt = "<br>".join(html.escape(c) for c in cap)
        items.append(f'<div class="ct-item"><div class="planes">{imgs}</div><p>{capt}</p></div>')
    return f'<div class="ct-sheet">{"".join(items)}</div>'


# --------------------------------------------------------------------------- sections


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
    for a in ("kept", *ACTION_ORDER):
        cards.append((f"audit: {a}", int(actions.get(a, 0))))
    for a, c in actions.items():
        if a not in ("kept", *ACTION_ORDER):
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


def _balance(manifest: pd.DataFrame, patients: pd.DataFrame) -> str:
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
    body = f'<div class="scroll">{_table(headers, rows, cls="balance", raw=True)}</div>'
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
    rows = audit[_keys(_col(audit, "action")) == "error"]
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
    "error": "could not be converted (listed in full under Errors above)",
    "duplicate": "the same exam arrived again (a re-upload or a later weekly batch); the copy "
    "named in <i>kept as</i> is in the dataset",
    "merged": "one exam split over several zips; the parts were merged into <i>kept as</i> "
    "(a CT series stitched into one scan with another names the sample and its seams)",
    "dropped": "read but not used (e.g. not a chest image, a localizer, a filtered view)",
    "skipped": "not read (e.g. an IN-PROGRESS batch still uploading, an unreadable zip name)",
}


def _decisions(audit: pd.DataFrame) -> str:
    action = _keys(_col(audit, "action"))
    others = sorted(set(action) - {"kept", *ACTION_ORDER})
    parts = []
    summary_rows = []
    for a in [*ACTION_ORDER, *others]:
        rows = audit[action == a]
        summary_rows.append([a or "(none)", str(len(rows)), _ACTION_HELP.get(a, "")])
        if rows.empty or a == "error":
            continue
        cols = _audit_columns(audit, ["zip", "batch", "reason", "kept_as", "detail"])
        parts.append(
            f"<details open><summary><b>{html.escape(a or '(none)')}</b> ({len(rows)})</summary>"
            f"{_reason_counts(rows)}{_audit_rows(rows, cols)}</details>"
        )
    body = _table(["action", "count", "meaning"], summary_rows, cls="narrow", raw=True)
    zip_level = _keys(_col(audit, "member")) == ""
    n_kept = int(((action == "kept") & zip_level).sum())  # not a CT series kept unstitched
    kept = f"{n_kept} zip was" if n_kept == 1 else f"{n_kept} zips were"
    body += _note(f"{kept} kept as they are.")
    apart = audit[(action == "kept") & ~zip_level]
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
    flag = manifest["orphan"].map(lambda v: bool(v) if not _missing(v) else False).astype(bool)
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
    ids = patients["patient_ids"].map(_as_list)
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


# --------------------------------------------------------------------------- page

_CSS = """
:root{--fg:#1d2433;--mut:#5b6577;--line:#dde2ea;--bg:#f6f8fb;--acc:#2f6fdb;--bad:#c62828;
--badbg:#fdecea;--ok:#2e7d32;--warn:#8a5a00;--warnbg:#fff6e0}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
main{max-width:1200px;margin:0 auto;padding:16px 24px 48px}
header,section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 18px;
margin:14px 0}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:0 0 10px}h3{font-size:16px;
margin:18px 0 6px;border-bottom:1px solid var(--line)}h4{font-size:14px;margin:10px 0 4px}
nav{position:sticky;top:0;z-index:2;background:var(--fg);padding:6px 24px}
nav a{color:#fff;text-decoration:none;margin-right:16px;font-size:13px}
.sub{color:var(--mut);margin:0 0 10px}
.badge{font-size:13px;border-radius:10px;padding:2px 10px;vertical-align:middle;margin-left:8px}
.badge.bad{background:var(--bad);color:#fff}.badge.ok{background:#e6f4ea;color:var(--ok)}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top;
overflow-wrap:anywhere}
th{background:#eef1f6;font-weight:600}tbody tr:nth-child(even){background:#fafbfd}
table.kv{width:auto}table.kv td:first-child{color:var(--mut);padding-right:24px;white-space:nowrap}
table.kv thead{display:none}table.narrow{width:auto;min-width:320px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 14px;min-width:110px}
.card .v{font-size:20px;font-weight:600}.card .k{color:var(--mut);font-size:12px}
.card.bad{border-color:var(--bad);background:var(--badbg)}.card.bad .v{color:var(--bad)}
.note{color:var(--mut)}.warn{color:var(--warn);background:var(--warnbg);padding:6px 10px;
border-radius:4px}
.error-box{border:2px solid var(--bad);background:var(--badbg)}.error-box h2{color:var(--bad)}
.error-box table{background:#fff}.ok-box h2{color:var(--ok)}
.cell-bar,.age,.sex{display:flex;align-items:center;gap:6px;white-space:nowrap}
.num{min-width:28px}.age .num{min-width:84px}.sex .num{min-width:92px}
.scroll{overflow-x:auto}table.balance td,table.balance th{overflow-wrap:normal;white-space:nowrap}
.track{position:relative;display:inline-block;width:52px;height:10px;background:#e8ecf2;
border-radius:3px;overflow:hidden}
.fill{position:absolute;left:0;top:0;bottom:0;background:var(--acc)}
.pct{color:var(--mut);font-size:11px;min-width:28px}
.iqr{position:absolute;top:0;bottom:0;background:#9bb9ef}
.med{position:absolute;top:0;bottom:0;width:2px;background:var(--fg)}
.stack{display:inline-flex}.stack span{display:block;height:100%}
.stack .f{background:#d0679d}.stack .m{background:#3f7fd9}.stack .o{background:#aab2bf}
details{margin:8px 0}summary{cursor:pointer;font-size:15px;padding:4px 0}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(184px,1fr));gap:10px}
figure{margin:0;text-align:center}
figure img{background:#000;max-width:100%;display:block;margin:0 auto}
figcaption{font-size:11px;color:var(--mut);overflow-wrap:anywhere}
.ct-sheet{display:flex;flex-direction:column;gap:12px}
.ct-item{border:1px solid var(--line);border-radius:6px;padding:8px}
.ct-item p{margin:4px 0 0;font-size:12px;color:var(--mut);overflow-wrap:anywhere}
.planes{display:flex;gap:10px;align-items:flex-end;flex-wrap:wrap}
.broken{width:150px;height:150px;display:flex;align-items:center;justify-content:center;
background:var(--badbg);color:var(--bad);font-size:12px}
code{background:#eef1f6;padding:0 4px;border-radius:3px}
.flow{overflow-x:auto}.flow svg{max-width:100%;height:auto}
"""


def render_report(
    *,
    manifest: pd.DataFrame,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
    summary: Mapping[str, Any],
    read_array: ReadArray | None = None,
    max_thumbnails: int = 24,
    changes: str = "",
    near_duplicates: pd.DataFrame | None = None,
    flow: str | None = None,
    environment: Mapping[str, Any] | None = None,
) -> str:
    """The report page as an HTML string; see :func:`write_report`. ``flow`` is the flow
    diagram's SVG (:func:`hiroml.flow.flow_svg`), drawn at the top; computed when None."""
    if flow is None:
        from hiroml.flow import compute_flow, flow_svg

        flow = flow_svg(compute_flow(audit, manifest))
    n_errors = int((_keys(_col(audit, "action")) == "error").sum())
    nav = "".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (
            *((("changes", "Changes"),) if changes else ()),
            ("flow", "Flow"),
            ("counts", "Counts"),
            ("splits", "Splits"),
            ("errors", f"Errors ({n_errors})"),
            ("decisions", "Decisions"),
            ("orphans", "Orphans"),
            ("groups", "Linked ids"),
            ("neardup", "Near duplicates"),
            ("thumbs", "Thumbnails"),
            ("environment", "Environment"),
        )
    )
    body = "".join(
        [
            _header(summary, n_errors),
            _section("changes", "What changed since the previous version", changes)
            if changes
            else "",
            _flow_section(flow),
            _counts(manifest, patients, audit),
            _balance(manifest, patients),
            _errors(audit),
            _decisions(audit),
            _orphans(manifest),
            _groups(patients),
            _near_duplicates(near_duplicates, read_array),
            _thumbnails(manifest, read_array, max_thumbnails),
            _environment(environment),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>hiroml build report</title><style>{_CSS}</style></head>"
        f"<body><nav>{nav}</nav><main>{body}</main></body></html>\n"
    )


def _environment(record: Mapping[str, Any] | None) -> str:
    """The environment that decided the stored values (``build.json``'s ``environment``)."""
    from hiroml.doctor import environment_rows

    rows = environment_rows(record)
    if not rows:
        return _section("environment", "Environment", _note("Not recorded by this build."))
    return _section("environment", "Environment", _table(["library", "version"], rows))


def shard_reader(out_dir: Path | str, manifest: pd.DataFrame) -> ReadArray:
    """A ``read_array`` for :func:`write_report` over a built output folder: the stored array
    of a sample key, read from its shard (``manifest.shard``, relative to ``out_dir``)."""
    from hiroml.shards import read_sample

    root = Path(out_dir)
    shard_of = dict(
        zip(_keys(_col(manifest, "sample_key")), _keys(_col(manifest, "shard")), strict=True)
    )

    def read_array(key: str) -> np.ndarray:
        return read_sample(root / shard_of[key], key)[0]

    return read_array


def write_report(
    out_dir: Path,
    *,
    manifest: pd.DataFrame,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
    summary: Mapping[str, Any],
    read_array: ReadArray | None = None,
    max_thumbnails: int = 24,
    changes: str = "",
    near_duplicates: pd.DataFrame | None = None,
    settings: Mapping[str, Any] | None = None,
    dataset_hash: str = "",
    environment: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/report.html``, one self-contained page, with ``flow.svg`` (the
    inclusion/exclusion flow, :mod:`hiroml.flow`, also drawn at the top of the page) and
    ``DATASET.md`` (the dataset card, :mod:`hiroml.card`) beside it; return the page's path.

    ``manifest``, ``patients`` and ``audit`` are the output tables of docs/design.md section 4
    (missing optional columns are tolerated; an empty manifest gives a page of errors and
    decisions); ``summary`` is the build summary, shown key by key in its order.
    ``read_array(sample_key)`` returns a sample's stored array: a radiograph (H, W) (float16
    in [0, 1], or uint8/uint16) or a CT volume numpy (z, y, x) in HU; without it the page
    has no thumbnails. ``max_thumbnails`` radiographs are shown per split, and
    ``max(1, max_thumbnails // 4)`` CT volumes per split (three mid-slices each).
    ``changes`` (trusted HTML, from :func:`hiroml.versions.changes_html`) becomes the section
    "What changed since the previous version", shown first.
    ``near_duplicates`` (:func:`near_duplicate_frame`) lists the near-duplicate pairs across
    patient groups, shown with both thumbnails side by side.
    ``settings`` (config key -> value, :func:`hiroml.card.settings_of`) are the conversion
    settings printed in the card; ``summary`` keys ``version`` and ``dataset_hash`` are
    printed there when present; ``dataset_hash``, when given, is the card's (the publisher
    computed it already: the card then does not hash the manifest again).
    ``environment`` (:func:`hiroml.doctor.environment_record`, as ``build.json`` records it)
    is shown as a table on the page and in the card.
    Each file is written to a temporary name then moved into place (``os.replace``).
    """
    from hiroml.card import CARD_NAME, render_card
    from hiroml.flow import FLOW_NAME, compute_flow, flow_svg

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flow = compute_flow(audit, manifest)
    for problem in flow.problems():
        log.warning("flow diagram: the counts do not add up: %s", problem)
    svg = flow_svg(flow)
    page = render_report(
        manifest=manifest,
        patients=patients,
        audit=audit,
        summary=summary,
        read_array=read_array,
        max_thumbnails=max_thumbnails,
        flow=svg,
        changes=changes,
        near_duplicates=near_duplicates,
        environment=environment,
    )
    card = render_card(
        manifest=manifest,
        audit=audit,
        summary={**summary, "dataset_hash": dataset_hash} if dataset_hash else summary,
        flow=flow,
        settings=settings,
        environment=environment,
    )
    _write_text(out_dir, FLOW_NAME, svg)
    _write_text(out_dir, CARD_NAME, card)
    path = _write_text(out_dir, REPORT_NAME, page)
    log.info("report written: %s (%.1f kB)", path, len(page) / 1024)
    return path


def _write_text(out_dir: Path, name: str, text: str) -> Path:
    """Write ``out_dir/name`` through a temporary name and ``os.replace``."""
    path = out_dir / name
    tmp = out_dir / f".{name}.{os.getpid()}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- near duplicates

NEAR_COLUMNS = [
    "sample_key", "other_key", "patient_id", "other_patient_id", "group", "other_group",
    "similarity", "linked",
]  # fmt: skip
MAX_NEAR_PAIRS = 200  # pairs drawn with thumbnails; all are in the audit and manifest


def near_duplicate_frame(links: Iterable[Any]) -> pd.DataFrame:
    """The near-duplicate pairs among :class:`hiroml.linking.GroupLink` records, one row each
    (columns ``NEAR_COLUMNS``), most similar first."""
    rows = [
        {c: getattr(k, c) for c in NEAR_COLUMNS}
        for k in links
        if getattr(k, "kind", "") == "near duplicate"
    ]
    df = pd.DataFrame(rows, columns=NEAR_COLUMNS)
    return df.sort_values(["similarity", "sample_key"], ascending=[False, True]).reset_index(
        drop=True
    )


def _pair_thumb(read_array: ReadArray | None, key: str) -> str | None:
    if read_array is None:
        return None
    arr = _read(read_array, key)
    if arr is None:
        return None
    try:
        return _png_uri(cxr_thumbnail(arr))
    except ValueError:
        log.warning("report: sample %s has no drawable image", key, exc_info=True)
        return None


def _near_duplicates(pairs: pd.DataFrame | None, read_array: ReadArray | None) -> str:
    title = "Near-duplicate radiographs across patient groups"
    if pairs is None or pairs.empty:
        body = _note(
            "No radiograph of one patient group is a near duplicate of another group's "
            "(rank correlation of 32 x 32 signatures below splits.near_duplicate_threshold)."
        )
        return _section("neardup", f"{title} (0)", body)
    body = _note(
        "The same radiograph re-exported (lossy, 8-bit, resized, another transfer syntax) "
        "under two patient groups: a missed remap would leak it across splits. Linked pairs "
        "were joined into one group (splits.link_near_duplicates); check each pair."
    )
    figs = []
    thumbs: dict[str, str | None] = {}  # a sample in many pairs is drawn once

    def thumb(key: str) -> str | None:
        if key not in thumbs:
            thumbs[key] = _pair_thumb(read_array, key)
        return thumbs[key]

    for r in pairs.head(MAX_NEAR_PAIRS).to_dict("records"):
        status = "linked" if r["linked"] else "NOT linked"
        left = _figure(
            thumb(str(r["sample_key"])),
            [f"patient {r['patient_id']} ({r['group']})", str(r["sample_key"])],
            alt=f"radiograph of {r['patient_id']}",
        )
        right = _figure(
            thumb(str(r["other_key"])),
            [f"patient {r['other_patient_id']} ({r['other_group']})", str(r["other_key"])],
            alt=f"radiograph of {r['other_patient_id']}",
        )
        label = html.escape(f"rank correlation {float(r['similarity']):.3f}, {status}")
        figs.append(f'<div class="sheet"><p>{label}</p>{left}{right}</div>')
    if len(pairs) > MAX_NEAR_PAIRS:
        figs.append(_note(f"{len(pairs) - MAX_NEAR_PAIRS} more pair(s) in audit.csv."))
    return _section("neardup", f"{title} ({len(pairs)})", body + "".join(figs))
