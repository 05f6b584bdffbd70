"""Patient-level train/val/test assignment and leakage checks (pure, no I/O but
:func:`load_test_ids`).

Every strategy (``splits.strategy``) deals patient groups, never patients or images, and
only the groups not yet assigned: ``previous=`` (the splits of the latest version, read from
its manifest) pins every group already assigned, whatever strategy assigned it.

- ``hash``: the split of a group is a salted hash of its name: BLAKE2b(salt, group) mapped
  to a number in [0, 1) and cut by the configured fractions. It depends on nothing else, so
  a group keeps its split when new batches arrive and across re-runs, and a new salt draws a
  fresh, independent split.
- ``stratified`` (``strata=``): the new groups of each stratum are dealt, in hash order, to
  the split furthest below its target share of that stratum (pinned groups count towards
  it). While a stratum of at least as many groups as splits still has an empty split, and no
  more new groups are left to deal than empty splits, the next group goes to an empty split:
  such a stratum dealt in one build has a group in every split.
- ``temporal`` (``first_seen=``, ``cutoff=``): a group first seen after the cut-off date goes
  to test; the others are hashed between train and val in the ratio ``train : val``.
  :func:`temporal_cutoff` turns ``splits.temporal`` into that date.

Test sequestration: any group that holds (or is named like) a patient id of ``test_ids`` goes
to test, whatever else says.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hiroml.config import SplitsConfig
from hiroml.vocab import SEQUESTERED_DIR, SPLITS, Modality, Split, SplitStrategy


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


#: Upper bounds (years, exclusive) and names of the ``age_band`` stratum.
AGE_BANDS = ((18.0, "<18"), (40.0, "18-39"), (60.0, "40-59"), (80.0, "60-79"))
MISSING = "<missing>"  # a stratum value that is not known


def age_band(years: float | None) -> str:
    """The ``age_band`` stratum of an age in years: ``<18``, ``18-39``, ``40-59``,
    ``60-79``, ``80+`` or ``<missing>``."""
    if years is None or math.isnan(years):
        return MISSING
    return next((name for top, name in AGE_BANDS if years < top), "80+")


def modality_present(modalities: Collection[str]) -> str:
    """The ``modality`` stratum of a group with exams of ``modalities``: ``cxr``, ``ct`` or
    ``both``."""
    kinds = {str(m) for m in modalities}
    if kinds >= {Modality.CXR, Modality.CT}:
        return "both"
    return next(iter(kinds)) if len(kinds) == 1 else MISSING


def temporal_cutoff(first_seen: Collection[dt.date], cfg: SplitsConfig) -> dt.date:
    """The temporal strategy's cut-off: ``splits.temporal.test_after``, else the date after
    which the latest ``test_fraction`` (``splits.test`` when null) of ``first_seen`` (one
    date per patient group) lie. Groups first seen on the cut-off day itself are not after
    it, so a fraction's test share can fall short of it by that day's groups. A fraction's
    cut-off is drawn anew by each build over all its groups; groups of an earlier version
    keep their split, so later weeks' new groups mostly fall after it."""
    t = cfg.temporal
    if t.test_after is not None:
        return dt.date.fromisoformat(str(t.test_after))
    fraction = cfg.test if t.test_fraction is None else t.test_fraction
    dates = sorted(first_seen)
    if not dates:
        return dt.date.max
    k = round(fraction * len(dates))
    if k <= 0:
        return dates[-1]
    if k >= len(dates):
        return dates[0] - dt.timedelta(days=1)
    return dates[len(dates) - k - 1]


def describe_rule(cfg: SplitsConfig, cutoff: dt.date | None = None) -> str:
    """The split rule in one line, for the summary, the report and the card; with
    ``splits.sequester`` it says where the test split is."""
    rule = _strategy_rule(cfg, cutoff)
    if cfg.sequester:
        rule += (
            "; the test split is sequestered: its samples, labels and patient ids are written "
            f"apart, in the {SEQUESTERED_DIR}/ folder of the output, and the main folder holds "
            "none"
        )
    return rule


def _strategy_rule(cfg: SplitsConfig, cutoff: dt.date | None) -> str:
    fractions = f"train {cfg.train:g}, val {cfg.val:g}, test {cfg.test:g}"
    if cfg.strategy == SplitStrategy.STRATIFIED:
        return (
            f"stratified split by {', '.join(cfg.stratify_columns)}: {fractions} in each "
            f"stratum (new patient groups in salted-hash order; salt {cfg.salt!r})"
        )
    if cfg.strategy == SplitStrategy.TEMPORAL:
        t = cfg.temporal
        if cutoff is None and t.test_after is not None:
            cutoff = dt.date.fromisoformat(str(t.test_after))
        fraction = cfg.test if t.test_fraction is None else t.test_fraction
        when = (
            f"after {cutoff.isoformat()}"
            if cutoff is not None
            else f"last (the latest {fraction:.0%} of patient groups)"
        )
        share = cfg.train / (cfg.train + cfg.val) if cfg.train + cfg.val else 1.0
        return (
            f"temporal split: test = patients first seen {when}; the rest train {share:.2g}"
            f", val {1 - share:.2g} by salted hash (salt {cfg.salt!r})"
        )
    return f"hash split: {fractions} (salted hash of the patient group; salt {cfg.salt!r})"


