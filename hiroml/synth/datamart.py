"""The datamart being planned: sizes, planned zips and the shared state of one generation.

One :class:`Datamart` holds the single seeded random stream that every scenario draws
from, in the order the scenario table runs, the id counters (HIRO ids, exam ids, the
transfer-syntax cycle), the patients and the ground truth collected so far. Zips are
written to disk (:meth:`Datamart.flush`) as soon as their scenario is done, so memory
stays bounded at every size.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hiroml.synth.factory import (
    CLINICAL_NAME,
    CXR_SYNTAXES,
    REMAP_SHEET,
    derive_uid,
    write_remap_sheet,
    zip_bytes,
)
from hiroml.vocab import Action


@dataclass(frozen=True, slots=True)
class SizeSpec:
    """How big the generated datamart is. Planted situations are the same at every size."""

    cxr_min: int  # radiograph side lengths, pixels
    cxr_max: int
    ct_matrix: int  # CT rows = columns
    ct_thin: int  # slices of a thin (lung kernel) series over the chest
    ct_thick: int  # slices of a thick (soft-tissue kernel) series
    n_fill_cxr: int  # extra normal radiograph exams
    n_fill_ct: int  # extra normal CT exams


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(128, 192, 64, 24, 12, 2, 1),
    "demo": SizeSpec(512, 1024, 128, 64, 32, 30, 8),
    "bench": SizeSpec(2500, 3000, 512, 300, 60, 150, 6),
}


@dataclass
class PlannedZip:
    """One zip of the datamart while it is being filled, and its entry of the truth."""

    batch: str
    file: str
    time: dt.datetime
    members: list[tuple[str, bytes]] = field(default_factory=list)
    raw: bytes | None = None  # written as is (corrupt / truncated zips)
    pid: str = ""  # patient id written into the headers
    flushed: bool = False  # written to disk; members dropped from memory
    size: int = 0  # bytes on disk once flushed
    # (member, sop_uid, series_uid, bad) of every DICOM-ish member, archive order
    sops: list[tuple[str, str, str, bool]] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)

    @property
    def rel(self) -> str:
        """``batch/file``, the key of the zip in the truth."""
        return f"{self.batch}/{self.file}"


@dataclass(frozen=True, slots=True)
class Batches:
    """The batch folders: four complete radiograph batches, two complete CT batches and
    one CT upload still in progress."""

    cxr1: str
    cxr2: str
    cxr3: str
    cxr4: str
    ct1: str
    ct2: str
    ct_in_progress: str


@dataclass(frozen=True, slots=True)
class Planted:
    """What one scenario planted: its zips and its pairs for the truth (rel paths)."""

    zips: tuple[PlannedZip, ...]
    not_duplicates: tuple[tuple[str, str], ...] = ()
    partial_overlaps: tuple[tuple[str, str], ...] = ()
    missed_remaps: tuple[tuple[str, str], ...] = ()


class Datamart:
    """The state of one generation: seeded random stream, counters, zips and truth."""

    def __init__(self, root: Path, seed: int, size: str) -> None:
        self.root = root
        self.seed = seed
        self.size = size
        self.spec = SIZES[size]
        self.rng = np.random.default_rng([seed, 0x41B0])
        self.zips: dict[str, PlannedZip] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.cxr_images: dict[str, dict[str, Any]] = {}
        self.ct_series: dict[str, dict[str, Any]] = {}
        self.patients: dict[str, tuple[str, str]] = {}  # id -> (sex, age)
        self.not_duplicates: list[list[str]] = []
        self.partial: list[tuple[str, str]] = []
        self.missed: list[tuple[str, str]] = []
        self.remap: dict[str, str] = {}
        self.clinical_rows: list[dict[str, Any]] = []
        self._hiro = 0
        self._exam = 0
        self._syntax = 0
        self.on_zip: Callable[[], None] | None = None  # called as each zip is planned (progress)

    # ------------------------------------------------------------ ids, times, patients

    def uid(self, *parts: object) -> str:
        return derive_uid(self.seed, *parts)

    def hiro(self) -> str:
        self._hiro += 1
        return f"A{self._hiro:03d}"

    def exam_id(self, modality: str) -> str:
        self._exam += 1
        return f"{modality}-{self._exam:04d}"

    def when(self, day: int, hour: int | None = None) -> dt.datetime:
        """A study time ``day`` days after 2020-03-01 with seeded hour/minute/second."""
        h = int(self.rng.integers(0, 24)) if hour is None else hour
        m, s = int(self.rng.integers(0, 60)), int(self.rng.integers(0, 60))
        return dt.datetime(2020, 3, 1, h, m, s) + dt.timedelta(days=day)

    def patient(self, pid: str, *, pediatric: bool = False) -> tuple[str, str]:
        """(0010,0040) Patient's Sex and (0010,1010) Patient's Age of ``pid``, drawn once."""
        if pid not in self.patients:
            sex = "F" if self.rng.random() < 0.5 else "M"
            if pediatric:
                unit = ["M", "D", "W"][len(self.patients) % 3]
                n = {
                    "M": int(self.rng.integers(1, 24)),
                    "D": int(self.rng.integers(1, 28)),
                    "W": int(self.rng.integers(1, 8)),
                }[unit]
                age = f"{n:03d}{unit}"
            else:
                age = f"{int(self.rng.integers(19, 90)):03d}Y"
            self.patients[pid] = (sex, age)
        return self.patients[pid]

    def current(self, pid: str) -> str:
        """``pid`` after the remap sheet, chains followed to their end."""
        seen = set()
        while pid in self.remap and pid not in seen:
            seen.add(pid)
            pid = self.remap[pid]
        return pid

    def batch(self, name: str) -> str:
        """Create the batch folder ``name`` (``CXR|CT-UPDATE-YYYYMMDD-COMPLETE|IN-PROGRESS``)."""
        m = re.fullmatch(r"(CXR|CT)-UPDATE-(\d{8})-(COMPLETE|IN-PROGRESS)", name)
        if m is None:
            raise ValueError(f"batch name {name!r} does not follow the tip sheet")
        d = m.group(2)
        self.batches[name] = {
            "name": name,
            "modality": m.group(1).lower(),
            "status": m.group(3),
            "date": f"{d[:4]}-{d[4:6]}-{d[6:]}",
        }
        (self.root / name).mkdir(exist_ok=True)
        return name

    def next_syntax(self) -> str:
        ts = CXR_SYNTAXES[self._syntax % len(CXR_SYNTAXES)]
        self._syntax += 1
        return ts

    # ------------------------------------------------------------ zips

    def add_zip(
        self,
        batch: str,
        pid: str,
        t: dt.datetime,
        hiro: str,
        desc: str,
        *,
        kind: str = "normal",
        expected: str = Action.KEPT,
        kept_as: str = "",
        exam: str = "",
        file: str | None = None,
    ) -> PlannedZip:
        """Plan a zip named as the tip sheet says (or ``file``, for a badly named one)."""
        name = file or f"{pid}_{t:%Y%m%d-%H%M%S}_{hiro}_{desc}.zip"
        rel = f"{batch}/{name}"
        if rel in self.zips:
            raise ValueError(f"zip planned twice: {rel}")
        if self.batches[batch]["status"] == "IN-PROGRESS":
            expected, kind, exam = Action.SKIPPED, "in_progress", ""
        z = PlannedZip(batch, name, t, pid=pid)
        named = file is None
        z.truth = {
            "batch": batch,
            "file": name,
            "modality": self.batches[batch]["modality"],
            "patient_id_source": pid if named else "",
            "patient_id": self.current(pid) if named else "",
            "hiro_id": hiro if named else "",
            "time": t.isoformat() if named else "",
            "description": desc if named else "",
            "pediatric": bool(re.match(r"^[A-Z]{2,3}[-_ ]P[-_ ]", desc)) if named else False,
            "expected": expected,
            "kept_as": kept_as,
            "kind": kind,
            "exam": exam,
            "bad_members": [],
        }
        self.zips[rel] = z
        if self.on_zip is not None:
            self.on_zip()
        return z

    def add_copy(self, batch: str, orig: PlannedZip) -> PlannedZip:
        """Plan a zip delivering ``orig``'s exam again in ``batch`` under a new HIRO id
        (same patient, time, description and kind; expected: duplicate of ``orig``)."""
        t = orig.truth
        return self.add_zip(
            batch,
            t["patient_id_source"],
            orig.time,
            self.hiro(),
            t["description"],
            kind=t["kind"],
            expected=Action.DUPLICATE,
            kept_as=orig.rel,
            exam=t["exam"],
        )

    def flush_all(self) -> None:
        """Flush every zip planned so far (none of them changes any more)."""
        for rel in sorted(self.zips):
            self.flush(self.zips[rel])

    def flush(self, z: PlannedZip) -> None:
        """Write ``z`` to disk (CT members in a seeded shuffled order) and free its members.

        The shuffle has its own generator (seed, member count, day), so when a zip is
        flushed does not change the shared stream."""
        if z.flushed:
            return
        members = list(z.members)
        if z.truth["modality"] == "ct" and z.raw is None:
            order = np.random.default_rng([self.seed, len(members), z.time.toordinal()])
            members = [members[i] for i in order.permutation(len(members))]
        data = z.raw if z.raw is not None else zip_bytes(members, z.time)
        (self.root / z.batch / z.file).write_bytes(data)
        z.truth["members"] = [m for m, _ in members] if z.raw is None else []
        z.size = len(data)
        z.members = []
        z.flushed = True

    def write(self) -> dict[str, int]:
        """Write the remap sheet and the clinical table; count what was written."""
        root = self.root
        n_bytes = n_members = n_inst = 0
        for z in self.zips.values():
            n_bytes += z.size
            n_members += z.truth["n_members"]
            n_inst += z.truth["n_instances"]
        n_bytes += write_remap_sheet(root / REMAP_SHEET, self.remap)
        with open(root / CLINICAL_NAME, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["patient_id", "covid_encounter_date", "icu", "sex"])
            w.writeheader()
            w.writerows(self.clinical_rows)
        return {
            "batches": len(self.batches),
            "zips": len(self.zips),
            "members": n_members,
            "instances": n_inst,
            "bytes": n_bytes,
        }
