"""Read each radiograph once: the index worker, which already holds a member's bytes,
also converts it (:func:`hiroml.cxr.convert.prepare_instance`) and leaves the result in a scratch
store under the output folder; the conversion stage takes it from there instead of inflating the
member again.

The store is append-only packs, one per worker process,
``<output>/.hiroml/scratch/pack-<pid>-<token>.bin``, not a file per member (a file creation
and a deletion per member cost 0.3 ms here, far more on a cluster file system). A pack
is a run of records: a 4-byte mark (``HRS2`` live, ``HRSX`` taken), the 16-byte key, the
payload's length (8 bytes, little endian) and the payload, a
:class:`hiroml.cxr.convert.Prepared`: the length of a small header (4 bytes, little endian),
the header (a pickle of plain values: each frame's fields, its array's dtype and shape, and the
view evidence), then each frame's array as its C-order bytes, so that no array is pickled and
the conversion reads it back without a copy. Records marked ``HRS1`` (the whole
:class:`~hiroml.cxr.convert.Prepared` pickled) are taken too. Each record is flushed when
written, so a pack is readable as soon as its worker has indexed the zip; a record cut
short (a crash) ends its pack's scan.

The key hashes the zip's path, size and modification time, the member, the ``cxr``
configuration and the hiroml version: an entry is only ever taken for the very bytes and
settings it was made from. Taking an entry marks it taken (a 4-byte write in place) and
frees its payload's pages and blocks (a hole punched in the pack, as deleting a file would);
what no conversion took (duplicate copies, exams dropped later, tasks reused from an earlier
build) is counted and the packs deleted when the conversion stage ends (:func:`sweep`). A
build that crashed in between leaves live entries that the next build takes when they still
match, or sweeps. Memory stays bounded by one member per worker; the disk the store holds at
its peak is about the size of the new radiographs' arrays.

The headers (and ``HRS1`` payloads) are pickles written by this module under the output
folder the build owns (as its SQLite index is); they are never read from anywhere else.

Only radiographs: a CT series needs all its slices at once, so keeping what the index read
until the conversion would cost disk equal to the source slices.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import secrets
import struct
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from hiroml._version import __version__
from hiroml.config import CxrConfig
from hiroml.records import CxrImage, ExamZip, Instance
from hiroml.vocab import STATE_DIR, Modality, View

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from hiroml.cxr.convert import Prepared

log = logging.getLogger(__name__)

SCRATCH_DIR = "scratch"
_SUFFIX = ".bin"
_LIVE, _TAKEN = b"HRS2", b"HRSX"
_PICKLED = b"HRS1"  # a live record holding the Prepared pickled whole
_HEAD = struct.Struct("<4s16sQ")  # mark, key, payload length
_HEADER_LEN = struct.Struct("<I")  # of a payload's header, before the arrays
_FRAME_FIELDS = tuple(f.name for f in dataclasses.fields(CxrImage) if f.name != "array")
# the fields a header's values stand for: a header of other fields is not read
_LAYOUT = hashlib.blake2b(repr(_FRAME_FIELDS).encode(), digest_size=8).digest()


def scratch_dir(out_dir: str | os.PathLike[str]) -> Path:
    """The scratch store of an output folder."""
    return Path(out_dir) / STATE_DIR / SCRATCH_DIR


def _settings_hash(cfg: CxrConfig) -> str:
    """What the converted values depend on besides the bytes: the cxr section and the version."""
    text = json.dumps([__version__, asdict(cfg)], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def entry_key(rel_zip: str, size: int, mtime_ns: int, member: str, settings: str) -> bytes:
    """The 16-byte key of one member's entry."""
    text = "\x1f".join((rel_zip, str(size), str(mtime_ns), member, settings))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class _Pack:
    """This process's pack in one store folder, open for appending."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        self.path = folder / f"pack-{self.pid}-{secrets.token_hex(4)}{_SUFFIX}"
        self.file: BinaryIO = open(self.path, "xb")  # noqa: SIM115 - lives across members

    def append(self, key: bytes, parts: Sequence[bytes | memoryview]) -> None:
        """One live record whose payload is ``parts`` one after the other."""
        self.file.write(_HEAD.pack(_LIVE, key, sum(memoryview(p).nbytes for p in parts)))
        for part in parts:
            self.file.write(part)
        self.file.flush()  # readable now: a pool's worker ends without flushing

    def close(self) -> None:
        self.file.close()


_PACKS: dict[str, _Pack] = {}  # store folder -> this process's pack


def _pack(folder: str) -> _Pack:
    """This process's pack in ``folder``: a new one after a fork, or when the pack was swept."""
    pack = _PACKS.get(folder)
    if pack is not None and (pack.pid != os.getpid() or not pack.path.exists()):
        if pack.pid == os.getpid():
            pack.close()
        pack = None
    if pack is None:
        pack = _PACKS[folder] = _Pack(Path(folder))
    return pack