def assign_splits(
    groups: Sequence[str],
    cfg: SplitsConfig,
    *,
    strata: Mapping[str, str] | None = None,
    first_seen: Mapping[str, dt.date] | None = None,
    cutoff: dt.date | None = None,
    group_members: Mapping[str, Sequence[str]] | None = None,
    test_ids: Collection[str] = (),
    previous: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Split of every group in ``groups``.

    ``strata`` maps a group to its stratum (groups missing from it form one stratum of their
    own) and deals the new groups by stratum; ``first_seen`` (group -> date of its first
    exam) with ``cutoff`` deals them by date (a group missing from ``first_seen`` counts as
    seen before the cut-off); with neither, by hash. ``group_members`` maps a group to its
    patient ids, for ``test_ids``; ``previous`` pins groups to the split they had (test
    sequestration still wins).
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
    if first_seen is not None and cutoff is not None:
        share = cfg.train / (cfg.train + cfg.val) if cfg.train + cfg.val else 1.0
        for g in free:
            seen = first_seen.get(g)
            if seen is not None and seen > cutoff:
                out[g] = Split.TEST
            else:
                out[g] = Split.TRAIN if group_unit(g, cfg.salt) < share else Split.VAL
        return out
    if strata is None:
        for g in free:
            out[g] = split_of(g, cfg)
        return out

    fractions = _fractions(cfg)
    wanted = [s for s in SPLITS if fractions[s] > 0]
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for g in free:
        by_stratum[str(strata.get(g, MISSING))].append(g)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for g, s in out.items():  # what is already placed counts towards the targets
        counts[str(strata.get(g, MISSING))][s] += 1
    for stratum in sorted(by_stratum):
        c = counts[stratum]
        todo = sorted(by_stratum[stratum], key=lambda g: (group_unit(g, cfg.salt), g))
        size = sum(c.values()) + len(todo)
        for i, g in enumerate(todo):
            n = sum(c.values()) + 1
            empty = [s for s in wanted if c[s] == 0]
            # the last groups of a stratum large enough fill its empty splits
            force = size >= len(wanted) and 0 < len(todo) - i <= len(empty)
            # the split furthest below its target share; ties by the fixed order of SPLITS
            best = max(
                empty if force else SPLITS,
                key=lambda s: (fractions[s] * n - c[s], -SPLITS.index(s)),
            )
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
    e.g. ``"patient_id '1234' in splits test, train"``. Column-wise: every value becomes an
    integer code (Arrow's dictionary encoding), the distinct (label, value, split) triples
    are counted per (label, value) in numpy, and only the values found in more than one
    split become Python texts."""
    labels = [label for col, label in LEAK_COLUMNS if col in manifest.columns]
    if not labels or not len(manifest):
        return []
    names = sorted(set(labels))
    splits = pc.dictionary_encode(pa.array(manifest["split"].astype(str).tolist(), pa.string()))
    split_of_row = splits.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    values, label_codes, split_codes = [], [], []
    for col, label in LEAK_COLUMNS:
        if col in manifest.columns:
            texts, rows = _leak_values(manifest[col])
            values.append(texts)
            label_codes.append(np.full(len(texts), names.index(label), dtype=np.int64))
            split_codes.append(split_of_row[rows])
    encoded = pc.dictionary_encode(pa.concat_arrays(values))
    n_values, n_splits = max(len(encoded.dictionary), 1), max(len(splits.dictionary), 1)
    key = np.concatenate(label_codes) * n_values + encoded.indices.to_numpy(zero_copy_only=False)
    triples = np.unique(key * n_splits + np.concatenate(split_codes))
    keys, counts = np.unique(triples // n_splits, return_counts=True)
    leaking = triples[np.isin(triples // n_splits, keys[counts > 1])]
    if not leaking.size:
        return []
    found = leaking // n_splits
    leaked = encoded.dictionary.take(pa.array(found % n_values)).to_pylist()
    split_names = splits.dictionary.to_pylist()
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for code, value, split in zip(
        (found // n_values).tolist(), leaked, (leaking % n_splits).tolist(), strict=True
    ):
        seen[(names[code], value)].add(split_names[split])
    return [
        f"{label} {value!r} in splits {', '.join(sorted(s))}"
        for (label, value), s in sorted(seen.items())
    ]


def _leak_values(column: pd.Series) -> tuple[pa.Array, np.ndarray]:
    """The texts of a manifest column as :func:`_as_values` gives them, flattened (an Arrow
    text array), and the row of each: through Arrow for a text or list-of-text column, cell
    by cell otherwise."""
    try:
        arr = pa.array(column, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        arr = None
    if isinstance(arr, pa.ChunkedArray):  # a pandas column backed by Arrow
        arr = arr.combine_chunks()
    if arr is not None and pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    texts = (pa.types.is_string, pa.types.is_large_string)
    if arr is not None and any(t(arr.type) for t in texts):
        rows, values = pa.array(np.arange(len(arr))), arr
    elif (
        arr is not None
        and (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type))
        and any(t(arr.type.value_type) for t in texts)
    ):
        rows, values = pc.list_parent_indices(arr), pc.list_flatten(arr)
    else:
        out = [(v, k) for k, cell in enumerate(column.tolist()) for v in _as_values(cell)]
        return (
            pa.array([v for v, _ in out], pa.string()),
            np.asarray([k for _, k in out], dtype=np.int64),
        )
    keep = pc.and_(pc.is_valid(values), pc.not_equal(values, ""))
    keep = keep.fill_null(False)
    return (
        values.filter(keep).cast(pa.string()),
        np.asarray(rows.filter(keep).to_numpy(zero_copy_only=False), dtype=np.int64),
    )
