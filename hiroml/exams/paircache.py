"""The near-duplicate pairs of the previous build, kept so that the next build searches only
what is new.

A pair depends only on its two signatures, the threshold and the rule that decides it
(:data:`hiroml.exams.neardup.PAIR_RULE`). A build stores in
``<out>/.hiroml/neardup/pairs.npz`` the pairs it found (arrays ``i``, ``j``, ``similarity``),
the 16-byte BLAKE2b digest of every signature it searched (``digests``, in the order
searched), the rule and the threshold. The next build at the same threshold and rule matches
its signatures to those digests (:func:`match_rows`: a digest stored k times matches k
signatures): the pairs of two matched signatures are read back, and only the others, the
new ones, are searched against all (:func:`hiroml.exams.neardup.update_pair_arrays`, new x
all). A signature no longer present (a batch removed, a zip changed) drops its pairs. The
result is the same, bit for bit, as a search of every pair. Another threshold or rule, or
a file that cannot be read or does not hold together, means a search of every pair; the
file is then replaced (one file is kept). The version a build publishes records the file's
SHA-256 in its ``build.json`` (:func:`file_record`), so that ``hiroml-verify --quick`` reads
back only a file no one changed since (:mod:`hiroml.store.nearsplit`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from hiroml.exams import neardup
from hiroml.store.atomic import write_atomic
from hiroml.store.shards import shard_sha256
from hiroml.vocab import STATE_DIR

log = logging.getLogger(__name__)

CACHE_DIR = "neardup"
CACHE_FILE = "pairs.npz"
DIGEST_SIZE = 16
#: the key of ``build.json`` under which a build records its pairs file (:func:`file_record`)
RECORD_KEY = "near_duplicate_pairs"


def cache_dir(out: Path) -> Path:
    return Path(out) / STATE_DIR / CACHE_DIR


def row_digests(signatures: np.ndarray) -> np.ndarray:
    """The BLAKE2b digest (16 bytes) of each row of uint8 signatures, as (n, 16) uint8."""
    sig = np.ascontiguousarray(signatures, dtype=np.uint8)
    if not len(sig):
        return np.empty((0, DIGEST_SIZE), np.uint8)
    width = sig.shape[1]
    mv = sig.reshape(-1).data
    joined = b"".join(
        hashlib.blake2b(mv[k * width : (k + 1) * width], digest_size=DIGEST_SIZE).digest()
        for k in range(len(sig))
    )
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(sig), DIGEST_SIZE)


def _occurrence(h: np.ndarray) -> np.ndarray:
    """For each row of ``h`` (k, 2) uint64: how many equal rows come before it."""
    k = len(h)
    order = np.lexsort((np.arange(k), h[:, 1], h[:, 0]))
    hs = h[order]
    start = np.r_[True, np.any(hs[1:] != hs[:-1], axis=1)] if k else np.empty(0, bool)
    first = np.maximum.accumulate(np.where(start, np.arange(k), 0))
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k) - first
    return rank


def match_rows(digests: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """For each row of ``digests`` (n, 16), the row of ``previous`` (m, 16) with the same
    digest, or -1: the k-th occurrence of a digest here matches its k-th occurrence there,
    so no earlier row is named twice. Vectorised (one sort of n + m rows)."""
    m = len(previous)
    both = np.ascontiguousarray(np.concatenate([previous, digests]), dtype=np.uint8)
    h = both.view(np.uint64).reshape(-1, DIGEST_SIZE // 8)
    rank = np.concatenate([_occurrence(h[:m]), _occurrence(h[m:])])
    src = np.r_[np.zeros(m, np.int8), np.ones(len(digests), np.int8)]
    order = np.lexsort((src, rank, h[:, 1], h[:, 0]))
    hs, rs, ss = h[order], rank[order], src[order]
    same = np.all(hs[1:] == hs[:-1], axis=1) & (rs[1:] == rs[:-1]) & (ss[:-1] < ss[1:])
    out = np.full(len(digests), -1, dtype=np.int64)
    out[order[1:][same] - m] = order[:-1][same]
    return out


def file_record(out: Path) -> dict[str, str] | None:
    """What a version's ``build.json`` records (under :data:`RECORD_KEY`) of the pairs file
    its build left: the file's SHA-256; None when there is no file. ``hiroml-verify --quick``
    reads back only a file whose SHA-256 a kept version recorded."""
    path = cache_dir(out) / CACHE_FILE
    if not path.is_file():
        return None
    return {"sha256": shard_sha256(path)}


def stored_pairs(path: Path, threshold: float) -> tuple[np.ndarray, neardup.PairArrays] | None:
    """The digests and pairs stored in ``path`` when they were found at ``threshold`` under
    today's rule and hold together (as :func:`_save` writes them); None (logged) otherwise."""
    return _load(path, threshold)


