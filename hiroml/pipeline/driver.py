"""The driver: discover -> index -> identity -> exams -> convert -> link -> splits ->
manifest -> publish, under the output's lock.

Conversion tasks (:mod:`hiroml.pipeline.tasks`) run through
:func:`hiroml.pipeline.executor.map_items`, on a local process pool or a Dask cluster; tasks
finished by an earlier run are reused. The manifest is written last, by the driver, once every task
is done.
"""

from __future__ import annotations

import gc
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from hiroml.config import BuildConfig
from hiroml.errors import BuildError, DiskFullError
from hiroml.exams.groups import (
    assign_splits,
    decode_pediatric_candidates,
    link_by_pixels,
    previous_splits,
)
from hiroml.pipeline import (
    allocator,
    failures,
    faults,
    scratch,
    sequester,
    systematic,
    unchanged,
)
from hiroml.pipeline.audit import (
    CODE_INTERNAL,
    problem_to_audit,
    split_move_rows,
    with_link_notes,
)
from hiroml.pipeline.demo import with_demo
from hiroml.pipeline.diskfull import disk_full_error
from hiroml.pipeline.publish import batches_read, publish
from hiroml.pipeline.samples import manifest_frame, with_signatures
from hiroml.pipeline.summary import BuildSummary, now, timed
from hiroml.pipeline.tasks import TaskResult, TaskSpec, config_hash, load_task_record, plan_tasks
from hiroml.pipeline.worker import died_task, join_tasks, run_task, split_task
from hiroml.records import AuditRow
from hiroml.vocab import AUDIT, MANIFEST, SEQUESTERED_DIR, SPLITS, STATE_DIR, Action, Modality

if TYPE_CHECKING:
    from hiroml.exams.linking import LinkResult
    from hiroml.exams.rules import ExamsResult
    from hiroml.ingest.discover import Discovery
    from hiroml.ingest.identity import ClinicalJoin, ClinicalTable
    from hiroml.ingest.index import IndexResult
    from hiroml.report.flow import Flow

log = logging.getLogger(__name__)


def _latest(out: Path) -> str | None:
    """The name of the latest version of ``out``, None when there is none."""
    from hiroml.versions.listing import find_version

    version = find_version(out)
    return version.name if version is not None else None


def _disk_full(
    err: BaseException,
    out: Path,
    doing: str,
    *,
    need: int | None = None,
    before: tuple[str | None] | None = None,
) -> DiskFullError | None:
    """The :class:`DiskFullError` (:mod:`hiroml.pipeline.diskfull`) of ``err`` met while
    ``doing`` something in ``out``; None when ``err`` is not a full disk. ``before``: the
    latest version when the build started, when known."""
    latest = _latest(out)
    published = before is not None and latest is not None and latest != before[0]
    full = disk_full_error(err, out, version=latest, need=need, published=published)
    if full is not None:
        log.info("disk full while %s: %s", doing, err)
    return full


@contextmanager
def _long_lived() -> Iterator[None]:
    """Keep what a build holds to its end out of the cyclic garbage collector's walks.

    A full collection walks every object the collector tracks; the modules imported, the
    index's records, the exams and the task results stay alive until the build ends, so each
    walk over them is wasted, and their number grows with the dataset. :func:`_keep` moves
    the objects alive at a stage's end to the collector's permanent generation
    (``gc.freeze``); they are still freed when their last reference goes.

    The young objects are collected every :data:`~hiroml.pipeline.allocator.YOUNG_THRESHOLD`
    containers instead of every 700 (:func:`~hiroml.pipeline.allocator.collect_young_less_often`):
    the records a stage makes live until the stage ends, so the collections between
    walk them again and again and promote them, and the older generations' collections then
    walk them once more. A build's garbage in reference cycles is small (about 8,700 objects
    in a week of 300 zips, on 1,000 zips as on 6,000); what dies otherwise is freed at once
    by its reference count (``docs/scale.md``: "The collector's young threshold"). A
    threshold set higher, or 0 (the collector off), is left as it is.

    Leaving the block hands the frozen objects back (``gc.unfreeze``) and restores the
    threshold, so that a process that builds many times (a test session) collects them
    between builds as it did before.
    """
    before = allocator.collect_young_less_often()
    _keep()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _keep() -> None:
    """Move the objects alive now out of the collector's walks (see :func:`_long_lived`)."""
    gc.freeze()


