"""hiroml.exams.neardup's pair search decides the threshold exactly: the same pairs for any row order,
any ``block`` and any machine, pairs within 1e-7 of the threshold included. The reference here
is a brute force over every pair in Python integers and fractions. A build searches only its
new signatures against all (paircache, new x all): the same pairs, week after week, as a
search of every pair."""

from __future__ import annotations

import itertools
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import MakeCfg

from hiroml import pipeline
from hiroml.exams import neardup, paircache

N = neardup.SIGNATURE_SIZE


def exact_pairs(sig: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Every pair i < j of non-constant rows with Pearson r >= ``threshold`` (the decimal
    it prints as), decided in Python integers and fractions."""
    x = sig.astype(np.int64)
    s = x.sum(axis=1).tolist()
    q = (x * x).sum(axis=1).tolist()
    p = (x @ x.T).tolist()
    t = Fraction(repr(threshold))
    out = set()
    for i, j in itertools.combinations(range(len(x)), 2):
        vi, vj = N * q[i] - s[i] ** 2, N * q[j] - s[j] ** 2
        if vi == 0 or vj == 0:
            continue
        cov = N * p[i][j] - s[i] * s[j]
        square = Fraction(cov * cov, vi * vj)  # r^2, exactly
        if (cov >= 0 and (t <= 0 or square >= t * t)) or (cov < 0 and t < 0 and square <= t * t):
            out.add((i, j))
    return out


def _r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def _pair_at(rng: np.random.Generator, target: float) -> tuple[np.ndarray, np.ndarray]:
    """Two signatures whose correlation is within 2e-8 of ``target`` (about 0.95): a random
    one and a noisy copy, nudged one cell by +-1 at a time towards the target."""
    a = rng.integers(0, 256, N)
    b = np.clip(a + rng.integers(-42, 43, N), 0, 255)
    sa, va = a.sum(), N * (a * a).sum() - a.sum() ** 2
    for _ in range(5000):
        sb, pb = b.sum(), (a * b).sum()
        cov, vb = N * pb - sa * sb, N * (b * b).sum() - sb**2
        if abs(cov / np.sqrt(float(va) * vb) - target) < 2e-8:
            return a.astype(np.uint8), b.astype(np.uint8)
        # every single-cell change b[k] += d, d = +-1, and the correlation it gives
        d = np.array([[1], [-1]])
        cov2 = cov + d * (N * a - sa)
        vb2 = vb + N * (2 * d * b + 1) - (2 * d * sb + 1)
        r2 = cov2 / np.sqrt(float(va) * vb2)
        r2[(b + d < 0) | (b + d > 255)] = np.inf
        row, k = np.unravel_index(np.argmin(np.abs(r2 - target)), r2.shape)
        b[k] += d[row, 0]
    raise AssertionError(f"no pair at {target}")


@pytest.fixture(scope="module")
def engineered() -> tuple[np.ndarray, dict[tuple[int, int], str]]:
    """A fixed, seeded set of 300 signatures holding pairs within 1e-7 of 0.95 on both sides,
    an identical pair, an inverted pair and two constant rows; the planted pairs by index."""
    rng = np.random.default_rng(26)
    sig = rng.integers(0, 256, (300, N)).astype(np.uint8)
    planted = {}
    slots = iter([(5, 250), (17, 18), (40, 299), (77, 123), (90, 91), (150, 12), (200, 201)])
    for offset in (9e-8, 5e-8, 2e-8, -2e-8, -5e-8, -9e-8):
        a, b = _pair_at(rng, 0.95 + offset)
        i, j = next(slots)
        sig[i], sig[j] = a, b
        planted[min(i, j), max(i, j)] = "above" if offset > 0 else "below"
    sig[60] = sig[61] = rng.integers(0, 256, N)  # identical: r = 1
    sig[62] = 255 - sig[60]  # inverted: r = -1 with both
    sig[100], sig[101] = 9, 9  # constant: similar to nothing
    return sig, planted


def test_pairs_within_1e_7_of_the_threshold_are_decided_exactly(
    engineered: tuple[np.ndarray, dict[tuple[int, int], str]],
) -> None:
    sig, planted = engineered
    for (i, j), side in planted.items():
        r = _r(sig[i], sig[j])
        assert 0 < abs(r - 0.95) < 1e-7 and (r > 0.95) == (side == "above"), (i, j, r)
    above = {pair for pair, side in planted.items() if side == "above"}
    assert above == {(5, 250), (17, 18), (40, 299)}
    want = above | {(60, 61)}
    assert exact_pairs(sig, 0.95) == want  # the reference agrees with the construction
    i, j, sim = neardup.pair_arrays(sig, threshold=0.95, block=64)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == sorted(want)
    for a, b, z in zip(i.tolist(), j.tolist(), sim.tolist(), strict=True):
        assert neardup.similarity(sig[a], sig[b]) == z  # the same float64, bit for bit
        assert z == pytest.approx(_r(sig[a], sig[b]), abs=1e-15)
    for a, b in planted:  # pairs below the threshold: similarity() says so too
        assert (neardup.similarity(sig[a], sig[b]) >= 0.95) == ((a, b) in want)


@pytest.mark.parametrize("threshold", [1.0, 0.95000001, 0.9499999, 0.5, 0.0, -0.02, -1.0])
def test_every_threshold_as_the_integer_rule(
    engineered: tuple[np.ndarray, dict[tuple[int, int], str]], threshold: float
) -> None:
    sig = engineered[0][:130]  # the planted pairs below 130 and the special rows
    want = exact_pairs(sig, threshold)
    i, j, _ = neardup.pair_arrays(sig, threshold=threshold, block=50)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == want
    if threshold == 1.0:
        assert want == {(60, 61)}
    if threshold == -1.0:  # every pair of non-constant rows, the inverted ones included
        assert len(want) == 128 * 127 // 2 and (60, 62) in want


def test_pairs_do_not_depend_on_row_order_or_block(
    engineered: tuple[np.ndarray, dict[tuple[int, int], str]],
) -> None:
    sig = engineered[0]
    i, j, sim = neardup.pair_arrays(sig, threshold=0.95)
    want = {(a, b): z for a, b, z in zip(i.tolist(), j.tolist(), sim.tolist(), strict=True)}
    perm = np.random.default_rng(5).permutation(len(sig))
    for block in (7, 64, 299, 4096):
        pi, pj, psim = neardup.pair_arrays(sig[perm], threshold=0.95, block=block)
        got = {
            (min(perm[a], perm[b]), max(perm[a], perm[b])): z
            for a, b, z in zip(pi.tolist(), pj.tolist(), psim.tolist(), strict=True)
        }
        assert got == want, block  # the same pairs and the same float64 similarities
        assert np.all(pi < pj) and np.all(np.diff(pi * len(sig) + pj) > 0)  # sorted by (i, j)


def test_similarity_of_constant_and_bad_signatures() -> None:
    a = np.arange(N) % 256
    assert neardup.similarity(a, np.full(N, 7)) == 0.0
    assert neardup.similarity(a, a) == 1.0
    assert neardup.similarity(a, 255 - a) == -1.0
    assert neardup.similarity(tuple(a.tolist()), a.astype(np.uint8)) == 1.0
    with pytest.raises(ValueError, match=r"integers in 0\.\.255"):
        neardup.similarity(a + 0.5, a)
    with pytest.raises(ValueError, match="shape"):
        neardup.similarity(a[:10], a[:10])


def _ranked_bytes_by_the_definition(values: np.ndarray) -> np.ndarray:
    """The signature's last step as defined: every cell's average rank (ties share their mean,
    from a stable sort), scaled to 0..255, rounded, uint8 (the code before the fast path)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return np.rint(ranks * (255.0 / (N - 1))).astype(np.uint8)


def test_signature_ranks_are_those_of_the_definition_with_and_without_ties() -> None:
    rng = np.random.default_rng(5)
    cases = [rng.random(N), rng.integers(0, 40, N).astype(float), np.zeros(N)]
    cases += [np.r_[rng.random(N - 2), 0.5, 0.5], np.arange(N, 0, -1.0)]
    for values in cases:
        got = neardup._rank_bytes(values)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, _ranked_bytes_by_the_definition(values))
    for seed in range(30):  # whole signatures: float16 images, uint16 images, flat regions
        img = np.random.default_rng(seed).random((96, 80))
        img[:20, :30] = 0.25 if seed % 2 else img[:20, :30]
        for arr in (img.astype(np.float16), (img * 4095).astype(np.uint16)):
            f = neardup._trim(neardup._as_float32(arr))
            work = cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA)
            work = work - cv2.GaussianBlur(work, (0, 0), 2.0)
            small = cv2.resize(work, (32, 32), interpolation=cv2.INTER_AREA)
            want = _ranked_bytes_by_the_definition(small.reshape(-1).astype(np.float64))
            np.testing.assert_array_equal(neardup.signature(arr), want)


