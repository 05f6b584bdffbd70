"""Typed configuration: one dataclass per config group.

These dataclasses are the schema of the YAML files under ``configs/`` (Hydra structured
configs): a misspelled key or a value of the wrong type is rejected when Hydra composes the
config. Every default is stated here, once: ``BuildConfig()`` built in Python (tests, the
API) and the composed config of ``hiroml-build`` agree by construction, and each value sits
beside its type and its check. The YAML files only pick groups (``executor``,
``experiment``, ``local``) and bind environment variables (``runtime``). ``hiroml.cli.build``
converts the composed config with ``OmegaConf.to_object`` into a :class:`BuildConfig` and passes
each stage its own section. Nothing below the CLI imports Hydra.

``Optional[...]``/``List[...]`` spellings are kept on purpose: OmegaConf reads these
annotations at run time.
"""

# ruff: noqa: UP006, UP035, UP045

import datetime as dt
import math
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hiroml.errors import ConfigError
from hiroml.exams.neardup import DEFAULT_THRESHOLD
from hiroml.vocab import SplitStrategy, StratumKey, View


def _check_choice(section: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{key}={value!r}: choose one of {', '.join(choices)}")


@dataclass
class PathsConfig:
    """Where to read and write. ``datamart: null`` builds the synthetic demo datamart."""

    datamart: Optional[str] = None
    output: str = "hiroml-out"
    remap_sheet: Optional[str] = None  # default: <datamart>/C19_HIRO_LDS_REMAP_PUB-LIST.xlsx
    clinical: Optional[str] = None  # CSV, Parquet or xlsx with one row per patient
    index_db: Optional[str] = None  # default: <output>/.hiroml/index.sqlite
    # where the demo datamart is generated; default <output>-demo-datamart
    demo_dir: Optional[str] = None


@dataclass
class IndexConfig:
    """Zip safety caps, applied before anything is inflated."""

    max_members: int = 20_000
    max_member_bytes: int = 2 * 1024**3
    max_total_bytes: int = 16 * 1024**3
    max_ratio: float = 200.0  # uncompressed / compressed, per member


@dataclass
class LimitsConfig:
    """Sizes checked before any pixel is decoded (:mod:`hiroml.dicom.limits`): a member whose
    (0028,0010) Rows x (0028,0011) Columns exceed ``max_pixels`` in one frame, or whose frames
    together would decode to more than ``max_decoded_bytes`` (or whose Deflated Explicit VR
    Little Endian dataset inflates beyond it), is an error row. A 43 x 43 cm detector at
    0.1 mm is about 18.5 Mpixel: 100 Mpixel leaves five times that. An enhanced CT of 1200
    frames of 512 x 512 16-bit samples decodes to 600 MiB: 1 GiB leaves room for it."""

    max_pixels: int = 100_000_000  # per frame
    max_decoded_bytes: int = 1024**3  # all frames of one member, and an inflated dataset

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_decoded_bytes < 1:
            raise ConfigError(
                f"limits.max_pixels={self.max_pixels}, limits.max_decoded_bytes="
                f"{self.max_decoded_bytes}: give positive numbers"
            )


@dataclass
class IdentityConfig:
    remap_old_column: Optional[str] = None  # header of the old-id column; None: detected
    remap_new_column: Optional[str] = None
    clinical_id_column: str = "patient_id"
    clinical_encounter_column: Optional[str] = "covid_encounter_date"
    enforce_windows: bool = False  # drop exams outside the tip sheet's windows (else report)
    cxr_window_days: int = 365  # radiographs from one year before the encounter
    ct_window_days: int = 31  # CT from one month before


@dataclass
class ExamsConfig:
    ct_split_window_minutes: float = 30.0  # split CT zips closer than this are one exam
    # > 0: identical pixels under more patient ids than this are taken for a common image
    # (blank, template) and link nothing. 0 (default): every identical image links its ids,
    # as a missed remap would; SOP Instance UID links are always made.
    pixel_link_max_patients: int = 0


@dataclass
class CxrConfig:
    enabled: bool = True
    size: List[int] = field(default_factory=lambda: [512, 512])  # (H, W)
    keep_aspect: bool = True  # pad to size instead of stretching
    normalization: str = "voi"  # voi | percentile | minmax
    voi_index: int = 0  # which of several windows / VOI LUTs
    percentiles: List[float] = field(default_factory=lambda: [0.5, 99.5])
    dtype: str = "float16"  # float16 | uint8 | uint16
    views: List[str] = field(default_factory=lambda: [View.FRONTAL.value])  # values of View
    drop_derived: bool = True  # drop ImageType DERIVED/SECONDARY and Modality OT/SC
    keep_for_processing: bool = False  # keep DX "for processing" raw detector images
    fast_jpeg2000: bool = True  # decode JPEG 2000/HTJ2K only at the resolution size needs
    fast_jpeg: bool = True  # baseline 8-bit JPEG: libjpeg-turbo DCT scaling to that resolution

    def __post_init__(self) -> None:
        _check_choice("cxr", "normalization", self.normalization, ("voi", "percentile", "minmax"))
        _check_choice("cxr", "dtype", self.dtype, ("float16", "uint8", "uint16"))
        for v in self.views:
            _check_choice("cxr", "views", v, tuple(View))
        if len(self.size) != 2 or min(self.size) < 8:
            raise ConfigError(f"cxr.size={list(self.size)}: give [height, width], each >= 8")


@dataclass
class CtConfig:
    enabled: bool = True
    series: str = "best"  # best | all
    preferred_kernels: List[str] = field(
        default_factory=lambda: ["LUNG", "B70", "B60", "BONE", "SHARP", "STANDARD", "SOFT", "B30"]
    )
    min_slices: int = 10
    drop_derived: bool = True
    duplicate_policy: str = "split"  # split | reject: same position, different pixels
    spacing_policy: str = "resample"  # resample | reject: gaps or uneven spacing
    tilt_policy: str = "resample"  # resample | reject
    spacing_rtol: float = 0.05  # relative tolerance on slice spacing
    spacing_atol: float = 0.01  # mm
    resample_spacing: Optional[List[float]] = None  # e.g. [1.5, 1.5, 1.5] (x, y, z) mm
    clip_hu: Optional[List[float]] = None  # e.g. [-1024, 3071]
    fill_hu: float = -1024.0  # HU outside the scanned field after tilt correction / resampling
    stitch: str = "auto"  # auto | off: join a scan resumed under a new Series Instance UID
    stitch_max_gap: float = 10.0  # mm between parts beyond one slice step: larger is apart
    stitch_atol_hu: float = 0.0  # overlapping slices are the same when |HU difference| <= this

    def __post_init__(self) -> None:
        _check_choice("ct", "series", self.series, ("best", "all"))
        _check_choice("ct", "stitch", self.stitch, ("auto", "off"))
        for key in ("stitch_max_gap", "stitch_atol_hu"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"ct.{key}={value!r}: give a finite number >= 0")
        _check_choice("ct", "duplicate_policy", self.duplicate_policy, ("split", "reject"))
        _check_choice("ct", "spacing_policy", self.spacing_policy, ("resample", "reject"))
        _check_choice("ct", "tilt_policy", self.tilt_policy, ("resample", "reject"))


@dataclass
class ShardsConfig:
    max_samples: int = 512  # roll over after this many samples ...
    max_bytes: int = 2 * 1024**3  # ... or this many uncompressed bytes
    compression: str = "none"  # none | lz4 | zstd | gzip
    ct_chunks: str = "slice"  # slice | cube: favour whole slices or 3-D patches

    def __post_init__(self) -> None:
        _check_choice("shards", "compression", self.compression, ("none", "lz4", "zstd", "gzip"))
        _check_choice("shards", "ct_chunks", self.ct_chunks, ("slice", "cube"))


@dataclass
class TemporalConfig:
    """``splits.strategy=temporal``: patient groups first seen (their earliest exam) after
    ``test_after`` (YYYY-MM-DD) go to test; or, without it, the latest ``test_fraction`` of
    the groups (``splits.test`` when null). The rest are hashed between train and val."""

    test_after: Optional[str] = None
    test_fraction: Optional[float] = None

    def __post_init__(self) -> None:
        if self.test_after is not None:
            try:
                dt.date.fromisoformat(str(self.test_after))
            except ValueError:
                raise ConfigError(
                    f"splits.temporal.test_after={self.test_after!r}: give a date, YYYY-MM-DD"
                ) from None
            if self.test_fraction is not None:
                raise ConfigError("splits.temporal: give test_after or test_fraction, not both")
        f = self.test_fraction
        if f is not None and not 0.0 <= f < 1.0:
            raise ConfigError(f"splits.temporal.test_fraction={f}: give a fraction in [0, 1)")


@dataclass
class SplitsConfig:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    salt: str = "hiroml"
    strategy: str = "hash"  # hash | stratified | temporal (hiroml.exams.splits)
    # stratified: the columns whose combination is a stratum, a list or one name: age_band,
    # sex, modality (cxr, ct or both) or a label column of the clinical table
    stratify: Any = None
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    test_list: Optional[str] = None  # text file of patient ids always put in test
    # The test split written apart, in <output>/sequestered/ (hiroml.pipeline.sequester): the
    # main folder then holds no test sample, label or patient id.
    sequester: bool = False
    # Radiographs of two patient groups whose signatures' rank correlation reaches this are
    # near duplicates (hiroml.exams.neardup; measured in benchmarks/neardup_threshold.py): reported,
    # and joined into one group when link_near_duplicates. null: no near-duplicate search.
    near_duplicate_threshold: Optional[float] = DEFAULT_THRESHOLD
    link_near_duplicates: bool = True

    @property
    def stratify_columns(self) -> tuple[str, ...]:
        """The ``stratify`` columns, in the order given."""
        given = self.stratify
        names = given.split(",") if isinstance(given, str) else list(given or ())
        return tuple(str(c).strip() for c in names if str(c).strip())

    def __post_init__(self) -> None:
        t = self.near_duplicate_threshold
        if t is not None and not 0.0 < t <= 1.0:
            raise ConfigError(
                f"splits.near_duplicate_threshold={t}: give a rank correlation in (0, 1], "
                "or null to skip the near-duplicate search"
            )
        _check_choice("splits", "strategy", self.strategy, tuple(SplitStrategy))
        if self.strategy == SplitStrategy.STRATIFIED and not self.stratify_columns:
            raise ConfigError(
                "splits.strategy=stratified needs splits.stratify: comma-separated columns of "
                f"{', '.join(StratumKey)} or a clinical label"
            )
        if self.stratify and self.strategy == SplitStrategy.HASH:
            # splits.stratify alone has always meant a stratified split: it still does
            self.strategy = SplitStrategy.STRATIFIED.value
        if self.stratify and self.strategy != SplitStrategy.STRATIFIED:
            raise ConfigError(
                f"splits.stratify={self.stratify!r} is used by splits.strategy=stratified only "
                f"(strategy is {self.strategy!r}): add splits.strategy=stratified"
            )
        total = self.train + self.val + self.test
        if min(self.train, self.val, self.test) < 0 or abs(total - 1.0) > 1e-6:
            raise ConfigError(
                f"splits: train={self.train}, val={self.val}, test={self.test} must be >= 0 "
                f"and add up to 1 (they add up to {total:g})"
            )


@dataclass
class ExecutorConfig:
    kind: str = "local"  # local | dask
    workers: Optional[int] = None  # None: all cores
    scheduler: Optional[str] = None  # dask scheduler address; None starts a LocalCluster
    exams_per_task: int = 64  # radiograph exams converted by one task (one shard)
    ct_exams_per_task: int = 1  # CT exams per task: volumes are large, keep tasks fine

    def __post_init__(self) -> None:
        if self.exams_per_task < 1 or self.ct_exams_per_task < 1:
            raise ConfigError("executor.exams_per_task and ct_exams_per_task must be >= 1")
        _check_choice("executor", "kind", self.kind, ("local", "dask"))

    @property
    def n_workers(self) -> int:
        return self.workers if self.workers else (os.cpu_count() or 1)


@dataclass
class VersionsConfig:
    """Retention of published versions (``<output>/versions/<version>/``): the newest
    ``keep`` versions and every pinned one are kept; a build prunes the rest after publishing,
    with the shards no kept version names."""

    keep: int = 10

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ConfigError(f"versions.keep={self.keep}: keep at least 1 version")


@dataclass
class PublishConfig:
    """What a build must pass before it publishes.

    The shrink guard (:mod:`hiroml.store.guard`): a build that would remove more than
    ``max_removed_fraction`` of the previous samples or patients, unexplained by its audit, is
    refused (exit 4) unless ``allow_shrink=true``.

    The systematic-failure guard (:mod:`hiroml.pipeline.systematic`): a build in which at least
    ``max_error_fraction`` of the images of one modality that it converted, and at least
    ``min_errors`` images, failed with one same error is refused (exit 5)."""

    max_removed_fraction: float = 0.02
    max_error_fraction: float = 0.5
    min_errors: int = 5

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_removed_fraction <= 1.0:
            raise ConfigError(
                f"publish.max_removed_fraction={self.max_removed_fraction}: give a fraction "
                "between 0 and 1 (0.02 refuses a build that loses more than 2%)"
            )
        if not 0.0 < self.max_error_fraction <= 1.0:
            raise ConfigError(
                f"publish.max_error_fraction={self.max_error_fraction}: give a fraction above "
                "0 and at most 1 (0.5 refuses a build when half the images of a modality fail "
                "with one error; 1 only when all of them do)"
            )
        if self.min_errors < 1:
            raise ConfigError(
                f"publish.min_errors={self.min_errors}: give at least 1 (the fewest images one "
                "error must hit before the build is refused)"
            )


@dataclass
class DoctorConfig:
    """The self-check of the numeric paths (:mod:`hiroml.doctor`, ``hiroml-doctor``) that
    ``hiroml-build`` runs before it writes anything: a library that gives other values than
    the golden ones stops the build (exit 2). ``enabled=false`` builds anyway. ``cache``: a
    pass is recorded per environment in the user's cache folder (:mod:`hiroml.doctor.cache`)
    and later builds in the same environment skip the check."""

    enabled: bool = True
    cache: bool = True


@dataclass
class RuntimeConfig:
    """How this process runs, never what a build makes. configs/build.yaml binds each key to an
    environment variable (``HIROML_MALLOC``, ``HIROML_FAULT``): the one place either is read."""

    malloc: str = "keep_freed"  # keep_freed | default: glibc's thresholds (pipeline.allocator)
    fault: Optional[str] = None  # <point>[:N], kill_exam:<key>, enospc:<where> (pipeline.faults)

    def __post_init__(self) -> None:
        _check_choice("runtime", "malloc", self.malloc, ("keep_freed", "default"))
        if self.fault is not None:
            from hiroml.pipeline.faults import check

            try:
                check(self.fault)
            except ValueError as e:
                raise ConfigError(f"runtime.fault={self.fault!r}: {e}") from None


@dataclass
class BuildConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    exams: ExamsConfig = field(default_factory=ExamsConfig)
    cxr: CxrConfig = field(default_factory=CxrConfig)
    ct: CtConfig = field(default_factory=CtConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    splits: SplitsConfig = field(default_factory=SplitsConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    versions: VersionsConfig = field(default_factory=VersionsConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    doctor: DoctorConfig = field(default_factory=DoctorConfig)
    strict: bool = False  # any per-exam error fails the build
    demo_size: str = "demo"  # tiny | demo | bench: the synthetic datamart when datamart is null
    seed: int = 0
    progress: bool = True
    allow_shrink: bool = False  # publish even when the shrink guard would refuse
    wait_for_lock: bool = False  # wait for another build of the same output instead of exit 3
    # inputs (zips, sheets, config, hiroml version) those of the latest version's build and the
    # output untouched: answer at once (hiroml.pipeline.unchanged); false: build anyway
    skip_unchanged: bool = True
