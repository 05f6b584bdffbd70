"""A passing self-check remembered per environment, so that each build need not run it again.

The record is an empty file named by :func:`fingerprint` under the user's cache folder
(``$XDG_CACHE_HOME/hiroml/selfcheck``, else ``~/.cache/hiroml/selfcheck``). The fingerprint
covers what decides the checks' values: the Python executable and version, hiroml's source
files (path, size, modification time), the golden values, and for each library of
:data:`hiroml.doctor.libraries.LIBRARIES` its version and its installed file list (the
distribution's ``RECORD``, which holds every file's hash). An upgrade, a reinstall or an
edit of hiroml gives another fingerprint, and the check runs again. Only passes are
recorded; a folder that cannot be written only means the check runs every time."""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from hiroml.doctor.libraries import LIBRARIES, environment

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/hiroml/selfcheck`` (``~/.cache`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hiroml" / "selfcheck"


def _record(dist: str) -> str:
    try:
        return importlib.metadata.distribution(dist).read_text("RECORD") or ""
    except importlib.metadata.PackageNotFoundError:
        return ""


def fingerprint(golden: Mapping[str, str]) -> str:
    """The BLAKE2b (128 bit) of everything that decides the self-check's outcome."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{sys.executable}\0{sys.version}\0{sorted(environment().items())}".encode())
    h.update(repr(sorted(golden.items())).encode())
    for _, dists in LIBRARIES:
        for dist in dists:
            h.update(f"\0{dist}\0{_record(dist)}".encode())
    package = Path(__file__).resolve().parent.parent
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        h.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def recorded(key: str) -> bool:
    """Whether a pass is recorded under ``key`` (a :func:`fingerprint`)."""
    return (cache_dir() / key).is_file()


def record(key: str) -> None:
    """Record a pass under ``key``; a folder that cannot be written is only logged."""
    path = cache_dir() / key
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as e:
        log.debug("self-check pass not recorded in %s: %s", path.parent, e)
