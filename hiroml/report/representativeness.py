"""Representativeness over time: who each delivery week and each split holds, and how far
each lies from the whole dataset.

The unit is the patient group (the unit splits deal). A group's attributes are those of its
first exam (by exam time): ``age_band`` (:func:`hiroml.exams.splits.age_band` of
(0010,1010) Patient's Age, the manifest's ``age_years``), ``sex`` ((0010,0040) Patient's Sex:
``F``, ``M``, ``O``) and, where the clinical table has them, its race and ethnicity columns
(any joined column whose name contains ``race`` or ``ethnic``). A group's delivery week is
the ISO week (Monday to Sunday) of the earliest batch date (``{CXR|CT}-UPDATE-YYYYMMDD``)
among its samples; a sample's is that of its own batch.

The distance of a subset (a split, a week's new groups) from the whole is the Jensen-Shannon
distance, base 2: ``sqrt(JSD(p, q))`` with ``JSD = (KL(p||m) + KL(q||m)) / 2``,
``m = (p + q) / 2`` and logarithms base 2, so it lies in [0, 1] (0: the same distribution,
1: no category in common). It is computed per attribute and over their joint combination,
as MIDRC's diversity calculator tracks its open data commons (github MIDRC/
MIDRC_Diversity_Calculator). A missing value is a category of its own (``<missing>``).
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hiroml.exams.splits import AGE_BANDS, MISSING
from hiroml.report.flow import text_column
from hiroml.store.tables import OWN_COLUMNS
from hiroml.vocab import SPLITS

#: A batch folder's date (``{CXR|CT}-UPDATE-YYYYMMDD-...``).
BATCH_DATE = re.compile(r"-UPDATE-(\d{8})-", re.IGNORECASE)
_DEMOGRAPHIC_COLUMN = re.compile(r"race|ethnic", re.IGNORECASE)
#: The name of the distance over the combination of every attribute.
JOINT = "joint"


def jensen_shannon(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """The Jensen-Shannon distance (base 2, in [0, 1]) of two distributions over the same
    categories; ``p`` and ``q`` are counts or probabilities (each normalised to sum 1).
    ValueError for different lengths, negative values or an all-zero vector."""
    a = np.asarray(p, dtype=np.float64)
    b = np.asarray(q, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"distributions of different shapes: {a.shape} and {b.shape}")
    if (a < 0).any() or (b < 0).any() or a.sum() <= 0 or b.sum() <= 0:
        raise ValueError("a distribution needs non-negative values with a positive sum")
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return math.sqrt(max(0.0, min(1.0, (kl(a) + kl(b)) / 2)))


def delivery_week(batch: str) -> str:
    """The ISO week (``2020-W19``) of a batch folder's date, ``<missing>`` when the name
    carries none."""
    m = BATCH_DATE.search(batch)
    if m is None:
        return MISSING
    try:
        day = dt.datetime.strptime(m[1], "%Y%m%d").date()
    except ValueError:
        return MISSING
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def _weeks(manifest: pd.DataFrame) -> pd.Series:
    """:func:`delivery_week` of each sample's batch, computed once per batch folder."""
    batches = text_column(manifest, "batch")
    return batches.map({b: delivery_week(b) for b in batches.unique()})


def demographic_columns(manifest: pd.DataFrame) -> list[str]:
    """The clinical table's race and ethnicity columns joined to ``manifest``, by name."""
    return sorted(
        str(c)
        for c in manifest.columns
        if c not in OWN_COLUMNS and _DEMOGRAPHIC_COLUMN.search(str(c))
    )


def _age_bands(years: pd.Series) -> pd.Series:
    """:func:`hiroml.exams.splits.age_band` of each age (years), column-wise: the first band
    whose top exceeds the age, ``80+`` past the last, ``<missing>`` for none."""
    ages = pd.to_numeric(years, errors="coerce").astype(float).to_numpy()
    tops = np.array([top for top, _ in AGE_BANDS])
    names = np.array([*(name for _, name in AGE_BANDS), "80+", MISSING], dtype=object)
    band = np.searchsorted(tops, ages, side="right")
    band[np.isnan(ages)] = len(names) - 1
    return pd.Series(names[band], index=years.index, dtype=object)


