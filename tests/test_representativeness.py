"""Representativeness over time (hiroml.report.representativeness): the Jensen-Shannon
distance against hand-computed values, the week-by-split tables of a planted manifest, and
the section of the report and the card of the tiny build."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from hiroml.report import representativeness as rp
from hiroml.vocab import CARD_NAME, REPORT_NAME


def test_jensen_shannon_matches_the_hand_computed_values() -> None:
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4); KL(p||m) = log2(4/3),
    # KL(q||m) = 1/2 log2(2/3) + 1/2 log2(2); JSD = (0.4150375 + 0.2075187) / 2 = 0.3112781
    assert rp.jensen_shannon([1, 0], [0.5, 0.5]) == pytest.approx(0.5579230, abs=1e-7)
    assert rp.jensen_shannon([0.5, 0.5], [1, 0]) == pytest.approx(0.5579230, abs=1e-7)
    assert rp.jensen_shannon([3, 1], [6, 2]) == 0.0  # counts are normalised
    assert rp.jensen_shannon([1, 0], [0, 1]) == 1.0  # base 2: disjoint is 1
    # p = (1/4, 3/4), q = (3/4, 1/4): m = (1/2, 1/2), both KL = 1 - H(1/4) = 0.1887219
    assert rp.jensen_shannon([1, 3], [3, 1]) == pytest.approx(math.sqrt(0.1887219), abs=1e-6)
    with pytest.raises(ValueError, match="different shapes"):
        rp.jensen_shannon([1, 0], [1, 0, 0])
    with pytest.raises(ValueError, match="positive sum"):
        rp.jensen_shannon([0, 0], [1, 0])


def _planted() -> pd.DataFrame:
    """Four patient groups: two women in train delivered in week 19 (one of them again in
    week 21), two men in test delivered in week 20; race given by the clinical table."""
    rows = [
        # group, split, batch, age, sex, exam day, race
        ("g1", "train", "CXR-UPDATE-20200509-COMPLETE", 30.0, "F", 1, "Black"),
        ("g1", "train", "CXR-UPDATE-20200523-COMPLETE", 30.0, "F", 20, "Black"),
        ("g2", "train", "CXR-UPDATE-20200510-COMPLETE", 70.0, "F", 2, "White"),
        ("g3", "test", "CT-UPDATE-20200512-COMPLETE", 30.0, "M", 3, "Black"),
        ("g4", "test", "CT-UPDATE-20200512-COMPLETE", None, "m", 4, None),
    ]
    return pd.DataFrame(
        {
            "sample_key": [f"s{i}" for i in range(len(rows))],
            "patient_group": [r[0] for r in rows],
            "patient_id": [r[0][1:] for r in rows],
            "split": [r[1] for r in rows],
            "batch": [r[2] for r in rows],
            "age_years": [r[3] for r in rows],
            "sex": [r[4] for r in rows],
            "exam_time": [pd.Timestamp(2020, 4, r[5]) for r in rows],
            "Race": [r[6] for r in rows],
        }
    )


def test_week_by_split_counts_and_distances_of_a_planted_manifest() -> None:
    rep = rp.representativeness(_planted())
    assert rep.attributes == ("age_band", "sex", "Race") and rep.patients == 4
    weekly = rep.weekly.set_index(["week", "split"])
    # 2020-05-09 and 05-10 are Saturday and Sunday of ISO week 19; 05-12 is in week 20
    assert weekly.loc[("2020-W19", "train"), "patients"] == 2
    assert weekly.loc[("2020-W19", "train"), "samples"] == 2
    assert weekly.loc[("2020-W19", "train"), "age_band"] == {"18-39": 1, "60-79": 1}
    assert weekly.loc[("2020-W20", "test"), "sex"] == {"M": 2}
    assert weekly.loc[("2020-W20", "test"), "Race"] == {"Black": 1, "<missing>": 1}
    # g1's second delivery: a sample of week 21, no new patient
    assert weekly.loc[("2020-W21", "train"), ["patients", "samples"]].tolist() == [0, 1]
    # sex: train (F, F) against all (F, F, M, M) -> p = (1, 0), q = (1/2, 1/2)
    assert rep.split_distance["train"]["sex"] == pytest.approx(0.5579230, abs=1e-7)
    assert rep.week_distance["2020-W20"]["sex"] == pytest.approx(0.5579230, abs=1e-7)
    # age band of test (18-39, missing) against all (18-39 x2, 60-79, missing)
    expected = rp.jensen_shannon([1, 0, 1], [2, 1, 1])
    assert rep.split_distance["test"]["age_band"] == pytest.approx(expected)
    # joint: the four groups are four distinct combinations; train holds two of them
    assert rep.split_distance["train"][rp.JOINT] == pytest.approx(
        rp.jensen_shannon([1, 1, 0, 0], [1, 1, 1, 1])
    )
    assert "2020-W21" not in rep.week_distance  # no patient first delivered that week
    totals = rep.totals.set_index("split")
    assert totals.loc["train", ["patients", "samples"]].tolist() == [2, 3]
    assert totals.loc["train", "Race"] == {"Black": 1, "White": 1}
    assert totals.loc["test", "age_band"] == {"18-39": 1, "<missing>": 1}
    assert rep.split_distance.keys() == {"train", "test"}


def test_distances_count_each_subset_as_a_cross_tabulation_does() -> None:
    """Each subset's counts of each attribute's values (and of their joint values), in the
    order of the whole's value counts, are those of ``pandas.crosstab``: missing values and
    a group without a subset are not counted, a subset without groups has no distance."""
    groups = pd.DataFrame(
        {
            "split": ["train", "train", "val", "test", None, "val", "train"],
            "sex": ["F", "M", None, "F", "M", "F", "F"],
            "age_band": ["18-39", "40-59", "40-59", None, "60-79", "60-79", "18-39"],
        }
    )
    names = ["train", "val", "test", "never"]
    attributes = ("sex", "age_band")
    got = rp._distances(groups, groups["split"], names, attributes)
    texts = {a: groups[a].astype(str) for a in attributes}
    joint = texts["sex"] + " / " + texts["age_band"]
    for attr, values in [*texts.items(), (rp.JOINT, joint)]:
        whole = values.value_counts()
        per = pd.crosstab(groups["split"].astype(str), values)
        per = per.reindex(columns=whole.index, fill_value=0)
        for name in names:
            if name not in per.index or not per.loc[name].sum():
                assert got[name][attr] is None, (name, attr)
                continue
            want = rp.jensen_shannon(per.loc[name].to_numpy(), whole.to_numpy())
            assert got[name][attr] == want, (name, attr)
    assert got["train"]["sex"] is not None and got["never"] == dict.fromkeys(got["never"])


def test_the_plot_is_plain_svg_with_a_point_per_week_and_attribute() -> None:
    rep = rp.representativeness(_planted())
    svg = rp.distance_svg(rep)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<script" not in svg and "href" not in svg and " on" not in svg
    assert len(re.findall(r"<circle ", svg)) == 2 * 4  # 2 weeks x (3 attributes + joint)
    assert "2020-W19 sex: 0.558" in svg


def test_a_long_feed_folds_its_weekly_table_and_thins_the_plots_labels() -> None:
    weeks = [pd.Timestamp(2020, 1, 6) + pd.Timedelta(weeks=i) for i in range(30)]
    manifest = pd.DataFrame(
        {
            "sample_key": [f"s{i}" for i in range(30)],
            "patient_group": [f"g{i}" for i in range(30)],
            "split": ["train" if i % 3 else "test" for i in range(30)],
            "batch": [f"CXR-UPDATE-{d:%Y%m%d}-COMPLETE" for d in weeks],
            "age_years": [20.0 + i for i in range(30)],
            "sex": ["F" if i % 2 else "M" for i in range(30)],
        }
    )
    section = rp.html_section(manifest)
    assert "<details><summary>30 week-by-split rows</summary>" in section
    svg = section[section.index("<svg") : section.index("</svg>")]
    assert len(re.findall(r">2020-W\d\d</text>", svg)) == 10  # every third of 30 weeks
    assert len(re.findall(r"<circle ", svg)) == 30 * 3


def test_the_report_and_the_card_show_it_for_the_tiny_build(tiny_build_clinical: Path) -> None:
    out = tiny_build_clinical
    manifest = pd.read_parquet(out / "manifest.parquet")
    rep = rp.representativeness(manifest)
    assert rep.weekly["patients"].sum() == manifest["patient_group"].nunique() == rep.patients
    assert rep.weekly["samples"].sum() == len(manifest)
    for d in [*rep.split_distance.values(), *rep.week_distance.values()]:
        assert all(v is None or 0.0 <= v <= 1.0 for v in d.values())
    page = (out / REPORT_NAME).read_text(encoding="utf-8")
    section = page[page.index('<section id="over-time">') :]
    section = section[: section.index("</section>")]
    assert '<a href="#over-time">' in page and "<svg" in section and "<script" not in section
    for week in rep.week_distance:
        assert f"<td>{week}</td>" in section
    card = (out / CARD_NAME).read_text(encoding="utf-8")
    part = card[card.index("## Representativeness over time") :]
    part = part[: part.index("\n## ", 5)]
    train = rep.split_distance["train"][rp.JOINT]
    assert train is not None and "| split train | " in part and f"{train:.3f} |" in part
    assert part.count("\n| 2020-W") == len(rep.weekly)
    assert part.count("\n| all weeks | ") == len(rep.totals) == len(rep.split_distance)
