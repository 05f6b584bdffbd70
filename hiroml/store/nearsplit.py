"""``hiroml-verify``'s check that no two near-duplicate radiographs lie in two splits.

Each pair is decided exactly as the build decides it (:mod:`hiroml.exams.neardup`: the rank
correlation of the manifest's ``signature`` cells, in integers, against the threshold as the
decimal it prints as). Two ways to find the pairs, both giving the same pairs:

* **exact** (:func:`search_across_splits`, the default): only pairs across splits are
  compared, each split against the larger ones: ``sum n_a * n_b`` over pairs of splits, not
  ``n^2 / 2`` (80/10/10: 0.17 n^2, about a third of every pair). It reads nothing the build
  kept, so a wrong or altered file of the build cannot hide a pair; it is still quadratic.
* **recorded** (:func:`recorded_pairs`, ``hiroml-verify --quick``): the pairs the build kept
  in ``<out>/.hiroml/neardup/pairs.npz`` (:mod:`hiroml.exams.paircache`) are read back, only
  when the file's SHA-256 is the one a kept version's ``build.json`` recorded (under
  ``near_duplicate_pairs``: a file altered afterwards is not read), it was found at the same
  threshold under today's rule and it holds together. The manifest's signatures are matched
  to its digests; its pairs across splits between two matched signatures are decided again
  on the signatures, and each signature it does not know is compared with the other splits
  (a week's new against all): linear in the dataset. Otherwise (no recorded
  file, another threshold, a stored pair that fails its decision, or more than
  :data:`UNKNOWN_ALWAYS` unknown signatures where new x all would cost more than the exact
  search) the exact search runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from hiroml.exams import neardup, paircache
from hiroml.store.shards import shard_sha256
from hiroml.vocab import BUILD_JSON

log = logging.getLogger(__name__)

#: rows of the larger splits compared against a smaller split at a time (1 KB a row)
CHUNK = 65536
#: signatures unknown to the recorded pairs searched against all in any case (a week's
#: worth); beyond it, only while that compares fewer pairs than the exact search
UNKNOWN_ALWAYS = 1024


def signature_rows(m: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the manifest rows with a full signature and their signatures,
    (n, 1024) uint8."""
    if "signature" not in m.columns or m.empty:
        return np.empty(0, np.int64), np.empty((0, neardup.SIGNATURE_SIZE), np.uint8)
    cells = m["signature"].tolist()
    keep = [k for k, v in enumerate(cells) if v is not None and len(v) == neardup.SIGNATURE_SIZE]
    if not keep:
        return np.empty(0, np.int64), np.empty((0, neardup.SIGNATURE_SIZE), np.uint8)
    sigs = np.stack([np.asarray(cells[k], dtype=np.uint8) for k in keep])
    return np.asarray(keep, dtype=np.int64), sigs


def _ordered(i: np.ndarray, j: np.ndarray, sim: np.ndarray) -> neardup.PairArrays:
    a, b = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((b, a))
    return a[order], b[order], sim[order]


def search_across_splits(
    signatures: np.ndarray, split: np.ndarray, *, threshold: float, chunk: int = CHUNK
) -> neardup.PairArrays:
    """Every pair of rows in two different splits (``split``, one label per row) whose
    similarity reaches ``threshold``, decided exactly; sorted by (i, j), ``i < j``. Each
    split is compared with the larger ones (:func:`hiroml.exams.neardup.pairs_between`),
    those ``chunk`` rows at a time."""
    sig = neardup.as_signatures(np.asarray(signatures))
    _, code, counts = np.unique(
        np.asarray(split, dtype=str), return_inverse=True, return_counts=True
    )
    by_size = np.argsort(counts, kind="stable")  # the smallest split first
    found: list[neardup.PairArrays] = []
    for k, s in enumerate(by_size[:-1].tolist()):
        a = np.flatnonzero(code == s)
        b = np.flatnonzero(np.isin(code, by_size[k + 1 :]))
        xa = sig[a]
        for t in range(0, len(b), chunk):
            rows = b[t : t + chunk]
            i, j, sim = neardup.pairs_between(xa, sig[rows], threshold=threshold)
            found.append((a[i], rows[j], sim))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    i, j, sim = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return _ordered(i, j, sim)


