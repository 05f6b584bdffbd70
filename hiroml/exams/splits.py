"""Patient-level train/val/test assignment and leakage checks (pure, no I/O but
:func:`load_test_ids`).

The split of a patient group is a salted hash of its name: BLAKE2b(salt, group) mapped to
a number in [0, 1) and cut by the configured fractions. It depends on nothing else, so a
group keeps its split when new batches arrive and across re-runs, and a new salt draws a
fresh, independent split.

Stratification (``strata=``) trades that stability for balance: groups of each stratum are
dealt, in hash order, to the split furthest below its target share of that stratum. Same
input -> same splits, but adding groups can move earlier ones. Pass ``previous=`` (the
splits of the last build, read from its manifest) to pin every group already assigned; only
new groups are then dealt, towards the targets. Without ``strata`` the plain hash is used
and ``previous`` is not needed (but still honoured when given).

Test sequestration: any group that holds (or is named like) a patient id of ``test_ids`` goes
to test, whatever else says.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hiroml.config import SplitsConfig
from hiroml.vocab import SPLITS, Split


def group_unit(group: str, salt: str) -> float:
    """The group's salted hash as a number in [0, 1)."""
    digest = hashlib.blake2b(f"{salt}\x1f{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_of(group: str, cfg: SplitsConfig) -> str:
    """``train``, ``val`` or ``test`` for one patient group, from its salted hash alone."""
    u = group_unit(group, cfg.salt)
    if u < cfg.train:
        return Split.TRAIN
    if u < cfg.train + cfg.val:
        return Split.VAL
    return Split.TEST


def _fractions(cfg: SplitsConfig) -> dict[str, float]:
    return {Split.TRAIN: cfg.train, Split.VAL: cfg.val, Split.TEST: cfg.test}


def assign_splits(
    groups: Sequence[str],
    cfg: SplitsConfig,
    *,
    strata: Mapping[str, str] | None = None,
    group_members: Mapping[str, Sequence[str]] | None = None,
    test_ids: Collection[str] = (),
    previous: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Split of every group in ``groups``.

    ``strata`` maps a group to its label value (groups missing from it form one stratum of
    their own); ``group_members`` maps a group to its patient ids, for ``test_ids``;
    ``previous`` pins groups to the split they had (test sequestration still wins).
    """
    tests = set(test_ids)
    members = group_members or {}
    pinned = dict(previous or {})
    out: dict[str, str] = {}
    free: list[str] = []
    for g in dict.fromkeys(groups):  # unique, order kept
        if tests and (g in tests or any(p in tests for p in members.get(g, ()))):
            out[g] = Split.TEST
        elif g in pinned and pinned[g] in SPLITS:
            out[g] = pinned[g]
        else:
            free.append(g)
    if strata is None:
        for g in free:
            out[g] = split_of(g, cfg)
        return out

    fractions = _fractions(cfg)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for g in free:
        by_stratum[str(strata.get(g, "<missing>"))].append(g)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for g, s in out.items():  # what is already placed counts towards the targets
        counts[str(strata.get(g, "<missing>"))][s] += 1
    for stratum in sorted(by_stratum):
        c = counts[stratum]
        for g in sorted(by_stratum[stratum], key=lambda g: (group_unit(g, cfg.salt), g)):
            n = sum(c.values()) + 1
            # the split furthest below its target share; ties by the fixed order of SPLITS
            best = max(SPLITS, key=lambda s: (fractions[s] * n - c[s], -SPLITS.index(s)))
            out[g] = best
            c[best] += 1
    return out


def nearest_train(values: Collection[str]) -> str | None:
    """Of several splits, the one nearest train (train > val > test); None when none is a
    split."""
    known = [s for s in SPLITS if s in values]
    return known[0] if known else None


def inherited_splits(
    groups: Sequence[str],
    group_members: Mapping[str, Sequence[str]],
    previous_by_id: Mapping[str, str],
) -> dict[str, str]:
    """The split each group inherits from its patients' splits in the previous version
    (``previous_by_id``: patient id -> split). A group whose patients sat in different
    splits (a late remap sheet or a shared image joined them) takes the split nearest train,
    so that no image a model may have trained on ever enters a later val or test. Groups
    with no previous patient are absent."""
    out: dict[str, str] = {}
    for g in groups:
        seen = {previous_by_id[p] for p in group_members.get(g, ()) if p in previous_by_id}
        best = nearest_train(seen)
        if best is not None:
            out[g] = best
    return out


@dataclass(frozen=True, slots=True)
class SplitMove:
    """A patient of a group whose split differs from the split it had in the previous
    version; ``joined_with`` are the group's patients that had another split."""

    patient_group: str
    patient_id: str
    from_split: str
    to_split: str
    joined_with: tuple[str, ...]


def split_moves(
    split_of: Mapping[str, str],
    group_members: Mapping[str, Sequence[str]],
    previous_by_id: Mapping[str, str],
) -> list[SplitMove]:
    """Every patient whose split changed against ``previous_by_id``, group by group."""
    moves = []
    for g in sorted(split_of):
        ids = sorted(set(group_members.get(g, ())))
        now = split_of[g]
        for p in ids:
            was = previous_by_id.get(p)
            if was is None or was == now:
                continue
            others = tuple(q for q in ids if previous_by_id.get(q, was) != was)
            moves.append(SplitMove(g, p, was, now, others))
    return moves


def load_test_ids(path: Path | str) -> set[str]:
    """Patient ids of a sequestration list: one per line; blank lines and ``#`` comments
    ignored."""
    ids = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        s = line.split("#", 1)[0].strip()
        if s:
            ids.add(s)
    return ids


def _as_values(v: object) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, float) and v != v:  # NaN
        return []
    try:
        return [str(x) for x in v if x is not None and str(x) != ""]  # type: ignore[attr-defined]
    except TypeError:
        return [str(v)]


# (manifest column, name used in messages); list columns are exploded
LEAK_COLUMNS = (
    ("patient_group", "patient_group"),
    ("patient_id", "patient_id"),
    ("source_patient_id", "source_patient_id"),
    ("sop_uid", "SOP Instance UID"),
    ("sop_uids", "SOP Instance UID"),
    ("pixel_hashes", "pixel hash"),
    ("data_hash", "decoded pixels (data_hash)"),
)


def find_leaks(manifest: pd.DataFrame) -> list[str]:
    """One message per patient group, patient id, SOP Instance UID, source pixel hash or
    stored-array ``data_hash`` (identical decoded pixels) found in more than one split,
    e.g. ``"patient_id '1234' in splits test, train"``."""
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    splits = manifest["split"].astype(str).tolist()
    for col, label in LEAK_COLUMNS:
        if col not in manifest.columns:
            continue
        for value, split in zip(manifest[col].tolist(), splits, strict=True):
            for v in _as_values(value):
                seen[(label, v)].add(split)
    return [
        f"{label} {value!r} in splits {', '.join(sorted(s))}"
        for (label, value), s in sorted(seen.items())
        if len(s) > 1
    ]
