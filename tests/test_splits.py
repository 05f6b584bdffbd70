"""splits.py: stable salted-hash splits, stratification, sequestration, leak finding."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from hiroml.config import SplitsConfig
from hiroml.exams.splits import assign_splits, find_leaks, group_unit, load_test_ids, split_of

GROUPS = [f"G{i:05d}" for i in range(10_000)]


def test_same_input_same_splits_and_salt_matters() -> None:
    cfg = SplitsConfig()
    a = assign_splits(GROUPS, cfg)
    assert a == assign_splits(list(reversed(GROUPS)), SplitsConfig())
    assert all(a[g] == split_of(g, cfg) for g in GROUPS[:100])
    other = assign_splits(GROUPS, SplitsConfig(salt="other"))
    assert sum(a[g] != other[g] for g in GROUPS) > 2000
    assert 0.0 <= group_unit("x", "s") < 1.0


def test_adding_groups_moves_none() -> None:
    cfg = SplitsConfig()
    first = assign_splits(GROUPS[:6000], cfg)
    later = assign_splits(GROUPS, cfg)  # a new batch brings 4000 new groups
    assert all(later[g] == s for g, s in first.items())


def test_fractions_roughly_respected() -> None:
    counts = Counter(assign_splits(GROUPS, SplitsConfig(train=0.7, val=0.2, test=0.1)).values())
    assert abs(counts["train"] / 10_000 - 0.7) < 0.02
    assert abs(counts["val"] / 10_000 - 0.2) < 0.02
    assert abs(counts["test"] / 10_000 - 0.1) < 0.02


def test_test_sequestration_by_member(tmp_path: Path) -> None:
    cfg = SplitsConfig()
    train_groups = [g for g in GROUPS[:200] if split_of(g, cfg) == "train"][:3]
    members = {g: [f"p-{g}", f"old-{g}"] for g in train_groups}
    listed = tmp_path / "test_ids.txt"
    listed.write_text(f"# sequestered\nold-{train_groups[0]}\n\n{train_groups[1]}  # by name\n")
    ids = load_test_ids(listed)
    assert ids == {f"old-{train_groups[0]}", train_groups[1]}
    got = assign_splits(train_groups, cfg, group_members=members, test_ids=ids)
    assert got == {train_groups[0]: "test", train_groups[1]: "test", train_groups[2]: "train"}
    # sequestration wins over a pinned previous split
    pinned = assign_splits(
        train_groups, cfg, group_members=members, test_ids=ids, previous={train_groups[0]: "train"}
    )
    assert pinned[train_groups[0]] == "test"


def test_stratified_is_balanced_and_pinned_is_stable() -> None:
    cfg = SplitsConfig()
    groups = GROUPS[:3000]
    # a rare label: 5% positives
    strata = {g: "pos" if i % 20 == 0 else "neg" for i, g in enumerate(groups)}
    got = assign_splits(groups, cfg, strata=strata)
    assert got == assign_splits(groups, cfg, strata=strata)
    pos = Counter(s for g, s in got.items() if strata[g] == "pos")
    assert pos == {"train": 120, "val": 15, "test": 15}  # exact per stratum
    # a new batch: with the previous splits pinned nobody moves, balance is kept
    new = GROUPS[3000:4000]
    strata.update({g: "pos" if i % 20 == 0 else "neg" for i, g in enumerate(new)})
    later = assign_splits(groups + new, cfg, strata=strata, previous=got)
    assert all(later[g] == s for g, s in got.items())
    pos = Counter(s for g, s in later.items() if strata[g] == "pos")
    assert pos == {"train": 160, "val": 20, "test": 20}


def test_unknown_previous_values_are_ignored() -> None:
    cfg = SplitsConfig()
    got = assign_splits(["a", "b"], cfg, previous={"a": "holdout", "b": "val"})
    assert got == {"a": split_of("a", cfg), "b": "val"}


def _row(key: str, split: str, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "sample_key": key,
        "split": split,
        "patient_group": f"g-{key}",
        "patient_id": f"p-{key}",
        "source_patient_id": f"p-{key}",
        "sop_uid": f"sop-{key}",
        "sop_uids": [f"sop-{key}"],
        "pixel_hashes": [f"px-{key}"],
    }
    row.update(kw)
    return row


def test_find_leaks_names_every_offender() -> None:
    clean = pd.DataFrame([_row("a", "train"), _row("b", "val"), _row("c", "test")])
    assert find_leaks(clean) == []
    leaky = pd.DataFrame(
        [
            _row("a", "train", patient_id="p-1", source_patient_id="p-1"),
            _row("b", "test", patient_id="p-1", source_patient_id="p-1"),
            _row("c", "train", sop_uids=["s1", "s2"], sop_uid=None),
            _row("d", "val", sop_uid="s2"),
            _row("e", "train", pixel_hashes=["h1"]),
            _row("f", "val", pixel_hashes=["x", "h1"]),
            _row("g", "val", patient_group="G"),
            _row("h", "test", patient_group="G"),
        ]
    )
    assert find_leaks(leaky) == [
        "SOP Instance UID 's2' in splits train, val",
        "patient_group 'G' in splits test, val",
        "patient_id 'p-1' in splits test, train",
        "pixel hash 'h1' in splits train, val",
        "source_patient_id 'p-1' in splits test, train",
    ]


@pytest.mark.parametrize("missing", ["sop_uids", "pixel_hashes"])
def test_find_leaks_tolerates_missing_optional_columns(missing: str) -> None:
    df = pd.DataFrame([_row("a", "train"), _row("b", "val", patient_id="p-a")])
    assert find_leaks(df.drop(columns=[missing])) == ["patient_id 'p-a' in splits train, val"]
