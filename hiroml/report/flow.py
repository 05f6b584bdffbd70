"""The inclusion/exclusion flow of a build (CLAIM / CONSORT-AI style), and its SVG figure.

:func:`compute_flow` counts, from ``audit.csv`` and ``manifest.parquet`` alone (docs/design.md
section 4), how the zips found became the samples of each split::

    zips found
      -> skipped (upload in progress)              side box
    zips read
      -> errors (nothing usable in the zip)        side box
    zips with usable images
      -> duplicates (a copy of a kept exam)        side box
      -> merged (part of a split CT exam)          side box
    exams
      -> dropped inside exams, by reason class     side box (audit rows: a radiograph, or a
                                                   CT series or object)
      -> errors inside exams                       side box (audit rows)
      -> exams with no sample                      side box
    samples (radiographs, CT volumes) of P patients
      -> train | val | test: patients and samples

Each zip is counted once, by its zip-level decision (``action`` of its rows: ``skipped``,
then ``duplicate``, ``merged``, ``kept``; a zip with only ``error`` rows is an error), so
the main column adds up: ``found = skipped + read``, ``read = errors + usable``,
``usable = duplicates + merged + exams``, ``exams = no sample + with samples``, and the
split boxes add up to the samples and the patients (a patient lies in one split).

:func:`flow_svg` draws it as a self-contained SVG (no script, no external font or image;
generic ``sans-serif``), a figure a paper can use as it is.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pandas as pd

from hiroml.report.html import text_only
from hiroml.vocab import SPLITS, Action

#: Dropped reasons grouped into the classes a paper reports, first match wins (the audit's
#: ``reason`` is free text written by cxr.py, ct.py and exams.py; these patterns name the
#: words those modules put in it). Anything else is "other".
REASON_CLASSES: tuple[tuple[str, str], ...] = (
    ("localizer", r"localizer|scout"),
    ("non-image object", r"non-image|structured report|dose report|no pixel data|no \(7FE0"),
    ("screen save / secondary", r"secondary|screen ?save|screenshot|derived"),
    ("view not selected", r"\bview\b.*not selected"),
    ("short series", r"min_slices|too few"),
    ("other series of the exam", r"not the best series"),
    ("duplicate instance or slice", r"duplicate|already kept"),
    ("unsupported object", r"not supported|is not CT|multi-frame"),
)
OTHER = "other"


def reason_class(reason: str) -> str:
    """The class of a ``dropped`` reason (see :data:`REASON_CLASSES`)."""
    for name, pattern in REASON_CLASSES:
        if re.search(pattern, reason, flags=re.IGNORECASE):
            return name
    return OTHER


@dataclass(frozen=True, slots=True)
class SplitCounts:
    split: str
    patients: int
    samples: int
    cxr: int
    ct: int


@dataclass(frozen=True, slots=True)
class Flow:
    """The numbers of the flow diagram (see the module docstring for how they add up)."""

    zips_found: int
    zips_skipped: int
    zips_read: int
    zips_error: int
    zips_usable: int
    zips_duplicate: int
    zips_merged: int
    exams: int
    exams_without_sample: int
    exams_with_samples: int
    dropped: Mapping[str, int]  # reason class -> audit rows, in REASON_CLASSES order
    errors_in_exams: int  # audit rows (a member or an exam that failed to convert)
    samples: int
    cxr: int
    ct: int
    patients: int
    splits: tuple[SplitCounts, ...] = field(default=())

    def problems(self) -> list[str]:
        """The sums that do not add up (empty for a consistent flow)."""
        checks = [
            ("found = skipped + read", self.zips_found, self.zips_skipped + self.zips_read),
            ("read = errors + usable", self.zips_read, self.zips_error + self.zips_usable),
            (
                "usable = duplicates + merged + exams",
                self.zips_usable,
                self.zips_duplicate + self.zips_merged + self.exams,
            ),
            (
                "exams = without sample + with samples",
                self.exams,
                self.exams_without_sample + self.exams_with_samples,
            ),
            ("samples = radiographs + CT", self.samples, self.cxr + self.ct),
            ("samples = sum over splits", self.samples, sum(s.samples for s in self.splits)),
            ("patients = sum over splits", self.patients, sum(s.patients for s in self.splits)),
        ]
        return [f"{name}: {a} != {b}" for name, a, b in checks if a != b]

    def as_dict(self) -> dict[str, object]:
        """Plain values, for JSON and the dataset card (the fields in their order)."""
        return {
            **{f.name: getattr(self, f.name) for f in fields(self)},
            Action.DROPPED: dict(self.dropped),
            "splits": [asdict(s) for s in self.splits],
        }


def text_column(df: pd.DataFrame, col: str) -> pd.Series:
    """Column ``col`` of ``df`` as plain strings, missing values (and a missing column) as
    ``""``: the form the flow and the dataset card count by."""
    if col not in df.columns:
        return pd.Series([""] * len(df), index=df.index, dtype=object)
    values = df[col]
    if len(values) and text_only(values):  # column-wise, to pandas' str dtype
        return values.fillna("").astype("str")
    return values.map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v))


def per_value(values: pd.Series, fn: Callable[[str], str]) -> pd.Series:
    """``fn`` of each value of ``values``, called once per distinct value."""
    return values.map({v: fn(v) for v in values.unique()}).astype(object)


#: A zip's status is the first of these actions among its rows ("other": none of them).
_STATUS_ORDER = (Action.SKIPPED, Action.DUPLICATE, Action.MERGED, Action.KEPT, Action.ERROR)


def _zip_status(key: pd.Series, action: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Each zip's status (indexed by ``key``, sorted): the first action of
    :data:`_STATUS_ORDER` among its rows, ``"other"`` when it has none of them; and each
    row's zip status, as an array of the same names (one factorisation, no per-row work)."""
    names = [*(str(a) for a in _STATUS_ORDER), "other"]
    rank = action.map({a: k for k, a in enumerate(names[:-1])}).fillna(len(names) - 1)
    codes, zips = pd.factorize(key, sort=True)
    best = np.full(len(zips), len(names) - 1, dtype=np.int64)
    np.minimum.at(best, codes, rank.to_numpy(dtype=np.int64))
    labels = np.array(names, dtype=object)
    status = pd.Series(labels[best], index=pd.Index(zips, name=key.name), dtype=object)
    return status, labels[best[codes]]


