"""The PyTorch Dataset over a hiroml output folder.

HDF5 files are opened lazily, in the process that reads: a Dataset pickled into a spawned
DataLoader worker carries no handles, and a forked worker sees that its process id changed
and drops (without closing) the handles it inherited, the classic h5py + fork pitfall.
At most :data:`MAX_OPEN` shard files are kept open per process (least recently used).
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch
from h5py import h5d
from torch.utils.data import Dataset

from hiroml.data import Sample
from hiroml.errors import ArgumentError, HiromlError
from hiroml.store.reader import (
    SampleRef,
    cell_str,
    check_ref,
    check_shard_file,
    locate,
    open_shard,
    read_into,
    read_manifest,
    read_meta,
    region_of,
    sample_refs,
    tables_dir,
    to_float16,
    to_float32,
)
from hiroml.vocab import MANIFEST, SEQUESTERED_DIR, Split

log = logging.getLogger(__name__)

MAX_OPEN = 64
# manifest columns copied into ``meta`` as strings ("" when missing)
META_STR = (
    "patient_group", "source_patient_id", "exam_key", "hiro_id", "description", "batch",
    "series_uid", "sop_uid", "view", "sex", "shard",
)  # fmt: skip
META_FLOAT = ("age_years", "days_from_encounter")
CT_GEOMETRY = ("spacing_xyz", "origin_xyz", "direction")

# a located sample: its open shard, byte offset or None, shape, dtype, where it lies
_Where = tuple["_OpenShard", int | None, tuple[int, ...], np.dtype[Any], SampleRef]


class _OpenShard:
    """One shard opened in this process: the h5py file, where each sample lies in it
    (either shard format), the datasets opened so far and a raw read-only descriptor for
    direct reads of samples stored as one unfiltered run of bytes."""

    def __init__(self, path: str) -> None:
        self.file = open_shard(path)
        self.refs = sample_refs(self.file)
        self.arrays: dict[str, h5d.DatasetID] = {}
        self.fd = os.open(path, os.O_RDONLY)

    def array_id(self, ref: SampleRef) -> h5d.DatasetID:
        """The dataset holding a sample (a format-2 dataset holds many, one per row)."""
        dsid = self.arrays.get(ref.array)
        if dsid is None:
            try:
                dsid = self.arrays[ref.array] = h5d.open(self.file.id, ref.array.encode())
            except KeyError:
                raise HiromlError(f"{self.file.filename}: no dataset {ref.array}") from None
        return dsid

    def array(self, ref: SampleRef) -> h5py.Dataset:
        return h5py.Dataset(self.array_id(ref))

    def close(self) -> None:
        os.close(self.fd)
        self.file.close()


def _float(v: Any) -> float:
    try:
        return float("nan") if v is None or pd.isna(v) else float(v)
    except (TypeError, ValueError):
        return float("nan")


class _Chain:
    """``then(first(sample))``; a class, not a lambda, so that it pickles into workers."""

    def __init__(self, first: Callable[[Sample], Sample], then: Callable[[Sample], Sample]) -> None:
        self.first, self.then = first, then

    def __call__(self, sample: Sample) -> Sample:
        return self.then(self.first(sample))


def _chain(
    first: Callable[[Sample], Sample], then: Callable[[Sample], Sample] | None
) -> Callable[[Sample], Sample]:
    return first if then is None else _Chain(first, then)


def _say_if_sequestered(out_dir: Path, split: str | None, n: int) -> None:
    """Warn, naming the folder to open, when the ``n`` samples found of ``split`` are none
    because the test split of ``out_dir`` is sequestered."""
    held = out_dir / SEQUESTERED_DIR
    if split == Split.TEST and not n and (held / MANIFEST).is_file():
        log.warning(
            "%s: the test split is sequestered and this folder holds none of it: the "
            "evaluator opens HiromlDataset(%r, split='test')",
            out_dir,
            str(held),
        )


class HiromlDataset(Dataset[Sample]):
    """Samples of one split and modality of a hiroml output folder, sorted by sample key.

    A sample is a dict: ``image`` float32 tensor, CXR (1, H, W) in [0, 1] (integer storage
    multiplied by its ``scale``), CT (1, D, H, W) in HU, numpy/torch axis order (z, y, x);
    ``sample_key``, ``patient_id`` (str); ``meta``, a dict of str and float values
    (``exam_time`` as ISO text, ``age_years`` NaN when unknown); for CT also ``spacing``,
    ``origin`` (mm) and ``direction`` (9 numbers) as float64 tensors in SimpleITK (x, y, z)
    order; ``label`` (float32 tensor) when ``label`` names a manifest column.
    ``dtype=torch.float16`` (or bfloat16) returns half-size images: with DataLoader workers
    the batches cross processes twice as fast (cast with ``.float()`` on the GPU); the default
    is float32. ``transform`` is applied to the whole sample dict. ``default_collate``
    batches samples of equal image shape. ``split=None`` takes every split.
    ``monai=True`` (``pip install "hiroml[monai]"``) makes ``image`` a MONAI ``MetaTensor``
    with its RAS affine before ``transform`` runs (CT then (1, x, y, z), MONAI's layout; see
    :mod:`hiroml.data.monai`), so MONAI's dictionary transforms work in physical space.

    Works with any sampler (shuffling, ``DistributedSampler``) and with DataLoader workers
    started by fork or spawn. Whole contiguous samples are read straight from their byte
    offset (the shard's ``/offsets`` index, checked by ``hiroml-verify``); chunked or
    compressed ones through HDF5. ``read_array(i, region)`` reads a CT slice or patch.

    ``version`` names the published version to read (``"0007-3f9a1c2e"``, or its number
    ``7``); ``None`` takes the latest. The object reads that version's manifest once, here,
    and keeps it for its whole life (``ds.version``), in every DataLoader worker, whatever
    builds run meanwhile: shards are immutable and a build deletes only shards that no kept
    version names. An output without ``versions/`` is read from its root
    manifest (``ds.version`` is then ``None``). ``out_dir`` may also be the output's
    ``manifest.parquet`` (meaning the output folder) or a version's
    ``versions/<V>/manifest.parquet`` (meaning that version).

    ``verify=True`` refuses altered bytes with a :class:`~hiroml.errors.ShardError` naming
    the shard: a shard, when this object first opens it (lazily, per process), must have the
    manifest's ``shard_sha256`` (one read of it: about 2 s per GB, 500 MiB/s on a busy 2-core
    machine), and a sample, when first read, must lie where its shard's index says. Off by
    default.
    """

    def __init__(
        self,
        out_dir: Path | str,
        split: str | None = Split.TRAIN,
        modality: str = "cxr",
        transform: Callable[[Sample], Sample] | None = None,
        label: str | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        version: str | int | None = None,
        monai: bool = False,
        verify: bool = False,
    ) -> None:
        if monai:
            from hiroml.data.monai import ToMetaTensord

            transform = _chain(ToMetaTensord(), transform)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ArgumentError(f"dtype={dtype}: choose torch.float32, float16 or bfloat16")
        self.dtype = dtype
        # a manifest path (or a version folder) means its output folder (and that version)
        self.out_dir, named = locate(out_dir)
        if version is None:
            version = named
        self.split = split
        self.modality = modality
        self.transform = transform
        self.label = label
        folder, self.version = tables_dir(self.out_dir, version)
        m = read_manifest(folder)
        if label is not None and label not in m.columns:
            raise ArgumentError(f"label {label!r} is not a column of {folder}/manifest.parquet")
        rows = m[m["modality"] == modality]
        if split is not None:
            rows = rows[rows["split"] == split]
        _say_if_sequestered(self.out_dir, split, len(rows))
        rows = rows.sort_values("sample_key", kind="stable").reset_index(drop=True)
        self.keys: list[str] = rows["sample_key"].astype(str).tolist()
        self.shards: list[str] = [str(self.out_dir / s) for s in rows["shard"]]
        self.patient_ids: list[str] = rows["patient_id"].astype(str).tolist()
        self.shapes: list[tuple[int, ...] | None] = (
            [None if v is None else tuple(int(x) for x in v) for v in rows["shape"]]
            if "shape" in rows.columns
            else [None] * len(rows)
        )
        self.scales: list[float] = (
            [_float(v) for v in rows["scale"]]
            if "scale" in rows.columns
            else [math.nan] * len(rows)
        )
        self.metas: list[dict[str, Any]] = [self._meta(r) for r in rows.to_dict("records")]
        self.labels: list[torch.Tensor] | None = None
        if label is not None:
            self.labels = self._labels(label, rows[label].tolist())
        self._pid = -1
        self._scratch = np.empty(0, np.uint8)
        self._files: OrderedDict[str, _OpenShard] = OrderedDict()
        self._where: dict[int, _Where] = {}
        self.verify, self._checked = verify, set[str | int]()  # shards, samples checked
        self._sha = dict(zip(self.shards, rows.get("shard_sha256", [""] * len(rows)), strict=True))

    def _meta(self, row: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {c: cell_str(row.get(c)) for c in META_STR}
        t = row.get("exam_time")
        meta["exam_time"] = "" if t is None or pd.isna(t) else pd.Timestamp(t).isoformat()
        for c in META_FLOAT:
            meta[c] = _float(row.get(c))
        if self.modality == "cxr":  # which frame of a multi-frame radiograph (0 for one)
            frame = row.get("frame")
            meta["frame"] = 0 if frame is None or pd.isna(frame) else int(frame)
        if self.modality == "ct":
            for c in CT_GEOMETRY:
                v = row.get(c)
                meta[c] = torch.tensor(
                    [float(x) for x in v] if v is not None else [], dtype=torch.float64
                )
        return meta

    def _labels(self, column: str, values: list[Any]) -> list[torch.Tensor]:
        """The ``label`` column as tensors; :class:`ArgumentError` naming the column and its
        first values that are not numbers (a clinical column of text such as ``yes``)."""
        out: list[torch.Tensor] = []
        bad: list[str] = []
        for v in values:
            try:
                out.append(self._label(v))
            except (HiromlError, TypeError, ValueError):
                if repr(v) not in bad:
                    bad.append(repr(v))
        if bad:
            raise ArgumentError(
                f"label {column!r} holds values that are not numbers ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}): map them to numbers in the clinical "
                "table, or pick a numeric column"
            )
        return out

    @staticmethod
    def _label(v: Any) -> torch.Tensor:
        if isinstance(v, list | tuple | np.ndarray):
            return torch.tensor([_float(x) for x in v], dtype=torch.float32)
        if isinstance(v, str):
            try:
                return torch.tensor(float(v), dtype=torch.float32)
            except ValueError:
                raise HiromlError(f"label value {v!r} is not a number") from None
        return torch.tensor(_float(v), dtype=torch.float32)

    # ------------------------------------------------------------------ pickling, handles

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = OrderedDict()
        state["_where"] = {}
        state["_scratch"] = np.empty(0, np.uint8)
        state["_pid"] = -1
        return state

    def _check_pid(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            # HDF5 handles inherited through fork belong to the parent: forget them, never
            # close them here (only our copies of the raw descriptors are closed)
            for old in self._files.values():
                os.close(old.fd)
            self._files = OrderedDict()
            self._where = {}
            self._pid = pid

    def _shard(self, path: str) -> _OpenShard:
        self._check_pid()
        shard = self._files.get(path)
        if shard is None:
            if self.verify and path not in self._checked:
                check_shard_file(path, self._sha[path])
                self._checked.add(path)
            shard = _OpenShard(path)
            self._files[path] = shard
            if len(self._files) > MAX_OPEN:
                _, old = self._files.popitem(last=False)
                old.close()
                self._where = {k: v for k, v in self._where.items() if v[0] is not old}
        else:
            self._files.move_to_end(path)
        return shard

    def close(self) -> None:
        """Close the shard files this process opened."""
        if self._pid == os.getpid():
            for shard in self._files.values():
                shard.close()
        self._files = OrderedDict()
        self._where = {}

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.keys)

    def _ref(self, i: int) -> tuple[_OpenShard, SampleRef]:
        shard = self._shard(self.shards[i])
        ref = shard.refs.get(self.keys[i])
        if ref is None:
            raise HiromlError(f"{self.shards[i]}: no sample {self.keys[i]!r}")
        if self.verify and i not in self._checked:
            check_ref(shard.file, ref, self.keys[i], self.shapes[i] or ())
            self._checked.add(i)
        return shard, ref

    def dataset(self, i: int) -> h5py.Dataset:
        """The h5py dataset holding sample ``i`` (opened lazily in this process): the sample
        itself in a format-1 shard, a stack of samples of its shape (its row:
        ``read_array`` does the indexing) in a format-2 one."""
        shard, ref = self._ref(i)
        return shard.array(ref)

    def _locate(self, i: int) -> _Where:
        self._check_pid()
        where = self._where.get(i)
        if where is None or where[0] is not self._files.get(self.shards[i]):
            shard, ref = self._ref(i)
            shape = self.shapes[i]
            if ref.offset >= 0 and shape is not None:
                # the shard's offset index and the manifest's shape: no HDF5 call at all
                where = (shard, ref.offset, shape, ref.dtype, ref)
            else:
                dsid = shard.array_id(ref)
                offset = ref.offset if ref.offset >= 0 else None
                if offset is None and ref.row is None and dsid.dtype.kind in "biuf":
                    offset = dsid.get_offset()  # a format-1 shard without /offsets
                shape = tuple(dsid.shape) if ref.row is None else tuple(dsid.shape[1:])
                where = (shard, offset, shape, dsid.dtype, ref)
            self._where[i] = where
        return where

    def read_array(self, i: int, region: Any = ()) -> np.ndarray:
        """Sample ``i``'s stored array (storage dtype) or a region of it, numpy (z, y, x)
        indexing, e.g. ``np.s_[z]`` for a CT slice or ``np.s_[z:z+96, y:y+96, x:x+96]``.

        A whole sample stored as one unfiltered run of bytes is read straight from its byte
        offset in the file (the shard's ``/offsets``), skipping HDF5's per-read overhead;
        everything else
        goes through HDF5."""
        if region != ():
            shard, ref = self._ref(i)
            return np.asarray(shard.array(ref)[region_of(ref, region)])
        return self._read_whole(i, scratch=False)

    def _read_whole(self, i: int, *, scratch: bool) -> np.ndarray:
        """The whole array of sample ``i``; with ``scratch`` it lands in a buffer reused by
        the next call (saves page faults on a fresh allocation per sample)."""
        shard, offset, shape, dtype, ref = self._locate(i)
        nbytes = math.prod(shape) * dtype.itemsize
        if scratch:
            if len(self._scratch) < nbytes:
                self._scratch = np.empty(nbytes, np.uint8)
            out = self._scratch[:nbytes].view(dtype).reshape(shape)
        else:
            out = np.empty(shape, dtype)
        if nbytes == 0:
            return out
        if offset is not None and os.preadv(shard.fd, [out.data], offset) == nbytes:
            return out
        read_into(shard.array_id(ref), ref, out)
        return out

    def _scale(self, i: int, arr: np.ndarray) -> float:
        s = self.scales[i]
        if math.isnan(s):
            shard, ref = self._ref(i)
            stored = read_meta(shard.file, ref).get("scale")
            s = float(stored) if stored is not None else 1.0 / float(np.iinfo(arr.dtype).max)
            self.scales[i] = s
        return s

    def __getitem__(self, i: int) -> Sample:
        i = int(i)
        arr = self._read_whole(i, scratch=True)
        scale = self._scale(i, arr) if arr.dtype.kind in "ui" and self.modality == "cxr" else None
        image = to_image(arr, self.dtype, scale=scale)
        meta = dict(self.metas[i])
        sample: Sample = {
            "image": image.unsqueeze(0),
            "sample_key": self.keys[i],
            "patient_id": self.patient_ids[i],
            "meta": meta,
        }
        if self.modality == "ct":
            sample["spacing"] = meta["spacing_xyz"]
            sample["origin"] = meta["origin_xyz"]
            sample["direction"] = meta["direction"]
        if self.labels is not None:
            sample["label"] = self.labels[i]
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __repr__(self) -> str:
        return (
            f"HiromlDataset({str(self.out_dir)!r}, split={self.split!r}, "
            f"modality={self.modality!r}, version={self.version!r}, n={len(self)})"
        )


def _bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """The bits of ``torch.bfloat16`` values of float32 ``a``, as torch rounds them: to
    nearest, ties to even; every NaN becomes 0x7FC0."""
    u = a.view(np.uint32)
    bits = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    bits[np.isnan(a)] = 0x7FC0
    return bits


def to_image(arr: np.ndarray, dtype: torch.dtype, *, scale: float | None = None) -> torch.Tensor:
    """A stored array as a new tensor of ``dtype`` (float32, float16 or bfloat16), never a view
    of ``arr``; integer radiographs multiplied by ``scale`` in float32 first.

    The arithmetic is numpy's (float16 through :mod:`hiroml.store.halfcast`), on this thread
    only, with the bits torch's ``.to(dtype)`` and ``.mul_(scale)`` give: torch's casts of
    large tensors use its intra-op thread pool, which on a busy machine (a training job: the
    GPU feeder, other workers) waits for cores the other threads hold."""
    if dtype == torch.float16 and arr.dtype == np.float16:
        return torch.from_numpy(arr.copy())
    if arr.dtype == np.float16:
        f32 = to_float32(arr)
        nan = np.isnan(f32)
        if nan.any():  # torch quiets signalling NaNs
            f32.view(np.uint32)[nan] |= np.uint32(0x400000)
    else:
        f32 = arr.astype(np.float32)
    if scale is not None:
        f32 *= np.float32(scale)
    if dtype == torch.float32:
        return torch.from_numpy(f32)
    if dtype == torch.float16:
        return torch.from_numpy(to_float16(f32))
    if dtype == torch.bfloat16:
        return torch.from_numpy(_bfloat16_bits(f32)).view(torch.bfloat16)
    raise ArgumentError(f"dtype={dtype}: choose torch.float32, float16 or bfloat16")


def load_sitk(out_dir: Path | str, sample_key: str, *, version: str | int | None = None) -> Any:
    """A stored CT volume as a ``SimpleITK.Image`` in HU with its geometry (origin, spacing in
    mm and direction, from the manifest), e.g. to resample it or write it as NIfTI.
    ``version`` as in :class:`HiromlDataset` (default: the latest)."""
    from hiroml.store.reader import array_to_sitk, read_sample

    out = Path(out_dir)
    folder, _ = tables_dir(out, version)
    m = read_manifest(folder)
    row = m[m["sample_key"] == sample_key]
    if row.empty:
        raise ArgumentError(f"{sample_key!r} is not a sample of {folder}/manifest.parquet")
    r = row.iloc[0]
    if r["modality"] != "ct":
        raise ArgumentError(f"{sample_key!r} is a {r['modality']} sample, not a CT volume")
    array, _ = read_sample(out / str(r["shard"]), sample_key)
    return array_to_sitk(
        array,
        spacing_xyz=tuple(float(v) for v in r["spacing_xyz"]),
        origin_xyz=tuple(float(v) for v in r["origin_xyz"]),
        direction=tuple(float(v) for v in r["direction"]),
    )
