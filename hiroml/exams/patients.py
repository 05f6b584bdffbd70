"""Patient groups: ids joined by shared images and links (union-find)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from operator import attrgetter

from hiroml.exams.rules import _Unit
from hiroml.frozen import maker
from hiroml.records import Instance, PatientGroup

log = logging.getLogger(__name__)
#: ``PatientGroup(group, patient_ids, links, aliases)`` without the frozen ``__init__`` (one
#: per patient, every build: :func:`hiroml.frozen.maker`)
_make_group = maker(PatientGroup)


class UnionFind:
    """Disjoint sets of names; the smaller name is the root of each set, so the result does
    not depend on the order of unions. ``find`` adds a name it has not seen."""

    def __init__(self, items: Iterable[str] = ()) -> None:
        self.parent = {i: i for i in items}

    def find(self, x: str) -> str:
        parent = self.parent
        root = parent.setdefault(x, x)
        if root == x:  # a root (most ids: a patient of one id)
            return x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra


def _shared_across_patients(
    units: Sequence[_Unit], values: Sequence[tuple[str, ...]]
) -> dict[str, list[tuple[str, _Unit]]]:
    """value -> [(patient, unit)...] for each value held by zips of two or more patients."""
    first: dict[str, str] = {}
    multi: set[str] = set()
    for u, vals in zip(units, values, strict=True):
        for v in vals:
            p = first.setdefault(v, u.patient)
            if p != u.patient:
                multi.add(v)
    out: dict[str, list[tuple[str, _Unit]]] = defaultdict(list)
    if multi:
        for u, vals in zip(units, values, strict=True):
            for v in vals:
                if v in multi:
                    out[v].append((u.patient, u))
    return out


def _groups(
    units: Sequence[_Unit], remap: Mapping[str, str], max_hash_patients: int
) -> tuple[tuple[PatientGroup, ...], dict[str, str]]:
    """Union-find over current patient ids, linked by shared SOP UIDs or pixel hashes
    (:func:`_link_patients`), then one :class:`PatientGroup` per set of linked ids.

    ``aliases`` of a group: every other id of its patients, from the zip names and from the
    remap sheet (old ids whose images may or may not be in the datamart)."""
    patients = sorted({u.patient for u in units})
    uf = UnionFind(patients)
    sources: dict[str, set[str]] = defaultdict(set)
    for u in units:
        sources[u.patient].add(u.zip.name.patient_id)
    for old, new in remap.items():
        if new in uf.parent:
            sources[new].add(old)
    pair = _link_patients(units, uf, max_hash_patients)
    members: dict[str, list[str]] = defaultdict(list)
    for p in patients:
        members[uf.find(p)].append(p)
    pair_text: dict[str, list[str]] = defaultdict(list)
    for (a, b), n in sorted(pair.items()):
        pair_text[uf.find(a)].append(
            f"{a} ~ {b}: {n[0]} shared SOP Instance UID(s), {n[1]} identical pixel hash(es)"
        )
    group_of: dict[str, str] = {}
    groups: list[PatientGroup] = []
    for root in sorted(members):
        ids = members[root]  # in order: ``patients`` is sorted
        name = f"g{ids[0]}"
        for p in ids:
            group_of[p] = name
        links = tuple(pair_text.get(root, ()))
        if len(ids) == 1:
            aliases = sorted(sources[root] - {root})
        else:
            aliases = sorted(set().union(*(sources[p] for p in ids)) - set(ids))
        groups.append(_make_group(name, tuple(ids), links, tuple(aliases)))
        if links:
            log.info("patient group %s joins ids %s", name, ", ".join(ids))
    groups.sort(key=attrgetter("group"))
    return tuple(groups), group_of


def _real_uids(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The SOP Instance UIDs of ``keys`` (:attr:`_Unit.sop_keys`), without the stand-ins of
    members whose UID is blank."""
    if len(keys) == 1:
        return () if keys[0].startswith("\x00") else keys
    return tuple(k for k in keys if not k.startswith("\x00"))


def _pixel_hashes(instances: tuple[Instance, ...]) -> tuple[str, ...]:
    """The distinct non-blank pixel hashes of ``instances``."""
    if len(instances) == 1:
        h = instances[0].pixel_hash
        return (h,) if h else ()
    return tuple({i.pixel_hash for i in instances if i.pixel_hash})


def _link_patients(
    units: Sequence[_Unit], uf: UnionFind, max_hash_patients: int
) -> dict[tuple[str, str], list[int]]:
    """Join in ``uf`` the patient ids whose zips share a (0008,0018) SOP Instance UID or a
    pixel hash; (a, b) with a < b -> [n shared SOP UIDs, n shared pixel hashes]. Each zip
    that carries a link gets a note naming the other ids.

    A pixel hash held by more than ``max_hash_patients`` patient ids is a common image
    (blank frame, template, phantom scout), not evidence of one patient: it links nothing and
    is noted on the zips that hold it."""
    pair: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    unit_links: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    unit_of: dict[int, _Unit] = {}
    sop_vals = [_real_uids(u.sop_keys) for u in units]
    hash_vals = [_pixel_hashes(u.instances) for u in units]
    common: dict[int, set[str]] = defaultdict(set)  # unit -> common hashes it holds
    for slot, values in ((0, sop_vals), (1, hash_vals)):
        for value, holders in _shared_across_patients(units, values).items():
            pts = sorted({p for p, _ in holders})
            if slot == 1 and max_hash_patients and len(pts) > max_hash_patients:
                for _p, u in holders:
                    unit_of[id(u)] = u
                    common[id(u)].add(value)
                log.info("pixel hash %s under %d patient ids: common image", value, len(pts))
                continue
            for a in pts:
                for b in pts:
                    if a < b:
                        pair[(a, b)][slot] += 1
                        uf.union(a, b)
            seen_units: set[int] = set()
            for p, u in holders:
                if id(u) in seen_units:
                    continue
                seen_units.add(id(u))
                unit_of[id(u)] = u
                for other in pts:
                    if other != p:
                        unit_links[id(u)][other][slot] += 1
    for uid, hashes in common.items():
        unit_of[uid].notes.append(
            f"{len(hashes)} image(s) identical to images of more than {max_hash_patients} "
            "patient ids: common images, no group link"
        )
    for uid, per_other in unit_links.items():
        u = unit_of[uid]
        for other in sorted(per_other):
            n_sop, n_hash = per_other[other]
            u.notes.append(
                f"patient group link: {n_sop} SOP Instance UID(s) and {n_hash} pixel hash(es) "
                f"also under patient {other}"
            )
    return pair
