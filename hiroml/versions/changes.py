"""What changed between two versions, as records and as HTML."""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hiroml.doctor.libraries import environment_changes
from hiroml.store.reader import OWN_COLUMNS, cell_plain, is_missing, read_audit
from hiroml.versions import columns as versions_columns
from hiroml.versions import keptcolumns
from hiroml.versions.hashing import _canonical
from hiroml.versions.listing import (
    SPLIT_MOVED,
    Version,
    VersionError,
    find_version,
    list_versions,
)
from hiroml.vocab import AUDIT, BUILD_JSON, MANIFEST, SPLITS


@dataclass(frozen=True, slots=True)
class SplitMove:
    """A patient whose split changed from one version to the next."""

    patient_id: str
    patient_group: str
    from_split: str
    to_split: str
    reason: str


@dataclass(frozen=True, slots=True)
class DecisionChange:
    """An input zip whose audit decisions differ between two versions (``""``: absent)."""

    batch: str
    zip: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class VersionDiff:
    """What changed from version ``a`` (``""``: nothing before) to version ``b``."""

    a: str
    b: str
    samples_added: tuple[str, ...]
    samples_removed: tuple[str, ...]
    samples_changed: tuple[str, ...]  # in both, with other stored pixels (data_hash)
    #: manifest column -> samples (in both versions) whose value changed; a column added or
    #: removed counts every sample. Labels of a new clinical table show up here.
    columns_changed: dict[str, int]
    patients_added: tuple[str, ...]
    patients_removed: tuple[str, ...]
    added_per_split: dict[str, dict[str, int]]  # split -> {"patients": n, "samples": n}
    decisions: tuple[DecisionChange, ...]
    moves: tuple[SplitMove, ...]
    #: the environment lines (:func:`hiroml.doctor.libraries.environment_changes`) of the two
    #: versions' ``build.json``; empty where not compared
    environment: tuple[str, ...] = ()
    #: the settings (``build.json``'s ``config``, dotted keys) whose value changed, as
    #: ``"cxr.size: [512, 512] -> [256, 256]"``; empty where not compared
    settings: tuple[str, ...] = ()
    #: label columns (manifest columns hiroml does not write itself: the clinical table's)
    #: that ``a`` has and ``b`` lacks, and the reverse
    labels_dropped: tuple[str, ...] = ()
    labels_added: tuple[str, ...] = ()
    #: an earlier version with ``b``'s dataset hash: the same content ("" when none)
    identical_to: str = ""

    @property
    def environment_changed(self) -> tuple[str, ...]:
        """The environment lines that say something changed (not "environment: unchanged")."""
        return tuple(line for line in self.environment if not line.endswith(": unchanged"))

    @property
    def empty(self) -> bool:
        return not (
            self.samples_added
            or self.samples_removed
            or self.samples_changed
            or self.columns_changed
            or self.patients_added
            or self.patients_removed
            or self.decisions
            or self.moves
            or self.settings
            or self.environment_changed
            or self.identical_to
        )

    @property
    def values_changed(self) -> dict[str, int]:
        """:attr:`columns_changed` without the label columns named as dropped or added."""
        named = set(self.labels_dropped) | set(self.labels_added)
        return {c: n for c, n in self.columns_changed.items() if c not in named}

    def notes(self) -> list[str]:
        """What changed besides the samples, one sentence each: an identical earlier version,
        label columns dropped or added, settings and environment."""
        out = []
        if self.identical_to:
            out.append(
                f"identical in content to version {self.identical_to} (the same dataset hash)"
            )
        if self.labels_dropped:
            out.append(
                f"label columns dropped: {', '.join(self.labels_dropped)} (a build without "
                "the clinical table, paths.clinical, that the previous one had?)"
            )
        if self.labels_added:
            out.append(f"label columns added: {', '.join(self.labels_added)}")
        if self.settings:
            out.append(f"settings changed: {'; '.join(self.settings)}")
        return out

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lines(self, *, limit: int = 20) -> list[str]:
        """The diff as console text."""
        head = f"{self.a or '(nothing)'} -> {self.b}"
        out = [
            head,
            *(f"  {line}" for line in self.notes()),
            f"  samples: +{len(self.samples_added)} -{len(self.samples_removed)} "
            f"~{len(self.samples_changed)} (other pixels); "
            f"patients: +{len(self.patients_added)} -{len(self.patients_removed)}",
        ]
        for split, n in self.added_per_split.items():
            out.append(f"  new in {split}: {n['patients']} patient(s), {n['samples']} sample(s)")
        if self.values_changed:
            cols = ", ".join(f"{c} ({n})" for c, n in self.values_changed.items())
            out.append(f"  values changed (column, samples): {cols}")
        for title, items in (
            ("samples added", self.samples_added),
            ("samples removed", self.samples_removed),
            ("samples with other pixels", self.samples_changed),
            ("patients removed", self.patients_removed),
        ):
            if items:
                more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
                out.append(f"  {title}: {', '.join(items[:limit])}{more}")
        out.append(f"  split moves: {len(self.moves)}")
        for m in self.moves:
            out.append(
                f"    patient {m.patient_id} (group {m.patient_group}): "
                f"{m.from_split} -> {m.to_split}: {m.reason}"
            )
        out.append(f"  decisions changed: {len(self.decisions)}")
        for d in self.decisions[:limit]:
            out.append(
                f"    {d.batch}/{d.zip}: {d.before or '(absent)'} -> {d.after or '(absent)'}"
            )
        if len(self.decisions) > limit:
            out.append(f"    ... and {len(self.decisions) - limit} more")
        out.extend(f"  {line}" for line in self.environment)
        return out


