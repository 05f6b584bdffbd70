"""HDF5 shard files: the writer (a rolling context manager) and plain readers.

Layout of one shard (``format_version=2``), readable with plain h5py and no hiroml::

    /                      attrs: format="hiroml-shard", format_version=2, modality,
                                  layout (JSON: compression, ct_chunks), n_samples,
                                  plus the caller's attrs (e.g. the config hash)
    /arrays/<dtype>_<shape> one dataset per sample shape and dtype, e.g. ``f2_512x512``
                           or ``i2_40x512x512``: the samples stacked on a first axis,
                           each (y, x) for CXR or (z, y, x) in HU for CT, numpy order;
                           chunked one sample per chunk (CT: one slice or one
                           :data:`CT_CUBE`-voxel cube per chunk, see below)
    /keys                  1-D vlen str: every sample key, in write order
    /arrays_of             1-D vlen str, aligned with /keys: the dataset of the sample
                           ("arrays/f2_512x512")
    /rows                  1-D int64, aligned with /keys: its row in that dataset
    /meta                  1-D vlen str, aligned with /keys: JSON object of its metadata
    /data_hashes           1-D vlen str, aligned with /keys: array_hash() of its array
    /offsets               1-D int64, aligned with /keys: byte offset in the file of an
                           unfiltered sample held in one chunk, -1 otherwise (a read
                           accelerator: those bytes are the C-order array)
    /dtypes                1-D vlen str, aligned with /keys: numpy dtype.str ("<f2")
                           (the aligned datasets are written when the shard is closed)

Reading one sample with plain h5py::

    with h5py.File("shards/cxr-ab12.h5", "r") as f:
        i = list(f["keys"].asstr()[()]).index(key)
        array = f[f["arrays_of"].asstr()[i]][f["rows"][i]]
        meta = json.loads(f["meta"].asstr()[i])

Why rows of a few datasets: an HDF5 dataset costs about 1 ms to create and an attribute about
57 us, while appending a row costs little beyond the bytes, their ``data_hash`` and the
shard's fsync and checksum (``benchmarks/bench_shards.py``). The readers here, and
:class:`hiroml.data.dataset.HiromlDataset`, also read ``format_version=1`` shards (one dataset
``/samples/<key>`` per sample, its metadata as a JSON attr): versions published with that
format name them, and ``hiroml-versions`` keeps them.

A dataset holds one chunk per sample (``maxshape=(None, ...)``): nothing is buffered,
memory stays one sample. Its extent grows :data:`GROW_ROWS` rows at a time (a resize per
sample cost 15 us of a 75 us append) and is cut to the rows written when the shard is
closed: the file's bytes are those of a dataset grown one row per sample. An uncompressed
radiograph is one unfiltered chunk, so its bytes
lie contiguous in the file at ``/offsets`` and the Dataset reads them straight from there
(as it read format 1's contiguous datasets). A CT volume of a shape no other volume has
simply gets a dataset of one row: stacking changes nothing for it, and one code path for
every modality is the simplest.

A shard is written to ``<name>.h5.tmp`` and renamed to ``<name>.h5`` only when complete,
so a crash never leaves a half-written file that looks whole. Names are deterministic:
``<prefix>.h5``, then ``<prefix>-0001.h5``, ``<prefix>-0002.h5``, ... on rollover. A
re-run knows a task is done from the pipeline's task record, which names its shards.

Chunking and compression were chosen by ``benchmarks/bench_loader.py`` (2,000 synthetic
512 x 512 float16 CXR in random order, one process, first epoch, against a numpy memmap): contiguous
uncompressed ~58%, one chunk per image 13-45%, blosc-lz4+shuffle 10-36% at 0.66x the
size, blosc-zstd 13-31% at 0.57x, gzip 4-12%, a 16-bit PNG folder 2-7%. So an uncompressed
CXR is read from its byte offset; a compressed one is one chunk per image. CT is chunked
one slice per chunk (``ct_chunks="slice"``: slices ~14x faster than cubes, 96^3 patches ~3x
slower) or in cubes of :data:`CT_CUBE` voxels (``ct_chunks="cube"``: the reverse).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
from h5py import h5d, h5s

from hiroml.errors import ShardError
from hiroml.store.filehash import shard_sha256

log = logging.getLogger(__name__)

FORMAT = "hiroml-shard"
FORMAT_VERSION = 2
COMPRESSIONS = ("none", "lz4", "zstd", "gzip")
CT_CHUNKS = ("slice", "cube")
CT_CUBE = 64  # edge of a cubic CT chunk, voxels
GROW_ROWS = 64  # rows a dataset's extent grows by at once (cut to the rows written at close)
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+=-]*$")


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One complete shard. ``name`` is the file name (``cxr-ab12.h5``), ``n_bytes`` its size
    on disk, ``sha256`` the hex digest of the whole file; ``data_hashes`` align with
    ``keys``."""

    name: str
    keys: tuple[str, ...]
    sha256: str
    n_bytes: int
    data_hashes: tuple[str, ...] = ()


