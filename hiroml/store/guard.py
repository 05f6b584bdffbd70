"""The shrink guard: a wrong, empty or half-mounted datamart must never wipe a dataset.

Before a build publishes, its new manifest is compared with the previous one (the root
``manifest.parquet``, which always shows the latest version). A previous sample that is not
in the new manifest is *removed*; it is *explained* when

1. the same image is still there under another key (a remap or a merge changed its exam
   key): the same radiograph SOP Instance UID (0008,0018), the same CT Series Instance UID
   (0020,000E) or one of its SOP Instance UIDs, or the same stored pixels (``data_hash``); or
2. this build's audit explains it: one of its zips is now a ``duplicate``, ``merged`` or
   ``dropped`` row (and none of its zips has an ``error`` row: a share that fails to read
   gives errors, not explanations).

The build is refused (:class:`~hiroml.errors.ShrinkRefusedError`, exit 4) when the
unexplained removals exceed ``publish.max_removed_fraction`` of the previous samples or of
the previous patients; nothing is then published and nothing of the previous output deleted
(the driver deletes the refused build's own new shards). ``allow_shrink=true``
publishes anyway, and the build summary (so the report) says what was allowed. Batch folders
read last time (the previous manifest's ``batch``/``batches`` columns) that are gone now are
named in every case.

:func:`compare` is pure; :func:`check_shrink` reads the previous manifest and decides.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiroml.config import BuildConfig
from hiroml.errors import ShrinkRefusedError
from hiroml.store.reader import cell_strings
from hiroml.vocab import MANIFEST, Action

log = logging.getLogger(__name__)

#: Audit actions that explain why a sample of the previous build is gone.
EXPLAINING_ACTIONS = frozenset({Action.DUPLICATE, Action.MERGED, Action.DROPPED})
#: How many unexplained sample keys a refusal names.
SHOWN = 3
#: The previous manifest's columns :func:`compare` reads (a missing one is taken as empty):
#: the guard reads these, not the whole table (signatures, geometry, labels).
PREVIOUS_COLUMNS = (
    "sample_key",
    "modality",
    "patient_id",
    "sop_uid",
    "sop_uids",
    "series_uid",
    "data_hash",
    "source_zips",
    "batch",
    "batches",
)


@dataclass(frozen=True, slots=True)
class ShrinkCheck:
    """The new manifest against the previous one (counts of samples and patient ids)."""

    previous_samples: int
    previous_patients: int
    removed_samples: int  # previous sample keys absent from the new manifest
    unexplained_samples: int  # ... of which neither still present nor explained by the audit
    unexplained_patients: int  # previous patients left with no sample, for an unexplained loss
    missing_batches: tuple[str, ...]  # read last time, not read now
    examples: tuple[str, ...]  # the first unexplained sample keys

    @property
    def explained_samples(self) -> int:
        return self.removed_samples - self.unexplained_samples

    @property
    def sample_fraction(self) -> float:
        return self.unexplained_samples / self.previous_samples if self.previous_samples else 0.0

    @property
    def patient_fraction(self) -> float:
        return self.unexplained_patients / self.previous_patients if self.previous_patients else 0.0

    def exceeds(self, max_removed_fraction: float) -> bool:
        return max(self.sample_fraction, self.patient_fraction) > max_removed_fraction

    def describe(self) -> str:
        text = (
            f"this build lacks {self.unexplained_samples} of {self.previous_samples} previous "
            f"samples ({self.sample_fraction:.1%}) and {self.unexplained_patients} of "
            f"{self.previous_patients} previous patients ({self.patient_fraction:.1%}) with no "
            f"explanation in the audit ({self.explained_samples} more removals are explained: "
            "duplicates, merges, drops, or the same image under a new key)"
        )
        if self.missing_batches:
            text += (
                f"; batch folders read last time and gone now: {', '.join(self.missing_batches)}"
            )
        if self.examples:
            text += f"; e.g. {', '.join(self.examples)}"
        return text

    def summary(self, allowed_by: str) -> dict[str, Any]:
        """The ``shrink`` entry of the build summary (shown in the report)."""
        return {
            "allowed_by": allowed_by,
            "previous_samples": self.previous_samples,
            "removed_samples": self.removed_samples,
            "unexplained_samples": self.unexplained_samples,
            "previous_patients": self.previous_patients,
            "unexplained_patients": self.unexplained_patients,
            "missing_batches": list(self.missing_batches),
        }


def _column(df: pd.DataFrame, name: str) -> list[Any]:
    return df[name].tolist() if name in df.columns else [None] * len(df)


def _flat(df: pd.DataFrame, *names: str) -> set[str]:
    """The non-empty texts of the columns ``names``: text cells, and the text elements of
    list cells (column-wise where a column is text, or lists of text)."""
    found: set[str] = set()
    for name in names:
        if name in df.columns:
            found |= _texts(df[name])
    found.discard("")
    return found


def _texts(values: pd.Series) -> set[str]:
    if isinstance(values.dtype, pd.StringDtype):
        return set(pc.unique(_arrow(values).drop_null()).to_pylist())
    flat = values.explode().dropna()  # list cells to their elements, text cells as they are
    if pd.api.types.infer_dtype(flat, skipna=True) in ("string", "empty"):
        return set(flat.unique().tolist())
    found: set[str] = set()
    for cell in values.tolist():  # other cells: as cell_strings reads them
        if isinstance(cell, str):
            found.add(cell)
        else:
            found.update(cell_strings(cell))
    return found


def compare(
    previous: pd.DataFrame | pa.Table,
    manifest: pd.DataFrame,
    audit: pd.DataFrame,
    batches_read: Iterable[str],
) -> ShrinkCheck:
    """Compare the previous manifest with the new one, this build's audit and the batch
    folders it read (pure). See the module docstring for what counts as explained. The
    samples gone are found column-wise; only they are looked at one by one. ``previous``
    is a frame, or the Arrow table :func:`read_previous` reads: then only the rows gone
    become pandas rows (its list columns would otherwise be a Python object per cell)."""
    new_keys = manifest["sample_key"] if "sample_key" in manifest.columns else pd.Series([])
    if isinstance(previous, pa.Table):
        gone = _gone_rows(previous, new_keys)
        before_batches = _flat_arrow(previous, "batch", "batches")
        patients = _flat_arrow(previous, "patient_id")
    else:
        if "sample_key" in previous.columns:
            gone = previous.loc[~_is_in(previous["sample_key"], new_keys)]
        else:
            gone = previous  # no key: nothing of it is known to be kept
        before_batches = _flat(previous, "batch", "batches")
        patients = _flat(previous, "patient_id")
    unexplained, lost_patients = _unexplained(gone, manifest, audit) if len(gone) else ([], set())
    return ShrinkCheck(
        previous_samples=len(previous),
        previous_patients=len(patients),
        removed_samples=len(gone),
        unexplained_samples=len(unexplained),
        unexplained_patients=len(lost_patients),
        missing_batches=tuple(sorted(before_batches - set(batches_read))),
        examples=tuple(sorted(unexplained)[:SHOWN]),
    )


def _gone_rows(previous: pa.Table, new_keys: pd.Series) -> pd.DataFrame:
    """The rows of ``previous`` whose ``sample_key`` is not one of ``new_keys``, as pandas
    rows (every row where it has no key: nothing of it is known to be kept)."""
    if "sample_key" not in previous.column_names:
        return previous.to_pandas()
    texts = new_keys if isinstance(new_keys.dtype, pd.StringDtype) else new_keys.astype("string")
    keys = _arrow(texts)
    kept = pc.is_in(previous.column("sample_key").cast(pa.string()), value_set=keys)
    return previous.filter(pc.invert(pc.fill_null(kept, False))).to_pandas()


def _flat_arrow(table: pa.Table, *names: str) -> set[str]:
    """:func:`_flat` of an Arrow table: the non-empty texts of the columns ``names``, and
    of the elements of their lists."""
    found: set[str] = set()
    for name in names:
        if name not in table.column_names:
            continue
        col = table.column(name)
        while pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            col = pc.list_flatten(col)
        found.update(pc.unique(col.cast(pa.string())).drop_null().to_pylist())
    found.discard("")
    return found


def _is_in(values: pd.Series, others: pd.Series) -> np.ndarray:
    """Whether each of ``values`` is one of ``others``, as :meth:`pandas.Series.isin`; text
    columns through Arrow (pandas hashes each text as a Python object: 60 times slower)."""
    if isinstance(values.dtype, pd.StringDtype) and isinstance(others.dtype, pd.StringDtype):
        found = pc.is_in(_arrow(values), value_set=_arrow(others))
        return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)
    return values.isin(others).to_numpy()


def _arrow(values: pd.Series) -> pa.Array:
    arr = pa.array(values.array)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _unexplained(
    gone: pd.DataFrame, manifest: pd.DataFrame, audit: pd.DataFrame
) -> tuple[list[str], set[str]]:
    """The sample keys of ``gone`` (previous rows not in ``manifest``) that are neither still
    there under another key nor explained by ``audit``, and the patients they leave with no
    sample."""
    new_sops = _flat(manifest, "sop_uid", "sop_uids")
    new_series = _flat(manifest.loc[_is_ct(manifest)], "series_uid")
    new_hashes = _flat(manifest, "data_hash")
    new_patients = _flat(manifest, "patient_id", "source_patient_id")

    actions: dict[str, set[str]] = {}
    for z, a in zip(_column(audit, "zip"), _column(audit, "action"), strict=True):
        if isinstance(z, str) and z:
            actions.setdefault(z, set()).add(str(a))

    def still_there(row: Any, ct: bool) -> bool:
        if ct and str(row.get("series_uid") or "") in new_series:
            return True
        sops = set(cell_strings(row.get("sop_uid"))) | set(cell_strings(row.get("sop_uids")))
        return bool(sops & new_sops) or str(row.get("data_hash") or "") in new_hashes

    def audit_explains(row: Any) -> bool:
        seen: set[str] = set()
        for z in cell_strings(row.get("source_zips")):
            seen |= actions.get(z, set())
        return bool(seen & EXPLAINING_ACTIONS) and Action.ERROR not in seen

    unexplained: list[str] = []
    lost_patients: set[str] = set()
    for row, ct in zip(gone.to_dict("records"), _is_ct(gone), strict=True):
        if still_there(row, bool(ct)) or audit_explains(row):
            continue
        unexplained.append(str(row.get("sample_key")))
        pid = str(row.get("patient_id") or "")
        if pid and pid not in new_patients:
            lost_patients.add(pid)
    return unexplained, lost_patients


def _is_ct(df: pd.DataFrame) -> pd.Series:
    if "modality" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["modality"].astype(str) == "ct"


def read_previous(out: Path) -> pa.Table | None:
    """The previous build's manifest (the root ``manifest.parquet``), its
    :data:`PREVIOUS_COLUMNS` only, as an Arrow table; None when there is none or it cannot
    be read (then there is nothing the guard could protect)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        names = set(pq.read_schema(path).names)
        columns = [c for c in PREVIOUS_COLUMNS if c in names]
        return pq.read_table(path, columns=columns, use_threads=False)
    except Exception as e:  # pyarrow raises several types for a damaged file
        log.warning("could not read the previous manifest %s (%s): no shrink check", path, e)
        return None


