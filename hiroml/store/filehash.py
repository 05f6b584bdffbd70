"""The SHA-256 of a file's bytes (:func:`shard_sha256`: the shards', the tables', any file's),
and a block within which each file is read for it once (:func:`sha256_once`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any


def shard_sha256(path: Path | str) -> str:
    """SHA-256 (hex) of a file's bytes (:func:`hashlib.file_digest`: read into one reused
    buffer, no new block per read). Within :func:`sha256_once`, a file is read once."""
    memo = _SHA256_ONCE.get()
    if memo is None:
        return _sha256(path)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = memo.get(key)
    if digest is None:
        digest = memo[key] = _sha256(path)
    return digest


def _sha256(path: Path | str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


#: the SHA-256 of the files hashed in the current :func:`sha256_once` block, by the file's
#: path and what ``stat`` says of it; None outside one
_SHA256_ONCE: ContextVar[dict[tuple[Any, ...], str] | None] = ContextVar(
    "hiroml_sha256_once", default=None
)


@contextmanager
def sha256_once() -> Iterator[None]:
    """Within the block, :func:`shard_sha256` reads each file once: a file asked again with
    the same path, device, inode, size, modification and change times gets the digest
    computed before. For a block in which no file is changed in place (a version's tables,
    written once, then hashed for ``build.json`` and again for ``croissant.json``); a file
    replaced (a new inode) is read again."""
    token = _SHA256_ONCE.set({})
    try:
        yield
    finally:
        _SHA256_ONCE.reset(token)