def array_hash(arr: np.ndarray) -> str:
    """BLAKE2b (128 bit, hex) of an array's dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(arr)
    h = hashlib.blake2b(digest_size=16)
    h.update(a.dtype.str.encode())
    h.update(repr(tuple(int(n) for n in a.shape)).encode())
    h.update(a.reshape(-1).view(np.uint8).data if a.size else b"")
    return h.hexdigest()


def open_shard(path: Path | str) -> h5py.File:
    """Open a shard read-only, without HDF5 file locking (safe on network filesystems and
    while other processes read the same file)."""
    return h5py.File(path, "r", locking=False)


@dataclass(frozen=True, slots=True)
class SampleRef:
    """Where one sample lies in an open shard. ``array`` is the HDF5 path of the dataset
    holding it, ``row`` its index on that dataset's first axis (None in a format-1 shard:
    the whole dataset is the sample), ``index`` its position in ``/keys``, ``offset`` the
    byte offset of its C-order bytes in the file (-1: read it through HDF5) and ``dtype``
    the stored numpy dtype."""

    array: str
    row: int | None
    index: int
    offset: int
    dtype: np.dtype[Any]


def _strs(ds: h5py.Dataset) -> list[str]:
    return [str(v) for v in ds.asstr()[()]]


def sample_refs(f: h5py.File) -> dict[str, SampleRef]:
    """``{key: SampleRef}`` of an open shard of either format, in write order."""
    # a format-1 shard without /keys (written by hand) lists its samples in /samples
    keys = _strs(f["keys"]) if "keys" in f else [str(k) for k in f["samples"]]
    n = len(keys)
    offsets = f["offsets"][()] if "offsets" in f else np.full(n, -1, np.int64)
    dtypes: list[np.dtype[Any]] = []
    cache: dict[str, np.dtype[Any]] = {}
    for d in _strs(f["dtypes"]) if "dtypes" in f else []:
        dtypes.append(cache.setdefault(d, np.dtype(d)))
    if int(f.attrs.get("format_version", 1)) < 2:  # /samples/<key>, one dataset each
        if not dtypes:
            dtypes = [f["samples"][k].dtype for k in keys]
        return {
            k: SampleRef(f"samples/{k}", None, i, int(offsets[i]), dtypes[i])
            for i, k in enumerate(keys)
        }
    arrays = _strs(f["arrays_of"])
    rows = f["rows"][()]
    return {
        k: SampleRef(arrays[i], int(rows[i]), i, int(offsets[i]), dtypes[i])
        for i, k in enumerate(keys)
    }


def region_of(ref: SampleRef, region: Any) -> Any:
    """The index into ``f[ref.array]`` of ``region`` (numpy indexing relative to the
    sample)."""
    if ref.row is None:
        return region
    return (ref.row, *(region if isinstance(region, tuple) else (region,)))


def read_ref(f: h5py.File, ref: SampleRef, region: Any = ()) -> np.ndarray:
    """The stored array of a sample (numpy axis order), or a region of it in numpy
    indexing relative to the sample (``np.s_[z]``, ``np.s_[z:z+96, y:y+96, x:x+96]``)."""
    return np.asarray(f[ref.array][region_of(ref, region)])


def read_into(dsid: h5d.DatasetID, ref: SampleRef, out: np.ndarray) -> None:
    """Read a whole sample of the dataset ``dsid`` (of ``f[ref.array]``) into ``out`` (its
    shape and dtype) through HDF5, without the copies of h5py's indexing."""
    if ref.row is None:
        dsid.read(h5s.ALL, h5s.ALL, out)
        return
    space = dsid.get_space()
    space.select_hyperslab((ref.row, *(0 for _ in out.shape)), (1, *out.shape))
    dsid.read(h5s.create_simple(out.shape), space, out)


def sample_shape(f: h5py.File, ref: SampleRef) -> tuple[int, ...]:
    """The shape of a stored sample."""
    shape = tuple(f[ref.array].shape)
    return shape if ref.row is None else shape[1:]


