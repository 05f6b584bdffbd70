"""Versions (DESIGN.md section 4b): publishing, readers bound to a version, pins and pruning,
split moves, the diff and the kill points. Every build is of the tiny synthetic datamart."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import MakeCfg
from test_manifest import make_output
from torch.utils.data import DataLoader

from hiroml import pipeline as build
from hiroml.cli import versions as cli_versions
from hiroml.cli.verify import main as verify_main
from hiroml.data.dataset import HiromlDataset, load_sitk
from hiroml.errors import EXIT_LOCKED
from hiroml.exams import splits
from hiroml.pipeline import faults
from hiroml.pipeline.tasks import read_record
from hiroml.store.reader import cell_plain
from hiroml.store.shards import open_shard, sample_refs, shard_sha256
from hiroml.store.verify import examine, examine_all, verify
from hiroml.synth import write_remap_sheet
from hiroml.versions import changes as versions_changes
from hiroml.versions import hashing as versions_hashing
from hiroml.versions import listing as versions_listing
from hiroml.versions import pruning as versions_pruning
from hiroml.versions import publishing as versions_publishing

#: a second config that changes every task (radiographs and CT): every shard is replaced
OTHER = ("cxr.size=[256,256]", "ct.min_slices=9")


def _shards(out: Path, version: versions_listing.Version) -> set[str]:
    return set(pd.read_parquet(version.path / "manifest.parquet")["shard"])


@pytest.fixture(scope="module")
def history(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[build.BuildSummary]]:
    """One output built three times: the default config, the same again (nothing new), then
    :data:`OTHER`."""
    root, _ = tiny_datamart
    out = tmp_path_factory.mktemp("history") / "out"
    runs = [build.run(make_cfg(root, out)) for _ in range(2)]
    runs.append(build.run(make_cfg(root, out, *OTHER)))
    return out, runs


def test_each_changed_build_publishes_a_version_and_a_rerun_none(
    history: tuple[Path, list[build.BuildSummary]],
) -> None:
    out, (first, again, other) = history
    kept = versions_listing.list_versions(out)
    assert [v.seq for v in kept] == [1, 2]
    assert first.published and first.version == kept[0].name
    assert not again.published and again.version == kept[0].name
    assert "nothing changed since version" in "\n".join(again.lines())
    assert other.published and other.version == kept[1].name
    for v in kept:
        assert v.name == f"{v.seq:04d}-{v.dataset_hash[:8]}"
        assert v.dataset_hash == versions_hashing.dataset_hash(v.path / "manifest.parquet")
        info = json.loads((v.path / "build.json").read_text())
        assert info["dataset_hash"] == v.dataset_hash and info["samples"] == v.samples
        assert info["config"]["versions"]["keep"] == 10
        assert info["inputs"]["zips"] == first.zips and info["inputs"]["batches"]
        assert set(info["timings"]) >= {"index", "convert"}
        assert {"manifest.parquet", "patients.parquet", "audit.csv", "report.html"} <= {
            p.name for p in v.path.iterdir()
        }
    # the root tables are the latest version's, byte for byte
    for name in ("manifest.parquet", "patients.parquet", "audit.csv", "report.html"):
        assert (out / name).read_bytes() == (kept[1].path / name).read_bytes(), name
    assert json.loads((kept[1].path / "build.json").read_text())["previous"] == kept[0].name
    assert [f.errors for f in examine_all(out)] == [[], []]
    assert verify(out, version=1) == []


def test_dataset_hash_ignores_row_and_column_order(
    history: tuple[Path, list[build.BuildSummary]],
) -> None:
    out, _ = history
    m = pd.read_parquet(out / "manifest.parquet")
    h = versions_hashing.dataset_hash(out / "manifest.parquet")
    assert versions_hashing.dataset_hash(m) == h
    shuffled = m.sample(frac=1.0, random_state=3)[list(reversed(m.columns))]
    assert versions_hashing.dataset_hash(shuffled) == h
    changed = m.copy()
    changed.loc[0, "split"] = "val" if changed.loc[0, "split"] != "val" else "test"
    assert versions_hashing.dataset_hash(changed) != h
    # a shard file's checksum is the HDF5 library's byte layout, not the dataset's content
    relaid = m.copy()
    relaid.loc[0, "shard_sha256"] = "0" * 64
    assert versions_hashing.dataset_hash(relaid) == h
    latest = versions_listing.find_version(out)
    assert latest is not None
    assert versions_publishing._same_checksums(latest, m)
    assert not versions_publishing._same_checksums(latest, relaid)


def test_dataset_hash_is_the_one_the_first_versions_published(tmp_path: Path) -> None:
    """Scheme 1 (versions whose build.json records no ``dataset_hash_scheme``) gives the
    values the row-by-row code of hiroml 0.x gave (pinned below), so hiroml-verify checks
    those versions as published: nulls in lists, NaN inside a list, timestamps, quotes and
    non-ASCII text, list columns with and without nulls."""
    m = pd.read_parquet(make_output(tmp_path, n_patients=3, n_ct=1) / "manifest.parquet")
    m["signature"] = [[(i * 37 + j) % 256 for j in range(16)] for i in range(len(m))]
    assert versions_hashing.dataset_hash(m, scheme=1) == (
        "b554c751d841aee37fb60ca18810b462cb3f0f5f0afd10ad11dbf5f2630e131b"
    )
    m.loc[2, "signature"] = None
    m["near_duplicates"] = [["cxr-1000-1", "cxr-1001-0"] if i == 0 else [] for i in range(len(m))]
    m.at[len(m) - 1, "spacing_xyz"] = [0.7, float("nan"), 2.5]
    m.at[1, "description"] = 'caf\u00e9 "q" \\'
    assert versions_hashing.dataset_hash(m, scheme=1) == (
        "078a3a6d441f910495f8bdb51a6036bf6240455785e8687a07cba3cd99d282d9"
    )


def test_version_opens_an_older_version_after_newer_builds(
    history: tuple[Path, list[build.BuildSummary]],
) -> None:
    out, _ = history
    old, new = versions_listing.list_versions(out)
    ds_old = HiromlDataset(out, "train", version=old.seq)
    ds_new = HiromlDataset(out, "train")
    assert ds_old.version == old.name and ds_new.version == new.name
    assert tuple(ds_old[0]["image"].shape) == (1, 512, 512)
    assert tuple(ds_new[0]["image"].shape) == (1, 256, 256)
    assert HiromlDataset(out, "train", version=old.name).keys == ds_old.keys
    assert f"version={old.name!r}" in repr(ds_old)
    ct_key = pd.read_parquet(old.path / "manifest.parquet").query("modality == 'ct'")["sample_key"]
    img = load_sitk(out, ct_key.iloc[0], version=old.name)
    assert img.GetSize()[0] > 0
    with pytest.raises(
        versions_listing.VersionError, match=r"no version '0099'.*versions kept: 0001-"
    ):
        HiromlDataset(out, "train", version="0099")


def test_the_diff_and_the_report_say_what_changed(
    history: tuple[Path, list[build.BuildSummary]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = history
    old, new = versions_listing.list_versions(out)
    d = versions_changes.diff(out, old.name, new.name)
    m = pd.read_parquet(new.path / "manifest.parquet")
    # same samples, radiographs with other pixels (cxr.size changed), no split move
    assert d.samples_added == () and d.samples_removed == ()
    assert set(d.samples_changed) == set(m.loc[m["modality"] == "cxr", "sample_key"])
    assert d.moves == ()
    assert cli_versions.main([str(out), "--diff", "1", "2", "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["samples_changed"] == list(d.samples_changed) and as_json["moves"] == []
    page = (new.path / "report.html").read_text()
    assert "What changed since the previous version" in page and old.name in page
    first = (old.path / "report.html").read_text()
    assert "is the first version of this output" in first


def test_hiroml_versions_lists_newest_first_as_text_and_json(
    history: tuple[Path, list[build.BuildSummary]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = history
    old, new = versions_listing.list_versions(out)
    assert cli_versions.main([str(out), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed] == [new.name, old.name]
    for v in listed:
        assert {"version", "created", "samples", "patients", "dataset_hash", "pinned"} <= set(v)
        assert v["pinned"] is False and v["samples"] > 0 and v["patients"] > 0
    assert cli_versions.main([str(out)]) == 0
    text = capsys.readouterr().out
    assert text.index(new.name) < text.index(old.name)
    assert cli_versions.main([str(out), "--pin", "7"]) == 1
    assert "no version '7'" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
def test_a_reader_survives_a_rebuild_that_replaces_every_shard(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    workers: int,
) -> None:
    """Forked DataLoader workers read the whole epoch across the rebuild; a spawned worker
    gets the Dataset pickled, which is checked after the rebuild (keys and version travel
    with it: the manifest is never read again)."""
    root, _ = tiny_datamart
    out = tmp_path / "out"
    build.run(make_cfg(root, out))
    ds = HiromlDataset(out, "train")
    extra: dict[str, Any] = {"prefetch_factor": 1} if workers else {}
    it = iter(DataLoader(ds, batch_size=1, num_workers=workers, **extra))
    keys = [next(it)["sample_key"][0]]
    build.run(make_cfg(root, out, *OTHER))  # the weekly build, meanwhile
    old, new = versions_listing.list_versions(out)
    assert ds.version == old.name
    assert not _shards(out, old) & _shards(out, new), "the rebuild kept a shard"
    keys += [b["sample_key"][0] for b in it]
    assert keys == ds.keys and len(keys) > 3
    spawned = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives
    assert spawned.version == old.name and spawned.keys == ds.keys
    again = [spawned[i]["image"] for i in range(len(spawned))]
    assert all(tuple(x.shape) == (1, 512, 512) for x in again)


def test_pins_survive_pruning_and_unpinned_versions_go_with_their_shards(
    history: tuple[Path, list[build.BuildSummary]],
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    shutil.copytree(history[0], out)
    build.run(make_cfg(root, out, "cxr.size=[128,128]"))
    v1, v2, v3 = versions_listing.list_versions(out)
    s1, s2, s3 = (_shards(out, v) for v in (v1, v2, v3))
    assert cli_versions.main([str(out), "--pin", v1.name, "--note", "paper"]) == 0
    assert cli_versions.main([str(out), "--prune", "--keep", "1"]) == 0
    assert "pruned 1 version(s) (" + v2.name in capsys.readouterr().out
    assert [v.name for v in versions_listing.list_versions(out)] == [v1.name, v3.name]
    assert versions_listing.find_version(out, v1.name).pinned  # type: ignore[union-attr]
    assert all((out / s).is_file() for s in s1 | s3)
    assert not any((out / s).exists() for s in s2 - s1 - s3)
    assert [f.errors for f in examine_all(out)] == [[], []]
    # unpinned, the next build (nothing new) prunes it to versions.keep, its shards too
    assert cli_versions.main([str(out), "--unpin", "1"]) == 0
    done = build.run(make_cfg(root, out, "cxr.size=[128,128]", "versions.keep=1"))
    assert not done.published and done.versions_pruned == 1
    assert [v.name for v in versions_listing.list_versions(out)] == [v3.name]
    on_disk = {f"shards/{p.name}" for p in (out / "shards").glob("*.h5")}
    assert on_disk == s3
    # task records of removed shards went with them: what is left is the records of the
    # latest build's tasks, each naming shards on disk (shard writers keep no records)
    records = list((out / ".hiroml" / "tasks").glob("*.json"))
    assert len(records) == done.tasks
    named = {s for p in records for s in read_record(p)[0]["shards"]}
    assert named == on_disk
    assert not list((out / "shards").glob("*.done.json"))
    assert verify(out) == []


def test_a_builds_sweep_reads_task_records_with_their_signatures_after_the_json(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    """A record holds its radiographs' signatures after its JSON line; the sweep reads the
    shards it names from the JSON and keeps a record of another task whose shards a kept
    version names, and removes one whose shard is gone."""
    out = tmp_path / "out"
    assert build.run(make_cfg(tiny_datamart[0], out)).published
    task_dir = out / ".hiroml" / "tasks"
    live = sorted(task_dir.glob("*.json"))
    record = next(p for p in live if p.name.startswith("cxr-"))
    data, tail = read_record(record)
    assert tail is not None and len(tail) >= 1024  # a radiograph's signature at least
    named = task_dir / "cxr-another.json"  # not this build's task: its shards are kept
    named.write_bytes(record.read_bytes())
    gone = task_dir / "cxr-gone.json"
    gone.write_bytes(json.dumps({**data, "shards": ["shards/gone.h5"]}).encode() + b"\n" + tail)
    pruned = versions_pruning.prune(
        out, 10, sweep=True, live_tasks=[p.stem for p in live], task_dir=task_dir
    )
    assert pruned.task_records == 1
    assert named.is_file() and not gone.exists()
    assert all(p.is_file() for p in live)


@pytest.mark.parametrize("damage", [b'{"created": "2026-', b"", b"[1, 2]"])
def test_a_damaged_build_json_makes_prune_refuse_and_keeps_every_shard(
    history: tuple[Path, list[build.BuildSummary]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: bytes,
) -> None:
    """A version whose build.json cannot be read may name shards no other version names:
    pruning (by hand or by a build) stops with an error naming the file and deletes nothing."""
    out = tmp_path / "out"
    shutil.copytree(history[0], out)
    v1, v2 = versions_listing.list_versions(out)

    def files() -> list[str]:
        return sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".hiroml" not in p.parts)

    damaged = v1.path / "build.json"
    damaged.write_bytes(damage)
    before = files()
    with pytest.raises(versions_listing.VersionError, match=f"{damaged}.*nothing is deleted"):
        versions_pruning.prune(out, keep=1, sweep=True)
    assert cli_versions.main([str(out), "--prune", "--keep", "1"]) == 1
    assert str(damaged) in capsys.readouterr().err
    assert files() == before
    # readers still skip it, with a warning: only what deletes data stops
    assert [v.name for v in versions_listing.list_versions(out)] == [v2.name]


def _single_patients(m: pd.DataFrame, split: str, remap: dict[str, str]) -> list[str]:
    taken = set(remap) | set(remap.values())
    sizes = m.groupby("patient_group")["patient_id"].nunique()
    rows = m[(m["split"] == split) & (m["patient_id"] == m["source_patient_id"])]
    return sorted(
        p
        for p, g in zip(rows["patient_id"], rows["patient_group"], strict=True)
        if p not in taken and sizes[g] == 1
    )


def test_a_late_remap_joining_train_and_test_keeps_both_in_train_and_says_so(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, truth = tiny_datamart
    dm = tmp_path / "dm"
    shutil.copytree(root, dm)
    out = tmp_path / "out"
    build.run(make_cfg(dm, out))
    m1 = pd.read_parquet(out / "manifest.parquet")
    in_train, in_test = (
        _single_patients(m1, "train", truth["remap"])[0],
        _single_patients(m1, "test", truth["remap"])[0],
    )
    # next week's remap sheet: the test patient is an old id of the train patient
    write_remap_sheet(dm / truth["remap_sheet"], {**truth["remap"], in_test: in_train})
    week2 = build.run(make_cfg(dm, out))
    assert week2.published and week2.split_moves == 1
    m2 = pd.read_parquet(out / "manifest.parquet")
    both = m2[m2["source_patient_id"].isin([in_train, in_test])]
    assert set(both["split"]) == {"train"} and set(both["patient_id"]) == {in_train}
    audit = pd.read_csv(out / "audit.csv", dtype=str, keep_default_na=False)
    moved = audit[audit["reason"] == versions_listing.SPLIT_MOVED]
    assert len(moved) == 1 and set(moved["action"]) == {"kept"}
    detail = moved["detail"].iloc[0]
    assert f"patient {in_test}: test -> train" in detail
    assert f"remap sheet maps {in_test} -> {in_train}" in detail
    old, new = versions_listing.list_versions(out)
    d = versions_changes.diff(out, old.name, new.name)
    assert [(x.patient_id, x.from_split, x.to_split) for x in d.moves] == [
        (in_test, "test", "train")
    ]
    assert "remap sheet" in d.moves[0].reason
    page = (new.path / "report.html").read_text()
    assert "Split moves (1)" in page and in_test in page
    assert verify(out) == []


def test_a_joined_group_takes_the_split_nearest_train() -> None:
    members = {"g": ["a", "b"], "h": ["c", "d"], "k": ["e"], "n": ["new"]}
    prev = {"a": "test", "b": "train", "c": "test", "d": "val", "e": "test"}
    assert splits.inherited_splits(["g", "h", "k", "n"], members, prev) == {
        "g": "train",
        "h": "val",
        "k": "test",
    }
    moves = splits.split_moves({"g": "train", "h": "val", "k": "test"}, members, prev)
    assert [(m.patient_id, m.from_split, m.to_split, m.joined_with) for m in moves] == [
        ("a", "test", "train", ("b",)),
        ("c", "test", "val", ("d",)),
    ]


def test_an_output_of_the_first_release_upgrades_to_version_one(
    history: tuple[Path, list[build.BuildSummary]],
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
) -> None:
    root, _ = tiny_datamart
    out = tmp_path / "out"
    shutil.copytree(history[0], out)
    shutil.rmtree(out / "versions")  # an output without versions: root tables only
    ds = HiromlDataset(out, "train")
    assert ds.version is None and len(ds) > 0
    assert verify(out) == []
    done = build.run(make_cfg(root, out, *OTHER))
    (v,) = versions_listing.list_versions(out)
    assert done.published and v.seq == 1
    assert v.dataset_hash == versions_listing.list_versions(history[0])[-1].dataset_hash
    assert "Nothing changed since the root tables" in (v.path / "report.html").read_text()


# --------------------------------------------------------------------------- kill points


def _cli(root: Path, out: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hiroml",
        f"paths.datamart={root}",
        f"paths.output={out}",
        "progress=false",
        "executor.workers=1",
        *overrides,
    ]


@pytest.fixture(scope="module")
def reference(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """Uninterrupted histories: the default build, then :data:`OTHER` (keep 10, and keep 1)."""
    root, _ = tiny_datamart
    base = tmp_path_factory.mktemp("kill-ref")
    build.run(make_cfg(root, base / "first"))
    for keep in (10, 1):
        shutil.copytree(base / "first", base / f"keep{keep}")
        build.run(make_cfg(root, base / f"keep{keep}", *OTHER, f"versions.keep={keep}"))
    return {"first": base / "first", "keep10": base / "keep10", "keep1": base / "keep1"}


@pytest.mark.parametrize(
    ("fault", "keep"),
    [("after_shards:2", 10), ("before_root_tables", 10), ("during_prune", 1)],
)
def test_a_build_killed_at_a_named_point_resumes_to_what_an_uninterrupted_build_publishes(
    reference: dict[str, Path],
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    fault: str,
    keep: int,
) -> None:
    root, _ = tiny_datamart
    ref = reference[f"keep{keep}"]
    out = tmp_path / "out"
    shutil.copytree(reference["first"], out)
    (previous,) = versions_listing.list_versions(out)
    env = {**os.environ, faults.ENV: fault}
    killed = subprocess.run(
        _cli(root, out, *OTHER, f"versions.keep={keep}"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == faults.EXIT_CODE, killed.stderr
    kept = versions_listing.list_versions(out)
    if fault.startswith("after_shards"):  # killed while converting: nothing published
        assert kept == [previous]
    elif fault == "before_root_tables":  # the new version is whole, the root still the old
        assert len(kept) == 2
        assert (out / "manifest.parquet").read_bytes() == (
            previous.path / "manifest.parquet"
        ).read_bytes()
    else:  # killed while pruning the previous version
        assert previous.name not in {v.name for v in kept} and len(kept) == 1
    # the output stays readable throughout: the previous version while it is kept, and
    # whatever the root and latest version are
    if keep > 1:
        assert verify(out, version=previous.name) == []
        ds = HiromlDataset(out, None, version=previous.name)
        assert [ds[i]["sample_key"] for i in range(len(ds))] == ds.keys
    assert [f.errors for f in examine_all(out)] == [[]] * len(versions_listing.list_versions(out))
    latest = HiromlDataset(out, None)
    assert len([latest[i] for i in range(len(latest))]) == len(latest) > 0
    # the re-run publishes exactly what the uninterrupted build published
    build.run(make_cfg(root, out, *OTHER, f"versions.keep={keep}"))
    want = [(v.name, v.dataset_hash) for v in versions_listing.list_versions(ref)]
    assert [(v.name, v.dataset_hash) for v in versions_listing.list_versions(out)] == want
    assert (out / "manifest.parquet").read_bytes() == (ref / "manifest.parquet").read_bytes()
    on_disk = sorted(p.name for p in (out / "shards").iterdir())
    assert on_disk == sorted(p.name for p in (ref / "shards").iterdir())
    assert not list((out / "versions").glob(".*")), "a hidden leftover stayed"
    assert verify(out) == []


def test_fault_spec_is_checked() -> None:
    assert faults.parse("after_shards:3") == ("after_shards", 3)
    assert faults.parse("during_prune") == ("during_prune", 1)
    with pytest.raises(ValueError, match="must be one of"):
        faults.parse("somewhere")
    with pytest.raises(ValueError, match="whole number"):
        faults.parse("after_shards:x")


def test_readers_ignore_a_half_written_version_folder(
    history: tuple[Path, list[build.BuildSummary]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(history[0], out)
    latest = versions_listing.list_versions(out)[-1]
    (out / "versions" / ".0003-deadbeef.tmp").mkdir()  # a publish killed half way
    (out / "versions" / "0004-deadbeef").mkdir()  # no manifest: not complete
    assert versions_listing.find_version(out).name == latest.name  # type: ignore[union-attr]
    assert HiromlDataset(out, "train").version == latest.name
    assert torch.is_tensor(HiromlDataset(out, "train")[0]["image"])
    versions_pruning.prune(out, 10)  # beside a build: leaves what a build may be writing
    assert (out / "versions" / ".0003-deadbeef.tmp").is_dir()
    versions_pruning.prune(out, 10, sweep=True)  # a build, holding the output, clears it
    assert not (out / "versions" / ".0003-deadbeef.tmp").exists()


def test_the_changes_section_escapes_what_it_shows() -> None:
    move = versions_changes.SplitMove("<b>1</b>", "g<1>", "test", "train", "remap <sheet>")
    d = versions_changes.VersionDiff(
        a="0001-aaaaaaaa",
        b="0002-bbbbbbbb",
        samples_added=("k<1>",),
        samples_removed=(),
        samples_changed=(),
        columns_changed={"icu": 2},
        patients_added=("<b>1</b>",),
        patients_removed=("<i>2</i>",),
        added_per_split={"train": {"patients": 1, "samples": 1}},
        decisions=(versions_changes.DecisionChange("B", "z<1>.zip", "", "error: bad <tag>"),),
        moves=(move,),
    )
    page = versions_changes.changes_html(d)
    assert "<b>1</b>" not in page and "&lt;b&gt;1&lt;/b&gt;" in page
    assert "remap &lt;sheet&gt;" in page and "Split moves (1)" in page
    assert "Decisions that changed (1)" in page and "(absent)" in page
    assert "icu: 2" in page
    assert any("test -> train: remap <sheet>" in line for line in d.lines())


def test_a_build_whose_shards_vanished_publishes_nothing(
    history: tuple[Path, list[build.BuildSummary]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(history[0], out)
    before = versions_listing.list_versions(out)
    m = pd.read_parquet(out / "manifest.parquet")
    m.loc[0, "split"] = "val" if m.loc[0, "split"] != "val" else "test"  # a new dataset
    (out / m.loc[0, "shard"]).unlink()
    with pytest.raises(versions_listing.VersionError, match="vanished while it ran"):
        versions_publishing.publish(
            out,
            m,
            pd.read_parquet(out / "patients.parquet"),
            pd.read_csv(out / "audit.csv", dtype=str, keep_default_na=False),
            write_report=lambda *a: None,
            build_info={},
            keep=10,
        )
    assert versions_listing.list_versions(out) == before


def test_hiroml_verify_checks_one_version_or_all(
    history: tuple[Path, list[build.BuildSummary]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = history
    old, new = versions_listing.list_versions(out)
    assert verify_main([str(out), "--all", "--quick"]) == 0
    text = capsys.readouterr().out
    assert f"version {old.name}: sound" in text and f"version {new.name}: sound" in text
    assert verify_main([str(out), "--version", "1", "--quick"]) == 0
    assert f"version {old.name}: sound" in capsys.readouterr().out
    assert verify_main([str(out), "--version", "0009"]) == 1
    assert "no version '0009'" in capsys.readouterr().out


def test_prune_and_pin_wait_for_no_build_they_exit_3_while_one_holds_the_output(
    history: tuple[Path, list[build.BuildSummary]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hiroml.store.lock import build_lock

    out = tmp_path / "out"
    shutil.copytree(history[0], out)
    before = versions_listing.list_versions(out)
    # the build lock is held by another process (a build running beside the prune)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from hiroml.store.lock import build_lock\n"
            f"with build_lock({str(out)!r}):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert cli_versions.main([str(out), "--prune", "--keep", "1", "--wait", "0"]) == EXIT_LOCKED
        err = capsys.readouterr().err
        assert "hiroml-versions:" in err and "Traceback" not in err
        assert f"pid {holder.pid}" in err
        assert versions_listing.list_versions(out) == before
        # a pin waits a bounded time for the holder, then exits 3 naming it, pinning nothing
        assert cli_versions.main([str(out), "--pin", "1", "--wait", "0.3"]) == EXIT_LOCKED
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert not any(v.pinned for v in versions_listing.list_versions(out))
    finally:
        holder.kill()
        holder.wait()
    with build_lock(out):  # free again
        pass
    assert cli_versions.main([str(out), "--prune", "--keep", "1"]) == 0
    assert [v.name for v in versions_listing.list_versions(out)] == [before[-1].name]


_SLOW_PRUNE = (
    "import sys, time\n"
    "from hiroml.versions import pruning\n"
    "remove = pruning._remove_tree\n"
    "def slow(path):\n"
    "    print('deleting', flush=True)\n"
    "    time.sleep(2)\n"  # the prune has chosen what to delete; a pin unlocked would land now
    "    remove(path)\n"
    "pruning._remove_tree = slow\n"
    "from hiroml.cli.versions import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_a_pin_beside_a_prune_is_never_lost_nor_reported_falsely(
    history: tuple[Path, list[build.BuildSummary]], tmp_path: Path
) -> None:
    """``--prune --keep 1`` (slowed while deleting) and ``--pin 1`` started together in two
    processes: either the pin comes first and the version survives with its shards, or the
    prune does and the pin fails naming the missing version; never a pin reported for a
    deleted version. Besides the races, one trial starts the pin while the prune deletes
    (without the lock, that pin is reported and its version deleted), one starts the prune
    once the pin is written."""
    import time

    outcomes = []
    for trial, order in enumerate(("race", "race", "prune first", "pin first")):
        out = tmp_path / f"out{trial}"
        shutil.copytree(history[0], out)
        v1 = versions_listing.list_versions(out)[0]
        s1 = _shards(out, v1)
        cmd = [sys.executable, "-c", _SLOW_PRUNE, str(out)]
        pin_cmd = [*cmd, "--pin", "1", "--note", "paper", "--wait", "30"]
        pinner = None
        if order == "pin first":  # the prune starts once the pin is written
            pinner = subprocess.Popen(pin_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 30
            while not (v1.path / "PINNED").is_file() and time.monotonic() < deadline:
                time.sleep(0.01)
        pruner = subprocess.Popen(
            [*cmd, "--prune", "--keep", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        if order == "prune first":
            assert pruner.stdout is not None and pruner.stdout.readline() == b"deleting\n"
        if pinner is None:
            pinner = subprocess.Popen(pin_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pin_out, pin_err = (b.decode() for b in pinner.communicate(timeout=60))
        _, prune_err = pruner.communicate(timeout=60)
        assert pruner.returncode == 0, prune_err.decode()
        kept = {v.name: v for v in versions_listing.list_versions(out)}
        if pinner.returncode == 0:
            assert f"pinned {v1.name}" in pin_out
            assert v1.name in kept and kept[v1.name].pinned
            assert all((out / s).is_file() for s in s1)
            outcomes.append("pinned")
        else:
            assert pinner.returncode == 1 and "no version '1'" in pin_err, pin_err
            assert v1.name not in kept and "Traceback" not in pin_err
            outcomes.append("pruned first")
    assert outcomes[2:] == ["pruned first", "pinned"], outcomes


def _text(v: Any) -> str:
    return json.dumps(versions_hashing._canonical(cell_plain(v)), default=str)


def _columns_changed_by_text(ma: pd.DataFrame, mb: pd.DataFrame) -> dict[str, int]:
    """The per-column count as first written: every cell's canonical JSON text compared."""
    a = ma.drop_duplicates("sample_key").set_index(ma["sample_key"].drop_duplicates().astype(str))
    b = mb.drop_duplicates("sample_key").set_index(mb["sample_key"].drop_duplicates().astype(str))
    common = a.index.intersection(b.index)
    out: dict[str, int] = {}
    for col in sorted((set(a.columns) | set(b.columns)) - versions_changes._NOT_COMPARED):
        if col not in a.columns or col not in b.columns:
            out[col] = len(common)
            continue
        pairs = zip(a.loc[common, col], b.loc[common, col], strict=True)
        n = sum(_text(x) != _text(y) for x, y in pairs)
        if n:
            out[col] = n
    return out