def _close_packs(folder: Path) -> None:
    """Close this process's pack in ``folder`` (before it is deleted)."""
    pack = _PACKS.pop(str(folder), None)
    if pack is not None and pack.pid == os.getpid():
        pack.close()


@dataclass(frozen=True, slots=True)
class Preparer:
    """The index's per-member hook (:func:`hiroml.ingest.index.index_zip` ``on_member``): converts
    the members of radiograph batches and stores them. Picklable, to travel to a worker."""

    folder: str
    cfg: CxrConfig
    settings: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", _settings_hash(self.cfg))  # once, not per member

    def __call__(
        self,
        ezip: ExamZip,
        inst: Instance,
        data: bytes,
        header: Dataset | None = None,
        pixels: memoryview | None = None,
    ) -> None:
        from hiroml.cxr import convert as cxr_convert
        from hiroml.cxr import select as cxr_select

        if ezip.batch.modality is not Modality.CXR:
            return
        keep = cxr_select.keep_reason(
            inst,
            drop_derived=self.cfg.drop_derived,
            keep_for_processing=self.cfg.keep_for_processing,
        )
        if keep is not None:
            return  # the conversion drops it without reading it
        try:
            ready = cxr_convert.prepare_instance(data, inst, self.cfg, header=header, pixels=pixels)
        except Exception as e:  # the conversion reads it again and reports what fails
            log.debug("%s: %s not prepared: %s", ezip.rel_path, inst.member, e)
            return
        if ready is None:
            return
        key = entry_key(ezip.rel_path, ezip.size, ezip.mtime_ns, inst.member, self.settings)
        _pack(self.folder).append(key, _payload(ready))


def _payload(ready: Prepared) -> list[bytes | memoryview]:
    """A record's payload: the header's length, the header, each frame's array bytes."""
    arrays = [np.ascontiguousarray(f.array) for f in ready.frames]
    frames = [
        (tuple(str(v) if n == "view" else v for n, v in _fields(f)), a.dtype.str, a.shape)
        for f, a in zip(ready.frames, arrays, strict=True)
    ]
    evidence = tuple(getattr(ready.evidence, f.name) for f in dataclasses.fields(ready.evidence))
    header = pickle.dumps((_LAYOUT, frames, evidence), protocol=pickle.HIGHEST_PROTOCOL)
    return [_HEADER_LEN.pack(len(header)), header, *(a.reshape(-1).data for a in arrays)]


def _fields(frame: CxrImage) -> Iterator[tuple[str, Any]]:
    return ((n, getattr(frame, n)) for n in _FRAME_FIELDS)


def _prepared(buf: bytearray) -> Prepared:
    """The :class:`~hiroml.cxr.convert.Prepared` of a payload (:func:`_payload`); its arrays
    are views of ``buf``. ValueError when the payload does not hold what its header says."""
    from hiroml.cxr.convert import Prepared
    from hiroml.cxr.view import ViewEvidence

    (size,) = _HEADER_LEN.unpack_from(buf, 0)
    start = _HEADER_LEN.size + size
    if start > len(buf):
        raise ValueError(f"a header of {size} bytes in a payload of {len(buf)}")
    layout, frames, evidence = pickle.loads(memoryview(buf)[_HEADER_LEN.size : start])
    if layout != _LAYOUT:
        raise ValueError("written for other CxrImage fields")
    images = []
    for values, dtype, shape in frames:
        count = math.prod(shape)
        array = np.frombuffer(buf, dtype=np.dtype(dtype), count=count, offset=start)
        start += array.nbytes
        fields = dict(zip(_FRAME_FIELDS, values, strict=True))
        fields["view"] = View(fields["view"])
        images.append(CxrImage(array=array.reshape(shape), **fields))
    if start != len(buf):
        raise ValueError(f"{len(buf) - start} bytes after the arrays")
    return Prepared(tuple(images), ViewEvidence(*evidence))


