"""report.html: self-contained, escaped, right numbers; tables and arrays built in code."""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hiroml.ingest.discover import REMAP_SHEET_NAME
from hiroml.report import html as report_html
from hiroml.report import page as report_page
from hiroml.report.page import write_report
from hiroml.report.sections import split_balance
from hiroml.report.thumbnails import ct_planes, cxr_thumbnail

# --------------------------------------------------------------------------- synthetic data


def chest_radiograph(rng: np.random.Generator, h: int = 96, w: int = 80) -> np.ndarray:
    """A float16 (H, W) image in [0, 1]: two dark lung fields in a bright body, some noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w), 0.75, np.float32)
    for cx in (0.3 * w, 0.7 * w):
        lung = ((x - cx) / (0.17 * w)) ** 2 + ((y - 0.5 * h) / (0.32 * h)) ** 2 < 1
        img[lung] = 0.25
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float16)


def chest_ct(nz: int = 24, ny: int = 48, nx: int = 48) -> np.ndarray:
    """An int16 volume, numpy (z, y, x), in HU: air, a soft-tissue body, two lungs, a spine."""
    z, y, x = np.mgrid[0:nz, 0:ny, 0:nx].astype(np.float32)
    vol = np.full((nz, ny, nx), -1000, np.int16)
    vol[((x - nx / 2) / (0.45 * nx)) ** 2 + ((y - ny / 2) / (0.35 * ny)) ** 2 < 1] = 40
    for cx in (0.3 * nx, 0.7 * nx):
        lung = ((x - cx) / (0.12 * nx)) ** 2 + ((y - ny / 2) / (0.22 * ny)) ** 2 < 1
        vol[lung & (z > 2) & (z < nz - 3)] = -850
    vol[((x - nx / 2) / 4) ** 2 + ((y - 0.75 * ny) / 4) ** 2 < 1] = 700
    return vol


def make_tables(
    *, n_train: int = 4, n_val: int = 2, n_test: int = 2, ct: bool = True, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """manifest, patients, audit and the arrays by sample key, for a small build.

    One patient per exam and per split entry; each CXR patient has a frontal and a lateral
    image of one exam; with ``ct``, the first patient of each split also has a CT volume.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    prows: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    ages = {"train": [30.0, 50.0, 60.0, 80.0], "val": [40.0, 44.0], "test": [70.0, 72.0]}
    sexes = ["F", "M", "M", "F"]
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(n):
            pid = f"{split[:2].upper()}{i:03d}"
            exam = f"{pid}_20200301-1200{i:02d}_A{i:03d}"
            base = {
                "patient_id": pid,
                "source_patient_id": pid,
                "patient_group": f"G-{pid}",
                "split": split,
                "exam_key": exam,
                "hiro_id": f"A{i:03d}",
                "exam_time": pd.Timestamp("2020-03-01 12:00") + pd.Timedelta(days=i),
                "batch": "CXR-UPDATE-20200523-COMPLETE",
                "source_zips": [f"{exam}_XR-CHEST.zip"],
                "age_years": ages[split][i % len(ages[split])],
                "sex": sexes[i % 4],
                "orphan": split == "test" and i == 1,
            }
            for view in ("frontal", "lateral"):
                key = f"{exam}:{view}"
                arr = chest_radiograph(rng)
                arrays[key] = arr
                rows.append(
                    {
                        **base,
                        "sample_key": key,
                        "shard": "shards/cxr-00000.h5",
                        "modality": "cxr",
                        "description": "XR CHEST 2V",
                        "series_uid": f"1.2.{i}",
                        "sop_uid": f"1.2.{i}.{view}",
                        "view": view,
                        "shape": list(arr.shape),
                        "size_xyz": None,
                        "spacing_xyz": None,
                        "origin_xyz": None,
                        "direction": None,
                    }
                )
            if ct and i == 0:
                key = f"{exam}:ct"
                vol = chest_ct()
                arrays[key] = vol
                rows.append(
                    {
                        **base,
                        "exam_key": exam + "-CT",
                        "sample_key": key,
                        "shard": "shards/ct-00000.h5",
                        "modality": "ct",
                        "description": "CT CHEST W/O CONTRAST",
                        "series_uid": f"1.3.{i}",
                        "sop_uid": None,
                        "view": None,
                        "shape": list(vol.shape),
                        "size_xyz": [vol.shape[2], vol.shape[1], vol.shape[0]],
                        "spacing_xyz": [0.7, 0.7, 2.5],
                        "origin_xyz": [0.0, 0.0, 0.0],
                        "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                    }
                )
            prows.append(
                {
                    "patient_group": f"G-{pid}",
                    "patient_ids": [pid],
                    "split": split,
                    "n_exams": 2 if ct and i == 0 else 1,
                    "n_samples": 3 if ct and i == 0 else 2,
                }
            )
    prows[0]["patient_ids"] = [str(prows[0]["patient_group"])[2:], "C19-OLD-0001"]
    audit = pd.DataFrame(
        [
            {"zip": "a.zip", "batch": "B1", "action": "kept", "reason": "", "kept_as": "", "detail": ""},
            {"zip": "dup1.zip", "batch": "B2", "action": "duplicate", "reason": "same SOP Instance UIDs",
             "kept_as": "KEPT-ORIGINAL-1.zip", "detail": "re-upload"},
            {"zip": "part2.zip", "batch": "B2", "action": "merged", "reason": "split scan",
             "kept_as": "KEPT-MERGE-TARGET.zip", "detail": ""},
            {"zip": "", "batch": "CT-UPDATE-20200602-IN-PROGRESS", "action": "skipped",
             "reason": "batch in progress", "kept_as": "", "detail": ""},
            {"zip": "bad1.zip", "batch": "B1", "action": "error", "reason": "JPEG 2000 decode failed",
             "kept_as": "", "detail": "member x/1.dcm"},
            {"zip": "bad2.zip", "batch": "B1", "action": "error", "reason": "zip CRC mismatch",
             "kept_as": "", "detail": ""},
        ]
    )  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(prows), audit, arrays


SUMMARY = {
    "datamart": "/data/datamart",
    "hiroml version": "0.1.0",
    "batches read": 2,
    "batches skipped": 1,
    "errors": 2,
    "config hash": "abc123",
}


def _check_self_contained(text: str) -> None:
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower()
    for m in re.finditer(r"""\b(src|href)\s*=\s*["']?([^"'\s>]*)""", text):
        attr, value = m.groups()
        if attr == "src":
            assert value.startswith("data:image/png;base64,"), value[:40]
        else:
            assert value.startswith("#"), value  # in-page anchors only
    assert "@import" not in text and "url(" not in text


def _data_uris(text: str) -> list[str]:
    return re.findall(r'src="(data:image/png;base64,[^"]+)"', text)


# --------------------------------------------------------------------------- tests


def test_report_full(tmp_path: Path) -> None:
    manifest, patients, audit, arrays = make_tables()
    manifest.loc[0, "description"] = "<script>alert(1)</script> & co"
    path = write_report(
        tmp_path / "out",
        manifest=manifest,
        patients=patients,
        audit=audit,
        summary=SUMMARY,
        read_array=arrays.__getitem__,
    )
    assert path == tmp_path / "out" / "report.html"
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "DATASET.md",
        "flow.svg",
        "report.html",
    ]  # no temp file left
    text = path.read_text(encoding="utf-8")
    _check_self_contained(text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text

    # summary, in its order
    pos = [text.index(f"<td>{k}</td>") for k in SUMMARY]
    assert pos == sorted(pos)
    assert "<td>/data/datamart</td>" in text and "<td>abc123</td>" in text

    # errors section: each reason, and the count badge
    errors = text[text.index('id="errors"') : text.index('id="decisions"')]
    for reason in ("JPEG 2000 decode failed", "zip CRC mismatch"):
        assert reason in errors
    assert "Errors (2)" in errors and "bad1.zip" in errors and "member x/1.dcm" in errors
    assert '<span class="badge bad">2 error rows</span>' in text

    # decisions: duplicates and merges with what they were kept as; skipped batches
    decisions = text[text.index('id="decisions"') : text.index('id="orphans"')]
    for s in ("dup1.zip", "KEPT-ORIGINAL-1.zip", "part2.zip", "KEPT-MERGE-TARGET.zip",
              "CT-UPDATE-20200602-IN-PROGRESS", "batch in progress"):  # fmt: skip
        assert s in decisions

    # orphans and linked ids
    orphans = text[text.index('id="orphans"') : text.index('id="groups"')]
    assert "TE001" in orphans and REMAP_SHEET_NAME in orphans and "TE000" not in orphans
    groups = text[text.index('id="groups"') : text.index('id="thumbs"')]
    assert "C19-OLD-0001" in groups and "TR000" in groups and "TR001" not in groups

    # thumbnails: 8 train+val+test radiograph pairs -> 16 CXR, 3 CT volumes x 3 planes
    uris = _data_uris(text)
    assert len(uris) == 16 + 3 * 3
    img = Image.open(io.BytesIO(base64.b64decode(uris[0].split(",", 1)[1])))
    assert img.mode == "L" and max(img.size) == report_html.THUMB_PX
    assert "frontal · TR000" in text and "lateral · TR000" in text


def test_split_balance_numbers() -> None:
    manifest, patients, _, _ = make_tables()
    b = split_balance(manifest, patients).set_index("split")
    assert list(b.index) == ["train", "val", "test"]
    assert b.loc[
        "train", ["patient_groups", "patients", "exams", "samples", "cxr", "ct"]
    ].tolist() == [4, 4, 5, 9, 8, 1]
    assert b.loc["val", ["patients", "exams", "cxr", "ct"]].tolist() == [2, 3, 4, 1]
    assert b.loc["test", ["sex_F", "sex_M", "sex_other"]].tolist() == [1, 1, 0]
    # age over exams: train patient 0 has a CXR exam and a CT exam, both 30 years
    assert b.loc["train", "age_n"] == 5
    assert b.loc["train", "age_median"] == pytest.approx(50.0)
    assert b.loc["train", "age_q1"] == pytest.approx(30.0)
    assert b.loc["train", "age_q3"] == pytest.approx(60.0)
    assert b.loc["train", ["sex_F", "sex_M"]].tolist() == [2, 2]


def test_split_table_in_page(tmp_path: Path) -> None:
    manifest, patients, audit, _ = make_tables(n_train=3, n_val=1, n_test=0, ct=False)
    text = write_report(
        tmp_path, manifest=manifest, patients=patients, audit=audit, summary={}
    ).read_text()
    splits = text[text.index('id="splits"') : text.index('id="errors"')]
    rows = re.findall(r"<tr><td><b>(\w+)</b></td>(.*?)</tr>", splits)
    assert [r[0] for r in rows] == ["train", "val", "test"]
    nums = {name: re.findall(r'<span class="num">([^<]*)</span>', cells) for name, cells in rows}
    # patient groups, patients, exams, radiographs, CT volumes, age, sex
    assert nums["train"][:5] == ["3", "3", "3", "6", "0"]
    assert nums["val"][:5] == ["1", "1", "1", "2", "0"]
    assert nums["test"][:5] == ["0", "0", "0", "0", "0"]
    assert nums["train"][5] == "50 (40–55)" and nums["train"][6] == "F 1 · M 2"
    assert "No array reader was given: no thumbnails." in text
    assert _data_uris(text) == []


def test_empty_manifest(tmp_path: Path) -> None:
    audit = pd.DataFrame(
        [
            {
                "zip": "x.zip",
                "batch": "B",
                "action": "error",
                "reason": "not a zip file",
                "kept_as": "",
                "detail": "",
            }
        ]
    )
    for manifest in (pd.DataFrame(), make_tables()[0].iloc[:0]):
        path = write_report(
            tmp_path,
            manifest=manifest,
            patients=pd.DataFrame(),
            audit=audit,
            summary={"errors": 1},
            read_array=lambda key: np.zeros((4, 4)),
        )
        text = path.read_text()
        _check_self_contained(text)
        assert "not a zip file" in text and "The manifest is empty" in text
        assert "No samples, no thumbnails." in text
    # nothing at all
    text = write_report(
        tmp_path, manifest=pd.DataFrame(), patients=pd.DataFrame(), audit=pd.DataFrame(), summary={}
    ).read_text()
    assert "Errors (0)" in text and "No build summary was given." in text


def test_only_cxr_and_only_ct(tmp_path: Path) -> None:
    manifest, patients, audit, arrays = make_tables(ct=False)
    text = write_report(
        tmp_path / "cxr", manifest=manifest, patients=patients, audit=audit, summary={},
        read_array=arrays.__getitem__, max_thumbnails=3,
    ).read_text()  # fmt: skip
    assert len(_data_uris(text)) == 3 + 3 + 3  # at most 3 per split
    assert "CT volumes:" not in text

    manifest, patients, audit, arrays = make_tables()
    ct = manifest[manifest["modality"] == "ct"].drop(columns=["orphan", "view", "sop_uid"])
    text = write_report(
        tmp_path / "ct", manifest=ct, patients=patients[["patient_group", "patient_ids"]],
        audit=audit, summary={}, read_array=arrays.__getitem__,
    ).read_text()  # fmt: skip
    _check_self_contained(text)
    assert len(_data_uris(text)) == 3 * 3 and "Radiographs:" not in text
    assert "lung window W1500/L-600" in text and "not checked" in text


def test_broken_sample_does_not_break_report(tmp_path: Path) -> None:
    manifest, patients, audit, arrays = make_tables(ct=False)

    def read(key: str) -> np.ndarray:
        if key.endswith(":lateral"):
            raise KeyError(key)
        return arrays[key]

    text = write_report(
        tmp_path, manifest=manifest, patients=patients, audit=audit, summary={}, read_array=read
    ).read_text()
    assert len(_data_uris(text)) == 8 and text.count("could not read</div>") == 8


@pytest.mark.parametrize("dtype", [np.float16, np.uint8, np.uint16])
def test_cxr_thumbnail_normalises_by_min_max(dtype: type) -> None:
    a = np.linspace(0, 1, 200 * 100).reshape(200, 100)
    if dtype != np.float16:
        a = a * 40 + 10  # a narrow range of an integer type still spans black to white
    img = cxr_thumbnail(a.astype(dtype), px=50)
    assert img.size == (25, 50)
    px = np.asarray(img)
    assert px.min() <= 10 and px.max() >= 245


def test_ct_planes_window_and_aspect() -> None:
    vol = chest_ct(nz=20, ny=40, nx=40)
    planes = dict(ct_planes(vol, [0.5, 0.5, 2.0], px=100))
    assert planes["axial"].size == (100, 100)
    # coronal: 40 x 0.5 = 20 mm wide, 20 x 2.0 = 40 mm high
    assert planes["coronal"].size == (50, 100) and planes["sagittal"].size == (50, 100)
    ax = np.asarray(planes["axial"])
    # W1500/L-600 spans -1350..150 HU: air (-1000) dark grey, soft tissue (40) near white
    assert abs(int(ax[0, 0]) - round(350 / 1500 * 255)) <= 1
    assert abs(int(ax[50, 50]) - round(1390 / 1500 * 255)) <= 2
    # isotropic when the spacing is unknown
    assert dict(ct_planes(vol, None, px=100))["coronal"].size == (100, 50)


def write_output_folder(out: Path) -> dict[str, np.ndarray]:
    """A small output folder written by the real writers: shards, patients, audit, manifest."""
    from hiroml.store.shards import ShardWriter
    from hiroml.store.tables import patients_frame, write_outputs

    manifest, _, audit, arrays = make_tables()
    manifest["data_hash"] = ""
    for mod in ("cxr", "ct"):
        rows = manifest.index[manifest["modality"] == mod]
        with ShardWriter(
            out / "shards", f"{mod}-0", modality=mod, max_samples=4, max_bytes=2**30
        ) as w:
            for i in rows:
                key = manifest.at[i, "sample_key"]
                manifest.at[i, "data_hash"] = w.add(key, arrays[key], {"scale": 1.0})
        for info in w.shards:
            for k in info.keys:
                manifest.loc[manifest["sample_key"] == k, ["shard", "shard_sha256"]] = [
                    f"shards/{info.name}",
                    info.sha256,
                ]
    manifest["sop_uids"] = manifest["sop_uid"].map(lambda v: [v] if v else [])
    manifest["pixel_hashes"] = manifest["data_hash"].map(lambda v: [v])
    patients = patients_frame(manifest, {"G-TR000": ["C19-OLD-0001"]})
    write_outputs(out, manifest, patients, audit)
    return arrays


def test_report_from_built_output(tmp_path: Path) -> None:
    arrays = write_output_folder(tmp_path)
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    patients = pd.read_parquet(tmp_path / "patients.parquet")
    audit = pd.read_csv(tmp_path / "audit.csv", keep_default_na=False)
    read = report_page.shard_reader(tmp_path, manifest)
    key = "TR001_20200301-120001_A001:lateral"
    np.testing.assert_array_equal(read(key), arrays[key])
    text = write_report(
        tmp_path,
        manifest=manifest,
        patients=patients,
        audit=audit,
        summary=SUMMARY,
        read_array=read,
    ).read_text()
    _check_self_contained(text)
    assert len(_data_uris(text)) == 16 + 3 * 3 and "could not read" not in text
    assert "C19-OLD-0001, TR000" in text  # a parquet list (numpy array) cell
    assert "KEPT-ORIGINAL-1.zip" in text and "zip CRC mismatch" in text
    assert "Orphans (1)" in text and "TE001" in text


def _section_of(text: str, anchor: str) -> str:
    start = text.index(f'id="{anchor}"')
    return text[start : text.index("</section>", start)]


def test_orphans_without_a_clinical_table_and_orphans_without_samples() -> None:
    manifest, patients, audit, _ = make_tables()
    none = report_page.render_report(
        manifest=manifest, patients=patients, audit=audit, summary={"clinical": ""}
    )
    orphans = _section_of(none, "orphans")
    assert "Orphans: no clinical table given" in orphans and "TE001" not in orphans
    given = report_page.render_report(
        manifest=manifest,
        patients=patients,
        audit=audit,
        summary={"clinical": "clinical.csv", "orphan_ids": ["TE001", "ZZ009"]},
    )
    orphans = _section_of(given, "orphans")
    assert "Orphans (1)" in orphans and "TE001" in orphans
    assert "1 more patient id(s) without clinical rows have no sample" in orphans
    assert "ZZ009" in orphans


def test_audit_rows_fold_per_reason_with_their_count() -> None:
    def row(zip_: str, action: str, reason: str) -> dict[str, str]:
        return {"zip": zip_, "batch": "B1", "action": action, "reason": reason, "kept_as": ""}

    audit = pd.DataFrame(
        [
            *(row(f"v{i}.zip", "dropped", f"view lateral not selected: ViewPosition=L{i}")
              for i in range(3)),
            row("s.zip", "dropped", "series 1.2.3.4: 2 of 2 instances: localizer / scout"),
            row("a.zip", "error", "a.zip: 1_PA/1.dcm: not a DICOM file (no 'DICM' prefix)"),
            row("b.zip", "error", "b.zip: 2_PA/2.dcm: not a DICOM file (no 'DICM' prefix)"),
            row("c.zip", "merged", "series 2.25.1234567 (32 slices) stitched with series 2.25.99"),
        ]
    )  # fmt: skip
    text = report_page.render_report(
        manifest=pd.DataFrame(), patients=pd.DataFrame(), audit=audit, summary={}
    )
    decisions = _section_of(text, "decisions")
    assert '<summary><span class="n">3</span> view not selected</summary>' in decisions
    assert '<summary><span class="n">1</span> localizer</summary>' in decisions
    assert "(32 slices) stitched with series …</summary>" in decisions
    errors = _section_of(text, "errors")
    assert (
        '<summary><span class="n">2</span> not a DICOM file (no &#x27;DICM&#x27; prefix)' in errors
    )
    assert "a.zip" in errors and "b.zip" in errors  # the rows, inside the fold
    assert "<details open" not in text


def test_a_build_report_opens_each_shard_once_and_closes_it(
    tiny_build_clinical: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thumbnails of a build's report read several samples of a shard from one open
    file, closed once the report is written."""
    from hiroml.pipeline import publish
    from hiroml.pipeline.summary import BuildSummary
    from hiroml.store import shards

    out = tmp_path / "out"  # a copy: the session's build is read-only
    shutil.copytree(tiny_build_clinical, out, symlinks=True)
    manifest = pd.read_parquet(out / "manifest.parquet")
    patients = pd.read_parquet(out / "patients.parquet")
    audit = pd.read_csv(out / "audit.csv", keep_default_na=False)
    opened: list[Any] = []
    names: list[str] = []

    def counted(path: Path | str) -> Any:
        names.append(Path(path).name)
        opened.append(shards.h5py.File(path, "r", locking=False))
        return opened[-1]

    monkeypatch.setattr(shards, "open_shard", counted)
    publish._write_report(out, manifest, patients, audit, BuildSummary(), "")
    assert len(names) == len(set(names)) and len(names) < manifest["shard"].map(str).size
    assert not any(f.id.valid for f in opened)  # all closed
    text = (out / "report.html").read_text()
    assert len(_data_uris(text)) > len(names) and "could not read" not in text
