"""CT exams: axial series (tilted, gapped, uneven, split over zips), the scout, the dose
report and the screen save, each written into a zip with its entry of ``ct_series`` in
the truth.

Geometry is in LPS mm: a 360 mm field of view centred on the table axis; slice positions
run head to feet from ``z_top`` to ``z_bottom``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hiroml.synth.ct_factory import (
    make_ct_image,
    make_ct_series,
    make_dose_report,
    make_screen_save,
)
from hiroml.synth.datamart import Datamart, PlannedZip
from hiroml.synth.factory import StudyInfo, dicom_bytes, ds_str, fmt_date, fmt_time, study_scale
from hiroml.synth.phantoms import render_ct_slice

FOV_MM = 360.0


def ct_study(dm: Datamart, z: PlannedZip, uid_tag: str) -> StudyInfo:
    """The study of a CT zip; Siemens when the tag names a B70f kernel, else GE."""
    pid = z.truth["patient_id_source"]
    sex, age = dm.patient(pid)
    return StudyInfo(
        patient_id=pid,
        time=z.time,
        study_uid=dm.uid(uid_tag, "study"),
        sex=sex,
        age=age,
        description=z.truth["description"],
        manufacturer="SIEMENS" if "B70f" in uid_tag else "GE MEDICAL SYSTEMS",
    )


def axial_positions(
    dm: Datamart, n: int, *, z_top: float = -135.0, z_bottom: float = 135.0
) -> list[list[float]]:
    """(0020,0032) Image Position (Patient) of ``n`` evenly spaced axial slices, mm."""
    sp = FOV_MM / dm.spec.ct_matrix
    x0 = y0 = -FOV_MM / 2 + sp / 2
    step = round((z_bottom - z_top) / max(n - 1, 1), 1)
    return [[x0, y0, round(z_top + i * step, 3)] for i in range(n)]


def _series_entry(
    exam: str,
    holders: list[str],
    folder: str,
    number: int,
    n_slices: int,
    **fields: Any,
) -> dict[str, Any]:
    """A ``ct_series`` truth entry; ``fields`` override the defaults of a series that is
    not kept (scout, dose report, screen save)."""
    entry: dict[str, Any] = {
        "exam": exam,
        "zips": holders,
        "folder": folder,
        "description": "",
        "series_number": number,
        "n_slices": n_slices,
        "kind": "",
        "kernel": "",
        "tilt_deg": 0.0,
        "keep": False,
        "best": False,
        "rows": 0,
        "columns": 0,
        "pixel_spacing": [],
        "slice_thickness": None,
        "orientation": [],
        "positions": [],
        "missing_z": [],
        "duplicate_z": [],
        "spacings": [],
        "rescale_varies": False,
        "signed": False,
    }
    entry.update(fields)
    return entry


def ct_series_add(
    dm: Datamart,
    zips: Sequence[PlannedZip],
    study: StudyInfo,
    *,
    uid_tag: str,
    exam: str,
    number: int,
    description: str,
    kind: str,
    kernel: str,
    positions: list[list[float]],
    split_at: Sequence[int] = (),
    tilt_deg: float = 0.0,
    rescales: list[tuple[float, float]] | None = None,
    signed: bool = False,
    thickness: float | None = None,
    noise: float = 10.0,
    contrast: bool = False,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write one axial series into ``zips`` (divided at ``split_at`` slice indices)."""
    series_uid = dm.uid(uid_tag, "series", number)
    folder = f"{number}_{description.replace(' ', '_')}"
    sops = [dm.uid(uid_tag, "sop", number, i) for i in range(len(positions))]
    zs = sorted({p[2] for p in positions})
    steps = sorted({round(b - a, 3) for a, b in itertools.pairwise(zs)})
    if thickness is None:
        thickness = steps[0] if steps else 2.5
    dss = make_ct_series(
        study=study,
        series_uid=series_uid,
        sop_uids=sops,
        frame_uid=dm.uid(uid_tag, "frame"),
        positions=positions,
        rng=dm.rng,
        matrix=dm.spec.ct_matrix,
        slice_thickness=thickness,
        kernel=kernel,
        tilt_deg=tilt_deg,
        rescales=rescales,
        signed=signed,
        series_number=number,
        series_description=description,
        noise_hu=noise,
        contrast=contrast,
        scale=study_scale(study),
    )
    bounds = [0, *split_at, len(dss)]
    holders = []
    for part, z in enumerate(zips[: len(bounds) - 1]):
        for i in range(bounds[part], bounds[part + 1]):
            member = f"{folder}/IM-{i + 1:04d}.dcm"
            if z.time != study.time:  # a split exam: each zip has its own study time
                dss[i].StudyDate, dss[i].StudyTime = fmt_date(z.time), fmt_time(z.time)
            z.members.append((member, dicom_bytes(dss[i])))
            z.sops.append((member, sops[i], series_uid, False))
        holders.append(z.rel)
    sp = float(ds_str(FOV_MM / dm.spec.ct_matrix))
    fields: dict[str, Any] = {
        "description": description,
        "kind": kind,
        "kernel": kernel,
        "tilt_deg": tilt_deg,
        "keep": True,
        "rows": dm.spec.ct_matrix,
        "columns": dm.spec.ct_matrix,
        "pixel_spacing": [sp, sp],
        "slice_thickness": float(ds_str(thickness)),
        "orientation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "positions": [[float(ds_str(v)) for v in p] for p in positions],
        "spacings": steps,
        "rescale_varies": rescales is not None and len(set(rescales)) > 1,
        "signed": signed,
        **(extra or {}),
    }
    dm.ct_series[series_uid] = _series_entry(exam, holders, folder, number, len(dss), **fields)