def execute(specs: Sequence[TaskSpec], cfg: BuildConfig) -> list[TaskResult]:
    """Run the tasks not finished by an earlier run; results in the order of ``specs``."""
    from hiroml.pipeline.executor import Retry, map_items

    done: dict[str, TaskResult] = {}
    todo: list[TaskSpec] = []
    for spec in specs:
        prev = load_task_record(spec)
        if prev is None:
            todo.append(spec)
        else:
            done[spec.task_id] = prev
    tally = [0.0, 0]  # MB read, images written

    def status(result: TaskResult, seconds: float) -> str:
        tally[0] += result.bytes_read / 1e6
        tally[1] += len(result.samples)
        return f"{int(tally[1])} images, {tally[0] / max(seconds, 1e-9):.1f} MB/s in"

    results = map_items(
        run_task,
        todo,
        cfg.executor,
        # Largest first (bytes of DICOM to convert): a big CT task started last would leave
        # the other workers idle at the end. Results are re-ordered below.
        weight=lambda s: sum(i.member_size for e in s.exams for i in e.instances),
        step=lambda s: len(s.exams),
        desc=f"convert {len(todo)} tasks",
        unit="exam",
        progress=cfg.progress,
        status=status,
        retry=Retry(split_task, died_task, join_tasks),
    )
    for _spec, result in results:
        done[result.task_id] = result
        faults.point("after_shards")
    _keep()  # the task results live to the build's end
    return [done[s.task_id] for s in specs]


def run(
    cfg: BuildConfig, *, check_unchanged: bool = True, seen: unchanged.Look | None = None
) -> BuildSummary:
    """Build (or bring up to date) the dataset described by ``cfg``.

    With ``cfg.skip_unchanged`` (and ``check_unchanged``, which ``hiroml-build`` turns off
    once it has checked before importing this module), a run whose inputs are those of the
    latest version's build answers at once (:mod:`hiroml.pipeline.unchanged`). ``seen``: what
    :func:`hiroml.pipeline.unchanged.look` found before, whose datamart listing (of the same
    datamart) the build takes instead of listing it again.

    The datamart is listed first: a missing one, or one without any batch folder, raises
    :class:`~hiroml.errors.DatamartError` before anything is written. The build then holds
    the output's lock (:mod:`hiroml.store.lock`; :class:`~hiroml.errors.OutputLockedError` when
    another build holds it) until it ends. Raises :class:`~hiroml.errors.BuildError` when the
    build cannot complete, :class:`~hiroml.errors.SystematicFailureError` when one error hit
    most images of a modality (:mod:`hiroml.pipeline.systematic`) and
    :class:`~hiroml.errors.ShrinkRefusedError` when it would remove too much of the previous
    dataset (:mod:`hiroml.store.guard`); the previous output stays readable in every case, since
    the manifest is replaced last and atomically.
    """
    import cv2

    from hiroml.ingest import discover as datamart
    from hiroml.store.lock import build_lock

    t_start = time.perf_counter()
    demo = not cfg.paths.datamart
    cfg, root = with_demo(cfg)  # generates the demo datamart the first time
    t_demo = time.perf_counter() - t_start
    if check_unchanged and cfg.skip_unchanged:
        seen = unchanged.look(cfg)
        if seen.summary is not None:
            return seen.summary
    faults.arm(cfg.runtime.fault)
    # The driver decodes a few members itself (the pediatric check) and then forks the
    # conversion workers: OpenCV's thread pool must not exist in it when it forks, or a child
    # inherits the pool's locks without its threads and hangs in cv2.setNumThreads.
    cv2.setNumThreads(1)
    started = now()
    if seen is not None and seen.found is not None and seen.found.root == str(root):
        found, t_discover, listed = seen.found, seen.seconds, seen.fingerprint
    else:
        t = time.perf_counter()
        found = datamart.discover(root)  # a missing or empty datamart stops here
        t_discover = time.perf_counter() - t
        listed = None
    if listed is None:  # the inputs as listed, for the record of this build
        listed = unchanged.fingerprint(cfg, root, found)
    out = Path(cfg.paths.output)
    out.mkdir(parents=True, exist_ok=True)
    with build_lock(out, wait=cfg.wait_for_lock), _long_lived():
        summary = BuildSummary(started=started)
        if demo:
            summary.stage_seconds["demo datamart"] = t_demo
        summary.stage_seconds["discover"] = t_discover
        before = (_latest(out),)
        try:
            return _build(cfg, root, out, found, summary, t_start, listed)
        except (OSError, sqlite3.OperationalError) as err:  # the index, or after publishing
            full = _disk_full(err, out, "building", before=before)
            if full is None:
                raise
            raise full from err