def read_meta(f: h5py.File, ref: SampleRef) -> dict[str, Any]:
    """The metadata a sample was written with (JSON: NaN stored as None)."""
    if ref.row is None:
        return dict(json.loads(f[ref.array].attrs["meta"]))
    return dict(json.loads(f["meta"].asstr()[ref.index]))


def stored_hash(f: h5py.File, ref: SampleRef) -> str:
    """The ``data_hash`` recorded with a sample when it was written."""
    value = f[ref.array].attrs.get("data_hash") if ref.row is None else f["data_hashes"][ref.index]
    return value.decode() if isinstance(value, bytes) else str(value)


def stored_offset(f: h5py.File, ref: SampleRef) -> int:
    """The byte offset HDF5 itself gives for a sample's bytes, -1 when they are not one
    unfiltered run (to check the ``/offsets`` accelerator against)."""
    ds = f[ref.array]
    if ref.row is None:
        offset = ds.id.get_offset()
        return -1 if offset is None else int(offset)
    return _chunk_offset(ds, ref.row) if _rows_unfiltered(ds) else -1


def _rows_unfiltered(ds: h5py.Dataset) -> bool:
    """Whether each row of ``ds`` is one unfiltered chunk: its bytes a C-order array."""
    return (
        0 not in ds.shape
        and ds.chunks == (1, *ds.shape[1:])
        and not ds.id.get_create_plist().get_nfilters()
    )


def _chunk_offset(ds: h5py.Dataset, row: int) -> int:
    """Byte offset of row ``row`` of a dataset whose rows are single unfiltered chunks."""
    info = ds.id.get_chunk_info_by_coord((row, *(0 for _ in ds.shape[1:])))
    return -1 if info.byte_offset is None else int(info.byte_offset)


def read_sample(path: Path | str, key: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The stored array (storage dtype, numpy axis order) and metadata of one sample."""
    with open_shard(path) as f:
        ref = sample_refs(f).get(key)
        if ref is None:
            raise ShardError(f"{path}: no sample {key!r}")
        return read_ref(f, ref), read_meta(f, ref)


def shard_keys(path: Path | str) -> list[str]:
    """The sample keys of a shard, in write order."""
    with open_shard(path) as f:
        return list(sample_refs(f))


def _filter_kwargs(compression: str) -> dict[str, Any]:
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    import hdf5plugin

    shuffle = hdf5plugin.Blosc.SHUFFLE
    if compression == "lz4":
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=shuffle))
    return dict(hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=shuffle))


def _chunks(shape: tuple[int, ...], ct_chunks: str) -> tuple[int, ...]:
    """Chunk shape of a dataset of samples of ``shape``: one sample per chunk, a CT volume
    (z, y, x) one slice or one :data:`CT_CUBE` cube per chunk."""
    if len(shape) == 3:  # CT (z, y, x)
        z, y, x = shape
        if ct_chunks == "cube":
            return (1, min(z, CT_CUBE), min(y, CT_CUBE), min(x, CT_CUBE))
        return (1, 1, y, x)
    return (1, *shape)


def _array_name(shape: tuple[int, ...], dtype: np.dtype[Any]) -> str:
    """``arrays/f2_512x512``: the dataset holding the samples of one dtype and shape."""
    order = "be" if dtype.byteorder == ">" else ""
    return f"arrays/{order}{dtype.kind}{dtype.itemsize}_{'x'.join(str(n) for n in shape)}"


def _jsonable(value: Any, key: str) -> Any:
    """A JSON-safe copy of one meta value (NaN and infinities become None)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value  # most values: no isinstance chain
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v, key) for v in value]
    raise ShardError(f"meta {key!r}: {type(value).__name__} is not str/int/float/bool/None/list")


