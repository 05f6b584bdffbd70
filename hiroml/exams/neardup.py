"""Near-duplicate radiographs: a small signature per stored image, and the search for pairs.

The same radiograph re-exported lossily (windowed to 8 bits, saved as JPEG), at another
resolution or in another transfer syntax is, to a model, the same image, yet its bytes and
its stored array differ. Its *signature* barely moves:

* :func:`signature`: the stored 2-D array, numpy (y, x), with its constant border rows and
  columns trimmed (the padding of ``cxr.keep_aspect``), area-downsampled (OpenCV
  ``INTER_AREA``) to 64 x 64, high-passed (minus its Gaussian blur, sigma 2 cells: the
  anatomy every chest radiograph shares is removed, the patient's own detail kept), area-
  downsampled to ``SIGNATURE_SIDE`` x ``SIGNATURE_SIDE``, then rank-normalised: each of the
  1024 cells is replaced by its rank among them (ties share their mean rank), scaled to
  0..255 and stored as **uint8** (row-major, 1024 values: the manifest's ``signature``
  column). Ranks make it blind to any monotone change of grey levels (window, gamma, bit
  depth), the area averages blind to resolution and lossy noise.
* :func:`similarity`: the Pearson correlation of two signatures, i.e. the rank (Spearman)
  correlation of the two thumbnails, in [-1, 1]; a constant signature (a blank image) is
  similar to nothing (0.0).
* :func:`find_pairs`: every pair with similarity >= ``threshold``, exact. Signatures become
  centred unit vectors, so similarity is their dot product and ``sim >= t`` is
  ``|u - v|^2 <= 2 - 2t``. An orthogonal projection never lengthens a difference, so the
  8 x 8 block means of the thumbnails (a 64-d orthogonal projection) give candidates without
  a false negative: blockwise numpy matrix products over the 64-d vectors, then each
  candidate is confirmed on the full 1024 values. Memory is bounded by ``block`` rows at a
  time; 100,000 signatures take well under a minute on two cores
  (``benchmarks/bench_neardup.py``).

The threshold (``splits.near_duplicate_threshold``, default :data:`DEFAULT_THRESHOLD` 0.95)
was measured with ``benchmarks/neardup_threshold.py``: the same image re-exported (8-bit
JPEG q90/q75, half or quarter resolution, both, lossy JPEG 2000, 12 vs 8 bits) scores
>= 0.992; different images (synthetic patients of the tiny and demo datamarts, phantoms,
pydicom's real images) <= 0.871. Crops and shifts of a few percent are *not* reliably
caught (-0.14 to 0.97): the signature compares aligned images.

Beyond a few hundred thousand radiographs the quadratic search grows long (1,000,000: about
an hour); an approximate index (hnswlib, faiss) over the 64-d projection would then be the
next step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hiroml.store import halfcast

log = logging.getLogger(__name__)

#: the default of ``splits.near_duplicate_threshold`` (measured; see the module docstring)
DEFAULT_THRESHOLD = 0.95
SIGNATURE_SIDE = 32
SIGNATURE_SIZE = SIGNATURE_SIDE * SIGNATURE_SIDE
_WORK_SIDE = 64  # the thumbnail that is high-passed
_HIGHPASS_SIGMA = 2.0  # cells of the 64 x 64 thumbnail
_COARSE = 8  # side of the block-mean projection used for candidates
_DENSE = 64  # more than 1 candidate in this many pairs of a block: filter on the full product


@dataclass(frozen=True, slots=True)
class NearPair:
    """Two signatures (indices into the searched sequence, ``i < j``) and their similarity."""

    i: int
    j: int
    similarity: float


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (0-based) of a 1-D array; tied values share their mean rank."""
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends - 1) / 2.0
    run = np.repeat(np.arange(len(starts)), ends - starts)
    out = np.empty(len(values), dtype=np.float64)
    out[order] = mean_rank[run]
    return out


def _trim(a: np.ndarray) -> np.ndarray:
    """``a`` without its border rows and columns that hold one value (padding); an array
    that is constant throughout is returned as it is."""
    if all(line.max() != line.min() for line in (a[0], a[-1], a[:, 0], a[:, -1])):
        return a  # no border line is constant: nothing to trim (the usual case)
    rows = np.flatnonzero(a.max(axis=1) != a.min(axis=1))
    cols = np.flatnonzero(a.max(axis=0) != a.min(axis=0))
    if not len(rows) or not len(cols):
        return a
    return a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _as_float32(a: np.ndarray) -> np.ndarray:
    """``a`` as float32 with NaN and infinities as 0 (a copy)."""
    f = halfcast.to_float32(a, nan_payloads=False)  # astype(np.float32), faster; NaN -> 0
    if f.dtype.kind == "f" and a.dtype.kind not in "iub" and not np.isfinite(f).all():
        np.nan_to_num(f, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return f


def signature(arr: np.ndarray) -> np.ndarray:
    """The uint8 signature (1024 values) of a stored radiograph, numpy (y, x), any dtype.

    Non-finite values count as 0. Raises ValueError for an array that is not 2-D or empty."""
    import cv2

    a = np.asarray(arr)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"signature() needs a non-empty 2-D (y, x) array, got shape {a.shape}")
    f = _trim(_as_float32(a))
    work = cv2.resize(f, (_WORK_SIDE, _WORK_SIDE), interpolation=cv2.INTER_AREA)
    work = work - cv2.GaussianBlur(work, (0, 0), _HIGHPASS_SIGMA)
    small = cv2.resize(work, (SIGNATURE_SIDE, SIGNATURE_SIDE), interpolation=cv2.INTER_AREA)
    r = _ranks(small.reshape(-1).astype(np.float64))
    scaled = np.rint(r * (255.0 / (SIGNATURE_SIZE - 1)))
    return scaled.astype(np.uint8)


