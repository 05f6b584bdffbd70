"""HDF5 shard files: the writer (a rolling context manager) and plain readers.

Layout of one shard, readable with plain h5py and no hiroml::

    /                      attrs: format="hiroml-shard", format_version=1, modality,
                                  layout (JSON: compression, chunking), n_samples,
                                  plus the caller's attrs (e.g. the config hash)
    /keys                  1-D vlen str dataset: every sample key, in write order
    /offsets               1-D int64, aligned with /keys: byte offset of a contiguous
                           sample's data in the file, -1 if chunked (a read accelerator)
    /dtypes                1-D vlen str, aligned with /keys: numpy dtype.str ("<f2")
                           (these three are written last, when the shard is closed)
    /samples/<key>         one dataset per sample: the array, numpy axis order
                           (CXR (y, x); CT (z, y, x) in HU), attrs:
                             meta       JSON object of the sample's metadata
                             data_hash  array_hash() of the stored array
                             and every scalar meta value again as its own attr

A shard is written to ``<name>.h5.tmp`` and renamed to ``<name>.h5`` only when complete,
so a crash never leaves a half-written file that looks whole. Names are deterministic:
``<prefix>.h5``, then ``<prefix>-0001.h5``, ``<prefix>-0002.h5``, ... on rollover. When
the ``with`` block ends without error, ``<prefix>.done.json`` records every shard of the
writer (keys, checksums, data hashes, attrs): :func:`completed_shards` lets a re-run skip
a task whose shards are all there.

Chunking and compression were chosen by ``benchmarks/bench_loader.py`` (2,000 synthetic
512 x 512 float16 CXR in random order, one process, first epoch, against a numpy memmap): contiguous
uncompressed ~58%, one chunk per image 13-45%, blosc-lz4+shuffle 10-36% at 0.66x the
size, blosc-zstd 13-31% at 0.57x, gzip 4-12%, a 16-bit PNG folder 2-7%. So an uncompressed
CXR is stored contiguous (and read by the Dataset straight from its byte offset, recorded
in ``/offsets``); a compressed one is one chunk per image. CT is chunked one slice per
chunk (``ct_chunks="slice"``: slices ~14x faster than cubes, 96^3 patches ~3x slower) or
in cubes of :data:`CT_CUBE` voxels (``ct_chunks="cube"``: the reverse).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from hiroml.errors import HiromlError

log = logging.getLogger(__name__)

FORMAT = "hiroml-shard"
FORMAT_VERSION = 1
COMPRESSIONS = ("none", "lz4", "zstd", "gzip")
CT_CHUNKS = ("slice", "cube")
CT_CUBE = 64  # edge of a cubic CT chunk, voxels
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+=-]*$")


class ShardError(HiromlError):
    """A shard cannot be written or read as asked (bad or duplicate key, bad option)."""


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


def shard_sha256(path: Path | str) -> str:
    """SHA-256 (hex) of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def open_shard(path: Path | str) -> h5py.File:
    """Open a shard read-only, without HDF5 file locking (safe on network filesystems and
    while other processes read the same file)."""
    return h5py.File(path, "r", locking=False)