class ShardWriter:
    """Write samples into HDF5 shards, rolling over by sample count or bytes.

    Use as a context manager::

        with ShardWriter(out / "shards", "cxr-1a2b", modality="cxr",
                         max_samples=512, max_bytes=2**31) as w:
            w.add(key, array, {"sop_uid": ..., "scale": 1.0})
        infos = w.shards

    ``max_bytes`` counts uncompressed array bytes; a sample larger than it gets a shard of
    its own. On an exception inside the ``with`` block, the shard being written is deleted
    (its ``.tmp`` file); shards already completed stay (they are whole, and a deterministic
    re-run replaces them with identical content). A killed process leaves only a ``.tmp``.
    Each sample is written to the file as it is added: memory holds one sample and the
    shard's small index.
    """

    def __init__(
        self,
        directory: Path,
        prefix: str,
        *,
        modality: str,
        max_samples: int,
        max_bytes: int,
        compression: str = "none",
        ct_chunks: str = "slice",
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ShardError(f"compression={compression!r}: choose one of {COMPRESSIONS}")
        if ct_chunks not in CT_CHUNKS:
            raise ShardError(f"ct_chunks={ct_chunks!r}: choose one of {CT_CHUNKS}")
        if max_samples < 1 or max_bytes < 1:
            raise ShardError(f"max_samples={max_samples}, max_bytes={max_bytes}: must be >= 1")
        if not _KEY_RE.match(prefix):
            raise ShardError(f"prefix {prefix!r}: use letters, digits and . _ : + = -")
        self.directory = Path(directory)
        self.prefix = prefix
        self.modality = str(modality)
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.compression = compression
        self.ct_chunks = ct_chunks
        self.attrs = {k: _jsonable(v, k) for k, v in (attrs or {}).items()}
        self._filters = _filter_kwargs(compression)
        self._file: h5py.File | None = None
        self._index = 0  # number of the shard being written
        self._arrays: dict[str, h5py.Dataset] = {}  # of the shard being written
        self._rows: dict[str, int] = {}  # rows written
        self._extent: dict[str, int] = {}  # rows the dataset has room for now
        self._direct: dict[str, bool] = {}  # its rows are single unfiltered chunks
        self._bytes = 0
        self._table: dict[str, list[Any]] = _empty_table()
        self._seen: set[str] = set()
        self._done: list[ShardInfo] = []
        self._open = False

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> ShardWriter:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        if exc_type is None:
            try:
                if self._file is not None:
                    self._close_current()
            except BaseException:  # e.g. ENOSPC while closing: never leave a .tmp behind
                self._abort()
                raise
        else:
            self._abort()

    @property
    def shards(self) -> list[ShardInfo]:
        """The shards completed so far (all of them once the ``with`` block has ended)."""
        return list(self._done)

    def shard_name(self, index: int) -> str:
        """File name of the ``index``-th shard of this writer (0 -> ``<prefix>.h5``)."""
        return f"{self.prefix}.h5" if index == 0 else f"{self.prefix}-{index:04d}.h5"

    # ------------------------------------------------------------------ writing

    def add(self, key: str, array: np.ndarray, meta: Mapping[str, Any]) -> str:
        """Store one sample; returns its ``data_hash``.

        ``key`` must be unique across the writer and a valid dataset name (letters, digits,
        ``. _ : + = -``; no ``/``). ``meta`` values: str, int, float, bool, None, or
        lists/tuples of those.
        """
        if not self._open:
            raise ShardError("ShardWriter.add outside its `with` block")
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ShardError(f"sample key {key!r}: use letters, digits and . _ : + = - (no /)")
        if key in self._seen:
            raise ShardError(f"duplicate sample key {key!r} in shard writer {self.prefix}")
        arr = np.ascontiguousarray(array)
        if arr.ndim not in (2, 3):
            raise ShardError(f"sample {key}: array must be 2-D (y, x) or 3-D (z, y, x)")
        meta_json = json.dumps({k: _jsonable(v, k) for k, v in meta.items()}, allow_nan=False)
        if self._file is not None and (
            len(self._table["keys"]) >= self.max_samples
            or self._bytes + arr.nbytes > self.max_bytes
        ):
            self._close_current()
        if self._file is None:
            self._open_next()
        name, row = self._append(arr)
        digest = array_hash(arr)
        for column, value in (
            ("keys", key), ("arrays_of", name), ("rows", row), ("meta", meta_json),
            ("data_hashes", digest), ("dtypes", arr.dtype.str),
        ):  # fmt: skip
            self._table[column].append(value)
        self._seen.add(key)
        self._bytes += arr.nbytes
        return digest

    def _append(self, arr: np.ndarray) -> tuple[str, int]:
        """Write ``arr`` as the next row of the dataset of its dtype and shape; its name and
        row."""
        assert self._file is not None
        name = _array_name(arr.shape, arr.dtype)
        ds = self._arrays.get(name)
        if ds is None:
            chunks = _chunks(arr.shape, self.ct_chunks)
            empty = 0 in arr.shape  # HDF5 chunks cannot be 0 wide: every axis may grow
            ds = self._file.create_dataset(
                name,
                shape=(0, *arr.shape),
                maxshape=(None,) * (arr.ndim + 1) if empty else (None, *arr.shape),
                chunks=tuple(max(1, c) for c in chunks),
                dtype=arr.dtype,
                track_times=False,
                **self._filters,
            )
            self._arrays[name] = ds
            self._rows[name] = self._extent[name] = 0
            self._direct[name] = not self._filters and ds.chunks == (1, *arr.shape)
        row = self._rows[name]
        self._rows[name] = row + 1
        if row >= self._extent[name]:
            self._extent[name] = row + GROW_ROWS
            ds.resize(self._extent[name], axis=0)
        if arr.size and self._direct[name]:
            # one unfiltered chunk: its bytes are the array's, no h5py selection needed
            ds.id.write_direct_chunk((row, *(0 for _ in arr.shape)), arr.data)
        elif arr.size:
            ds[row] = arr
        return name, row

    def _tmp_path(self) -> Path:
        return self.directory / (self.shard_name(self._index) + ".tmp")

    def _open_next(self) -> None:
        path = self._tmp_path()
        f = _create_file(path)
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["modality"] = self.modality
        layout = {"compression": self.compression, "ct_chunks": self.ct_chunks}
        f.attrs["layout"] = json.dumps(layout)
        for k, v in self.attrs.items():
            f.attrs[k] = v if isinstance(v, str | bool | int | float) else json.dumps(v)
        _create_group(f, "arrays")
        self._file = f
        self._arrays, self._rows, self._bytes = {}, {}, 0
        self._extent, self._direct = {}, {}
        self._table = _empty_table()

    def _close_current(self) -> None:
        f = self._file
        assert f is not None
        t = self._table
        for name, ds in self._arrays.items():
            if self._extent[name] != self._rows[name]:
                ds.resize(self._rows[name], axis=0)  # the room left unused
        whole = {name: _rows_unfiltered(ds) for name, ds in self._arrays.items()}
        offsets = [
            _chunk_offset(self._arrays[name], row) if whole[name] else -1
            for name, row in zip(t["arrays_of"], t["rows"], strict=True)
        ]
        text = h5py.string_dtype()
        for column in ("keys", "arrays_of", "meta", "data_hashes", "dtypes"):
            f.create_dataset(column, data=np.array(t[column], dtype=text), track_times=False)
        f.create_dataset("rows", data=np.array(t["rows"], dtype=np.int64), track_times=False)
        f.create_dataset("offsets", data=np.array(offsets, dtype=np.int64), track_times=False)
        f.attrs["n_samples"] = len(t["keys"])
        f.close()
        self._file = None
        tmp = self._tmp_path()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        final = self.directory / self.shard_name(self._index)
        digest = shard_sha256(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, final)
        self._done.append(
            ShardInfo(final.name, tuple(t["keys"]), digest, size, tuple(t["data_hashes"]))
        )
        log.debug("shard %s: %d samples, %d bytes", final.name, len(t["keys"]), size)
        self._index += 1

    def _abort(self) -> None:
        try:
            if self._file is not None:
                try:
                    self._file.close()
                except Exception as e:  # the file may be half written: it goes anyway
                    log.debug("closing the aborted shard %s failed: %s", self.prefix, e)
        finally:
            self._file = None
            self._tmp_path().unlink(missing_ok=True)
            log.warning("shard writer %s aborted; removed the incomplete shard", self.prefix)


def _empty_table() -> dict[str, list[Any]]:
    """The per-sample columns of the shard being written, aligned with ``keys``."""
    return {c: [] for c in ("keys", "arrays_of", "rows", "meta", "data_hashes", "dtypes")}


def _create_file(path: Path) -> h5py.File:
    """A new HDF5 file (format v110 or later) whose objects carry no timestamps: HDF5 1.14
    stamps every object header with its creation time, so the same samples written twice
    would give two checksums."""
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)  # the root group
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_LATEST)
    return h5py.File(h5py.h5f.create(os.fsencode(path), h5py.h5f.ACC_TRUNC, fcpl=fcpl, fapl=fapl))


def _create_group(f: h5py.File, name: str) -> h5py.Group:
    """``f.create_group(name)`` without timestamps (see :func:`_create_file`)."""
    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    gcpl.set_obj_track_times(False)
    return h5py.Group(h5py.h5g.create(f.id, name.encode(), gcpl=gcpl))


def read_index(f: h5py.File) -> dict[str, tuple[int, np.dtype[Any]]]:
    """``{key: (byte offset or -1, dtype)}`` of an open shard of either format."""
    return {k: (r.offset, r.dtype) for k, r in sample_refs(f).items()}


def iter_samples(path: Path | str) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """Every (key, array, meta) of a shard, in write order."""
    with open_shard(path) as f:
        for key, ref in sample_refs(f).items():
            yield key, read_ref(f, ref), read_meta(f, ref)