def compute_flow(audit: pd.DataFrame, manifest: pd.DataFrame) -> Flow:
    """The flow of one build from its audit and manifest tables (docs/design.md section 4).

    Only audit rows of a ``.zip`` are counted as zips (rows about the remap sheet or the
    clinical table are not inputs of the flow). A zip whose rows carry no zip-level action
    (only ``dropped``) is counted with the errors, so that no zip is silently lost.
    """
    a = pd.DataFrame(
        {
            "key": text_column(audit, "batch") + "/" + text_column(audit, "zip"),
            "zip": text_column(audit, "zip"),
            "action": text_column(audit, "action"),
            "reason": text_column(audit, "reason"),
            "exam_key": text_column(audit, "exam_key"),
        }
    )
    a = a[a["zip"].str.lower().str.endswith(".zip")]
    status, row_status = _zip_status(a["key"], a["action"])
    n = status.value_counts()
    count = {
        s: int(n.get(s, 0))
        for s in (Action.SKIPPED, Action.DUPLICATE, Action.MERGED, Action.KEPT, Action.ERROR)
    }
    count[Action.ERROR] += int(n.get("other", 0))
    # rows about an exam's content: its primary zip's and its merged parts'
    in_exam = (row_status == str(Action.KEPT)) | (row_status == str(Action.MERGED))
    exams = count[Action.KEPT]  # a kept zip is the primary zip of one exam

    dropped_reasons = per_value(
        a.loc[in_exam & (a["action"] == Action.DROPPED), "reason"], reason_class
    )
    by_class = dropped_reasons.value_counts()
    order = [name for name, _ in REASON_CLASSES] + [OTHER]
    dropped = {c: int(by_class[c]) for c in order if c in by_class}
    errors_in_exams = int((in_exam & (a["action"] == Action.ERROR)).sum())

    m = pd.DataFrame(
        {
            "exam_key": text_column(manifest, "exam_key"),
            "patient_id": text_column(manifest, "patient_id"),
            "split": text_column(manifest, "split"),
            "modality": text_column(manifest, "modality"),
        }
    )
    exams_with = int(m.loc[m["exam_key"] != "", "exam_key"].nunique())
    names = [*SPLITS, *sorted(set(m["split"].unique()) - set(SPLITS))]
    splits = tuple(
        SplitCounts(
            split=s or "(none)",
            patients=int(r.loc[r["patient_id"] != "", "patient_id"].nunique()),
            samples=len(r),
            cxr=int((r["modality"] == "cxr").sum()),
            ct=int((r["modality"] == "ct").sum()),
        )
        for s in names
        for r in [m[m["split"] == s]]
    )
    return Flow(
        zips_found=len(status),
        zips_skipped=count[Action.SKIPPED],
        zips_read=len(status) - count[Action.SKIPPED],
        zips_error=count[Action.ERROR],
        zips_usable=len(status) - count[Action.SKIPPED] - count[Action.ERROR],
        zips_duplicate=count[Action.DUPLICATE],
        zips_merged=count[Action.MERGED],
        exams=exams,
        exams_without_sample=exams - exams_with,
        exams_with_samples=exams_with,
        dropped=dropped,
        errors_in_exams=errors_in_exams,
        samples=len(m),
        cxr=int((m["modality"] == "cxr").sum()),
        ct=int((m["modality"] == "ct").sum()),
        patients=int(m.loc[m["patient_id"] != "", "patient_id"].nunique()),
        splits=splits,
    )


