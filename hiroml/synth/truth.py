"""Ground-truth assembly: once every zip is written, derive what a correct build must find
(exams and their instances, the images and series kept, patient groups, the clinical
table) from what the scenarios planted.

The format is described in the package docstring (:mod:`hiroml.synth`). The clinical
table draws from the shared random stream after every scenario, so it runs last.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from hiroml.config import CtConfig
from hiroml.synth.datamart import Datamart
from hiroml.synth.factory import CLINICAL_NAME, PRIVATE_STRINGS, REMAP_SHEET
from hiroml.vocab import Action

_PREFERRED_KERNELS = tuple(CtConfig().preferred_kernels)  # the "best" hint follows the config
_UNREADABLE = ("non_dicom", "truncated_dicom", "corrupt_zip", "truncated_zip")
#: Current ids with images in kept exams but no clinical row.
ORPHANS = ["1701"]


def _order_key(dm: Datamart) -> Callable[[str], tuple[str, str]]:
    """Delivery order of a zip (rel path): batch date, then file name."""
    batch_dates = {n: b["date"] for n, b in dm.batches.items()}

    def order(rel: str) -> tuple[str, str]:
        b, _, f = rel.partition("/")
        return (batch_dates[b], f)

    return order


def _count_instances(dm: Datamart) -> None:
    """``n_members`` and ``n_instances`` (valid DICOM members) of every zip."""
    for rel, z in dm.zips.items():
        if not z.flushed:
            raise ValueError(f"zip {rel} was planned but never written")
        z.truth["n_members"] = len(z.truth["members"])
        bad = set(z.truth["bad_members"])
        n = 0 if z.raw is not None else sum(1 for m, *_ in z.sops if m not in bad)
        z.truth["n_instances"] = 0 if z.truth["kind"] in _UNREADABLE else n


def _exams(dm: Datamart) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Kept logical exams: primary zip first, then merged parts by time; each instance
    belongs to the earliest exam delivering it. Returns the exams and every SOP assigned."""
    order = _order_key(dm)
    zips_of: dict[str, list[str]] = {}
    for rel in sorted(dm.zips, key=order):
        t = dm.zips[rel].truth
        if t["expected"] in (Action.KEPT, Action.MERGED):
            zips_of.setdefault(t["exam"], []).append(rel)
    seen: set[str] = set()
    exams: dict[str, dict[str, Any]] = {}
    for ex in sorted(zips_of, key=lambda k: order(zips_of[k][0])):
        rels = sorted(
            zips_of[ex], key=lambda r: (dm.zips[r].truth["expected"] != Action.KEPT, order(r))
        )
        prim = dm.zips[rels[0]].truth
        sops: list[str] = []
        for rel in rels:
            z = dm.zips[rel]
            bad = set(z.truth["bad_members"])
            for m, sop, _s, _b in z.sops:
                if m in bad or sop in seen:
                    continue
                seen.add(sop)
                sops.append(sop)
                if sop in dm.cxr_images:
                    dm.cxr_images[sop]["zip"] = rel
                    dm.cxr_images[sop]["exam"] = ex
        exams[ex] = {
            "modality": prim["modality"],
            "patient_id": prim["patient_id"],
            "source_patient_id": prim["patient_id_source"],
            "hiro_id": prim["hiro_id"],
            "time": prim["time"],
            "description": prim["description"],
            "pediatric": prim["pediatric"],
            "batch": prim["batch"],
            "zips": rels,
            "sop_uids": sorted(sops),
            "n_instances": len(sops),
        }
    return exams, seen


def _drop_unassigned_images(dm: Datamart, seen: set[str]) -> None:
    """Radiographs no exam kept: why (in progress, duplicate or bad input)."""
    for sop, c in dm.cxr_images.items():
        if sop not in seen and c["keep"]:
            c["keep"] = False
            kinds = {dm.zips[r].truth["expected"] for r in c["zips"]}
            c["drop_reason"] = (
                "in_progress"
                if Action.SKIPPED in kinds
                else (Action.DUPLICATE if Action.DUPLICATE in kinds else "bad_input")
            )


