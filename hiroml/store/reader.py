"""The read side of an output folder, the one every consumer uses: which version's tables,
the tables themselves, their cells as plain Python, and the stored arrays.

Tables (``docs/design.md`` section 4): :func:`read_manifest` and :func:`read_patients` read
the Parquet files as pandas gives them (list columns as numpy arrays, missing values as
``None``/NaN/NaT); :func:`read_audit` reads audit.csv as text only, an empty field as ``""``
(never NaN: a reason that reads ``NA`` stays ``NA``), each cell as it was before
:mod:`hiroml.store.csvcells` escaped it for spreadsheets. A folder is a version folder or, for
an output without versions, the output itself (:func:`tables_dir`).

Cells: :func:`is_missing`, :func:`cell_str`, :func:`cell_list`, :func:`cell_strings` and
:func:`cell_plain` turn a pandas, numpy or pyarrow cell into plain Python, the same way for
the report, the diff of two versions, the export, the Dataset and the shrink guard.

CSV: :func:`escape_frame` for a CSV written from input-derived text (what ``read_audit``
undoes), from :mod:`hiroml.store.csvcells`.

Arrays: the shard readers of :mod:`hiroml.store.shards`, the float16/float32 casts of
:mod:`hiroml.store.halfcast` and :func:`array_to_sitk`; :func:`check_shard_file` and
:func:`check_ref`, a reader's checks that a shard is the one the manifest names and that a
sample's place in it lies within the file.
``hiroml.data`` imports nothing else of hiroml but this module (and ``vocab``, ``errors``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hiroml.errors import ShardError
from hiroml.store.csvcells import escape_frame, unescape_frame
from hiroml.store.halfcast import to_float16, to_float32
from hiroml.store.shards import (
    SampleRef,
    open_shard,
    read_into,
    read_meta,
    read_sample,
    region_of,
    sample_refs,
    shard_sha256,
    stored_offset,
)
from hiroml.store.tables import OWN_COLUMNS
from hiroml.vocab import AUDIT, MANIFEST, PATIENTS

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = [
    "OWN_COLUMNS",
    "SampleRef",
    "array_to_sitk",
    "cell_list",
    "cell_plain",
    "cell_str",
    "cell_strings",
    "check_ref",
    "check_shard_file",
    "escape_frame",
    "is_missing",
    "locate",
    "open_shard",
    "read_audit",
    "read_into",
    "read_manifest",
    "read_meta",
    "read_patients",
    "read_sample",
    "region_of",
    "sample_refs",
    "tables_dir",
    "to_float16",
    "to_float32",
]


# --------------------------------------------------------------------------- tables


def locate(path: Path | str) -> tuple[Path, str | None]:
    """The output folder a path names and the version it names
    (:func:`hiroml.versions.listing.locate`)."""
    from hiroml.versions.listing import locate as find

    return find(path)


def tables_dir(out: Path | str, version: str | int | None = None) -> tuple[Path, str | None]:
    """The folder holding the tables of ``version`` of an output (None: the latest) and the
    version's name (:func:`hiroml.versions.listing.tables_dir`)."""
    # imported here: hiroml.versions, which reads manifests through this module, is a package
    # whose __init__ imports all of its modules
    from hiroml.versions.listing import tables_dir as find

    return find(out, version)


def read_manifest(folder: Path | str, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``manifest.parquet`` of a version folder (or an output folder without versions);
    only ``columns`` when given."""
    return pd.read_parquet(Path(folder) / MANIFEST, columns=list(columns) if columns else None)


def read_patients(folder: Path | str) -> pd.DataFrame:
    """``patients.parquet`` of a version folder (or an output folder without versions)."""
    return pd.read_parquet(Path(folder) / PATIENTS)


def read_audit(folder: Path | str) -> pd.DataFrame:
    """``audit.csv`` of a version folder (or an output folder without versions): every
    column text, an empty field ``""``."""
    audit = pd.read_csv(Path(folder) / AUDIT, dtype=str, keep_default_na=False)
    return unescape_frame(audit)  # the texts as they were before escaping for spreadsheets


# --------------------------------------------------------------------------- cells


def is_missing(v: Any) -> bool:
    """``None``, ``""``, NaN or NaT (a list or array cell is never missing)."""
    if v is None:
        return True
    if isinstance(v, str):
        return v == ""
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # lists and arrays
        return False


def cell_str(v: Any) -> str:
    """A text cell: ``""`` for ``None`` or NaN, else ``str(v)``."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return str(v)


def cell_list(v: Any) -> list[Any]:
    """A list cell (list, tuple, numpy array, or a lone string) as a Python list of plain
    values; ``[]`` when missing."""
    if is_missing(v):
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, Iterable):
        return [x.item() if isinstance(x, np.generic) else x for x in v]
    return [v]


