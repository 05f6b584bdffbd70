"""The exams stage against the synthetic datamart's ground truth (seeds 0, 1, 2; tiny size).

discover -> index -> load_remap -> build_exams -> join_clinical, then every decision is
compared with ``hiroml-synth-truth.json``: per-zip actions and ``kept_as``, each exam's zips
and SOP Instance UIDs, equal-timestamp non-duplicates, partial overlaps, patient groups,
the resolved remap and the orphans.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hiroml.config import ExamsConfig, IdentityConfig, IndexConfig
from hiroml.exams.rules import REASON_PARTIAL, ExamsResult
from hiroml.exams.stage import build_exams
from hiroml.ingest.discover import discover
from hiroml.ingest.identity import join_clinical, load_remap, read_clinical
from hiroml.ingest.index import build_index
from hiroml.vocab import Action

SEEDS = (0, 1, 2)


def _run(root: Path, db: Path) -> tuple[ExamsResult, dict[str, str], dict[str, Action]]:
    """The stages up to exams; returns the result, the remap and one action per zip rel
    path (exam decisions first, then discovery and index problems for zips exams never
    saw)."""
    found = discover(root)
    idx = build_index(root, found.zips, db_path=db, limits=IndexConfig(), progress=False)
    remap, problems = load_remap(root, None, IdentityConfig())
    assert problems == []
    res = build_exams(found.zips, idx.instances, remap, ExamsConfig())
    actions: dict[str, Action] = {}
    for r in res.audit:
        if not r.member:
            actions[f"{r.batch}/{r.zip}"] = r.action
    for p in found.problems:
        if p.zip:
            actions.setdefault(f"{p.batch}/{p.zip}", p.action)
    return res, remap, actions


@pytest.fixture(scope="module", params=SEEDS)
def built(
    request: pytest.FixtureRequest,
    tiny_datamart: tuple[Path, dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, Any], ExamsResult, dict[str, str], dict[str, Action]]:
    seed = request.param
    if seed == 0:
        root, truth = tiny_datamart
    else:
        from hiroml import synth

        root = tmp_path_factory.mktemp(f"datamart{seed}") / "datamart"
        truth = synth.generate(root, seed=seed, size="tiny")
    db = tmp_path_factory.mktemp(f"index{seed}") / "index.sqlite"
    res, remap, actions = _run(root, db)
    return root, truth, res, remap, actions


def test_remap_resolved(built: tuple[Any, ...]) -> None:
    _root, truth, _res, remap, _actions = built
    assert remap == truth["remap_resolved"]


def test_every_zip_decision_matches_truth(built: tuple[Any, ...]) -> None:
    _root, truth, res, _remap, actions = built
    got = {rel: str(actions.get(rel, "missing")) for rel in truth["zips"]}
    want = {rel: z["expected"] for rel, z in truth["zips"].items()}
    assert got == want
    rows = {f"{r.batch}/{r.zip}": r for r in res.audit if not r.member}
    for rel, z in truth["zips"].items():
        if z["expected"] in ("duplicate", "merged"):
            assert rows[rel].kept_as == z["kept_as"], rel


def test_exams_match_truth(built: tuple[Any, ...]) -> None:
    _root, truth, res, _remap, _actions = built
    by_primary = {e.zips[0]: e for e in res.exams}
    assert len(res.exams) == len(truth["exams"])
    for exam_id, t in truth["exams"].items():
        e = by_primary[t["zips"][0]]
        assert list(e.zips) == t["zips"], exam_id
        assert sorted(i.sop_uid for i in e.instances) == t["sop_uids"], exam_id
        assert (e.patient_id, e.source_patient_id, e.hiro_id) == (
            t["patient_id"],
            t["source_patient_id"],
            t["hiro_id"],
        ), exam_id
        assert (str(e.modality), e.batch, e.time.isoformat()) == (
            t["modality"],
            t["batch"],
            t["time"],
        ), exam_id
    # a duplicate's row names the exam holding the zip it duplicates
    key_of = {rel: e.exam_key for e in res.exams for rel in e.zips}
    rows = {f"{r.batch}/{r.zip}": r for r in res.audit if not r.member}
    for rel, z in truth["zips"].items():
        if z["expected"] == "duplicate":
            assert rows[rel].exam_key == key_of[z["kept_as"]], rel


def test_not_duplicates_and_partial_overlaps(built: tuple[Any, ...]) -> None:
    _root, truth, res, _remap, actions = built
    assert truth["not_duplicates"] and truth["partial_overlaps"]
    for a, b in truth["not_duplicates"]:
        assert actions[a] is Action.KEPT and actions[b] is Action.KEPT
    rows = {f"{r.batch}/{r.zip}": r for r in res.audit if not r.member}
    for p in truth["partial_overlaps"]:
        earlier, later = p["zips"]
        r = rows[later]
        assert r.reason == REASON_PARTIAL
        assert f"partial overlap: {p['shared_sops']} of" in r.detail
        assert earlier in r.detail


def test_patient_groups_match_truth(built: tuple[Any, ...]) -> None:
    _root, truth, res, _remap, _actions = built
    got = sorted(
        sorted({*g.patient_ids, *g.aliases})
        for g in res.groups
        if len({*g.patient_ids, *g.aliases}) > 1
    )
    assert got == truth["patient_groups"]
    for m in truth["missed_remaps"]:
        a, b = m["patient_ids"]
        assert res.group_of[a] == res.group_of[b]


def test_orphans_and_windows(built: tuple[Any, ...]) -> None:
    root, truth, res, _remap, _actions = built
    clinical = read_clinical(root / truth["clinical"], IdentityConfig())
    joined = join_clinical(res.exams, clinical, IdentityConfig())
    assert list(joined.orphans) == truth["orphans"]
    assert joined.violations == {}


def test_resumed_scan_parts_form_one_exam(built: tuple[Any, ...]) -> None:
    """The two zips of the scan resumed as a new series (9 minutes apart, one HIRO id) are
    one exam holding both series, so CT conversion can stitch them."""
    _root, truth, res, _remap, actions = built
    parts = sorted(r for r, z in truth["zips"].items() if z["kind"] == "resumed_ct_part")
    assert len(parts) == 2
    [exam] = [e for e in res.exams if set(parts) <= set(e.zips)]
    assert [str(actions[r]) for r in exam.zips] == ["kept", "merged"]
    stitched = [
        s for s in truth["ct_series"].values() if s["exam"] == truth["zips"][parts[0]]["exam"]
    ]
    series = {u for s in stitched for u in s.get("stitched_series", [])}
    assert len(series) == 2 and series <= {i.series_uid for i in exam.instances}


def test_the_demo_size_matches_its_truth_too(tmp_path: Path) -> None:
    """The checks above, on the larger demo datamart (another seed): every size holds."""
    from hiroml import synth

    root = tmp_path / "demo"
    truth = synth.generate(root, seed=3, size="demo")
    res, remap, actions = _run(root, tmp_path / "index.sqlite")
    built = (root, truth, res, remap, actions)
    for check in (
        test_remap_resolved,
        test_every_zip_decision_matches_truth,
        test_exams_match_truth,
        test_not_duplicates_and_partial_overlaps,
        test_patient_groups_match_truth,
        test_orphans_and_windows,
        test_resumed_scan_parts_form_one_exam,
    ):
        check(built)
