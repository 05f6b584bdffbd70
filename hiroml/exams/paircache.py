"""The near-duplicate pairs of the previous build, kept for the next one.

The exact search (:func:`hiroml.exams.neardup.find_pairs`) is quadratic in the number of
radiographs, and its result depends only on the signatures searched (in their order), the
threshold and the rule that decides a pair (:data:`hiroml.exams.neardup.PAIR_RULE`). A build
stores the pairs it found in ``<out>/.hiroml/neardup/<key>.npz`` (arrays ``i``, ``j`` and
``similarity``), ``<key>`` being the BLAKE2b digest of the rule, the threshold and the
signatures; a re-run with the same signatures and threshold reads them back instead of
searching. Another threshold, another rule or any changed, added or removed signature gives
another key: the search runs again and its result replaces the file (one file is kept). An
unreadable file is searched around and replaced.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from hiroml.exams import neardup
from hiroml.store.atomic import write_atomic
from hiroml.vocab import STATE_DIR

log = logging.getLogger(__name__)

CACHE_DIR = "neardup"


def cache_dir(out: Path) -> Path:
    return Path(out) / STATE_DIR / CACHE_DIR


def _key(signatures: np.ndarray, threshold: float) -> str:
    sig = np.ascontiguousarray(signatures, dtype=np.uint8)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{neardup.PAIR_RULE};{threshold!r};{sig.shape}".encode())
    h.update(sig.data)
    return h.hexdigest()


def _load(path: Path) -> neardup.PairArrays | None:
    try:
        with np.load(path) as z:
            i, j, sim = z["i"], z["j"], z["similarity"]
    except (OSError, ValueError, KeyError) as e:
        log.warning("near-duplicate cache %s unreadable (%s): searching again", path, e)
        return None
    if not len(i) == len(j) == len(sim):
        log.warning("near-duplicate cache %s is inconsistent: searching again", path)
        return None
    return i.astype(np.int64), j.astype(np.int64), sim.astype(np.float64)


def _save(path: Path, pairs: neardup.PairArrays) -> None:
    i, j, sim = pairs
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, i=i, j=j, similarity=sim)

    write_atomic(path, write)
    for old in path.parent.glob("*.npz"):
        if old != path:
            old.unlink(missing_ok=True)


def cached_pair_arrays(
    out: Path, signatures: np.ndarray, *, threshold: float
) -> neardup.PairArrays:
    """:func:`hiroml.exams.neardup.pair_arrays` of ``signatures``, read from the cache of ``out``
    when the previous build searched the same signatures at the same threshold."""
    path = cache_dir(out) / f"{_key(signatures, threshold)}.npz"
    if path.is_file():
        pairs = _load(path)
        if pairs is not None:
            log.info("near-duplicate pairs reused from %s (%d pairs)", path.name, len(pairs[0]))
            return pairs
    pairs = neardup.pair_arrays(signatures, threshold=threshold)
    try:
        _save(path, pairs)
    except OSError as e:
        log.warning("near-duplicate cache not written (%s): the next run searches again", e)
    return pairs
