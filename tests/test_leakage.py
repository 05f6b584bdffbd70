"""Leakage checks that see images, not bytes: patient groups linked by identical
decoded pixels and by near-duplicate signatures; the pediatric rule on decoded pixels; the
verifier's data_hash and near-duplicate checks. DICOM is generated here, seeded."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import MakeCfg
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from test_neardup import exact_pairs

from hiroml import pipeline as build
from hiroml import synth
from hiroml.cli import verify as cli_verify
from hiroml.cxr import pixels as cxr_pixels
from hiroml.errors import ConfigError
from hiroml.exams import linking, neardup, paircache
from hiroml.exams import rules as exams_rules
from hiroml.store import verify as store_verify
from hiroml.versions import hashing as versions_hashing
from hiroml.vocab import CROISSANT_NAME

BATCH = "CXR-UPDATE-20200601-COMPLETE"
SHAPE = (400, 330)  # rows, columns of the generated radiographs


# --------------------------------------------------------------------------- DICOM factories


def _pixels(seed: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    return synth.phantom_chest_2d(shape, np.random.default_rng(seed), bits_stored=12)


def _dataset(pixels: np.ndarray, patient: str, n: int, *, bits: int = 12) -> Dataset:
    study = synth.StudyInfo(
        patient_id=patient,
        time=dt.datetime(2020, 5, 1, 8, 0, 0) + dt.timedelta(hours=n),
        study_uid=f"2.25.9{n:05d}1",
        description="XR-CHEST-PA",
    )
    return synth.make_cxr(
        pixels,
        study=study,
        sop_uid=f"2.25.9{n:05d}2",
        series_uid=f"2.25.9{n:05d}3",
        bits_stored=bits,
        transfer_syntax=ExplicitVRLittleEndian,
    )


def _save(ds: Dataset, *, little_endian: bool = True, implicit_vr: bool = False) -> bytes:
    bio = io.BytesIO()
    ds.save_as(bio, enforce_file_format=True, little_endian=little_endian, implicit_vr=implicit_vr)
    return bio.getvalue()


def _encapsulated(ds: Dataset, ts: str, frame: bytes) -> bytes:
    d = copy.deepcopy(ds)
    d.file_meta.TransferSyntaxUID = ts
    d.PixelData = encapsulate([frame])
    d["PixelData"].VR = "OB"
    return _save(d)


def lossless_copies(pixels: np.ndarray, patient: str, n: int) -> dict[str, bytes]:
    """The same radiograph in every lossless transfer syntax that can be written here."""
    ds = _dataset(pixels, patient, n)
    out = {"explicit LE": _save(ds)}
    d = copy.deepcopy(ds)
    d.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out["implicit LE"] = _save(d, implicit_vr=True)
    d = copy.deepcopy(ds)
    d.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    d.PixelData = pixels.astype(">u2").tobytes()
    out["big endian"] = _save(d, little_endian=False)
    for name, ts in (("RLE", RLELossless), ("JPEG 2000 lossless", JPEG2000Lossless)):
        d = copy.deepcopy(ds)
        d.compress(ts)
        out[name] = _save(d)
    out["JPEG-LS lossless"] = _encapsulated(ds, JPEGLSLossless, imagecodecs.jpegls_encode(pixels))
    out["JPEG lossless SV1"] = _encapsulated(
        ds, JPEGLosslessSV1, imagecodecs.ljpeg_encode(pixels, bitspersample=12)
    )
    return out


def lossy_8bit_jpeg(pixels: np.ndarray, patient: str, n: int) -> bytes:
    """The radiograph windowed to 8 bits and saved as JPEG baseline, quality 90."""
    p = pixels.astype(np.float32)
    u8 = np.rint((p - p.min()) / (p.max() - p.min()) * 255.0).astype(np.uint8)
    bio = io.BytesIO()
    Image.fromarray(u8).save(bio, "JPEG", quality=90)
    ds = _dataset(u8.astype(np.uint16), patient, n, bits=8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    return _encapsulated(ds, JPEGBaseline8Bit, bio.getvalue())


def half_resolution(pixels: np.ndarray, patient: str, n: int) -> bytes:
    h, w = pixels.shape
    small = cv2.resize(pixels.astype(np.float32), (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return _save(_dataset(np.rint(small).astype(np.uint16), patient, n))


def write_exam(
    root: Path, patient: str, n: int, data: bytes, *, hiro: str = "", description: str = ""
) -> str:
    """A zip of one radiograph; returns its file name."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    when = dt.datetime.strptime(f"{ds.StudyDate}{ds.StudyTime[:6]}", "%Y%m%d%H%M%S")
    name = (
        f"{patient}_{when:%Y%m%d-%H%M%S}_{hiro or f'L{n:03d}'}_{description or 'XR-CHEST-PA'}.zip"
    )
    folder = root / BATCH
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{ds.SeriesInstanceUID}/IM1.dcm", data)
    return name