def _open_manifest(
    folder: Path | None, kept: Path | None = None
) -> versions_columns.ParquetColumns | None:
    """The manifest of ``folder``, to be read column by column (None: no manifest), with
    the large columns kept for it in ``kept`` (:mod:`hiroml.versions.keptcolumns`)."""
    if folder is None or not (folder / MANIFEST).is_file():
        return None
    path = folder / MANIFEST
    found = None if kept is None else (lambda file: keptcolumns.find(kept, path, file))
    return versions_columns.ParquetColumns.open(path, found)


def _audit_of(folder: Path | None) -> pd.DataFrame:
    """The audit of ``folder`` (no rows where there is none)."""
    if folder is None or not (folder / AUDIT).is_file():
        return pd.DataFrame(columns=["zip", "batch", "action"])
    return read_audit(folder)


def _texts(audit: pd.DataFrame, column: str) -> list[str]:
    """A column of an audit as :func:`read_audit` gives it once written: every cell text, a
    missing one (None, NaN, NA) ``""``; ``""`` throughout where there is no such column."""
    if column not in audit.columns:
        return [""] * len(audit)
    values = audit[column].tolist()
    if set(map(type, values)) <= {str}:  # an audit read back, or made of texts
        return values
    return ["" if is_missing(v) else str(v) for v in values]


def _decision_rows(audit: pd.DataFrame) -> set[tuple[str, str, str]]:
    """The audit's decisions, one ``(batch, zip, what)`` per zip and decision (``what``:
    ``"action: reason"``, with ``" (kept as ...)"`` where a row names what it was kept as);
    split moves left out (they are the diff's own section)."""
    cols = (_texts(audit, c) for c in ("batch", "zip", "action", "reason", "kept_as"))
    return {
        (batch, zip_name, f"{action}: {reason} (kept as {kept})" if kept else f"{action}: {reason}")
        for batch, zip_name, action, reason, kept in zip(*cols, strict=True)
        if reason != SPLIT_MOVED
    }