def cell_strings(v: Any) -> list[str]:
    """The non-empty strings of a cell that holds a list (or array) of them, or one."""
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    try:
        return [str(x) for x in v if isinstance(x, str) and x]
    except TypeError:
        return []


def cell_plain(v: Any) -> Any:
    """A cell as a JSON value: arrays and lists as lists (element by element), numpy scalars
    as Python ones, timestamps as ISO 8601 text, NaN as ``None``."""
    if isinstance(v, np.ndarray | list | tuple):
        return [cell_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if v is None or (isinstance(v, float) and v != v):
        return None
    return v


# --------------------------------------------------------------------------- arrays


def array_to_sitk(
    array: np.ndarray,
    *,
    spacing_xyz: Sequence[float],
    origin_xyz: Sequence[float],
    direction: Sequence[float],
) -> sitk.Image:
    """A stored CT volume as a ``SimpleITK.Image`` with its geometry
    (:func:`hiroml.ct.volume.array_to_sitk`; SimpleITK is imported on first use)."""
    from hiroml.ct.volume import array_to_sitk as to_image

    return to_image(array, spacing_xyz=spacing_xyz, origin_xyz=origin_xyz, direction=direction)


def check_shard_file(path: Path | str, expected: str) -> None:
    """Raise :class:`~hiroml.errors.ShardError` naming the shard when the SHA-256 of its
    bytes is not ``expected`` (the manifest's ``shard_sha256``): a flipped byte anywhere in
    it, pixels or index. Reads the whole file: about 500 MiB/s measured on a busy 2-core
    machine with SHA instructions (``hashlib.file_digest``)."""
    found = shard_sha256(path)
    if found != expected:
        raise ShardError(
            f"{path}: the shard's SHA-256 is {found[:16]}..., the manifest's shard_sha256 "
            f"{expected[:16]}...: the file was altered or damaged since it was written "
            "(hiroml-verify checks every shard)"
        )


def check_ref(f: Any, ref: SampleRef, key: str, shape: tuple[int, ...]) -> None:
    """Raise :class:`~hiroml.errors.ShardError` naming the shard and ``key`` when the sample's
    place in the open shard ``f`` does not hold: its row beyond its dataset, its byte run
    (``/offsets``) beyond the file or other than where HDF5 puts it, or a stored shape other
    than ``shape`` (the manifest's)."""
    where = f"{f.filename}: sample {key!r}"
    try:
        ds = f[ref.array]
    except KeyError:
        raise ShardError(f"{where}: no dataset {ref.array}") from None
    stored = tuple(ds.shape) if ref.row is None else tuple(ds.shape[1:])
    if ref.row is not None and not 0 <= ref.row < ds.shape[0]:
        raise ShardError(f"{where}: row {ref.row} of {ref.array}, which holds {ds.shape[0]}")
    if shape and stored != tuple(shape):
        raise ShardError(f"{where}: stored shape {stored}, the manifest's {tuple(shape)}")
    if ref.offset < 0:
        return
    nbytes = int(np.prod(stored)) * ref.dtype.itemsize
    file_size = int(f.id.get_filesize())
    if ref.offset + nbytes > file_size:
        raise ShardError(
            f"{where}: /offsets puts its {nbytes} bytes at {ref.offset}, past the end of the "
            f"file ({file_size} bytes)"
        )
    if stored_offset(f, ref) != ref.offset:
        raise ShardError(
            f"{where}: /offsets says byte {ref.offset}, HDF5 keeps it at {stored_offset(f, ref)}"
        )