def test_columns_changed_counts_as_the_texts_do() -> None:
    """The array shortcut of the version diff (a weekly build diffs every sample)
    counts exactly the cells whose canonical texts differ: integer and boolean arrays of other
    dtypes, shapes or values, floats with NaN, text, missing cells, a column that changed type."""
    import numpy as np

    rng = np.random.default_rng(16)
    n = 60
    sig = [rng.integers(0, 256, 16).astype(np.uint8) for _ in range(n)]

    def names(change: bool) -> list[np.ndarray]:
        """Text arrays: the last three cells change, the 2-D one is compared by text."""
        last = (["a", "c"], [np.nan]) if change else (["a"], [None])
        tail = [np.array(v, dtype=object) for v in last]
        return [np.array(["a", "b"], dtype=object)] * (n - 3) + [*tail, np.zeros((1, 2))]

    def frame(change: bool) -> pd.DataFrame:
        s = [x.copy() for x in sig]
        if change:
            s[3][0] ^= 1  # one value
            s[5] = s[5].astype(np.int64)  # another integer dtype, same values: unchanged
            s[7] = s[7][:8]  # another shape
        flags = [np.array([True, False]) for _ in range(n)]
        if change:
            flags[2] = np.array([1, 0])  # ints where bools were: other texts
        floats = [np.array([0.5, np.nan]) for _ in range(n)]
        if change:
            floats[4] = np.array([0.5, 1.0])
        return pd.DataFrame(
            {
                "sample_key": [f"k{i}" for i in range(n)],
                "signature": s,
                "flags": flags,
                "floats": floats,
                "text": ["a" if (i != 9 or not change) else "b" for i in range(n)],
                "maybe": [None if (i % 2 or (change and i == 10)) else "x" for i in range(n)],
                "frame": [0] * n if not change else [0.0] * n,  # int column became float
                "age": [float(i) for i in range(n - 4)]
                + ([0.0, np.nan, np.inf, 2.0] if not change else [-0.0, np.nan, np.inf, 2.5]),
                "names": names(change),
                "spacing": [np.array([0.5, -0.0, np.nan])] * (n - 1)
                + [np.array([0.5, 0.0, np.nan]) if change else np.array([0.5, -0.0, np.nan])],
                "mixed": [1, 1.0, True, "1", None, [1]] * (n // 6)
                if not change
                else [1.0, 1, 1, "1", np.nan, [1.0]] * (n // 6),
            }
        )

    before, after = frame(False), frame(True)
    got = versions_changes._columns_changed(before, after)
    assert got == _columns_changed_by_text(before, after)
    assert got == {
        "signature": 2, "flags": 1, "floats": 1, "text": 1, "maybe": 1, "frame": n,
        "age": 2, "mixed": 4 * (n // 6), "names": 1, "spacing": 1,
    }  # fmt: skip
    assert versions_changes._columns_changed(before, frame(False)) == {}


def test_build_json_records_the_environment_the_diff_names_it_and_the_hash_ignores_it(
    history: tuple[Path, list[build.BuildSummary]],
    make_cfg: MakeCfg,
    tiny_datamart: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hiroml.doctor import libraries as doctor_libraries
    from hiroml.store.shards import read_sample

    src, _ = history
    out = tmp_path / "out"
    shutil.copytree(src, out)  # this test rewrites build.json files
    old, new = versions_listing.list_versions(out)
    info = json.loads((new.path / "build.json").read_text())
    env = info["environment"]
    assert env["versions"] == doctor_libraries.environment()
    m = pd.read_parquet(new.path / "manifest.parquet")
    pairs = zip(m["sample_key"], m["shard"], strict=True)
    metas = [read_sample(out / sh, key)[1] for key, sh in pairs]
    used = {n.strip() for meta in metas for n in str(meta["decoder"]).split(",")}
    assert set(env["decoders"]) == used and sum(env["decoders"].values()) >= len(m)
    assert ("halfcast" in env) == bool(doctor_libraries.halfcast_backend())
    # the report and the card show it
    numpy_version = env["versions"]["numpy"]
    page = (new.path / "report.html").read_text()
    assert 'id="environment"' in page and f"<td>{numpy_version}</td>" in page
    card = (new.path / "DATASET.md").read_text()
    assert "## Environment" in card and f"| numpy | {numpy_version} |" in card
    # the diff: unchanged, then one line per library that changed
    assert "  environment: unchanged" in versions_changes.diff(out, old.name, new.name).lines()
    older = json.loads((old.path / "build.json").read_text())
    older["environment"]["versions"]["numpy"] = "2.2.6"
    (old.path / "build.json").write_text(json.dumps(older))
    assert cli_versions.main([str(out), "--diff", old.name, new.name]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert f"  environment: numpy 2.2.6 -> {numpy_version}" in printed
    assert not any("unchanged" in line for line in printed if "environment" in line)
    # a version built before the environment was recorded still loads and diffs
    del older["environment"]
    (old.path / "build.json").write_text(json.dumps(older))
    assert [v.name for v in versions_listing.list_versions(out)] == [old.name, new.name]
    lines = versions_changes.diff(out, old.name, new.name).lines()
    assert "  environment: not recorded in A" in lines
    # another environment, same inputs and config: the same dataset_hash, nothing published
    upgraded = {**env["versions"], "numpy": "9.9.9"}
    monkeypatch.setattr(doctor_libraries, "environment", lambda: upgraded)
    monkeypatch.setattr(build.unchanged, "environment", lambda: upgraded)  # the skip record's
    again = build.run(make_cfg(tiny_datamart[0], out, *OTHER))
    assert not again.unchanged and not again.published and again.version == new.name


def _tamper(path: Path, change: Any) -> None:
    """Rewrite a manifest after ``change(frame)``, keeping its schema (a tool's edit)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    frame = change(table.to_pandas())
    pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), path)


def _move_group(m: pd.DataFrame) -> pd.DataFrame:
    group = m.loc[m["split"] == "test", "patient_group"].iloc[0]
    return m.assign(split=m["split"].where(m["patient_group"] != group, "train"))


def _swap_ids(m: pd.DataFrame) -> pd.DataFrame:
    a, b = m["patient_id"].drop_duplicates().iloc[:2]
    return m.assign(patient_id=m["patient_id"].map({a: b, b: a}).fillna(m["patient_id"]))


def _edit_age(m: pd.DataFrame) -> pd.DataFrame:
    m = m.copy()
    m.loc[m.index[0], "age_years"] = 99.0
    return m


@pytest.mark.parametrize(
    ("change", "disagrees"),
    [
        (_move_group, "dataset_hash"),
        (_swap_ids, "dataset_hash"),
        (lambda m: m.iloc[3:], "samples in its tables"),
        (_edit_age, "dataset_hash"),
    ],
    ids=["group-to-train", "swap-ids", "drop-3-rows", "edit-age"],
)
def test_verify_names_the_version_whose_manifest_disagrees_with_build_json(
    history: tuple[Path, list[build.BuildSummary]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: Any,
    disagrees: str,
) -> None:
    out = tmp_path / "out"
    shutil.copytree(history[0], out)
    v1 = versions_listing.list_versions(out)[0]
    info = json.loads((v1.path / "build.json").read_text())
    assert set(info["tables"]) == {"manifest.parquet", "patients.parquet", "audit.csv"}
    assert verify_main([str(out), "--all", "--quick"]) == 0
    _tamper(v1.path / "manifest.parquet", change)
    assert verify_main([str(out), "--all", "--quick"]) == 1
    text = capsys.readouterr().out
    assert f"version {v1.name}: manifest.parquet has sha256" in text
    assert any(disagrees in line and v1.name in line for line in text.splitlines()), text
    assert f"{out} version {v1.name}: NOT sound" in text
    # with the checksum in build.json forged to match, the recomputed dataset_hash still tells
    info["tables"]["manifest.parquet"] = shard_sha256(v1.path / "manifest.parquet")
    (v1.path / "build.json").write_text(json.dumps(info))
    assert verify_main([str(out), "--version", v1.name]) == 1
    text = capsys.readouterr().out
    assert "has sha256" not in text and f"version {v1.name}: dataset_hash" in text


def test_verify_catches_a_flipped_byte_an_old_build_json_and_a_damaged_shard_header(
    history: tuple[Path, list[build.BuildSummary]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    shutil.copytree(history[0], out)
    v1, v2 = versions_listing.list_versions(out)
    # one byte flipped in the middle of a version's manifest
    path = v1.path / "manifest.parquet"
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert verify_main([str(out), "--version", v1.name, "--quick"]) == 1
    text = capsys.readouterr().out
    assert f"error: version {v1.name}: manifest.parquet has sha256" in text
    assert "Traceback" not in text
    # random one-bit flips anywhere in it: each an error naming the version, none uncaught
    rng = np.random.default_rng(3)
    for pos, bit in zip(rng.integers(0, len(data), 40), rng.integers(0, 8, 40), strict=True):
        flipped = bytearray(original)
        flipped[pos] ^= 1 << int(bit)
        path.write_bytes(bytes(flipped))
        errors = examine(out, version=v1.name, deep=False).errors
        assert any(v1.name in e for e in errors), (pos, bit, errors)
    # a version published before table checksums were recorded: "not recorded", no error
    info = json.loads((v2.path / "build.json").read_text())
    del info["tables"]
    (v2.path / "build.json").write_text(json.dumps(info))
    assert verify_main([str(out), "--version", v2.name, "--quick"]) == 0
    assert f"version {v2.name}: table checksums not recorded" in capsys.readouterr().out
    # a shard whose HDF5 header is damaged so that h5py raises RuntimeError (not OSError):
    # named with the reason, on one line
    shard = sorted(_shards(out, v2))[0]
    raw = (out / shard).read_bytes()
    for i in range(8, 96):
        damaged = bytearray(raw)
        damaged[i] ^= 0xFF
        (out / shard).write_bytes(bytes(damaged))
        try:
            with open_shard(out / shard) as f:
                sample_refs(f)
        except RuntimeError:
            break
        except (OSError, KeyError, ValueError):
            continue
    else:
        pytest.fail("no header byte of the shard makes h5py raise RuntimeError")
    assert verify_main([str(out), "--version", v2.name, "--quick"]) == 1
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith(f"error: shard {shard}: unreadable"))
    assert "(" in line and "Traceback" not in text


def test_a_build_keeps_its_manifests_large_columns_and_the_next_diff_maps_them(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each published version's large manifest columns go into the output's kept folder,
    named by the manifest's SHA-256 that build.json records; the next build's diff maps
    them instead of decoding, and says what a diff that decodes says."""
    from hiroml.versions import columns as versions_columns
    from hiroml.versions import keptcolumns

    monkeypatch.setattr(versions_columns, "BULK_VALUES", 0)  # every list column is large
    found: list[set[str]] = []
    real_find = keptcolumns.find

    def find(*args: Any) -> dict[str, Any]:
        got = real_find(*args)
        found.append(set(got))
        return got

    monkeypatch.setattr(keptcolumns, "find", find)
    root, _ = tiny_datamart
    out = tmp_path / "out"
    build.run(make_cfg(root, out))
    build.run(make_cfg(root, out, *OTHER))
    old, new = versions_listing.list_versions(out)
    shas = [json.loads((v.path / "build.json").read_text())["tables"] for v in (old, new)]
    names = {f"{s['manifest.parquet']}.arrow" for s in shas}
    assert {p.name for p in keptcolumns.kept_dir(out).iterdir()} == names
    assert {"signature", "shape"} <= found[-1]  # the second build's diff mapped them
    decoded = versions_changes.diff_tables(old.path, new.path)
    info = json.loads((new.path / "build.json").read_text())
    assert info["changes"]["columns_changed"] == decoded.columns_changed
    assert info["changes"]["samples_changed"] == len(decoded.samples_changed) > 0
    mapped = versions_changes.diff(out, old.name, new.name)  # hiroml-versions --diff
    assert mapped.columns_changed == decoded.columns_changed and len(found) >= 2
