"""Patient groups linked by what the images show, not by their bytes (pure, no I/O but
:func:`decoded_pixel_hash`, which decodes bytes it is given).

The exams stage links patient ids through (0008,0018) SOP Instance UIDs and a hash of the
*encoded* (7FE0,0010) Pixel Data; the same radiograph in another transfer syntax has other
bytes and escapes it. After conversion every stored sample has a ``data_hash`` (BLAKE2b of
the stored array, :func:`hiroml.store.shards.array_hash`) and radiographs a near-duplicate
``signature`` (:mod:`hiroml.exams.neardup`). :func:`link_groups` joins, with a union-find over
the patient groups of the exams stage:

* groups whose samples share a ``data_hash`` (identical decoded, stored pixels, any
  modality, whatever the transfer syntax), always; a ``data_hash`` held by more than
  ``max_patients`` patient ids (when > 0: ``exams.pixel_link_max_patients``) is a common
  image (blank, template) and links nothing, as for encoded pixel hashes;
* groups holding a pair of radiographs whose signatures' rank correlation is at least
  ``near_threshold`` (``splits.near_duplicate_threshold``): reported always, linked when
  ``link_near`` (``splits.link_near_duplicates``).

Each link is a :class:`GroupLink` naming both samples and the evidence, for the audit
detail, the patients table's ``links`` and the report. The joined group is named after the
smallest group name, so the result never depends on the order of the samples.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np

from hiroml.exams import neardup
from hiroml.exams.patients import UnionFind
from hiroml.frozen import maker

log = logging.getLogger(__name__)

SAME_PIXELS = "same decoded pixels"
#: the most near-duplicate partners a sample lists (manifest ``near_duplicates``): beyond
#: it (thousands of near-identical images) the list is cut and the build warns
NEAR_DUPLICATES_LISTED = 100
#: the near-duplicate search: ``(signatures, *, threshold) -> pairs`` as neardup.pair_arrays
FindPairs = Callable[..., neardup.PairArrays]
NEAR_DUPLICATE = "near duplicate"


@dataclass(frozen=True, slots=True)
class SampleIdentity:
    """What linking needs of one stored sample. ``signature``: radiographs only (the 1,024
    uint8 values of :func:`hiroml.exams.neardup.signature` as bytes), empty for CT."""

    sample_key: str
    exam_key: str
    patient_id: str  # current id
    data_hash: str
    signature: bytes = b""


#: ``SampleIdentity(sample_key, exam_key, patient_id, data_hash, signature)`` without the
#: frozen ``__init__`` (one per sample, every build: :func:`hiroml.frozen.maker`)
make_identity = maker(SampleIdentity)


@dataclass(frozen=True, slots=True)
class GroupLink:
    """Two samples of different patient groups that show the same image."""

    kind: str  # SAME_PIXELS | NEAR_DUPLICATE
    sample_key: str
    other_key: str
    exam_key: str
    other_exam_key: str
    patient_id: str
    other_patient_id: str
    group: str  # the groups before linking
    other_group: str
    similarity: float  # 1.0 for identical pixels
    linked: bool  # False: a near duplicate reported but not linked

    def text(self) -> str:
        """The evidence in one line, naming both samples."""
        if self.kind == SAME_PIXELS:
            what = "identical decoded pixels (same data_hash)"
        else:
            what = f"near-duplicate signature (rank correlation {self.similarity:.3f})"
        tail = "" if self.linked else "; not linked (splits.link_near_duplicates=false)"
        return (
            f"{what}: {self.sample_key} (patient {self.patient_id}, group {self.group}) ~ "
            f"{self.other_key} (patient {self.other_patient_id}, group {self.other_group})"
            f"{tail}"
        )

    def note_for(self, exam_key: str) -> str:
        """The audit detail for the exam ``exam_key`` (one side of the link)."""
        if exam_key == self.exam_key:
            mine, other = self.sample_key, self.other_key
            pid, group = self.other_patient_id, self.other_group
        else:
            mine, other, pid, group = self.other_key, self.sample_key, self.patient_id, self.group
        verb = "patient group link" if self.linked else "near duplicate (not linked)"
        if self.kind == SAME_PIXELS:
            evidence = "identical decoded pixels (same data_hash)"
        else:
            evidence = f"near-duplicate signature, rank correlation {self.similarity:.3f}"
        return f"{verb}: {mine} has {evidence} as {other} of patient {pid} (group {group})"


@dataclass(frozen=True, slots=True)
class LinkResult:
    """``group_of``: every patient id given -> its group after linking; ``links``: the
    links made or reported, sorted by kind then sample keys; ``near_duplicates``: sample key
    -> the sorted keys of its near-duplicate partners across groups, the first
    :data:`NEAR_DUPLICATES_LISTED` only; ``near_counts``: sample key -> how many partners it
    has in all; ``near_pairs``: the near-duplicate pairs across groups, in all."""

    group_of: dict[str, str]
    links: tuple[GroupLink, ...]
    near_duplicates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    near_counts: dict[str, int] = field(default_factory=dict)
    near_pairs: int = 0

    def notes_by_exam(self) -> dict[str, list[str]]:
        """exam key -> the audit notes of the links its samples take part in."""
        out: dict[str, list[str]] = defaultdict(list)
        for link in self.links:
            out[link.exam_key].append(link.note_for(link.exam_key))
            if link.other_exam_key != link.exam_key:
                out[link.other_exam_key].append(link.note_for(link.other_exam_key))
        return dict(out)

    def texts_by_group(self) -> dict[str, list[str]]:
        """final group -> the one-line evidence of each of its links."""
        out: dict[str, list[str]] = defaultdict(list)
        for link in self.links:
            out[self.group_of.get(link.patient_id, link.group)].append(link.text())
        return dict(out)


def _link(
    kind: str,
    a: SampleIdentity,
    b: SampleIdentity,
    group: Mapping[str, str],
    sim: float,
    linked: bool,
) -> GroupLink:
    if b.sample_key < a.sample_key:
        a, b = b, a
    return GroupLink(
        kind=kind,
        sample_key=a.sample_key,
        other_key=b.sample_key,
        exam_key=a.exam_key,
        other_exam_key=b.exam_key,
        patient_id=a.patient_id,
        other_patient_id=b.patient_id,
        group=group[a.patient_id],
        other_group=group[b.patient_id],
        similarity=sim,
        linked=linked,
    )


def link_groups(
    samples: Iterable[SampleIdentity],
    group_of: Mapping[str, str],
    *,
    near_threshold: float | None = None,
    link_near: bool = True,
    max_patients: int = 0,
    find_pairs: FindPairs = neardup.pair_arrays,
) -> LinkResult:
    """Join the patient groups of ``group_of`` (patient id -> group) whose samples show the
    same image; see the module docstring. A patient id missing from ``group_of`` is its own
    group. ``near_threshold=None`` skips the near-duplicate search. ``find_pairs`` is the
    search (:func:`hiroml.exams.neardup.pair_arrays`, or one that reuses an earlier result of it:
    :func:`hiroml.exams.paircache.cached_pair_arrays`).

    Near-duplicate pairs are streamed, never held as objects: a pair becomes a
    :class:`GroupLink` only when it joins two groups not joined yet (a spanning tree of the
    groups, so thousands of near-identical images make links by the group, not by the pair);
    every pair counts in ``near_counts`` and ``near_pairs``."""
    if near_threshold is not None and not -1.0 <= near_threshold <= 1.0:
        raise ValueError(f"near_threshold={near_threshold}: must lie in [-1, 1]")
    items = sorted(samples, key=attrgetter("sample_key"))
    group = {s.patient_id: group_of.get(s.patient_id, s.patient_id) for s in items}
    group.update(group_of)
    uf = UnionFind()
    links: list[GroupLink] = []

    by_hash: dict[str, list[SampleIdentity]] = defaultdict(list)
    for s in items:
        if s.data_hash:
            by_hash[s.data_hash].append(s)
    shared = sorted((d, holders) for d, holders in by_hash.items() if len(holders) > 1)
    for digest, holders in shared:
        first: dict[str, SampleIdentity] = {}  # group -> its first sample with this hash
        for s in holders:
            first.setdefault(group[s.patient_id], s)
        if len(first) < 2:
            continue
        n_patients = len({s.patient_id for s in holders})
        if max_patients and n_patients > max_patients:
            log.info("data_hash %s under %d patient ids: common image, no link", digest, n_patients)
            continue
        anchor, *others = (first[g] for g in sorted(first))
        for s in others:
            uf.union(group[anchor.patient_id], group[s.patient_id])
            links.append(_link(SAME_PIXELS, anchor, s, group, 1.0, True))

    near = _Near()
    if near_threshold is not None:
        signed = [s for s in items if len(s.signature) == neardup.SIGNATURE_SIZE]
        if len(signed) > 1:
            grid = b"".join(bytes(s.signature) for s in signed)  # no copy of bytes
            sigs = np.frombuffer(grid, dtype=np.uint8).reshape(len(signed), -1)
            pairs = find_pairs(sigs, threshold=near_threshold)
            links += _near_links(signed, pairs, group, uf, near, link_near=link_near)

    final = {pid: uf.find(g) for pid, g in group.items()}
    links.sort(key=lambda k: (k.kind, k.sample_key, k.other_key))
    joined = sum(1 for k in links if k.linked)
    if links:
        log.info("pixel identity: %d link(s) between patient groups, %d joined", len(links), joined)
    cut = sum(1 for n in near.counts.values() if n > NEAR_DUPLICATES_LISTED)
    if cut:
        log.warning(
            "%d sample(s) have more than %d near duplicates across groups: their "
            "near_duplicates list the first %d (by sample key) only",
            cut,
            NEAR_DUPLICATES_LISTED,
            NEAR_DUPLICATES_LISTED,
        )
    return LinkResult(
        group_of=final,
        links=tuple(links),
        near_duplicates={k: tuple(v) for k, v in near.listed.items()},
        near_counts=dict(near.counts),
        near_pairs=near.pairs,
    )


@dataclass(slots=True)
class _Near:
    """The near-duplicate partners of each sample (the first :data:`NEAR_DUPLICATES_LISTED`
    by key), how many it has, and the pairs in all."""

    listed: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    counts: dict[str, int] = field(default_factory=dict)
    pairs: int = 0

    def fill(self, keys: list[str], i: np.ndarray, j: np.ndarray) -> None:
        """From the pairs ``(i, j)`` (indices into ``keys``, sorted), column-wise."""
        n = len(keys)
        self.pairs = len(i)
        counts = np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
        self.counts = {keys[k]: c for k, c in enumerate(counts.tolist()) if c}
        src, dst = np.concatenate([i, j]), np.concatenate([j, i])
        order = np.lexsort((dst, src))  # by sample, then partner: keys are sorted
        src, dst = src[order], dst[order]
        rank = np.arange(len(src)) - np.searchsorted(src, np.arange(n))[src]
        first = rank < NEAR_DUPLICATES_LISTED
        for a, b in zip(src[first].tolist(), dst[first].tolist(), strict=True):
            self.listed[keys[a]].append(keys[b])


def _near_links(
    signed: list[SampleIdentity],
    pairs: neardup.PairArrays,
    group: Mapping[str, str],
    uf: UnionFind,
    near: _Near,
    *,
    link_near: bool,
) -> list[GroupLink]:
    """The near-duplicate links of ``pairs`` (indices into ``signed``, sorted by (i, j);
    ``signed`` sorted by key), one per pair that joins two groups not joined yet (in pair
    order); every pair across groups goes into ``near``. Filtered column-wise: only the
    pairs that may join two groups are looked at one by one."""
    i, j, sim = pairs
    names = [group[s.patient_id] for s in signed]
    gi = _codes(names)
    hi = _codes([s.data_hash for s in signed])
    blank = np.array([not s.data_hash for s in signed])
    keep = (gi[i] != gi[j]) & ((hi[i] != hi[j]) | blank[i])  # identical pixels: linked above
    if not link_near:  # reported only: not between groups the identical pixels joined
        roots = _codes([uf.find(g) for g in names])
        keep &= roots[i] != roots[j]
    i, j, sim = i[keep], j[keep], sim[keep]
    near.fill([s.sample_key for s in signed], i, j)
    seen = uf if link_near else UnionFind()  # groups joined by the links so far
    links: list[GroupLink] = []
    chunk = 65536
    for c in range(0, len(i), chunk):
        roots = _codes([seen.find(g) for g in names])  # groups joined before this chunk
        ci, cj = i[c : c + chunk], j[c : c + chunk]
        for k in np.flatnonzero(roots[ci] != roots[cj]).tolist():
            a, b = signed[int(ci[k])], signed[int(cj[k])]
            ga, gb = names[int(ci[k])], names[int(cj[k])]
            if seen.find(ga) != seen.find(gb):
                seen.union(ga, gb)
                links.append(_link(NEAR_DUPLICATE, a, b, group, float(sim[c + k]), link_near))
    return links


def _codes(values: list[str]) -> np.ndarray:
    """Equal values, equal integers."""
    index: dict[str, int] = {}
    return np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)


def decoded_pixel_hash(data: bytes) -> str:
    """BLAKE2b (128 bit, hex) of a DICOM instance's decoded (7FE0,0010) Pixel Data: the
    stored values of every frame as :func:`hiroml.dicom.decode.decode` gives them (before any LUT),
    in native byte order, with their shape and kind. The same image in any transfer syntax
    (explicit/implicit little endian, big endian, RLE, JPEG lossless, JPEG-LS, JPEG 2000
    lossless...) gives the same hash.

    Raises :class:`hiroml.errors.HiromlError` (or the decoder's error) when the member does
    not parse or its pixels cannot be decoded."""
    from hiroml.dicom import decode as dicom

    ds = dicom.parse(data, label="pixel identity").dataset
    frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    arr = np.stack([dicom.decode(ds, frame=k).array for k in range(frames)])
    a = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.kind}{a.dtype.itemsize}".encode())
    h.update(repr(tuple(int(n) for n in a.shape)).encode())
    h.update(a.reshape(-1).view(np.uint8).data if a.size else b"")
    return h.hexdigest()
