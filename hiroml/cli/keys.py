"""Every key of ``hiroml-build``'s configuration with a one-line meaning: the key list of
``hiroml-build --help`` and the table of docs/configuration.md (a test keeps them equal, and
requires a line for every key of :class:`~hiroml.config.BuildConfig`). The defaults are read
from the schema, where they are stated once."""

from __future__ import annotations

from typing import Any

#: key -> its meaning, one line; in the order of docs/configuration.md.
MEANINGS: dict[str, str] = {
    "paths.datamart": "the datamart folder (batch folders + remap sheet); null: the demo datamart",
    "paths.output": "the output folder",
    "paths.remap_sheet": "the remap sheet; null: <datamart>/C19_HIRO_LDS_REMAP_PUB-LIST.xlsx",
    "paths.clinical": "clinical table (CSV/Parquet/xlsx); null with the demo: its clinical.csv",
    "paths.index_db": "the index cache; null: <output>/.hiroml/index.sqlite",
    "paths.demo_dir": "where the demo datamart is generated; null: <output>-demo-datamart",
    "demo_size": "size of the demo datamart: tiny, demo or bench (see hiroml-synth --help)",
    "seed": "seed of the demo datamart",
    "index.max_members": "zip safety cap: members per zip, checked before inflating",
    "index.max_member_bytes": "zip safety cap: bytes of one member, inflated",
    "index.max_total_bytes": "zip safety cap: bytes of a whole zip, inflated",
    "index.max_ratio": "zip safety cap: inflated / compressed size of a member",
    "limits.max_pixels": "a member with more pixels a frame is an error row, before decoding",
    "limits.max_decoded_bytes": "a member whose frames decode to more bytes is an error row",
    "identity.remap_old_column": "remap sheet column of old ids; null: detected",
    "identity.remap_new_column": "remap sheet column of current ids; null: detected",
    "identity.clinical_id_column": "patient id column of the clinical table",
    "identity.clinical_encounter_column": "encounter date column of the clinical table",
    "identity.enforce_windows": "drop exams outside the tip sheet's windows (false: only report)",
    "identity.cxr_window_days": "radiographs count from this many days before the encounter",
    "identity.ct_window_days": "CT counts from this many days before the encounter",
    "exams.ct_split_window_minutes": "CT zips of one patient and HIRO id this close are one exam",
    "exams.pixel_link_max_patients": "> 0: an image shared by more ids is common, not a remap",
    "cxr.enabled": "convert radiographs",
    "cxr.size": "output (height, width), pixels",
    "cxr.keep_aspect": "pad instead of stretching",
    "cxr.normalization": "voi (DICOM window / VOI LUT), percentile or minmax",
    "cxr.voi_index": "which of several DICOM windows / VOI LUTs",
    "cxr.percentiles": "the percentile normalization's range",
    "cxr.dtype": "stored type: float16, uint8 or uint16",
    "cxr.views": "views kept: frontal, lateral, unknown",
    "cxr.drop_derived": "drop secondary captures and screen saves",
    "cxr.keep_for_processing": "keep DX 'for processing' raw detector images",
    "cxr.fast_jpeg2000": "decode JPEG 2000 at the reduced resolution the output needs",
    "cxr.fast_jpeg": "decode 8-bit JPEG at the reduced resolution the output needs",
    "ct.enabled": "convert CT",
    "ct.series": "best (one series per exam) or all",
    "ct.preferred_kernels": "reconstruction kernels preferred by ct.series=best, in order",
    "ct.min_slices": "fewer slices: the series is dropped",
    "ct.drop_derived": "drop derived and secondary CT images",
    "ct.duplicate_policy": "two slices at one position, different pixels: split or reject",
    "ct.spacing_policy": "a gap or uneven spacing: resample or reject",
    "ct.tilt_policy": "a gantry tilt: resample or reject",
    "ct.spacing_rtol": "relative tolerance before spacing counts as uneven",
    "ct.spacing_atol": "absolute tolerance before spacing counts as uneven, mm",
    "ct.resample_spacing": "resample every volume to this spacing (x, y, z), mm; null: no",
    "ct.clip_hu": "clip HU to [low, high]; null: no",
    "ct.fill_hu": "HU outside the scanned field after tilt correction or resampling",
    "ct.stitch": "auto: join a scan resumed under a new series; off: every series alone",
    "ct.stitch_max_gap": "largest gap between two parts of one scan beyond a slice step, mm",
    "ct.stitch_atol_hu": "overlapping slices are one when no HU differs by more",
    "shards.max_samples": "shard roll-over: samples per shard",
    "shards.max_bytes": "shard roll-over: bytes per shard",
    "shards.compression": "none, lz4, zstd or gzip",
    "shards.ct_chunks": "slice (fast slices) or cube (fast 3-D patches)",
    "splits.train": "fraction of patient groups in train",
    "splits.val": "fraction of patient groups in val",
    "splits.test": "fraction of patient groups in test",
    "splits.salt": "a new salt draws a new, independent split",
    "splits.strategy": "hash, stratified or temporal: how new patient groups are dealt",
    "splits.stratify": "stratified: age_band, sex, modality or label columns, e.g. [modality,sex]",
    "splits.temporal.test_after": "temporal: groups first seen after this date (YYYY-MM-DD) test",
    "splits.temporal.test_fraction": "temporal: the latest fraction of groups is test",
    "splits.test_list": "file of patient ids always in test",
    "splits.sequester": "write the test split apart, in <output>/sequestered/",
    "splits.near_duplicate_threshold": (
        "radiographs whose signatures correlate this much are near duplicates"
    ),
    "splits.link_near_duplicates": "join the patient groups of near duplicates (false: report)",
    "executor.kind": "local (process pool) or dask (also: executor=dask)",
    "executor.workers": "worker processes; null: all cores",
    "executor.scheduler": "Dask scheduler address; null: a LocalCluster",
    "executor.exams_per_task": "radiograph exams converted by one task (one shard)",
    "executor.ct_exams_per_task": "CT exams converted by one task (one shard)",
    "versions.keep": "newest versions kept (pinned ones too); a build prunes the rest",
    "publish.max_removed_fraction": "shrink guard: refuse (exit 4) removing more, unexplained",
    "publish.max_error_fraction": "refuse (exit 5) when one error hits this fraction of images",
    "publish.min_errors": "... and at least this many images",
    "runtime.malloc": "keep_freed, or default: glibc's malloc thresholds",
    "runtime.fault": "die at a named point, for the kill tests",
    "doctor.enabled": "check the numeric paths against golden values before building",
    "doctor.cache": "trust a pass recorded for this environment (~/.cache/hiroml/selfcheck)",
    "strict": "any input error fails the build",
    "progress": "progress bars on the console",
    "allow_shrink": "publish even when the shrink guard refuses",
    "wait_for_lock": "wait for another build of the same output instead of exit 3",
    "skip_unchanged": "same inputs and config as the latest version: answer at once",
}


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)


def defaults() -> dict[str, str]:
    """Every leaf key of the schema (dotted) and its default as YAML would write it."""
    import dataclasses

    from hiroml.config import BuildConfig

    out: dict[str, str] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out[f"{prefix}{f.name}"] = _text(value)

    walk(BuildConfig(), "")
    return out


def help_lines() -> list[str]:
    """The key list of ``hiroml-build --help``: ``key = default  meaning``, one line each."""
    d = defaults()
    left = {k: f"{k} = {d.get(k, '')}" for k in MEANINGS}
    width = min(max(len(x) for x in left.values()), 40)  # a longer default shifts its line
    return [f"  {left[k]:<{width}}  {m}" for k, m in MEANINGS.items()]


def markdown_table() -> str:
    """The table of docs/configuration.md."""
    d = defaults()
    rows = [f"| `{k}` | `{d.get(k, '')}` | {m.replace('|', '/')} |" for k, m in MEANINGS.items()]
    return "\n".join(["| key | default | meaning |", "|---|---|---|", *rows])