def _build(make_cfg: MakeCfg, root: Path, out: Path, *overrides: str) -> pd.DataFrame:
    build.run(make_cfg(root, out, *overrides))
    return pd.read_parquet(out / "manifest.parquet")


# --------------------------------------------------------------------------- the pure parts


def test_decoded_hash_is_the_same_in_every_lossless_syntax() -> None:
    copies = lossless_copies(_pixels(1), "8100", 1)
    assert len(copies) >= 7
    hashes = {name: linking.decoded_pixel_hash(b) for name, b in copies.items()}
    assert len(set(hashes.values())) == 1, hashes
    assert len({b for b in copies.values()}) == len(copies)  # the bytes all differ
    assert linking.decoded_pixel_hash(_save(_dataset(_pixels(2), "8100", 1))) not in hashes.values()


def _stored(data: bytes) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(data))
    arr01 = cxr_pixels.normalize_minmax(cxr_pixels.to_grayscale(cxr_pixels.decode(ds), ds))
    small, _ = cxr_pixels.resize(arr01, (512, 512), keep_aspect=True)
    return small.astype(np.float16)


def test_signature_holds_under_reexport_and_separates_patients() -> None:
    px = _pixels(3)
    ref = neardup.signature(_stored(_save(_dataset(px, "1", 1))))
    assert ref.dtype == np.uint8 and ref.shape == (neardup.SIGNATURE_SIZE,)
    for data in (lossy_8bit_jpeg(px, "2", 2), half_resolution(px, "3", 3)):
        assert neardup.similarity(ref, neardup.signature(_stored(data))) > 0.98
    others = [neardup.signature(_stored(_save(_dataset(_pixels(s), "4", 4)))) for s in range(4, 12)]
    sims = [neardup.similarity(ref, o) for o in others]
    # the synthetic generator never makes two patients near duplicates
    assert max(sims) < neardup.DEFAULT_THRESHOLD - 0.05, sims


def test_signature_input_as_float32_is_astype_with_non_finite_as_zero() -> None:
    every_f16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    f32 = np.random.default_rng(2).random((9, 7)).astype(np.float32)
    f32[1, 1], f32[2, 2] = np.nan, -np.inf
    u16 = np.random.default_rng(3).integers(0, 4096, (9, 7)).astype(np.uint16)
    for a in (every_f16, every_f16[::3, 1:], f32, u16):
        want = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        got = neardup._as_float32(a)
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_find_pairs_is_exact() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(300, neardup.SIGNATURE_SIZE)).astype(np.uint8)
    base[7] = np.clip(base[3].astype(int) + rng.integers(-6, 7, neardup.SIGNATURE_SIZE), 0, 255)
    base[250] = base[40]
    base[100] = 9  # constant: similar to nothing
    base[101] = 9
    brute = exact_pairs(base, 0.9)  # every pair, in Python integers
    found = neardup.find_pairs(base, threshold=0.9, block=64)
    assert {(p.i, p.j) for p in found} == brute == {(3, 7), (40, 250)}
    assert found[1].similarity == 1.0
    with pytest.raises(ValueError, match="threshold"):
        neardup.find_pairs(base, threshold=1.5)