@pytest.mark.parametrize("threshold", [0.95, 0.9499999, 0.5, -0.02])
def test_new_against_all_is_decided_exactly(
    engineered: tuple[np.ndarray, dict[tuple[int, int], str]], threshold: float
) -> None:
    """pairs_between (a week's new rows against all, through the finer 16 x 16 filter) finds
    exactly the pairs across the two sets that the brute force finds, the planted pairs
    within 1e-7 of 0.95 and rows present in both sets included, with the float64 similarity
    of :func:`neardup.similarity`."""
    sig = engineered[0]
    a, b = sig[:120], sig[100:]  # rows 100..119 in both
    both = exact_pairs(np.concatenate([a, b]), threshold)
    want = {(i, j - len(a)) for i, j in both if i < len(a) <= j}
    for block in (64, 4096):
        i, j, sim = neardup.pairs_between(a, b, threshold=threshold, block=block)
        assert list(zip(i.tolist(), j.tolist(), strict=True)) == sorted(want), block
        for p, q, z in list(zip(i.tolist(), j.tolist(), sim.tolist(), strict=True))[:50]:
            assert neardup.similarity(a[p], b[q]) == z
    if threshold == 0.95:  # the planted pairs above it, across the sets; those below not
        assert {(5, 150), (40, 199)} <= want and not {(77, 23), (12, 50)} & want


