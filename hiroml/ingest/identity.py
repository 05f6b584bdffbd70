"""Patient identity: the remap sheet and the optional clinical table.

The tip sheet ("Known Issues with CRDW COVID-19 Patient ID Numbers"): images keep the C19
patient id they were extracted with, while clinical data is regenerated under the current id
when a patient's MRN changes. ``C19_HIRO_LDS_REMAP_PUB-LIST.xlsx`` maps old ids to current
ones. This module reads it (:func:`read_remap_sheet`, :func:`load_remap`), resolves chains
(A -> B -> C gives C) and refuses a cycle or an old id with two targets, naming the rows.

Ids are strings everywhere: a text cell keeps its leading zeros, a numeric cell becomes the
integer's text (``1234.0`` -> ``"1234"``), never a float.

The clinical table (CSV, Parquet or xlsx, one row per patient: an id column, an optional
COVID encounter date, any label columns) is read by :func:`read_clinical` and joined on the
current id by :func:`join_clinical`: patients without a clinical row are kept and flagged as
orphans; exams get their days from the encounter, and the tip sheet's windows (radiographs
from one year before the encounter, CT from one month before) are reported or enforced.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hiroml.config import IdentityConfig
from hiroml.errors import ConfigError, RemapError
from hiroml.ingest.discover import REMAP_SHEET_NAME
from hiroml.records import AuditRow, Exam, Problem
from hiroml.vocab import Action, Modality

log = logging.getLogger(__name__)

STAGE = "identity"
HEADER_SCAN_ROWS = 20  # a header row is looked for in the first rows of each sheet

_OLD_WORDS = ("old", "prev", "former", "orig", "retired")
_NEW_WORDS = ("new", "curr", "updated", "final")


# --------------------------------------------------------------------------- remap sheet


@dataclass(frozen=True, slots=True)
class RemapRow:
    """One row of the remap sheet: its 1-based spreadsheet row number and the two ids."""

    row: int
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class RemapTable:
    """The remap sheet as read: which sheet and columns, and every complete row.

    ``incomplete`` holds a message for each row with only one of the two ids.
    """

    file: str
    sheet: str
    old_header: str
    new_header: str
    rows: tuple[RemapRow, ...]
    incomplete: tuple[str, ...] = ()

    def where(self, rows: Iterable[int]) -> str:
        """``file, sheet 'x', rows 3, 7`` for error messages."""
        nums = ", ".join(str(r) for r in sorted(set(rows)))
        return f"{self.file}, sheet {self.sheet!r}, rows {nums}"

    def resolve(self) -> dict[str, str]:
        """old id -> final current id, chains followed (A -> B -> C gives A -> C, B -> C).

        Rows mapping an id to itself are ignored; repeated identical rows are fine.

        Raises:
            RemapError: an old id with two different targets, or a cycle (both name the rows).
        """
        target: dict[str, str] = {}
        row_of: dict[str, int] = {}
        for r in self.rows:
            if r.old == r.new:
                continue
            if r.old in target and target[r.old] != r.new:
                raise RemapError(
                    f"{self.where([row_of[r.old], r.row])}: old id {r.old} is mapped to both "
                    f"{target[r.old]} (row {row_of[r.old]}) and {r.new} (row {r.row})"
                )
            if r.old not in target:
                target[r.old] = r.new
                row_of[r.old] = r.row
        final: dict[str, str] = {}
        for start in sorted(target):
            path = [start]
            on_path = {start}
            cur = target[start]
            while cur in target and cur not in final:
                if cur in on_path:
                    cycle = path[path.index(cur) :]
                    chain = " -> ".join([*cycle, cur])
                    raise RemapError(
                        f"{self.where(row_of[i] for i in cycle)}: the remap sheet has a cycle "
                        f"{chain}"
                    )
                path.append(cur)
                on_path.add(cur)
                cur = target[cur]
            end = final.get(cur, cur)
            for i in path:
                final[i] = end
        return final


def _id_text(value: Any) -> str:
    """A spreadsheet cell as an id string: '' for blank, ints without '.0', text stripped."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value).strip()


def _norm_header(value: Any) -> str:
    return " ".join(str(value).lower().replace("_", " ").replace("-", " ").split())


def _has_word(tokens: Sequence[str], words: Sequence[str]) -> bool:
    """Whether a header's tokens hold one of ``words`` as a prefix (``OldID`` -> ``oldid``)."""
    return any(t.startswith(w) for t in tokens for w in words)


def _is_id(tokens: Sequence[str]) -> bool:
    return any(t == "id" or t.endswith("id") for t in tokens)


