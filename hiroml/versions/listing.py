"""Listing the versions of an output folder."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiroml.errors import HiromlError
from hiroml.vocab import BUILD_JSON, MANIFEST, PIN_FILE, VERSIONS_DIR

log = logging.getLogger(__name__)
#: audit ``reason`` of a patient whose split changed because its group was joined to another
SPLIT_MOVED = "split moved"
_NAME = re.compile(r"^(\d{4,})-([0-9a-f]{8})$")
#: files of a version folder that are not copied to the root
_NOT_AT_ROOT = frozenset({BUILD_JSON, PIN_FILE, MANIFEST})


class VersionError(HiromlError):
    """A version that does not exist, or a versions folder that cannot be used."""


@dataclass(frozen=True, slots=True)
class Version:
    """One published version: its folder and what its ``build.json`` says."""

    name: str
    seq: int
    path: Path
    created: str
    dataset_hash: str
    samples: int
    patients: int
    pinned: bool
    note: str = ""  # the pin's note (hiroml-versions --pin V --note TEXT)
    #: the definition ``dataset_hash`` was computed by (:func:`hiroml.versions.hash_table`);
    #: 1 where ``build.json`` records none
    dataset_hash_scheme: int = 1

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.name,
            "created": self.created,
            "samples": self.samples,
            "patients": self.patients,
            "dataset_hash": self.dataset_hash,
            "dataset_hash_scheme": self.dataset_hash_scheme,
            "pinned": self.pinned,
            "note": self.note,
            "path": str(self.path),
        }


def versions_dir(out: Path | str) -> Path:
    return Path(out) / VERSIONS_DIR


def locate(path: Path | str) -> tuple[Path, str | None]:
    """The output folder a path names, and the version it names (``None``: not one).

    An output folder is itself; its ``manifest.parquet`` means the output folder; a version's
    ``versions/<V>/manifest.parquet`` (or the folder ``versions/<V>``) means the output folder
    and version ``V``. Any other path is returned as it is, for the caller to refuse."""
    p = Path(path)
    if p.name == MANIFEST and p.is_file():
        p = p.parent
    if p.parent.name == VERSIONS_DIR and _NAME.match(p.name) and p.is_dir():
        return p.parent.parent, p.name
    return p, None


def _read_version(path: Path, *, strict: bool = False) -> Version | None:
    m = _NAME.match(path.name)
    if m is None or not (path / MANIFEST).is_file():
        return None
    try:
        info = json.loads((path / BUILD_JSON).read_text(encoding="utf-8"))
        if not isinstance(info, dict):
            raise ValueError(f"a JSON {type(info).__name__}, not an object")
    except (OSError, ValueError) as e:
        if strict:
            raise VersionError(
                f"{path / BUILD_JSON} cannot be read ({e}): nothing is deleted while a version "
                "cannot be accounted for. Restore that file, or move the version folder out of "
                f"{path.parent} if it is not wanted, then run again"
            ) from e
        log.warning("version %s has no readable %s (%s): ignored", path, BUILD_JSON, e)
        return None
    return Version(
        name=path.name,
        seq=int(m.group(1)),
        path=path,
        created=str(info.get("created", "")),
        dataset_hash=str(info.get("dataset_hash", "")),
        samples=int(info.get("samples", 0)),
        patients=int(info.get("patients", 0)),
        pinned=(path / PIN_FILE).is_file(),
        note=_pin_note(path / PIN_FILE),
        dataset_hash_scheme=int(info.get("dataset_hash_scheme", 1)),
    )


def _pin_note(path: Path) -> str:
    """The note a pin file holds (``{"pinned": time, "note": text}``); "" without one."""
    try:
        note = json.loads(path.read_text(encoding="utf-8")).get("note", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return note if isinstance(note, str) else str(note)


def list_versions(out: Path | str, *, strict: bool = False) -> list[Version]:
    """The complete versions of an output folder, oldest first (hidden and half-written
    folders are skipped). A version folder whose ``build.json`` cannot be read is skipped with
    a warning, or, with ``strict`` (what deletes data asks for), raises :class:`VersionError`
    naming the file."""
    root = versions_dir(out)
    if not root.is_dir():
        return []
    found = [_read_version(p, strict=strict) for p in root.iterdir() if p.is_dir()]
    return sorted((v for v in found if v is not None), key=lambda v: (v.seq, v.name))


def find_version(out: Path | str, version: str | int | None = None) -> Version | None:
    """The version named ``version``: its full name (``0007-3f9a1c2e``), its sequence number
    (``7``, ``"0007"``) or ``None``/``"latest"`` for the newest. ``None`` when the folder has
    no version and none was named; :class:`VersionError` naming the versions there when the
    one asked for does not exist."""
    found = list_versions(out)
    if version is None or version == "latest":
        return found[-1] if found else None
    text = str(version).strip()
    for v in found:
        if text == v.name or (text.isdigit() and int(text) == v.seq):
            return v
    names = ", ".join(v.name for v in found) or "none"
    raise VersionError(
        f"{out}: no version {text!r} (versions kept: {names}; see hiroml-versions {out})"
    )


def tables_dir(out: Path | str, version: str | int | None = None) -> tuple[Path, str | None]:
    """Where the tables of ``version`` are, and its name: the version folder, or the output
    folder itself (name ``None``) for an output without ``versions/``.
    """
    v = find_version(out, version)
    if v is None:
        return Path(out), None
    return v.path, v.name