#: Where a series goes whole: (zip, study, UID tag, exam id).
Home = tuple[PlannedZip, StudyInfo, str, str]


def one_zip_series(
    dm: Datamart,
    home: Home,
    number: int,
    description: str,
    kind: str,
    kernel: str,
    positions: list[list[float]],
    **kw: Any,
) -> None:
    """:func:`ct_series_add` for a series held whole by one zip."""
    z, study, tag, exam = home
    ct_series_add(
        dm,
        [z],
        study,
        uid_tag=tag,
        exam=exam,
        number=number,
        description=description,
        kind=kind,
        kernel=kernel,
        positions=positions,
        **kw,
    )


def _topogram_hu(
    dm: Datamart, study: StudyInfo, pos: list[float], orient: Sequence[int], depth_axis: int
) -> np.ndarray:
    """A projection in HU: mean attenuation along ``depth_axis`` (0 = x, 1 = y), plus noise."""
    n = dm.spec.ct_matrix
    sp = 500.0 / n
    acc = np.zeros((n, n), dtype=np.float32)
    depth = np.linspace(-180.0, 180.0, 24)
    for d in depth:
        p = list(pos)
        p[depth_axis] = float(d)
        acc += render_ct_slice(
            p, (n, n), (sp, sp), dm.rng, orientation=orient, noise_hu=0.0, scale=study_scale(study)
        )
    return acc / len(depth) + dm.rng.normal(0.0, 4.0, size=(n, n)).astype(np.float32)


def ct_localizer(dm: Datamart, z: PlannedZip, study: StudyInfo, *, uid_tag: str, exam: str) -> None:
    """A two-image scout series (AP and lateral topograms, ImageType ...\\LOCALIZER)."""
    n = dm.spec.ct_matrix
    series_uid = dm.uid(uid_tag, "series", 1)
    frame = dm.uid(uid_tag, "frame")
    sp = 500.0 / n
    positions = []
    for i, (orient, label) in enumerate(
        [((1, 0, 0, 0, 0, -1), "AP"), ((0, 1, 0, 0, 0, -1), "LAT")]
    ):
        pos = [-250.0 + sp / 2, -250.0 + sp / 2, 250.0 - sp / 2]
        depth_axis = 1 if label == "AP" else 0
        pos[depth_axis] = 0.0
        sop = dm.uid(uid_tag, "sop", 1, i)
        ds = make_ct_image(
            _topogram_hu(dm, study, pos, orient, depth_axis),
            study=study,
            sop_uid=sop,
            series_uid=series_uid,
            frame_uid=frame,
            position=pos,
            orientation=orient,
            pixel_spacing=(sp, sp),
            slice_thickness=1.0,
            series_number=1,
            instance_number=i + 1,
            series_description="Topogram",
            kernel="T20s",
            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        )
        member = f"1_SCOUT/IM-{i + 1:04d}.dcm"
        z.members.append((member, dicom_bytes(ds)))
        z.sops.append((member, sop, series_uid, False))
        positions.append(pos)
    dm.ct_series[series_uid] = _series_entry(
        exam,
        [z.rel],
        "1_SCOUT",
        1,
        2,
        description="Topogram",
        kind="localizer",
        kernel="T20s",
        rows=n,
        columns=n,
        pixel_spacing=[float(ds_str(sp))] * 2,
        positions=positions,
    )