def _detect_columns(
    header: Sequence[Any], old_column: str | None, new_column: str | None
) -> tuple[int, int] | None:
    """Indices of the old-id and current-id columns in a header row, or None.

    Among several candidates the header with the fewest words wins, then the leftmost.
    """
    texts = [_norm_header(h) if h is not None else "" for h in header]
    tokens = [t.split() for t in texts]

    def pick(wanted: str | None, words: Sequence[str], others: Sequence[str]) -> int | None:
        if wanted is not None:
            key = _norm_header(wanted)
            hits = [i for i, t in enumerate(texts) if t == key]
        else:
            hits = [
                i
                for i, tok in enumerate(tokens)
                if _is_id(tok) and _has_word(tok, words) and not _has_word(tok, others)
            ]
        return min(hits, key=lambda i: (len(tokens[i]), i)) if hits else None

    old = pick(old_column, _OLD_WORDS, _NEW_WORDS)
    new = pick(new_column, _NEW_WORDS, _OLD_WORDS)
    if old is None or new is None or old == new:
        return None
    return old, new


def read_remap_sheet(
    path: Path, *, old_column: str | None = None, new_column: str | None = None
) -> RemapTable:
    """Read the remap workbook: the first sheet with recognisable old/current id headers.

    Headers are looked for in the first :data:`HEADER_SCAN_ROWS` rows of each sheet. Without
    ``old_column``/``new_column`` a header is the old-id column when it holds "id" and a word
    like "old"/"prev"/"former"/"original", the current-id column when it holds "id" and
    "new"/"current"/"updated" (case-insensitive); with them, headers must equal the given
    text (case and ``_``/``-``/space differences aside). Blank rows are skipped.

    Raises:
        RemapError: the file cannot be read as a workbook or no sheet has the two columns.
    """
    import openpyxl  # deferred: only needed when a sheet exists

    path = Path(path)
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises many kinds (zipfile, KeyError, InvalidFile...)
        raise RemapError(f"{path.name}: cannot be read as an xlsx workbook ({e})") from e
    try:
        for ws in wb.worksheets:
            found: tuple[int, int, int] | None = None  # header row number, old col, new col
            header: tuple[Any, ...] = ()
            rows_iter = ws.iter_rows(values_only=True)
            for n, values in enumerate(rows_iter, start=1):
                cols = _detect_columns(values, old_column, new_column)
                if cols is not None:
                    found = (n, *cols)
                    header = values
                    break
                if n >= HEADER_SCAN_ROWS:
                    break
            if found is None:
                continue
            head_row, oc, nc = found
            rows: list[RemapRow] = []
            incomplete: list[str] = []
            for n, values in enumerate(rows_iter, start=head_row + 1):
                old = _id_text(values[oc]) if oc < len(values) else ""
                new = _id_text(values[nc]) if nc < len(values) else ""
                if not old and not new:
                    continue
                if not old or not new:
                    incomplete.append(
                        f"{path.name}, sheet {ws.title!r}, row {n}: "
                        f"{'old' if not old else 'current'} id is blank (row ignored)"
                    )
                    continue
                rows.append(RemapRow(row=n, old=old, new=new))
            table = RemapTable(
                file=path.name,
                sheet=ws.title,
                old_header=str(header[oc]),
                new_header=str(header[nc]),
                rows=tuple(rows),
                incomplete=tuple(incomplete),
            )
            log.info(
                "remap sheet %s: sheet %r, columns %r -> %r, %d rows",
                path.name,
                ws.title,
                table.old_header,
                table.new_header,
                len(rows),
            )
            return table
    finally:
        wb.close()
    wanted = (
        f"headers {old_column!r} and {new_column!r}"
        if old_column or new_column
        else "an old-id and a current-id header (e.g. 'Old C19 ID', 'New C19 ID')"
    )
    raise RemapError(
        f"{path.name}: no sheet has {wanted} in its first {HEADER_SCAN_ROWS} rows; "
        "set identity.remap_old_column/remap_new_column"
    )