# --------------------------------------------------------------------------- drawing

_W = 760  # figure width, px
_MAIN_X, _MAIN_W = 20, 330  # the main column
_SIDE_X, _SIDE_W = 400, 340  # the exclusion column
_LINE = 17  # text line height, px
_PAD = 8
_GAP = 26  # vertical gap between boxes


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def _box(x: int, y: int, w: int, lines: Sequence[str], *, cls: str) -> tuple[str, int]:
    """A box with its text lines (first line bold); returns the SVG and the box height."""
    h = 2 * _PAD + _LINE * len(lines)
    parts = [f'<rect class="{cls}" x="{x}" y="{y}" width="{w}" height="{h}" rx="4"/>']
    for i, text in enumerate(lines):
        weight = ' font-weight="bold"' if i == 0 else ""
        ty = y + _PAD + _LINE * (i + 1) - 4
        parts.append(f'<text x="{x + 10}" y="{ty}"{weight}>{html.escape(text)}</text>')
    return "".join(parts), h


def _arrow(x1: float, y1: float, x2: float, y2: float) -> str:
    """A line from (x1, y1) to (x2, y2) with an arrowhead drawn as a polygon (no marker, so
    that the SVG holds no ``url(...)`` reference when inlined in a page)."""
    dx, dy = x2 - x1, y2 - y1
    n = math.hypot(dx, dy) or 1.0
    ux, uy = dx / n, dy / n
    bx, by = x2 - 8 * ux, y2 - 8 * uy  # base of the head, 8 px back
    pts = [(x2, y2), (bx - 4 * uy, by + 4 * ux), (bx + 4 * uy, by - 4 * ux)]
    head = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    return (
        f'<line class="arrow" x1="{x1:.1f}" y1="{y1:.1f}" x2="{bx:.1f}" y2="{by:.1f}"/>'
        f'<polygon class="head" points="{head}"/>'
    )


def _main_boxes(flow: Flow) -> list[list[str]]:
    """The main column's boxes, top to bottom: each box's lines, the first its title."""
    return [
        ["Zips found", _plural(flow.zips_found, "exam zip")],
        ["Zips read", _plural(flow.zips_read, "zip")],
        ["Zips with usable images", _plural(flow.zips_usable, "zip")],
        ["Exams", _plural(flow.exams, "exam")],
        [
            "Samples",
            f"{_plural(flow.samples, 'sample')} of {_plural(flow.patients, 'patient')}",
            f"{_plural(flow.cxr, 'radiograph')}, {_plural(flow.ct, 'CT volume')}",
            f"from {_plural(flow.exams_with_samples, 'exam')}",
        ],
    ]