def _decisions(aa: pd.DataFrame, ab: pd.DataFrame) -> tuple[DecisionChange, ...]:
    """The zips whose decisions differ between the audits ``aa`` and ``ab``: the decisions of
    a zip are its rows' distinct texts, sorted and joined with ``"; "`` (``""``: absent). Only
    zips with a decision one audit has and the other lacks are joined and compared."""
    ra, rb = _decision_rows(aa), _decision_rows(ab)
    keys = {(batch, zip_name) for batch, zip_name, _ in ra ^ rb}
    if not keys:
        return ()

    def joined(rows: set[tuple[str, str, str]]) -> dict[tuple[str, str], str]:
        found: dict[tuple[str, str], set[str]] = {}
        for batch, zip_name, what in rows:
            if (batch, zip_name) in keys:
                found.setdefault((batch, zip_name), set()).add(what)
        return {k: "; ".join(sorted(v)) for k, v in found.items()}

    da, db = joined(ra), joined(rb)
    return tuple(
        DecisionChange(batch=k[0], zip=k[1], before=da.get(k, ""), after=db.get(k, ""))
        for k in sorted(keys)
        if da.get(k, "") != db.get(k, "")
    )


#: columns whose change is reported otherwise (pixels: samples_changed) or is bookkeeping
_NOT_COMPARED = frozenset({"sample_key", "data_hash", "shard", "shard_sha256", "split"})


def _columns_changed(ma: pd.DataFrame, mb: pd.DataFrame) -> dict[str, int]:
    """Per manifest column, how many samples of both tables have another value in ``mb``."""
    if ma.empty or mb.empty:
        return {}
    a = ma.drop_duplicates("sample_key").set_index(ma["sample_key"].drop_duplicates().astype(str))
    b = mb.drop_duplicates("sample_key").set_index(mb["sample_key"].drop_duplicates().astype(str))
    common = a.index.intersection(b.index)
    if common.empty:
        return {}
    out: dict[str, int] = {}
    for col in sorted((set(a.columns) | set(b.columns)) - _NOT_COMPARED):
        if col not in a.columns or col not in b.columns:
            out[col] = len(common)
            continue
        pairs = zip(a.loc[common, col].tolist(), b.loc[common, col].tolist(), strict=True)
        n = sum(_differs(x, y) for x, y in pairs)
        if n:
            out[col] = n
    return out


def _values_changed(
    ta: versions_columns.Columns | None, tb: versions_columns.Columns | None
) -> dict[str, int]:
    """:func:`_columns_changed` of two manifests (tables, or parquet files read a column at
    a time): the columns of one type on both sides compared column-wise
    (:mod:`hiroml.versions.columns`), the rest cell by cell."""
    if ta is None or tb is None or not ta.num_rows or not tb.num_rows:
        return {}
    rows = versions_columns.common_rows(
        ta.column("sample_key").combine_chunks(), tb.column("sample_key").combine_chunks()
    )
    common = len(rows[1])
    if not common:
        return {}
    names = sorted((set(ta.column_names) | set(tb.column_names)) - _NOT_COMPARED)
    both = set(ta.column_names) & set(tb.column_names)
    out = {c: common for c in names if c not in both}
    counts, rest = versions_columns.changed_counts(ta, tb, [c for c in names if c in both], rows)
    out.update(counts)
    if rest:  # other types, or a type that changed: cell by cell
        key = ["sample_key", *rest]
        before = versions_columns.select(ta, key).to_pandas()
        out.update(_columns_changed(before, versions_columns.select(tb, key).to_pandas()))
    return dict(sorted(out.items()))


def _differs(x: Any, y: Any) -> bool:
    """Whether two manifest cells have other canonical JSON texts. Text, integers, booleans,
    floats and None of one type on both sides are compared as values, and arrays of integers
    (the 1,024-value signatures) or of booleans as arrays: their texts are equal exactly when
    the values are (ints and bools are written as they are, a float as its repr, NaN as null;
    an int and a bool, or an int array and a bool array, always differ). The rest is compared
    by text."""
    t = type(x)
    if t is type(y):  # the usual cells: no text needed
        if t is str or t is int or t is bool or x is None:
            return bool(x != y)
        if t is float:  # NaN is written null; otherwise the text is the repr
            return not ((x != x and y != y) or repr(x) == repr(y))
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
        kx, ky = x.dtype.kind, y.dtype.kind
        if (kx in "iu" and ky in "iu") or kx == ky == "b":
            return x.shape != y.shape or not np.array_equal(x, y)
        if x.ndim == y.ndim == 1:  # a list's text is its elements' texts, in order
            lx, ly = x.tolist(), y.tolist()
            return len(lx) != len(ly) or any(_differs(a, b) for a, b in zip(lx, ly, strict=True))
    return _cell_text(x) != _cell_text(y)