def group_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per patient group: ``group``, ``split``, ``week`` and the attributes (see the
    module docstring), in group order."""
    attrs = demographic_columns(manifest)
    group = text_column(manifest, "patient_group")
    if not group.ne("").any():
        group = text_column(manifest, "patient_id")
    frame = pd.DataFrame(
        {
            "group": group,
            "split": text_column(manifest, "split"),
            "week": _weeks(manifest),
            "time": pd.to_datetime(manifest.get("exam_time"), errors="coerce")
            if "exam_time" in manifest.columns
            else pd.NaT,
            "key": text_column(manifest, "sample_key"),
            "age_band": _age_bands(manifest["age_years"])
            if "age_years" in manifest.columns
            else MISSING,
            "sex": text_column(manifest, "sex").str.strip().str.upper().replace("", MISSING),
            **{c: text_column(manifest, c).replace("", MISSING) for c in attrs},
        }
    )
    frame = frame[frame["group"] != ""]
    first = frame.sort_values(["group", "time", "key"], na_position="last").drop_duplicates("group")
    weeks = frame[frame["week"] != MISSING].groupby("group")["week"].min()
    first = first.assign(week=first["group"].map(weeks).fillna(MISSING))
    return first[["group", "split", "week", "age_band", "sex", *attrs]].reset_index(drop=True)


@dataclass(frozen=True, slots=True)
class Representativeness:
    """The tables of :func:`representativeness`.

    ``weekly``: one row per (week, split) with ``patients`` (groups first delivered that
    week), ``samples`` (delivered that week) and one column per attribute holding its counts
    ``{value: patients}``. ``totals``: the same per split over all weeks. ``split_distance``
    and ``week_distance``: ``{split or week: {attribute or "joint": distance}}`` (None for a
    subset with no patient).
    """

    attributes: tuple[str, ...]
    weekly: pd.DataFrame
    totals: pd.DataFrame
    split_distance: dict[str, dict[str, float | None]]
    week_distance: dict[str, dict[str, float | None]]
    patients: int


_AGE_ORDER = [name for _, name in AGE_BANDS] + ["80+"]


def _ordered(counts: dict[str, int]) -> dict[str, int]:
    """Counts in age-band order, other values by name, ``<missing>`` last."""

    def rank(value: str) -> tuple[int, int, str]:
        if value == MISSING:
            return (2, 0, value)
        if value in _AGE_ORDER:
            return (0, _AGE_ORDER.index(value), value)
        return (1, 0, value)

    return {k: counts[k] for k in sorted(counts, key=rank)}


def _distances(
    groups: pd.DataFrame, by: pd.Series, names: Sequence[str], attributes: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    """``{name: {attribute or JOINT: distance}}`` of the groups whose ``by`` (a column of
    ``groups``) is ``name`` from all groups, for each of ``names``: each attribute's values
    and counts computed once, then each subset's counts of them by one ``bincount`` of the
    values' positions in that order (the cost grows with the groups, not with groups times
    subsets)."""
    out: dict[str, dict[str, float | None]] = {name: {} for name in names}
    texts = {a: groups[a].astype(str) for a in attributes}
    joint = pd.Series("", index=groups.index, dtype=object)
    for i, a in enumerate(attributes):
        joint = texts[a] if i == 0 else joint + " / " + texts[a]
    subset = by.astype(str).to_numpy()
    rows = {name: np.flatnonzero(subset == name) for name in names}
    for attr in [*attributes, JOINT]:
        values = joint if attr == JOINT else texts[attr]
        whole = values.value_counts()
        at = whole.index.get_indexer(values)  # each group's value, as its place in ``whole``
        for name in names:
            held = at[rows[name]]
            part = np.bincount(held[held >= 0], minlength=len(whole))  # -1: missing, uncounted
            out[name][attr] = jensen_shannon(part, whole.to_numpy()) if part.sum() else None
    return out


#: The latest result of :func:`representativeness`: (the manifest, weakly held; its columns
#: and length; the result). The report, the card, CLAIM.md and croissant.json all ask for the
#: same manifest's tables: they are computed once.
_LATEST: list[tuple[weakref.ref[pd.DataFrame], tuple[Any, ...], Representativeness]] = []


def representativeness(manifest: pd.DataFrame) -> Representativeness:
    """Patients and samples per delivery week and split, with their attributes, and the
    Jensen-Shannon distance of each split's and each week's groups from all groups. Asked
    again for the same manifest object, with the same columns and length, it answers the
    result it gave (the tables are not to be changed by the caller)."""
    shape = (tuple(manifest.columns), len(manifest))
    for ref, seen, rep in _LATEST:
        if ref() is manifest and seen == shape:
            return rep
    rep = _representativeness(manifest)
    _LATEST[:] = [(weakref.ref(manifest), shape, rep)]
    return rep


def _cell_counts(groups: pd.DataFrame, attribute: str) -> dict[tuple[str, str], dict[str, int]]:
    """``{(week, split): {value: patients}}`` of one attribute, from one grouping."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    sizes = groups.groupby(["week", "split", attribute], sort=False).size()
    for (week, split, value), n in sizes.items():
        out.setdefault((week, split), {})[value] = int(n)
    return out