def read_sample(path: Path | str, key: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The stored array (storage dtype, numpy axis order) and metadata of one sample."""
    with open_shard(path) as f:
        try:
            ds = f["samples"][key]
        except KeyError:
            raise ShardError(f"{path}: no sample {key!r}") from None
        arr = ds[()]
        meta = json.loads(ds.attrs["meta"])
    return arr, meta


def shard_keys(path: Path | str) -> list[str]:
    """The sample keys of a shard, in write order."""
    with open_shard(path) as f:
        return [k.decode() if isinstance(k, bytes) else str(k) for k in f["keys"][()]]


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


def _chunks(shape: tuple[int, ...], compression: str, ct_chunks: str) -> Any:
    """Chunk shape for one sample, or None for contiguous storage."""
    if len(shape) == 3:  # CT (z, y, x)
        z, y, x = shape
        if ct_chunks == "cube":
            return (min(z, CT_CUBE), min(y, CT_CUBE), min(x, CT_CUBE))
        return (1, y, x)
    if compression == "none" or 0 in shape:
        return None  # contiguous: the benchmark's fastest for whole-image reads
    return tuple(shape)  # one chunk per image


def _jsonable(value: Any, key: str) -> Any:
    """A JSON-safe copy of one meta value (NaN and infinities become None)."""
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
        self._keys: list[str] = []
        self._hashes: list[str] = []
        self._offsets: list[int] = []
        self._dtypes: list[str] = []
        self._bytes = 0
        self._seen: set[str] = set()
        self._done: list[ShardInfo] = []
        self._open = False

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> ShardWriter:
        self.directory.mkdir(parents=True, exist_ok=True)
        # a record of an earlier run no longer holds once its shards are being replaced
        record_path(self.directory, self.prefix).unlink(missing_ok=True)
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
                self._finish()
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
            len(self._keys) >= self.max_samples or self._bytes + arr.nbytes > self.max_bytes
        ):
            self._close_current()
        if self._file is None:
            self._open_next()
        assert self._file is not None
        chunks = _chunks(arr.shape, self.compression, self.ct_chunks)
        kwargs = self._filters if chunks is not None else {}
        ds = self._file["samples"].create_dataset(key, data=arr, chunks=chunks, **kwargs)
        digest = array_hash(arr)
        ds.attrs["meta"] = meta_json
        ds.attrs["data_hash"] = digest
        for k, v in meta.items():
            if isinstance(v, str | bool | int | float) and k not in ("meta", "data_hash"):
                ds.attrs[k] = v
        offset = ds.id.get_offset()
        self._offsets.append(-1 if offset is None else int(offset))
        self._dtypes.append(arr.dtype.str)
        self._seen.add(key)
        self._keys.append(key)
        self._hashes.append(digest)
        self._bytes += arr.nbytes
        return digest

    def _tmp_path(self) -> Path:
        return self.directory / (self.shard_name(self._index) + ".tmp")

    def _open_next(self) -> None:
        path = self._tmp_path()
        f = h5py.File(path, "w", libver=("v110", "latest"))
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["modality"] = self.modality
        layout = {"compression": self.compression, "ct_chunks": self.ct_chunks}
        f.attrs["layout"] = json.dumps(layout)
        for k, v in self.attrs.items():
            f.attrs[k] = v if isinstance(v, str | bool | int | float) else json.dumps(v)
        f.create_group("samples")
        self._file = f
        self._keys, self._hashes, self._bytes = [], [], 0
        self._offsets, self._dtypes = [], []

    def _close_current(self) -> None:
        f = self._file
        assert f is not None
        f.create_dataset("keys", data=np.array(self._keys, dtype=h5py.string_dtype()))
        f.create_dataset("offsets", data=np.array(self._offsets, dtype=np.int64))
        f.create_dataset("dtypes", data=np.array(self._dtypes, dtype=h5py.string_dtype()))
        f.attrs["n_samples"] = len(self._keys)
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
            ShardInfo(final.name, tuple(self._keys), digest, size, tuple(self._hashes))
        )
        log.debug("shard %s: %d samples, %d bytes", final.name, len(self._keys), size)
        self._index += 1

    def _finish(self) -> None:
        if self._file is not None:
            self._close_current()
        record = {
            "format": FORMAT,
            "prefix": self.prefix,
            "attrs": self.attrs,
            "shards": [
                {
                    "name": s.name,
                    "keys": list(s.keys),
                    "sha256": s.sha256,
                    "n_bytes": s.n_bytes,
                    "data_hashes": list(s.data_hashes),
                }
                for s in self._done
            ],
        }
        final = record_path(self.directory, self.prefix)
        tmp = final.with_name(final.name + ".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, final)

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


def read_index(f: h5py.File) -> dict[str, tuple[int, np.dtype[Any]]]:
    """``{key: (byte offset or -1, dtype)}`` from an open shard's ``/offsets`` index; empty
    when the shard has none."""
    if "offsets" not in f or "dtypes" not in f:
        return {}
    keys = f["keys"].asstr()[()]
    offsets = f["offsets"][()]
    dtypes = f["dtypes"].asstr()[()]
    cache: dict[str, np.dtype[Any]] = {}
    out = {}
    for k, o, d in zip(keys, offsets, dtypes, strict=True):
        dt = cache.get(d)
        if dt is None:
            dt = cache[d] = np.dtype(d)
        out[str(k)] = (int(o), dt)
    return out


def record_path(directory: Path | str, prefix: str) -> Path:
    """Where a writer records, on success, the shards of ``prefix``: ``<prefix>.done.json``."""
    return Path(directory) / f"{prefix}.done.json"


def completed_shards(
    directory: Path | str, prefix: str, *, attrs: Mapping[str, Any] | None = None
) -> list[ShardInfo] | None:
    """The shards of a writer that finished earlier (for a re-run to skip its task), or
    None: no record, a shard missing or of another size, or recorded ``attrs`` (e.g. the
    config hash) other than ``attrs``. Checksums are not recomputed (``hiroml-verify``
    does that)."""
    path = record_path(directory, prefix)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if attrs is not None and record.get("attrs") != {k: _jsonable(v, k) for k, v in attrs.items()}:
        return None
    infos = []
    for s in record.get("shards", []):
        f = Path(directory) / s["name"]
        if not f.is_file() or f.stat().st_size != s["n_bytes"]:
            return None
        infos.append(
            ShardInfo(
                s["name"], tuple(s["keys"]), s["sha256"], s["n_bytes"], tuple(s["data_hashes"])
            )
        )
    return infos


def iter_samples(path: Path | str) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """Every (key, array, meta) of a shard, in write order."""
    with open_shard(path) as f:
        for key in f["keys"][()]:
            k = key.decode() if isinstance(key, bytes) else str(key)
            ds = f["samples"][k]
            yield k, ds[()], json.loads(ds.attrs["meta"])