@dataclass(frozen=True, slots=True)
class _Inputs:
    """What the stages before conversion found: the index, the exams and their audit."""

    indexed: IndexResult
    exams: ExamsResult
    joined: ClinicalJoin
    clinical: ClinicalTable | None  # None without paths.clinical
    audit: tuple[AuditRow, ...]


@dataclass(frozen=True, slots=True)
class _Tables:
    """The three output tables, and the links that made the patient groups."""

    manifest: pd.DataFrame
    patients: pd.DataFrame
    audit: pd.DataFrame
    linked: LinkResult
    internal_errors: int = 0  # audit error rows that are hiroml bugs (CODE_INTERNAL)


def _build(
    cfg: BuildConfig,
    root: Path,
    out: Path,
    found: Discovery,
    summary: BuildSummary,
    t_start: float,
    listed: str,
) -> BuildSummary:
    """The build itself, under the output's lock (see :func:`run`); ``listed``: the
    fingerprint of the inputs as listed (:func:`hiroml.pipeline.unchanged.fingerprint`)."""
    from hiroml import vocab as synth_truth

    sequester.check_output(cfg, out)  # before anything is read or built
    summary.datamart, summary.output = str(root), str(out)
    summary.synthetic = (root / synth_truth.TRUTH_NAME).is_file()  # hiroml-synth's datamart
    summary.batches_read = sum(b.status == "COMPLETE" for b in found.batches)
    summary.batches_skipped = len(found.batches) - summary.batches_read
    summary.zips = len(found.zips)
    inputs = _read_inputs(cfg, root, out, found, summary)
    t = time.perf_counter()
    specs = plan_tasks(inputs.joined.exams, cfg, root=str(root), out_dir=str(out))
    summary.tasks = len(specs)
    try:
        results = execute(specs, cfg)
    except OSError as err:
        need = sum(i.member_size for s in specs for e in s.exams for i in e.instances)
        full = _disk_full(err, out, "writing shards", need=need)
        if full is None:
            raise
        raise full from err
    finally:
        summary.read_once_unused = scratch.sweep(out)
    summary.tasks_reused = sum(r.reused for r in results)
    t = timed(summary, "convert", t)
    systematic.check_systematic(out, specs, results, inputs.audit, cfg.publish)
    tables = _tables(cfg, out, inputs, results, summary)
    flow = _count(cfg, summary, tables, results)
    _refuse_to_publish(cfg, summary, tables)
    allocator.release_all()  # the tables' and the leak check's temporaries, before publishing
    t = timed(summary, "manifest", t)
    _publish(cfg, out, found, inputs, results, tables, summary, t_start, flow)
    timed(summary, "report", t)
    summary.seconds = time.perf_counter() - t_start
    m = tables.manifest
    shards = set(m["shard"].astype(str).unique().tolist()) if len(m) else set()
    if cfg.splits.sequester:  # the fast path answers only while the sequestered folder stands
        shards.add(f"{SEQUESTERED_DIR}/{MANIFEST}")
    unchanged.remember(out, summary, shards, inputs=listed)
    return summary


