"""A wrong, empty or unmounted datamart never wipes a dataset: the empty-datamart error and
the shrink guard (hiroml.store.guard), on the tiny synthetic datamart."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import MakeCfg

from hiroml import pipeline as build
from hiroml.errors import ConfigError, DatamartError, ShrinkRefusedError
from hiroml.store import guard
from hiroml.store.verify import verify

EARLY = "CXR-UPDATE-20200509-COMPLETE"  # holds the first copy of a cross-batch duplicate


@pytest.fixture(scope="module")
def previous(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A good build of the whole tiny datamart; tests copy it before building over it."""
    root, _ = tiny_datamart
    out = tmp_path_factory.mktemp("previous") / "out"
    build.run(make_cfg(root, out))
    return out


def _published(out: Path) -> dict[str, bytes]:
    """The bytes of what a build publishes: root tables, report and every shard."""
    names = ["manifest.parquet", "patients.parquet", "audit.csv", "report.html"]
    files = {n: (out / n).read_bytes() for n in names}
    files |= {f"shards/{p.name}": p.read_bytes() for p in sorted((out / "shards").glob("*"))}
    return files


def _assert_untouched(out: Path, before: dict[str, bytes]) -> None:
    after = _published(out)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"changed or deleted by a refused build: {changed}"


def _copy(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip) if skip else None)
    return dst


def _lost_batch(root: Path, tmp_path: Path) -> Path:
    return _copy(root, tmp_path / "dm", skip=(EARLY,))


