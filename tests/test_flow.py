"""The flow diagram (flow.svg, top of report.html) and the dataset card (DATASET.md), on the
tiny synthetic datamart's build, against its ground truth."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from hiroml.report.card import render_card
from hiroml.report.flow import Flow, compute_flow, flow_svg, reason_class
from hiroml.versions import listing as versions_listing

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def built(tiny_build_clinical: Path) -> Path:
    return tiny_build_clinical


def _tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    audit = pd.read_csv(out / "audit.csv", dtype=str).fillna("")
    return audit, pd.read_parquet(out / "manifest.parquet")


def _box_texts(svg: str) -> list[list[str]]:
    """The text lines of each box of the SVG, in drawing order."""
    root = ET.fromstring(svg)
    boxes: list[list[str]] = []
    for el in root:
        if el.tag == f"{SVG}rect" and el.get("class") in ("main", "side", "split"):
            boxes.append([])
        elif el.tag == f"{SVG}text" and boxes and el.get("class") != "title":
            boxes[-1].append(el.text or "")
    return boxes


def test_flow_counts_match_the_truth_and_add_up(
    built: Path, tiny_datamart: tuple[Path, dict[str, Any]]
) -> None:
    _, truth = tiny_datamart
    audit, manifest = _tables(built)
    f = compute_flow(audit, manifest)
    expected = Counter(z["expected"] for z in truth["zips"].values())
    assert f.zips_found == len(truth["zips"]) > 40
    assert f.zips_skipped == expected["skipped"] == 1
    assert f.zips_read == len(truth["zips"]) - expected["skipped"]
    assert f.zips_error == expected["error"]
    assert f.zips_usable == expected["kept"] + expected["duplicate"] + expected["merged"]
    assert f.zips_duplicate == expected["duplicate"]
    assert f.zips_merged == expected["merged"]
    assert f.exams == len(truth["exams"]) == expected["kept"]
    assert f.exams_with_samples == manifest["exam_key"].nunique()
    assert f.exams_without_sample == len(truth["exams"]) - manifest["exam_key"].nunique()
    # dropped classes, against the planted objects of the exams that were read
    read = {r for r, z in truth["zips"].items() if z["expected"] in ("kept", "merged")}

    def planted(kind: str) -> int:
        return sum(
            1 for s in truth["ct_series"].values() if s["kind"] == kind and set(s["zips"]) & read
        )

    cxr_screens = sum(1 for c in truth["cxr_images"].values() if c["kind"] == "screen_save")
    assert f.dropped["localizer"] == planted("localizer") > 0
    assert f.dropped["non-image object"] == planted("dose") > 0
    assert f.dropped["screen save / secondary"] == planted("screen_save") + cxr_screens > 0
    in_exams = audit["zip"].isin({Path(r).name for r in read})
    assert sum(f.dropped.values()) == int((in_exams & (audit["action"] == "dropped")).sum())
    # samples and splits, from the manifest
    assert f.samples == len(manifest) == f.cxr + f.ct
    assert f.cxr == (manifest["modality"] == "cxr").sum() > 0
    assert f.ct == (manifest["modality"] == "ct").sum() > 0
    assert f.patients == manifest["patient_id"].nunique()
    for s in f.splits:
        rows = manifest[manifest["split"] == s.split]
        assert (s.patients, s.samples) == (rows["patient_id"].nunique(), len(rows))
    assert [s.split for s in f.splits] == ["train", "val", "test"]
    assert f.problems() == []


def test_flow_svg_boxes_show_every_count(built: Path) -> None:
    audit, manifest = _tables(built)
    f = compute_flow(audit, manifest)
    svg = (built / "flow.svg").read_text(encoding="utf-8")
    assert svg == flow_svg(f)
    boxes = _box_texts(svg)
    main = {b[0]: b[1:] for b in boxes}
    assert main["Zips found"] == [f"{f.zips_found} exam zips"]
    assert main["Skipped: upload in progress"] == [f"{f.zips_skipped} zip"]
    assert main["Zips read"] == [f"{f.zips_read} zips"]
    assert main["Excluded: errors"] == [f"{f.zips_error} zips with nothing usable"]
    assert main["Zips with usable images"] == [f"{f.zips_usable} zips"]
    assert main["Excluded: same exam twice"] == [
        f"duplicates: {f.zips_duplicate} zips",
        f"merged into a split CT exam: {f.zips_merged} zips",
    ]
    assert main["Exams"] == [f"{f.exams} exams"]
    inside = main["Excluded inside exams (audit rows)"]
    assert inside[: len(f.dropped)] == [f"{k}: {v}" for k, v in f.dropped.items()]
    assert inside[len(f.dropped) :] == [
        f"errors: {f.errors_in_exams}",
        f"exams with no sample: {f.exams_without_sample}",
    ]
    assert main["Samples"][0] == f"{f.samples} samples of {f.patients} patients"
    for s in f.splits:
        assert main[s.split][:2] == [
            f"{s.patients} patient{'s' if s.patients != 1 else ''}",
            f"{s.samples} sample{'s' if s.samples != 1 else ''}",
        ]
    # self-contained: no script, no link, no external font or image
    assert not re.search(r"<script|href=|@import|url\(|<image|http://(?!www.w3.org/2000/svg)", svg)
    page = (built / "report.html").read_text(encoding="utf-8")
    assert svg.replace(' xmlns="http://www.w3.org/2000/svg"', "").strip() in page
    assert page.index('id="flow"') < page.index('id="counts"')


def test_flow_sums_that_do_not_add_up_are_named() -> None:
    audit = pd.DataFrame(
        {
            "zip": ["a.zip", "b.zip", "b.zip", "c.zip", "sheet.xlsx"],
            "batch": ["B", "B", "B", "B", ""],
            "action": ["kept", "kept", "dropped", "dropped", "error"],
            "reason": ["kept", "kept", "view lateral not selected (cxr.views=[frontal])",
                       "localizer / scout", "remap cycle"],
            "exam_key": ["ea", "eb", "eb", "", ""],
        }
    )  # fmt: skip
    manifest = pd.DataFrame(
        {"exam_key": ["ea"], "patient_id": ["p"], "split": ["train"], "modality": ["cxr"]}
    )
    f = compute_flow(audit, manifest)
    # the sheet's row is no zip; a zip with only dropped rows counts with the errors
    assert (f.zips_found, f.zips_error, f.exams, f.exams_without_sample) == (3, 1, 2, 1)
    assert f.dropped == {"view not selected": 1}
    assert f.problems() == []
    broken = Flow(**{**{k: getattr(f, k) for k in f.__slots__}, "zips_read": 5})  # type: ignore[attr-defined]
    assert broken.problems() == [
        "found = skipped + read: 3 != 5",
        "read = errors + usable: 5 != 3",
    ]
    plain = f.as_dict()  # plain values, every field in its order, for JSON
    assert list(plain) == list(f.__slots__)  # type: ignore[attr-defined]
    assert json.loads(json.dumps(plain)) == plain
    assert plain["dropped"] == {"view not selected": 1} and plain["zips_found"] == 3
    assert plain["splits"] == [
        {"split": "train", "patients": 1, "samples": 1, "cxr": 1, "ct": 0},
        {"split": "val", "patients": 0, "samples": 0, "cxr": 0, "ct": 0},
        {"split": "test", "patients": 0, "samples": 0, "cxr": 0, "ct": 0},
    ]


@pytest.mark.parametrize(
    ("reason", "cls"),
    [
        ("series 1.2: 2 of 2 instances (folder 1_SCOUT/): localizer / scout", "localizer"),
        ("non-image object: structured report (SOP Class ...)", "non-image object"),
        ("secondary capture / screen save (Modality=OT)", "screen save / secondary"),
        ("view lateral not selected (cxr.views=[frontal]): (0018,5101)", "view not selected"),
        ("only 4 usable slice(s), fewer than ct.min_slices=10", "short series"),
        ("series 1: not the best series of the exam (ct.series=best)", "other series of the exam"),
        ("something new", "other"),
    ],
)
def test_reason_classes(reason: str, cls: str) -> None:
    assert reason_class(reason) == cls


def test_dataset_card(built: Path, tiny_datamart: tuple[Path, dict[str, Any]]) -> None:
    _, truth = tiny_datamart
    audit, manifest = _tables(built)
    card = (built / "DATASET.md").read_text(encoding="utf-8")
    f = compute_flow(audit, manifest)
    assert f"| exam zips found | {f.zips_found} |" in card
    assert f"| exams | {f.exams} |" in card
    assert f"| samples | {f.samples} ({f.cxr} radiographs, {f.ct} CT volumes) |" in card
    for b in truth["batches"]:
        assert f"| {b['name']} | {b['modality'].upper()} | {b['date']} | {b['status']} |" in card
    assert "| cxr.views | [frontal, lateral, unknown] |" in card
    assert "| ct.spacing_policy | resample |" in card
    # label prevalence per split, per patient, from the clinical table (icu: 0/1)
    pats = manifest.drop_duplicates("patient_id")
    for s in ("train", "test"):
        icu = pd.to_numeric(pats.loc[pats["split"] == s, "icu"], errors="coerce").dropna()
        assert f"{int(icu.sum())}/{len(icu)} (" in card.split("| icu |")[1].split("\n")[0]
    # demographics per split: patients and sex counts
    for s in ("train", "test"):
        p = pats[pats["split"] == s]
        f_, m_ = int((p["sex"] == "F").sum()), int((p["sex"] == "M").sum())
        assert re.search(rf"\| {s} \| {len(p)} \| .* \| {f_} \| {m_} \|", card), s
    # no PHI: no id, no private string, no sample key or zip name
    words = set(re.findall(r"[\w.^-]+", card))
    ids = {z["patient_id_source"] for z in truth["zips"].values()} | set(manifest["patient_id"])
    assert not (ids - {""}) & words
    assert not any(p in card for p in truth["private_strings"])
    assert not any(k in card for k in manifest["sample_key"])
    assert not any(Path(z).name in card for z in truth["zips"])
    # the hash the publisher computed (once) is the one the card prints
    latest = versions_listing.find_version(built)
    assert latest is not None and f"| dataset_hash | {latest.dataset_hash} |" in card


def test_card_prints_version_and_dataset_hash_when_given() -> None:
    empty = pd.DataFrame()
    f = compute_flow(pd.DataFrame(columns=["zip", "batch", "action"]), empty)
    card = render_card(
        manifest=empty,
        audit=empty,
        summary={"version": "0007-3f9a1c2e", "dataset_hash": "ab12cd"},
        flow=f,
    )
    assert card.startswith("# Dataset card: hiroml dataset version 0007-3f9a1c2e")
    assert "| dataset_hash | ab12cd |" in card
    assert "| version | 0007-3f9a1c2e |" in card


def test_card_never_takes_hiroml_own_columns_for_clinical_labels() -> None:
    """Every column hiroml writes (the leakage, stitching and object-type ones included) is
    hiroml's, not a label: a manifest without a clinical table has no label column."""
    from dataclasses import fields

    from hiroml.records import ManifestRow
    from hiroml.report.card import _label_columns as label_columns

    own = [f.name for f in fields(ManifestRow)] + ["signature", "near_duplicates"]
    m = pd.DataFrame({c: [False, True] for c in own})
    assert label_columns(m) == []
    m["icu"] = [0, 1]
    assert label_columns(m) == ["icu"]


def test_a_build_counts_its_flow_once_and_shows_those_counts(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """The build's counts, the report, the card and the cited files all take one flow of the
    published tables: compute_flow runs once per build, and what it gave is what the
    tables read back give."""
    from hiroml.pipeline import driver
    from hiroml.report import citable, claim, page
    from hiroml.report import flow as flow_module

    real = flow_module.compute_flow
    calls: list[int] = []

    def counted(audit: pd.DataFrame, manifest: pd.DataFrame) -> Flow:
        calls.append(len(manifest))
        return real(audit, manifest)

    for module in (flow_module, page, claim, citable):
        monkeypatch.setattr(module, "compute_flow", counted)
    root, _ = tiny_datamart
    out = tmp_path / "out"
    summary = driver.run(make_cfg(root, out))
    assert len(calls) == 1 and calls[0] > 0
    audit, manifest = _tables(out)
    assert summary.flow == real(audit, manifest).as_dict()
    shown = _box_texts((out / "flow.svg").read_text(encoding="utf-8"))
    assert shown == _box_texts(flow_svg(real(audit, manifest)))
