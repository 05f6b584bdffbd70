"""Immutable versions of an output folder (docs/design.md section 4b): listing, the
dataset hash, diffs, pins, pruning and publishing, one module each.

The names of each module are re-exported here (``hiroml.versions.list_versions``).
"""

from __future__ import annotations

from hiroml.errors import EXIT_LOCKED
from hiroml.versions.changes import (
    DecisionChange,
    SplitMove,
    VersionDiff,
    changes_html,
    diff,
    diff_tables,
)
from hiroml.versions.hashing import (
    UNHASHED_COLUMNS,
    dataset_hash,
    hash_table,
    remembered_dataset_hash,
)
from hiroml.versions.listing import (
    SPLIT_MOVED,
    Version,
    VersionError,
    find_version,
    list_versions,
    tables_dir,
    versions_dir,
)
from hiroml.versions.pins import pin, unpin
from hiroml.versions.pruning import Pruned, prune
from hiroml.versions.publishing import Published, WriteReport, publish, update_root
from hiroml.vocab import BUILD_JSON, MANIFEST, PIN_FILE, VERSIONS_DIR
from hiroml.vocab import SPLITS as SPLIT_ORDER

__all__ = [
    "BUILD_JSON",
    "EXIT_LOCKED",
    "MANIFEST",
    "PIN_FILE",
    "SPLIT_MOVED",
    "SPLIT_ORDER",
    "UNHASHED_COLUMNS",
    "VERSIONS_DIR",
    "DecisionChange",
    "Pruned",
    "Published",
    "SplitMove",
    "Version",
    "VersionDiff",
    "VersionError",
    "WriteReport",
    "changes_html",
    "dataset_hash",
    "diff",
    "diff_tables",
    "find_version",
    "hash_table",
    "list_versions",
    "pin",
    "prune",
    "publish",
    "remembered_dataset_hash",
    "tables_dir",
    "unpin",
    "update_root",
    "versions_dir",
]
