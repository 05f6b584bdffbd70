"""The environment that decides stored values: the versions of the libraries on the numeric paths,
the float16 casts' path and the decoders of a version's samples (``build.json``'s ``environment``),
as rows for the report and as changes for a diff."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hiroml._version import __version__

if TYPE_CHECKING:
    pass


NOT_INSTALLED = "not installed"

#: The libraries whose versions decide stored values (and torch, which reads them), by the
#: name the environment table shows, with the distributions that provide each, in order.
LIBRARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("numpy", ("numpy",)),
    (
        "opencv",
        (
            "opencv-python-headless",
            "opencv-python",
            "opencv-contrib-python-headless",
            "opencv-contrib-python",
        ),
    ),
    ("pillow", ("pillow",)),
    ("pylibjpeg", ("pylibjpeg",)),
    ("pylibjpeg-libjpeg", ("pylibjpeg-libjpeg",)),
    ("pylibjpeg-openjpeg", ("pylibjpeg-openjpeg",)),
    ("pylibjpeg-rle", ("pylibjpeg-rle",)),
    ("imagecodecs", ("imagecodecs",)),
    ("SimpleITK", ("simpleitk",)),
    ("pydicom", ("pydicom",)),
    ("h5py", ("h5py",)),
    ("hdf5plugin", ("hdf5plugin",)),
    ("torch", ("torch",)),
)


_SHOWN = {"opencv": "OpenCV", "pillow": "Pillow"}


def _installed(dists: Sequence[str]) -> str:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    env = {"python": platform.python_version(), "hiroml": __version__}
    env.update({name: _installed(dists) for name, dists in LIBRARIES})
    return tuple(env.items())


def environment() -> dict[str, str]:
    """Python's, hiroml's and each of :data:`LIBRARIES`' version (``"not installed"`` where
    absent), read from the package metadata (nothing is imported) once per process, as the
    self-check (:func:`hiroml.doctor.checks.checked`) runs once per process; a new dict each
    call."""
    return dict(_versions())


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def tested_range(library: str) -> str:
    """hiroml's requirement on ``library`` (a :data:`LIBRARIES` name) as its package metadata
    states it, lower bound first, e.g. ``"opencv-python-headless >=5.0, <6"``; "" when
    hiroml's metadata is not there (a source tree not installed) or names no such one."""
    dists = {_normalized(d) for name, ds in LIBRARIES if name == library for d in ds}
    try:
        requires = importlib.metadata.requires("hiroml") or []
    except importlib.metadata.PackageNotFoundError:
        return ""
    for req in requires:
        spec, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", spec)
        if m and _normalized(m.group(1)) in dists:
            parts = [p.strip() for p in m.group(3).split(",") if p.strip()]
            parts.sort(key=lambda p: not p.startswith(">"))  # the lower bound first
            return f"{m.group(1)} {', '.join(parts)}".strip()
    return ""


def library_label(library: str, env: dict[str, str]) -> str:
    """``"OpenCV 5.1.0"``: a :data:`LIBRARIES` name as shown, with its installed version."""
    return f"{_SHOWN.get(library, library)} {env.get(library, NOT_INSTALLED)}"


def halfcast_backend() -> str:
    """The path of :mod:`hiroml.store.halfcast`'s casts in this process (its ``backend()``), or ""
    where the module does not say."""
    from hiroml.store import halfcast

    backend = getattr(halfcast, "backend", None)
    return str(backend()) if callable(backend) else ""


def environment_record(decoders: Iterable[Any] = ()) -> dict[str, Any]:
    """The ``environment`` object of a version's ``build.json``: ``versions`` (the
    :func:`environment`), ``halfcast`` (:func:`halfcast_backend`, where known) and
    ``decoders``: how many samples each decoder decoded, from the samples' ``decoder`` (as
    their shard meta records it: a CT volume decoded by several names them joined by ", ";
    "" for a sample of a task recorded before decoders were kept, counted as "not recorded")."""
    counts: dict[str, int] = {}
    for cell in decoders:
        names = {n.strip() for n in str(cell or "").split(",") if n.strip()} or {"not recorded"}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    record: dict[str, Any] = {"versions": environment()}
    backend = halfcast_backend()
    if backend:
        record["halfcast"] = backend
    record["decoders"] = dict(sorted(counts.items()))
    return record


def environment_rows(record: Mapping[str, Any] | None) -> list[list[str]]:
    """An :func:`environment_record` as (what, value) rows for the report and the card:
    each library's version, the float16 casts' path, the decoders with their sample counts;
    no row for a version built before the environment was recorded."""
    if not isinstance(record, Mapping):
        return []
    versions = record.get("versions")
    rows = [
        [str(k), str(v)] for k, v in (versions if isinstance(versions, Mapping) else {}).items()
    ]
    if record.get("halfcast"):
        rows.append(["float16 casts (halfcast)", str(record["halfcast"])])
    decoders = record.get("decoders")
    if isinstance(decoders, Mapping) and decoders:
        used = ", ".join(f"{k} ({v})" for k, v in decoders.items())
        rows.append(["decoders (samples)", used])
    return rows


def environment_changes(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> list[str]:
    """``hiroml-versions --diff``'s environment lines from version A's record to B's:
    ``"environment: numpy 2.2.6 -> 2.4.6"`` per library whose version changed (and the
    float16 casts' path), ``"environment: unchanged"`` when none did, and a line saying so
    where a version has no record (built before it was kept)."""
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        which = " and ".join(n for n, r in (("A", a), ("B", b)) if not isinstance(r, Mapping))
        return [f"environment: not recorded in {which}"]

    def flat(r: Mapping[str, Any]) -> dict[str, str]:
        versions = r.get("versions")
        out = {
            str(k): str(v) for k, v in (versions if isinstance(versions, Mapping) else {}).items()
        }
        if r.get("halfcast"):
            out["halfcast"] = str(r["halfcast"])
        return out

    fa, fb = flat(a), flat(b)
    lines = [
        f"environment: {k} {fa.get(k, NOT_INSTALLED)} -> {fb.get(k, NOT_INSTALLED)}"
        for k in [*fa, *(k for k in fb if k not in fa)]
        if fa.get(k) != fb.get(k)
    ]
    return lines or ["environment: unchanged"]
