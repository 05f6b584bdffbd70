"""Immutable versions of an output folder (docs/design.md section 4b).

Layout::

    <out>/shards/*.h5              immutable, shared by every version that names them
    <out>/versions/<version>/      manifest.parquet, patients.parquet, audit.csv, report.html,
                                   build.json (and PINNED when pinned)
    <out>/manifest.parquet ...     copies of the latest version's tables

``<version>`` is ``NNNN-<first 8 hex digits of the dataset hash>``: a sequence number (so
names sort in publishing order) and the content. The dataset hash is the SHA-256 of the
manifest in a canonical form (rows sorted by ``sample_key``, columns by name; each column's
values in canonical little-endian bytes: :func:`hash_table`, scheme 2, recorded in
``build.json`` as ``dataset_hash_scheme``; versions without it were hashed by scheme 1, each
row as the canonical JSON of its parquet values), so the same inputs and config give the same
hash on any machine and after any build history: it holds no absolute path and no timing.
The ``shard_sha256`` column is left out of it: a shard file's bytes depend on how the HDF5
library laid it out (another library version, or a Dask worker, may lay out identical
datasets differently), while what the shard holds is in ``data_hash``. Nor does it hold the
environment (library versions, decoders) that ``build.json`` records beside it: :func:`diff`
names an environment change.

Publishing (:func:`publish`) is crash-safe at every point:

1. the version is written into ``versions/.<version>.tmp/`` and renamed into place once
   complete (a reader lists only complete, renamed folders);
2. the root tables are replaced by copies of the version's, each atomically, manifest last;
3. versions beyond ``versions.keep`` that are not pinned are removed (renamed to a hidden
   name, then deleted), then the shards and task records no kept version needs.

A build whose dataset hash and shard checksums equal the latest version's publishes
nothing; it only repairs the root tables if an interrupted publish left them behind, and
prunes. (Shards rewritten with other bytes but the same content publish a new version, so
that every version's checksums match its files.)

The modules: listing.py (versions, find, tables_dir), hashing.py (the dataset hash),
changes.py (diffs, as text and HTML), columns.py (the diff's column-wise counts),
keptcolumns.py (the latest manifests' signatures kept under ``<out>/.hiroml/columns`` for
the next diff), pins.py, pruning.py and publishing.py; their public names are re-exported
here (``hiroml.versions.list_versions``).
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
    DATASET_HASH_SCHEME,
    UNHASHED_COLUMNS,
    dataset_hash,
    hash_table,
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
    "DATASET_HASH_SCHEME",
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
    "tables_dir",
    "unpin",
    "update_root",
    "versions_dir",
]
