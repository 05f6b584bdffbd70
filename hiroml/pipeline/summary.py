"""What a build did: :class:`BuildSummary`, its stage timings and its JSON form."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from hiroml._version import __version__
from hiroml.vocab import SEQUESTERED_DIR, SplitStrategy


@dataclass
class BuildSummary:
    """What a build did, for the closing summary and the report."""

    datamart: str = ""
    output: str = ""
    started: str = ""
    seconds: float = 0.0
    batches_read: int = 0
    batches_skipped: int = 0
    zips: int = 0
    zips_indexed_now: int = 0
    instances: int = 0
    exams: int = 0
    duplicates: int = 0
    merged: int = 0
    tasks: int = 0
    tasks_reused: int = 0
    cxr_images: int = 0
    ct_volumes: int = 0
    errors: int = 0
    internal_errors: int = 0  # of the errors, those that are hiroml bugs, not bad input
    dropped: int = 0
    pixel_links: int = 0  # patient groups joined by identical decoded pixels
    near_duplicates: int = 0  # near-duplicate pairs across patient groups (linked or not)
    patients_per_split: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    config_hash: dict[str, str] = field(default_factory=dict)
    # What the shrink guard let through (hiroml.store.guard): empty when nothing was lost.
    shrink: dict[str, Any] = field(default_factory=dict)
    version: str = ""  # the latest version after this build
    published: bool = False  # False: the result equals the latest version, none published
    split_moves: int = 0
    # The split rule (hiroml.exams.groups.assign_splits): strategy, parameters, the rule in
    # words, the previous version's strategy.
    split_rule: dict[str, Any] = field(default_factory=dict)
    versions_pruned: int = 0
    # Read once (hiroml.pipeline.scratch): radiographs converted in the index's read, and how many
    # of those no conversion took (duplicate copies, dropped exams, reused tasks): converted for
    # nothing.
    read_once: int = 0
    read_once_unused: int = 0
    # The inputs were those of the build that made the latest version (hiroml.pipeline.unchanged):
    # nothing was read or written; the counts are that build's.
    unchanged: bool = False
    # Zips with an error row in this build and none in the previous latest version's audit, and
    # where this build's whole audit is recorded (hiroml.pipeline.failures).
    new_failed_zips: int = 0
    failures_record: str = ""
    # The version published holds what an earlier one holds (the same dataset hash): its name.
    identical_to: str = ""
    # Label columns (the clinical table's) that the previous version had and this one lacks.
    labels_dropped: list[str] = field(default_factory=list)
    # The flow's counts (hiroml.report.flow.Flow.as_dict, from the published audit and
    # manifest): the numbers the console, report.html, flow.svg and DATASET.md all show.
    flow: dict[str, Any] = field(default_factory=dict)
    # The datamart is hiroml's synthetic one (its ground-truth file is there): the report and
    # the card say the data are made up.
    synthetic: bool = False
    # The clinical table read ("" for none) and the patient ids of exams it has no row for.
    clinical: str = ""
    orphan_ids: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        if self.unchanged:
            return self._unchanged_lines()
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in self.stage_seconds.items())
        return [
            f"hiroml {__version__}: built {self.output} from {self.datamart} "
            f"in {self.seconds:.1f} s",
            f"  batches read {self.batches_read}, skipped {self.batches_skipped}; "
            f"{self.zips_indexed_now} zips indexed now; instances {self.instances}",
            *self._count_lines(),
            f"  conversion: {self.tasks} tasks, {self.tasks_reused} reused from an earlier run "
            "(every decision: audit.csv, report.html)",
            *self._internal_lines(),
            f"  patient groups joined by identical pixels {self.pixel_links}; near-duplicate "
            f"pairs across groups {self.near_duplicates}",
            f"  time per stage: {stages}",
            f"  radiographs converted in the index's read {self.read_once}, "
            f"{self.read_once_unused} of them for nothing (duplicate copies, dropped exams)",
            *self._shrink_lines(),
            *self._version_lines(),
        ]

    def _count_lines(self) -> list[str]:
        """The counts, worded as the flow figure words them (:attr:`flow`)."""
        f = self.flow
        if not f:  # a summary recorded without the flow
            split = ", ".join(f"{k} {v}" for k, v in self.patients_per_split.items()) or "none"
            return [
                f"  exams {self.exams}, duplicates {self.duplicates}, merged {self.merged}",
                f"  written: {self.cxr_images} radiographs, {self.ct_volumes} CT volumes",
                f"  dropped {self.dropped}, errors {self.errors}",
                f"  patients per split: {split}",
            ]
        from hiroml.vocab import Action

        split = ", ".join(f"{s['split']} {s['patients']}" for s in f["splits"]) or "none"
        dropped = sum(f[Action.DROPPED].values())
        return [
            f"  zips found {f['zips_found']}: skipped {f['zips_skipped']} (upload in progress), "
            f"nothing usable {f['zips_error']} (errors), duplicates {f['zips_duplicate']}, "
            f"merged {f['zips_merged']} (parts of a CT exam); exams {f['exams']}",
            f"  inside exams: dropped {dropped}, errors {f['errors_in_exams']} (audit rows); "
            f"exams with no sample {f['exams_without_sample']}",
            f"  samples {f['samples']}: {f['cxr']} radiographs, {f['ct']} CT volumes, "
            f"of {f['patients']} patients",
            f"  patients per split: {split}",
        ]

    def _unchanged_lines(self) -> list[str]:
        return [
            f"hiroml {__version__}: {self.output} is up to date with {self.datamart} "
            f"(checked in {self.seconds:.1f} s)",
            f"  same {self.zips} zips in {self.batches_read} batches, same remap sheet, "
            "clinical table, configuration and hiroml version as the build of version "
            f"{self.version}: nothing read again (skip_unchanged=false builds anyway)",
            "  that build:",
            *self._count_lines(),
            f"  nothing changed since version {self.version}: no new version published",
            *self._failure_lines(),
        ]

    def _failure_lines(self) -> list[str]:
        if not self.new_failed_zips:
            return []
        where = "audit.csv / report.html" if self.published else self.failures_record
        return [f"  {self.new_failed_zips} new zips failed (see {where})"]

    def _internal_lines(self) -> list[str]:
        if not self.internal_errors:
            return []
        return [
            f"  internal errors: {self.internal_errors} - please report (hiroml bugs, not bad "
            "input: their tracebacks are in the run log; their rows in audit.csv are errors)"
        ]

    def _shrink_lines(self) -> list[str]:
        s = self.shrink
        if not s:
            return []
        gone = ", ".join(s.get("missing_batches", [])) or "none"
        return [
            f"  SHRINK published ({s.get('allowed_by')}): {s.get('unexplained_samples')} of "
            f"{s.get('previous_samples')} previous samples and {s.get('unexplained_patients')} "
            f"of {s.get('previous_patients')} patients removed without an explanation; "
            f"batch folders gone: {gone}"
        ]

    def _version_lines(self) -> list[str]:
        if not self.version:
            return []
        head = (
            f"  version {self.version} published"
            if self.published
            else f"  nothing changed since version {self.version}: no new version published"
        )
        tail = f"; {self.versions_pruned} old version(s) pruned" if self.versions_pruned else ""
        if self.published and self.identical_to:
            head += f", identical in content to version {self.identical_to} (same dataset hash)"
        moves = (
            f"; {self.split_moves} patient(s) changed split (see the audit)"
            if self.split_moves
            else ""
        )
        labels = ", ".join(self.labels_dropped)
        dropped = (
            [f"  label columns dropped since the previous version: {labels}"]
            if self.published and self.labels_dropped
            else []
        )
        return [
            head + moves + tail,
            *dropped,
            *self._failure_lines(),
            *self._split_rule_lines(),
        ]

    def _split_rule_lines(self) -> list[str]:
        """The split rule, unless it is the default hash split throughout."""
        r = self.split_rule
        strategy, before = r.get("strategy"), r.get("previous_strategy")
        plain = strategy == SplitStrategy.HASH and before in (None, SplitStrategy.HASH)
        if not r or (plain and not r.get("sequester")):
            return []
        lines = [f"  {r.get('rule', strategy)}"]
        if before is not None and before != strategy:
            lines.append(
                f"  the previous version's split was {before}: its "
                f"{r.get('groups_kept_from_previous', 0)} patient group(s) keep their split; "
                f"new patient groups are dealt by {strategy}"
            )
        if "sequestered_samples" in r:
            lines.append(
                f"  test split sequestered: {r['sequestered_patients']} patient group(s), "
                f"{r['sequestered_samples']} sample(s), {r['sequestered_audit_rows']} audit "
                f"row(s) in {SEQUESTERED_DIR}/ (version {r['sequestered_version']})"
            )
        return lines


def timed(summary: BuildSummary, stage: str, t0: float) -> float:
    """Add the seconds since ``t0`` (``time.perf_counter``) to ``stage``; the time now."""
    t = time.perf_counter()
    summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + t - t0
    return t


def jsonable_summary(summary: BuildSummary) -> dict[str, Any]:
    """The summary as JSON-ready values, stage times rounded to 0.01 s."""
    d = dataclasses.asdict(summary)
    d["stage_seconds"] = {k: round(v, 2) for k, v in summary.stage_seconds.items()}
    if not summary.shrink:  # the report shows a shrink only when one was published
        del d["shrink"]
    return d


def now() -> str:
    """The local time, ISO 8601 to the second."""
    return dt.datetime.now().isoformat(timespec="seconds")