def _cell_text(v: Any) -> str:
    return json.dumps(_canonical(cell_plain(v)), default=str)


def diff_tables(
    a_dir: Path | None,
    b_dir: Path,
    *,
    a_name: str = "",
    b_name: str = "",
    b_manifest: pa.Table | None = None,
    b_audit: pd.DataFrame | None = None,
    kept: Path | None = None,
) -> VersionDiff:
    """What changed from the tables in ``a_dir`` (``None``: nothing) to those in ``b_dir``.
    ``b_manifest``: the manifest ``b_dir`` holds, where the caller has it in memory (it was
    just written there): compared as it is instead of read back; ``b_audit`` likewise, the
    audit ``b_dir`` holds (its cells taken as the text read back). ``kept``: the folder where
    builds keep their manifests' large columns (:mod:`hiroml.versions.keptcolumns`), read
    there instead of decoded when they are kept for these manifests. Everything is computed
    on the two manifests' Arrow columns; a missing cell (null) counts as no sample, patient
    or split."""
    ta = _open_manifest(a_dir, kept)
    tb: versions_columns.Columns | None = b_manifest
    if tb is None:
        tb = _open_manifest(b_dir, kept)
    text = versions_columns.texts
    ka, kb = text(ta, "sample_key"), text(tb, "sample_key")
    pid_a, pid_b = text(ta, "patient_id"), text(tb, "patient_id")
    new_p = versions_columns.not_in(versions_columns.present(pid_b), pid_a)
    rows = versions_columns.common_rows(ka, kb)
    hash_a = text(ta, "data_hash").take(pa.array(rows[0]))
    hash_b = text(tb, "data_hash").take(pa.array(rows[1]))
    other = pc.fill_null(pc.not_equal(hash_a, hash_b), True)
    other = pc.and_not(other, pc.and_(pc.is_null(hash_a), pc.is_null(hash_b)))
    changed = kb.take(pa.array(rows[1])).filter(other)
    had = ta is not None  # else no label is "added"
    labels_a = _labels(ta) if had else set()
    labels_b = _labels(tb) if had else set()
    audit_b = _audit_of(b_dir) if b_audit is None else b_audit
    return VersionDiff(
        columns_changed=_values_changed(ta, tb),
        a=a_name,
        b=b_name,
        samples_added=versions_columns.sorted_texts(versions_columns.not_in(kb, ka)),
        samples_removed=versions_columns.sorted_texts(versions_columns.not_in(ka, kb)),
        samples_changed=tuple(sorted(changed.to_pylist())),
        patients_added=versions_columns.sorted_texts(new_p),
        patients_removed=versions_columns.sorted_texts(versions_columns.not_in(pid_a, pid_b)),
        added_per_split=_added_per_split(tb, ka, new_p),
        decisions=_decisions(_audit_of(a_dir), audit_b),
        moves=_moves(ta, tb, audit_b),
        labels_dropped=tuple(sorted(labels_a - labels_b)),
        labels_added=tuple(sorted(labels_b - labels_a)),
    )


def _added_per_split(
    tb: versions_columns.Columns | None, ka: pa.Array, new_p: pa.Array
) -> dict[str, dict[str, int]]:
    """Per split, the new patients (``new_p``) and the samples not in ``ka`` that ``tb``
    holds in it."""
    text = versions_columns.texts
    kb, pid_b, split_b = text(tb, "sample_key"), text(tb, "patient_id"), text(tb, "split")
    new_key = pc.invert(pc.is_in(kb, value_set=ka.drop_null()))
    new_pid = pc.is_in(pid_b, value_set=new_p)
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        at = pc.fill_null(pc.equal(split_b, str(split)), False)
        out[split] = {
            "patients": len(versions_columns.present(pid_b.filter(pc.and_(at, new_pid)))),
            "samples": len(versions_columns.present(kb.filter(pc.and_(at, new_key)))),
        }
    return out


