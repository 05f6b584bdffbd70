"""Benchmark: the exams stage (dedupe, CT split merge, groups) on synthetic instance records.

Builds ~100,000 Instance records in ~15,000 zips over 8 weekly batches, with cross-batch
duplicates, pediatric duplicates, CT split scans, partial overlaps and missed remaps planted,
then times :func:`hiroml.exams.stage.build_exams` (best of ``--repeat`` runs; record building is
not timed).

    python benchmarks/bench_exams.py [--instances 100000] [--repeat 3] [--seed 0]

There is no external peer for this stage; the goal (issue 3) is "a few seconds at most" for
100,000 records.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import random
import time

from hiroml.config import ExamsConfig
from hiroml.exams.stage import build_exams
from hiroml.records import Batch, ExamZip, Instance, ZipName
from hiroml.vocab import Action, BatchStatus, Modality

log = logging.getLogger("bench_exams")


def _batches() -> list[Batch]:
    out = []
    for week in range(4):
        date = dt.date(2020, 5, 1) + dt.timedelta(days=7 * week)
        for m, prefix in ((Modality.CXR, "CXR"), (Modality.CT, "CT")):
            name = f"{prefix}-UPDATE-{date:%Y%m%d}-COMPLETE"
            out.append(Batch(name=name, modality=m, date=date, status=BatchStatus.COMPLETE))
    return out


def _zip(b: Batch, patient: str, when: dt.datetime, hiro: str, pediatric: bool) -> ExamZip:
    desc = (
        ("CT-CHEST-WO" if b.modality is Modality.CT else "XR-CHEST-PA")
        if not pediatric
        else ("XR-P-PORT-CHEST-1-VIEW")
    )
    name = ZipName(
        patient_id=patient, time=when, hiro_id=hiro, description=desc, pediatric=pediatric
    )
    return ExamZip(
        batch=b,
        file_name=f"{patient}_{when:%Y%m%d-%H%M%S}_{hiro}_{desc}.zip",
        name=name,
        size=1,
        mtime_ns=0,
    )


def make_records(n_instances: int, seed: int) -> tuple[list[ExamZip], list[Instance]]:
    """Synthetic zips and instances with every kind of collision planted."""
    rng = random.Random(seed)
    batches = _batches()
    cxr = [b for b in batches if b.modality is Modality.CXR]
    ct = [b for b in batches if b.modality is Modality.CT]
    zips: list[ExamZip] = []
    items: list[Instance] = []
    uid = 0
    hiro = 0
    n_patients = max(10, n_instances // 40)
    t0 = dt.datetime(2020, 3, 1, 8, 0, 0)

    def add(z: ExamZip, n: int, series_uid: str) -> list[Instance]:
        nonlocal uid
        made = []
        for k in range(n):
            uid += 1
            made.append(
                Instance(
                    batch=z.batch.name,
                    zip=z.file_name,
                    member=f"{series_uid[-4:]}/IM{k:04d}.dcm",
                    member_size=1,
                    sop_uid=f"1.2.826.0.1.{uid}",
                    series_uid=series_uid,
                    study_uid="1.2.3",
                    sop_class_uid="1.2",
                    modality="CT" if z.batch.modality is Modality.CT else "DX",
                    patient_id=z.name.patient_id,
                    pixel_hash=f"{uid:032x}",
                )
            )
        zips.append(z)
        items.extend(made)
        return made

    while len(items) < n_instances:
        patient = str(rng.randrange(n_patients)).zfill(rng.choice([4, 6]))
        when = t0 + dt.timedelta(minutes=rng.randrange(0, 60 * 24 * 90))
        hiro += 1
        roll = rng.random()
        if roll < 0.25:  # CT, split in 2-3 zips a few minutes apart
            b = rng.choice(ct)
            series = f"1.9.{hiro}"
            for part in range(rng.choice([1, 1, 2, 3])):
                z = _zip(b, patient, when + dt.timedelta(minutes=9 * part), f"A{hiro}", False)
                add(z, rng.randint(10, 30), series)
            continue
        pediatric = roll < 0.35
        b = rng.choice(cxr[:-1])
        z = _zip(b, patient, when, f"A{hiro}", pediatric)
        made = add(z, rng.randint(1, 3), f"1.8.{hiro}")
        later = cxr[cxr.index(b) + 1]
        r2 = rng.random()
        if r2 < 0.05:  # cross-batch duplicate: same UIDs, other HIRO id
            hiro += 1
            d = _zip(later, patient, when, f"A{hiro}", pediatric)
            zips.append(d)
            items.extend(dataclasses.replace(i, batch=d.batch.name, zip=d.file_name) for i in made)
        elif pediatric and r2 < 0.5:  # pediatric copy: new UIDs, same pixels and names
            hiro += 1
            d = _zip(b, patient, when, f"A{hiro}", True)
            zips.append(d)
            items.extend(
                dataclasses.replace(i, zip=d.file_name, sop_uid=i.sop_uid + ".9") for i in made
            )
        elif r2 < 0.07:  # same time, different images: keep both
            hiro += 1
            add(_zip(b, patient, when, f"A{hiro}", pediatric), 2, f"1.7.{hiro}")
        elif r2 < 0.08:  # same images under another patient (missed remap)
            other = str(rng.randrange(n_patients)).zfill(4)
            hiro += 1
            d = _zip(later, other, when + dt.timedelta(hours=1), f"A{hiro}", False)
            zips.append(d)
            items.extend(dataclasses.replace(i, batch=d.batch.name, zip=d.file_name) for i in made)
        elif r2 < 0.09:  # partial overlap: a later zip repeats some instances, adds new ones
            hiro += 1
            d = _zip(later, patient, when + dt.timedelta(days=1), f"A{hiro}", False)
            items.extend(
                dataclasses.replace(i, batch=d.batch.name, zip=d.file_name) for i in made[:1]
            )
            add(d, 2, f"1.6.{hiro}")
    return zips, items


def main() -> None:
    """Parse arguments, build records, time build_exams, print the numbers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    zips, items = make_records(args.instances, args.seed)
    rng = random.Random(args.seed)
    rng.shuffle(items)
    rng.shuffle(zips)
    remap = {f"{i:04d}": f"{i + 1:04d}" for i in range(0, 200, 7)}
    best = float("inf")
    res = None
    for _ in range(args.repeat):
        t = time.perf_counter()
        res = build_exams(zips, items, remap, ExamsConfig())
        best = min(best, time.perf_counter() - t)
    assert res is not None
    counts: dict[str, int] = {}
    for r in res.audit:
        counts[r.action] = counts.get(r.action, 0) + 1
    joined = sum(1 for g in res.groups if len(g.patient_ids) > 1)
    partial = sum(1 for r in res.audit if "partial overlap:" in r.detail)
    summary = ", ".join(f"{a}={counts.get(a, 0)}" for a in Action if counts.get(a, 0))
    print(
        f"build_exams: {len(items)} instances in {len(zips)} zips -> {len(res.exams)} exams, "
        f"{len(res.groups)} groups ({joined} joining ids); {summary}; {partial} partial overlaps\n"
        f"best of {args.repeat}: {best:.3f} s, {len(items) / best:,.0f} records/s"
    )


if __name__ == "__main__":
    main()
