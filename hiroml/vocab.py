"""The values hiroml writes into its outputs and reads back, each named once.

Codes are :class:`enum.StrEnum` members: they compare equal to, format as and serialise as
their plain string values, so ``manifest["split"] == Split.TRAIN`` and
``f"{Action.ERROR}"`` work as the strings do. File and folder names are those of the output
contract (``docs/design.md`` section 4); code elsewhere uses these names, never the literals.
"""

from __future__ import annotations

from enum import StrEnum


class Modality(StrEnum):
    """Exam kind, as decided by the batch folder (``CXR-UPDATE-*`` or ``CT-UPDATE-*``); the
    ``modality`` column of the manifest."""

    CXR = "cxr"
    CT = "ct"


class BatchStatus(StrEnum):
    """The status a batch folder's name ends with."""

    COMPLETE = "COMPLETE"
    IN_PROGRESS = "IN-PROGRESS"


class Split(StrEnum):
    """The ``split`` column of the manifest and of patients.parquet. Members are in order
    from nearest train (a group joined across splits takes the first of them)."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class SplitStrategy(StrEnum):
    """How new patient groups are dealt to splits; the ``splits.strategy`` choices."""

    HASH = "hash"
    STRATIFIED = "stratified"
    TEMPORAL = "temporal"


class StratumKey(StrEnum):
    """The ``splits.stratify`` columns hiroml derives from the exams; any other name is a
    label column of the clinical table."""

    AGE_BAND = "age_band"
    SEX = "sex"
    MODALITY = "modality"  # the modalities a patient group has: cxr, ct or both


class Action(StrEnum):
    """What happened to a zip (or a part of it); the ``action`` column of audit.csv."""

    KEPT = "kept"
    DUPLICATE = "duplicate"
    MERGED = "merged"
    SKIPPED = "skipped"
    DROPPED = "dropped"
    ERROR = "error"


class View(StrEnum):
    """A radiograph's view; the ``view`` column of the manifest and the ``cxr.views``
    choices."""

    FRONTAL = "frontal"
    LATERAL = "lateral"
    UNKNOWN = "unknown"


#: The splits, nearest train first.
SPLITS: tuple[Split, ...] = tuple(Split)

# --------------------------------------------------------------------------- output files

#: One row per sample (written last: its presence means the output is complete).
MANIFEST = "manifest.parquet"
#: One row per patient group.
PATIENTS = "patients.parquet"
#: One row per decision.
AUDIT = "audit.csv"
#: The page a researcher opens first.
REPORT_NAME = "report.html"
#: The inclusion/exclusion flow figure, beside the report.
FLOW_NAME = "flow.svg"
#: The dataset card, beside the report.
CARD_NAME = "DATASET.md"
#: The version described in Croissant 1.1 with its Responsible-AI fields, beside the report.
CROISSANT_NAME = "croissant.json"
#: The CLAIM 2024 checklist's data items filled from the build, beside the report.
CLAIM_NAME = "CLAIM.md"
#: What a version records of its build (config, inputs, timings, dataset hash).
BUILD_JSON = "build.json"
#: Present in a version folder that is pinned (protected from pruning).
PIN_FILE = "PINNED"
#: The index of the files hiroml-export writes.
EXPORT_INDEX_NAME = "index.csv"
#: The ground truth hiroml-synth writes beside a synthetic datamart (it names its clinical table).
TRUTH_NAME = "hiroml-synth-truth.json"

# --------------------------------------------------------------------------- output folders

#: The HDF5 shards, shared by every version that names them.
SHARDS_DIR = "shards"
#: One folder per immutable version.
VERSIONS_DIR = "versions"
#: A build's own state (lock, index cache, task records, scratch, run logs).
STATE_DIR = ".hiroml"
#: With ``splits.sequester``: the test split's own output folder (shards, tables, versions).
SEQUESTERED_DIR = "sequestered"
#: With ``splits.sequester``: where conversion tasks write their shards, under STATE_DIR,
#: before the samples are parted between the main and the sequestered folder.
HELD_SHARDS_DIR = ".hiroml/held"
