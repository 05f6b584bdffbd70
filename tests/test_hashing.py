"""The dataset hash (scheme 2, column-wise) and the version diff's column-wise comparison:
a week's build on top of earlier ones hashes as a fresh build of the same inputs, versions
hashed by scheme 1 still verify, and an upgrade alone publishes no new version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MakeCfg
from test_manifest import make_output

from hiroml import pipeline as build
from hiroml.store.verify import examine_all
from hiroml.versions import changes as versions_changes
from hiroml.versions import columns as versions_columns
from hiroml.versions import hashing as versions_hashing
from hiroml.versions import listing as versions_listing


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """A small sound manifest (3 patients, 1 CT) with 16-value signatures."""
    out = make_output(tmp_path_factory.mktemp("hash"), n_patients=3, n_ct=1)
    m = pd.read_parquet(out / "manifest.parquet")
    m["signature"] = [[(i * 37 + j) % 256 for j in range(16)] for i in range(len(m))]
    return m


def test_scheme_2_is_pinned_and_sees_every_value(manifest: pd.DataFrame) -> None:
    """Pinned values (a change of the definition must be made knowingly), row and column
    order ignored, NaN as null, and each kind of change seen: a value, a null for a value,
    text moved across a cell boundary, an element moved across a list boundary."""
    m = manifest
    h = versions_hashing.dataset_hash(m)
    assert h == "17b547e80bdbf887edc7ce2df91f337d7c803584c5ed7947f012feb4db2771a1"
    assert versions_hashing.dataset_hash(m.sample(frac=1.0, random_state=1)[m.columns[::-1]]) == h
    assert versions_hashing.dataset_hash(m, scheme=1) == (
        "b554c751d841aee37fb60ca18810b462cb3f0f5f0afd10ad11dbf5f2630e131b"
    )

    def changed(col: str, row: int, value: Any) -> str:
        other = m.copy()
        other[col] = other[col].astype(object)
        other.at[row, col] = value
        return versions_hashing.dataset_hash(other)

    assert changed("shard_sha256", 0, "0" * 64) == h  # not hashed: the HDF5 layout's bytes
    seen = {
        changed("split", 0, "test" if m.at[0, "split"] != "test" else "val"),
        changed("description", 1, None),
        changed("description", 1, ""),
        changed("age_years", 2, -0.0),
        changed("signature", 0, None),
        changed("signature", 0, []),
        changed("signature", 0, [*m.at[0, "signature"][:-1], 0]),
    }
    assert h not in seen and len(seen) == 7
    a = m.copy()
    a["near_duplicates"] = [["ab", "c"] if i == 0 else [] for i in range(len(m))]
    b = m.copy()
    b["near_duplicates"] = [["a", "bc"] if i == 0 else [] for i in range(len(m))]
    c = m.copy()
    c["near_duplicates"] = [["a"] if i == 0 else ["b"] if i == 1 else [] for i in range(len(m))]
    d = m.copy()
    d["near_duplicates"] = [["a", "b"] if i == 0 else [] for i in range(len(m))]
    hashes = {versions_hashing.dataset_hash(x) for x in (a, b, c, d)}
    assert len(hashes) == 4
    nan, null = m.copy(), m.copy()
    nan["spacing_xyz"] = nan["spacing_xyz"].astype(object)
    null["spacing_xyz"] = null["spacing_xyz"].astype(object)
    nan.at[len(m) - 1, "spacing_xyz"] = [0.7, float("nan"), 2.5]
    null.at[len(m) - 1, "spacing_xyz"] = [0.7, None, 2.5]
    assert versions_hashing.dataset_hash(nan) == versions_hashing.dataset_hash(null)
    with pytest.raises(ValueError, match="scheme 3 is unknown"):
        versions_hashing.dataset_hash(m, scheme=3)


def test_file_and_frame_hash_alike(manifest: pd.DataFrame, tmp_path: Path) -> None:
    """A manifest file and the frame it was written from hash alike; chunked and sliced
    Arrow columns hash as their values."""
    from hiroml.store.tables import manifest_table

    m = manifest
    pq.write_table(manifest_table(m), tmp_path / "manifest.parquet")
    assert versions_hashing.dataset_hash(tmp_path / "manifest.parquet") == (
        versions_hashing.dataset_hash(m)
    )
    t = manifest_table(m)
    chunked = pa.concat_tables([t.slice(0, 2), t.slice(2)])
    assert versions_hashing.hash_table(chunked) == versions_hashing.hash_table(t)


def _symlinked(root: Path, dst: Path, batches: list[Path]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for b in batches:
        (dst / b.name).symlink_to(b)
    for extra in root.iterdir():  # the remap sheet and anything else beside the batches
        if extra.is_file():
            (dst / extra.name).symlink_to(extra)
    return dst


def test_a_week_on_top_hashes_as_a_fresh_build(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    """Build every batch but the last, then the last on top: the version it publishes has
    the dataset hash of a fresh build of all batches, recorded with its scheme, and verifies."""
    root, _ = tiny_datamart
    batches = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(batches) >= 2
    dm = _symlinked(root, tmp_path / "dm", batches[:-1])
    out = tmp_path / "weekly"
    build.run(make_cfg(dm, out))
    (dm / batches[-1].name).symlink_to(batches[-1])
    week = build.run(make_cfg(dm, out))
    fresh = build.run(make_cfg(root, tmp_path / "fresh"))
    assert week.published and fresh.published
    v_week = versions_listing.find_version(out)
    v_fresh = versions_listing.find_version(tmp_path / "fresh")
    assert v_week is not None and v_fresh is not None
    assert v_week.dataset_hash == v_fresh.dataset_hash
    assert v_week.dataset_hash_scheme == versions_hashing.DATASET_HASH_SCHEME == 2
    info = json.loads((v_week.path / "build.json").read_text())
    assert info["dataset_hash_scheme"] == 2
    assert v_week.dataset_hash == versions_hashing.dataset_hash(v_week.path / "manifest.parquet")
    assert [f.errors for f in examine_all(out)] == [[], []]


def test_a_build_reads_each_table_once_for_build_json_and_croissant(
    tiny_datamart: tuple[Path, dict[str, Any]],
    make_cfg: MakeCfg,
    tmp_path: Path,
    sha256_reads: list[str],
) -> None:
    """The tables of a new version are hashed once (``shard_sha256`` in ``sha256_once``):
    ``build.json`` and ``croissant.json`` record the same SHA-256, the files' own."""
    import hashlib

    out = tmp_path / "out"
    assert build.run(make_cfg(tiny_datamart[0], out)).published
    tables = versions_hashing.TABLE_FILES
    assert sorted(n for n in sha256_reads if n in tables) == sorted(tables)
    version = versions_listing.find_version(out)
    assert version is not None
    recorded = json.loads((version.path / "build.json").read_text())["tables"]
    croissant = json.loads((version.path / "croissant.json").read_text())["distribution"]
    listed = {f["@id"]: f["sha256"] for f in croissant if f["@id"] in tables}
    own = {n: hashlib.sha256((version.path / n).read_bytes()).hexdigest() for n in tables}
    assert recorded == listed == own