def _records(path: Path) -> Iterator[tuple[bytes, bytes, int, int]]:
    """``(mark, key, payload offset, payload length)`` of each whole record of a pack."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos + _HEAD.size <= size:
            f.seek(pos)
            mark, key, length = _HEAD.unpack(f.read(_HEAD.size))
            start = pos + _HEAD.size
            if mark not in (_LIVE, _PICKLED, _TAKEN) or start + length > size:
                return  # a record cut short, or not a pack: the scan ends here
            yield mark, key, start, length
            pos = start + length


Entries = dict[bytes, tuple[Path, int, int, bytes]]  # key -> (pack, payload offset, length, mark)
_SCANNED: dict[str, tuple[object, Entries]] = {}  # folder -> (its packs' sizes, entries)


def _live(folder: Path, *, fresh: bool = False) -> Entries:
    """The entries of a store that were live when its packs last changed size (a taken mark
    is checked again when an entry is read). One scan per process while the packs stay as
    they are: each conversion task of a build asks. ``fresh``: scan now (taken marks do not
    change sizes), for a count."""
    packs = sorted(folder.glob(f"*{_SUFFIX}")) if folder.is_dir() else []
    state = tuple((p.name, p.stat().st_size) for p in packs)
    cached = _SCANNED.get(str(folder))
    if not fresh and cached is not None and cached[0] == state:
        return dict(cached[1])
    found: Entries = {}
    for path in packs:
        for mark, key, start, length in _records(path):
            if mark in (_LIVE, _PICKLED):
                found[key] = (path, start, length, mark)
    _SCANNED[str(folder)] = (state, found)
    return dict(found)


class ScratchReader:
    """The conversion side: :meth:`take` an instance's entry, if the store has one for the zip
    as it is now on disk. Counts what it took."""

    def __init__(self, folder: str | os.PathLike[str], root: str, cfg: CxrConfig) -> None:
        self.folder = Path(folder)
        self.root = root
        self.settings = _settings_hash(cfg)
        self.taken = 0
        self._stat: dict[str, tuple[int, int]] = {}
        self._entries: Entries | None = None

    def take(self, inst: Instance) -> Prepared | None:
        """The stored :class:`hiroml.cxr.convert.Prepared` of ``inst`` (the entry is marked taken),
        or None."""
        key = self._stat.get(inst.rel_zip)
        if key is None:
            try:
                st = os.stat(os.path.join(self.root, inst.rel_zip))
            except OSError:
                return None
            key = self._stat[inst.rel_zip] = (st.st_size, st.st_mtime_ns)
        if self._entries is None:
            self._entries = _live(self.folder)  # once per reader: the index has finished
        where = self._entries.pop(entry_key(inst.rel_zip, *key, inst.member, self.settings), None)
        if where is None:
            return None
        path, start, length, mark = where
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        payload = bytearray(length)
        try:
            if os.pread(fd, len(mark), start - _HEAD.size) != mark:
                return None  # taken since the scan
            got = os.preadv(fd, [payload], start)
            os.pwrite(fd, _TAKEN, start - _HEAD.size)  # taken once, also by another reader
            _release(fd, start, length)
        finally:
            os.close(fd)
        try:
            if got != length:
                raise ValueError(f"{got} of {length} bytes read")
            ready: Prepared = _prepared(payload) if mark == _LIVE else pickle.loads(payload)
        except Exception as e:  # a damaged entry: the conversion reads the zip instead
            log.warning("%s: scratch entry unreadable (%s), reading the zip", inst.member, e)
            return None
        self.taken += 1
        return ready


_FALLOC_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (Linux)
_fallocate: Any = None


def _release(fd: int, start: int, length: int) -> bool:
    """Free a taken payload's pages and blocks (Linux ``fallocate`` punching a hole), as
    deleting a file per member would: the memory goes back to the build at once. Where the
    call or the file system lacks it, the payload stays until :func:`sweep`. Whether it did."""
    global _fallocate
    if _fallocate is None:
        try:
            _fallocate = ctypes.CDLL(None, use_errno=True).fallocate
            _fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
        except (OSError, AttributeError):
            _fallocate = False
    # a failure leaves the bytes: harmless
    return bool(_fallocate) and _fallocate(fd, _FALLOC_PUNCH, start, length) == 0


def count(out_dir: str | os.PathLike[str]) -> int:
    """How many live entries the store holds."""
    return len(_live(scratch_dir(out_dir), fresh=True))


def sweep(out_dir: str | os.PathLike[str]) -> int:
    """Delete the store (its packs, whatever else is there); how many live entries it held."""
    folder = scratch_dir(out_dir)
    _close_packs(folder)
    if not folder.is_dir():
        return 0
    left = len(_live(folder, fresh=True))
    _SCANNED.pop(str(folder), None)
    for path in folder.iterdir():
        path.unlink(missing_ok=True)
    folder.rmdir()
    return left
