"""splits.sequester: the test split written apart in <out>/sequestered/, the main folder
holding no test sample, label or patient id; the rule kept across weekly builds; turning it
on or off on an existing output refused."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import MakeCfg

from hiroml import HiromlDataset
from hiroml import pipeline as build
from hiroml.cli import build as cli_build
from hiroml.errors import ConfigError
from hiroml.exams.linking import GroupLink
from hiroml.exams.splits import split_of
from hiroml.pipeline.sequester import Tokens, part_links, part_tables
from hiroml.store.reader import read_manifest, read_patients
from hiroml.store.verify import verify
from hiroml.versions.listing import find_version, list_versions
from hiroml.vocab import AUDIT, BUILD_JSON, SEQUESTERED_DIR, STATE_DIR

ON = "splits.sequester=true"


def _week1(root: Path, truth: dict[str, Any], tmp: Path) -> tuple[Path, str]:
    """A copy of the tiny datamart without its last complete CT batch (its patients: a new
    train patient, and a test patient with radiographs in earlier batches)."""
    batches = [
        b["name"] for b in truth["batches"] if b["modality"] == "ct" and b["status"] == "COMPLETE"
    ]
    last = sorted(batches)[-1]
    dm = tmp / "dm"
    shutil.copytree(root, dm, ignore=shutil.ignore_patterns(last))
    return dm, last


def _main_files(out: Path) -> list[Path]:
    """Every file of the main folder a training team gets (not the sequestered folder, not
    the build's own state)."""
    skip = {SEQUESTERED_DIR, STATE_DIR}
    return [p for p in out.rglob("*") if p.is_file() and not skip & set(p.relative_to(out).parts)]


def _check_apart(out: Path, caplog: pytest.LogCaptureFixture) -> pd.DataFrame:
    """Assert that the main folder names no test patient, group or sample, in any file (tables,
    report, card, build.json, shards), and that the sequestered folder is sound and holds the
    test split; the sequestered manifest."""
    held = out / SEQUESTERED_DIR
    assert verify(out) == [] and verify(held) == []
    test_m = read_manifest(held)
    test_p = read_patients(held)
    assert len(test_m) and set(test_m["split"]) == {"test"} and set(test_p["split"]) == {"test"}
    ids = (
        set(test_m["patient_id"]) | set(test_m["source_patient_id"]) | set(test_p["patient_group"])
    )
    ids |= {p for ps in test_p["patient_ids"] for p in ps}
    words = [
        re.compile(rb"(?<![A-Za-z0-9])" + re.escape(i.encode()) + rb"(?![A-Za-z0-9])") for i in ids
    ]
    keys = [k.encode() for k in test_m["sample_key"]]
    files = _main_files(out)
    assert any(p.suffix == ".h5" for p in files) and any(p.name == AUDIT for p in files)
    for p in files:
        data = p.read_bytes()
        found = [w.pattern for w in words if w.search(data)] + [k for k in keys if k in data]
        assert not found, (p, found[:3])
    main = read_manifest(out)
    assert "test" not in set(main["split"]) and len(main)
    with caplog.at_level(logging.WARNING, logger="hiroml.data.dataset"):
        assert len(HiromlDataset(out, split="test")) == 0
    assert f"the evaluator opens HiromlDataset('{held}', split='test')" in caplog.text
    for modality in ("cxr", "ct"):
        n = int((test_m["modality"] == modality).sum())
        assert len(HiromlDataset(held, split="test", modality=modality)) == n
    return test_m


#: temporal: the groups first seen after this day are test (in the tiny datamart, those of the
#: CT batches; the last CT batch brings one more)
CUTOFF = dt.date(2020, 3, 30)


@pytest.mark.parametrize(
    "rule",
    [(), ("splits.strategy=temporal", f"splits.temporal.test_after={CUTOFF}")],
    ids=["hash", "temporal"],
)
def test_the_main_folder_holds_no_test_patient_across_weekly_builds(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    rule: tuple[str, ...],
) -> None:
    root, truth = tiny_datamart
    dm, last = _week1(root, truth, tmp_path)
    out = tmp_path / "out"
    clinical = pd.read_csv(root / truth["clinical"], dtype=str)
    first = build.run(make_cfg(dm, out, ON, *rule, f"paths.clinical={root / truth['clinical']}"))
    week1 = _check_apart(out, caplog)
    was = {**dict(zip(read_manifest(out)["patient_id"], read_manifest(out)["split"], strict=True)),
           **dict.fromkeys(week1["patient_id"], "test")}  # fmt: skip
    info = json.loads((find_version(out).path / BUILD_JSON).read_text(encoding="utf-8"))  # type: ignore[union-attr]
    recorded = info["splits"]
    assert recorded["sequester"] is True and recorded["strategy"] == (
        "temporal" if rule else "hash"
    )
    assert recorded["sequestered_samples"] == len(week1)
    assert recorded["sequestered_version"] == find_version(out / SEQUESTERED_DIR).name  # type: ignore[union-attr]
    assert "the test split is sequestered" in recorded["rule"]
    text = "\n".join(first.lines())
    assert f"test split sequestered: {recorded['sequestered_patients']} patient group(s)" in text
    for name in ("report.html", "DATASET.md"):
        assert f"in the {SEQUESTERED_DIR}/ folder of the output" in (out / name).read_text("utf-8")
        assert (out / SEQUESTERED_DIR / name).is_file()

    # a week later: a new batch; earlier patients keep their split, new test patients are
    # those the recorded rule (the salted hash) puts in test, and they go apart
    shutil.copytree(root / last, dm / last)
    # and a broken zip of a test patient: its error row names the patient, so it goes apart
    pid = sorted(week1["patient_id"])[0]
    batch = sorted(p for p in dm.iterdir() if p.name.startswith("CXR-UPDATE-"))[0]
    broken = f"{pid}_20200401-120000_Z999_XR-CHEST-PA.zip"
    (batch / broken).write_bytes(b"not a zip")
    # and a clinical table without the test patient's row: an orphan the main folder never names
    table = tmp_path / "clinical.csv"
    clinical[clinical["patient_id"] != pid].to_csv(table, index=False)
    second = build.run(make_cfg(dm, out, ON, *rule, f"paths.clinical={table}"))
    held_info = json.loads((find_version(out / SEQUESTERED_DIR).path / BUILD_JSON).read_text())  # type: ignore[union-attr]
    assert pid in held_info["summary"]["orphan_ids"]
    assert second.published and second.split_moves == 0 and second.new_failed_zips >= 1
    week2 = _check_apart(out, caplog)
    assert broken in set(pd.read_csv(out / SEQUESTERED_DIR / AUDIT)["zip"])
    main = read_manifest(out)
    now = {**dict(zip(main["patient_id"], main["split"], strict=True)),
           **dict.fromkeys(week2["patient_id"], "test")}  # fmt: skip
    assert len(now) > len(was) and all(now[p] == s for p, s in was.items())
    assert len(week2) > len(week1)  # the new batch brought test samples: they went apart
    # every group (new ones included) has the split the recorded rule gives it
    groups = (
        pd.concat([main, week2])
        .groupby("patient_group")
        .agg(split=("split", "first"), first=("exam_time", "min"))
    )
    if rule:
        assert ((groups["first"].dt.date > CUTOFF) == (groups["split"] == "test")).all()
        assert set(week2["patient_group"]) - set(week1["patient_group"])  # a new test patient
    else:
        cfg = make_cfg(dm, out, ON).splits
        assert all(split_of(g, cfg) == s for g, s in groups["split"].items())
    assert len(list_versions(out / SEQUESTERED_DIR)) == 2

    # nothing new: no version on either side, every task reused
    again = build.run(
        make_cfg(dm, out, ON, *rule, f"paths.clinical={table}", "skip_unchanged=false")
    )
    assert not again.published and again.tasks_reused == again.tasks
    assert again.new_failed_zips == 0  # the zips that failed before, test patients' included
    assert len(list_versions(out / SEQUESTERED_DIR)) == 2
    _check_apart(out, caplog)


def _run_build(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str]:
    """``hiroml-build ARGV`` in this process: its exit code and its one line of stderr."""
    monkeypatch.setattr(sys, "argv", ["hiroml-build", *argv])
    monkeypatch.setattr(cli_build, "_composed", [])
    monkeypatch.setattr(cli_build, "_output", [])
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        cli_build.main()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    return int(done.value.code or 0), lines[0]


def test_turning_sequester_on_or_off_on_an_existing_output_is_refused(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = tiny_datamart
    plain, held = tmp_path / "plain", tmp_path / "held"
    build.run(make_cfg(root, plain))
    build.run(make_cfg(root, held, ON))
    before = sorted(p.name for p in (held / "versions").iterdir())
    common = [f"paths.datamart={root}", "progress=false", "executor.workers=1"]

    # off on a sequestered output: the test split would come back into the main folder
    code, line = _run_build(monkeypatch, capsys, *common, f"paths.output={held}")
    assert code == 2 and "splits.sequester=false would publish test samples" in line
    assert str(held / SEQUESTERED_DIR) in line
    # on, over versions whose test split is in the main folder
    code, line = _run_build(monkeypatch, capsys, *common, f"paths.output={plain}", ON)
    assert code == 2 and "already holds a test split that is not sequestered" in line
    assert not (plain / SEQUESTERED_DIR).exists()
    # on, with another rule for the test patients
    with pytest.raises(ConfigError, match=r"splits\.salt='other' would add test patients"):
        build.run(make_cfg(root, held, ON, "splits.salt=other"))
    with pytest.raises(ConfigError, match=r"splits\.strategy='temporal'"):
        build.run(make_cfg(root, held, ON, "splits.strategy=temporal"))
    assert sorted(p.name for p in (held / "versions").iterdir()) == before


def test_tables_are_parted_by_whole_tokens() -> None:
    manifest = pd.DataFrame(
        {
            "sample_key": ["110_20200101-000000_A1:1.2", "1100_20200101-000000_A2:1.3"],
            "patient_id": ["110", "1100"],
            "source_patient_id": ["110", "P-1100"],
            "patient_group": ["g110", "g1100"],
            "split": ["test", "train"],
            "near_duplicates": [[], ["110_20200101-000000_A1:1.2", "9_x"]],
        }
    )
    patients = pd.DataFrame(
        {
            "patient_group": ["g110", "g1100"],
            "patient_ids": [["110", "OLD-7"], ["1100"]],
            "split": ["test", "train"],
            "links": [[], ["near duplicate of patient 110 (g110)"]],
        }
    )
    audit = pd.DataFrame(
        {
            "zip": [
                "110_20200101-000000_A1_XR.zip",
                "1100_20200101-000000_A2_XR.zip",
                "x.zip",
                "y.zip",
            ],
            "reason": ["kept", "kept", "remapped from OLD-7", "1100 bytes"],
            "detail": ["", "", "", None],
        }
    )
    parted = part_tables(manifest, patients, audit)
    assert list(parted.manifest["patient_id"]) == ["1100"]
    assert list(parted.held_manifest["patient_id"]) == ["110"]
    assert list(parted.manifest["near_duplicates"].iloc[0]) == ["9_x"]
    assert list(parted.patients["links"].iloc[0]) == []
    assert list(parted.audit["zip"]) == ["1100_20200101-000000_A2_XR.zip", "y.zip"]
    assert list(parted.held_audit["zip"]) == ["110_20200101-000000_A1_XR.zip", "x.zip"]
    link = GroupLink(
        "near", "1100_x:1", "9_y:1", "1100_x", "9_y", "1100", "9", "g1100", "g9", 0.97, False
    )
    to_test = dataclasses.replace(link, other_key="110_z:2", other_patient_id="110")
    assert part_links([link, to_test], parted.tokens) == ([link], [to_test])
    tokens = Tokens.of(["110", "OLD-7", "MRN-001"])
    assert tokens.named_in("patient 110, joined") and tokens.named_in("was OLD-7.")
    assert tokens.named_in("MRN-001_20200101-000000_A1_XR.zip")
    assert not tokens.named_in("1100 OLD-77 g110 XOLD-7 MRN-0011 MRN 001")
