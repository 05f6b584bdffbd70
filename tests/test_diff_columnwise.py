"""The version diff (hiroml.versions.changes.diff_tables), the output tables
(hiroml.store.tables) and the shrink guard (hiroml.store.guard) computed column-wise give
what the same rules give row by row: random manifests and audits with nulls, NaN, lists,
added, removed and moved rows, compared with the per-row definitions written out here."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hiroml.store import guard
from hiroml.store.shards import shard_sha256
from hiroml.store.tables import _scalar, _text, _to_table, patients_frame
from hiroml.versions import changes as versions_changes
from hiroml.versions import columns as versions_columns
from hiroml.versions import keptcolumns
from hiroml.versions.listing import SPLIT_MOVED
from hiroml.vocab import AUDIT, MANIFEST, SPLITS

SIG = pa.list_(pa.uint8())


def _manifest(rng: np.random.Generator, keys: list[str]) -> dict[str, list[Any]]:
    n = len(keys)
    pids = [f"p{rng.integers(0, n // 2 + 1)}" for _ in range(n)]
    return {
        "sample_key": keys,
        "patient_id": pids,
        "source_patient_id": [p if rng.random() < 0.8 else f"s{p}" for p in pids],
        "patient_group": [f"g{p}" for p in pids],
        "split": [str(SPLITS[rng.integers(0, 3)]) for _ in range(n)],
        "data_hash": [f"h{rng.integers(0, 4)}" for _ in range(n)],
        "signature": [
            None if rng.random() < 0.1 else rng.integers(0, 256, 8).tolist() for _ in range(n)
        ],
        "shape": [rng.integers(1, 4, rng.integers(1, 3)).tolist() for _ in range(n)],
        "spacing_xyz": [[0.5, float("nan") if rng.random() < 0.3 else 1.0] for _ in range(n)],
        "description": [None if rng.random() < 0.2 else f"d{rng.integers(0, 3)}" for _ in keys],
        "label_a": [float(rng.integers(0, 2)) if rng.random() < 0.9 else None for _ in keys],
    }


def _table(cols: dict[str, list[Any]]) -> pa.Table:
    types = {"signature": SIG, "shape": pa.list_(pa.int64()), "spacing_xyz": pa.list_(pa.float64())}
    return pa.table({c: pa.array(v, type=types.get(c)) for c, v in cols.items()})


def _changed(rng: np.random.Generator, cols: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """A next version: rows removed, rows added, splits, hashes, values changed, shuffled."""
    n = len(cols["sample_key"])
    keep = [i for i in range(n) if rng.random() > 0.1]
    new = {c: [v[i] for i in keep] for c, v in cols.items()}
    extra = _manifest(rng, [f"new{i}" for i in range(n // 5)])
    new = {c: new[c] + extra[c] for c in new}
    for i in range(len(new["sample_key"])):
        r = rng.random()
        if r < 0.1:
            new["split"][i] = str(SPLITS[rng.integers(0, 3)])
        elif r < 0.15:
            new["data_hash"][i] = "other"
        elif r < 0.2 and new["signature"][i] is not None:
            new["signature"][i] = [*new["signature"][i][:-1], (new["signature"][i][-1] + 1) % 256]
        elif r < 0.25:
            new["signature"][i] = rng.integers(0, 256, 4).tolist()  # another length
        elif r < 0.3:
            new["description"][i] = None
    order = rng.permutation(len(new["sample_key"]))
    return {c: [v[i] for i in order] for c, v in new.items()}


def _audit(rng: np.random.Generator, zips: int, moved_groups: list[str]) -> pd.DataFrame:
    rows = []
    for z in range(zips):
        for _ in range(rng.integers(1, 3)):
            action = ["kept", "duplicate", "merged"][rng.integers(0, 3)]
            kept = "" if action == "kept" else f"k{rng.integers(0, 3)}"
            rows.append(("B1", f"z{z}.zip", action, f"r{rng.integers(0, 2)}", kept, ""))
    rows += [("B1", "", "kept", SPLIT_MOVED, g, f"why {g}") for g in moved_groups]
    return pd.DataFrame(rows, columns=["batch", "zip", "action", "reason", "kept_as", "detail"])


def _write(folder: Path, table: pa.Table, audit: pd.DataFrame) -> Path:
    folder.mkdir()
    pq.write_table(table, folder / MANIFEST)
    audit.to_csv(folder / AUDIT, index=False)
    return folder


def _by_rows(a_dir: Path, b_dir: Path) -> dict[str, Any]:
    """The diff's samples, patients, splits, moves and decisions by the per-row rules."""
    ma, mb = (pd.read_parquet(d / MANIFEST) for d in (a_dir, b_dir))
    aa, ab = (pd.read_csv(d / AUDIT, dtype=str, keep_default_na=False) for d in (a_dir, b_dir))
    ka, kb = set(ma["sample_key"]), set(mb["sample_key"])
    pa_, pb = set(ma["patient_id"]), set(mb["patient_id"])
    hash_a = dict(zip(ma["sample_key"], ma["data_hash"], strict=True))
    hash_b = dict(zip(mb["sample_key"], mb["data_hash"], strict=True))
    per_split = {}
    for split in SPLITS:
        rows = mb[mb["split"] == split]
        per_split[split] = {
            "patients": len(set(rows["patient_id"]) & (pb - pa_)),
            "samples": len(set(rows["sample_key"]) - ka),
        }
    before: dict[str, str] = {}
    for col in ("source_patient_id", "patient_id"):
        before.update(zip(ma[col], ma["split"], strict=True))
    moved = ab[ab["reason"] == SPLIT_MOVED]
    reasons = dict(zip(moved["kept_as"], moved["detail"], strict=True))
    moves: dict[str, dict[str, str]] = {}
    cols = ("source_patient_id", "patient_id", "split", "patient_group")
    for source, patient, new, group in zip(*(mb[c] for c in cols), strict=True):
        for pid in dict.fromkeys((source, patient)):
            old = before.get(pid)
            if old is not None and old != new and pid not in moves:
                why = reasons.get(group, "no split move is recorded in the audit")
                moves[pid] = dict(
                    patient_id=pid, patient_group=group, from_split=old, to_split=new, reason=why
                )

    def decisions(audit: pd.DataFrame) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], set[str]] = defaultdict(set)
        for r in audit.to_dict("records"):
            if r["reason"] != SPLIT_MOVED:
                kept = f" (kept as {r['kept_as']})" if r["kept_as"] else ""
                out[(r["batch"], r["zip"])].add(f"{r['action']}: {r['reason']}{kept}")
        return {k: "; ".join(sorted(v)) for k, v in out.items()}

    da, db = decisions(aa), decisions(ab)
    return {
        "samples_added": tuple(sorted(kb - ka)),
        "samples_removed": tuple(sorted(ka - kb)),
        "samples_changed": tuple(sorted(k for k in kb & ka if hash_a[k] != hash_b[k])),
        "patients_added": tuple(sorted(pb - pa_)),
        "patients_removed": tuple(sorted(pa_ - pb)),
        "added_per_split": per_split,
        "moves": tuple(moves[k] for k in sorted(moves)),
        "decisions": tuple(
            {"batch": k[0], "zip": k[1], "before": da.get(k, ""), "after": db.get(k, "")}
            for k in sorted(set(da) | set(db))
            if da.get(k, "") != db.get(k, "")
        ),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diff_tables_as_the_per_row_rules(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    old = _manifest(rng, [f"k{i:03d}" for i in range(120)])
    new = _changed(rng, old)
    groups = sorted(set(new["patient_group"]))
    a_dir = _write(tmp_path / "a", _table(old), _audit(rng, 40, []))
    b_table = _table(new)
    audit_b = _audit(rng, 45, groups[:5])
    b_dir = _write(tmp_path / "b", b_table, audit_b)
    got = versions_changes.diff_tables(a_dir, b_dir)
    want = _by_rows(a_dir, b_dir)
    assert {k: v for k, v in got.as_json().items() if k in want} == want
    assert got.moves and got.decisions and got.samples_changed  # each part is exercised
    # the columns: as the cell-by-cell texts count them
    before, after = pd.read_parquet(a_dir / MANIFEST), pd.read_parquet(b_dir / MANIFEST)
    assert got.columns_changed == versions_changes._columns_changed(before, after)
    assert {"signature", "description"} <= set(got.columns_changed)
    # the new manifest held in memory gives the same diff as the one read back
    assert versions_changes.diff_tables(a_dir, b_dir, b_manifest=b_table) == got
    # the new audit held in memory likewise, a missing cell (None, NaN) as the CSV's ""
    holey = audit_b.astype(object)
    holey.loc[holey["kept_as"] == "", "kept_as"] = None
    holey.loc[holey["detail"] == "", "detail"] = np.nan
    assert holey["kept_as"].isna().any() and holey["detail"].isna().any()
    in_memory = versions_changes.diff_tables(a_dir, b_dir, b_manifest=b_table, b_audit=holey)
    assert in_memory == got
    # nothing before: everything added; the same tables: nothing changed
    first = versions_changes.diff_tables(None, b_dir)
    assert first.samples_added == tuple(sorted(new["sample_key"])) and not first.moves
    same = versions_changes.diff_tables(b_dir, b_dir)
    assert not (same.samples_added or same.samples_changed or same.columns_changed)
    assert not (same.patients_added or same.decisions)


@pytest.mark.parametrize("block", [7, 256])
def test_integer_lists_compared_in_place_as_row_by_row(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lists of integers (the signatures) compared through their offsets count what the
    copied rows count: nulls, other lengths, empty lists, sliced columns, rows out of order,
    compared a block of rows at a time."""
    monkeypatch.setattr(versions_columns, "COMPARE_ROWS", block)
    rng = np.random.default_rng(7)
    n = 300

    def cells() -> list[list[int] | None]:
        out: list[list[int] | None] = []
        for _ in range(n):
            r = rng.random()
            length = 0 if r < 0.05 else (3 if r < 0.3 else 6)
            out.append(None if r > 0.9 else rng.integers(0, 4, length).tolist())
        return out

    a = pa.array([None, *cells()], type=SIG).slice(1)  # a sliced column: offsets not at 0
    b = pa.array(cells(), type=SIG)
    rows = (rng.permutation(n)[:250], rng.permutation(n)[:250])
    fast = versions_columns._integer_lists_differing(a, b, rows)
    assert fast is not None
    slow = versions_columns._differing(a.take(pa.array(rows[0])), b.take(pa.array(rows[1])))
    assert fast.tolist() == slow.tolist() and 0 < fast.sum() < 250
    same = versions_columns._integer_lists_differing(a, a, (np.arange(n), np.arange(n)))
    assert same is not None and not same.any()
    floats = pa.array([[0.5]] * 3, pa.list_(pa.float64()))
    assert versions_columns._integer_lists_differing(floats, floats, rows) is None


def test_parquet_columns_reads_large_columns_in_batches_and_the_rest_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A column of more leaf values than BULK_VALUES comes in batches of BATCH_ROWS rows,
    counted over every row group (the first holds only null signatures, as CT rows have);
    the others come from one read of them all, kept for the next call; every column holds
    what the file holds."""
    rng = np.random.default_rng(3)
    n = 700
    signatures = [None if i < 256 else rng.integers(0, 256, 64).tolist() for i in range(n)]
    table = pa.table(
        {
            "sample_key": [f"k{i}" for i in range(n)],
            "signature": pa.array(signatures, SIG),
            "shape": pa.array([[256, 256]] * n, pa.list_(pa.int64())),
            "scale": rng.random(n),
        }
    )
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=256)
    monkeypatch.setattr(versions_columns, "BULK_VALUES", 40 * n)  # 444 rows of 64: large
    cols = versions_columns.ParquetColumns.open(tmp_path / "m.parquet")
    assert cols._large() == {"signature"}
    reads: list[list[str]] = []
    real_read = cols.file.read

    def read(*args: Any, **kwargs: Any) -> pa.Table:
        reads.append(list(kwargs["columns"]))
        return real_read(*args, **kwargs)

    monkeypatch.setattr(cols.file, "read", read)
    for name in ("shape", "sample_key", "signature", "scale", "shape"):
        assert cols.column(name).combine_chunks().equals(table.column(name).combine_chunks())
    assert reads == [["sample_key", "shape", "scale"]]
    assert cols.column("signature").num_chunks == -(-n // versions_columns.BATCH_ROWS)


def _patients_by_rows(manifest: pd.DataFrame, members: dict[str, list[str]]) -> pd.DataFrame:
    ids: dict[Any, set[str]] = defaultdict(set)
    split: dict[Any, set[str]] = defaultdict(set)
    counts: dict[Any, Counter[str]] = defaultdict(Counter)
    cols = ("patient_group", "patient_id", "source_patient_id", "split", "modality")
    for group, pid, source, s, modality in zip(*(manifest[c].tolist() for c in cols), strict=True):
        if group is None or group != group:
            continue
        ids[group].update((str(pid), str(source)))
        split[group].add(str(s))
        counts[group][modality] += 1
    rows = [
        {
            "patient_group": str(g),
            "patient_ids": sorted(ids[g] | {str(p) for p in members.get(str(g), ())}),
            "split": ",".join(sorted(split[g])),
            "n_samples": counts[g].total(),
            "n_cxr": counts[g]["cxr"],
            "n_ct": counts[g]["ct"],
        }
        for g in sorted(ids)
    ]
    return pd.DataFrame(rows, columns=list(rows[0]))


def test_patients_frame_as_row_by_row() -> None:
    rng = np.random.default_rng(3)
    n = 400
    groups = [f"g{rng.integers(0, 90):02d}" for _ in range(n)]
    text = pd.DataFrame(
        {
            "patient_group": pd.Series(
                [None if i % 37 == 0 else g for i, g in enumerate(groups)], dtype="str"
            ),
            "patient_id": pd.Series([f"p{g[1:]}" for g in groups], dtype="str"),
            "source_patient_id": pd.Series(
                [f"s{rng.integers(0, 3)}" if i % 5 else None for i in range(n)], dtype="str"
            ),
            "split": [str(SPLITS[rng.integers(0, 3)]) if i % 3 else "train" for i in range(n)],
            "modality": ["ct" if i % 7 == 0 else "cxr" for i in range(n)],
        }
    )
    members = {g: [f"m{g}", 7] for g in sorted(set(groups))[::3]} | {"elsewhere": ["x"]}
    for frame in (text, text.astype(object)):  # text columns, and object cells
        got = patients_frame(frame, members)  # type: ignore[arg-type]
        pd.testing.assert_frame_equal(got, _patients_by_rows(frame, members))  # type: ignore[arg-type]
    assert patients_frame(text.iloc[:0]).empty


def test_text_and_number_columns_convert_as_cell_by_cell() -> None:
    """A manifest's text, number and flag columns converted as whole columns give the arrays
    the per-cell rules give (missing text null, NaN null), from text or object columns."""
    n = 50
    frame = pd.DataFrame(
        {
            "sample_key": pd.Series([f"k{i}" if i % 9 else None for i in range(n)], dtype="str"),
            "description": pd.Series([f"d{i}" if i % 4 else None for i in range(n)], dtype=object),
            "age_years": [float(i) if i % 6 else float("nan") for i in range(n)],
            "days_from_encounter": pd.Series([None] * n, dtype=object),
            "frame": np.arange(n, dtype=np.int64),
            "orphan": np.arange(n) % 2 == 0,
            "for_processing": pd.Series([True, None] * (n // 2), dtype=object),
        }
    )
    got = _to_table(frame)
    types = {c: got.schema.field(c).type for c in frame.columns}
    for col in frame.columns:
        conv = _text if types[col] == pa.string() else _scalar
        want = pa.array([conv(v) for v in frame[col].tolist()], type=types[col])
        assert got.column(col).combine_chunks().equals(want), col
    assert types["age_years"] == pa.float64() and got.column("age_years").null_count == n // 6 + 1


def test_guard_column_wise_as_per_cell() -> None:
    """The shrink guard's texts of text columns and of list columns (counts of previous
    patients, batch folders gone, samples removed) are those of object cells, and those of
    the previous manifest as the Arrow table the guard reads."""
    prev = pd.DataFrame(
        {
            "sample_key": [f"k{i}" for i in range(30)],
            "patient_id": [f"p{i % 12}" if i % 10 else "" for i in range(30)],
            "sop_uid": [f"u{i}" for i in range(30)],
            "data_hash": [f"h{i}" for i in range(30)],
            "batch": [f"B{i % 3}" for i in range(30)],
            "batches": [[f"B{i % 3}", f"C{i % 2}"] if i % 4 else [] for i in range(30)],
            "source_zips": [[f"z{i}.zip"] for i in range(30)],
        }
    )
    new = prev.iloc[5:].copy()
    new.loc[new.index[:3], "sample_key"] = ["x1", "x2", "x3"]  # the same images, new keys
    audit = pd.DataFrame({"zip": ["z0.zip", "z1.zip"], "action": ["duplicate", "error"]})
    as_text = {
        c: prev[c].astype("str") for c in prev.columns if c not in ("batches", "source_zips")
    }
    typed = prev.assign(**as_text)
    arrow = pa.Table.from_pandas(prev, preserve_index=False)
    string_keys = new.astype({"sample_key": "string"})
    pairs = ((prev, new), (typed, new.astype(object)), (arrow, new), (arrow, string_keys))
    checks = [guard.compare(p, n, audit, ["B0"]) for p, n in pairs]
    for other in checks[1:]:
        assert dataclasses.asdict(other) == dataclasses.asdict(checks[0])
    check = checks[0]
    assert (check.previous_samples, check.previous_patients) == (30, 12)
    assert (check.removed_samples, check.unexplained_samples) == (8, 4)
    assert check.missing_batches == ("B1", "B2", "C0", "C1")


def test_whole_table_steps_iterate_no_text_column_in_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The patients table, the manifest's text columns, the guard over an unchanged week and
    the diff never walk a pandas text column value by value (each value a Python call: 0.4 s
    a week at 6,300 samples; pandas itself walks the column names), and the diff compares
    the new manifest held in memory."""
    from pandas.core.arrays.arrow.array import ArrowExtensionArray

    rng = np.random.default_rng(11)
    n = 400
    old = _manifest(rng, [f"k{i:03d}" for i in range(n)])
    a_dir = _write(tmp_path / "a", _table(old), _audit(rng, 10, []))
    b_dir = _write(tmp_path / "b", _table(old), _audit(rng, 10, []))
    (b_dir / MANIFEST).unlink()  # the diff below reads the table given, not this file
    frame = _table(old).to_pandas()
    if not isinstance(frame["sample_key"].array, ArrowExtensionArray):
        # pandas 2 reads text as object columns: Arrow-backed text columns walked the same way
        frame = _table(old).to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)
    frame["modality"] = pd.Series(["cxr"] * n, dtype=frame["sample_key"].dtype)
    walk = ArrowExtensionArray.__iter__
    walked = [0]

    def counted(self: Any) -> Any:
        for v in walk(self):
            walked[0] += 1
            yield v

    monkeypatch.setattr(ArrowExtensionArray, "__iter__", counted)
    steps = {
        "patients": lambda: len(patients_frame(frame)),
        "texts": lambda: _to_table(frame[["sample_key", "patient_id"]]).num_rows,
        "guard": lambda: guard.compare(frame, frame, pd.DataFrame({"zip": [], "action": []}), []),
        "diff": lambda: versions_changes.diff_tables(a_dir, b_dir, b_manifest=_table(old)),
    }
    for name, step in steps.items():
        walked[0] = 0
        step()
        assert walked[0] < 100, f"{name}: {walked[0]} values walked"
    list(frame["sample_key"])
    assert walked[0] >= n  # the count sees a walk


def _diff_fields(d: versions_changes.VersionDiff) -> dict[str, Any]:
    return d.as_json()


def test_the_diff_maps_kept_columns_and_counts_what_the_parquet_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Kept for the previous manifest's bytes, its large columns are mapped from the kept
    file, not decoded, with the same diff; kept for other bytes, damaged, or of another row
    count or type, they are not used and the parquet is decoded, with the same diff."""
    rng = np.random.default_rng(5)
    old = _manifest(rng, [f"k{i:03d}" for i in range(150)])
    a_table = _table(old)
    a_dir = _write(tmp_path / "a", a_table, _audit(rng, 40, []))
    b_table = _table(_changed(rng, old))
    b_dir = _write(tmp_path / "b", b_table, _audit(rng, 45, []))
    monkeypatch.setattr(versions_columns, "BULK_VALUES", 500)  # the signatures are large
    assert keptcolumns.large_columns(a_table) == ["signature"]
    want = _diff_fields(versions_changes.diff_tables(a_dir, b_dir, b_manifest=b_table))
    assert want["columns_changed"]["signature"] > 0
    kept = tmp_path / "kept"
    sha = shard_sha256(a_dir / MANIFEST)
    path = keptcolumns.keep(kept, sha, a_table)
    assert path == kept / f"{sha}.arrow"
    decoded: list[str] = []
    real = pq.ParquetFile.iter_batches

    def iter_batches(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Any:
        decoded.extend(kwargs["columns"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)

    def diff() -> dict[str, Any]:
        got = versions_changes.diff_tables(a_dir, b_dir, b_manifest=b_table, kept=kept)
        return _diff_fields(got)

    assert diff() == want and decoded == []  # mapped, not decoded
    cols = versions_columns.ParquetColumns.open(
        a_dir / MANIFEST, lambda file: keptcolumns.find(kept, a_dir / MANIFEST, file)
    )
    assert cols.column("signature").equals(pq.read_table(a_dir / MANIFEST).column("signature"))
    # another row count under the right name: not used
    keptcolumns.keep(kept, sha, a_table.slice(1))
    assert diff() == want and decoded == ["signature"]
    # damaged: not used, and said
    path.write_bytes(path.read_bytes()[:100])
    assert diff() == want and decoded == ["signature"] * 2
    assert "unreadable" in caplog.text
    # kept for the bytes before the manifest changed: not found
    keptcolumns.keep(kept, sha, a_table)
    pq.write_table(a_table.slice(0, 149), a_dir / MANIFEST)
    assert keptcolumns.find(kept, a_dir / MANIFEST, pq.ParquetFile(a_dir / MANIFEST)) == {}
    # another type under the right name: not used
    other = a_table.set_column(
        a_table.column_names.index("signature"),
        "signature",
        a_table.column("signature").cast(pa.list_(pa.int64())),
    )
    keptcolumns.keep(kept, shard_sha256(a_dir / MANIFEST), other.slice(0, 149))
    assert keptcolumns.find(kept, a_dir / MANIFEST, pq.ParquetFile(a_dir / MANIFEST)) == {}


def test_keep_keeps_the_two_newest_files_and_a_failed_write_costs_only_the_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(versions_columns, "BULK_VALUES", 10)
    table = _table(_manifest(np.random.default_rng(1), [f"k{i}" for i in range(40)]))
    kept = tmp_path / "kept"
    for k, name in enumerate(("a", "b", "c")):
        path = keptcolumns.keep(kept, name, table)
        assert path is not None
        os.utime(path, ns=(k * 10**9, k * 10**9))  # in the order written, whatever the clock
    keptcolumns.keep(kept, "d", table)
    assert sorted(p.name for p in kept.iterdir()) == ["c.arrow", "d.arrow"]
    assert set(keptcolumns.large_columns(table)) == {"signature", "shape", "spacing_xyz"}
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    assert keptcolumns.keep(blocked / "kept", "e", table) is None
    assert "not kept" in caplog.text
    monkeypatch.setattr(versions_columns, "BULK_VALUES", 10**9)
    assert keptcolumns.large_columns(table) == []
    assert keptcolumns.keep(kept, "f", table) is None and not (kept / "f.arrow").exists()