def _side_boxes(flow: Flow) -> list[list[str] | None]:
    """The exclusion boxes, one beside each main box (None: no box beside it)."""
    drop_lines = [f"{k}: {v}" for k, v in flow.dropped.items()] or ["none"]
    return [
        ["Skipped: upload in progress", _plural(flow.zips_skipped, "zip")],
        ["Excluded: errors", _plural(flow.zips_error, "zip") + " with nothing usable"],
        [
            "Excluded: same exam twice",
            f"duplicates: {_plural(flow.zips_duplicate, 'zip')}",
            f"merged into a split CT exam: {_plural(flow.zips_merged, 'zip')}",
        ],
        [
            "Excluded inside exams (audit rows)",
            *drop_lines,
            f"errors: {flow.errors_in_exams}",
            f"exams with no sample: {flow.exams_without_sample}",
        ],
        None,
    ]


def _draw_columns(flow: Flow, out: list[str]) -> tuple[int, int | None]:
    """Draw the main column and its exclusions into ``out``; returns the y below the last
    row and the bottom of the last main box (px)."""
    y = 50
    prev_bottom: int | None = None
    for lines, excl in zip(_main_boxes(flow), _side_boxes(flow), strict=True):
        box, h = _box(_MAIN_X, y, _MAIN_W, lines, cls="main")
        side_h = 0
        side_svg = ""
        if excl is not None:
            side_svg, side_h = _box(_SIDE_X, y, _SIDE_W, excl, cls="side")
        if prev_bottom is not None:
            out.append(_arrow(_MAIN_X + _MAIN_W / 2, prev_bottom, _MAIN_X + _MAIN_W / 2, y))
        out.append(box)
        if excl is not None:
            mid = y + min(h, side_h) / 2
            out.append(side_svg)
            out.append(_arrow(_MAIN_X + _MAIN_W, mid, _SIDE_X, mid))
        prev_bottom = y + h
        y += max(h, side_h) + _GAP
    return y, prev_bottom


def _draw_splits(flow: Flow, y: int, prev_bottom: int | None, out: list[str]) -> int:
    """Draw one box per split under the samples box into ``out``; returns the figure's
    height (px)."""
    n = max(1, len(flow.splits))
    gap = 12
    w = (_W - 2 * _MAIN_X - gap * (n - 1)) // n
    top = y + 10
    split_h = 0
    for i, s in enumerate(flow.splits):
        x = _MAIN_X + i * (w + gap)
        box, split_h = _box(
            x,
            top,
            w,
            [s.split, _plural(s.patients, "patient"), _plural(s.samples, "sample"),
             f"{s.cxr} CXR, {s.ct} CT"],
            cls="split",
        )  # fmt: skip
        out.append(_arrow(_MAIN_X + _MAIN_W / 2, prev_bottom or y, x + w / 2, top))
        out.append(box)
    return top + split_h + 20


_STYLE = (
    "svg.hiroml-flow text{font-family:sans-serif;font-size:13px;fill:#1d2433}"
    "svg.hiroml-flow rect.main{fill:#eef3fc;stroke:#2f6fdb;stroke-width:1.5}"
    "svg.hiroml-flow rect.side{fill:#fff6e0;stroke:#8a5a00;stroke-width:1}"
    "svg.hiroml-flow rect.split{fill:#e6f4ea;stroke:#2e7d32;stroke-width:1.5}"
    "svg.hiroml-flow line.arrow{stroke:#5b6577;stroke-width:1.5}"
    "svg.hiroml-flow polygon.head{fill:#5b6577}"
    "svg.hiroml-flow text.title{font-size:16px;font-weight:bold}"
)


def flow_svg(flow: Flow, *, title: str = "hiroml dataset flow") -> str:
    """The flow as a standalone SVG document (text, no external reference).

    The main column runs top to bottom (found, read, usable, exams, samples), each exclusion
    sits to its right with an arrow from the column, and one box per split closes the figure.
    """
    out: list[str] = []
    y, prev_bottom = _draw_columns(flow, out)
    height = _draw_splits(flow, y, prev_bottom, out)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" class="hiroml-flow" '
        f'width="{_W}" height="{height}" viewBox="0 0 {_W} {height}" role="img" '
        f'aria-label="{html.escape(title)}">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        f'<rect x="0" y="0" width="{_W}" height="{height}" fill="#ffffff"/>'
        f'<text class="title" x="{_MAIN_X}" y="28">{html.escape(title)}</text>'
        + "".join(out)
        + "</svg>\n"
    )