def _representativeness(manifest: pd.DataFrame) -> Representativeness:
    groups = group_table(manifest)
    attributes = tuple(c for c in groups.columns if c not in ("group", "split", "week"))
    sample_week = _weeks(manifest)
    sample_split = text_column(manifest, "split")
    weeks = sorted(set(groups["week"].unique()) | set(sample_week.unique()))
    splits = [s for s in SPLITS if (groups["split"] == s).any()] + sorted(
        set(groups["split"].unique()) - set(SPLITS)
    )
    patients = groups.groupby(["week", "split"], sort=False).size().to_dict()
    delivered = pd.DataFrame({"week": sample_week, "split": sample_split}).value_counts().to_dict()
    per_cell = {a: _cell_counts(groups, a) for a in attributes}
    rows = []
    for week in weeks:
        for split in splits:
            n_patients = int(patients.get((week, split), 0))
            n_samples = int(delivered.get((week, split), 0))
            if not n_patients and not n_samples:
                continue
            counts = {a: _ordered(per_cell[a].get((week, split), {})) for a in attributes}
            rows.append(
                {"week": week, "split": split, "patients": n_patients, "samples": n_samples}
                | counts
            )
    columns = ["week", "split", "patients", "samples", *attributes]
    weekly = pd.DataFrame(rows, columns=columns)
    totals = [
        {
            "week": "all weeks",
            "split": split,
            "patients": int((groups["split"] == split).sum()),
            "samples": int((sample_split == split).sum()),
            **{
                a: _ordered(groups.loc[groups["split"] == split, a].value_counts().to_dict())
                for a in attributes
            },
        }
        for split in splits
    ]
    return Representativeness(
        attributes=attributes,
        weekly=weekly,
        totals=pd.DataFrame(totals, columns=columns),
        split_distance=_distances(groups, groups["split"], splits, attributes),
        week_distance=_distances(
            groups, groups["week"], [w for w in weeks if (groups["week"] == w).any()], attributes
        ),
        patients=len(groups),
    )


# --------------------------------------------------------------------------- rendering


def _counts_text(counts: object) -> str:
    if not isinstance(counts, Mapping) or not counts:
        return "—"
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _distance_text(d: float | None) -> str:
    return "—" if d is None else f"{d:.3f}"


def weekly_rows(rep: Representativeness, *, totals: bool = False) -> list[list[str]]:
    """The week-by-split table (``totals``: the per-split one) as text cells: week, split,
    patients, samples, attributes."""
    table = rep.totals if totals else rep.weekly
    return [
        [
            str(r["week"]),
            str(r["split"]),
            str(r["patients"]),
            str(r["samples"]),
            *(_counts_text(r[a]) for a in rep.attributes),
        ]
        for r in table.to_dict("records")
    ]


def distance_rows(rep: Representativeness) -> list[list[str]]:
    """The distance table as text cells: ``split <name>`` and ``week <name>`` rows, one
    column per attribute and the joint one."""
    rows = []
    for kind, table in (("split", rep.split_distance), ("week", rep.week_distance)):
        for name, d in table.items():
            rows.append(
                [f"{kind} {name}", *(_distance_text(d[a]) for a in [*rep.attributes, JOINT])]
            )
    return rows


_COLOURS = ("#2f6fdb", "#d0679d", "#2e7d32", "#8a5a00", "#6a3d9a", "#1d2433")