def check_shrink(
    out: Path,
    manifest: pd.DataFrame,
    audit: pd.DataFrame,
    batches_read: Iterable[str],
    cfg: BuildConfig,
) -> dict[str, Any]:
    """Refuse to publish a build that loses too much of the previous one.

    Returns the ``shrink`` entry of the build summary: empty when nothing was lost without
    an explanation and no batch folder went missing, else what was published anyway and
    why (within ``publish.max_removed_fraction``, or ``allow_shrink=true``). Raises
    :class:`ShrinkRefusedError` naming the numbers, the missing batch folders and the
    override when the fraction is exceeded and ``allow_shrink`` is false.
    """
    previous = read_previous(out)
    if previous is None or not previous.num_rows:
        return {}
    check = compare(previous, manifest, audit, batches_read)
    limit = cfg.publish.max_removed_fraction
    if check.missing_batches:
        log.warning(
            "batch folders read by the previous build are gone from the datamart: %s",
            ", ".join(check.missing_batches),
        )
    if not check.unexplained_samples and not check.missing_batches:
        return {}
    if check.exceeds(limit):
        if not cfg.allow_shrink:
            raise ShrinkRefusedError(
                f"refusing to publish into {out}: {check.describe()}. That is more than "
                f"publish.max_removed_fraction={limit:g}. Nothing was published: the previous "
                "manifest, tables, report and shards are left as they were (this build's new "
                "shards are deleted). Check "
                "paths.datamart (a wrong folder, or a share not fully mounted); if the removal "
                "is intended, run again with allow_shrink=true (or raise "
                "publish.max_removed_fraction)"
            )
        log.warning("allow_shrink=true: publishing anyway: %s", check.describe())
        return check.summary("allow_shrink=true")
    if check.unexplained_samples:
        log.warning("publishing a smaller dataset: %s", check.describe())
    return check.summary(f"within publish.max_removed_fraction={limit:g}")