def test_find_pairs_is_exact_when_most_images_look_alike() -> None:
    """A block where most pairs pass the coarse bound (one phantom, one protocol) takes the
    full-product path: the same pairs and similarities as the sparse path and brute force."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=neardup.SIGNATURE_SIZE)
    # 120 jittered copies of one image (near duplicates of each other) among 80 others
    amplitude = rng.integers(5, 40, size=(120, 1))  # some pairs of copies above 0.95, some not
    noise = rng.uniform(-1, 1, (120, neardup.SIGNATURE_SIZE)) * amplitude
    alike = np.clip(base + noise, 0, 255)
    other = rng.integers(0, 256, size=(80, neardup.SIGNATURE_SIZE))
    sig = np.concatenate([alike, other])[rng.permutation(200)].astype(np.uint8)
    brute = exact_pairs(sig, 0.95)  # every pair, in Python integers
    dense = neardup.pair_arrays(sig, threshold=0.95, block=64)
    assert set(zip(dense[0].tolist(), dense[1].tolist(), strict=True)) == brute
    assert 0 < len(brute) < 120 * 119 // 2  # the jitter leaves some copies below 0.95
    sparse_only = neardup._DENSE
    try:
        neardup._DENSE = 10**12  # never dense: the candidate list path
        sparse = neardup.pair_arrays(sig, threshold=0.95, block=64)
    finally:
        neardup._DENSE = sparse_only
    assert all(np.array_equal(a, b) for a, b in zip(dense, sparse, strict=True))


def test_the_pairs_of_the_same_signatures_are_read_back_not_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    sigs = rng.integers(0, 256, size=(50, neardup.SIGNATURE_SIZE)).astype(np.uint8)
    sigs[30] = sigs[4]

    def listed(pairs: neardup.PairArrays) -> list[tuple[int, int, float]]:
        return list(zip(*(a.tolist() for a in pairs), strict=True))

    first = listed(paircache.cached_pair_arrays(tmp_path, sigs, threshold=0.9))
    assert first == [(p.i, p.j, p.similarity) for p in neardup.find_pairs(sigs, threshold=0.9)]
    assert len(first) == 1
    searched: list[float] = []

    def search(signatures: np.ndarray, *, threshold: float) -> neardup.PairArrays:
        searched.append(threshold)
        return neardup._EMPTY

    monkeypatch.setattr(neardup, "pair_arrays", search)
    assert listed(paircache.cached_pair_arrays(tmp_path, sigs, threshold=0.9)) == first
    assert searched == []  # read back
    assert not listed(paircache.cached_pair_arrays(tmp_path, sigs, threshold=0.8))
    changed = sigs.copy()
    changed[0] = changed[1]
    assert not listed(paircache.cached_pair_arrays(tmp_path, changed, threshold=0.9))
    assert searched == [0.8, 0.9]  # another threshold, another signature: searched again
    assert len(list(paircache.cache_dir(tmp_path).glob("*.npz"))) == 1  # the latest only
    next(paircache.cache_dir(tmp_path).glob("*.npz")).write_bytes(b"garbage")
    assert not listed(paircache.cached_pair_arrays(tmp_path, changed, threshold=0.9))
    assert searched == [0.8, 0.9, 0.9]  # unreadable: searched again


def _sample(
    key: str, patient: str, digest: str, sig: tuple[int, ...] = ()
) -> linking.SampleIdentity:
    return linking.SampleIdentity(
        sample_key=key, exam_key=f"e{key}", patient_id=patient, data_hash=digest, signature=sig
    )


def test_link_groups_is_a_union_find_over_groups() -> None:
    group_of = {"a": "ga", "b": "gb", "c": "gc", "d": "ga"}
    rng = np.random.default_rng(1)
    sig = tuple(int(v) for v in rng.integers(0, 256, neardup.SIGNATURE_SIZE))
    samples = [
        _sample("1", "a", "h1"),
        _sample("2", "b", "h1"),
        _sample("3", "c", "h2", sig),
        _sample("4", "d", "h3", sig),  # near duplicate of 3: group ga again
        _sample("5", "e", "h4"),  # alone
    ]
    res = linking.link_groups(samples, group_of, near_threshold=0.95)
    assert {res.group_of[p] for p in "abcd"} == {"ga"} and res.group_of["e"] == "e"
    kinds = sorted(k.kind for k in res.links)
    assert kinds == [linking.NEAR_DUPLICATE, linking.SAME_PIXELS]
    notes = res.notes_by_exam()
    assert "identical decoded pixels" in notes["e1"][0] and "2 of patient b" in notes["e1"][0]
    # reported only
    res = linking.link_groups(samples, group_of, near_threshold=0.95, link_near=False)
    assert res.group_of["c"] == "gc" and not [
        k for k in res.links if k.kind == "near duplicate" and k.linked
    ]
    # a common image (more patients than the cap) links nothing
    res = linking.link_groups(samples, group_of, near_threshold=None, max_patients=1)
    assert res.group_of["b"] == "gb" and not res.links
    # order of the input never matters
    again = linking.link_groups(list(reversed(samples)), group_of, near_threshold=0.95)
    assert again == linking.link_groups(samples, group_of, near_threshold=0.95)


def test_many_near_identical_images_make_links_by_group_and_bounded_lists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every pair counts, but links form a spanning tree of the groups and each sample
    lists its first NEAR_DUPLICATES_LISTED partners (by key): memory by group, not by pair."""
    monkeypatch.setattr(linking, "NEAR_DUPLICATES_LISTED", 3)
    sig = tuple(int(v) for v in np.random.default_rng(4).integers(0, 256, neardup.SIGNATURE_SIZE))
    samples = [_sample(str(k), f"p{k}", f"h{k}", sig) for k in range(6)]  # 6 groups, 15 pairs
    for link_near in (True, False):
        res = linking.link_groups(samples, {}, near_threshold=0.95,
                                  link_near=link_near)  # fmt: skip
        assert res.near_pairs == 15 and len(res.links) == 5
        assert all(k.linked is link_near for k in res.links)
        assert res.near_counts == {str(k): 5 for k in range(6)}
        assert res.near_duplicates["0"] == ("1", "2", "3")
        assert res.near_duplicates["4"] == ("0", "1", "2")
        assert len(set(res.group_of.values())) == (1 if link_near else 6)


