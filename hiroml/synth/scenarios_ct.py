"""The CT scenarios of the table (:data:`hiroml.synth.scenarios.SCENARIOS`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

from hiroml.synth import ctscans
from hiroml.synth.datamart import Batches, Datamart, PlannedZip, Planted
from hiroml.vocab import Action


def ct_with_dose_report(dm: Datamart, b: Batches) -> Planted:
    """A standard CT exam (GE kernels) with an X-Ray Radiation Dose SR."""
    z, study, tag, exam = ctscans.ct_exam(dm, b.ct1, "2100", dm.when(30), "CT-CHEST-WO")
    ctscans.ct_dose(dm, z, study, uid_tag=tag, exam=exam)
    return Planted((z,))


def split_ct_exam(dm: Datamart, b: Batches) -> Planted:
    """One CT exam split over three zips minutes apart with one HIRO id (Siemens kernels):
    the lung series divided between the first two zips, the abdomen in the third."""
    exam = dm.exam_id("ct")
    hiro = dm.hiro()
    t0 = dm.when(31, hour=10)
    times = [t0, t0 + dt.timedelta(minutes=9), t0 + dt.timedelta(minutes=12, seconds=30)]
    parts: list[PlannedZip] = []
    for k, tk in enumerate(times):
        merged: dict[str, Any] = {"expected": Action.MERGED, "kept_as": parts[0].rel} if k else {}
        parts.append(
            dm.add_zip(
                b.ct1,
                "2200",
                tk,
                hiro,
                "CT-CHEST-ABD-PEL-W",
                kind="split_ct_part",
                exam=exam,
                **merged,
            )
        )
    tag = f"{exam}-B70f"
    study = ctscans.ct_study(dm, parts[0], tag)
    ctscans.ct_localizer(dm, parts[0], study, uid_tag=tag, exam=exam)
    common: dict[str, Any] = {"uid_tag": tag, "exam": exam, "contrast": True}
    thin = dm.spec.ct_thin
    ctscans.ct_series_add(
        dm,
        parts[:2],
        study,
        number=2,
        description="CHEST LUNG",
        kind="split_across_zips",
        kernel="B70f",
        positions=ctscans.axial_positions(dm, thin),
        split_at=[thin // 2],
        noise=30.0,
        **common,
    )
    ctscans.ct_series_add(
        dm,
        parts[2:],
        study,
        number=3,
        description="ABD PEL SOFT",
        kind="axial",
        kernel="B30f",
        positions=ctscans.axial_positions(dm, dm.spec.ct_thick, z_bottom=300.0),
        noise=8.0,
        **common,
    )
    return Planted(tuple(parts))


def tilted_with_screen_save(dm: Datamart, b: Batches) -> Planted:
    """A normal exam plus a +15 degree gantry-tilted series and a screen save."""
    z, study, tag, exam = ctscans.ct_exam(dm, b.ct1, "2300", dm.when(33), "CT-CHEST-WO")
    ctscans.tilted(dm, z, study, tag, exam, 4, 15.0)
    ctscans.ct_screen_save(dm, z, study, uid_tag=tag, exam=exam)
    return Planted((z,))


def _ct_zip_with_scout(
    dm: Datamart, batch: str, pid: str, day: int, desc: str
) -> tuple[PlannedZip, ctscans.StudyInfo, str]:
    """A kept zip of a new CT exam with its scout series; returns (zip, study, exam)."""
    exam = dm.exam_id("ct")
    z = dm.add_zip(batch, pid, dm.when(day), dm.hiro(), desc, exam=exam)
    study = ctscans.ct_study(dm, z, exam)
    ctscans.ct_localizer(dm, z, study, uid_tag=exam, exam=exam)
    return z, study, exam


def cta_tilt_uneven(dm: Datamart, b: Batches) -> Planted:
    """A CTA under the old id 0042: a -12 degree tilted series and a lung series whose
    slice step grows by 1.6 times halfway down."""
    z, study, exam = _ct_zip_with_scout(dm, b.ct2, "0042", 34, "CTA_CHEST-PE")
    ctscans.tilted(dm, z, study, exam, exam, 2, -12.0, kernel="STANDARD", contrast=True)
    n = dm.spec.ct_thin
    first = ctscans.axial_positions(dm, n // 2 + 1, z_top=-135.0, z_bottom=0.0)
    step = round(first[1][2] - first[0][2], 3)
    z_last = first[-1][2]
    second = [
        [p[0], p[1], round(z_last + k * round(step * 1.6, 1), 3)]
        for k, p in enumerate(first[1:], start=1)
    ]
    ctscans.ct_series_add(
        dm,
        [z],
        study,
        uid_tag=exam,
        exam=exam,
        number=3,
        description="CHEST LUNG UNEVEN",
        kind="uneven",
        kernel="LUNG",
        positions=first + second,
        noise=30.0,
        contrast=True,
        thickness=step,
    )
    return Planted((z,))


def gaps_duplicates_rescale(dm: Datamart, b: Batches) -> Planted:
    """Under 1501 (the current id of a remap): a series with one slice removed, one with a
    slice given twice, and one whose rescale slope and intercept vary per slice."""
    z, study, exam = _ct_zip_with_scout(dm, b.ct2, "1501", 36, "CT-CHEST-WO")
    home = (z, study, exam, exam)

    def add(
        number: int, desc: str, kind: str, kernel: str, pos: list[list[float]], **kw: Any
    ) -> None:
        ctscans.one_zip_series(dm, home, number, desc, kind, kernel, pos, **kw)

    thin, thick = dm.spec.ct_thin, dm.spec.ct_thick
    pos = ctscans.axial_positions(dm, thin)
    gone, step = len(pos) // 3, pos[1][2] - pos[0][2]
    gapped = pos[:gone] + pos[gone + 1 :]
    extra: dict[str, Any] = {"missing_z": [pos[gone][2]]}
    add(2, "CHEST LUNG", "missing_slice", "LUNG", gapped, noise=30.0, thickness=step, extra=extra)
    dm.ct_series[dm.uid(exam, "series", 2)]["spacings"] = [round(step, 3)]
    pos = ctscans.axial_positions(dm, thick)
    twice = len(pos) // 2
    extra = {"duplicate_z": [pos[twice][2]]}
    add(3, "CHEST SOFT", "duplicate_slice", "STANDARD", [*pos, pos[twice]], noise=8.0, extra=extra)
    cycle = ((1.0, -1024.0), (0.5, -1000.0), (2.0, -2048.0))
    rescales = [cycle[i % 3] for i in range(thick)]
    add(4, "CHEST SOFT VARIED", "rescale_varies", "B30f", pos, rescales=rescales, noise=8.0)
    return Planted((z,))


def ct_fillers(dm: Datamart, b: Batches) -> Planted:
    """Normal CT exams alternating GE and Siemens kernels over the two complete CT
    batches (patients shared with the radiograph fillers first); each flushed when written."""
    zips = []
    for i in range(dm.spec.n_fill_ct):
        pid = f"{5000 + i}" if i < dm.spec.n_fill_cxr else f"{6000 + i}"
        z, *_ = ctscans.ct_exam(
            dm,
            (b.ct1, b.ct2)[i % 2],
            pid,
            dm.when(38 + i % 30),
            "CT-CHEST-W",
            siemens=i % 2 == 1,
        )
        dm.flush(z)
        zips.append(z)
    return Planted(tuple(zips))


def resumed_scan(dm: Datamart, b: Batches) -> Planted:
    """A scan interrupted and resumed as a new series: two zips 9 minutes apart, one
    patient and HIRO id; the second part (new Series Instance UID, number and time)
    starts one slice step after the first stopped, in the same frame of reference."""
    exam = dm.exam_id("ct")
    hiro = dm.hiro()
    t0 = dm.when(40, hour=10)
    t1 = t0 + dt.timedelta(minutes=9)
    kind = "resumed_ct_part"
    first = dm.add_zip(b.ct2, "2600", t0, hiro, "CT-CHEST-WO", kind=kind, exam=exam)
    second = dm.add_zip(
        b.ct2,
        "2600",
        t1,
        hiro,
        "CT-CHEST-WO",
        kind=kind,
        exam=exam,
        expected=Action.MERGED,
        kept_as=first.rel,
    )
    study = ctscans.ct_study(dm, first, exam)
    ctscans.ct_localizer(dm, first, study, uid_tag=exam, exam=exam)
    pos = ctscans.axial_positions(dm, dm.spec.ct_thin)
    cut = len(pos) // 2
    uids = [dm.uid(exam, "series", number) for number in (2, 3)]
    stitched = {
        "stitched_series": uids,
        "stitched_zips": [first.rel, second.rel],
        "seams_z": [pos[cut][2]],
        "n_stitched": len(pos),
    }
    into = {"stitched_into": uids[0], "keep": False}
    for k, (z, part, st, extra) in enumerate(
        ((first, pos[:cut], study, stitched), (second, pos[cut:], replace(study, time=t1), into))
    ):
        ctscans.ct_series_add(
            dm,
            [z],
            st,
            uid_tag=exam,
            exam=exam,
            number=2 + k,
            description="CHEST LUNG",
            kind="resumed_part",
            kernel="LUNG",
            positions=part,
            noise=30.0,
            thickness=round(pos[1][2] - pos[0][2], 3),
            extra=extra,
        )
    return Planted((first, second))


def in_progress_upload(dm: Datamart, b: Batches) -> Planted:
    """A normal CT exam in the batch still uploading (expected: skipped)."""
    z, *_ = ctscans.ct_exam(dm, b.ct_in_progress, "2500", dm.when(45), "CT-CHEST-WO")
    return Planted((z,))