def _load(path: Path, threshold: float) -> tuple[np.ndarray, neardup.PairArrays] | None:
    """The digests and pairs stored in ``path`` when they were found at ``threshold``
    under today's rule and hold together; None (logged) otherwise."""
    try:
        with np.load(path) as z:
            rule, stored = str(z["rule"]), str(z["threshold"])
            digests, i, j, sim = z["digests"], z["i"], z["j"], z["similarity"]
    except (OSError, ValueError, KeyError, EOFError) as e:
        log.warning("near-duplicate pairs %s unreadable (%s): searching every pair", path, e)
        return None
    if rule != neardup.PAIR_RULE or stored != repr(float(threshold)):
        log.info("near-duplicate pairs %s were found under another rule or threshold", path)
        return None
    if not _holds(digests, i, j, sim):
        log.warning("near-duplicate pairs %s do not hold together: searching every pair", path)
        return None
    return digests, (i.astype(np.int64), j.astype(np.int64), sim.astype(np.float64))


def _holds(digests: np.ndarray, i: np.ndarray, j: np.ndarray, sim: np.ndarray) -> bool:
    """Whether stored arrays are what :func:`_save` writes: (m, 16) uint8 digests and pairs
    ``0 <= i < j < m`` of integers, sorted by (i, j) without repeats, with float similarities."""
    if digests.dtype != np.uint8 or digests.ndim != 2 or digests.shape[1] != DIGEST_SIZE:
        return False
    if not (i.ndim == j.ndim == sim.ndim == 1 and len(i) == len(j) == len(sim)):
        return False
    if i.dtype.kind != "i" or j.dtype.kind != "i" or sim.dtype.kind != "f":
        return False
    m = len(digests)
    order = i.astype(np.int64) * m + j
    return bool(np.all((i >= 0) & (i < j) & (j < m)) and np.all(np.diff(order) > 0))


def _save(path: Path, digests: np.ndarray, pairs: neardup.PairArrays, threshold: float) -> None:
    i, j, sim = pairs
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                rule=np.str_(neardup.PAIR_RULE),
                threshold=np.str_(repr(float(threshold))),
                digests=digests,
                i=i,
                j=j,
                similarity=sim,
            )

    write_atomic(path, write)
    for old in path.parent.glob("*.npz"):
        if old != path:
            old.unlink(missing_ok=True)


def cached_pair_arrays(
    out: Path, signatures: np.ndarray, *, threshold: float
) -> neardup.PairArrays:
    """:func:`hiroml.exams.neardup.pair_arrays` of ``signatures``: the pairs among signatures
    the previous build of ``out`` searched are read back, the new signatures searched
    against all (see the module docstring)."""
    sig = np.asarray(signatures)
    if sig.ndim != 2 or len(sig) < 2:
        return neardup.pair_arrays(sig, threshold=threshold)
    sig = neardup.as_signatures(sig)
    digests = row_digests(sig)
    path = cache_dir(out) / CACHE_FILE
    previous = _load(path, threshold) if path.is_file() else None
    if previous is None:
        pairs = neardup.pair_arrays(sig, threshold=threshold)
    else:
        row = match_rows(digests, previous[0])
        if len(row) == len(previous[0]) and np.array_equal(row, np.arange(len(row))):
            log.info("near-duplicate pairs reused from %s (%d pairs)", path, len(previous[1][0]))
            return previous[1]
        pairs = neardup.update_pair_arrays(sig, previous[1], row, threshold=threshold)
    try:
        _save(path, digests, pairs, threshold)
    except OSError as e:
        log.warning("near-duplicate pairs not kept (%s): the next build searches every pair", e)
    return pairs