# --------------------------------------------------------------------------- builds


@pytest.fixture(scope="module")
def copies_datamart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """One radiograph in every lossless syntax, each under its own patient id; a lossy and a
    half-resolution re-export of another radiograph under two more ids; four unrelated
    patients. Returns the root and patient id -> what it holds."""
    root = tmp_path_factory.mktemp("leak") / "datamart"
    what: dict[str, str] = {}
    px = _pixels(10)
    for k, (name, data) in enumerate(lossless_copies(px, "x", 0).items()):
        pid = f"81{k:02d}"
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PatientID = ds.PatientName = pid
        ds.SOPInstanceUID = f"2.25.81{k:02d}7"
        ds.StudyDate = f"202005{k + 1:02d}"
        write_exam(
            root,
            pid,
            k,
            _save(ds, little_endian=name != "big endian", implicit_vr=name == "implicit LE"),
        )
        what[pid] = f"copy: {name}"
    other = _pixels(20)
    write_exam(root, "8200", 20, _save(_dataset(other, "8200", 20)))
    write_exam(root, "8201", 21, lossy_8bit_jpeg(other, "8201", 21))
    write_exam(root, "8202", 22, half_resolution(other, "8202", 22))
    what |= {"8200": "original", "8201": "lossy", "8202": "half"}
    for k in range(4):
        pid = f"83{k:02d}"
        write_exam(root, pid, 30 + k, _save(_dataset(_pixels(30 + k), pid, 30 + k)))
        what[pid] = "unrelated"
    return root, what