def test_an_empty_datamart_is_an_error_before_anything_is_written(
    previous: Path, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    empty = tmp_path / "mnt" / "share"
    empty.mkdir(parents=True)
    out = _copy(previous, tmp_path / "out")
    before = _published(out)
    with pytest.raises(DatamartError, match="holds no batch folder: it is empty") as err:
        build.run(make_cfg(empty, out))
    assert "CXR-UPDATE-YYYYMMDD-COMPLETE/" in str(err.value)
    assert "not mounted" in str(err.value) and "paths.datamart" in str(err.value)
    _assert_untouched(out, before)
    fresh = tmp_path / "fresh"
    with pytest.raises(DatamartError):
        build.run(make_cfg(empty, fresh))
    assert not fresh.exists()  # not even the output folder or its lock


def test_a_missing_datamart_is_an_error_before_anything_is_written(
    previous: Path, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    out = _copy(previous, tmp_path / "out")
    before = _published(out)
    with pytest.raises(DatamartError, match="does not exist"):
        build.run(make_cfg(tmp_path / "not-mounted", out))
    _assert_untouched(out, before)


def test_a_datamart_path_one_level_off_says_what_it_found(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, _ = tiny_datamart
    # one level too deep: a batch folder itself; its zips are named in the message
    with pytest.raises(DatamartError, match=r"0 folder\(s\) and 11 file\(s\)") as deep:
        build.run(make_cfg(root / EARLY, tmp_path / "o1"))
    assert "0042_20200314-053443_A012_XR-PORT-CHEST-1V.zip" in str(deep.value)
    assert "(3 more)" in str(deep.value)  # the first 8 of 11 names
    # one level too high: the folder that holds the datamart is named as the fix
    with pytest.raises(DatamartError, match="batch folders were found in") as high:
        build.run(make_cfg(root.parent, tmp_path / "o2"))
    assert f"{root}: set paths.datamart to it" in str(high.value)


def test_a_lost_batch_folder_is_refused_and_the_output_left_as_it_was(
    previous: Path, tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, _ = tiny_datamart
    dm = _lost_batch(root, tmp_path)
    out = _copy(previous, tmp_path / "out")
    before = _published(out)
    with pytest.raises(ShrinkRefusedError) as err:
        build.run(make_cfg(dm, out))
    msg = str(err.value)
    n_previous = len(pd.read_parquet(previous / "manifest.parquet"))
    assert f"batch folders read last time and gone now: {EARLY}" in msg
    assert f"of {n_previous} previous samples" in msg and "allow_shrink=true" in msg
    assert "publish.max_removed_fraction=0.02" in msg
    _assert_untouched(out, before)
    assert verify(out) == []


def test_losing_half_the_zips_is_refused_and_the_output_left_as_it_was(
    previous: Path, tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, _ = tiny_datamart
    dm = _copy(root, tmp_path / "dm")
    zips = sorted(dm.glob("*-COMPLETE/*.zip"))
    for z in zips[::2]:  # a share that lists only half its files
        z.unlink()
    out = _copy(previous, tmp_path / "out")
    before = _published(out)
    with pytest.raises(ShrinkRefusedError, match="with no explanation in the audit"):
        build.run(make_cfg(dm, out))
    _assert_untouched(out, before)
    assert verify(out) == []


def test_allow_shrink_publishes_and_the_summary_and_report_say_so(
    previous: Path, tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, _ = tiny_datamart
    dm = _lost_batch(root, tmp_path)
    out = _copy(previous, tmp_path / "out")
    n_before = len(pd.read_parquet(out / "manifest.parquet"))
    summary = build.run(make_cfg(dm, out, "allow_shrink=true"))
    after = pd.read_parquet(out / "manifest.parquet")
    assert len(after) < n_before
    assert summary.shrink["allowed_by"] == "allow_shrink=true"
    assert summary.shrink["missing_batches"] == [EARLY]
    assert summary.shrink["previous_samples"] == n_before
    lost = summary.shrink["unexplained_samples"]
    assert 0 < lost <= n_before - len(after)
    assert any("SHRINK published (allow_shrink=true)" in line for line in summary.lines())
    report = (out / "report.html").read_text()
    assert "allow_shrink=true" in report and EARLY in report
    assert verify(out) == []


def test_a_weekly_build_that_only_adds_data_is_never_refused(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    """Week 1 lacks the earliest batch; week 2 adds it. The cross-batch duplicate then keeps
    its earlier copy under another exam key: an explained change, not a loss, even with a
    limit of 0."""
    root, _ = tiny_datamart
    dm = _lost_batch(root, tmp_path)
    out = tmp_path / "out"
    week1 = build.run(make_cfg(dm, out, "publish.max_removed_fraction=0"))
    assert week1.shrink == {}
    keys1 = set(pd.read_parquet(out / "manifest.parquet")["sample_key"])
    shutil.copytree(root / EARLY, dm / EARLY)
    week2 = build.run(make_cfg(dm, out, "publish.max_removed_fraction=0"))
    assert week2.shrink == {}
    keys2 = set(pd.read_parquet(out / "manifest.parquet")["sample_key"])
    assert keys1 - keys2, "the planted duplicate should change a sample key"
    assert len(keys2) > len(keys1)
    assert "allowed_by" not in (out / "report.html").read_text()


def test_a_narrower_view_selection_is_explained_by_the_audit(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    """Lateral and unknown views dropped on purpose: each is a `dropped` audit row."""
    root, _ = tiny_datamart
    out = tmp_path / "out"
    wide = build.run(make_cfg(root, out, "cxr.views=[frontal,lateral,unknown]"))
    narrow = build.run(make_cfg(root, out, "publish.max_removed_fraction=0"))
    assert narrow.cxr_images < wide.cxr_images and narrow.shrink == {}


def test_a_small_loss_within_the_limit_is_published_and_reported(
    previous: Path, tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    root, _ = tiny_datamart
    dm = _lost_batch(root, tmp_path)
    out = _copy(previous, tmp_path / "out")
    summary = build.run(make_cfg(dm, out, "publish.max_removed_fraction=0.9"))
    assert summary.shrink["allowed_by"] == "within publish.max_removed_fraction=0.9"


def test_the_limit_must_be_a_fraction(make_cfg: MakeCfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"publish\.max_removed_fraction=1\.5"):
        make_cfg(tmp_path, tmp_path, "publish.max_removed_fraction=1.5")


# --------------------------------------------------------------------------- compare (pure)


def _manifest(*rows: dict[str, Any]) -> pd.DataFrame:
    base = {
        "modality": "cxr",
        "series_uid": "",
        "sop_uid": "",
        "sop_uids": [],
        "data_hash": "",
        "source_zips": [],
        "batch": "CXR-UPDATE-20200509-COMPLETE",
        "batches": ["CXR-UPDATE-20200509-COMPLETE"],
    }
    return pd.DataFrame([base | r for r in rows])


def _audit(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"zip": z, "action": a} for z, a in rows], columns=["zip", "action"])


def test_compare_counts_a_new_key_for_the_same_image_as_explained() -> None:
    prev = _manifest(
        {"sample_key": "1002_A020:1.1", "patient_id": "1002", "sop_uid": "1.1"},
        {"sample_key": "2100_A032:ct", "patient_id": "2100", "modality": "ct", "series_uid": "9"},
        {"sample_key": "1003_A021:1.3", "patient_id": "1003", "data_hash": "h3"},
    )
    new = _manifest(  # a remap moved 1002 to 1010; the CT and the third image changed key
        {"sample_key": "1010_A020:1.1", "patient_id": "1010", "sop_uid": "1.1"},
        {"sample_key": "2100_A040:ct", "patient_id": "2100", "modality": "ct", "series_uid": "9"},
        {"sample_key": "1003_A021:x", "patient_id": "1003", "data_hash": "h3"},
    )
    check = guard.compare(prev, new, _audit(), ["CXR-UPDATE-20200509-COMPLETE"])
    assert (check.removed_samples, check.unexplained_samples) == (3, 0)
    assert (check.unexplained_patients, check.missing_batches) == (0, ())
    assert not check.exceeds(0.0)


def test_compare_takes_audit_explanations_but_never_errors() -> None:
    prev = _manifest(
        {"sample_key": "a:1", "patient_id": "1", "sop_uid": "1", "source_zips": ["a.zip"]},
        {"sample_key": "b:2", "patient_id": "2", "sop_uid": "2", "source_zips": ["b.zip"]},
        {"sample_key": "c:3", "patient_id": "3", "sop_uid": "3", "source_zips": ["c.zip"]},
        {"sample_key": "d:4", "patient_id": "4", "sop_uid": "4", "source_zips": ["d.zip"]},
    )
    new = _manifest({"sample_key": "d:4", "patient_id": "4", "sop_uid": "4"})
    audit = _audit(
        ("a.zip", "duplicate"), ("b.zip", "dropped"), ("b.zip", "error"), ("c.zip", "skipped")
    )
    check = guard.compare(prev, new, audit, [])
    assert (check.removed_samples, check.unexplained_samples) == (3, 2)
    assert check.examples == ("b:2", "c:3")
    assert check.unexplained_patients == 2
    assert check.missing_batches == ("CXR-UPDATE-20200509-COMPLETE",)
    assert check.sample_fraction == pytest.approx(0.5)
    assert check.exceeds(0.02) and not check.exceeds(0.5)
    assert "lacks 2 of 4 previous samples (50.0%)" in check.describe()


def test_compare_a_patient_who_keeps_another_sample_is_not_lost() -> None:
    prev = _manifest(
        {"sample_key": "a:1", "patient_id": "1", "sop_uid": "1"},
        {"sample_key": "a:2", "patient_id": "1", "sop_uid": "2"},
    )
    new = _manifest({"sample_key": "a:2", "patient_id": "1", "sop_uid": "2"})
    check = guard.compare(prev, new, _audit(), ["CXR-UPDATE-20200509-COMPLETE"])
    assert (check.unexplained_samples, check.unexplained_patients) == (1, 0)


def test_exit_codes_through_the_cli(
    previous: Path, tiny_datamart: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """`python -m hiroml`: 2 for an empty datamart or a misspelled key, 4 for a refused
    shrink; no traceback."""
    root, _ = tiny_datamart
    (tmp_path / "empty").mkdir()
    out = _copy(previous, tmp_path / "out")

    def build(dm: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "hiroml",
                f"paths.datamart={dm}",
                f"paths.output={out}",
                "progress=false",
                "executor.workers=1",
                *overrides,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    empty = build(tmp_path / "empty")
    assert empty.returncode == 2, empty.stderr
    assert "holds no batch folder" in empty.stderr
    misspelled = build(root, "cxr.sise=3")
    assert misspelled.returncode == 2, misspelled.stderr
    assert "sise" in misspelled.stderr
    refused = build(_lost_batch(root, tmp_path))
    assert refused.returncode == 4, refused.stderr
    assert "refusing to publish" in refused.stderr and EARLY in refused.stderr
    for done in (empty, misspelled, refused):
        assert "Traceback" not in done.stderr + done.stdout