def test_fine_projection_is_the_exact_one_rounded() -> None:
    """The 16 x 16 block projection of :func:`pairs_between`'s filter: within float32
    rounding of the exact projection of the unit vector, and never longer than it."""
    sig = np.random.default_rng(4).integers(0, 256, (30, N)).astype(np.uint8)
    sig[3] = 7
    s, v = neardup._moments(sig)
    c = neardup._coarse(sig, s, v, neardup._FINE)
    x = sig.astype(np.float64)
    d = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    u = np.divide(d, norm, out=np.zeros_like(d), where=norm > 0).reshape(-1, 16, 2, 16, 2)
    exact = u.sum(axis=(2, 4)).reshape(len(sig), -1) / 2.0  # block sum / sqrt(4)
    assert c.dtype == np.float32 and c.shape == (30, 256) and not c[3].any()
    assert np.all(np.abs(c - exact) <= 1e-6 * np.abs(exact).max())
    assert np.all(np.linalg.norm(c, axis=1) <= 1.0 + 1e-6)


def test_look_alike_signatures_take_the_full_product_row_by_row_and_the_exact_pairs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Noisy copies of one image (one phantom, one protocol) pass the coarse filter in bulk,
    so each block is filtered on the full product of unit vectors, :data:`neardup._ROWS`
    rows at a time: any number of rows at a time gives the exact rule's pairs, and the same
    unit vectors bit for bit."""
    rng = np.random.default_rng(31)
    base = rng.integers(0, 256, N)
    sig = np.clip(base + rng.integers(-70, 71, (120, N)), 0, 255).astype(np.uint8)
    want = exact_pairs(sig, 0.77)
    assert 100 < len(want) < 120 * 119 // 2 - 100  # pairs on both sides of the threshold
    computed: list[int] = []
    units = neardup._Rows.units
    monkeypatch.setattr(neardup._Rows, "units", lambda rows: computed.append(1) or units(rows))
    whole = neardup.unit_vectors(sig)
    for at_a_time in (neardup._ROWS, 7):
        monkeypatch.setattr(neardup, "_ROWS", at_a_time)
        assert np.array_equal(neardup.unit_vectors(sig), whole)
        for block in (120, 50):
            computed.clear()
            i, j, _ = neardup.pair_arrays(sig, threshold=0.77, block=block)
            assert set(zip(i.tolist(), j.tolist(), strict=True)) == want, (at_a_time, block)
            assert computed  # the blocks took the full product


def test_unit_vectors_are_the_exact_ones_rounded() -> None:
    sig = np.random.default_rng(2).integers(0, 256, (20, N)).astype(np.uint8)
    sig[3] = 4
    x = sig.astype(np.float64)
    d = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    exact = np.divide(d, norm, out=np.zeros_like(d), where=norm > 0)
    u = neardup.unit_vectors(sig)
    assert u.dtype == np.float32 and not u[3].any()
    assert np.all(np.abs(u - exact) <= 2.4e-7 * np.abs(exact))


# ------------------------------------------------------------------ new x all, week by week


def _pool(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random signatures, a third of them noisy copies of an earlier one (noise of
    +-20 to +-60 per cell: correlations on both sides of 0.95), some exact copies, and a
    constant row."""
    pool = rng.integers(0, 256, (n, N)).astype(np.uint8)
    for k in range(10, n, 3):
        width = int(rng.integers(20, 61))
        noisy = pool[rng.integers(0, k)].astype(int) + rng.integers(-width, width + 1, N)
        pool[k] = np.clip(noisy, 0, 255)
    pool[40:44] = pool[7]  # the same signature four times
    pool[50] = 3
    return pool


