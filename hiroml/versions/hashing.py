"""The dataset hash: a hash of the manifest's content."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hiroml._version import __version__
from hiroml.store.atomic import write_text_atomic
from hiroml.vocab import AUDIT, MANIFEST, PATIENTS, STATE_DIR

log = logging.getLogger(__name__)


def _canonical(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float):
        return None if v != v else v  # NaN is no JSON value
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return [_canonical(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _canonical(x) for k, x in sorted(v.items())}
    if isinstance(v, bytes):
        return v.hex()
    return v


#: Manifest columns that are not part of the dataset hash (see the module docstring).
UNHASHED_COLUMNS = frozenset({"shard_sha256"})


def _kept_as_is(t: pa.DataType) -> bool:
    """Whether :func:`_canonical` leaves every value of type ``t`` as it is (integers,
    strings, booleans and lists of them)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_boolean(t)


def _column_values(col: pa.ChunkedArray) -> list[Any]:
    """The canonical values of one column, computed column-wise: a list column without
    nulls is cut from one flat ``tolist`` of its values (a 1,024-value signature per row
    costs a slice, not 1,024 calls)."""
    if not _kept_as_is(col.type):
        return [_canonical(v) for v in col.to_pylist()]
    arr = col.combine_chunks()
    lists = isinstance(arr, pa.ListArray | pa.LargeListArray)
    if lists and arr.null_count == 0 and arr.values.null_count == 0:
        flat = arr.flatten().to_numpy(zero_copy_only=False).tolist()
        offsets = arr.offsets.to_numpy()
        cuts = (offsets - offsets[0]).tolist()
        return [flat[a:b] for a, b in itertools.pairwise(cuts)]
    return arr.to_pylist()


def hash_table(table: Any) -> str:
    """The dataset hash of a manifest as a pyarrow table (see the module docstring): the
    SHA-256 of the column names, then of one canonical JSON line per row, by sample key."""
    columns = sorted(c for c in table.column_names if c not in UNHASHED_COLUMNS)
    values = [_column_values(table.column(c)) for c in columns]
    keys = values[columns.index("sample_key")] if "sample_key" in columns else None
    order = sorted(range(table.num_rows), key=lambda i: str(None if keys is None else keys[i]))
    h = hashlib.sha256()
    h.update(json.dumps(columns).encode())
    for i in order:
        line = json.dumps([v[i] for v in values], allow_nan=False, default=str)
        h.update(b"\n" + line.encode())
    return h.hexdigest()


def dataset_hash(manifest: pd.DataFrame | Path | str) -> str:
    """The dataset hash of a manifest frame (as :func:`hiroml.store.tables.write_outputs` would
    store it) or of a ``manifest.parquet`` file: equal for equal content on any machine."""
    if isinstance(manifest, pd.DataFrame):
        from hiroml.store.tables import _to_table, validate_manifest

        return hash_table(_to_table(validate_manifest(manifest).reset_index(drop=True)))
    return hash_table(pq.read_table(manifest))


#: The tables of a version whose SHA-256 its ``build.json`` records under ``tables``.
TABLE_FILES = (MANIFEST, PATIENTS, AUDIT)


def table_checksums(folder: Path) -> dict[str, str]:
    """``{name: SHA-256 (hex)}`` of each of :data:`TABLE_FILES` present in ``folder``."""
    from hiroml.store.shards import shard_sha256  # the SHA-256 of any file's bytes

    return {n: shard_sha256(folder / n) for n in TABLE_FILES if (folder / n).is_file()}


_HASH_MEMO = Path(STATE_DIR) / "dataset-hash.json"


def remembered_dataset_hash(out: Path, manifest: pd.DataFrame) -> str:
    """:func:`dataset_hash` of ``manifest``, remembered between builds of ``out``.

    A weekly re-run with nothing new assembles the same manifest frame again; its canonical
    hash costs about 1 s per 4,000 samples, the SHA-256 of the frame's pickle under 0.1 s.
    Equal pickles are equal frames, so a remembered hash is reused only for the very frame it
    was computed from; any other frame (or a pickle that differs for an equal frame) is
    hashed anew. The memo (``.hiroml/dataset-hash.json``) holds the last frame only."""
    path = out / _HASH_MEMO
    key = hashlib.sha256(pickle.dumps(manifest, protocol=5)).hexdigest()
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
        if memo.get("frame") == key and memo.get("hiroml") == __version__:
            return str(memo["dataset_hash"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # no memo yet, or an unreadable one: hash the frame
    digest = dataset_hash(manifest)
    memo = {"frame": key, "hiroml": __version__, "dataset_hash": digest}
    try:
        write_text_atomic(path, json.dumps(memo))
    except OSError as e:  # a memo that cannot be written costs time, never correctness
        log.debug("dataset hash memo %s not written: %s", path, e)
    return digest
