"""splits.strategy: hash, stratified and temporal, dealt by patient group, stable across
weekly builds (earlier patients keep their split), recorded in build.json and the report."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import MakeCfg

from hiroml import pipeline as build
from hiroml.config import SplitsConfig, TemporalConfig
from hiroml.errors import ConfigError
from hiroml.exams.splits import age_band, assign_splits, modality_present, temporal_cutoff
from hiroml.store.reader import read_manifest
from hiroml.versions.listing import find_version
from hiroml.vocab import BUILD_JSON, REPORT_NAME, SPLITS

GROUPS = [f"G{i:05d}" for i in range(4000)]
STRATIFIED = SplitsConfig(strategy="stratified", stratify="modality")


def _strata(groups: list[str]) -> dict[str, str]:
    # strata of very different sizes: 3, 4, 7, 30 and the rest
    sizes = {"a": 3, "b": 4, "c": 7, "d": 30}
    out, i = {}, 0
    for name, n in sizes.items():
        out.update({g: name for g in groups[i : i + n]})
        i += n
    out.update({g: "rest" for g in groups[i:]})
    return out


def test_stratified_gives_every_stratum_of_three_or_more_each_split() -> None:
    strata = _strata(GROUPS)
    got = assign_splits(GROUPS, STRATIFIED, strata=strata)
    assert got == assign_splits(list(reversed(GROUPS)), STRATIFIED, strata=strata)
    assert set(got) == set(GROUPS) and set(got.values()) <= set(SPLITS)
    per = {s: Counter(got[g] for g in GROUPS if strata[g] == s) for s in set(strata.values())}
    for stratum, counts in per.items():
        assert all(counts[s] >= 1 for s in SPLITS), (stratum, counts)
    # a large stratum meets 80/10/10 within one patient group per split
    rest = per["rest"]
    n = sum(rest.values())
    for s, f in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
        assert abs(rest[s] - f * n) <= 1, rest
    # fewer groups than splits: no split is forced, the largest share wins
    two = assign_splits(["x", "y"], STRATIFIED, strata={"x": "t", "y": "t"})
    assert set(two.values()) == {"train"}


def test_stratified_keeps_earlier_groups_and_balances_the_new_ones() -> None:
    strata = _strata(GROUPS)
    first = assign_splits(GROUPS[:2000], STRATIFIED, strata=strata)
    later = assign_splits(GROUPS, STRATIFIED, strata=strata, previous=first)
    assert all(later[g] == s for g, s in first.items())
    rest = Counter(later[g] for g in GROUPS if strata[g] == "rest")
    n = sum(rest.values())
    for s, f in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
        assert abs(rest[s] - f * n) <= 2, rest


def test_temporal_puts_every_group_after_the_cutoff_in_test() -> None:
    day0 = dt.date(2020, 3, 1)
    first_seen = {g: day0 + dt.timedelta(days=i % 200) for i, g in enumerate(GROUPS)}
    cfg = SplitsConfig(strategy="temporal", temporal=TemporalConfig(test_after="2020-08-01"))
    cutoff = temporal_cutoff(first_seen.values(), cfg)
    assert cutoff == dt.date(2020, 8, 1)
    got = assign_splits(GROUPS, cfg, first_seen=first_seen, cutoff=cutoff)
    for g, s in got.items():
        assert (s == "test") == (first_seen[g] > cutoff), g
    before = Counter(s for s in got.values() if s != "test")
    # train : val = 0.8 : 0.1 within 3 points
    assert abs(before["train"] / sum(before.values()) - 8 / 9) < 0.03, before
    # a later week: earlier groups keep their split even when a new cut-off would move them
    new = [f"N{i:04d}" for i in range(400)]
    first_seen.update({g: dt.date(2020, 10, 1) for g in new})
    later_cfg = SplitsConfig(strategy="temporal", temporal=TemporalConfig(test_after="2020-05-01"))
    later = assign_splits(
        GROUPS + new, later_cfg, first_seen=first_seen, cutoff=dt.date(2020, 5, 1), previous=got
    )
    assert all(later[g] == s for g, s in got.items())
    assert all(later[g] == "test" for g in new)


def test_temporal_fraction_sets_the_cutoff() -> None:
    day0 = dt.date(2020, 3, 1)
    first_seen = {g: day0 + dt.timedelta(days=i % 1000) for i, g in enumerate(GROUPS)}
    cfg = SplitsConfig(strategy="temporal", temporal=TemporalConfig(test_fraction=0.2))
    cutoff = temporal_cutoff(first_seen.values(), cfg)
    got = assign_splits(GROUPS, cfg, first_seen=first_seen, cutoff=cutoff)
    share = sum(s == "test" for s in got.values()) / len(got)
    assert abs(share - 0.2) <= 0.01, share  # ties on the cut-off day cost at most one day
    assert max(d for g, d in first_seen.items() if got[g] != "test") <= cutoff
    # without test_fraction, splits.test is the fraction
    assert temporal_cutoff(first_seen.values(), SplitsConfig(strategy="temporal")) == (
        temporal_cutoff(
            first_seen.values(),
            SplitsConfig(strategy="temporal", temporal=TemporalConfig(test_fraction=0.1)),
        )
    )


def test_stratum_values() -> None:
    assert [age_band(a) for a in (None, float("nan"), 5, 18, 39.9, 65, 80)] == [
        "<missing>", "<missing>", "<18", "18-39", "18-39", "60-79", "80+",
    ]  # fmt: skip
    assert modality_present(["cxr", "ct", "cxr"]) == "both"
    assert modality_present(["ct"]) == "ct"


def test_an_unknown_stratify_column_is_named() -> None:
    from hiroml.errors import BuildError
    from hiroml.exams.groups import _strata

    with pytest.raises(BuildError, match="'bogus' is none of age_band, sex, modality"):
        _strata(["modality", "bogus"], {}, {}, None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "random"}, r"splits.strategy='random': choose one of hash"),
        ({"strategy": "stratified"}, "needs splits.stratify"),
        ({"stratify": "icu", "strategy": "temporal"}, "add splits.strategy=stratified"),
    ],
)
def test_bad_split_settings_are_named(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SplitsConfig(**kwargs)


def test_stratify_alone_still_means_a_stratified_split() -> None:
    """Before splits.strategy existed, splits.stratify=<label> asked for a stratified split;
    it still does (the hash default gives way), so users' overrides keep working."""
    cfg = SplitsConfig(stratify="icu")
    assert cfg.strategy == "stratified" and cfg.stratify_columns == ("icu",)
    assert SplitsConfig().strategy == "hash"


