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
  similar to nothing (0.0). It is computed from exact integer sums (per signature ``S =
  sum x`` and ``V = n sum x^2 - S^2``, per pair ``cov = n sum x*y - Sx Sy``; n = 1024, all
  exact in int64) as the float64 ``cov / sqrt(Vx Vy)``: the same value on every machine.
* :func:`find_pairs`: every pair with similarity >= ``threshold``, exact and the same on
  every machine. Signatures become centred unit vectors, so similarity is their dot product
  and ``sim >= t`` is ``|u - v|^2 <= 2 - 2t``. An orthogonal projection never lengthens a
  difference, so the 8 x 8 block means of the thumbnails (a 64-d orthogonal projection) give
  candidates without a false negative: blockwise float32 matrix products over the 64-d
  vectors (with a slack larger than their rounding error), then each candidate is decided on
  the exact integers: ``r >= t`` is ``cov >= 0 and q^2 cov^2 >= p^2 Vx Vy`` for the threshold
  ``t = p/q`` taken as the decimal it prints as (0.95 is 19/20), in Python integers where the
  float64 value lies within 1e-12 of ``t`` (cov^2 and Vx Vy exceed int64). Memory is bounded by
  ``block`` rows at a time; 100,000 signatures take well under a minute on two cores
  (``benchmarks/bench_neardup.py``).
* :func:`pairs_between` (rows of one set against another) and :func:`update_pair_arrays`
  (the pairs of an earlier search renumbered, the new rows searched against all): a week's
  build searches new x all, not all x all (:mod:`hiroml.exams.paircache` keeps the pairs
  between builds), with the same exact decision, so the same pairs; its candidates come
  from 16 x 16 block means (:data:`_FINE`), which let through about none of the scale
  bench's pairs of different images where 8 x 8 let through 4% (its cost is linear here).