def _moves(
    ta: versions_columns.Columns | None,
    tb: versions_columns.Columns | None,
    audit_b: pd.DataFrame,
) -> tuple[SplitMove, ...]:
    """The patient ids (source and current) of ``tb`` whose split differs from the one ``ta``
    gave them (its last row naming the id), sorted by id: each at the first row of ``tb``
    where it moved, with that row's patient group and the audit's reason for the group."""
    text = versions_columns.texts
    n = len(text(tb, "sample_key"))
    pids = pa.concat_arrays([text(ta, "source_patient_id"), text(ta, "patient_id")])
    splits = pa.concat_arrays([text(ta, "split")] * 2)
    last_first = pa.array(np.arange(len(pids) - 1, -1, -1))  # index_in finds the first
    pids, splits = pids.take(last_first), splits.take(last_first)
    # the ids of each row of tb in turn, its source id first
    order = pa.array(np.stack([np.arange(n), np.arange(n, 2 * n)], axis=1).reshape(-1))
    ids = pa.concat_arrays([text(tb, "source_patient_id"), text(tb, "patient_id")]).take(order)
    row = np.repeat(np.arange(n), 2)
    new = text(tb, "split").take(pa.array(row))
    found = pc.index_in(ids, value_set=pids, skip_nulls=True)
    old = splits.take(found)
    moved = np.flatnonzero(pc.fill_null(pc.not_equal(old, new), False).to_numpy(False))
    if not moved.size:
        return ()
    reasons = _move_reasons(audit_b)
    groups = text(tb, "patient_group").take(pa.array(row[moved])).to_pylist()
    picked = pa.array(moved)
    cells = zip(
        ids.take(picked).to_pylist(),
        old.take(picked).to_pylist(),
        new.take(picked).to_pylist(),
        groups,
        strict=True,
    )
    moves: dict[str, SplitMove] = {}
    for pid, before, after, group in cells:
        if pid not in moves:
            moves[pid] = SplitMove(
                patient_id=pid,
                patient_group=str(group),
                from_split=before,
                to_split=after,
                reason=reasons.get(str(group), "no split move is recorded in the audit"),
            )
    return tuple(moves[k] for k in sorted(moves))


def _move_reasons(audit: pd.DataFrame) -> dict[str, str]:
    """Patient group -> the detail of the audit's split-move row that names it."""
    if "reason" not in audit.columns or "kept_as" not in audit.columns:
        return {}
    rows = audit[audit["reason"] == SPLIT_MOVED]
    return dict(zip(_texts(rows, "kept_as"), _texts(rows, "detail"), strict=True))


def _labels(table: versions_columns.Columns | None) -> set[str]:
    return {
        str(c) for c in (table.column_names if table is not None else ()) if c not in OWN_COLUMNS
    }


def diff(out: Path | str, a: str | int, b: str | int) -> VersionDiff:
    """What changed from version ``a`` to version ``b`` of an output folder: the tables, and
    from the two ``build.json`` files the settings and the environment."""
    va, vb = find_version(out, a), find_version(out, b)
    if va is None or vb is None:
        raise VersionError(f"{out} has no versions to compare")
    kept = keptcolumns.kept_dir(Path(out))
    found = diff_tables(va.path, vb.path, a_name=va.name, b_name=vb.name, kept=kept)
    info_a, info_b = build_info_of(va), build_info_of(vb)
    env = environment_changes(info_a.get("environment"), info_b.get("environment"))
    return dataclasses.replace(
        found,
        environment=tuple(env),
        settings=tuple(settings_changes(info_a.get("config"), info_b.get("config"))),
        identical_to=identical_earlier(list_versions(out), vb.dataset_hash, vb.seq),
    )