def load_remap(
    datamart_root: Path, sheet: Path | None, cfg: IdentityConfig
) -> tuple[dict[str, str], list[Problem]]:
    """The resolved remap (old id -> final current id) and the problems found in the sheet.

    ``sheet`` None looks for :data:`REMAP_SHEET_NAME` in ``datamart_root`` (any letter case);
    without it no id is remapped and ``({}, [])`` is returned. A sheet given explicitly must
    exist. A sheet with headers and no rows merges nothing: a warning and a ``skipped``
    problem naming it say so.

    Raises:
        RemapError: the sheet given does not exist, is unreadable or inconsistent, or two files
            in ``datamart_root`` match the sheet's name in different letter case. Identity is
            wrong without it, so the pipeline should stop.
    """
    if sheet is None:
        root = Path(datamart_root)
        candidates = (
            sorted(p for p in root.iterdir() if p.name.lower() == REMAP_SHEET_NAME.lower())
            if root.is_dir()
            else []
        )
        if not candidates:
            log.warning("no %s in %s: patient ids are used as they are", REMAP_SHEET_NAME, root)
            return {}, []
        if len(candidates) > 1:
            names = " and ".join(p.name for p in candidates)
            raise RemapError(
                f"{root}: {names} are both the remap sheet (names differ only in letter case); "
                "keep one, or name it with paths.remap_sheet"
            )
        sheet = candidates[0]
    sheet = Path(sheet)
    if not sheet.is_file():
        raise RemapError(f"{sheet}: remap sheet not found")
    table = read_remap_sheet(
        sheet, old_column=cfg.remap_old_column, new_column=cfg.remap_new_column
    )
    problems = [
        Problem(zip="", batch="", member=sheet.name, stage=STAGE, reason=msg)
        for msg in table.incomplete
    ]
    if not table.rows:
        reason = f"remap sheet {sheet.name} has no rows: no identities are merged"
        log.warning("%s", reason)
        problems.append(
            Problem(
                zip="",
                batch="",
                member=sheet.name,
                stage=STAGE,
                reason=reason,
                action=Action.SKIPPED,
            )
        )
    remap = table.resolve()
    log.info("remap: %d old ids map to %d current ids", len(remap), len(set(remap.values())))
    return remap, problems


# --------------------------------------------------------------------------- clinical table


@dataclass(frozen=True, slots=True, eq=False)
class ClinicalTable:
    """The clinical table, one row per current patient id.

    ``labels`` is indexed by the id (strings) and holds every other column; ``encounter``
    maps ids to their COVID encounter date (the earliest when a patient has several rows).
    Compared by identity (it holds a DataFrame).
    """

    file: str
    labels: pd.DataFrame = field(repr=False)
    encounter: dict[str, dt.date] = field(default_factory=dict)
    duplicate_ids: tuple[str, ...] = ()

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(str(i) for i in self.labels.index)