def _same(got: neardup.PairArrays, want: neardup.PairArrays) -> bool:
    return all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_new_against_all_week_after_week_equals_every_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(31)
    pool = _pool(rng, 2400)
    searched: list[int] = []  # the rows each week searched against all
    between = neardup.pairs_between

    def spy(a: np.ndarray, b: np.ndarray, **kw: Any) -> neardup.PairArrays:
        searched.append(len(a))
        return between(a, b, **kw)

    monkeypatch.setattr(neardup, "pairs_between", spy)
    rows = np.arange(600)  # pool rows in this week's order
    unused = list(range(600, len(pool)))
    previous: list[bytes] = []
    for week in range(6):
        sig = pool[rows]
        got = paircache.cached_pair_arrays(tmp_path, sig, threshold=0.95)
        want = neardup.pair_arrays(sig, threshold=0.95)
        assert _same(got, want), week
        assert len(want[0]) > 100, week
        left = [bytes(r) for r in sig]
        for r in previous:  # the rows of this week that the last one did not have
            if r in left:
                left.remove(r)
        assert searched == ([] if week == 0 else [len(left)]), week
        assert week == 0 or 0 < len(left) < len(sig) // 3
        previous, searched[:] = [bytes(r) for r in sig], []
        # the next week: a batch added, one removed, zips changed, another order
        rows = np.delete(rows, rng.choice(len(rows), 40, replace=False))
        rows[rng.choice(len(rows), 10, replace=False)] = unused[:10]  # changed signatures
        rows = np.r_[rows, unused[10:160], rows[:2]]  # and two signatures twice
        del unused[:160]
        rng.shuffle(rows)
    # nothing new: the pairs are read back, nothing is searched
    sig = pool[rows]
    paircache.cached_pair_arrays(tmp_path, sig, threshold=0.95)
    searched.clear()
    again = paircache.cached_pair_arrays(tmp_path, sig, threshold=0.95)
    assert searched == [] and _same(again, neardup.pair_arrays(sig, threshold=0.95))


