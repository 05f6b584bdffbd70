"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The content goes to a temporary file beside the target (same folder, so the same
filesystem), is flushed to disk (``fsync``), then renamed over the target with
:func:`os.replace`. A failed write removes its temporary file and leaves the target as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def temp_path(final: Path) -> Path:
    """The temporary name :func:`write_atomic` uses for ``final``: hidden, per process."""
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def write_atomic(final: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` to write the content of ``final`` into a temporary file, then move
    it into place atomically. Whatever ``write`` raises is re-raised, with no file left."""
    final = Path(final)
    tmp = temp_path(final)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(final: Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``final`` atomically."""
    write_atomic(final, lambda tmp: tmp.write_text(text, encoding))


def copy_atomic(src: Path, final: Path) -> None:
    """Copy ``src`` to ``final`` atomically (the bytes only, not the metadata)."""
    write_atomic(final, lambda tmp: shutil.copyfile(src, tmp))