def read_clinical(path: Path, cfg: IdentityConfig) -> ClinicalTable:
    """Read a clinical table (``.csv``, ``.parquet``/``.pq``, ``.xlsx``) keyed by
    ``cfg.clinical_id_column`` (ids as strings; numeric ids without ``.0``); the encounter
    column, when configured and present, is parsed as a date.

    Raises:
        ConfigError: unreadable file, unknown format, no id column, unparseable dates.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    idc = cfg.clinical_id_column
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".xlsx", ".xlsm"):
            df = pd.read_excel(path, dtype=object, engine="openpyxl")
        else:
            raise ConfigError(f"{path.name}: clinical table must be .csv, .parquet or .xlsx")
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{path.name}: cannot read the clinical table ({e})") from e
    if idc not in df.columns:
        raise ConfigError(
            f"{path.name}: no patient id column {idc!r} "
            f"(columns: {', '.join(map(str, df.columns))}); set identity.clinical_id_column"
        )
    ids = [_id_text(v) for v in df[idc].tolist()]
    df = df.assign(**{idc: ids})
    df = df[df[idc] != ""]
    encounter: dict[str, dt.date] = {}
    enc_col = cfg.clinical_encounter_column
    if enc_col and enc_col in df.columns:
        parsed = pd.to_datetime(df[enc_col].replace("", None), errors="coerce")
        bad = df[enc_col][parsed.isna() & df[enc_col].notna() & (df[enc_col] != "")]
        if len(bad):
            raise ConfigError(
                f"{path.name}: column {enc_col!r} has values that are not dates, e.g. "
                f"{bad.iloc[0]!r} (patient {df.loc[bad.index[0], idc]})"
            )
        for pid, when in zip(df[idc], parsed, strict=True):
            if pd.isna(when):
                continue
            d = when.date()
            if pid not in encounter or d < encounter[pid]:
                encounter[pid] = d
    elif enc_col:
        log.info("%s: no encounter column %r: windows are not checked", path.name, enc_col)
    for col in df.columns:  # label columns that hold numbers become numbers (NaN if blank)
        if col in (idc, enc_col) or df[col].dtype.kind in "biufcM":
            continue
        try:
            df[col] = pd.to_numeric(df[col].replace("", None))
        except (ValueError, TypeError):  # text labels stay text
            _warn_text_column(path.name, str(col), df[col])
    dup = df[idc][df[idc].duplicated()].unique().tolist()
    if dup:
        log.warning("%s: %d patient ids have several rows; first kept", path.name, len(dup))
    labels = df.drop_duplicates(subset=idc, keep="first").set_index(idc)
    return ClinicalTable(
        file=path.name,
        labels=labels,
        encounter=encounter,
        duplicate_ids=tuple(sorted(str(d) for d in dup)),
    )


_BOOLEAN_WORDS = frozenset(
    {"yes", "no", "y", "n", "true", "false", "t", "f", "positive", "negative", "pos", "neg"}
)


def _warn_text_column(file: str, col: str, values: pd.Series) -> None:
    """Report a clinical column that holds values that are not numbers: it is written as text,
    and ``HiromlDataset(label=col)`` refuses it. A warning when it looks meant as a label
    (some values are numbers, or every value is a yes/no word such as ``yes``, ``false``);
    else (a text column such as ``sex``) an info line."""
    bad: list[str] = []
    numbers = 0
    words: set[str] = set()
    for v in values.tolist():
        if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
            continue
        try:
            float(v)
            numbers += 1
        except (ValueError, TypeError):
            words.add(str(v).strip().lower())
            if str(v) not in bad and len(bad) < 3:
                bad.append(str(v))
    meant = numbers > 0 or words <= _BOOLEAN_WORDS
    log.log(
        logging.WARNING if meant else logging.INFO,
        "clinical table %s: column %r holds values that are not numbers (%s): written as "
        "text, not usable as a training label",
        file,
        col,
        ", ".join(repr(b) for b in bad),
    )


def days_from_encounter(exam_time: dt.datetime | dt.date, encounter: dt.date) -> int:
    """Calendar days from the COVID encounter to the exam (negative: before the encounter)."""
    day = exam_time.date() if isinstance(exam_time, dt.datetime) else exam_time
    return (day - encounter).days


def window_violation(
    modality: Modality,
    exam_time: dt.datetime | dt.date,
    encounter: dt.date | None,
    cfg: IdentityConfig,
) -> str | None:
    """Why an exam is outside the tip sheet's window, or None when it is inside (or no
    encounter date is known). Radiographs are expected from ``cfg.cxr_window_days`` before
    the encounter, CT from ``cfg.ct_window_days`` before; any time after is fine."""
    if encounter is None:
        return None
    days = days_from_encounter(exam_time, encounter)
    limit = cfg.cxr_window_days if modality is Modality.CXR else cfg.ct_window_days
    if days < -limit:
        return (
            f"{modality.value.upper()} exam {-days} days before the COVID encounter "
            f"{encounter.isoformat()} (window: {limit} days before)"
        )
    return None


@dataclass(frozen=True, slots=True)
class ClinicalJoin:
    """Exams joined with the clinical table.

    ``exams`` are those kept (all of them unless windows are enforced); ``days`` maps each
    exam key to its days from the encounter (None when unknown); ``orphans`` are current
    patient ids with images but no clinical row; ``violations`` maps exam keys outside the
    window to the reason; ``audit`` holds a ``dropped`` row per zip of each exam dropped by an
    enforced window.
    """

    exams: tuple[Exam, ...]
    days: dict[str, int | None]
    orphans: tuple[str, ...]
    violations: dict[str, str]
    audit: tuple[AuditRow, ...] = ()

    @property
    def orphan_advice(self) -> str:
        """The sentence the report shows next to the orphans."""
        if not self.orphans:
            return ""
        return (
            f"{len(self.orphans)} patient id(s) have images but no clinical record: they may be "
            f"old ids missing from {REMAP_SHEET_NAME}; check the remap sheet"
        )


def join_clinical(
    exams: Sequence[Exam], clinical: ClinicalTable | None, cfg: IdentityConfig
) -> ClinicalJoin:
    """Flag orphans and check the encounter windows (pure). Without a table nothing is
    flagged and every exam is kept."""
    if clinical is None:
        return ClinicalJoin(
            exams=tuple(exams), days={e.exam_key: None for e in exams}, orphans=(), violations={}
        )
    known = clinical.ids
    orphans = tuple(sorted({e.patient_id for e in exams if e.patient_id not in known}))
    if orphans:
        log.warning(
            "%d patient id(s) without a clinical record (orphans): %s%s",
            len(orphans),
            ", ".join(orphans[:10]),
            ", ..." if len(orphans) > 10 else "",
        )
    days: dict[str, int | None] = {}
    violations: dict[str, str] = {}
    kept: list[Exam] = []
    audit: list[AuditRow] = []
    for e in exams:
        enc = clinical.encounter.get(e.patient_id)
        days[e.exam_key] = days_from_encounter(e.time, enc) if enc is not None else None
        why = window_violation(e.modality, e.time, enc, cfg)
        if why is None:
            kept.append(e)
            continue
        violations[e.exam_key] = why
        if not cfg.enforce_windows:
            kept.append(e)
            continue
        for rel in e.zips:
            batch, _, name = rel.partition("/")
            audit.append(
                AuditRow(
                    zip=name,
                    batch=batch,
                    action=Action.DROPPED,
                    reason="outside encounter window",
                    kept_as="",
                    detail=why,
                    exam_key=e.exam_key,
                )
            )
    return ClinicalJoin(
        exams=tuple(kept),
        days=days,
        orphans=orphans,
        violations=violations,
        audit=tuple(audit),
    )
