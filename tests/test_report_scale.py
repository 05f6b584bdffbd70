"""The report over many samples: bounded in size, exact in its totals, computed column-wise
(the column helpers give what the cell-by-cell ones gave)."""

from __future__ import annotations

import re
from enum import StrEnum

import numpy as np
import pandas as pd

from hiroml.exams.splits import age_band
from hiroml.report import page as report_page
from hiroml.report.flow import text_column
from hiroml.report.html import (
    MAX_REASON_ROWS,
    MAX_REASONS,
    MAX_TABLE_ROWS,
    _keys,
    _text,
    list_lengths,
)
from hiroml.report.representativeness import _age_bands
from hiroml.report.sections import reason_group, reason_groups
from hiroml.store.reader import cell_list, is_missing

N_REASONS = MAX_REASONS + 30  # duplicate reasons, more than the page shows


def _batch(i: int) -> str:
    return f"CXR-UPDATE-202001{1 + i % 28:02d}-COMPLETE"


def _tables(n: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A manifest of ``n`` samples (one per patient, a tenth of them orphans, every tenth
    group linking two ids), and an audit with ``n`` kept rows, ``n // 2`` errors of one cause,
    ``n // 2`` duplicates of :data:`N_REASONS` reasons, the newest batch last in audit order."""
    rng = np.random.default_rng(0)
    split = np.array(["train", "val", "test"])[np.arange(n) % 3]
    manifest = pd.DataFrame(
        {
            "sample_key": [f"s{i:06d}" for i in range(n)],
            "shard": "shards/cxr-0.h5",
            "modality": "cxr",
            "patient_id": [f"P{i:06d}" for i in range(n)],
            "source_patient_id": [f"P{i:06d}" for i in range(n)],
            "patient_group": [f"G{i:06d}" for i in range(n)],
            "split": split,
            "exam_key": [f"E{i:06d}" for i in range(n)],
            "batch": [_batch(i) for i in range(n)],
            "view": "PA",
            "age_years": rng.integers(1, 95, n).astype(float),
            "sex": np.array(["F", "M", ""])[np.arange(n) % 3],
            "orphan": np.arange(n) % 10 == 0,
        }
    ).astype({c: "str" for c in ("sample_key", "patient_id", "split", "batch", "sex")})
    patients = pd.DataFrame(
        {
            "patient_group": manifest["patient_group"],
            "patient_ids": [[f"P{i:06d}", f"Q{i:06d}"] if i % 10 == 0 else [f"P{i:06d}"]
                            for i in range(n)],
            "split": split,
        }
    )  # fmt: skip
    half = n // 2
    rows = [
        *({"zip": f"k{i}.zip", "batch": _batch(i), "action": "kept", "reason": ""}
          for i in range(n)),
        *({"zip": f"e{i}.zip", "batch": _batch(i), "action": "error",
           "reason": f"e{i}.zip: 1_PA/{i}.dcm: not a DICOM file"} for i in range(half)),
        *({"zip": f"d{i}.zip", "batch": _batch(i), "action": "duplicate",
           "reason": f"cross-batch duplicate, kind {i % N_REASONS}"} for i in range(half)),
    ]  # fmt: skip
    audit = pd.DataFrame(rows).astype("str")
    audit["kept_as"] = ""
    return manifest, patients, audit


def _page(n: int) -> str:
    manifest, patients, audit = _tables(n)
    return report_page.render_report(
        manifest=manifest, patients=patients, audit=audit, summary={"clinical": "c.csv"}
    )


def _section(text: str, anchor: str) -> str:
    start = text.index(f'id="{anchor}"')
    return text[start : text.index("</section>", start)]


def test_a_report_over_many_samples_is_bounded_and_its_totals_exact() -> None:
    text = _page(5000)
    assert len(text.encode()) < 400_000
    # past the cuts, the page does not grow with the samples: twice as many, a few bytes more
    assert len(_page(10_000).encode()) < len(text.encode()) + 2_000

    errors = _section(text, "errors")
    assert "<h2>Errors (2500)</h2>" in errors
    assert '<summary><span class="n">2500</span> not a DICOM file</summary>' in errors
    assert errors.count("<tr>") == MAX_REASON_ROWS + 1  # the shown rows and the header
    assert f"{2500 - MAX_REASON_ROWS} rows more, not shown" in errors
    # the newest batch's rows come first: the 28th of the month, then the 27th
    first = re.findall(r"<td>(CXR-UPDATE-\d+-COMPLETE)</td>", errors)
    assert first[:2] == ["CXR-UPDATE-20200128-COMPLETE"] * 2

    decisions = _section(text, "decisions")
    assert "<td>duplicate</td><td>2500</td>" in decisions
    shown = [int(n) for n in re.findall(r'<span class="n">(\d+)</span>', decisions)]
    assert len(shown) == MAX_REASONS
    more = re.search(r"(\d+) more reasons \((\d+) rows\), not shown", decisions)
    assert more is not None
    assert int(more[1]) == N_REASONS - MAX_REASONS
    assert sum(shown) + int(more[2]) == 2500  # every row counted once

    groups = _section(text, "groups")
    assert "Linked patient ids (500)" in groups
    assert groups.count("<tr>") == MAX_TABLE_ROWS + 1
    assert f"The first {MAX_TABLE_ROWS} of 500 patient groups are shown" in groups
    orphans = _section(text, "orphans")
    assert "Orphans (500)" in orphans
    assert f"The first {MAX_TABLE_ROWS} of 500 patients are shown" in orphans

    counts = _section(text, "counts")
    assert '<div class="v">5000</div><div class="k">samples</div>' in counts
    assert '<div class="v">2500</div><div class="k">audit rows: error</div>' in counts


class _Word(StrEnum):
    A = "a"


def test_column_helpers_match_the_cell_by_cell_ones() -> None:
    cells = ["x", None, np.nan, "", _Word.A, pd.NA, "é"]
    for s in (
        pd.Series(cells, dtype=object),
        pd.Series(["x", None, "y"], dtype="str"),
        pd.Series([None, np.nan], dtype=object),  # every value missing
    ):
        by_cell = [v if type(v) is str else _text(v) if not is_missing(v) else "" for v in s]
        assert _keys(s).tolist() == by_cell
        assert all(type(v) is str for v in _keys(s))
        plain = ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in s]
        frame = pd.DataFrame({"c": s})
        assert text_column(frame, "c").replace({"<NA>": ""}).tolist() == [
            "" if p == "<NA>" else p for p in plain
        ]
    mixed = pd.Series([1.0, "a", None, True], dtype=object)  # not text: cell by cell
    assert _keys(mixed).tolist() == ["1", "a", "", "yes"]

    lists = pd.Series([["a", "b"], None, [], np.array(["x"]), "lone", np.nan], dtype=object)
    assert list_lengths(lists).tolist() == [len(cell_list(v)) for v in lists]
    assert list_lengths(pd.Series([["a"], ["b", "c"], None], dtype=object)).tolist() == [1, 2, 0]

    ages = pd.Series([None, 0, 17.9, 18, 39.99, 40, 79.9, 80, 120, np.inf, -1, "x"], dtype=object)
    expected = [age_band(a) for a in pd.to_numeric(ages, errors="coerce").astype(float)]
    assert _age_bands(ages).tolist() == expected