def unit_vectors(signatures: np.ndarray) -> np.ndarray:
    """Signatures (n, 1024) as centred float32 unit vectors; a constant one becomes 0."""
    x = np.asarray(signatures, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != SIGNATURE_SIZE:
        raise ValueError(f"signatures must have shape (n, {SIGNATURE_SIZE}), got {x.shape}")
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def similarity(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """Rank correlation of two signatures, in [-1, 1]; 0.0 when either is constant."""
    u = unit_vectors(np.stack([np.asarray(a), np.asarray(b)]))
    return float(np.clip(u[0] @ u[1], -1.0, 1.0))


def _coarse(u: np.ndarray) -> np.ndarray:
    """The orthogonal projection of unit vectors onto 8 x 8 block-constant images, in an
    orthonormal basis (block sum / sqrt(block size)): 64-d, never longer than ``u``."""
    n = u.shape[0]
    k = SIGNATURE_SIDE // _COARSE
    blocks = u.reshape(n, _COARSE, k, _COARSE, k).sum(axis=(2, 4)) / float(k)
    return np.ascontiguousarray(blocks.reshape(n, _COARSE * _COARSE), dtype=np.float32)


def find_pairs(signatures: np.ndarray, *, threshold: float, block: int = 4096) -> list[NearPair]:
    """Every pair ``i < j`` whose :func:`similarity` is >= ``threshold`` (exact search).

    ``signatures``: (n, 1024) uint8, one row per image. ``block`` bounds the memory:
    about ``block * block * 4`` bytes per step. Pairs come sorted by (i, j)."""
    i, j, sim = pair_arrays(signatures, threshold=threshold, block=block)
    return [NearPair(*p) for p in zip(i.tolist(), j.tolist(), sim.tolist(), strict=True)]


#: the pairs of :func:`pair_arrays`: ``i``, ``j`` (int64) and their similarity (float64)
PairArrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def pair_arrays(signatures: np.ndarray, *, threshold: float, block: int = 4096) -> PairArrays:
    """:func:`find_pairs` as three arrays, sorted by (i, j): 24 bytes a pair, where a
    :class:`NearPair` object takes over 100 (thousands of near-identical images make
    millions of pairs)."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold}: must lie in [-1, 1]")
    if block < 1:
        raise ValueError(f"block={block}: must be >= 1")
    sig = np.asarray(signatures)
    n = sig.shape[0] if sig.ndim == 2 else 0
    if n < 2:
        return _EMPTY
    # unit vectors block by block (memory: the uint8 signatures and 66 floats per row)
    c = np.empty((n, _COARSE * _COARSE), dtype=np.float32)
    live = np.empty(n, dtype=bool)
    for s in range(0, n, block):
        u = unit_vectors(sig[s : s + block])
        live[s : s + block] = np.any(u != 0, axis=1)
        c[s : s + block] = _coarse(u)
    cn = np.einsum("ij,ij->i", c, c)[:, None]
    ones = np.ones_like(cn)
    # |ci - cj|^2 = [ci, |ci|^2, 1] . [-2 cj, 1, |cj|^2]: one matrix product per block
    left = np.hstack([c, cn, ones])
    right = np.hstack([-2.0 * c, ones, cn])
    radius2 = 2.0 - 2.0 * threshold + 1e-4  # float32 slack: never a false negative
    found: list[PairArrays] = []
    for s in range(0, n, block):
        li = left[s : s + block]
        ui = unit_vectors(sig[s : s + block])
        for t in range(s, n, block):
            close = (li @ right[t : t + block].T) <= radius2
            n_close = np.count_nonzero(close)
            if not n_close:
                continue
            uj = ui if t == s else unit_vectors(sig[t : t + block])
            if n_close > close.size // _DENSE:
                # look-alike images (one phantom, one protocol) pass the coarse bound in bulk:
                # one full matrix product is then cheaper than listing the candidates; its
                # float32 slack keeps every pair the confirmation below would keep
                close = (ui @ uj.T) >= threshold - 1e-4
            ii, jj = np.nonzero(close)
            keep = (ii + s < jj + t) & live[ii + s] & live[jj + t]
            ii, jj = ii[keep], jj[keep]
            for a in range(0, len(ii), 65536):  # confirm on the full vectors, in chunks
                pa, pb = ii[a : a + 65536], jj[a : a + 65536]
                sims = np.einsum("ij,ij->i", ui[pa], uj[pb])
                ok = sims >= threshold - 1e-6
                found.append(
                    (
                        pa[ok].astype(np.int64) + s,
                        pb[ok].astype(np.int64) + t,
                        np.minimum(sims[ok].astype(np.float64), 1.0),
                    )
                )
    if not found:
        return _EMPTY
    i, j, sim = (np.concatenate(parts) for parts in zip(*found, strict=True))
    order = np.lexsort((j, i))
    log.debug("near-duplicate search: %d signatures, %d pairs >= %.3f", n, len(i), threshold)
    return i[order], j[order], sim[order]


_EMPTY: PairArrays = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))
