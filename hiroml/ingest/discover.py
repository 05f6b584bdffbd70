"""Discovery: batch folders and exam zip names, parsed into typed records.

Pure parsing of names plus one directory listing; no zip is opened here. Names that do not
parse are reported (a :class:`~hiroml.records.Problem` with the reason), never fatal.

Layout (the data provider's tip sheet)::

    <root>/C19_HIRO_LDS_REMAP_PUB-LIST.xlsx
    <root>/{CXR|CT}-UPDATE-YYYYMMDD-{COMPLETE|IN-PROGRESS}/
        PATIENT_yyyymmdd-hhmmss_HIROID_Description.zip
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import re
import stat
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from hiroml.errors import DatamartError, ShrinkRefusedError
from hiroml.frozen import maker
from hiroml.records import Batch, ExamZip, Problem, ZipName
from hiroml.vocab import Action, BatchStatus, Modality

log = logging.getLogger(__name__)

REMAP_SHEET_NAME = "C19_HIRO_LDS_REMAP_PUB-LIST.xlsx"
ZIP_NAME_FORMAT = "PATIENT_yyyymmdd-hhmmss_HIROID_Description.zip"

_BATCH_RE = re.compile(r"^(CXR|CT)-UPDATE-(\d{8})-(COMPLETE|IN-PROGRESS)$", re.IGNORECASE)
_ZIP_RE = re.compile(
    r"^(?P<patient>[^_\s]+)_(?P<date>\d{8})-(?P<time>\d{6})_(?P<hiro>[^_\s]+)_(?P<desc>.+)\.zip$",
    re.IGNORECASE,
)
_TOKEN_SPLIT = re.compile(r"[-_\s]+")
# Modality codes that open an EPIC procedure description ("XR-P-PORT-CHEST-1-VIEW").
_MODALITY_CODES = frozenset({"XR", "CR", "DX", "CT", "CTA"})
#: ``ZipName(...)`` and ``ExamZip(...)`` without the frozen ``__init__`` (one of each per
#: zip, every build: :func:`hiroml.frozen.maker`)
_make_zip_name = maker(ZipName)
_make_exam_zip = maker(ExamZip)


def parse_batch_name(name: str) -> Batch:
    """Parse ``{CXR|CT}-UPDATE-YYYYMMDD-{COMPLETE|IN-PROGRESS}``; ValueError says why not."""
    m = _BATCH_RE.match(name)
    if m is None:
        raise ValueError(
            f"folder name {name!r} is not {{CXR|CT}}-UPDATE-YYYYMMDD-{{COMPLETE|IN-PROGRESS}}"
        )
    kind, date, status = m.groups()
    try:
        day = dt.datetime.strptime(date, "%Y%m%d").date()
    except ValueError as e:
        raise ValueError(f"folder name {name!r}: {date} is not a valid date") from e
    return Batch(
        name=name,
        modality=Modality.CXR if kind.upper() == "CXR" else Modality.CT,
        date=day,
        status=BatchStatus(status.upper()),
    )


def is_pediatric(description: str) -> bool:
    """True when a ``P`` token follows the modality code: ``XR-P-PORT-CHEST-1-VIEW``,
    ``XR P PORT CHEST 1 VIEW`` (the tip sheet's pediatric marker)."""
    tokens = [t for t in _TOKEN_SPLIT.split(description.strip()) if t]
    return len(tokens) >= 2 and tokens[0].upper() in _MODALITY_CODES and tokens[1].upper() == "P"


#: :func:`is_pediatric` of a description seen before (a datamart's zips share a few)
_pediatric = functools.lru_cache(maxsize=4096)(is_pediatric)


def parse_zip_name(file_name: str) -> ZipName:
    """Parse ``PATIENT_yyyymmdd-hhmmss_HIROID_Description.zip``.

    The description is everything after the third underscore and may hold ``_`` and ``-``.
    Raises ValueError naming what is wrong.
    """
    m = _ZIP_RE.match(file_name)
    if m is None:
        raise ValueError(f"zip name {file_name!r} does not follow {ZIP_NAME_FORMAT}")
    try:
        d, t = m["date"], m["time"]  # fixed widths: as strptime's %Y%m%d%H%M%S, 8x faster
        time = dt.datetime(int(d[:4]), int(d[4:6]), int(d[6:]), int(t[:2]), int(t[2:4]), int(t[4:]))
    except ValueError as e:
        raise ValueError(
            f"zip name {file_name!r}: {m['date']}-{m['time']} is not a valid timestamp"
        ) from e
    desc = m["desc"]
    # ZipName(patient_id, time, hiro_id, description, pediatric)
    return _make_zip_name(m["patient"], time, m["hiro"], desc, _pediatric(desc))


@dataclass(frozen=True, slots=True)
class Discovery:
    """What a datamart folder holds. ``zips`` are the exam zips of COMPLETE batches;
    ``problems`` hold skipped (in-progress) and unusable entries, one per file."""

    root: str
    batches: tuple[Batch, ...]
    zips: tuple[ExamZip, ...]
    problems: tuple[Problem, ...]
    remap_sheet: str | None


def discover(root: str | os.PathLike[str]) -> Discovery:
    """List batch folders and exam zips under ``root``, sorted by batch date then name.

    Folders marked IN-PROGRESS are never read: each of their zips becomes a ``skipped``
    problem. Entries that are neither batch folders nor the remap sheet are reported too.

    Raises :class:`DatamartError` when ``root`` is missing or holds no batch folder at all
    (a typo in the path, a network share that is not mounted): building from it would
    publish an empty dataset. Raises :class:`ShrinkRefusedError` (the shrink guard's refusal,
    nothing written) naming a batch folder that cannot be listed (no read permission): its
    exams would otherwise vanish from the dataset as if deleted.

    Only regular files (after following symlinks) count as exam zips: a symlink loop, a
    dangling symlink, a FIFO, a device or a folder named like a zip is a ``skipped`` problem
    saying why; none of them is opened.
    """
    rootp = Path(root)
    if not rootp.is_dir():
        raise DatamartError(f"datamart folder {rootp} does not exist or is not a folder")
    batches: list[Batch] = []
    zips: list[ExamZip] = []
    problems: list[Problem] = []
    remap: str | None = None
    for entry in sorted(os.scandir(rootp), key=lambda e: e.name):
        if entry.is_file() and entry.name.lower() == REMAP_SHEET_NAME.lower():
            remap = entry.path
            continue
        if not entry.is_dir():
            log.debug("ignoring file %s at the datamart root", entry.name)
            continue
        if entry.name.startswith("."):
            continue
        try:
            batch = parse_batch_name(entry.name)
        except ValueError as e:
            problems.append(
                Problem(
                    zip="",
                    batch=entry.name,
                    member="",
                    stage="discover",
                    reason=f"{e}; folder not read",
                    action=Action.SKIPPED,
                )
            )
            continue
        batches.append(batch)
        found, bad = _scan_batch(Path(entry.path), batch)
        zips.extend(found)
        problems.extend(bad)
    if not batches:
        raise DatamartError(no_batches_message(rootp))
    batches.sort(key=lambda b: (b.date, b.name))
    order = {b.name: i for i, b in enumerate(batches)}
    zips.sort(key=lambda z: (order[z.batch.name], z.file_name))
    return Discovery(
        root=str(rootp),
        batches=tuple(batches),
        zips=tuple(zips),
        problems=tuple(problems),
        remap_sheet=remap,
    )


def _is_batch_folder(entry: os.DirEntry[str]) -> bool:
    return entry.is_dir() and _BATCH_RE.match(entry.name) is not None


def no_batches_message(root: Path, *, shown: int = 8) -> str:
    """What a datamart folder without any batch folder holds, and the layout it should have.

    Names the first ``shown`` entries (folders end with ``/``) and, when batch folders sit
    one level down (the path stops one folder too early), the folder to point at instead.
    """
    with os.scandir(root) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    names = [e.name + ("/" if e.is_dir() else "") for e in entries]
    n_dirs = sum(n.endswith("/") for n in names)
    if names:
        more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
        found = (
            f"it holds {n_dirs} folder(s) and {len(names) - n_dirs} file(s), none of them a "
            f"batch folder: {', '.join(names[:shown])}{more}"
        )
    else:
        found = "it is empty (a network share that is not mounted looks like this)"
    hint = ""
    for e in entries:
        if e.is_dir():
            try:
                with os.scandir(e.path) as sub:
                    if any(_is_batch_folder(x) for x in sub):
                        hint = f"; batch folders were found in {e.path}: set paths.datamart to it"
                        break
            except OSError:
                continue
    return (
        f"datamart folder {root} holds no batch folder: {found}. The datamart should hold "
        f"batch folders such as CXR-UPDATE-YYYYMMDD-COMPLETE/{ZIP_NAME_FORMAT} "
        "({CXR|CT}-UPDATE-YYYYMMDD-{COMPLETE|IN-PROGRESS}); check paths.datamart" + hint + ". "
        "Nothing was built and the output was not touched"
    )


def _file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return f"mode {stat.filemode(mode)}"


def _scan_batch(folder: Path, batch: Batch) -> tuple[list[ExamZip], list[Problem]]:
    zips: list[ExamZip] = []
    problems: list[Problem] = []

    def report(name: str, reason: str, action: Action = Action.SKIPPED) -> None:
        problems.append(
            Problem(
                zip=name,
                batch=batch.name,
                member="",
                stage="discover",
                reason=reason,
                action=action,
            )
        )

    try:
        with os.scandir(folder) as it:
            listed = list(it)
    except OSError as err:
        raise ShrinkRefusedError(
            f"batch folder {folder} cannot be read ({err.strerror or err}): its exams would "
            "vanish from the dataset as if deleted. Give the build read access to it (or move "
            "it out of the datamart); nothing was built and the output was not touched"
        ) from err
    entries = [e for e in sorted(listed, key=attrgetter("name")) if not e.name.startswith(".")]
    if batch.status is BatchStatus.IN_PROGRESS:
        reason = "batch upload IN-PROGRESS: not read until the folder is marked COMPLETE"
        for e in entries:
            report(e.name, reason)
        if not entries:
            report("", reason + " (folder empty)")
        return zips, problems
    for e in entries:
        try:
            st: os.stat_result | None = os.stat(e.path)  # follows symlinks: what would be read
            failed = ""
        except OSError as err:
            st = None
            kind = "a symlink that cannot be followed" if e.is_symlink() else "unreadable"
            failed = f"not a regular file ({kind}: {err.strerror or err}); not read"
        if st is not None and stat.S_ISDIR(st.st_mode):
            report(
                e.name,
                "not a regular file (a folder inside a batch folder, not an exam zip); not read",
            )
        elif not e.name.lower().endswith(".zip"):
            report(e.name, "not a .zip file; not read")
        else:
            try:
                parsed = parse_zip_name(e.name)
            except ValueError as err:
                report(e.name, f"{err}; not read", Action.ERROR)
                continue
            if st is None:
                report(e.name, failed)
                continue
            if not stat.S_ISREG(st.st_mode):
                report(e.name, f"not a regular file ({_file_kind(st.st_mode)}); not read")
                continue
            # ExamZip(batch, file_name, name, size, mtime_ns)
            zips.append(_make_exam_zip(batch, e.name, parsed, st.st_size, st.st_mtime_ns))
    return zips, problems