def test_reason_groups_column_wise_match_reason_group_one_by_one() -> None:
    rng = np.random.default_rng(1)
    pieces = [
        "a.zip: ", "b c.zip: ", "1_PA/1.dcm: ", "dir\x0bx: ", "x\x1cy: ", "it's: ", ": ",
        "series 1.2.840.10008.5.1: ", "1.2.3", "v1.2.3", "1.2.3_x", "12.34", " 1.2.3.4 ",
        "not a DICOM file", "é.zip: ", "ü/1.dcm: ", "١.٢.٣", "\u2003x: ", "\t", "\x1f", " ",
    ]  # fmt: skip
    chars = [chr(c) for c in range(128)]
    reasons = [
        "".join(rng.choice(pieces, size=rng.integers(1, 5)))
        + "".join(rng.choice(chars, size=rng.integers(0, 4)))
        for _ in range(3000)
    ]
    reasons += ["", "x.zip: y.dcm: z", " 1.2.3 ", "\x1c1.2.3\x1f", "café 1.2.3 au lait"]
    for action in ("error", "duplicate", "dropped"):
        got = reason_groups(action, pd.Series(reasons, dtype=object)).tolist()
        assert got == [reason_group(action, r) for r in reasons]
    same = reason_groups("error", pd.Series(reasons, dtype="str"))
    assert same.tolist() == [reason_group("error", r) for r in reasons]
