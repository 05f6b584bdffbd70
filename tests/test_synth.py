"""Tests of the synthetic datamart generator: determinism, layout, and every planted situation
checked against the files themselves (stdlib zipfile + pydicom), not only the truth JSON."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import openpyxl
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from hiroml import synth
from hiroml.cli import synth as synth_cli

ZIP_RE = re.compile(r"^(?P<pid>[0-9]+)_(?P<ts>\d{8}-\d{6})_(?P<hiro>A\d{3,})_(?P<desc>.+)\.zip$")

Truth = dict[str, Any]


@pytest.fixture(scope="module")
def dm(tiny_datamart: tuple[Path, Truth]) -> tuple[Path, Truth]:
    return tiny_datamart


def read_ds(root: Path, rel: str, member: str, *, pixels: bool = True) -> pydicom.Dataset:
    with zipfile.ZipFile(root / rel) as zf:
        data = zf.read(member)
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)


def zips_of_kind(truth: Truth, kind: str) -> list[str]:
    return sorted(rel for rel, z in truth["zips"].items() if z["kind"] == kind)


def namelist(root: Path, rel: str) -> list[str]:
    with zipfile.ZipFile(root / rel) as zf:
        return zf.namelist()


def sops_in_zip(root: Path, rel: str) -> dict[str, str]:
    """member -> SOP Instance UID for every .dcm member of a good zip."""
    out = {}
    with zipfile.ZipFile(root / rel) as zf:
        for m in zf.namelist():
            ds = pydicom.dcmread(io.BytesIO(zf.read(m)), stop_before_pixels=True)
            out[m] = str(ds.SOPInstanceUID)
    return out


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_other_seed_differs(
    dm: tuple[Path, Truth], tmp_path: Path
) -> None:
    root, truth = dm
    again = synth.generate(tmp_path / "again", seed=0, size="tiny")
    assert again == truth
    first, second = all_files(root), all_files(tmp_path / "again")
    assert sorted(first) == sorted(second)
    differing = [k for k in first if first[k] != second[k]]
    assert differing == []

    synth.generate(tmp_path / "other", seed=1, size="tiny")
    other = all_files(tmp_path / "other")
    common = set(first) & set(other)
    assert any(first[k] != other[k] for k in common if k.endswith(".zip"))


#: SHA-256 over the tiny datamart (seed 0): each file's path and the SHA-256 of its bytes, in
#: path order. The same in every environment the dependency bounds allow (the oldest set and
#: the lock both run this test); it changes only when the generator does on purpose.
TINY_DIGEST = "708d40dfd8028d60ad31153a486f6d3858026e51a51036f4bdde33dbcf989321"

#: :func:`synth.values_hash` of phantoms drawn with ``default_rng(7)``: (shape, lateral).
PHANTOM_HASHES = {
    ((64, 48), False): "e5c5975901908c64728f6241551a24b2",
    ((72, 60), True): "2bf63e867d6c119e20242356263a5340",
    ((1100, 40), False): "7e7350955473dfbcc28095567c95f5b3",
}


def datamart_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def test_tiny_datamart_bytes_are_pinned(dm: tuple[Path, Truth]) -> None:
    root, _truth = dm
    assert datamart_digest(root) == TINY_DIGEST, (
        "the tiny datamart's bytes changed: generate it (hiroml-synth OUT --size tiny) with the "
        "oldest dependency set and with the lock and compare (diff -rq); update TINY_DIGEST "
        "only for an intended change of the generator"
    )


@pytest.mark.parametrize(("shape", "lateral"), list(PHANTOM_HASHES))
def test_phantom_values_are_pinned(shape: tuple[int, int], lateral: bool) -> None:
    img = synth.phantom_chest_2d(shape, np.random.default_rng(7), lateral=lateral)
    assert img.shape == shape and img.dtype == np.uint16
    assert synth.values_hash(img) == PHANTOM_HASHES[(shape, lateral)]


def test_zip_entries_and_file_meta_are_fixed(dm: tuple[Path, Truth]) -> None:
    """Entries carry the exam's time, fixed attributes and the truth's order; headers name
    the generator, not the pydicom version."""
    root, truth = dm
    for rel, z in truth["zips"].items():
        if z["kind"] in ("corrupt_zip", "truncated_zip"):
            continue
        with zipfile.ZipFile(root / rel) as zf:
            infos = zf.infolist()
            assert [i.filename for i in infos] == z["members"]
            assert len({i.date_time for i in infos}) <= 1
            if z["time"]:
                t = dt.datetime.fromisoformat(z["time"])
                stamp = (*t.timetuple()[:5], t.second - t.second % 2)  # DOS time: 2 s steps
                assert all(i.date_time == stamp for i in infos), rel
            assert all(i.external_attr == 0o644 << 16 and i.create_system == 3 for i in infos)
            first = infos[0].filename if infos else ""
            if first.endswith(".dcm") and first not in z["bad_members"]:
                meta = pydicom.dcmread(io.BytesIO(zf.read(first)), stop_before_pixels=True)
                assert meta.file_meta.ImplementationClassUID == synth.SYNTH_IMPLEMENTATION_UID
                assert (
                    meta.file_meta.ImplementationVersionName == synth.SYNTH_IMPLEMENTATION_VERSION
                )


def test_remap_sheet_dates_are_fixed(dm: tuple[Path, Truth], tmp_path: Path) -> None:
    root, truth = dm
    path = root / truth["remap_sheet"]
    with zipfile.ZipFile(path) as zf:
        assert {i.date_time for i in zf.infolist()} == {(2020, 6, 1, 0, 0, 0)}
        core = zf.read("docProps/core.xml").decode()
        app = zf.read("docProps/app.xml").decode()
    assert core.count("2020-06-01T00:00:00Z") == 2
    assert "openpyxl" not in (core + app).lower()
    props = openpyxl.load_workbook(path, read_only=True).properties
    assert props.created == props.modified == dt.datetime(2020, 6, 1)
    small = tmp_path / "small.xlsx"
    synth.write_remap_sheet(small, {"0042": "2001", "a<b": "c&d"})
    rows = list(openpyxl.load_workbook(small, read_only=True).active.iter_rows(values_only=True))
    assert rows == [("OLD_C19_ID", "NEW_C19_ID"), ("0042", "2001"), ("a<b", "c&d")]


def test_jpeg2000_frames_carry_no_encoder_comment(dm: tuple[Path, Truth]) -> None:
    """OpenJPEG writes its version into a COM marker; the generator removes it."""
    root, truth = dm
    j2k = [c for c in truth["cxr_images"].values() if c["transfer_syntax"] == JPEG2000Lossless]
    assert j2k
    for c in j2k:
        ds = read_ds(root, c["zip"], c["member"])
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        assert frame[:2] == b"\xff\x4f"
        assert b"OpenJPEG" not in frame and synth.strip_j2k_comments(frame) == frame
    with_comment = b"\xff\x4f\xff\x51\x00\x04ab\xff\x64\x00\x05\x00\x01x\xff\x90rest"
    assert synth.strip_j2k_comments(with_comment) == b"\xff\x4f\xff\x51\x00\x04ab\xff\x90rest"
    with pytest.raises(ValueError, match="no SOC marker"):
        synth.strip_j2k_comments(b"\x00\x01")


def test_generate_refuses_non_empty_root_and_unknown_size(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        synth.generate(tmp_path / "x")
    with pytest.raises(ValueError, match="size='huge'"):
        synth.generate(tmp_path / "y", size="huge")


def test_main_writes_a_datamart_and_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    assert synth_cli.main([str(out), "--seed", "3", "--size", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "batches" in text and "zips" in text and "instances" in text and "MB" in text
    truth = json.loads((out / synth.TRUTH_NAME).read_text())
    assert truth["seed"] == 3 and truth["size"] == "tiny"
    assert synth_cli.main([str(out), "--size", "tiny"]) == 2  # not empty any more


# --------------------------------------------------------------------------- layout


def test_layout_matches_the_truth(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    on_disk = sorted(str(p.relative_to(root)) for p in root.glob("*/*.zip"))
    assert on_disk == sorted(truth["zips"])
    names = {b["name"] for b in truth["batches"]}
    assert names == {p.name for p in root.iterdir() if p.is_dir()}
    for b in truth["batches"]:
        m = re.fullmatch(r"(CXR|CT)-UPDATE-(\d{8})-(COMPLETE|IN-PROGRESS)", b["name"])
        assert m and m.group(1).lower() == b["modality"] and m.group(3) == b["status"]
    statuses = [b["status"] for b in truth["batches"]]
    assert statuses.count("IN-PROGRESS") == 1
    assert len({b["date"] for b in truth["batches"] if b["modality"] == "cxr"}) >= 3
    assert len({b["date"] for b in truth["batches"] if b["modality"] == "ct"}) >= 2
    in_prog = [r for r, z in truth["zips"].items() if z["expected"] == "skipped"]
    assert in_prog and all("IN-PROGRESS" in r for r in in_prog)
    for rel, z in truth["zips"].items():
        if z["kind"] in ("corrupt_zip", "truncated_zip"):
            continue
        assert sorted(namelist(root, rel)) == sorted(z["members"])
        assert z["n_members"] == len(z["members"])


def test_zip_names_and_headers_follow_the_tip_sheet(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    descs = {z["description"] for z in truth["zips"].values()}
    assert {"XR-P-PORT-CHEST-1-VIEW", "CTA_CHEST-PE", "CT-CHEST-WO"} <= descs
    checked = 0
    for rel, z in truth["zips"].items():
        if z["kind"] == "bad_name":
            assert not ZIP_RE.match(rel.split("/")[1])
            continue
        m = ZIP_RE.match(rel.split("/")[1])
        assert m, rel
        assert (m["pid"], m["hiro"], m["desc"]) == (
            z["patient_id_source"],
            z["hiro_id"],
            z["description"],
        )
        if z["expected"] not in ("kept", "merged", "duplicate"):
            continue
        member = next(mm for mm in z["members"] if mm not in z["bad_members"])
        ds = read_ds(root, rel, member, pixels=False)
        assert ds.PatientID == z["patient_id_source"] == str(ds.PatientName)
        assert ds.PatientBirthDate == ""
        assert re.fullmatch(r"\d{3}[YMWD]", ds.PatientAge)
        assert ds.PatientSex in ("M", "F")
        assert f"{ds.StudyDate}T{ds.StudyTime}" == z["time"].replace("-", "").replace(":", "")
        assert ds.InstitutionName in truth["private_strings"]
        assert str(ds.ReferringPhysicianName) in truth["private_strings"]
        if z["pediatric"]:
            assert ds.PatientAge[-1] in "MWD"
        checked += 1
    assert checked > 20


def test_every_planted_kind_is_present(dm: tuple[Path, Truth]) -> None:
    _, truth = dm
    kinds = {z["kind"] for z in truth["zips"].values()}
    assert {
        "normal",
        "cross_batch_duplicate",
        "pediatric_duplicate_same_uids",
        "pediatric_duplicate_new_uids",
        "same_timestamp_different",
        "partial_overlap",
        "split_ct_part",
        "resumed_ct_part",
        "in_progress",
        "corrupt_zip",
        "truncated_zip",
        "non_dicom",
        "truncated_dicom",
        "no_pixel_data",
        "bad_name",
        "path_traversal",
        "missed_remap_shared_pixels",
        "mixed_bad_member",
    } <= kinds
    ct_kinds = {s["kind"] for s in truth["ct_series"].values()}
    assert {
        "axial",
        "localizer",
        "dose",
        "screen_save",
        "tilted",
        "uneven",
        "missing_slice",
        "duplicate_slice",
        "rescale_varies",
        "split_across_zips",
        "resumed_part",
    } <= ct_kinds
    imgs = [c for c in truth["cxr_images"].values() if c["keep"]]
    assert {c["view"] for c in imgs} == {"frontal", "lateral", "unknown"}
    assert {c["photometric"] for c in imgs} == {"MONOCHROME1", "MONOCHROME2"}
    assert {c["transfer_syntax"] for c in imgs} == {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEGLosslessSV1,
        JPEG2000Lossless,
        RLELossless,
    }
    assert {12, 16} <= {c["bits_stored"] for c in imgs}
    assert {c["view_position"] for c in imgs} >= {"PA", "AP", "LL", "LATERAL", ""}
    assert any(len(c["windows"]) == 2 for c in imgs)
    assert any(c["voi_lut"] for c in imgs)
    assert any(c["rescale"] and c["rescale"] != [1.0, 0.0] for c in imgs)
    assert any(c["kind"] == "screen_save" and not c["keep"] for c in truth["cxr_images"].values())
    kernels = {s["kernel"] for s in truth["ct_series"].values()}
    assert {"LUNG", "STANDARD", "B70f", "B30f"} <= kernels
    tilts = {s["tilt_deg"] for s in truth["ct_series"].values()}
    assert min(tilts) < 0 < max(tilts)


# --------------------------------------------------------------------------- duplicates


def test_cross_batch_duplicate_has_same_names_and_uids_in_a_later_batch(
    dm: tuple[Path, Truth],
) -> None:
    root, truth = dm
    pair = zips_of_kind(truth, "cross_batch_duplicate")
    assert len(pair) == 2
    dup = next(r for r in pair if truth["zips"][r]["expected"] == "duplicate")
    kept = truth["zips"][dup]["kept_as"]
    assert kept in pair and kept != dup
    zk, zd = truth["zips"][kept], truth["zips"][dup]
    assert zk["expected"] == "kept"
    dates = {b["name"]: b["date"] for b in truth["batches"]}
    assert dates[zk["batch"]] < dates[zd["batch"]]
    assert zk["patient_id"] == zd["patient_id"] and zk["time"] == zd["time"]
    assert zk["hiro_id"] != zd["hiro_id"]
    assert sops_in_zip(root, kept) == sops_in_zip(root, dup)
    assert zd["exam"] == zk["exam"] and truth["exams"][zk["exam"]]["zips"] == [kept]


def test_pediatric_duplicates(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    same = zips_of_kind(truth, "pediatric_duplicate_same_uids")
    assert len(same) == 2 and all(truth["zips"][r]["pediatric"] for r in same)
    assert sops_in_zip(root, same[0]) == sops_in_zip(root, same[1])
    new = zips_of_kind(truth, "pediatric_duplicate_new_uids")
    assert len(new) == 2
    a, b = new
    za, zb = truth["zips"][a], truth["zips"][b]
    assert za["time"] == zb["time"] and za["hiro_id"] != zb["hiro_id"]
    assert {za["expected"], zb["expected"]} == {"kept", "duplicate"}
    assert re.search(r"^XR-P-", za["description"])
    sa, sb = sops_in_zip(root, a), sops_in_zip(root, b)
    assert sorted(sa) == sorted(sb)  # same folder/file names
    assert set(sa.values()).isdisjoint(sb.values())  # new UIDs
    for member in sa:
        pa = read_ds(root, a, member).PixelData
        pb = read_ds(root, b, member).PixelData
        assert pa == pb


def test_same_timestamp_pair_is_different(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    for a, b in truth["not_duplicates"]:
        za, zb = truth["zips"][a], truth["zips"][b]
        assert za["patient_id"] == zb["patient_id"] and za["time"] == zb["time"]
        assert za["hiro_id"] != zb["hiro_id"] and za["expected"] == zb["expected"] == "kept"
    [a, b] = zips_of_kind(truth, "same_timestamp_different")
    assert [a, b] in truth["not_duplicates"]
    za, zb = truth["zips"][a], truth["zips"][b]
    assert za["patient_id"] == zb["patient_id"] and za["time"] == zb["time"]
    assert za["expected"] == zb["expected"] == "kept" and za["exam"] != zb["exam"]
    sa, sb = sops_in_zip(root, a), sops_in_zip(root, b)
    assert set(sa.values()).isdisjoint(sb.values())
    pix_a = {read_ds(root, a, m).PixelData for m in sa}
    pix_b = {read_ds(root, b, m).PixelData for m in sb}
    assert pix_a.isdisjoint(pix_b)


def test_partial_overlap_shares_some_but_not_all_instances(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    [po] = truth["partial_overlaps"]
    a, b = po["zips"]
    sa, sb = set(sops_in_zip(root, a).values()), set(sops_in_zip(root, b).values())
    shared = sa & sb
    assert 0 < len(shared) < min(len(sa), len(sb)) and len(shared) == po["shared_sops"]
    ea, eb = truth["exams"][truth["zips"][a]["exam"]], truth["exams"][truth["zips"][b]["exam"]]
    assert set(ea["sop_uids"]) == sa and set(eb["sop_uids"]) == sb - sa
    all_sops = [s for e in truth["exams"].values() for s in e["sop_uids"]]
    assert len(all_sops) == len(set(all_sops))  # an instance appears at most once


def test_only_the_missed_remap_shares_pixels_across_patients(dm: tuple[Path, Truth]) -> None:
    """Every good instance has its own pixels, except copies within one patient (duplicates)
    and the planted missed remap: otherwise identity would link unrelated patients."""
    root, truth = dm
    owners: dict[bytes | str, set[str]] = {}
    for rel, z in truth["zips"].items():
        if z["expected"] not in ("kept", "merged", "duplicate"):
            continue
        with zipfile.ZipFile(root / rel) as zf:
            for m in zf.namelist():
                if m in z["bad_members"]:
                    continue
                ds = pydicom.dcmread(io.BytesIO(zf.read(m)))
                owners.setdefault(str(ds.SOPInstanceUID), set()).add(z["patient_id"])
                if "PixelData" in ds:
                    owners.setdefault(ds.PixelData, set()).add(z["patient_id"])
    shared = sorted(sorted(ids) for ids in owners.values() if len(ids) > 1)
    planted = [sorted(m["patient_ids"]) for m in truth["missed_remaps"]]
    assert shared == planted * 2  # the same SOP Instance UID and the same pixels


def test_missed_remap_links_two_ids_by_an_identical_instance(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    [mr] = truth["missed_remaps"]
    a, b = mr["zips"]
    ids = sorted(mr["patient_ids"])
    assert ids[0] != ids[1] and ids in truth["patient_groups"]
    assert all(i not in truth["remap"] for i in ids)
    sa, sb = sops_in_zip(root, a), sops_in_zip(root, b)
    [sop] = mr["sop_uids"]
    ma = next(m for m, s in sa.items() if s == sop)
    mb = next(m for m, s in sb.items() if s == sop)
    da, db = read_ds(root, a, ma), read_ds(root, b, mb)
    assert da.PixelData == db.PixelData
    assert (da.PatientID, db.PatientID) == tuple(mr["patient_ids"])


# --------------------------------------------------------------------------- identity


def test_remap_sheet_keeps_ids_as_text(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    wb = openpyxl.load_workbook(root / truth["remap_sheet"], read_only=True)
    rows = list(wb.active.iter_rows(values_only=True))
    assert rows[0] == ("OLD_C19_ID", "NEW_C19_ID")
    body = rows[1:]
    assert all(isinstance(v, str) for r in body for v in r)
    assert dict(body) == truth["remap"]
    assert "0042" in truth["remap"]
    assert truth["remap_resolved"]["0042"] == "3001"  # a chain of two rows
    assert truth["remap"]["0042"] != truth["remap_resolved"]["0042"]
    # a current id that also appears directly in zip names
    sources = {z["patient_id_source"] for z in truth["zips"].values()}
    assert any(old in sources and new in sources for old, new in truth["remap"].items())
    assert ["0042", "2001", "3001"] in truth["patient_groups"]


def test_clinical_table_and_orphans(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    with open(root / truth["clinical"], newline="") as f:
        rows = list(csv.DictReader(f))
    ids = {r["patient_id"] for r in rows}
    assert "0815" in ids  # leading zero kept
    with_images = {e["patient_id"] for e in truth["exams"].values()}
    assert truth["orphans"] and set(truth["orphans"]) <= with_images
    assert set(truth["orphans"]).isdisjoint(ids)
    assert with_images - set(truth["orphans"]) <= ids
    assert all(r["icu"] in ("0", "1") for r in rows)


# --------------------------------------------------------------------------- pixels


def test_radiographs_decode_losslessly_to_the_intended_pixels(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    seen_syntax = set()
    for _sop, c in truth["cxr_images"].items():
        if not c["keep"] and c["kind"] != "screen_save":
            continue
        ds = read_ds(root, c["zip"], c["member"])
        assert ds.file_meta.TransferSyntaxUID == c["transfer_syntax"]
        assert ds.PhotometricInterpretation == c["photometric"]
        assert int(ds.BitsStored) == c["bits_stored"]
        arr = ds.pixel_array
        assert list(arr.shape) == c["shape"]
        assert synth.values_hash(arr) == c["pixel_hash"], c["transfer_syntax"]
        assert int(arr.max()) < (1 << c["bits_stored"])
        seen_syntax.add(c["transfer_syntax"])
        if c["view_position"]:
            assert ds.ViewPosition == c["view_position"]
        else:
            assert "ViewPosition" not in ds
    assert len(seen_syntax) == 5


def test_phantoms_look_like_chests() -> None:
    rng = np.random.default_rng(0)
    img = synth.phantom_chest_2d((200, 180), rng, bits_stored=12).astype(float)
    assert img.max() < 4096
    lung = img[80:110, 35:55].mean()  # right lung field (image left)
    spine = img[60:120, 88:92].mean()
    air = img[5:15, 0:6].mean()
    assert air < lung < spine
    vol = synth.phantom_chest_3d((8, 64, 64), rng, noise_hu=0.0)
    assert vol.shape == (8, 64, 64)
    assert vol[4, 0, 0] == -1000.0
    assert set(np.unique(vol)) <= {-1000.0, -850.0, -100.0, 10.0, 40.0, 45.0, 600.0, 700.0}
    assert (vol[4] == -850.0).sum() > 100 and (vol[4] == 700.0).sum() > 5


# --------------------------------------------------------------------------- CT


def ct_datasets(root: Path, truth: Truth, series_uid: str) -> list[pydicom.Dataset]:
    s = truth["ct_series"][series_uid]
    out = []
    for rel in s["zips"]:
        with zipfile.ZipFile(root / rel) as zf:
            for m in zf.namelist():
                if m.startswith(s["folder"] + "/"):
                    out.append(pydicom.dcmread(io.BytesIO(zf.read(m))))
    return sorted(out, key=lambda d: int(d.InstanceNumber))


def test_ct_zips_hold_shuffled_members(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    rel = next(r for r, z in truth["zips"].items() if z["modality"] == "ct")
    names = namelist(root, rel)
    assert names != sorted(names)


def test_tilted_series_positions_follow_the_tilt(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    tilted = [u for u, s in truth["ct_series"].items() if s["kind"] == "tilted"]
    assert len(tilted) >= 2
    for uid in tilted:
        s = truth["ct_series"][uid]
        dss = ct_datasets(root, truth, uid)
        assert len(dss) == s["n_slices"]
        tan = math.tan(math.radians(s["tilt_deg"]))
        p0 = [float(v) for v in dss[0].ImagePositionPatient]
        for ds in dss:
            assert float(ds.GantryDetectorTilt) == s["tilt_deg"]
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            p = [float(v) for v in ds.ImagePositionPatient]
            assert p[0] == p0[0]
            assert p[1] - p0[1] == pytest.approx((p[2] - p0[2]) * tan, abs=0.01)
        assert [[float(v) for v in d.ImagePositionPatient] for d in dss] == s["positions"]


def test_split_ct_exam(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    parts = zips_of_kind(truth, "split_ct_part")
    assert 2 <= len(parts) <= 3
    zs = [truth["zips"][r] for r in parts]
    assert len({z["hiro_id"] for z in zs}) == 1 and len({z["patient_id"] for z in zs}) == 1
    assert len({z["time"] for z in zs}) == len(zs)
    exam = truth["exams"][zs[0]["exam"]]
    assert sorted(exam["zips"]) == parts
    assert [truth["zips"][r]["expected"] for r in exam["zips"]] == ["kept"] + ["merged"] * (
        len(parts) - 1
    )
    [uid] = [u for u, s in truth["ct_series"].items() if s["kind"] == "split_across_zips"]
    s = truth["ct_series"][uid]
    assert len(s["zips"]) >= 2
    per_zip = [[m for m in namelist(root, r) if m.startswith(s["folder"] + "/")] for r in s["zips"]]
    assert all(per_zip) and sum(map(len, per_zip)) == s["n_slices"]
    dss = ct_datasets(root, truth, uid)
    assert {str(d.SeriesInstanceUID) for d in dss} == {uid}
    assert len({str(d.SOPInstanceUID) for d in dss}) == s["n_slices"]
    all_sops = {str(d.SOPInstanceUID) for d in dss}
    assert all_sops <= set(exam["sop_uids"])


def test_resumed_ct_scan(dm: tuple[Path, Truth]) -> None:
    """Two zips 9 minutes apart (one patient, one HIRO id) whose scan resumed as a new
    series: new Series Instance UID, number and time; same frame of reference; the second
    part starts one slice step after the first stopped."""
    root, truth = dm
    parts = zips_of_kind(truth, "resumed_ct_part")
    zs = [truth["zips"][r] for r in parts]
    assert len(parts) == 2 and len({(z["hiro_id"], z["patient_id"], z["exam"]) for z in zs}) == 1
    times = sorted(z["time"] for z in zs)
    assert (
        dt.datetime.fromisoformat(times[1]) - dt.datetime.fromisoformat(times[0])
    ).seconds == 540
    exam = truth["exams"][zs[0]["exam"]]
    assert [truth["zips"][r]["expected"] for r in exam["zips"]] == ["kept", "merged"]
    [head] = [u for u, s in truth["ct_series"].items() if "stitched_series" in s]
    h = truth["ct_series"][head]
    first_uid, second_uid = h["stitched_series"]
    assert head == first_uid and h["keep"] and h["best"] and sorted(h["stitched_zips"]) == parts
    second = truth["ct_series"][second_uid]
    assert second["stitched_into"] == head and not second["keep"] and not second["best"]
    assert h["zips"] != second["zips"]
    a, b = ct_datasets(root, truth, first_uid), ct_datasets(root, truth, second_uid)
    assert len(a) + len(b) == h["n_stitched"]
    assert a[0].SeriesInstanceUID != b[0].SeriesInstanceUID
    assert a[0].SeriesNumber != b[0].SeriesNumber and a[0].SeriesTime < b[0].SeriesTime
    assert {d.FrameOfReferenceUID for d in a} == {d.FrameOfReferenceUID for d in b}
    assert len({d.FrameOfReferenceUID for d in a}) == 1
    za = sorted(float(d.ImagePositionPatient[2]) for d in a)
    zb = sorted(float(d.ImagePositionPatient[2]) for d in b)
    step = za[1] - za[0]
    assert zb[0] == pytest.approx(za[-1] + step) and [zb[0]] == h["seams_z"]
    assert all(u in exam["sop_uids"] for u in (str(d.SOPInstanceUID) for d in a + b))


def test_ct_auxiliary_series(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    kinds: dict[str, list[str]] = {}
    for uid, s in truth["ct_series"].items():
        kinds.setdefault(s["kind"], []).append(uid)
    loc = ct_datasets(root, truth, kinds["localizer"][0])
    assert all("LOCALIZER" in d.ImageType for d in loc)
    assert [float(v) for v in loc[0].ImageOrientationPatient] != [1, 0, 0, 0, 1, 0]
    [dose] = ct_datasets(root, truth, kinds["dose"][0])
    assert dose.SOPClassUID == synth.DOSE_SR_STORAGE and "PixelData" not in dose
    [sc] = ct_datasets(root, truth, kinds["screen_save"][0])
    assert sc.SOPClassUID == synth.SC_STORAGE and "DERIVED" in sc.ImageType
    for k in ("localizer", "dose", "screen_save"):
        assert not any(truth["ct_series"][u]["keep"] for u in kinds[k])
    for exam in {truth["ct_series"][u]["exam"] for u in kinds["axial"]} & set(truth["exams"]):
        best = [u for u, s in truth["ct_series"].items() if s["exam"] == exam and s["best"]]
        assert len(best) == 1


def test_ct_series_geometry_defects(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    by_kind = {s["kind"]: u for u, s in truth["ct_series"].items()}
    zs = [float(d.ImagePositionPatient[2]) for d in ct_datasets(root, truth, by_kind["uneven"])]
    steps = np.round(np.diff(sorted(zs)), 3)
    assert len(set(steps)) >= 2
    s = truth["ct_series"][by_kind["missing_slice"]]
    zs = sorted(
        float(d.ImagePositionPatient[2]) for d in ct_datasets(root, truth, by_kind["missing_slice"])
    )
    [gap] = s["missing_z"]
    assert gap not in zs and zs[0] < gap < zs[-1]
    assert max(np.diff(zs)) == pytest.approx(2 * s["spacings"][0], abs=0.01)
    s = truth["ct_series"][by_kind["duplicate_slice"]]
    dss = ct_datasets(root, truth, by_kind["duplicate_slice"])
    [twice] = s["duplicate_z"]
    dup = [d for d in dss if float(d.ImagePositionPatient[2]) == twice]
    assert len(dup) == 2 and dup[0].SOPInstanceUID != dup[1].SOPInstanceUID


def test_per_slice_rescale_gives_consistent_hu(dm: tuple[Path, Truth]) -> None:
    root, truth = dm
    [uid] = [u for u, s in truth["ct_series"].items() if s["kind"] == "rescale_varies"]
    dss = ct_datasets(root, truth, uid)
    pairs = {(float(d.RescaleSlope), float(d.RescaleIntercept)) for d in dss}
    assert len(pairs) >= 2
    for d in dss:
        hu = d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
        assert abs(float(np.median(hu[:3, :3])) + 1000) < 60  # air in the corner
        assert 0 < float(np.median(hu[hu > -500])) < 100  # mostly soft tissue, ~40 HU


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_are_really_bad(dm: tuple[Path, Truth]) -> None:
    root, truth = dm

    def one(kind: str) -> str:
        [rel] = zips_of_kind(truth, kind)
        batch = truth["zips"][rel]["batch"]
        assert next(b for b in truth["batches"] if b["name"] == batch)["status"] == "COMPLETE"
        return rel

    for kind in ("corrupt_zip", "truncated_zip"):
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(root / one(kind)).namelist()
        assert truth["zips"][one(kind)]["expected"] == "error"
    rel = one("non_dicom")
    with zipfile.ZipFile(root / rel) as zf:
        for m in zf.namelist():
            with pytest.raises(InvalidDicomError):
                pydicom.dcmread(io.BytesIO(zf.read(m)))
    rel = one("truncated_dicom")
    with zipfile.ZipFile(root / rel) as zf:
        data = zf.read(zf.namelist()[0])
    assert data[128:132] == b"DICM"
    cut = pydicom.dcmread(io.BytesIO(data))  # pydicom is lenient: the tail is just gone
    assert "SeriesInstanceUID" not in cut and "PatientID" not in cut and "PixelData" not in cut
    rel = one("no_pixel_data")
    ds = read_ds(root, rel, truth["zips"][rel]["members"][0])
    assert ds.SOPClassUID == synth.DX_STORAGE and "PixelData" not in ds and ds.Rows > 0
    rel = one("path_traversal")
    assert namelist(root, rel) == ["../evil.dcm"]
    rel = one("bad_name")
    assert not ZIP_RE.match(rel.split("/")[1])
    rel = one("mixed_bad_member")
    z = truth["zips"][rel]
    assert z["expected"] == "kept" and len(z["bad_members"]) == 1
    with zipfile.ZipFile(root / rel) as zf:
        data = zf.read(z["bad_members"][0])
    with warnings.catch_warnings(), pytest.raises(Exception):  # noqa: B017
        warnings.simplefilter("ignore")  # "End of file reached before delimiter"
        _ = pydicom.dcmread(io.BytesIO(data)).pixel_array
    for z in truth["zips"].values():
        if z["expected"] == "error":
            assert z["exam"] == "" and z["n_instances"] <= 1


def test_each_scenario_returns_the_zips_it_planted_and_plan_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scenario table's contract: every zip of the datamart is returned by exactly one
    scenario, the pairs a scenario returns are its own zips, the table runs in order, and
    ``plan`` alone (no final flush) leaves every zip on disk."""
    from hiroml.synth import scenarios
    from hiroml.synth.datamart import Datamart

    owner: dict[str, str] = {}
    calls: list[str] = []

    def watch(scenario: Any) -> Any:
        def run(dm: Datamart, b: Any) -> Any:
            planted = scenario(dm, b)
            calls.append(scenario.__name__)
            own = {z.rel for z in planted.zips}
            for rel in own:
                assert rel not in owner, (rel, owner.get(rel), scenario.__name__)
                owner[rel] = scenario.__name__
            pairs = [*planted.not_duplicates, *planted.partial_overlaps, *planted.missed_remaps]
            assert all(set(p) <= own for p in pairs), scenario.__name__
            return planted

        return run

    table = scenarios.SCENARIOS
    monkeypatch.setattr(scenarios, "SCENARIOS", tuple(watch(s) for s in table))
    dm = Datamart(tmp_path, 0, "tiny")
    scenarios.plan(dm)
    assert calls == [s.__name__ for s in table]
    assert set(owner) == set(dm.zips)
    assert all(z.flushed and (tmp_path / z.batch / z.file).is_file() for z in dm.zips.values())
    assert {"corrupt_zip", "resumed_scan", "in_progress_upload"} <= set(owner.values())