def test_bad_temporal_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="test_after='2020-13-01': give a date"):
        TemporalConfig(test_after="2020-13-01")
    with pytest.raises(ConfigError, match="not both"):
        TemporalConfig(test_after="2020-06-01", test_fraction=0.1)
    with pytest.raises(ConfigError, match=r"test_fraction=1.5"):
        TemporalConfig(test_fraction=1.5)


# --------------------------------------------------------------------------- builds


def _week1(root: Path, truth: dict[str, Any], tmp: Path) -> tuple[Path, str]:
    """A copy of the tiny datamart without its last complete radiograph batch."""
    batches = [
        b["name"] for b in truth["batches"] if b["modality"] == "cxr" and b["status"] == "COMPLETE"
    ]
    last = sorted(batches)[-1]
    dm = tmp / "dm"
    shutil.copytree(root, dm, ignore=shutil.ignore_patterns(last))
    return dm, last


def _splits(out: Path) -> pd.DataFrame:
    m = read_manifest(out, columns=["patient_id", "patient_group", "split", "exam_time"])
    # every patient (and patient group) lies in one split
    assert (m.groupby("patient_id")["split"].nunique() == 1).all()
    assert (m.groupby("patient_group")["split"].nunique() == 1).all()
    return m


def _build_json(out: Path) -> dict[str, Any]:
    v = find_version(out)
    assert v is not None
    return json.loads((v.path / BUILD_JSON).read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "overrides",
    [
        ("splits.strategy=stratified", "splits.stratify=[modality,sex,age_band]"),
        ("splits.strategy=temporal", "splits.temporal.test_fraction=0.3"),
    ],
    ids=["stratified", "temporal"],
)
def test_a_strategy_keeps_earlier_patients_across_weekly_builds(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    overrides: tuple[str, ...],
) -> None:
    root, truth = tiny_datamart
    dm, last = _week1(root, truth, tmp_path)
    out = tmp_path / "out"
    build.run(make_cfg(dm, out, *overrides))
    week1 = _splits(out)
    shutil.copytree(root / last, dm / last)
    summary = build.run(make_cfg(dm, out, *overrides))
    week2 = _splits(out)
    assert len(week2) > len(week1)
    was = dict(zip(week1["patient_id"], week1["split"], strict=False))
    now = dict(zip(week2["patient_id"], week2["split"], strict=False))
    assert all(now[p] == s for p, s in was.items())
    assert summary.split_moves == 0
    info = _build_json(out)
    strategy = overrides[0].partition("=")[2]
    assert info["splits"]["strategy"] == strategy
    assert info["config"]["splits"]["strategy"] == strategy
    assert info["splits"]["previous_strategy"] == strategy
    if strategy == "temporal":
        cutoff = dt.date.fromisoformat(info["splits"]["test_after"])
        first = week1.groupby("patient_group")["exam_time"].min().dt.date
        split = week1.groupby("patient_group")["split"].first()
        late = first[first > cutoff].index
        assert len(late) and (split[late] == "test").all()
        assert f"test = patients first seen after {cutoff.isoformat()}" in info["splits"]["rule"]


