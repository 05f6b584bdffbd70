"""Pinned versions: protected from pruning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from hiroml.versions.listing import Version, VersionError, find_version
from hiroml.versions.publishing import _now
from hiroml.vocab import PIN_FILE


def pin(out: Path | str, version: str | int, note: str = "") -> Version:
    """Protect a version from pruning (writes ``versions/<v>/PINNED``)."""
    v = find_version(out, version)
    if v is None:
        raise VersionError(f"{out} has no versions to pin")
    text = json.dumps({"pinned": _now(), "note": note})
    (v.path / PIN_FILE).write_text(text + "\n", encoding="utf-8")
    return dataclasses.replace(v, pinned=True)


def unpin(out: Path | str, version: str | int) -> Version:
    """Let a pinned version be pruned again."""
    v = find_version(out, version)
    if v is None:
        raise VersionError(f"{out} has no versions to unpin")
    (v.path / PIN_FILE).unlink(missing_ok=True)
    return dataclasses.replace(v, pinned=False)
