"""End to end: the whole build on the tiny synthetic datamart, against its ground truth."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import MakeCfg

from hiroml import pipeline as build
from hiroml.store.contract import check_contract
from hiroml.store.verify import verify
from hiroml.versions.listing import find_version
from hiroml.vocab import CARD_NAME, CLAIM_NAME, CROISSANT_NAME, FLOW_NAME, REPORT_NAME


@pytest.fixture(scope="module")
def built(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, build.BuildSummary]:
    root, _ = tiny_datamart
    out = tmp_path_factory.mktemp("build") / "out"
    summary = build.run(make_cfg(root, out, "cxr.views=[frontal,lateral,unknown]"))
    return out, summary


def _frame(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "manifest.parquet")


def _assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Manifests equal; on a difference, name the columns and sample keys that differ."""
    if a.shape == b.shape and list(a.columns) == list(b.columns):
        bad = [c for c in a.columns if not a[c].astype(str).equals(b[c].astype(str))]
        if bad:
            keys = a.loc[a[bad[0]].astype(str) != b[bad[0]].astype(str), "sample_key"]
            raise AssertionError(f"columns {bad} differ, e.g. for {list(keys)[:5]}")
    pd.testing.assert_frame_equal(a, b)


def test_output_contract_and_verify(built: tuple[Path, build.BuildSummary]) -> None:
    out, summary = built
    assert check_contract(out) == []
    assert verify(out) == []
    m = _frame(out)
    assert summary.cxr_images == (m["modality"] == "cxr").sum() > 0
    assert summary.ct_volumes == (m["modality"] == "ct").sum() > 0
    assert (out / "report.html").stat().st_size > 10_000
    # the files beside the report, in the latest version and at the root
    version = find_version(out)
    assert version is not None
    for name in (REPORT_NAME, FLOW_NAME, CARD_NAME, CROISSANT_NAME, CLAIM_NAME):
        assert (version.path / name).is_file() and (out / name).is_file(), name


def test_every_zip_decision_matches_the_truth(
    built: tuple[Path, build.BuildSummary], tiny_datamart: tuple[Path, dict[str, Any]]
) -> None:
    out, _ = built
    _, truth = tiny_datamart
    audit = pd.read_csv(out / "audit.csv", dtype=str).fillna("")
    for rel, z in truth["zips"].items():
        batch, _, name = rel.partition("/")
        rows = audit[(audit["zip"] == name) & (audit["batch"] == batch)]
        actions = set(rows["action"])
        assert z["expected"] in actions, (rel, z["kind"], rows[["action", "reason"]].values)
        if z["expected"] in ("duplicate", "merged"):
            whole = rows[rows["member"] == ""]  # the zip's own row (a stitched series: its own)
            kept_as = set(whole.loc[whole["action"] == z["expected"], "kept_as"])
            assert kept_as == {z["kept_as"]}, (rel, kept_as)
        if z["expected"] == "kept":
            assert not actions & {"duplicate", "merged", "skipped"}, (rel, actions)
        if z["expected"] == "error":
            assert all(r for r in rows.loc[rows["action"] == "error", "reason"])