def build_info_of(v: Version) -> dict[str, Any]:
    """A version's ``build.json`` (empty where the file cannot be read, or is not an object;
    versions built before the environment was recorded have none)."""
    try:
        info = json.loads((v.path / BUILD_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _flat(record: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"cxr.size": [512, 512], ...}`` (lists are values)."""
    if not isinstance(record, dict):
        return {prefix: record} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in record.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def settings_changes(a: Any, b: Any) -> list[str]:
    """The settings whose value differs between two ``build.json`` ``config`` records, as
    ``"cxr.size: [512, 512] -> [256, 256]"`` (dotted keys, sorted; a key only one side has
    shows ``(absent)`` on the other). Empty when either record is missing."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return []
    fa, fb = _flat(a), _flat(b)
    gone = "(absent)"
    return [
        f"{k}: {_shown(fa[k]) if k in fa else gone} -> {_shown(fb[k]) if k in fb else gone}"
        for k in sorted(set(fa) | set(fb))
        if fa.get(k, gone) != fb.get(k, gone) or (k in fa) != (k in fb)
    ]


def identical_earlier(versions: Sequence[Version], digest: str, seq: int) -> str:
    """The newest of ``versions`` before sequence number ``seq`` whose dataset hash is
    ``digest`` ("" when none): a version with the same content."""
    same = [v.name for v in versions if v.seq < seq and digest and v.dataset_hash == digest]
    return same[-1] if same else ""


def _sentence(line: str) -> str:
    return line[:1].upper() + line[1:]


def changes_html(d: VersionDiff, *, limit: int = 200) -> str:
    """The body of the report's "What changed since the previous version" section."""
    e = html.escape
    if not d.a:
        return f"<p class='note'>{e(d.b)} is the first version of this output.</p>"
    if d.empty:
        return f"<p class='note'>Nothing changed since {e(d.a)}.</p>"

    def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = [
        f"<p>{e(d.b)} against {e(d.a)}: {len(d.samples_added)} sample(s) added, "
        f"{len(d.samples_removed)} removed, {len(d.samples_changed)} with other stored pixels "
        f"(e.g. a conversion setting changed); {len(d.patients_added)} patient(s) added, "
        f"{len(d.patients_removed)} removed.</p>",
        "".join(f"<p>{e(_sentence(line))}</p>" for line in d.notes()),
        "".join(f"<p>{e(_sentence(line))}</p>" for line in d.environment_changed),
        (
            "<p>Values changed (column: samples): "
            + e(", ".join(f"{c}: {n}" for c, n in d.values_changed.items()))
            + "</p>"
            if d.values_changed
            else ""
        ),
        table(
            ["split", "new patients", "new samples"],
            [[s, str(n["patients"]), str(n["samples"])] for s, n in d.added_per_split.items()],
        ),
        f"<h3>Split moves ({len(d.moves)})</h3>",
    ]
    if d.moves:
        parts.append(
            table(
                ["patient", "group", "from", "to", "reason"],
                [
                    [m.patient_id, m.patient_group, m.from_split, m.to_split, m.reason]
                    for m in d.moves
                ],
            )
        )
    else:
        parts.append("<p class='note'>No patient changed split.</p>")
    parts.append(f"<h3>Decisions that changed ({len(d.decisions)})</h3>")
    if d.decisions:
        parts.append(
            table(
                ["batch", "zip", "before", "after"],
                [
                    [c.batch, c.zip, c.before or "(absent)", c.after or "(absent)"]
                    for c in d.decisions[:limit]
                ],
            )
        )
        if len(d.decisions) > limit:
            parts.append(f"<p class='note'>... and {len(d.decisions) - limit} more.</p>")
    if d.patients_removed:
        parts.append(
            f"<h3>Patients removed ({len(d.patients_removed)})</h3>"
            f"<p>{e(', '.join(d.patients_removed[:limit]))}</p>"
        )
    return "".join(parts)