def test_update_from_pairs_that_do_not_fit_is_refused_and_a_bad_file_searched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = neardup.pair_arrays
    sig = _pool(np.random.default_rng(3), 300)
    pairs = neardup.pair_arrays(sig, threshold=0.9)
    with pytest.raises(ValueError, match="shape"):
        neardup.update_pair_arrays(sig, pairs, np.arange(5), threshold=0.9)
    with pytest.raises(ValueError, match="more than once"):
        neardup.update_pair_arrays(sig, pairs, np.zeros(300, np.int64), threshold=0.9)
    # an earlier sequence in another order, with rows that are gone: renumbered, dropped
    earlier = np.random.default_rng(4).permutation(400)
    row = np.full(300, -1)
    row[:250] = np.argsort(earlier)[:250]
    before = np.zeros((400, N), np.uint8)
    kept = earlier < 250  # earlier row p held signature earlier[p] when it is < 250
    before[kept] = sig[earlier[kept]]
    before[~kept] = _pool(np.random.default_rng(5), 400)[~kept]
    got = neardup.update_pair_arrays(
        sig, neardup.pair_arrays(before, threshold=0.9), row, threshold=0.9
    )
    assert _same(got, pairs)
    # a stored file that does not hold together: every pair is searched again
    paircache.cached_pair_arrays(tmp_path, sig, threshold=0.9)
    path = paircache.cache_dir(tmp_path) / paircache.CACHE_FILE
    with np.load(path) as z:
        good = dict(z)
    assert len(good["i"]) > 2
    bad = {
        "a row beyond the digests": {"j": good["j"] + 1000},
        "pairs out of order": {"i": good["i"][::-1].copy(), "j": good["j"][::-1].copy()},
        "text similarities": {"similarity": good["similarity"].astype(str)},
        "one digest for all": {"digests": good["digests"][0]},
    }
    searched: list[int] = []

    def spy(x: np.ndarray, **kw: Any) -> neardup.PairArrays:
        searched.append(len(x))
        return full(x, **kw)

    monkeypatch.setattr(neardup, "pair_arrays", spy)
    for what, change in bad.items():
        np.savez(path, **{**good, **change})
        searched.clear()
        assert _same(paircache.cached_pair_arrays(tmp_path, sig[::-1], threshold=0.9),
                     full(sig[::-1], threshold=0.9)), what  # fmt: skip
        assert searched == [len(sig)], what


def test_match_rows_pairs_each_occurrence_once() -> None:
    d = paircache.row_digests(np.array([[1] * N, [2] * N, [1] * N, [3] * N], np.uint8))
    assert d.shape == (4, paircache.DIGEST_SIZE) and (d[0] == d[2]).all()
    assert paircache.match_rows(d[[2, 0, 0, 1]], d).tolist() == [0, 2, -1, 1]
    assert paircache.match_rows(d[:0], d).tolist() == []
    assert paircache.match_rows(d, d[:0]).tolist() == [-1] * 4


def _decisions(out: Path) -> dict[str, str]:
    """The build's tables without the columns that say where bytes are stored, as text."""
    m = pd.read_parquet(out / "manifest.parquet")
    m = m.drop(columns=["shard", "shard_sha256", "offset", "nbytes", "dataset", "index"],
               errors="ignore").sort_values("sample_key")  # fmt: skip
    p = pd.read_parquet(out / "patients.parquet").sort_values("patient_group")
    return {
        "manifest": m.to_json(orient="records", date_format="iso"),
        "patients": p.to_json(orient="records"),
        "audit": (out / "audit.csv").read_text(),
    }


def test_a_build_with_an_added_batch_decides_as_a_fresh_build(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At threshold 0.5 the tiny datamart's radiographs make dozens of pairs that link
    patient groups: a missed or extra pair would change the tables."""
    root = tmp_path / "datamart"
    shutil.copytree(tiny_datamart[0], root)
    held = sorted(root.glob("CXR-*-COMPLETE"))[-1]
    aside = tmp_path / held.name
    held.rename(aside)
    low = "splits.near_duplicate_threshold=0.5"
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    pipeline.run(make_cfg(root, out, low))
    aside.rename(held)
    searched: list[int] = []
    between = neardup.pairs_between

    def spy(a: np.ndarray, b: np.ndarray, **kw: Any) -> neardup.PairArrays:
        searched.append(len(a))
        return between(a, b, **kw)

    monkeypatch.setattr(neardup, "pairs_between", spy)
    pipeline.run(make_cfg(root, out, low))
    monkeypatch.undo()
    pipeline.run(make_cfg(root, fresh, low))
    m = pd.read_parquet(fresh / "manifest.parquet")
    added = m["batch"].eq(held.name) & m["modality"].eq("cxr")
    assert searched == [added.sum()] and 0 < added.sum() < (m["modality"] == "cxr").sum()
    assert m["near_duplicates"].map(len).sum() > 20
    assert _decisions(out) == _decisions(fresh)
