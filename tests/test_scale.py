"""Work that grows with the dataset, not with the dataset times its history: the report's
representativeness tables of a manifest delivered over many weeks."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from hiroml.report import representativeness as rp


def _weekly_manifest(n: int, weeks: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    start = dt.date(2020, 1, 4)
    week = rng.integers(0, weeks, n)
    return pd.DataFrame(
        {
            "sample_key": [f"s{i:06d}" for i in range(n)],
            "patient_group": [f"g{i // 2}" for i in range(n)],
            "patient_id": [f"{i // 2}" for i in range(n)],
            "split": rng.choice(["train", "val", "test"], n),
            "batch": [
                f"CXR-UPDATE-{start + dt.timedelta(weeks=int(w)):%Y%m%d}-COMPLETE" for w in week
            ],
            "age_years": rng.uniform(1, 95, n),
            "sex": rng.choice(["F", "M", ""], n),
            "exam_time": [pd.Timestamp(2020, 1, 1) + pd.Timedelta(days=int(d)) for d in week * 7],
            "Race": rng.choice(["A", "B", "C"], n),
        }
    )


def test_representativeness_reads_each_batch_date_once_and_each_subset_in_one_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A year of weekly deliveries: each batch folder's date is parsed once (not once per
    sample), and the distances of all weeks count each group once per attribute: each
    subset's counts come from its own groups' rows only (the joint attribute's texts built
    once, not once per week)."""
    m = _weekly_manifest(4000, 52)
    parsed: list[str] = []
    week_of = rp.delivery_week
    monkeypatch.setattr(rp, "delivery_week", lambda b: parsed.append(b) or week_of(b))
    counted: list[int] = []  # the rows each subset's count reads

    class Numpy:  # numpy as the module sees it, its bincount counted
        def __getattr__(self, name: str) -> object:
            return getattr(np, name)

        def bincount(self, x: np.ndarray, **k: int) -> np.ndarray:
            counted.append(len(x))
            return np.bincount(x, **k)

    monkeypatch.setattr(rp, "np", Numpy())
    rep = rp.representativeness(m)
    assert len(parsed) == 2 * m["batch"].nunique()  # groups' weeks, samples' weeks
    assert len(rep.week_distance) > 40 and rep.patients == 2000
    per_attribute = len(rep.attributes) + 1  # the attributes and the joint one
    subsets = len(rep.split_distance) + len(rep.week_distance)
    assert len(counted) == subsets * per_attribute
    # splits and weeks each part the groups: every group read once per attribute and parting
    assert sum(counted) <= 2 * per_attribute * rep.patients
    # the same values as a subset counted on its own
    week = sorted(rep.week_distance)[7]
    groups = rp.group_table(m)
    values = groups["sex"].astype(str)
    part = (
        values[groups["week"] == week]
        .value_counts()
        .reindex(values.value_counts().index, fill_value=0)
    )
    assert rep.week_distance[week]["sex"] == rp.jensen_shannon(
        part.to_numpy(), values.value_counts().to_numpy()
    )