def ct_dose(dm: Datamart, z: PlannedZip, study: StudyInfo, *, uid_tag: str, exam: str) -> None:
    """An X-Ray Radiation Dose SR in folder 999_DOSE_REPORT (no pixels; never kept)."""
    series_uid, sop = dm.uid(uid_tag, "series", 999), dm.uid(uid_tag, "sop", 999)
    ds = make_dose_report(
        study=study,
        sop_uid=sop,
        series_uid=series_uid,
        dlp=round(float(dm.rng.uniform(150, 900)), 1),
    )
    member = "999_DOSE_REPORT/IM-0001.dcm"
    z.members.append((member, dicom_bytes(ds)))
    z.sops.append((member, sop, series_uid, False))
    dm.ct_series[series_uid] = _series_entry(
        exam, [z.rel], "999_DOSE_REPORT", 999, 1, description="Dose Report", kind="dose"
    )


def ct_screen_save(
    dm: Datamart, z: PlannedZip, study: StudyInfo, *, uid_tag: str, exam: str
) -> None:
    """A Secondary Capture of a soft-tissue window in folder 99_SCREEN_SAVE (never kept)."""
    n = dm.spec.ct_matrix
    series_uid, sop = dm.uid(uid_tag, "series", 99), dm.uid(uid_tag, "sop", 99)
    sp = FOV_MM / n
    hu = render_ct_slice((-180 + sp / 2, -180 + sp / 2, 0.0), (n, n), (sp, sp), dm.rng)
    ds = make_screen_save(np.clip(hu, -160, 240), study=study, sop_uid=sop, series_uid=series_uid)
    member = "99_SCREEN_SAVE/IM-0001.dcm"
    z.members.append((member, dicom_bytes(ds)))
    z.sops.append((member, sop, series_uid, False))
    dm.ct_series[series_uid] = _series_entry(
        exam,
        [z.rel],
        "99_SCREEN_SAVE",
        99,
        1,
        description="SCREEN SAVE",
        kind="screen_save",
        rows=n,
        columns=n,
        pixel_spacing=[float(ds_str(sp))] * 2,
    )


def ct_exam(
    dm: Datamart, batch: str, pid: str, t: dt.datetime, desc: str, *, siemens: bool = False
) -> tuple[PlannedZip, StudyInfo, str, str]:
    """A normal CT exam: scout, thin lung-kernel and thick soft-tissue series."""
    exam = dm.exam_id("ct")
    z = dm.add_zip(batch, pid, t, dm.hiro(), desc, exam=exam)
    tag = f"{exam}{'-B70f' if siemens else ''}"
    study = ct_study(dm, z, tag)
    ct_localizer(dm, z, study, uid_tag=tag, exam=exam)
    sp = dm.spec
    lung, soft = ("B70f", "B30f") if siemens else ("LUNG", "STANDARD")
    for number, desc, kernel, n_slices, noise in (
        (2, "CHEST LUNG", lung, sp.ct_thin, 30.0),
        (3, "CHEST SOFT", soft, sp.ct_thick, 8.0),
    ):
        signed = number == 3 and dm.rng.random() < 0.5  # drawn once the lung series is done
        home = (z, study, tag, exam)
        pos = axial_positions(dm, n_slices)
        one_zip_series(dm, home, number, desc, "axial", kernel, pos, noise=noise, signed=signed)
    return z, study, tag, exam


def tilted(
    dm: Datamart,
    z: PlannedZip,
    study: StudyInfo,
    tag: str,
    exam: str,
    number: int,
    tilt: float,
    *,
    kernel: str = "LUNG",
    contrast: bool = False,
) -> None:
    """A gantry-tilted series: axial IOP, IPP y shifted by tan(tilt) per mm of z."""
    pos = axial_positions(dm, dm.spec.ct_thick)
    tan = math.tan(math.radians(tilt))
    z0 = pos[0][2]
    shifted = [[p[0], round(p[1] + (p[2] - z0) * tan, 4), p[2]] for p in pos]
    desc, home = f"CHEST TILT {tilt:+.0f}", (z, study, tag, exam)
    kw: dict[str, Any] = {"tilt_deg": tilt, "noise": 10.0, "contrast": contrast}
    one_zip_series(dm, home, number, desc, "tilted", kernel, shifted, **kw)
