"""The table of scenarios: one small function per situation of the data provider's tip
sheet (docs/design.md §2), each planting its zips and returning them with its own piece of the
ground truth.

Every scenario draws from the datamart's one seeded stream (``dm.rng``), so
:data:`SCENARIOS` runs in a fixed order: moving a row changes every file after it.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from hiroml.synth.badinputs import BAD_INPUTS
from hiroml.synth.datamart import Batches, Datamart, PlannedZip, Planted
from hiroml.synth.factory import dicom_bytes
from hiroml.synth.radiographs import (
    AP_PORTABLE,
    LATERAL,
    PA,
    PlannedRadiograph,
    copy_members,
    pa_lat,
    portable,
    radiograph,
    share_members,
    write_cxr,
)
from hiroml.synth.scenarios_ct import (
    ct_fillers,
    ct_with_dose_report,
    cta_tilt_uneven,
    gaps_duplicates_rescale,
    in_progress_upload,
    resumed_scan,
    split_ct_exam,
    tilted_with_screen_save,
)
from hiroml.vocab import Action, View

#: The remap sheet: a chain 0042 -> 2001 -> 3001 (rows out of order), 1500 -> 1501 with
#: images under both ids, 1600 -> 1601 with images under the old id only.
REMAP: dict[str, str] = {"2001": "3001", "0042": "2001", "1500": "1501", "1600": "1601"}
Scenario = Callable[[Datamart, Batches], Planted]


def _exam_zip(dm: Datamart, batch: str, pid: str, day: int, desc: str) -> tuple[PlannedZip, str]:
    """A normal kept zip of a new radiograph exam on ``day``."""
    exam = dm.exam_id("cxr")
    return dm.add_zip(batch, pid, dm.when(day), dm.hiro(), desc, exam=exam), exam


def every_cxr_flavour(dm: Datamart, b: Batches) -> Planted:
    """A normal PA + lateral exam: explicit VR MONOCHROME2 12 bits, JPEG lossless MONO1 14."""
    z, exam = _exam_zip(dm, b.cxr1, "1001", 1, "XR-CHEST-PA-LATERAL")
    pa = radiograph(
        dm, **PA, transfer_syntax=ExplicitVRLittleEndian, photometric="MONOCHROME2", bits_stored=12
    )
    lat = radiograph(
        dm,
        **{**LATERAL, "view_position": "LATERAL"},
        transfer_syntax=JPEGLosslessSV1,
        photometric="MONOCHROME1",
        bits_stored=14,
    )
    write_cxr(dm, z, [pa, lat], uid_tag=exam)
    return Planted((z,))


def _original_and_copy(
    dm: Datamart,
    batches: tuple[str, str],
    pid: str,
    t: dt.datetime,
    desc: str,
    kind: str,
    exam: str,
    imgs: list[PlannedRadiograph],
) -> Planted:
    """An exam and its byte-for-byte copy under a new HIRO id (expected: duplicate)."""
    orig = dm.add_zip(batches[0], pid, t, dm.hiro(), desc, kind=kind, exam=exam)
    write_cxr(dm, orig, imgs, uid_tag=exam)
    dup = dm.add_copy(batches[1], orig)
    copy_members(dm, orig, dup)
    return Planted((orig, dup))


def cross_batch_duplicate(dm: Datamart, b: Batches) -> Planted:
    """The same exam in two batches (original in the first, copy in the third)."""
    exam = dm.exam_id("cxr")
    t = dm.when(3)
    return _original_and_copy(
        dm,
        (b.cxr1, b.cxr3),
        "1100",
        t,
        "XR-CHEST-PA-LATERAL",
        "cross_batch_duplicate",
        exam,
        pa_lat(dm),
    )


def pediatric_duplicate_same_uids(dm: Datamart, b: Batches) -> Planted:
    """A pediatric exam delivered twice in one batch with the same UIDs (RLE, MONO1)."""
    exam = dm.exam_id("cxr")
    dm.patient("1300", pediatric=True)
    t = dm.when(5)
    ap = radiograph(
        dm,
        **{**AP_PORTABLE, "folder": "1_AP", "series_description": "AP"},
        transfer_syntax=RLELossless,
        photometric="MONOCHROME1",
        bits_stored=12,
    )
    return _original_and_copy(
        dm,
        (b.cxr1, b.cxr1),
        "1300",
        t,
        "XR-P-PORT-CHEST-1-VIEW",
        "pediatric_duplicate_same_uids",
        exam,
        [ap],
    )


def same_timestamp_different(dm: Datamart, b: Batches) -> Planted:
    """Same patient and timestamp in two batches, other HIRO ids and other images: both
    kept, not duplicates."""
    t = dm.when(7)
    zips = []
    for batch, exam in ((b.cxr1, dm.exam_id("cxr")), (b.cxr2, dm.exam_id("cxr"))):
        z = dm.add_zip(
            batch,
            "1400",
            t,
            dm.hiro(),
            "XR-PORT-CHEST-1V",
            kind="same_timestamp_different",
            exam=exam,
        )
        write_cxr(dm, z, portable(dm), uid_tag=exam)
        zips.append(z)
    return Planted(tuple(zips), not_duplicates=((zips[0].rel, zips[1].rel),))


def partial_overlap(dm: Datamart, b: Batches) -> Planted:
    """A zip of three images, and a later one sharing two of them plus one new image."""
    t = dm.when(9)
    ex_a, ex_b = dm.exam_id("cxr"), dm.exam_id("cxr")
    desc = "XR-CHEST-PA-LATERAL"
    oa = dm.add_zip(b.cxr1, "1450", t, dm.hiro(), desc, kind="partial_overlap", exam=ex_a)
    imgs = pa_lat(dm)
    extra = radiograph(dm, **PA, file="IM-0002.dcm")
    extra.instance_number = 2
    write_cxr(dm, oa, [imgs[0], extra, imgs[1]], uid_tag=ex_a)
    ob = dm.add_zip(b.cxr3, "1450", t, dm.hiro(), desc, kind="partial_overlap", exam=ex_b)
    share_members(dm, oa, ob, [0, 2])
    new = radiograph(dm, **PA, file="IM-0003.dcm")
    new.instance_number = 3
    write_cxr(dm, ob, [new], uid_tag=ex_b, study_uid=dm.uid(ex_a, "study"))
    ob.members.sort()
    ob.sops.sort()
    pair = ((oa.rel, ob.rel),)
    return Planted((oa, ob), not_duplicates=pair, partial_overlaps=pair)


def missed_remap(dm: Datamart, b: Batches) -> Planted:
    """An image of 1700 delivered again under 1701 (same SOP Instance UID and pixels), with
    a new lateral view: the remap sheet missed that the two ids are one patient."""
    ex_a, ex_b = dm.exam_id("cxr"), dm.exam_id("cxr")
    t = dm.when(11)
    ma = dm.add_zip(b.cxr1, "1700", t, dm.hiro(), "XR-PORT-CHEST-1V", exam=ex_a)
    write_cxr(dm, ma, portable(dm), uid_tag=ex_a)
    mb = dm.add_zip(
        b.cxr3,
        "1701",
        t,
        dm.hiro(),
        "XR-CHEST-PA-LATERAL",
        kind="missed_remap_shared_pixels",
        exam=ex_b,
    )
    again = dcmread(io.BytesIO(ma.members[0][1]))  # same SOP UID and pixels, other id
    again.PatientID = again.PatientName = "1701"
    again.PatientSex, again.PatientAge = dm.patient("1701")
    mb.members.append((ma.members[0][0], dicom_bytes(again)))
    mb.sops.append(ma.sops[0])
    dm.cxr_images[ma.sops[0][1]]["zips"].append(mb.rel)
    lat = radiograph(dm, **LATERAL)
    write_cxr(dm, mb, [lat], uid_tag=ex_b, study_uid=dm.uid(ex_a, "study"))
    ma.truth["kind"] = "missed_remap_shared_pixels"
    return Planted((ma, mb), missed_remaps=((ma.rel, mb.rel),))


def remapped_ids(dm: Datamart, b: Batches) -> Planted:
    """Portable exams under remapped ids: chain start 0042, chain middle 2001, both ids of
    1500 -> 1501, and 1600 (old id only)."""
    zips = []
    for batch, pid, day in (
        (b.cxr1, "0042", 13),
        (b.cxr2, "2001", 14),
        (b.cxr1, "1500", 15),
        (b.cxr2, "1501", 16),
        (b.cxr2, "1600", 17),
    ):
        z, exam = _exam_zip(dm, batch, pid, day, "XR-PORT-CHEST-1V")
        write_cxr(dm, z, portable(dm), uid_tag=exam)
        zips.append(z)
    return Planted(tuple(zips))


def leading_zero_with_screen_save(dm: Datamart, b: Batches) -> Planted:
    """A current id with a leading zero (0815), and an 8-bit screen save in the exam."""
    z, exam = _exam_zip(dm, b.cxr1, "0815", 18, "XR-CHEST-PA-LATERAL")
    imgs = pa_lat(dm)
    ss = radiograph(
        dm,
        folder="99_SCREEN_SAVE",
        view_position=None,
        series_description="SCREEN SAVE",
        series_number=99,
        view=View.UNKNOWN,
        sop_class="SC",
        transfer_syntax=ExplicitVRLittleEndian,
        photometric="MONOCHROME2",
        bits_stored=8,
    )
    ss.pixels = (ss.pixels >> 0).astype(np.uint8)
    write_cxr(dm, z, [*imgs, ss], uid_tag=exam)
    return Planted((z,))


def pediatric_duplicate_new_uids(dm: Datamart, b: Batches) -> Planted:
    """A pediatric exam, and a PACS copy of the same pixels with new UIDs in a later batch
    (expected: duplicate; its images are dropped)."""
    exam = dm.exam_id("cxr")
    dm.patient("1350", pediatric=True)
    t = dm.when(20)
    desc, kind = "XR-P-CHEST-2-VIEWS", "pediatric_duplicate_new_uids"
    qa = dm.add_zip(b.cxr2, "1350", t, dm.hiro(), desc, kind=kind, exam=exam)
    imgs = pa_lat(dm)
    for im in imgs:
        im.transfer_syntax = ExplicitVRLittleEndian
    write_cxr(dm, qa, imgs, uid_tag=exam)
    qb = dm.add_copy(b.cxr3, qa)
    write_cxr(dm, qb, imgs, uid_tag=f"{exam}-pacs-copy")
    for _m, sop, _s, _b in qb.sops:
        dm.cxr_images[sop]["keep"] = False
        dm.cxr_images[sop]["drop_reason"] = Action.DUPLICATE
    return Planted((qa, qb))


def views_from_descriptions(dm: Datamart, b: Batches) -> Planted:
    """No (0018,5101) View Position: the view must come from the series description
    (JPEG 2000 at 16 and 15 bits, and an implicit-VR image of unknown view)."""
    z, exam = _exam_zip(dm, b.cxr2, "1002", 22, "XR-CHEST-PA-LATERAL")
    no_position: dict[str, Any] = {"view_position": None}
    imgs = [
        radiograph(
            dm,
            **{**PA, **no_position, "folder": "1_CHEST"},
            transfer_syntax=JPEG2000Lossless,
            bits_stored=16,
        ),
        radiograph(
            dm,
            **{**LATERAL, **no_position, "folder": "2_CHEST"},
            transfer_syntax=JPEG2000Lossless,
            bits_stored=15,
        ),
        radiograph(
            dm,
            folder="3_CHEST",
            view_position=None,
            series_description="CHEST",
            series_number=3,
            view=View.UNKNOWN,
            transfer_syntax=ImplicitVRLittleEndian,
            bits_stored=12,
        ),
    ]
    write_cxr(dm, z, imgs, uid_tag=exam)
    return Planted((z,))


def presentation_variants(dm: Datamart, b: Batches) -> Planted:
    """Two windows and an identity rescale (JPEG lossless), a VOI LUT Sequence without
    windows (RLE), and a CR with rescale (2, -1024) in JPEG 2000."""
    z, exam = _exam_zip(dm, b.cxr3, "1003", 24, "XR-CHEST-PA-LATERAL")
    mono2: dict[str, Any] = {"photometric": "MONOCHROME2"}
    pa = radiograph(
        dm,
        **PA,
        **mono2,
        transfer_syntax=JPEGLosslessSV1,
        bits_stored=16,
        windows=((30000.0, 60000.0), (26000.0, 20000.0)),
        rescale=(1.0, 0.0),
    )
    lat = radiograph(
        dm,
        **{**LATERAL, "view_position": "RL"},
        **mono2,
        transfer_syntax=RLELossless,
        bits_stored=12,
        windows=(),
        voi_lut=True,
    )
    write_cxr(dm, z, [pa, lat], uid_tag=exam)
    cr, exam = _exam_zip(dm, b.cxr3, "1004", 25, "XR-PORT-CHEST-1V")
    ap = radiograph(
        dm,
        **{**AP_PORTABLE, "folder": "1_AP", "rescale": (2.0, -1024.0)},
        transfer_syntax=JPEG2000Lossless,
        photometric="MONOCHROME1",
        bits_stored=14,
    )
    write_cxr(dm, cr, [ap], uid_tag=exam)
    return Planted((z, cr))


def cxr_fillers(dm: Datamart, b: Batches) -> Planted:
    """Normal exams (PA + lateral or portable, half and half) spread over the complete
    radiograph batches; ``SizeSpec.n_fill_cxr`` of them, each flushed when written."""
    zips = []
    for i in range(dm.spec.n_fill_cxr):
        exam = dm.exam_id("cxr")
        batch = (b.cxr1, b.cxr2, b.cxr3, b.cxr4)[i % 4]
        two_views = dm.rng.random() < 0.5
        desc = "XR-CHEST-PA-LATERAL" if two_views else "XR-PORT-CHEST-1V"
        z = dm.add_zip(batch, f"{5000 + i}", dm.when(26 + i % 40), dm.hiro(), desc, exam=exam)
        if two_views:
            imgs = pa_lat(dm, lat_position=str(dm.rng.choice(["LL", "LATERAL"])))
        else:
            imgs = portable(dm)
        write_cxr(dm, z, imgs, uid_tag=exam)
        dm.flush(z)
        zips.append(z)
    return Planted(tuple(zips))


#: Every planted situation, in the order they draw from the shared random stream.
SCENARIOS: tuple[Scenario, ...] = (
    every_cxr_flavour,
    cross_batch_duplicate,
    pediatric_duplicate_same_uids,
    same_timestamp_different,
    partial_overlap,
    missed_remap,
    remapped_ids,
    leading_zero_with_screen_save,
    pediatric_duplicate_new_uids,
    views_from_descriptions,
    presentation_variants,
    *BAD_INPUTS,
    cxr_fillers,
    ct_with_dose_report,
    split_ct_exam,
    tilted_with_screen_save,
    cta_tilt_uneven,
    gaps_duplicates_rescale,
    ct_fillers,
    resumed_scan,
    in_progress_upload,
)


def plan(dm: Datamart, on_step: Callable[[int, int, int], None] | None = None) -> None:
    """Create the batch folders and the remap, then run :data:`SCENARIOS` in order,
    collecting their pairs and writing their zips as soon as each is done.
    ``on_step(done, total, zips)`` (a progress bar's update) is called before the first
    scenario, as each zip is planned and after each scenario: ``done`` of the ``total``
    scenarios are finished and ``zips`` zips planned."""
    b = Batches(
        cxr1=dm.batch("CXR-UPDATE-20200509-COMPLETE"),
        cxr2=dm.batch("CXR-UPDATE-20200516-COMPLETE"),
        cxr3=dm.batch("CXR-UPDATE-20200523-COMPLETE"),
        cxr4=dm.batch("CXR-UPDATE-20200530-COMPLETE"),
        ct1=dm.batch("CT-UPDATE-20200512-COMPLETE"),
        ct2=dm.batch("CT-UPDATE-20200526-COMPLETE"),
        ct_in_progress=dm.batch("CT-UPDATE-20200602-IN-PROGRESS"),
    )
    dm.remap = dict(REMAP)
    done = [0]

    def tick() -> None:
        if on_step is not None:
            on_step(done[0], len(SCENARIOS), len(dm.zips))

    dm.on_zip = tick
    tick()
    for scenario in SCENARIOS:
        planted = scenario(dm, b)
        dm.not_duplicates.extend([list(pair) for pair in planted.not_duplicates])
        dm.partial.extend(planted.partial_overlaps)
        dm.missed.extend(planted.missed_remaps)
        for z in planted.zips:
            dm.flush(z)
        done[0] += 1
        tick()
    dm.on_zip = None