def test_stratified_by_modality_gives_each_stratum_each_split(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    summary = build.run(
        make_cfg(root, out, "splits.strategy=stratified", "splits.stratify=modality")
    )
    m = read_manifest(out, columns=["patient_group", "split", "modality"])
    per = m.groupby("patient_group").agg(
        split=("split", "first"), kinds=("modality", lambda s: modality_present(set(s)))
    )
    sizes = per["kinds"].value_counts()
    assert (sizes >= 3).sum() >= 2, sizes  # the tiny datamart has cxr-only and ct-only strata
    for stratum, n in sizes.items():
        if n >= 3:
            assert set(per.loc[per["kinds"] == stratum, "split"]) == set(SPLITS), stratum
    assert summary.split_rule["stratify"] == ["modality"]
    assert "stratified split by modality" in summary.split_rule["rule"]


def test_temporal_cutoff_is_shown_in_the_report(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    first = build.run(make_cfg(root, tmp_path / "probe"))  # any build, for the exam dates
    assert first.published
    m = read_manifest(tmp_path / "probe", columns=["patient_group", "exam_time"])
    days = sorted(m.groupby("patient_group")["exam_time"].min().dt.date)
    cutoff = days[len(days) // 2]
    summary = build.run(
        make_cfg(root, out, "splits.strategy=temporal", f"splits.temporal.test_after={cutoff}")
    )
    got = _splits(out)
    first_seen = got.groupby("patient_group")["exam_time"].min().dt.date
    split = got.groupby("patient_group")["split"].first()
    assert not (split[first_seen[first_seen > cutoff].index] != "test").any()
    rule = f"temporal split: test = patients first seen after {cutoff.isoformat()}"
    assert summary.split_rule["test_after"] == cutoff.isoformat()
    assert any(rule in line for line in summary.lines())
    v = find_version(out)
    assert v is not None and rule in (v.path / REPORT_NAME).read_text(encoding="utf-8")


def test_a_new_strategy_keeps_the_earlier_splits_and_says_so(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, truth = tiny_datamart
    dm, last = _week1(root, truth, tmp_path)
    out = tmp_path / "out"
    build.run(make_cfg(dm, out))  # the default: hash
    week1 = _splits(out)
    shutil.copytree(root / last, dm / last)
    summary = build.run(make_cfg(dm, out, "splits.strategy=stratified", "splits.stratify=modality"))
    week2 = _splits(out)
    was = dict(zip(week1["patient_id"], week1["split"], strict=False))
    assert all(dict(zip(week2["patient_id"], week2["split"], strict=False))[p] == s
               for p, s in was.items())  # fmt: skip
    text = "\n".join(summary.lines())
    assert "the previous version's split was hash" in text
    assert "new patient groups are dealt by stratified" in text
    assert _build_json(out)["splits"]["previous_strategy"] == "hash"
