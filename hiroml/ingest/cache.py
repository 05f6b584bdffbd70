"""The index cache: one SQLite table of instance and problem records per zip, keyed by the zip's
path, size and time (a re-run indexes only new or changed zips)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from hiroml.frozen import maker, share_texts
from hiroml.records import ExamZip, Instance, Problem, ZipIndex
from hiroml.vocab import Action

log = logging.getLogger(__name__)
_INSTANCE_FIELDS = tuple(f.name for f in fields(Instance))
_TUPLE_FIELDS = frozenset(
    {"image_type", "position", "orientation", "pixel_spacing", "imager_pixel_spacing"}
)
# The cache is invalidated whenever the Instance record changes shape, or when the prefix
# is bumped because the rules of what is indexed changed (2: NaN positions, 0 x 0 images,
# missing Rows/Columns and over-long pixel data refused; damaged elements reported).
SCHEMA_VERSION = "3:" + hashlib.sha1(",".join(_INSTANCE_FIELDS).encode()).hexdigest()[:12]


def _to_row(obj: Instance | Problem) -> list[Any]:
    return [getattr(obj, f.name) for f in fields(obj)]


#: positions of the tuple fields in a stored row (JSON gives lists)
_TUPLE_AT = tuple(k for k, name in enumerate(_INSTANCE_FIELDS) if name in _TUPLE_FIELDS)
#: ``Instance(*row)`` without the frozen ``__init__`` (a sixth of the time: every build
#: makes one per cached zip's instance)
_make_instance = maker(Instance)
#: the text fields instances share (a batch, a study, a series, the modality, the
#: transfer syntax...) and the image type: read back as one object per distinct value
#: (:func:`_instance_from_row`'s ``shared``), not one per instance; the SOP instance UID and
#: the pixel hash are each instance's own
_SHARED_AT = tuple(
    k
    for k, f in enumerate(fields(Instance))
    if f.type in ("str", "str | None", "tuple[str, ...]")
    and f.name not in ("sop_uid", "pixel_hash")
)
_make_zip_index = maker(ZipIndex)


def _instance_from_row(row: list[Any], shared: dict[Any, Any]) -> Instance:
    """An Instance from its stored row: its fields in order (the schema fixes their number).
    ``shared`` maps each value of the :data:`_SHARED_AT` fields read so far to itself: a
    value seen before is taken from it (a zip's 300 CT slices hold one study UID). Only texts
    and tuples of texts are shared (:func:`hiroml.frozen.share_texts`): a damaged row's
    other values are read as they are."""
    if len(row) != len(_INSTANCE_FIELDS):
        raise ValueError(f"an index row of {len(row)} fields, not {len(_INSTANCE_FIELDS)}")
    for k in _TUPLE_AT:
        if row[k] is not None:
            row[k] = tuple(row[k])
    share_texts(row, _SHARED_AT, shared)
    return _make_instance(*row)


def _problem_from_row(row: list[Any]) -> Problem:
    """A Problem from its stored row (its fields in order; a shorter row, written before
    fields were added, leaves the newer ones at their defaults)."""
    kw = dict(zip((f.name for f in fields(Problem)), row, strict=False))
    kw["action"] = Action(kw["action"])
    return Problem(**kw)


class IndexCache:
    """The SQLite index database: one row per zip with its instances and problems as JSON.

    ``key`` is ``(size, mtime_ns)``: a zip whose key changed is re-read.
    """

    def __init__(self, path: str | os.PathLike[str], *, root: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS zips (rel_path TEXT PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, instances TEXT, problems TEXT)"
        )
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        want = {"schema": SCHEMA_VERSION, "root": os.path.abspath(root)}
        if any(meta.get(k) != v for k, v in want.items()):
            if meta:
                log.info("index cache %s was made for another schema or datamart: reset", self.path)
            self.db.execute("DELETE FROM zips")
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", want.items())
            self.db.commit()

    def close(self) -> None:
        self.db.close()

    def keys(self) -> dict[str, tuple[int, int]]:
        rows = self.db.execute("SELECT rel_path, size, mtime_ns FROM zips").fetchall()
        return {r: (s, m) for r, s, m in rows}

    def load(self, rel_paths: Iterable[str]) -> Iterator[ZipIndex]:
        wanted = set(rel_paths)
        shared: dict[Any, Any] = {}  # the texts instances share, one object each
        for rel, inst_json, prob_json in self.db.execute(
            "SELECT rel_path, instances, problems FROM zips ORDER BY rel_path"
        ):
            if rel in wanted:
                yield _make_zip_index(
                    rel,
                    tuple([_instance_from_row(row, shared) for row in json.loads(inst_json)]),
                    ()
                    if prob_json == "[]"
                    else tuple(map(_problem_from_row, json.loads(prob_json))),
                )

    def store(self, ezip: ExamZip, zi: ZipIndex) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO zips VALUES (?, ?, ?, ?, ?)",
            (
                ezip.rel_path,
                ezip.size,
                ezip.mtime_ns,
                json.dumps([_to_row(i) for i in zi.instances]),
                json.dumps([_to_row(p) for p in zi.problems]),
            ),
        )

    def forget(self, rel_paths: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM zips WHERE rel_path = ?", [(r,) for r in rel_paths])

    def commit(self) -> None:
        self.db.commit()