def test_the_resumed_scan_is_one_stitched_volume(
    built: tuple[Path, build.BuildSummary], tiny_datamart: tuple[Path, dict[str, Any]]
) -> None:
    """The planted scan resumed as a new series: one CT row whose provenance names both
    series and the seam; the second part's zip has a merged row naming that sample."""
    out, _ = built
    _, truth = tiny_datamart
    [(head, st)] = [(u, s) for u, s in truth["ct_series"].items() if "stitched_series" in s]
    manifest = pd.read_parquet(out / "manifest.parquet")
    row = manifest[manifest["series_uid"] == head].iloc[0]
    assert list(row["stitched_series"]) == st["stitched_series"]
    assert list(row["seams_mm"]) == pytest.approx(st["seams_z"])
    assert list(row["seam_slices"]) == [st["n_stitched"] // 2]
    assert row["size_xyz"][2] == st["n_stitched"]
    assert not (manifest["series_uid"] == st["stitched_series"][1]).any()
    plain = manifest[manifest["series_uid"] != head]
    assert all(len(v) == 0 for v in plain["stitched_series"])
    audit = pd.read_csv(out / "audit.csv", dtype=str).fillna("")
    [merged] = audit[(audit["action"] == "merged") & (audit["member"] != "")].itertuples()
    assert merged.kept_as == row["sample_key"] and st["stitched_series"][1] in merged.reason
    assert "seams_mm" in merged.detail
    report = (out / "report.html").read_text()
    assert "stitched from 2 series; seams at" in report


def test_instances_once_and_groups_as_planted(
    built: tuple[Path, build.BuildSummary], tiny_datamart: tuple[Path, dict[str, Any]]
) -> None:
    out, _ = built
    _, truth = tiny_datamart
    m = _frame(out)
    sops = [s for lst in m["sop_uids"] for s in lst]
    assert len(sops) == len(set(sops)), "an instance appears twice in the output"
    truth_sops = {s for e in truth["exams"].values() for s in e["sop_uids"]}
    assert set(sops) <= truth_sops
    group_of = dict(zip(m["patient_id"], m["patient_group"], strict=True))
    for ids in truth["patient_groups"]:
        present = [i for i in ids if i in group_of]
        assert len({group_of[i] for i in present}) <= 1, (ids, {i: group_of[i] for i in present})
    linked = {i for ids in truth["patient_groups"] for i in ids}
    loners = [p for p in set(m["patient_id"]) if p not in linked]
    assert len({group_of[p] for p in loners}) == len(loners), "unrelated patients were grouped"
    assert (m.groupby("patient_group")["split"].nunique() == 1).all()


def test_rerun_reuses_every_task_and_gives_the_same_manifest(
    built: tuple[Path, build.BuildSummary],
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
) -> None:
    out, first = built
    root, _ = tiny_datamart
    before = _frame(out)
    # skip_unchanged=false: the whole build runs, and reuses every task of the first
    again = build.run(
        make_cfg(root, out, "cxr.views=[frontal,lateral,unknown]", "skip_unchanged=false")
    )
    assert not again.unchanged
    assert again.tasks == first.tasks and again.tasks_reused == first.tasks
    assert again.zips_indexed_now == 0
    _assert_same(before, _frame(out))


def test_a_new_batch_converts_only_its_exams(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, truth = tiny_datamart
    cxr_batches = [
        b["name"] for b in truth["batches"] if b["modality"] == "cxr" and b["status"] == "COMPLETE"
    ]
    last = sorted(cxr_batches)[-1]
    dm = tmp_path / "dm"
    shutil.copytree(root, dm, ignore=shutil.ignore_patterns(last))
    out = tmp_path / "out"
    week1 = build.run(make_cfg(dm, out))
    split_week1 = dict(zip(_frame(out)["patient_id"], _frame(out)["split"], strict=True))
    shutil.copytree(root / last, dm / last)
    week2 = build.run(make_cfg(dm, out))
    assert week2.tasks_reused >= week1.tasks - 1  # a task whose exams gained nothing is reused
    assert week2.tasks > week2.tasks_reused
    after = _frame(out)
    # no patient moved split between the weeks
    split_week2 = dict(zip(after["patient_id"], after["split"], strict=True))
    assert split_week1 and all(split_week2[p] == s for p, s in split_week1.items())
    # and the incremental result is the one a full build from scratch gives
    full = build.run(make_cfg(root, tmp_path / "full"))
    assert full.tasks == week2.tasks
    _assert_same(after, _frame(tmp_path / "full"))
    assert verify(out) == []


def test_killed_build_resumes_to_the_same_manifest(
    built: tuple[Path, build.BuildSummary],
    tiny_datamart: tuple[Path, dict[str, Any]],
    tmp_path: Path,
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "hiroml",
        f"paths.datamart={root}",
        f"paths.output={out}",
        "progress=false",
        "executor.workers=1",
        "cxr.views=[frontal,lateral,unknown]",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tasks = out / ".hiroml" / "tasks"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if tasks.is_dir() and len(list(tasks.glob("*.json"))) >= 3:
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not (out / "manifest.parquet").exists(), "killed too late to test resuming"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "reused" in done.stdout
    _assert_same(_frame(built[0]), _frame(out))
    assert verify(out) == []


def test_dask_local_cluster_gives_the_same_manifest(
    built: tuple[Path, build.BuildSummary],
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    build.run(
        make_cfg(
            root, out, "executor=dask", "executor.workers=2", "cxr.views=[frontal,lateral,unknown]"
        )
    )
    # Every column, the stored arrays' data_hash included, is the same. The shard files'
    # own bytes (shard_sha256) are not compared here: in about one Dask run in five, HDF5
    # lays out one CT shard with identical datasets and attributes 1 KiB differently (seen
    # on 2026-11-30, cause not found yet); each build's checksums still hold (verify).
    local, dask = _frame(built[0]), _frame(out)
    _assert_same(local.drop(columns="shard_sha256"), dask.drop(columns="shard_sha256"))
    assert verify(out) == []


def test_strict_mode_fails_and_keeps_the_previous_output(
    built: tuple[Path, build.BuildSummary],
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    shutil.copytree(built[0], out)
    before = (out / "manifest.parquet").read_bytes()
    with pytest.raises(build.BuildError, match="strict=true"):
        build.run(make_cfg(root, out, "strict=true", "cxr.views=[frontal,lateral,unknown]"))
    assert (out / "manifest.parquet").read_bytes() == before


def test_misspelled_key_is_rejected(make_cfg: MakeCfg, tmp_path: Path) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"cxr\.sise"):
        make_cfg(tmp_path, tmp_path, "cxr.sise=3")
    from hiroml.errors import ConfigError

    with pytest.raises(ConfigError, match="add up to 1"):
        make_cfg(tmp_path, tmp_path, "splits.train=0.9")


def test_experiment_presets_compose(make_cfg: MakeCfg, tmp_path: Path) -> None:
    cxr = make_cfg(tmp_path, tmp_path, "experiment=covid_cxr")
    assert (cxr.ct.enabled, cxr.cxr.views, cxr.cxr.size) == (False, ["frontal"], [512, 512])
    ct = make_cfg(tmp_path, tmp_path, "experiment=covid_ct")
    assert (ct.cxr.enabled, ct.ct.resample_spacing) == (False, [1.5, 1.5, 1.5])


def test_the_default_demo_builds_with_forked_workers(tmp_path: Path) -> None:
    """The README's first command as it is (the demo-size datamart) with two forked workers.
    The driver decodes members itself (the pediatric check) before it forks; once, a driver
    that had started OpenCV's thread pool hung a worker in cv2.setNumThreads (not reproduced
    on demand since): a timeout here, never a stalled CI."""
    out = tmp_path / "hiroml-out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hiroml",
            f"paths.output={out}",
            "progress=false",
            "executor.workers=2",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert verify(out) == []


def test_the_readme_command_builds_the_demo(tmp_path: Path) -> None:
    """`hiroml-build` with no datamart generates the synthetic one (tiny here) and builds."""
    out = tmp_path / "hiroml-out"
    done = subprocess.run(
        [sys.executable, "-m", "hiroml", "demo_size=tiny", f"paths.output={out}", "progress=false"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "radiographs" in done.stdout and "CT volumes" in done.stdout
    assert (tmp_path / "hiroml-out-demo-datamart" / "hiroml-synth-truth.json").is_file()
    assert check_contract(out) == [] and verify(out) == []
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "hiroml",
            f"paths.datamart={tmp_path / 'nope'}",
            f"paths.output={tmp_path / 'o'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_training_example_runs_on_the_built_dataset(
    built: tuple[Path, build.BuildSummary],
) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_cxr_example.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            str(built[0]),
            "--steps",
            "3",
            "--workers",
            "2",
            "--batch-size",
            "4",
            "--size",
            "64",
            "--log-every",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("train loss") == 3 and "val" in done.stdout


def test_a_stored_ct_volume_comes_back_as_a_simpleitk_image(
    built: tuple[Path, build.BuildSummary],
) -> None:
    import hiroml
    from hiroml.store.shards import read_sample

    out = built[0]
    m = _frame(out)
    row = m[m["modality"] == "ct"].iloc[0]
    img = hiroml.load_sitk(out, row["sample_key"])
    assert img.GetSize() == tuple(int(v) for v in row["size_xyz"])
    assert img.GetSpacing() == pytest.approx(tuple(row["spacing_xyz"]))
    assert img.GetOrigin() == pytest.approx(tuple(row["origin_xyz"]))
    assert img.GetDirection() == pytest.approx(tuple(row["direction"]))
    import SimpleITK as sitk

    arr, _ = read_sample(out / row["shard"], row["sample_key"])
    assert (sitk.GetArrayFromImage(img) == arr).all()
    with pytest.raises(hiroml.errors.HiromlError, match="not a CT volume"):
        hiroml.load_sitk(out, m[m["modality"] == "cxr"].iloc[0]["sample_key"])


def test_every_sample_records_the_decoder_pinned_for_its_syntax(
    built: tuple[Path, build.BuildSummary],
) -> None:
    """The shard meta's ``decoder`` is the one hiroml.dicom.uids.SYNTAXES pins (CT slices of
    uncompressed 16-bit data: numpy): a build that fell back to pydicom fails here."""
    from hiroml.dicom import uids as dicom_uids
    from hiroml.store.shards import read_sample

    out = built[0]
    m = _frame(out)
    seen = set()
    for key, shard, modality in zip(m["sample_key"], m["shard"], m["modality"], strict=True):
        _, meta = read_sample(out / shard, key)
        if modality == "cxr":
            want = dicom_uids.SYNTAXES[meta["transfer_syntax"]].decoder
            assert meta["decoder"] == want, (key, meta["transfer_syntax"], meta["decoder"])
            seen.add(meta["transfer_syntax"])
        else:
            used = set(meta["decoder"].split(", "))
            assert used and used <= {s.decoder for s in dicom_uids.SYNTAXES.values()}, meta
            assert dicom_uids.PYDICOM not in used
    assert len(seen) >= 3  # the tiny datamart stores radiographs in several syntaxes


def test_a_clinical_table_joins_labels_orphans_and_strata(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    import hiroml

    root, truth = tiny_datamart
    out = tmp_path / "out"
    build.run(
        make_cfg(
            root,
            out,
            f"paths.clinical={root / truth['clinical']}",
            "splits.strategy=stratified",
            "splits.stratify=icu",
        )
    )
    m = _frame(out)
    clinical = pd.read_csv(root / truth["clinical"], dtype={"patient_id": str})
    assert "icu" in m.columns
    known = m[m["patient_id"].isin(set(clinical["patient_id"]))]
    want = dict(zip(clinical["patient_id"], clinical["icu"], strict=True))
    assert len(known) and all(known["icu"] == known["patient_id"].map(want))
    assert set(m.loc[m["orphan"], "patient_id"]) == set(truth["orphans"]) & set(m["patient_id"])
    assert known["days_from_encounter"].notna().all()
    assert verify(out) == []
    ds = hiroml.HiromlDataset(out, split="train", modality="cxr", label="icu")
    sample = ds[0]
    assert sample["label"].dtype == torch.float32
