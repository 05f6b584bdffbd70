"""Tests for hiroml.exams: each rule of evidence of DESIGN §2 on hand-built records."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiroml.config import ExamsConfig
from hiroml.exams.rules import (
    REASON_ALL_SHARED,
    REASON_CROSS_BATCH,
    REASON_CT_SPLIT,
    REASON_NO_INSTANCES,
    REASON_NO_PIXELS,
    REASON_NO_USABLE,
    REASON_PARTIAL,
    REASON_PEDIATRIC,
    REASON_UNKNOWN_ZIP,
    ExamsResult,
)
from hiroml.exams.stage import build_exams
from hiroml.records import AuditRow, Batch, ExamZip, Instance, ZipName
from hiroml.vocab import Action, BatchStatus, Modality

CFG = ExamsConfig()
T0 = dt.datetime(2020, 3, 1, 14, 0, 30)


# --------------------------------------------------------------------------- factory


def batch(day: int, modality: Modality = Modality.CXR, status: str = "COMPLETE") -> Batch:
    """A batch folder dated 2020-05-<day>."""
    date = dt.date(2020, 5, day)
    prefix = "CXR" if modality is Modality.CXR else "CT"
    name = f"{prefix}-UPDATE-{date:%Y%m%d}-{status}"
    return Batch(name=name, modality=modality, date=date, status=BatchStatus(status))


def make_zip(
    b: Batch,
    patient: str,
    hiro: str,
    time: dt.datetime = T0,
    *,
    pediatric: bool = False,
    description: str | None = None,
) -> ExamZip:
    """An exam zip named as the datamart names them."""
    if description is None:
        if b.modality is Modality.CT:
            description = "CT-CHEST-WO"
        else:
            description = "XR-P-PORT-CHEST-1-VIEW" if pediatric else "XR-CHEST-PA-LATERAL"
    file_name = f"{patient}_{time:%Y%m%d-%H%M%S}_{hiro}_{description}.zip"
    name = ZipName(
        patient_id=patient, time=time, hiro_id=hiro, description=description, pediatric=pediatric
    )
    return ExamZip(batch=b, file_name=file_name, name=name, size=1000, mtime_ns=0)


def inst(
    z: ExamZip,
    sop: str,
    *,
    member: str | None = None,
    pixels: str | None = None,
    series: str = "1.2.3.100",
    header_id: str | None = None,
) -> Instance:
    """One instance of zip ``z``: member ``s1/<sop>.dcm``, pixel hash ``h-<sop>`` by default."""
    return Instance(
        batch=z.batch.name,
        zip=z.file_name,
        member=member if member is not None else f"s1/{sop}.dcm",
        member_size=100,
        sop_uid=sop,
        series_uid=series,
        study_uid="1.2.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        modality="CT" if z.batch.modality is Modality.CT else "CR",
        patient_id=header_id if header_id is not None else z.name.patient_id,
        pixel_hash=pixels if pixels is not None else f"h-{sop}",
    )


def copy_zip(src: ExamZip, b: Batch, hiro: str, items: list[Instance], **kw: str) -> tuple:
    """A copy of ``src`` (same patient, time, description) in batch ``b`` with HIRO id
    ``hiro``; returns (zip, instances with the same members and hashes; ``sop_prefix`` in kw
    gives new SOP UIDs)."""
    z = make_zip(b, src.name.patient_id, hiro, src.name.time, pediatric=src.name.pediatric)
    prefix = kw.get("sop_prefix", "")
    out = [
        dataclasses.replace(i, batch=b.name, zip=z.file_name, sop_uid=prefix + i.sop_uid)
        for i in items
    ]
    return z, out


def run(
    zips: list[ExamZip],
    insts: list[Instance],
    remap: dict[str, str] | None = None,
    cfg: ExamsConfig = CFG,
) -> ExamsResult:
    return build_exams(zips, insts, remap or {}, cfg)


def row(res: ExamsResult, z: ExamZip) -> AuditRow:
    """The one zip-level audit row of ``z``."""
    rows = [
        r for r in res.audit if r.zip == z.file_name and r.batch == z.batch.name and not r.member
    ]
    assert len(rows) == 1, rows
    return rows[0]


# --------------------------------------------------------------------------- basics


def test_single_exam_kept_with_key_and_identity() -> None:
    b = batch(23)
    z = make_zip(b, "1234", "A003")
    items = [inst(z, "1.1"), inst(z, "1.2", member="s2/1.2.dcm")]
    res = run([z], items)
    assert len(res.exams) == 1
    e = res.exams[0]
    assert e.exam_key == "1234_20200301-140030_A003"
    assert e.patient_id == e.source_patient_id == "1234"
    assert e.zips == (z.rel_path,)
    assert [i.sop_uid for i in e.instances] == ["1.1", "1.2"]
    assert e.modality is Modality.CXR
    r = row(res, z)
    assert r.action is Action.KEPT and r.exam_key == e.exam_key
    assert res.group_of == {"1234": "g1234"}


def test_empty_input() -> None:
    assert run([], []) == ExamsResult(exams=(), audit=(), groups=(), group_of={})


def test_remap_gives_current_id_and_keeps_source() -> None:
    b = batch(23)
    z = make_zip(b, "0100", "A001")
    res = run([z], [inst(z, "1.1")], remap={"0100": "0200"})
    e = res.exams[0]
    assert (e.patient_id, e.source_patient_id) == ("0200", "0100")
    assert e.exam_key.startswith("0200_")
    assert "remapped to 0200" in row(res, z).detail
    assert res.group_of == {"0200": "g0200"}
    assert res.groups[0].aliases == ("0100",)


def test_header_patient_id_disagreeing_is_noted() -> None:
    b = batch(23)
    z = make_zip(b, "1234", "A001")
    res = run([z], [inst(z, "1.1", header_id="9999"), inst(z, "1.2")])
    assert "header PatientID 9999 differs" in row(res, z).detail
    # a header with the old id of the same patient is fine
    res2 = run([z], [inst(z, "1.1", header_id="0007")], remap={"0007": "1234"})
    assert "header PatientID" not in row(res2, z).detail


# --------------------------------------------------------------------------- duplicates


def test_cross_batch_duplicate_keeps_earliest_batch() -> None:
    b1, b2 = batch(23), batch(28)
    z1 = make_zip(b1, "5678", "A004")
    items1 = [inst(z1, "2.1"), inst(z1, "2.2")]
    z2, items2 = copy_zip(z1, b2, "A005", items1)
    # input order reversed on purpose: the earliest batch still wins
    res = run([z2, z1], items2 + items1)
    assert len(res.exams) == 1 and res.exams[0].zips == (z1.rel_path,)
    r = row(res, z2)
    assert r.action is Action.DUPLICATE and r.reason == REASON_CROSS_BATCH
    assert r.kept_as == z1.rel_path
    assert r.exam_key == res.exams[0].exam_key
    assert "SOP Instance UIDs shared 2 of 2" in r.detail
    assert "folder/file names match: yes" in r.detail
    assert "pixel hashes equal 2 of 2" in r.detail
    assert row(res, z1).action is Action.KEPT


def test_same_timestamp_different_uids_are_both_kept() -> None:
    b1, b2 = batch(23), batch(28)
    z1 = make_zip(b1, "5678", "A004")
    z2 = make_zip(b2, "5678", "A005")
    # same names, even the same pixels: different SOP UIDs, not pediatric -> two exams
    items1 = [inst(z1, "2.1", member="s1/i1.dcm", pixels="p")]
    items2 = [inst(z2, "3.1", member="s1/i1.dcm", pixels="p")]
    res = run([z1, z2], items1 + items2)
    assert len(res.exams) == 2
    assert {row(res, z).action for z in (z1, z2)} == {Action.KEPT}


def test_exam_keys_unique_when_names_clash() -> None:
    b1, b2 = batch(23), batch(28)
    z1 = make_zip(b1, "5", "A1")
    z2 = make_zip(b2, "5", "A1")  # same patient, time and HIRO id, other images
    res = run([z2, z1], [inst(z2, "2.1"), inst(z1, "1.1")])
    keys = {e.zips[0]: e.exam_key for e in res.exams}
    assert keys == {z1.rel_path: "5_20200301-140030_A1", z2.rel_path: "5_20200301-140030_A1-2"}


def test_duplicate_needs_same_timestamp() -> None:
    b1, b2 = batch(23), batch(28)
    z1 = make_zip(b1, "5678", "A004")
    items1 = [inst(z1, "2.1"), inst(z1, "2.2")]
    z2 = make_zip(b2, "5678", "A005", T0 + dt.timedelta(seconds=1))
    items2 = [dataclasses.replace(i, batch=b2.name, zip=z2.file_name) for i in items1]
    res = run([z1, z2], items1 + items2)
    # not a duplicate; every instance is already kept, so the second exam is dropped
    r = row(res, z2)
    assert r.action is Action.DROPPED and r.reason == REASON_ALL_SHARED
    assert r.kept_as == z1.rel_path
    assert len(res.exams) == 1


def test_pediatric_duplicate_with_new_and_same_uids() -> None:
    b1, b2 = batch(23), batch(28)
    z1 = make_zip(b1, "77", "A010", pediatric=True)
    items1 = [inst(z1, "4.1"), inst(z1, "4.2", member="s2/4.2.dcm")]
    z_new, items_new = copy_zip(z1, b1, "A011", items1, sop_prefix="9.")  # new UIDs
    z_same, items_same = copy_zip(z1, b2, "A012", items1)  # same UIDs
    res = run([z_same, z_new, z1], items_same + items1 + items_new)
    assert len(res.exams) == 1 and res.exams[0].zips == (z1.rel_path,)
    r_new = row(res, z_new)
    assert r_new.action is Action.DUPLICATE and r_new.reason == REASON_PEDIATRIC
    assert r_new.kept_as == z1.rel_path
    assert "SOP Instance UIDs shared 0 of 2" in r_new.detail
    assert "pixel hashes equal 2 of 2" in r_new.detail
    r_same = row(res, z_same)
    assert r_same.action is Action.DUPLICATE and r_same.kept_as == z1.rel_path


def test_pediatric_duplicate_same_batch_keeps_lowest_hiro() -> None:
    b = batch(23)
    za = make_zip(b, "77", "A011", pediatric=True)
    items = [inst(za, "4.1")]
    zb, items_b = copy_zip(za, b, "A010", items, sop_prefix="9.")
    res = run([za, zb], items + items_b)
    assert res.exams[0].zips == (zb.rel_path,)
    assert row(res, za).action is Action.DUPLICATE


def test_pediatric_pair_with_different_pixels_is_not_duplicate() -> None:
    b = batch(23)
    z1 = make_zip(b, "77", "A010", pediatric=True)
    items1 = [inst(z1, "4.1", member="s1/i.dcm", pixels="p1")]
    z2 = make_zip(b, "77", "A011", pediatric=True)
    items2 = [inst(z2, "5.1", member="s1/i.dcm", pixels="p2")]
    res = run([z1, z2], items1 + items2)
    assert len(res.exams) == 2


def test_pediatric_pair_with_different_names_is_not_duplicate() -> None:
    b = batch(23)
    z1 = make_zip(b, "77", "A010", pediatric=True)
    z2 = make_zip(b, "77", "A011", pediatric=True)
    items1 = [inst(z1, "4.1", member="s1/i.dcm", pixels="p1")]
    items2 = [inst(z2, "5.1", member="s9/other.dcm", pixels="p1")]
    res = run([z1, z2], items1 + items2)
    assert len(res.exams) == 2


def test_non_pediatric_identical_pixels_new_uids_not_duplicate() -> None:
    b1, b2 = batch(23), batch(28)
    z1 = make_zip(b1, "88", "A001")
    items1 = [inst(z1, "6.1"), inst(z1, "6.2")]
    z2, items2 = copy_zip(z1, b2, "A002", items1, sop_prefix="7.")
    res = run([z1, z2], items1 + items2)
    assert len(res.exams) == 2
    assert row(res, z2).action is Action.KEPT


# --------------------------------------------------------------------------- CT split scans


def _ct(
    b: Batch, patient: str, hiro: str, minutes: float, sops: list[str], series: str = "1.9"
) -> tuple[ExamZip, list[Instance]]:
    z = make_zip(b, patient, hiro, T0 + dt.timedelta(minutes=minutes))
    return z, [inst(z, s, series=series) for s in sops]


def test_ct_split_chain_within_window_is_one_exam() -> None:
    b = batch(2, Modality.CT)
    # 0 -> 20 -> 45 min: every gap <= 30 min, though first to last is 45
    za, ia = _ct(b, "234567", "A002", 0, ["c.1", "c.2"])
    zb, ib = _ct(b, "234567", "A002", 20, ["c.3"])
    zc, ic = _ct(b, "234567", "A002", 45, ["c.4"], series="1.8")
    res = run([zc, za, zb], ic + ib + ia)
    assert len(res.exams) == 1
    e = res.exams[0]
    assert e.zips == (za.rel_path, zb.rel_path, zc.rel_path)
    assert e.time == za.name.time and e.modality is Modality.CT
    assert sorted(i.sop_uid for i in e.instances) == ["c.1", "c.2", "c.3", "c.4"]
    # series 1.9 spread over two zips: its instances share the series UID in the exam
    assert {i.series_uid for i in e.instances if i.sop_uid in {"c.1", "c.3"}} == {"1.9"}
    for z in (zb, zc):
        r = row(res, z)
        assert r.action is Action.MERGED and r.reason == REASON_CT_SPLIT
        assert r.kept_as == za.rel_path and r.exam_key == e.exam_key
    assert "1 series joined by UID" in row(res, zb).detail
    assert row(res, za).action is Action.KEPT


def test_ct_split_outside_window_or_other_hiro_not_merged() -> None:
    b = batch(2, Modality.CT)
    za, ia = _ct(b, "234567", "A002", 0, ["c.1"])
    zb, ib = _ct(b, "234567", "A002", 31, ["c.2"])  # gap 31 > 30 min
    zc, ic = _ct(b, "234567", "A003", 5, ["c.3"])  # other HIRO id
    zd, idd = _ct(b, "999", "A002", 5, ["c.4"])  # other patient
    res = run([za, zb, zc, zd], ia + ib + ic + idd)
    assert len(res.exams) == 4
    assert all(r.action is Action.KEPT for r in res.audit)
    # the window is configurable
    res40 = run([za, zb, zc, zd], ia + ib + ic + idd, cfg=ExamsConfig(ct_split_window_minutes=40))
    assert len(res40.exams) == 3
    assert row(res40, zb).action is Action.MERGED


def test_ct_split_across_batches_and_cxr_never_merged() -> None:
    b1, b2 = batch(2, Modality.CT), batch(9, Modality.CT)
    za, ia = _ct(b2, "1", "A002", 0, ["c.1"])
    zb, ib = _ct(b1, "1", "A002", 9, ["c.2"])
    res = run([za, zb], ia + ib)
    assert len(res.exams) == 1
    e = res.exams[0]
    assert e.zips[0] == za.rel_path and e.batch == b2.name  # primary = earliest time
    x = batch(23)
    x1 = make_zip(x, "1", "A002", T0)
    x2 = make_zip(x, "1", "A002", T0 + dt.timedelta(minutes=2))
    res_x = run([x1, x2], [inst(x1, "x.1"), inst(x2, "x.2")])
    assert len(res_x.exams) == 2


# --------------------------------------------------------------------------- instances once


def test_partial_overlap_keeps_each_instance_once() -> None:
    b1, b2 = batch(23), batch(28)
    z1 = make_zip(b1, "42", "A001", T0)
    z2 = make_zip(b2, "42", "A002", T0 + dt.timedelta(hours=1))
    items1 = [inst(z1, "8.1"), inst(z1, "8.2")]
    items2 = [inst(z2, "8.2"), inst(z2, "8.3"), inst(z2, "8.4")]
    res = run([z2, z1], items2 + items1)
    all_sops = [i.sop_uid for e in res.exams for i in e.instances]
    assert sorted(all_sops) == ["8.1", "8.2", "8.3", "8.4"]
    e2 = next(e for e in res.exams if e.zips == (z2.rel_path,))
    assert [i.sop_uid for i in e2.instances] == ["8.3", "8.4"]
    r2 = row(res, z2)
    assert r2.action is Action.KEPT and r2.reason == REASON_PARTIAL
    assert f"partial overlap: 1 of 3 SOP Instance UIDs already kept in {z1.rel_path}" in r2.detail
    assert row(res, z1).reason != REASON_PARTIAL


def test_repeated_uid_inside_a_zip_kept_once() -> None:
    z = make_zip(batch(23), "42", "A001")
    items = [inst(z, "8.1", member="s1/a.dcm"), inst(z, "8.1", member="s1/b.dcm")]
    res = run([z], items)
    assert [i.member for i in res.exams[0].instances] == ["s1/a.dcm"]
    assert "repeat a SOP Instance UID" in row(res, z).detail


def test_ct_split_parts_sharing_instances_keep_them_once() -> None:
    b = batch(2, Modality.CT)
    za, ia = _ct(b, "5", "A1", 0, ["c.1", "c.2"])
    zb, ib = _ct(b, "5", "A1", 3, ["c.2", "c.3"])
    res = run([za, zb], ia + ib)
    assert sorted(i.sop_uid for i in res.exams[0].instances) == ["c.1", "c.2", "c.3"]
    assert "1 of 2 SOP Instance UIDs already in this exam" in row(res, zb).detail


# --------------------------------------------------------------------------- bad input


def test_unknown_zip_and_empty_zip_are_rows_not_crashes() -> None:
    b = batch(23)
    z_ok = make_zip(b, "1", "A1")
    z_empty = make_zip(b, "2", "A2")
    z_ghost = make_zip(b, "3", "A3")
    items = [inst(z_ok, "1.1"), inst(z_ghost, "3.1")]
    res = run([z_ok, z_empty], items)
    assert [e.zips for e in res.exams] == [(z_ok.rel_path,)]
    assert row(res, z_empty).reason == REASON_NO_INSTANCES
    assert row(res, z_empty).action is Action.ERROR
    assert row(res, z_ghost).reason == REASON_UNKNOWN_ZIP


def test_a_zip_of_an_in_progress_batch_is_refused() -> None:
    """discover() skips IN-PROGRESS batches (tests/test_datamart.py): build_exams never
    sees their zips, and refuses them if a caller passes one."""
    b_prog = batch(30, status="IN-PROGRESS")
    z_prog = make_zip(b_prog, "4", "A4")
    with pytest.raises(ValueError, match=f"IN-PROGRESS batch.*{re.escape(z_prog.rel_path)}"):
        run([z_prog], [inst(z_prog, "4.1")])


def test_image_without_pixels_is_an_error_but_a_dose_report_is_kept() -> None:
    b = batch(2, Modality.CT)
    z1, i1 = _ct(b, "1", "A1", 0, ["c.1"])
    sr = dataclasses.replace(
        inst(z1, "sr.1", member="9/sr.dcm", pixels=""),
        has_pixels=False,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.67",
    )
    nopix = dataclasses.replace(inst(z1, "np.1", member="8/np.dcm", pixels=""), has_pixels=False)
    z2 = make_zip(batch(23), "2", "A2")
    lone = dataclasses.replace(inst(z2, "np.2", pixels=""), has_pixels=False)
    res = run([z1, z2], [*i1, sr, nopix, lone])
    assert [sorted(i.sop_uid for i in e.instances) for e in res.exams] == [["c.1", "sr.1"]]
    member_rows = [r for r in res.audit if r.member]
    assert [(r.zip, r.member, r.reason) for r in member_rows] == [
        (z1.file_name, "8/np.dcm", REASON_NO_PIXELS),
        (z2.file_name, "s1/np.2.dcm", REASON_NO_PIXELS),
    ]
    zip_rows = {r.zip: r for r in res.audit if not r.member}
    assert zip_rows[z1.file_name].action is Action.KEPT
    assert zip_rows[z2.file_name].action is Action.ERROR
    assert zip_rows[z2.file_name].reason == REASON_NO_USABLE


# --------------------------------------------------------------------------- patient groups


def test_groups_via_shared_sop_and_pixel_hash() -> None:
    b = batch(23)
    z1 = make_zip(b, "100", "A1")
    z2 = make_zip(b, "200", "A2", T0 + dt.timedelta(days=1))  # shares a SOP UID with 100
    z3 = make_zip(b, "300", "A3", T0 + dt.timedelta(days=2))  # shares pixels with 200
    z4 = make_zip(b, "400", "A4")  # alone
    items = [
        inst(z1, "1.1"),
        inst(z2, "1.1"),
        inst(z2, "2.2", pixels="same"),
        inst(z3, "3.3", pixels="same"),
        inst(z4, "4.4"),
    ]
    res = run([z1, z2, z3, z4], items)
    assert res.group_of == {"100": "g100", "200": "g100", "300": "g100", "400": "g400"}
    g = next(g for g in res.groups if g.group == "g100")
    assert g.patient_ids == ("100", "200", "300")
    assert any(link.startswith("100 ~ 200: 1 shared SOP Instance UID") for link in g.links)
    assert any(link.startswith("200 ~ 300: 0 shared SOP") for link in g.links)
    assert "patient group link" in row(res, z3).detail
    assert "patient group link" not in row(res, z4).detail
    # the instance shared across patients is kept once, by the earliest exam
    assert sorted(i.sop_uid for e in res.exams for i in e.instances) == [
        "1.1",
        "2.2",
        "3.3",
        "4.4",
    ]
    assert row(res, z2).reason == REASON_PARTIAL


def test_common_image_under_many_patients_links_nothing_when_configured() -> None:
    b = batch(23)
    zs = [make_zip(b, f"{p}", f"A{p}") for p in range(5)]
    items = [inst(z, f"{k}.1", pixels="scout") for k, z in enumerate(zs)]
    items += [inst(z, f"{k}.2") for k, z in enumerate(zs)]
    res = run(zs, items, cfg=ExamsConfig(pixel_link_max_patients=2))
    assert len(res.groups) == 5 and all(not g.links for g in res.groups)
    assert "common images, no group link" in row(res, zs[0]).detail
    # by default (no limit) and with 5 allowed, the five ids are one group
    for cfg in (ExamsConfig(), ExamsConfig(pixel_link_max_patients=5)):
        assert set(run(zs, items, cfg=cfg).group_of.values()) == {"g0"}


def test_groups_via_remap() -> None:
    b = batch(23)
    z1 = make_zip(b, "old", "A1")
    z2 = make_zip(b, "new", "A2", T0 + dt.timedelta(days=1))
    res = run([z1, z2], [inst(z1, "1"), inst(z2, "2")], remap={"old": "new"})
    assert res.group_of == {"new": "gnew"}
    assert res.groups[0].aliases == ("old",)
    # old ids of the sheet without images are aliases too
    res2 = run([z2], [inst(z2, "2")], remap={"old": "new", "older": "new", "x": "y"})
    assert res2.groups[0].aliases == ("old", "older")


# --------------------------------------------------------------------------- properties


def _scenario(seed: int) -> tuple[list[ExamZip], list[Instance]]:
    """A random little datamart with every kind of collision planted."""
    rng = random.Random(seed)
    batches = [batch(d, m) for d in (2, 9, 16) for m in (Modality.CXR, Modality.CT)]
    zips: list[ExamZip] = []
    items: list[Instance] = []
    uid = 0
    for _ in range(rng.randint(3, 12)):
        b = rng.choice(batches)
        patient = rng.choice(["1", "2", "3", "01"])
        hiro = rng.choice(["A1", "A2", "A3"])
        time = T0 + dt.timedelta(minutes=rng.choice([0, 0, 10, 25, 60]))
        z = make_zip(b, patient, hiro, time, pediatric=rng.random() < 0.3)
        if z.rel_path in {x.rel_path for x in zips}:
            continue
        zips.append(z)
        if zips and rng.random() < 0.4:  # a copy of an earlier zip's instances
            src = rng.choice(items) if items else None
            if src is not None:
                members = [i for i in items if i.rel_zip == src.rel_zip]
                new_uids = rng.random() < 0.5
                for i in members:
                    sop = f"n{i.sop_uid}" if new_uids else i.sop_uid
                    items.append(dataclasses.replace(i, batch=b.name, zip=z.file_name, sop_uid=sop))
                continue
        for k in range(rng.randint(0, 3)):
            uid += 1
            sop = f"u{rng.randint(0, 15)}" if rng.random() < 0.3 else f"s{uid}"
            items.append(inst(z, sop, member=f"s{k % 2}/i{k}.dcm", pixels=f"p{rng.randint(0, 20)}"))
    return zips, items


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), perm_seed=st.integers(0, 10_000))
def test_result_independent_of_input_order(seed: int, perm_seed: int) -> None:
    zips, items = _scenario(seed)
    remap = {"01": "1"}
    ref = run(zips, items, remap)
    rng = random.Random(perm_seed)
    zips2, items2 = zips[:], items[:]
    rng.shuffle(zips2)
    rng.shuffle(items2)
    assert run(zips2, items2, remap) == ref
    # invariants: an instance at most once; one audit row per zip
    seen = [i.sop_uid for e in ref.exams for i in e.instances]
    assert len(seen) == len(set(seen))
    zip_rows = [(r.batch, r.zip) for r in ref.audit if not r.member]
    assert len(set(zip_rows)) == len(zip_rows) == len(zips)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), pick=st.integers(0, 2**16))
def test_batch_of_duplicates_changes_only_the_audit(seed: int, pick: int) -> None:
    zips, items = _scenario(seed)
    ref = run(zips, items)
    rng = random.Random(pick)
    late = {m: batch(30, m) for m in Modality}
    extra_zips: list[ExamZip] = []
    extra_items: list[Instance] = []
    candidates = [z for z in zips if any(i.rel_zip == z.rel_path for i in items)]
    for k, z in enumerate(rng.sample(candidates, k=min(len(candidates), 3))):
        members = [i for i in items if i.rel_zip == z.rel_path]
        dz, di = copy_zip(z, late[z.batch.modality], f"B{k}", members)
        extra_zips.append(dz)
        extra_items.extend(di)
    res = run(zips + extra_zips, items + extra_items)
    assert res.exams == ref.exams
    assert res.groups == ref.groups and res.group_of == ref.group_of
    for dz in extra_zips:
        assert row(res, dz).action is Action.DUPLICATE
    old_rows = [r for r in res.audit if r.batch != late[Modality.CXR].name]
    old_rows = [r for r in old_rows if r.batch != late[Modality.CT].name]
    assert old_rows == list(ref.audit)