def _mark_kept_and_best_series(dm: Datamart) -> None:
    """CT series of no kept zip are not kept; the "best" kept series of each exam follows
    the preferred kernel order, then the most slices."""
    for s in dm.ct_series.values():
        if not any(dm.zips[r].truth["expected"] in (Action.KEPT, Action.MERGED) for r in s["zips"]):
            s["keep"] = False
    by_exam: dict[str, list[str]] = {}
    for su, s in dm.ct_series.items():
        if s["keep"]:
            by_exam.setdefault(s["exam"], []).append(su)

    def rank(su: str) -> tuple[int, int]:
        k = dm.ct_series[su]["kernel"].upper()
        idx = next((i for i, p in enumerate(_PREFERRED_KERNELS) if p in k), 99)
        return (idx, -dm.ct_series[su]["n_slices"])

    for sus in by_exam.values():
        dm.ct_series[min(sus, key=rank)]["best"] = True


def _shared_sops(dm: Datamart, a: str, b: str) -> list[str]:
    return sorted({s for _m, s, *_ in dm.zips[a].sops} & {s for _m, s, *_ in dm.zips[b].sops})


def _patient_groups(dm: Datamart) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """Remap components plus ids linked by a missed remap; and the missed remaps."""
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    for old, new in dm.remap.items():
        union(old, new)
    missed = []
    for a, b in dm.missed:
        ids = [dm.zips[a].truth["patient_id"], dm.zips[b].truth["patient_id"]]
        union(*ids)
        missed.append({"zips": [a, b], "patient_ids": ids, "sop_uids": _shared_sops(dm, a, b)})
    groups: dict[str, list[str]] = {}
    for a in list(parent):
        groups.setdefault(find(a), []).append(a)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1), missed


def _clinical_rows(dm: Datamart, exams: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per current id with kept images except the orphans (encounter up to five
    days before the first exam), plus the in-progress patient and a clinical-only one."""
    first_day: dict[str, dt.date] = {}
    for e in exams.values():
        d = dt.date.fromisoformat(e["time"][:10])
        first_day[e["patient_id"]] = min(first_day.get(e["patient_id"], d), d)
    rows = []
    for pid in sorted({e["patient_id"] for e in exams.values()}):
        if pid in ORPHANS:
            continue
        enc = first_day[pid] - dt.timedelta(days=int(dm.rng.integers(0, 6)))
        old = next((o for o in dm.remap if dm.current(o) == pid), pid)
        sex = dm.patients.get(pid, dm.patients.get(old, ("F", "")))[0]
        rows.append(
            {
                "patient_id": pid,
                "covid_encounter_date": enc.isoformat(),
                "icu": int(dm.rng.random() < 0.3),
                "sex": sex,
            }
        )
    rows.append(
        {
            "patient_id": "2500",
            "covid_encounter_date": "2020-04-12",
            "icu": 1,
            "sex": dm.patients["2500"][0],
        }
    )
    rows.append({"patient_id": "9001", "covid_encounter_date": "2020-04-02", "icu": 0, "sex": "M"})
    return rows


def finish_truth(dm: Datamart) -> dict[str, Any]:
    """The ground truth of a fully written datamart (sets ``dm.clinical_rows``)."""
    _count_instances(dm)
    exams, seen = _exams(dm)
    _drop_unassigned_images(dm, seen)
    _mark_kept_and_best_series(dm)
    patient_groups, missed = _patient_groups(dm)
    partial = []
    for a, b in dm.partial:
        shared = _shared_sops(dm, a, b)
        partial.append({"zips": [a, b], "shared_sops": len(shared), "shared_sop_uids": shared})
    dm.clinical_rows = _clinical_rows(dm, exams)
    return {
        "seed": dm.seed,
        "size": dm.size,
        "remap_sheet": REMAP_SHEET,
        "remap": dict(sorted(dm.remap.items())),
        "remap_resolved": {old: dm.current(old) for old in sorted(dm.remap)},
        "batches": [dm.batches[k] for k in sorted(dm.batches)],
        "zips": {rel: dm.zips[rel].truth for rel in sorted(dm.zips)},
        "exams": dict(sorted(exams.items())),
        "not_duplicates": dm.not_duplicates,
        "partial_overlaps": partial,
        "missed_remaps": missed,
        "patient_groups": patient_groups,
        "cxr_images": dict(sorted(dm.cxr_images.items())),
        "ct_series": dict(sorted(dm.ct_series.items())),
        "clinical": CLINICAL_NAME,
        "orphans": list(ORPHANS),
        "private_strings": sorted(PRIVATE_STRINGS.values()),
    }
