"""The one line a build ends with when the disk of its output is full.

A full disk (``ENOSPC``, an exceeded quota ``EDQUOT``, SQLite's "database or disk is full")
anywhere in a build, the index, a worker's shard, the version folder, the root files, ends the
build with :class:`~hiroml.errors.DiskFullError` (exit 6): "no space left on <device> at
<mount> (<free> free, about <need> needed); the previous version V is intact". Publishing is
all or nothing (:mod:`hiroml.versions.publishing`), so the version named is the one
``HiromlDataset()`` opens, whole, with root tables of that same version.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

from hiroml.errors import DiskFullError

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_TEXTS = ("No space left on device", "Disk quota exceeded", "database or disk is full")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the quota) is full."""
    if isinstance(err, OSError) and err.errno in _FULL:
        return True
    if not isinstance(err, OSError | sqlite3.OperationalError):
        return False
    return any(t in str(err) for t in _TEXTS)


def mount_of(path: Path) -> tuple[str, str]:
    """(mount point, device) of the file system holding ``path`` (its nearest existing
    folder); the device from ``/proc/mounts``, else the mount point again."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    device = str(p)
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1] == str(p):
                device = fields[0]  # the last mount on a point is the one in use
    except OSError:
        pass
    return str(p), device


def human(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def folder_bytes(folder: Path) -> int:
    """Bytes of the files directly in ``folder`` (0 when it is not there)."""
    try:
        return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
    except OSError:
        return 0


def disk_full_error(
    err: BaseException,
    out: Path,
    *,
    version: str | None,
    need: int | None = None,
    published: bool = False,
) -> DiskFullError | None:
    """The :class:`DiskFullError` of ``err`` met while building ``out``, None when ``err``
    is not a full disk. ``version``: the latest version now (None: none was published);
    ``published``: this build published it, and failed after; ``need``: bytes the build
    still meant to write (default: twice the latest version's tables and report, the
    version folder and its root copies)."""
    if not is_disk_full(err):
        return None
    mount, device = mount_of(out)
    try:
        free = shutil.disk_usage(mount).free
    except OSError:
        free = 0
    if need is None:
        from hiroml.versions.listing import versions_dir

        need = 2 * folder_bytes(versions_dir(out) / version) if version else 0
    need = max(need, 1 << 20)
    where = f"{device} at {mount}" if device != mount else mount
    kept = f"the previous version {version} is intact" if version else "no version was published"
    if published:
        kept = f"version {version} was published whole; the build's records after it were not"
    return DiskFullError(
        f"no space left on {where} ({human(free)} free, about {human(need)} needed); {kept}; "
        "free some space (or set paths.output elsewhere) and run again: the tasks already "
        "finished are reused"
    )
