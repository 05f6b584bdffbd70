"""Pinned versions: protected from pruning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from hiroml.store.atomic import write_text_atomic
from hiroml.versions.listing import Version, VersionError, find_version
from hiroml.versions.publishing import _now
from hiroml.vocab import PIN_FILE


def pin(out: Path | str, version: str | int, note: str = "") -> Version:
    """Protect a version from pruning (writes ``versions/<v>/PINNED``, atomically), with a
    note saying why (listed by ``hiroml-versions``); pinning a pinned version again without a
    note keeps its note. Callers that may run beside a prune hold the output's lock
    (:mod:`hiroml.store.lock`), so that the version is not deleted between being found and
    being pinned."""
    v = find_version(out, version)
    if v is None:
        raise VersionError(f"{out} has no versions to pin")
    note = note or v.note
    text = json.dumps({"pinned": _now(), "note": note})
    write_text_atomic(v.path / PIN_FILE, text + "\n")
    return dataclasses.replace(v, pinned=True, note=note)


def unpin(out: Path | str, version: str | int) -> Version:
    """Let a pinned version be pruned again."""
    v = find_version(out, version)
    if v is None:
        raise VersionError(f"{out} has no versions to unpin")
    (v.path / PIN_FILE).unlink(missing_ok=True)
    return dataclasses.replace(v, pinned=False, note="")
