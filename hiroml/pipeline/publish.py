"""Publishing a build: its version folder with the report and ``build.json``
(:func:`hiroml.versions.publishing.publish`), then the root tables, then pruning to
``versions.keep``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hiroml.config import BuildConfig
from hiroml.errors import ShardError
from hiroml.exams.linking import GroupLink
from hiroml.pipeline.summary import BuildSummary, jsonable_summary
from hiroml.pipeline.tasks import TaskResult
from hiroml.report.card import settings_of
from hiroml.vocab import STATE_DIR

if TYPE_CHECKING:
    from hiroml.ingest.discover import Discovery
    from hiroml.report.flow import Flow
    from hiroml.versions.publishing import Published

log = logging.getLogger(__name__)


def publish(
    cfg: BuildConfig,
    out: Path,
    manifest: pd.DataFrame,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
    summary: BuildSummary,
    found: Discovery,
    results: Sequence[TaskResult],
    orphan_advice: str,
    *,
    links: Sequence[GroupLink] = (),
    flow: Flow | None = None,
) -> Published:
    """Publish the build as a version (:func:`hiroml.versions.publishing.publish`): its folder
    with the report and ``build.json``, then the root tables, then pruning to ``versions.keep``.
    ``flow``: :func:`hiroml.report.flow.compute_flow` of ``audit`` and ``manifest`` where the
    caller has it (the driver's counts), else computed for the report.
    ``build.json`` records the environment that decided the stored values
    (:func:`hiroml.doctor.libraries.environment_record`: library versions, the float16 casts'
    path, the decoders of the manifest's samples); the report and the card show it."""
    from hiroml.doctor.libraries import environment_record
    from hiroml.versions import publishing as versions_publishing

    kept = set(manifest["sample_key"].tolist())
    decoders = [s.decoder for r in results for s in r.samples if s.sample_key in kept]
    environment = environment_record(decoders)

    def write_report(folder: Path, version: str, changes: str, digest: str) -> None:
        shown = dataclasses.replace(summary, version=version, published=True)
        _write_report(
            out,
            manifest,
            patients,
            audit,
            shown,
            orphan_advice,
            folder=folder,
            changes=changes,
            links=links,
            settings=settings_of(cfg),
            dataset_hash=digest,
            environment=environment,
            flow=flow,
        )

    published = versions_publishing.publish(
        out,
        manifest,
        patients,
        audit,
        write_report=write_report,
        build_info={**_build_info(cfg, summary, found, environment), **_pairs_record(cfg, out)},
        keep=cfg.versions.keep,
        live_shards=set(manifest["shard"].unique().tolist())
        | {s for r in results for s in r.shards},
        live_tasks={r.task_id for r in results},
        task_dir=out / STATE_DIR / "tasks",
    )
    _say_what_changed(published, summary)
    return published


def _build_info(
    cfg: BuildConfig, summary: BuildSummary, found: Discovery, environment: Mapping[str, Any]
) -> dict[str, Any]:
    """What ``build.json`` records of the build (the publisher adds the version's own)."""
    return {
        "config": dataclasses.asdict(cfg),
        "inputs": {
            "batches": sorted(b.name for b in found.batches if b.status == "COMPLETE"),
            "batches_skipped": sorted(b.name for b in found.batches if b.status != "COMPLETE"),
            "zips": len(found.zips),
            "instances": summary.instances,
        },
        "environment": environment,
        "splits": summary.split_rule,
        "timings": {k: round(v, 2) for k, v in summary.stage_seconds.items()},
        "summary": {
            k: v
            for k, v in jsonable_summary(summary).items()
            if k not in ("version", "published", "versions_pruned")
        },
    }


def _pairs_record(cfg: BuildConfig, out: Path) -> dict[str, Any]:
    """The SHA-256 of the near-duplicate pairs file the build searched with, under
    ``near_duplicate_pairs`` (``hiroml-verify --quick`` reads back only a recorded file)."""
    from hiroml.exams import paircache

    record = paircache.file_record(out) if cfg.splits.near_duplicate_threshold else None
    return {paircache.RECORD_KEY: record} if record else {}


def _say_what_changed(published: Published, summary: BuildSummary) -> None:
    """Record in the summary (the console's closing lines) a new version identical in content
    to an earlier one, and warn of label columns the previous version had and this one lacks."""
    change = published.diff
    summary.identical_to = change.identical_to if change is not None else ""
    summary.labels_dropped = list(change.labels_dropped) if change is not None else []
    if change is not None and change.labels_dropped:
        log.warning(
            "version %s lacks the label column(s) %s of version %s: the clinical table "
            "(paths.clinical) was not given, or lacks them; version %s still has them "
            "(hiroml-versions --pin keeps it from pruning)",
            published.version.name,
            ", ".join(change.labels_dropped),
            change.a,
            change.a,
        )


def batches_read(found: Discovery) -> list[str]:
    """Names of the COMPLETE batch folders a discovery read."""
    return [b.name for b in found.batches if b.status == "COMPLETE"]


def _write_report(
    out: Path,
    manifest: pd.DataFrame,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
    summary: BuildSummary,
    orphan_advice: str,
    *,
    folder: Path | None = None,
    changes: str = "",
    links: Sequence[GroupLink] = (),
    settings: Mapping[str, Any] | None = None,
    dataset_hash: str = "",
    environment: Mapping[str, Any] | None = None,
    flow: Flow | None = None,
) -> None:
    """The report of a build, written into ``folder`` (default ``out``); thumbnails are
    read from the shards under ``out``. ``flow``: that of ``audit`` and ``manifest``, where
    the caller has it."""
    from hiroml.store.shards import open_shard, read_ref, sample_refs

    shard_of = pd.Series(manifest["shard"].to_numpy(), index=manifest["sample_key"].to_numpy())
    opened: dict[str, tuple[Any, dict[str, Any]]] = {}  # shard -> (open file, its refs)

    def read_array(key: str) -> np.ndarray:
        """A sample's stored array; each shard opened and its index read once per report."""
        shard = str(shard_of[key])
        if shard not in opened:
            f = open_shard(out / shard)
            opened[shard] = (f, sample_refs(f))
        f, refs = opened[shard]
        if key not in refs:
            raise ShardError(f"{out / shard}: no sample {key!r}")
        return read_ref(f, refs[key])

    try:
        _report_files(
            out, manifest, patients, audit, summary, orphan_advice, read_array,
            folder=folder, changes=changes, links=links, settings=settings,
            dataset_hash=dataset_hash, environment=environment, flow=flow,
        )  # fmt: skip
    finally:
        for f, _ in opened.values():
            f.close()


def _report_files(
    out: Path,
    manifest: pd.DataFrame,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
    summary: BuildSummary,
    orphan_advice: str,
    read_array: Callable[[str], np.ndarray],
    *,
    folder: Path | None,
    changes: str,
    links: Sequence[GroupLink],
    settings: Mapping[str, Any] | None,
    dataset_hash: str,
    environment: Mapping[str, Any] | None,
    flow: Flow | None = None,
) -> None:
    """The report page (thumbnails through ``read_array``) and, in a version's folder, the
    files a study cites."""
    from hiroml.report import neardup as report_neardup
    from hiroml.report import page as report_page
    from hiroml.report.flow import compute_flow

    if flow is None:  # once, for the page, the card and the cited files
        flow = compute_flow(audit, manifest)
    info = jsonable_summary(summary)
    if orphan_advice:
        info["orphans"] = orphan_advice
    report_page.write_report(
        folder or out,
        changes=changes,
        manifest=manifest,
        patients=patients,
        audit=audit,
        summary=info,
        read_array=read_array,
        near_duplicates=report_neardup.near_duplicate_frame(links),
        settings=settings,
        dataset_hash=dataset_hash,
        environment=environment,
        flow=flow,
    )
    if folder is not None:  # a version's folder: the files a study cites, beside its report
        from hiroml.report.citable import write_citable

        write_citable(
            folder,
            out,
            manifest,
            audit,
            summary=info,
            settings=settings,
            dataset_hash=dataset_hash,
            flow=flow,
        )