The threshold (``splits.near_duplicate_threshold``, default :data:`DEFAULT_THRESHOLD` 0.95)
was measured with ``benchmarks/neardup_threshold.py``: the same image re-exported (8-bit
JPEG q90/q75, half or quarter resolution, both, lossy JPEG 2000, 12 vs 8 bits) scores
>= 0.992; different images (synthetic patients of the tiny and demo datamarts, phantoms,
pydicom's real images) <= 0.871. Crops and shifts of a few percent are *not* reliably
caught (-0.14 to 0.97): the signature compares aligned images.

The search of every pair is quadratic (100,000 signatures: 47-56 s, 1,000,000: 80-90 minutes
projected, on two busy cores); new x all is linear in the dataset: 300 new signatures against
1,000,000 take 25-37 s, digests and the stored pairs included (``bench_neardup.py --week
300``).
So the search stays exact, without an approximate index: an index's candidates would still
be confirmed on the exact integers, and the linear pass it would replace is already short.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from hiroml.store import halfcast

log = logging.getLogger(__name__)

#: the default of ``splits.near_duplicate_threshold`` (measured; see the module docstring)
DEFAULT_THRESHOLD = 0.95
#: the rule that decides a pair (kept with stored pairs: pairs stored under another rule are
#: searched again)
PAIR_RULE = "pearson of uint8 signatures in integers; threshold as its decimal"
SIGNATURE_SIDE = 32
SIGNATURE_SIZE = SIGNATURE_SIDE * SIGNATURE_SIDE
_WORK_SIDE = 64  # the thumbnail that is high-passed
_HIGHPASS_SIGMA = 2.0  # cells of the 64 x 64 thumbnail
#: rows of signatures compared at a time: a step holds a ``BLOCK`` x ``BLOCK`` boolean matrix
#: (4 MB), a float product of :data:`_ROWS` rows (2 MB) and, where the full product filters,
#: the two blocks' unit vectors (8 MB each); larger blocks take memory as the square and
#: save no CPU time (within 6% at 4,096 rows, measured at 6,000 and 30,000 signatures)
BLOCK = 2048
_COARSE = 8  # side of the block-mean projection used for candidates
#: ... when a week's new signatures are searched against all (:func:`pairs_between`): 16 x 16
#: blocks of 2 x 2 cells keep about 95% of a bench radiograph's unit vector where 8 x 8 keep
#: 40%, so about no pair of different images passes (8 x 8 lets 4% through: the full product
#: then runs on every block); 4 times the coarse product's cost, a quarter of the full product's
_FINE = 16
_DENSE = 64  # more than 1 candidate in this many pairs of a block: filter on the full product
#: rows computed at a time within a block (unit vectors, filter products): each step's float
#: temporary takes ``_ROWS * BLOCK * 4`` bytes (2 MB), where a whole block's would take 16 MB
_ROWS = 256


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
    return _rank_bytes(small.reshape(-1).astype(np.float64))


#: the uint8 value of each rank 0..1023 (``rint(rank * 255 / 1023)``): a signature of distinct
#: cells is this table put in the cells' order
_RANK_U8 = np.rint(np.arange(SIGNATURE_SIZE) * (255.0 / (SIGNATURE_SIZE - 1))).astype(np.uint8)


def _rank_bytes(values: np.ndarray) -> np.ndarray:
    """The cells' ranks (:func:`_ranks`, ties their mean) scaled to 0..255 and rounded, as
    uint8. Cells of distinct values (the usual case) take :data:`_RANK_U8` in their sorted
    order: any sort gives it (only tied cells depend on the sort's stability), and a rank
    ``s`` alone in its run is ``(s + s) / 2 = s`` exactly, so the bytes are those of the
    general path, which runs when two cells tie."""
    order = np.argsort(values)
    ordered = values[order]
    if len(values) == SIGNATURE_SIZE and (ordered[1:] != ordered[:-1]).all():
        out = np.empty(SIGNATURE_SIZE, dtype=np.uint8)
        out[order] = _RANK_U8
        return out
    r = _ranks(values)
    return np.rint(r * (255.0 / (SIGNATURE_SIZE - 1))).astype(np.uint8)


def as_signatures(signatures: Sequence[int] | np.ndarray, *, ndim: int = 2) -> np.ndarray:
    """Signatures as a uint8 array (1024 values per row). Raises ValueError for another
    length, or values that are not integers in 0..255."""
    x = np.asarray(signatures)
    if x.ndim != ndim or x.shape[-1] != SIGNATURE_SIZE:
        want = f"(n, {SIGNATURE_SIZE})" if ndim == 2 else f"({SIGNATURE_SIZE},)"
        raise ValueError(f"signatures must have shape {want}, got {x.shape}")
    if x.dtype == np.uint8:
        return x
    x8 = x.astype(np.uint8)
    if not np.array_equal(x8, x):
        raise ValueError("signature values must be integers in 0..255")
    return x8


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of uint8 signatures: the sum ``S`` and ``V = n * sum(x^2) - S^2`` (``n`` =
    1024; ``V / n^2`` is the variance), both int64 and exact (``V`` < 2^37)."""
    s = x.sum(axis=1, dtype=np.int64)
    q = np.einsum("ij,ij->i", x, x, dtype=np.int64, casting="safe")
    return s, SIGNATURE_SIZE * q - s * s


def _dots(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """``sum(a * b)`` of each pair of uint8 rows, exact (int32 holds 1024 * 255^2), as int64."""
    return np.einsum("ij,ij->i", xa, xb, dtype=np.int32, casting="safe").astype(np.int64)


def _centred(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``n * x - S`` per row (n = 1024): n times the deviations, exact in float32 (< 2^24)."""
    return (x.astype(np.int32) * SIGNATURE_SIZE - s[:, None].astype(np.int32)).astype(np.float32)


def _norms(v: np.ndarray) -> np.ndarray:
    """The length of each row of :func:`_centred` (``sqrt(n * V)``), float32, 1 where 0."""
    return np.sqrt(np.where(v > 0, v, 1).astype(np.float64) * SIGNATURE_SIZE).astype(np.float32)


def _pearson(cov: np.ndarray, va: np.ndarray, vb: np.ndarray) -> np.ndarray:
    """The correlation ``cov / sqrt(Va * Vb)`` (``cov = n * sum(a * b) - Sa * Sb``, all exact
    int64) in float64, clipped to [-1, 1]; 0 where a ``V`` is 0 (a constant signature).

    Every step is one correctly rounded IEEE operation on exact integers (the product of the
    two ``V`` is rounded once), so the value is the same on every machine, within 4e-16 of
    the true correlation."""
    vv = va.astype(np.float64) * vb.astype(np.float64)
    live = vv > 0
    r = np.divide(cov.astype(np.float64), np.sqrt(vv), out=np.zeros(vv.shape), where=live)
    return np.clip(r, -1.0, 1.0)


def _exact_threshold(threshold: float) -> Fraction:
    """The threshold as the decimal it prints as (``repr``: the shortest decimal that reads
    back as the same float): 0.95 means 19/20 exactly, as the config's YAML wrote it, not
    the binary double nearest to it."""
    return Fraction(repr(float(threshold)))


def _at_least(cov: int, vv: int, t: Fraction) -> bool:
    """``cov / sqrt(vv) >= t`` decided exactly in Python integers (``vv`` > 0)."""
    p, q = t.numerator, t.denominator
    if p >= 0:  # r >= t >= 0  <=>  cov >= 0 and q^2 cov^2 >= p^2 vv
        return cov >= 0 and q * q * cov * cov >= p * p * vv
    return cov >= 0 or q * q * cov * cov <= p * p * vv  # t < 0: |r| <= |t| when r < 0


#: |float64 correlation - threshold| within which the decision is made in integers: the
#: float64 value is within 4e-16 of the exact one, and the float threshold within 1.2e-16
_MARGIN = 1e-12


def _decide(
    dots: np.ndarray,
    s: tuple[np.ndarray, np.ndarray],
    v: tuple[np.ndarray, np.ndarray],
    t: Fraction,
) -> tuple[np.ndarray, np.ndarray]:
    """For pairs with exact ``dots`` (sum a * b) and the two rows' ``S`` and ``V``: which
    have correlation >= ``t``, decided exactly, and the correlations (:func:`_pearson`)."""
    cov = SIGNATURE_SIZE * dots - s[0] * s[1]  # exact: |n * dots|, |Sa * Sb| < 2^37
    sim = _pearson(cov, v[0], v[1])
    tf = float(t)
    keep = sim >= tf
    for k in np.flatnonzero(np.abs(sim - tf) <= _MARGIN).tolist():  # rare: in integers
        keep[k] = _at_least(int(cov[k]), int(v[0][k]) * int(v[1][k]), t)
    return keep & (v[0] > 0) & (v[1] > 0), sim


def unit_vectors(signatures: np.ndarray) -> np.ndarray:
    """Signatures (n, 1024) as centred float32 unit vectors; a constant one becomes 0.

    Computed from exact integers (:func:`_centred` divided by its length): each value is
    within 2.4e-7 (relative) of the exact unit vector's."""
    x = as_signatures(signatures)
    s, v = _moments(x)
    norms = _norms(v)
    u = np.empty(x.shape, dtype=np.float32)
    for r in range(0, len(x), _ROWS):  # the int32 and float32 temporaries of _ROWS rows
        rows = slice(r, r + _ROWS)
        np.divide(_centred(x[rows], s[rows]), norms[rows, None], out=u[rows])
    u[v == 0] = 0.0
    return u


def similarity(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """Rank correlation of two signatures, in [-1, 1]; 0.0 when either is constant.

    The same float64 value :func:`find_pairs` reports for the pair (:func:`_pearson`)."""
    x = np.stack([as_signatures(a, ndim=1), as_signatures(b, ndim=1)])
    s, v = _moments(x)
    cov = SIGNATURE_SIZE * _dots(x[:1], x[1:]) - s[:1] * s[1:]
    return float(_pearson(cov, v[:1], v[1:])[0])


def decide_pairs(
    signatures: np.ndarray, i: np.ndarray, j: np.ndarray, *, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """For the pairs (row ``i[k]``, row ``j[k]``) of ``signatures`` (n, 1024): whether each
    reaches ``threshold``, decided exactly as :func:`pair_arrays` decides it, and its
    similarity (the float64 :func:`pair_arrays` reports). Vectorised, 64K pairs at a time."""
    t_exact = _check(threshold, 1)
    x = as_signatures(np.asarray(signatures))
    ii, jj = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    keep, sim = np.zeros(len(ii), dtype=bool), np.zeros(len(ii))
    for k in range(0, len(ii), _DECIDE_CHUNK):
        a, b = x[ii[k : k + _DECIDE_CHUNK]], x[jj[k : k + _DECIDE_CHUNK]]
        (sa, va), (sb, vb) = _moments(a), _moments(b)
        keep[k : k + len(a)], sim[k : k + len(a)] = _decide(
            _dots(a, b), (sa, sb), (va, vb), t_exact
        )
    return keep, sim


def _block_matrix() -> np.ndarray:
    """(1024, 64) float32 of 0 and 1: a signature times it gives its 8 x 8 block sums."""
    k = SIGNATURE_SIDE // _COARSE
    cell = np.arange(SIGNATURE_SIZE)
    row, col = cell // SIGNATURE_SIDE, cell % SIGNATURE_SIDE
    m = np.zeros((SIGNATURE_SIZE, _COARSE * _COARSE), dtype=np.float32)
    m[cell, (row // k) * _COARSE + col // k] = 1.0
    return m


_BLOCKS = _block_matrix()


def _block_sums(x: np.ndarray) -> np.ndarray:
    """The exact sums of the :data:`_FINE` x :data:`_FINE` blocks of 2 x 2 cells of each row
    (<= 4 * 255, as uint16; row-major blocks), by two pairwise additions."""
    n, half = len(x), SIGNATURE_SIDE // 2
    y = x.reshape(n, SIGNATURE_SIDE, half, 2).astype(np.uint16)
    y = (y[..., 0] + y[..., 1]).reshape(n, half, 2, half)  # pairs of columns, then of rows
    return (y[:, :, 0] + y[:, :, 1]).reshape(n, half * half)


def _coarse(x: np.ndarray, s: np.ndarray, v: np.ndarray, side: int = _COARSE) -> np.ndarray:
    """The orthogonal projection of the rows' unit vectors onto ``side`` x ``side``
    block-constant images (8 or :data:`_FINE`), in an orthonormal basis (block sum /
    sqrt(block size)): never longer than the unit vector. From the exact block sums of
    :func:`_centred` (``n * sum x - k^2 S``, < 2^23; the block sums of ``x``, <= 16 * 255,
    are exact in a float32 product or as integers), rounded twice."""
    k = SIGNATURE_SIDE // side
    sums = x.astype(np.float32) @ _BLOCKS if side == _COARSE else _block_sums(x)
    d = sums.astype(np.float32) * np.float32(SIGNATURE_SIZE)
    d -= np.float32(k * k) * s[:, None].astype(np.float32)
    c = d / (_norms(v)[:, None] * np.float32(k))
    c[v == 0] = 0.0
    return np.ascontiguousarray(c, dtype=np.float32)


def find_pairs(signatures: np.ndarray, *, threshold: float, block: int = BLOCK) -> list[NearPair]:
    """Every pair ``i < j`` whose :func:`similarity` is >= ``threshold`` (exact search).

    ``signatures``: (n, 1024) uint8, one row per image. ``block`` bounds the memory:
    a step holds about ``block * block`` bytes and 4 KB per row of its two blocks. Pairs
    come sorted by (i, j)."""
    i, j, sim = pair_arrays(signatures, threshold=threshold, block=block)
    return [NearPair(*p) for p in zip(i.tolist(), j.tolist(), sim.tolist(), strict=True)]


#: the pairs of :func:`pair_arrays`: ``i``, ``j`` (int64) and their similarity (float64)
PairArrays = tuple[np.ndarray, np.ndarray, np.ndarray]

#: float32 slack of the candidate filters. Both compare float32 products of vectors rounded
#: from exact integers (each value within 2.4e-7 relative): the coarse one a 66-term
#: product of terms of total size <= 4 (error <= 66 * 6e-8 * 4 + 1e-6 < 3e-5; the fine one
#: of :func:`pairs_between` 258 terms: <= 258 * 6e-8 * 4 + 1e-6 < 7e-5), the full one
#: a 1024-term dot product of unit vectors (error <= 1024 * 6e-8 + 5e-7 < 7e-5), whatever
#: the order of summation. Neither can drop a pair at the threshold: a true pair passes both.
_SLACK = 1e-4
_DECIDE_CHUNK = 65536  # candidates decided exactly at a time


@dataclass(frozen=True, slots=True)
class _Rows:
    """Signatures with what the search needs of them: the exact ``S`` and ``V``
    (:func:`_moments`) and the coarse projection as the two sides of one matrix product,
    ``|ci - cj|^2 = [ci, |ci|^2, 1] . [-2 cj, 1, |cj|^2]`` (``left``, ``right``)."""

    x: np.ndarray
    s: np.ndarray
    v: np.ndarray
    left: np.ndarray
    right: np.ndarray
    cache: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, x: np.ndarray, block: int, side: int = _COARSE) -> _Rows:
        """Computed ``block`` rows at a time (``side^2 + 2`` floats a row are kept)."""
        n = x.shape[0]
        s, v = np.empty(n, np.int64), np.empty(n, np.int64)
        c = np.empty((n, side * side), dtype=np.float32)
        for b in range(0, n, block):
            s[b : b + block], v[b : b + block] = _moments(x[b : b + block])
            c[b : b + block] = _coarse(x[b : b + block], s[b : b + block], v[b : b + block], side)
        cn = np.einsum("ij,ij->i", c, c)[:, None]
        ones = np.ones_like(cn)
        return cls(x, s, v, np.hstack([c, cn, ones]), np.hstack([-2.0 * c, ones, cn]))

    def __getitem__(self, rows: slice) -> _Rows:
        return _Rows(self.x[rows], self.s[rows], self.v[rows], self.left[rows], self.right[rows])

    def units(self) -> np.ndarray:
        """:func:`unit_vectors` of the rows, computed once for this object."""
        if "units" not in self.cache:
            self.cache["units"] = unit_vectors(self.x)
        return self.cache["units"]


def _within(
    left: np.ndarray, right: np.ndarray, bound: float, *, at_least: bool, out: np.ndarray
) -> None:
    """``left @ right.T >= bound`` (``at_least``) or ``<= bound``, written into ``out`` (bool):
    :data:`_ROWS` rows of ``left`` at a time, so the float product of the whole block is
    never held. Each row's products are those of the whole product, up to the order of
    summation, which the filters' slack covers (:data:`_SLACK`)."""
    compare = np.greater_equal if at_least else np.less_equal
    for r in range(0, len(left), _ROWS):
        compare(left[r : r + _ROWS] @ right.T, bound, out=out[r : r + _ROWS])


def _block_pairs(
    a: _Rows, b: _Rows, *, threshold: float, t_exact: Fraction, upper: bool
) -> list[PairArrays]:
    """The pairs (row of ``a``, row of ``b``) with correlation >= ``threshold``, decided
    exactly; ``upper``: ``a`` and ``b`` are the same rows, only pairs ``i < j`` are kept."""
    # a true pair has |ui - uj|^2 = 2 - 2 r <= 2 - 2 t, and the projection is no longer
    close = np.empty((len(a.x), len(b.x)), dtype=bool)
    _within(a.left, b.right, 2.0 - 2.0 * threshold + _SLACK, at_least=False, out=close)
    n_close = np.count_nonzero(close)
    if not n_close:
        return []
    if n_close > close.size // _DENSE:
        # look-alike images (one phantom, one protocol) pass the coarse bound in bulk:
        # one full matrix product is then cheaper than listing the candidates
        ub = a.units() if upper else b.units()
        _within(a.units(), ub, threshold - _SLACK, at_least=True, out=close)
    ii, jj = np.nonzero(close)
    keep = (a.v[ii] > 0) & (b.v[jj] > 0)
    if upper:
        keep &= ii < jj
    ii, jj = ii[keep], jj[keep]
    found: list[PairArrays] = []
    for k in range(0, len(ii), _DECIDE_CHUNK):  # decide exactly, in chunks
        pa, pb = ii[k : k + _DECIDE_CHUNK], jj[k : k + _DECIDE_CHUNK]
        ok, sims = _decide(_dots(a.x[pa], b.x[pb]), (a.s[pa], b.s[pb]), (a.v[pa], b.v[pb]), t_exact)
        found.append((pa[ok].astype(np.int64), pb[ok].astype(np.int64), sims[ok]))
    return found


def _check(threshold: float, block: int) -> Fraction:
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold}: must lie in [-1, 1]")
    if block < 1:
        raise ValueError(f"block={block}: must be >= 1")
    return _exact_threshold(threshold)


def _sorted(found: list[PairArrays]) -> PairArrays:
    """The pairs of ``found`` in one set of arrays, sorted by (i, j)."""
    if not found:
        return _EMPTY
    i, j, sim = (np.concatenate(parts) for parts in zip(*found, strict=True))
    order = np.lexsort((j, i))
    return i[order], j[order], sim[order]


def pair_arrays(signatures: np.ndarray, *, threshold: float, block: int = BLOCK) -> PairArrays:
    """:func:`find_pairs` as three arrays, sorted by (i, j): 24 bytes a pair, where a
    :class:`NearPair` object takes over 100 (thousands of near-identical images make
    millions of pairs).

    Which pairs are kept does not depend on the machine, the order of the rows or ``block``:
    float32 filters with a safe slack (:data:`_SLACK`) give candidates, and each candidate's
    correlation is decided from exact integer sums (``S``, ``sum x^2``, ``sum x*y``) against
    the threshold taken as the decimal it prints as (:func:`_exact_threshold`): 0.95 is
    19/20. A constant signature is in no pair, whatever the threshold."""
    t_exact = _check(threshold, block)
    sig = np.asarray(signatures)
    n = sig.shape[0] if sig.ndim == 2 else 0
    if n < 2:
        return _EMPTY
    rows = _Rows.of(as_signatures(sig), block)
    found: list[PairArrays] = []
    for s in range(0, n, block):
        ra = rows[s : s + block]  # its unit vectors, where a block needs them, computed once
        for t in range(s, n, block):
            for i, j, sim in _block_pairs(
                ra,
                ra if t == s else rows[t : t + block],
                threshold=threshold,
                t_exact=t_exact,
                upper=t == s,
            ):
                found.append((i + s, j + t, sim))
    out = _sorted(found)
    log.debug("near-duplicate search: %d signatures, %d pairs >= %s", n, len(out[0]), t_exact)
    return out


def pairs_between(
    a: np.ndarray, b: np.ndarray, *, threshold: float, block: int = BLOCK
) -> PairArrays:
    """Every pair (row ``i`` of ``a``, row ``j`` of ``b``) whose :func:`similarity` is >=
    ``threshold``, sorted by (i, j): the search of :func:`pair_arrays` across two sets, with
    the same exact decision. ``b`` is read ``block`` rows at a time (only ``a``'s filter
    vectors are kept), so a week's new signatures are searched against millions."""
    t_exact = _check(threshold, block)
    xa, xb = np.asarray(a), np.asarray(b)
    if xa.ndim != 2 or xb.ndim != 2 or not len(xa) or not len(xb):
        return _EMPTY
    xa = as_signatures(xa)
    ra = _Rows.of(xa, block, _FINE)  # the finer filter: its cost is linear here
    found: list[PairArrays] = []
    for t in range(0, len(xb), block):
        rb = _Rows.of(as_signatures(xb[t : t + block]), block, _FINE)
        for s in range(0, len(xa), block):
            for i, j, sim in _block_pairs(
                ra[s : s + block], rb, threshold=threshold, t_exact=t_exact, upper=False
            ):
                found.append((i + s, j + t, sim))
    return _sorted(found)


def update_pair_arrays(
    signatures: np.ndarray,
    previous: PairArrays,
    previous_row: np.ndarray,
    *,
    threshold: float,
    block: int = BLOCK,
) -> PairArrays:
    """:func:`pair_arrays` of ``signatures``, searching only the new ones against all.

    ``previous`` holds the pairs an earlier :func:`pair_arrays` (or this function) found at
    the same ``threshold`` over an earlier sequence of signatures; ``previous_row[k]`` is
    the row in that sequence that holds the same signature as row ``k`` here (each earlier
    row named at most once), or -1 for a signature that is new. The pairs of two earlier
    rows are taken from ``previous`` (renumbered; those of a row no longer present are
    dropped); every pair with a new row is searched (:func:`pairs_between`, new x all). A
    pair depends only on its two signatures, so the result is the same arrays, bit for bit,
    as :func:`pair_arrays` over ``signatures``. Raises ValueError when ``previous_row``
    does not fit."""
    t_exact = _check(threshold, block)
    sig = as_signatures(np.asarray(signatures))
    n = len(sig)
    prev = np.asarray(previous_row, dtype=np.int64)
    if prev.shape != (n,):
        raise ValueError(f"previous_row has shape {prev.shape}, the signatures {n} rows")
    kept = np.flatnonzero(prev >= 0)
    pi, pj, psim = previous
    size = int(max(prev.max(initial=-1), pi.max(initial=-1), pj.max(initial=-1))) + 1
    here = np.full(size, -1, dtype=np.int64)  # earlier row -> row here
    here[prev[kept]] = kept
    named = np.sort(prev[kept])
    if np.any(named[1:] == named[:-1]):
        raise ValueError("previous_row names an earlier row more than once")
    a, b = here[pi], here[pj]
    live = (a >= 0) & (b >= 0)
    a, b = a[live], b[live]
    found: list[PairArrays] = [(np.minimum(a, b), np.maximum(a, b), psim[live])]
    new = np.flatnonzero(prev < 0)
    ci, cj, csim = pairs_between(sig[new], sig, threshold=threshold, block=block)
    ci = new[ci]
    # a pair of two new rows is found from both sides: keep it once, never a row with itself
    once = (prev[cj] >= 0) | (ci < cj)
    ci, cj, csim = ci[once], cj[once], csim[once]
    found.append((np.minimum(ci, cj), np.maximum(ci, cj), csim))
    out = _sorted(found)
    log.info(
        "near-duplicate search: %d new of %d signatures, %d pairs >= %s",
        len(new),
        n,
        len(out[0]),
        t_exact,
    )
    return out


_EMPTY: PairArrays = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))
