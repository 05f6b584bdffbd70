"""A version's large manifest columns, kept as an Arrow file for the next build's diff.

The version diff (:mod:`hiroml.versions.changes`) compares every sample's values in the
previous version's manifest with the new one's. The near-duplicate signatures, 1,024 values
a sample, are most of a manifest: decoding them from parquet takes about 80 ms and 40 MB of
decoding buffers at 6,300 samples, and grows with the dataset. So a build that publishes a
version also writes its large columns (:func:`large_columns`) into
``<out>/.hiroml/columns/<SHA-256 of the manifest file>.arrow`` (Arrow IPC, uncompressed, one
record batch). The next build's diff maps that file (no decode, and its pages are the file's,
not the heap's) when the previous manifest's bytes have that SHA-256 and the file holds
those columns with the manifest's types and number of rows (:func:`find`). Otherwise (the
file is missing, damaged, or written for other bytes) the diff decodes the parquet: the
counts are the same either way.

The two newest files are kept: the new version's, and the one before it in case that
publish is withdrawn. A file that cannot be written costs the next diff its decode, nothing
else (logged).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiroml.store.atomic import write_atomic
from hiroml.store.shards import shard_sha256
from hiroml.versions import columns as versions_columns
from hiroml.vocab import STATE_DIR

log = logging.getLogger(__name__)

KEPT_DIR = "columns"
_SUFFIX = ".arrow"
KEEP_FILES = 2


def kept_dir(out: Path) -> Path:
    """Where an output keeps the large columns of its latest manifests."""
    return Path(out) / STATE_DIR / KEPT_DIR


def large_columns(table: pa.Table) -> list[str]:
    """The list columns of ``table`` with more values in their lists than
    :data:`hiroml.versions.columns.BULK_VALUES` (the signatures, past about a thousand
    samples): those the diff would decode in batches."""
    names = []
    for name, col in zip(table.column_names, table.columns, strict=True):
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            continue
        values = pc.sum(pc.list_value_length(col)).as_py() or 0
        if values > versions_columns.BULK_VALUES:
            names.append(name)
    return names


def keep(folder: Path, manifest_sha256: str, table: pa.Table) -> Path | None:
    """Write the :func:`large_columns` of ``table`` (the manifest whose file has SHA-256
    ``manifest_sha256``) into ``folder`` as one record batch, atomically; then delete all
    but the :data:`KEEP_FILES` newest files there. The path written, or None (no large
    column, or the write failed: logged)."""
    names = large_columns(table)
    if not names:
        return None
    path = Path(folder) / f"{manifest_sha256}{_SUFFIX}"
    # one batch of the columns as they are (a column of one chunk is not copied)
    batch = pa.record_batch([versions_columns.one_array(table.column(n)) for n in names], names)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as w:
                w.write_batch(batch)

        write_atomic(path, write)
        _prune(path.parent)
    except OSError as e:
        log.warning("the manifest's large columns not kept (%s): the next diff decodes them", e)
        return None
    return path


def _prune(folder: Path) -> None:
    """Delete all but the :data:`KEEP_FILES` newest kept files of ``folder``."""
    files = sorted(folder.glob(f"*{_SUFFIX}"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in files[KEEP_FILES:]:
        old.unlink(missing_ok=True)


def find(folder: Path, manifest: Path, file: pq.ParquetFile) -> dict[str, pa.ChunkedArray]:
    """The columns kept in ``folder`` for the manifest file ``manifest`` (opened as
    ``file``), memory-mapped: those with the manifest's type and number of rows. Empty when
    no file was kept for these bytes, or it cannot be read (logged)."""
    path = Path(folder) / f"{shard_sha256(manifest)}{_SUFFIX}"
    if not path.is_file():
        return {}
    try:
        kept = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        log.warning("kept columns %s unreadable (%s): the diff decodes the manifest", path, e)
        return {}
    if kept.num_rows != file.metadata.num_rows:
        return {}
    schema = file.schema_arrow
    return {
        name: col
        for name, col in zip(kept.column_names, kept.columns, strict=True)
        if name in schema.names and col.type == schema.field(name).type
    }