def test_every_lossless_copy_is_one_group_in_one_split_whatever_the_salt(
    copies_datamart: tuple[Path, dict[str, str]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, what = copies_datamart
    copies = sorted(p for p, w in what.items() if w.startswith("copy"))
    for salt in ("a", "b", "c"):
        out = tmp_path / f"out-{salt}"
        m = _build(make_cfg, root, out, f"splits.salt={salt}")
        rows = m[m["patient_id"].isin(copies)]
        assert len(rows) == len(copies) >= 7
        assert rows["data_hash"].nunique() == 1
        assert rows["patient_group"].nunique() == 1 and rows["split"].nunique() == 1
        assert cli_verify.main([str(out), "--quick"]) == 0
    group = rows["patient_group"].iloc[0]
    patients = pd.read_parquet(out / "patients.parquet")
    links = patients.loc[patients["patient_group"] == group, "links"].iloc[0]
    # explicit and implicit little endian hold the same bytes: the exams stage links those
    assert len(links) == len(copies) - 2 and all("identical decoded pixels" in t for t in links)
    audit = pd.read_csv(out / "audit.csv", dtype=str).fillna("")
    kept = audit[(audit["action"] == "kept") & audit["zip"].str.startswith(tuple(copies))]
    assert len(kept) == len(copies)
    assert all("patient group link" in d for d in kept["detail"])
    assert sum("identical decoded pixels" in d for d in kept["detail"]) >= len(copies) - 1
    # unrelated radiographs stay apart
    loners = m[m["patient_id"].map(what) == "unrelated"]
    assert loners["patient_group"].nunique() == len(loners) == 4
    assert not set(loners["patient_group"]) & set(
        m.loc[~m.index.isin(loners.index), "patient_group"]
    )


def test_lossy_and_half_resolution_reexports_are_flagged_and_linked(
    copies_datamart: tuple[Path, dict[str, str]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, what = copies_datamart
    out = tmp_path / "out"
    m = _build(make_cfg, root, out)
    trio = m[m["patient_id"].isin(["8200", "8201", "8202"])]
    assert trio["patient_group"].nunique() == 1 and trio["split"].nunique() == 1
    assert trio["data_hash"].nunique() == 3  # not the same pixels: near duplicates
    near = dict(zip(trio["patient_id"], trio["near_duplicates"], strict=True))
    assert len(near["8200"]) == 2 and len(near["8201"]) >= 1
    assert m.loc[m["modality"] == "cxr", "signature"].map(len).eq(neardup.SIGNATURE_SIZE).all()
    page = (out / "report.html").read_text()
    assert "Near-duplicate radiographs across patient groups (" in page
    section = page.split('id="neardup"')[1].split("</section>")[0]
    assert section.count("<img") >= 4 and "rank correlation" in section
    audit = pd.read_csv(out / "audit.csv", dtype=str).fillna("")
    details = " ".join(audit.loc[audit["zip"].str.startswith("8201_"), "detail"])
    assert "near-duplicate signature" in details and "8200_" in details
    unrelated = m[m["patient_id"].map(what) == "unrelated"]
    assert not unrelated["near_duplicates"].map(len).any()

    # reported, not linked
    out2 = tmp_path / "out2"
    m2 = _build(make_cfg, root, out2, "splits.link_near_duplicates=false")
    trio2 = m2[m2["patient_id"].isin(["8200", "8201", "8202"])]
    assert trio2["patient_group"].nunique() == 3
    assert trio2["near_duplicates"].map(len).all()


def _one_per_split(m: pd.DataFrame) -> tuple[int, int]:
    """Two row indices of radiographs in different splits."""
    first = m.index[m["split"] == m["split"].iloc[0]][0]
    other = m.index[m["split"] != m["split"].iloc[0]][0]
    return int(first), int(other)


def _planted(out: Path, tmp_path: Path, plant: Callable[[pd.DataFrame, int, int], None]) -> Path:
    planted = tmp_path / "planted"
    shutil.copytree(out, planted)
    m = pd.read_parquet(planted / "manifest.parquet")
    a, b = _one_per_split(m)
    plant(m, a, b)
    for path in planted.rglob("manifest.parquet"):  # the root tables and the versions'
        m.to_parquet(path)
        info_path = path.with_name("build.json")
        if info_path.is_file():  # as if a build had published it: build.json agrees
            info = json.loads(info_path.read_text())
            info["dataset_hash"] = versions_hashing.dataset_hash(path)
            info["tables"] = versions_hashing.table_checksums(path.parent)
            info_path.write_text(json.dumps(info))
        doc_path = path.with_name(CROISSANT_NAME)
        if doc_path.is_file():  # and so does croissant.json
            doc = json.loads(doc_path.read_text())
            tables = versions_hashing.table_checksums(path.parent)
            for f in doc["distribution"]:
                f["sha256"] = tables.get(f["@id"], f["sha256"])
            doc_path.write_text(json.dumps(doc))
    return planted


def test_verifier_fails_on_a_cross_split_data_hash_and_warns_on_near_duplicates(
    copies_datamart: tuple[Path, dict[str, str]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = copies_datamart
    out = tmp_path / "out"
    _build(make_cfg, root, out, "splits.salt=b")

    def same_hash(m: pd.DataFrame, a: int, b: int) -> None:
        m.loc[b, "data_hash"] = m.loc[a, "data_hash"]

    found = store_verify.examine(_planted(out, tmp_path / "h", same_hash), deep=False)
    assert any("decoded pixels (data_hash)" in e and "in splits" in e for e in found.errors)

    def same_signature(m: pd.DataFrame, a: int, b: int) -> None:
        m.at[b, "signature"] = m.at[a, "signature"]

    planted = _planted(out, tmp_path / "s", same_signature)
    capsys.readouterr()
    assert cli_verify.main([str(planted), "--quick"]) == 0
    text = capsys.readouterr().out
    assert "warning: near duplicate across splits" in text and "rank correlation 1.000" in text
    assert cli_verify.main([str(planted), "--quick", "--strict"]) == 1
    assert "error: near duplicate across splits" in capsys.readouterr().out


def test_pediatric_duplicate_in_another_transfer_syntax_is_recognised(
    make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root = tmp_path / "datamart"
    px = _pixels(40)
    copies = lossless_copies(px, "8400", 40)
    desc = "XR-P-PORT-CHEST-1-VIEW"
    first = write_exam(root, "8400", 40, copies["explicit LE"], hiro="P001", description=desc)
    second = write_exam(
        root, "8400", 40, copies["JPEG 2000 lossless"], hiro="P002", description=desc
    )
    write_exam(root, "8401", 41, _save(_dataset(_pixels(41), "8401", 41)))
    out = tmp_path / "out"
    m = _build(make_cfg, root, out)
    audit = pd.read_csv(out / "audit.csv", dtype=str).fillna("")
    row = audit[audit["zip"] == second].iloc[0]
    assert row["action"] == "duplicate" and row["reason"] == exams_rules.REASON_PEDIATRIC
    assert row["kept_as"].endswith(first) and "decoded pixels identical" in row["detail"]
    assert (m["patient_id"] == "8400").sum() == 1


def test_config_keys_and_their_checks(make_cfg: MakeCfg, tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, tmp_path / "out")
    assert cfg.splits.near_duplicate_threshold == neardup.DEFAULT_THRESHOLD
    assert cfg.splits.link_near_duplicates is True
    assert (
        make_cfg(
            tmp_path, tmp_path, "splits.near_duplicate_threshold=null"
        ).splits.near_duplicate_threshold
        is None
    )
    with pytest.raises(ConfigError, match="near_duplicate_threshold"):
        make_cfg(tmp_path, tmp_path, "splits.near_duplicate_threshold=1.5")


def test_task_records_without_signatures_get_them_from_the_shards(
    copies_datamart: tuple[Path, dict[str, str]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    """A task converted by an older hiroml (no signature in its record) is reused, and its
    radiographs' signatures are computed from the shard."""
    import json

    from hiroml.pipeline.tasks import read_record

    root, _ = copies_datamart
    out = tmp_path / "out"
    first = _build(make_cfg, root, out)
    for rec in (out / ".hiroml" / "tasks").glob("*.json"):
        data, _ = read_record(rec)
        fields, rows = data.pop("sample_fields"), data.pop("sample_rows")
        data["samples"] = [  # one object per sample, as records were written then
            {k: v for k, v in zip(fields, row, strict=True) if k != "signature"} for row in rows
        ]
        rec.write_text(json.dumps(data))
    summary = build.run(make_cfg(root, out))
    assert summary.tasks_reused == summary.tasks
    again = pd.read_parquet(out / "manifest.parquet")
    assert again["signature"].map(list).tolist() == first["signature"].map(list).tolist()
    assert again["patient_group"].tolist() == first["patient_group"].tolist()


def _trim_reference(a: np.ndarray) -> np.ndarray:
    """The trim as first written: every row's and column's range, then the span of the
    non-constant ones."""
    rows = np.flatnonzero(a.max(axis=1) != a.min(axis=1))
    cols = np.flatnonzero(a.max(axis=0) != a.min(axis=0))
    if not len(rows) or not len(cols):
        return a
    return a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def test_signature_trim_takes_the_same_span_with_its_border_shortcut() -> None:
    """The shortcut (no border line constant: nothing to trim) gives the full computation's
    span on padded, partly padded, constant, thin and NaN-holding arrays."""
    rng = np.random.default_rng(16)
    cases = [np.zeros((5, 7), np.float32), np.ones((1, 9), np.float32), rng.random((9, 1))]
    for _ in range(300):
        h, w = (int(n) for n in rng.integers(1, 12, size=2))
        a = rng.integers(0, 3, size=(h, w)).astype(np.float32)
        for edge in rng.integers(0, 2, size=4).nonzero()[0]:  # pad some borders
            band = int(rng.integers(1, 3))
            if edge == 0:
                a[:band] = 7
            elif edge == 1:
                a[-band:] = 7
            elif edge == 2:
                a[:, :band] = 7
            else:
                a[:, -band:] = 7
        if rng.random() < 0.1:
            a[int(rng.integers(h)), int(rng.integers(w))] = np.nan
        cases.append(a)
    trimmed = 0
    for a in cases:
        want = _trim_reference(a)
        got = neardup._trim(a)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        trimmed += want.shape != a.shape
    assert trimmed > 50  # the full computation ran, not only the shortcut