def _read_inputs(
    cfg: BuildConfig, root: Path, out: Path, found: Discovery, summary: BuildSummary
) -> _Inputs:
    """Index the zips, read the remap sheet and the clinical table, and make the exams."""
    from hiroml.exams import rules as exams_rules
    from hiroml.exams import stage as exams_stage
    from hiroml.ingest import identity
    from hiroml.ingest.index import build_index

    t = time.perf_counter()
    prepare = scratch.Preparer(str(scratch.scratch_dir(out)), cfg.cxr) if cfg.cxr.enabled else None
    indexed = build_index(
        root,
        found.zips,
        db_path=cfg.paths.index_db or str(out / STATE_DIR / "index.sqlite"),
        limits=cfg.index,
        executor=cfg.executor,
        progress=cfg.progress,
        on_member=prepare,
        pixel_limits=cfg.limits,
    )
    _keep()  # the index's records live to the build's end
    summary.read_once = scratch.count(out)
    summary.zips_indexed_now = indexed.read
    summary.instances = len(indexed.instances)
    t = timed(summary, "index", t)

    sheet = Path(cfg.paths.remap_sheet) if cfg.paths.remap_sheet else None
    remap, remap_problems = identity.load_remap(root, sheet, cfg.identity)
    clinical = (
        identity.read_clinical(Path(cfg.paths.clinical), cfg.identity)
        if cfg.paths.clinical
        else None
    )
    decoded = decode_pediatric_candidates(root, found.zips, indexed.instances, remap, cfg.index)
    result = exams_stage.build_exams(
        found.zips, indexed.instances, remap, cfg.exams, decoded=decoded
    )
    joined = identity.join_clinical(result.exams, clinical, cfg.identity)
    summary.clinical, summary.orphan_ids = cfg.paths.clinical or "", list(joined.orphans)
    timed(summary, "exams", t)

    audit: list[AuditRow] = [problem_to_audit(p) for p in found.problems]
    audit += [problem_to_audit(p) for p in indexed.problems]
    audit += [problem_to_audit(p) for p in remap_problems]
    # A zip the index could not read already has its precise error rows: the exams stage's
    # generic "no DICOM instance indexed" row would only repeat them.
    reported = {(p.batch, p.zip) for p in indexed.problems}
    audit += [
        r
        for r in result.audit
        if not (r.code == exams_rules.CODE_NO_INSTANCES and (r.batch, r.zip) in reported)
    ]
    audit += list(joined.audit)
    _keep()  # so do the exams
    return _Inputs(indexed, result, joined, clinical, tuple(audit))


def _tables(
    cfg: BuildConfig,
    out: Path,
    inputs: _Inputs,
    results: Sequence[TaskResult],
    summary: BuildSummary,
) -> _Tables:
    """Link patient groups by pixels, assign splits, and make the three output tables."""
    from hiroml.store.tables import audit_frame, patients_frame

    joined = inputs.joined
    audit = list(inputs.audit)
    for r in results:
        audit += [problem_to_audit(p, exam_key=k) for k, p in r.problems]
    exam_by_key = {e.exam_key: e for e in joined.exams}
    linked, signatures = link_by_pixels(cfg, results, exam_by_key, inputs.exams.group_of, out)
    allocator.release_freed()  # the near-duplicate search's blocks, before the tables' peak
    audit = with_link_notes(audit, linked)
    before = previous_splits(out)
    split_of, members, rule = assign_splits(
        cfg, joined.exams, linked.group_of, inputs.clinical, out, prev_by_id=before
    )
    summary.split_rule = rule
    moves = split_move_rows(out, joined.exams, split_of, members, prev_by_id=before)
    audit += moves
    summary.split_moves = len(moves)
    manifest = manifest_frame(
        results,
        exam_by_key,
        linked.group_of,
        split_of,
        joined.days,
        set(joined.orphans),
        inputs.clinical.labels if inputs.clinical is not None else None,
    )
    manifest = with_signatures(manifest, signatures, linked)
    patients = patients_frame(manifest, members)
    by_group = linked.texts_by_group()
    groups = patients["patient_group"].astype(str).tolist()
    patients["links"] = [by_group.get(g, []) for g in groups]
    internal = sum(r.code == CODE_INTERNAL for r in audit)
    return _Tables(manifest, patients, audit_frame(audit), linked, internal)