def distance_svg(rep: Representativeness, *, width: int = 640, height: int = 240) -> str:
    """A line plot of each week's Jensen-Shannon distance from the whole (y: 0 to 1), one
    line per attribute and the joint one; plain SVG with ``<title>`` tooltips, no script."""
    weeks = list(rep.week_distance)
    names = [*rep.attributes, JOINT]
    left, right, top, bottom = 44, 120, 12, 40
    pw, ph = width - left - right, height - top - bottom

    def x(i: int) -> float:
        pad = 32  # the first and last week's labels clear the y axis and the legend
        return left + (pw / 2 if len(weeks) < 2 else pad + (pw - 2 * pad) * i / (len(weeks) - 1))

    def y(d: float) -> float:
        return top + ph * (1 - d)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img" '
        'aria-label="Jensen-Shannon distance of each delivery week from the whole">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#dde2ea"/>',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            'stroke="#eef1f6"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
        )
    step = max(1, -(-len(weeks) // 12))  # at most 12 week labels
    for i in range(0, len(weeks), step):
        parts.append(
            f'<text x="{x(i):.1f}" y="{top + ph + 16}" text-anchor="middle">'
            f"{html.escape(weeks[i])}</text>"
        )
    parts.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">'
        "delivery week (patients first delivered)</text>"
    )
    for n, name in enumerate(names):
        colour = _COLOURS[n % len(_COLOURS)]
        pts = [
            (x(i), y(d), w, d)
            for i, w in enumerate(weeks)
            if (d := rep.week_distance[w][name]) is not None
        ]
        if len(pts) > 1:
            line = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in pts)
            parts.append(
                f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
            )
        for px, py, w, d in pts:
            parts.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"><title>'
                f"{html.escape(w)} {html.escape(name)}: {d:.3f}</title></circle>"
            )
        ly = top + 14 * n + 8
        parts.append(
            f'<line x1="{left + pw + 10}" x2="{left + pw + 26}" y1="{ly}" y2="{ly}" '
            f'stroke="{colour}" stroke-width="2"/><text x="{left + pw + 30}" '
            f'y="{ly + 4}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


#: The note under the tables, in the report and the card.
NOTE = (
    "Patients are patient groups, counted in the week their first sample was delivered, with "
    "the age band and sex of their first exam; samples are counted in the week of their own "
    "batch. Distance: the Jensen-Shannon distance (base 2; 0 = the same distribution as all "
    "patients, 1 = nothing in common) of the split's or the week's patients from all patients, "
    "per attribute and over their combination (joint)."
)


#: The week-by-split table is folded away in the report beyond this many rows.
FOLD_ROWS = 24


def html_section(manifest: pd.DataFrame) -> str:
    """The report's "Representativeness over time" section (``id="over-time"``): the plot,
    the distances, the splits over all weeks, then the week-by-split table (folded away
    beyond :data:`FOLD_ROWS` rows)."""
    from hiroml.report.html import _note, _table

    rep = representativeness(manifest)
    title = "<h2>Representativeness over time</h2>"
    if not rep.patients:
        return f'<section id="over-time">{title}{_note("No patient.")}</section>'
    inline = distance_svg(rep).replace(' xmlns="http://www.w3.org/2000/svg"', "", 1)
    heads = ["week", "split", "patients", "samples", *(a.replace("_", " ") for a in rep.attributes)]
    weekly = f'<div class="scroll">{_table(heads, weekly_rows(rep))}</div>'
    if len(rep.weekly) > FOLD_ROWS:
        weekly = (
            f"<details><summary>{len(rep.weekly)} week-by-split rows</summary>{weekly}</details>"
        )
    body = (
        f'<div class="flow">{inline}</div>'
        "<h4>Jensen-Shannon distance from all patients</h4>"
        f'<div class="scroll">{_table(["subset", *heads[4:], JOINT], distance_rows(rep))}</div>'
        f'<h4>Patients and samples per split and week</h4><div class="scroll">'
        f"{_table(heads, weekly_rows(rep, totals=True))}</div>{weekly}{_note(html.escape(NOTE))}"
    )
    return f'<section id="over-time">{title}{body}</section>'


def markdown_section(manifest: pd.DataFrame) -> str:
    """The card's representativeness tables (Markdown): the splits over all weeks and week by
    week, then the distances."""
    rep = representativeness(manifest)
    if not rep.patients:
        return "No patient."
    heads = ["week", "split", "patients", "samples", *(a.replace("_", " ") for a in rep.attributes)]
    return "\n\n".join(
        [
            markdown_table(heads, [*weekly_rows(rep, totals=True), *weekly_rows(rep)]),
            "Jensen-Shannon distance from all patients:",
            markdown_table(["subset", *heads[4:], JOINT], distance_rows(rep)),
            NOTE,
        ]
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of text cells (``|`` escaped)."""
    cells = [[c.replace("|", "\\|") for c in r] for r in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in cells])
