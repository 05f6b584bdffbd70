"""The only code that opens zips: safe, in-memory member access.

A zip is read whole into memory (or given as bytes) and its members are inflated one at a
time with ISA-L (``isal``) where available, about twice as fast as :mod:`zlib`; CRC-32 is
checked. Nothing is ever extracted to disk by its member path.

Caps, checked from the central directory before anything is inflated, and again while
inflating (a member whose header lies about its size is cut off at the declared size):

- member count (``max_members``);
- declared uncompressed size of one member (``max_member_bytes``) and of all
  (``max_total_bytes``);
- compression ratio of one member (``max_ratio``; members under 64 KiB are exempt, as tiny
  files compress oddly but cannot bomb).

Unsafe member names (absolute, drive letters, ``..`` components, NUL) are not served: they
are listed in :attr:`SafeZip.rejected` with the reason, so the caller can audit them. So are
members that share one name once ``\\`` is read as ``/`` (a name written twice, or
``S1\\img.dcm`` beside ``S1/img.dcm``): each is listed, naming all of them.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from types import ModuleType

from hiroml.config import IndexConfig
from hiroml.errors import BadInputError, ZipSafetyError

_inflate_lib: ModuleType
try:  # ISA-L inflate: same output as zlib, about 2x faster.
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - isal is a dependency, zlib the fallback
    _inflate_lib = zlib

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_LOCAL_MAGIC = b"PK\x03\x04"
_RATIO_EXEMPT_BYTES = 64 * 1024


def _read_regular_file(path: str) -> bytes:
    """The bytes of ``path``, which must be a regular file once symlinks are followed.

    Opened with ``O_NONBLOCK`` so that a FIFO never blocks the open, then checked with
    ``fstat`` before anything is read: a FIFO or a device (``/dev/zero``) is never read.
    """
    label = os.path.basename(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise BadInputError(f"{label}: cannot be opened ({e.strerror or e})") from e
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BadInputError(
                f"{label}: not a regular file (mode {stat.filemode(mode)}); not read"
            )
        return fh.read()


def unsafe_name_reason(name: str) -> str | None:
    """Why a member name must not be used, or None when it is safe."""
    if "\x00" in name:
        return "member name holds a NUL byte"
    norm = name.replace("\\", "/")
    if norm.startswith("/"):
        return "absolute member path"
    if len(norm) > 1 and norm[1] == ":":
        return "member path with a drive letter"
    if any(part == ".." for part in norm.split("/")):
        return "path traversal ('..') in member name"
    return None


class SafeZip:
    """A zip read in memory with safety caps. Use as a context manager.

    ``source`` is a path or the zip's bytes. Raises :class:`BadInputError` when the file is
    not a readable zip (corrupt, truncated) and :class:`ZipSafetyError` when a cap is
    exceeded; messages name the file.
    """

    def __init__(
        self, source: str | os.PathLike[str] | bytes, limits: IndexConfig | None = None
    ) -> None:
        self.limits = limits or IndexConfig()
        if isinstance(source, bytes | bytearray):
            self.name = "<bytes>"
            self._data = bytes(source)
        else:
            self.name = os.fspath(source)
            self._data = _read_regular_file(self.name)
        label = os.path.basename(self.name)
        try:
            self._zf = zipfile.ZipFile(io.BytesIO(self._data))
            infos = self._zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise BadInputError(f"{label}: not a readable zip file ({e})") from e
        self.rejected: list[tuple[str, str]] = []
        self._infos: dict[str, zipfile.ZipInfo] = {}
        files = [i for i in infos if not i.is_dir()]
        if len(files) > self.limits.max_members:
            raise ZipSafetyError(
                f"{label}: {len(files)} members, more than the cap of "
                f"{self.limits.max_members} (index.max_members)"
            )
        total = 0
        clashes: dict[str, list[zipfile.ZipInfo]] = {}
        for info in files:
            reason = unsafe_name_reason(info.filename)
            if reason is not None:
                self.rejected.append((info.filename, reason))
                continue
            if info.file_size > self.limits.max_member_bytes:
                raise ZipSafetyError(
                    f"{label}: member {info.filename} declares {info.file_size} bytes, more "
                    f"than the cap of {self.limits.max_member_bytes} (index.max_member_bytes)"
                )
            if (
                info.file_size > _RATIO_EXEMPT_BYTES
                and info.file_size > self.limits.max_ratio * max(info.compress_size, 1)
            ):
                raise ZipSafetyError(
                    f"{label}: member {info.filename} inflates {info.compress_size} -> "
                    f"{info.file_size} bytes, a ratio over {self.limits.max_ratio:g} "
                    "(index.max_ratio): refused as a possible zip bomb"
                )
            total += info.file_size
            key = info.filename.replace("\\", "/")
            if key in clashes:
                clashes[key].append(info)
            elif key in self._infos:
                clashes[key] = [self._infos.pop(key), info]
            else:
                self._infos[key] = info
        for key, same in clashes.items():
            names = ", ".join(repr(i.filename) for i in same)
            for info in same:
                self.rejected.append(
                    (
                        info.filename,
                        f"{len(same)} members share the name {key} ({names}): which one is "
                        "meant cannot be told, none is read",
                    )
                )
        if total > self.limits.max_total_bytes:
            raise ZipSafetyError(
                f"{label}: members declare {total} bytes in all, more than the cap of "
                f"{self.limits.max_total_bytes} (index.max_total_bytes)"
            )
        self.label = label

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._zf.close()
        self._data = b""

    @property
    def compressed_size(self) -> int:
        return len(self._data)

    def members(self) -> list[str]:
        """Safe file members, in the zip's own order ('/' separators)."""
        return list(self._infos)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def size(self, member: str) -> int:
        """Declared uncompressed size of a member, in bytes."""
        return self._infos[member].file_size

    def read(self, member: str) -> bytes:
        """The member's bytes, inflated in memory and CRC-checked.

        Raises :class:`BadInputError` naming the zip and member when the data is damaged.
        """
        info = self._infos.get(member)
        if info is None:
            raise BadInputError(f"{self.label}: no safe member named {member!r}")
        try:
            if info.compress_type == zipfile.ZIP_DEFLATED and not info.flag_bits & 0x1:
                data = self._inflate(info)
            else:  # stored, bzip2, lzma: the standard library, capped by the declared size
                with self._zf.open(info) as fh:
                    data = fh.read(info.file_size + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError) as e:
            raise BadInputError(f"{self.label}: member {member} is damaged ({e})") from e
        if len(data) != info.file_size:
            raise BadInputError(
                f"{self.label}: member {member} inflates to {len(data)} bytes, "
                f"its header says {info.file_size}"
            )
        if _inflate_lib.crc32(data) & 0xFFFFFFFF != info.CRC:
            raise BadInputError(f"{self.label}: member {member} fails its CRC-32 check")
        return data

    def _inflate(self, info: zipfile.ZipInfo) -> bytes:
        off = info.header_offset
        head = self._data[off : off + _LOCAL_HEADER.size]
        if len(head) < _LOCAL_HEADER.size:
            raise BadInputError(f"{self.label}: member {info.filename} is cut short")
        fields = _LOCAL_HEADER.unpack(head)
        if fields[0] != _LOCAL_MAGIC:
            raise BadInputError(f"{self.label}: member {info.filename} has a bad local header")
        name_len, extra_len = fields[9], fields[10]
        start = off + _LOCAL_HEADER.size + name_len + extra_len
        raw = memoryview(self._data)[start : start + info.compress_size]
        if len(raw) < info.compress_size:
            raise BadInputError(f"{self.label}: member {info.filename} is cut short")
        d = _inflate_lib.decompressobj(-15)
        # Never inflate past the declared size: a lying header cannot bomb us.
        out = d.decompress(raw, info.file_size + 1)
        return bytes(out)