def _count(
    cfg: BuildConfig, summary: BuildSummary, tables: _Tables, results: Sequence[TaskResult]
) -> Flow:
    """The summary's counts of samples, audit actions, links and patients per split; the
    flow of the tables, which the report of a version holding these tables shows."""
    from hiroml.exams import linking
    from hiroml.report.flow import compute_flow

    manifest, audit_df, patients = tables.manifest, tables.audit, tables.patients
    flow = compute_flow(audit_df, manifest)
    summary.flow = flow.as_dict()  # the counts every output shows
    links = tables.linked.links
    summary.pixel_links = sum(k.kind == linking.SAME_PIXELS for k in links)
    summary.near_duplicates = tables.linked.near_pairs
    summary.cxr_images = int((manifest["modality"] == "cxr").sum()) if len(manifest) else 0
    summary.ct_volumes = int((manifest["modality"] == "ct").sum()) if len(manifest) else 0
    summary.errors = int((audit_df["action"] == Action.ERROR).sum())
    summary.internal_errors = tables.internal_errors
    summary.dropped = int((audit_df["action"] == Action.DROPPED).sum())
    summary.duplicates = int((audit_df["action"] == Action.DUPLICATE).sum())
    summary.merged = int((audit_df["action"] == Action.MERGED).sum())
    summary.exams = len({s.exam_key for r in results for s in r.samples})
    summary.patients_per_split = {s: int((patients["split"] == s).sum()) for s in SPLITS}
    summary.config_hash = {m.value: config_hash(m, cfg) for m in Modality}
    return flow


def _refuse_to_publish(cfg: BuildConfig, summary: BuildSummary, tables: _Tables) -> None:
    """Raise :class:`BuildError` for a leaking dataset, or for input errors with strict=true."""
    from hiroml.exams import splits

    manifest, audit_df = tables.manifest, tables.audit
    leaks = splits.find_leaks(manifest) if len(manifest) else []
    if leaks:  # never publish a leaking dataset
        raise BuildError("patient leakage across splits: " + "; ".join(leaks[:10]))
    if cfg.strict and summary.errors:
        first = audit_df[audit_df["action"] == Action.ERROR].head(5)
        raise BuildError(
            f"strict=true and {summary.errors} input error(s); the previous output is left as "
            "it was. First: "
            + " | ".join(f"{z}: {r}" for z, r in zip(first["zip"], first["reason"], strict=True))
        )


def _publish(
    cfg: BuildConfig,
    out: Path,
    found: Discovery,
    inputs: _Inputs,
    results: Sequence[TaskResult],
    tables: _Tables,
    summary: BuildSummary,
    t_start: float,
    flow: Flow,
) -> None:
    """Check the shrink guard, then publish the version; the summary records which. A refused
    build removes its new shards (and their task records) first: it leaves none behind.
    ``flow``: the tables' (:func:`_count`), which a version holding them shows; a sequestered
    build publishes parts of them, each with its own."""
    from hiroml.errors import ShrinkRefusedError
    from hiroml.store import guard

    failed_before = failures.previous_failed_zips(out)  # the latest version's, before publishing
    try:
        summary.shrink = guard.check_shrink(
            out, tables.manifest, tables.audit, batches_read(found), cfg
        )
    except ShrinkRefusedError:
        systematic.forget(out, [r for r in results if not r.reused])
        raise
    summary.seconds = time.perf_counter() - t_start
    try:
        publisher = sequester.publish if cfg.splits.sequester else partial(publish, flow=flow)
        published = publisher(
            cfg,
            out,
            tables.manifest,
            tables.patients,
            tables.audit,
            summary,
            found,
            results,
            inputs.joined.orphan_advice,
            links=tables.linked.links,
        )
    except OSError as err:
        full = _disk_full(err, out, "writing the report and manifest")
        if full is None:
            raise
        raise full from err
    summary.version = published.version.name
    summary.published = published.new
    # a version published from this audit holds it as audit.csv (sequestered: split apart)
    same = published.new and not cfg.splits.sequester
    summary.new_failed_zips, summary.failures_record = failures.record(
        out, tables.audit, failed_before, published.version.path / AUDIT if same else None
    )
    summary.versions_pruned = len(published.pruned.versions)