def test_a_scheme_1_version_verifies_and_an_upgrade_publishes_nothing(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    """A version published by a hiroml that hashed by scheme 1 (no ``dataset_hash_scheme``
    in its build.json) verifies by scheme 1, and a build of the same inputs publishes no new
    version; an altered manifest is still found."""
    root, _ = tiny_datamart
    out = tmp_path / "out"
    build.run(make_cfg(root, out))
    v = versions_listing.find_version(out)
    assert v is not None
    info = json.loads((v.path / "build.json").read_text())
    del info["dataset_hash_scheme"]
    info["dataset_hash"] = versions_hashing.dataset_hash(v.path / "manifest.parquet", scheme=1)
    (v.path / "build.json").write_text(json.dumps(info))
    assert versions_listing.find_version(out).dataset_hash_scheme == 1  # type: ignore[union-attr]
    assert [f.errors for f in examine_all(out)] == [[]]
    again = build.run(make_cfg(root, out), check_unchanged=False)
    assert not again.published and again.version == v.name
    info["dataset_hash"] = "0" * 64
    (v.path / "build.json").write_text(json.dumps(info))
    (errors,) = [f.errors for f in examine_all(out)]
    assert any("dataset_hash" in e for e in errors), errors


def test_column_wise_diff_counts_as_the_texts_do() -> None:
    """The Arrow comparison of the version diff agrees with the cell-by-cell texts on typed
    columns: integer and float lists (NaN, -0.0, lengths), text, nulls, timestamps, a
    column whose type changed (left to the cell-by-cell path)."""
    rng = np.random.default_rng(5)
    n = 40

    def table(change: bool) -> pa.Table:
        sig = [rng_sig.copy() for rng_sig in base_sig]
        spacing: list[list[float] | None] = [[0.5, -0.0, float("nan")] for _ in range(n)]
        text: list[str | None] = ["a"] * n
        when = pd.Timestamp("2020-01-01")
        times = [when] * n
        age: list[float | None] = [float(i) for i in range(n)]
        frame: list[Any] = [0] * n
        if change:
            sig[3][0] ^= 1
            sig[7] = sig[7][:8]
            sig[9] = None
            spacing[1] = [0.5, 0.0, float("nan")]  # -0.0 -> 0.0: other texts
            spacing[2] = [0.5, -0.0, None]  # NaN -> null: the same text
            text[4], text[5] = None, ""
            times[6] = when + pd.Timedelta(microseconds=1)
            age[8] = float("nan")
            frame = [0.0] * n  # an integer column became float: every text differs
        return pa.table(
            {
                "sample_key": [f"k{i:02d}" for i in range(n)][:: -1 if change else 1],
                "signature": pa.array(sig[:: -1 if change else 1], type=pa.list_(pa.uint8())),
                "spacing_xyz": pa.array(spacing[:: -1 if change else 1], pa.list_(pa.float64())),
                "text": pa.array(text[:: -1 if change else 1], pa.string()),
                "exam_time": pa.array(times[:: -1 if change else 1], pa.timestamp("us")),
                "age": pa.array(age[:: -1 if change else 1], pa.float64()),
                "frame": pa.array(frame),
            }
        )

    base_sig = [rng.integers(0, 256, 16).astype(np.uint8) for _ in range(n)]
    before, after = table(False), table(True)
    got = versions_changes._values_changed(before, after)
    want = versions_changes._columns_changed(before.to_pandas(), after.to_pandas())
    assert got == want == {
        "age": 1, "exam_time": 1, "frame": n, "signature": 3, "spacing_xyz": 1, "text": 2,
    }  # fmt: skip
    assert versions_changes._values_changed(before, table(False)) == {}
    counts, rest = versions_columns.changed_counts(
        before,
        after,
        ["frame", "text"],
        versions_columns.common_rows(before.column("sample_key"), after.column("sample_key")),
    )
    assert counts == {"text": 2} and rest == ["frame"]


def test_values_are_fed_as_their_little_endian_bytes_without_a_copy() -> None:
    """``_little_endian`` gives the bytes ``tobytes`` of the little-endian array gave (what the
    pinned hash was made of), for big-endian, strided and empty arrays too; an array that is
    little-endian and contiguous already is handed to SHA-256 in place, not copied."""
    for values in (
        np.arange(5, dtype="<i8"),
        np.arange(5, dtype=">i8"),
        np.arange(10, dtype="<f8")[::2],
        np.array([0, 255, 7], dtype=np.uint8),
        np.array([], dtype=np.int64),
    ):
        want = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
        assert bytes(versions_hashing._little_endian(values)) == want
    big = np.zeros(1 << 20, dtype=np.uint8)
    assert np.shares_memory(np.frombuffer(versions_hashing._little_endian(big), np.uint8), big)