def recorded_shas(out: Path) -> set[str]:
    """The SHA-256 of the pairs file each kept version's ``build.json`` recorded."""
    from hiroml.versions.listing import list_versions

    shas = set()
    for v in list_versions(out):
        try:
            info = json.loads((v.path / BUILD_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # the version's own check reports an unreadable build.json
        record = info.get(paircache.RECORD_KEY) if isinstance(info, dict) else None
        if isinstance(record, dict) and isinstance(record.get("sha256"), str):
            shas.add(record["sha256"])
    return shas


def _against_other_splits(
    sig: np.ndarray, split: np.ndarray, rows: np.ndarray, threshold: float, chunk: int
) -> list[neardup.PairArrays]:
    """The pairs (a row of ``rows``, a row in another split) reaching ``threshold``: ``rows``
    against all, ``chunk`` rows at a time (one pass over the signatures)."""
    found: list[neardup.PairArrays] = []
    if not len(rows):
        return found
    xa = sig[rows]
    for t in range(0, len(sig), chunk):
        i, j, sim = neardup.pairs_between(xa, sig[t : t + chunk], threshold=threshold)
        a, b = rows[i], j + t
        keep = split[a] != split[b]
        found.append((a[keep], b[keep], sim[keep]))
    return found


def recorded_pairs(
    out: Path,
    signatures: np.ndarray,
    split: np.ndarray,
    *,
    threshold: float,
    trusted: Collection[str],
    max_unknown: int | None = None,
    chunk: int = CHUNK,
) -> neardup.PairArrays | None:
    """Every pair of rows of ``signatures`` in two splits (``split``) reaching ``threshold``,
    sorted by (i, j), ``i < j``: those the build's pairs file holds between two signatures
    it knows (matched by digest), each decided again, and those of every signature it does
    not know, searched against the other splits. None (logged) when the file is missing, its
    SHA-256 is not one of ``trusted``, it was found at another threshold or rule or does not
    hold together, one of its pairs fails its decision, or more than ``max_unknown``
    signatures are unknown to it."""
    path = paircache.cache_dir(out) / paircache.CACHE_FILE
    if not path.is_file() or shard_sha256(path) not in trusted:
        log.debug("near-duplicate pairs %s: missing or not recorded by a kept version", path)
        return None
    stored = paircache.stored_pairs(path, threshold)
    if stored is None:
        return None
    sig = neardup.as_signatures(np.asarray(signatures))
    digests, (pi, pj, _) = stored
    row = paircache.match_rows(paircache.row_digests(sig), digests)
    unknown = np.flatnonzero(row < 0)
    if max_unknown is not None and len(unknown) > max_unknown:
        log.debug("near-duplicate pairs %s: %d signatures unknown to it", path, len(unknown))
        return None
    here = np.full(len(digests), -1, dtype=np.int64)  # the file's row -> row here
    here[row[row >= 0]] = np.flatnonzero(row >= 0)
    a, b = here[pi], here[pj]
    keep = (a >= 0) & (b >= 0)
    a, b = a[keep], b[keep]
    keep = split[a] != split[b]
    a, b = a[keep], b[keep]
    ok, sim = neardup.decide_pairs(sig, a, b, threshold=threshold)
    if not ok.all():
        log.debug("near-duplicate pairs %s: a stored pair is below the threshold", path)
        return None
    found = [(a, b, sim)]
    for i, j, s in _against_other_splits(sig, split, unknown, threshold, chunk):
        once = (row[j] >= 0) | (i < j)  # two unknown rows: found from both sides, kept once
        found.append((i[once], j[once], s[once]))
    i, j, s = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return _ordered(i, j, s)


def _cross_cost(split: np.ndarray) -> int:
    """How many pairs :func:`search_across_splits` compares."""
    counts = np.unique(np.asarray(split, dtype=str), return_counts=True)[1].astype(np.int64)
    return int((counts.sum() ** 2 - (counts**2).sum()) // 2)


def pairs_across_splits(
    m: pd.DataFrame, *, threshold: float, out: Path | None = None
) -> tuple[neardup.PairArrays, bool]:
    """The near-duplicate pairs of ``m``'s radiographs in two splits, as positions in ``m``
    (``i < j``) with their similarity, and whether they came from the build's recorded
    pairs. ``out``: read back the recorded pairs of that output folder where they can be
    used (:func:`recorded_pairs`); None, or where they cannot: the exact search
    (:func:`search_across_splits`)."""
    rows, sigs = signature_rows(m)
    if len(rows) < 2 or "split" not in m.columns:
        return (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)), False
    split = m["split"].astype(str).to_numpy()[rows]
    pairs = None
    if out is not None:
        pairs = recorded_pairs(
            out,
            sigs,
            split,
            threshold=threshold,
            trusted=recorded_shas(out),
            max_unknown=max(UNKNOWN_ALWAYS, _cross_cost(split) // len(sigs)),
        )
    used = pairs is not None
    if pairs is None:
        pairs = search_across_splits(sigs, split, threshold=threshold)
    i, j, sim = pairs
    return (rows[i], rows[j], sim), used
