"""manifest.py: column types, atomic writes, validation, the contract check.

``make_output`` builds a small, sound output folder in code (shards + tables); the verify
and dataset tests import it from here.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hiroml.records import AuditRow
from hiroml.store.contract import check_contract
from hiroml.store.reader import read_manifest
from hiroml.store.shards import ShardWriter
from hiroml.store.tables import (
    AUDIT_COLUMNS,
    CT_COLUMNS,
    MANIFEST_COLUMNS,
    ManifestError,
    audit_frame,
    patients_frame,
    write_outputs,
)
from hiroml.vocab import Action


def _cxr(rng: np.random.Generator, dtype: str, size: int) -> tuple[np.ndarray, float]:
    img = rng.random((size, size), dtype=np.float32)
    if dtype == "uint8":
        return np.round(img * 255).astype(np.uint8), 1 / 255
    return img.astype(np.float16), 1.0


def make_output(
    root: Path,
    *,
    n_patients: int = 12,
    n_ct: int = 2,
    size: int = 32,
    cxr_dtype: str = "float16",
    seed: int = 0,
    max_samples: int = 5,
    compression: str = "none",
) -> Path:
    """A sound hiroml output folder: 2 CXR per patient, ``n_ct`` CT volumes, shards rolled
    over every ``max_samples`` samples, patients dealt train, train, val, test in turn."""
    rng = np.random.default_rng(seed)
    out = root / "out"
    rows = []
    samples = []
    for p in range(n_patients):
        pid = f"{1000 + p}"
        group = f"g{pid}"
        for j in range(2):
            arr, scale = _cxr(rng, cxr_dtype, size)
            sop = f"1.2.826.0.1.{p}.{j}"
            samples.append(("cxr", f"cxr-{pid}-{j}", arr, {"sop_uid": sop, "scale": scale}))
            rows.append(
                {
                    "sample_key": f"cxr-{pid}-{j}",
                    "modality": "cxr",
                    "patient_id": pid,
                    "source_patient_id": pid,
                    "patient_group": group,
                    "split": ("train", "train", "val", "test")[p % 4],
                    "exam_key": f"e{pid}-{j}",
                    "hiro_id": f"A{j:03d}",
                    "exam_time": dt.datetime(2020, 3, 1 + j, 14, 0, p),
                    "description": "XR-PORT-CHEST-1V",
                    "batch": "CXR-UPDATE-20200523-COMPLETE",
                    "source_zips": [f"{pid}_2020030{1 + j}-140000_A{j:03d}_XR.zip"],
                    "series_uid": f"1.2.826.1.{p}.{j}",
                    "sop_uid": sop,
                    "view": "frontal" if j == 0 else "lateral",
                    "age_years": 40.0 + p if p % 5 else None,
                    "sex": "F" if p % 2 else "M",
                    "shape": list(arr.shape),
                    "sop_uids": [sop],
                    "pixel_hashes": [f"px{p}-{j}"],
                    "label_covid": float(p % 2),
                    "scale": scale,
                }
            )
    for c in range(n_ct):
        pid = f"{2000 + c}"
        group = f"g{pid}"
        vol = rng.integers(-1024, 2000, size=(6 + c, size, size), dtype=np.int16)
        sops = [f"1.2.840.9.{c}.{z}" for z in range(vol.shape[0])]
        samples.append(("ct", f"ct-{pid}", vol, {"series_uid": f"1.2.840.8.{c}"}))
        rows.append(
            {
                "sample_key": f"ct-{pid}",
                "modality": "ct",
                "patient_id": pid,
                "source_patient_id": pid,
                "patient_group": group,
                "split": "train",
                "exam_key": f"e{pid}",
                "hiro_id": "A002",
                "exam_time": dt.datetime(2020, 5, 8, 10, 53),
                "description": "CT-CHEST-WO",
                "batch": "CT-UPDATE-20200602-COMPLETE",
                "source_zips": [f"{pid}_20200508-105300_A002_CT-CHEST-WO.zip"],
                "series_uid": f"1.2.840.8.{c}",
                "sop_uid": None,
                "view": "unknown",
                "age_years": 61.0,
                "sex": "M",
                "shape": list(vol.shape),
                "size_xyz": [size, size, vol.shape[0]],
                "spacing_xyz": [0.7, 0.7, 2.5],
                "origin_xyz": [-180.0, -180.0, -300.0 - c],
                "direction": [1.0, 0, 0, 0, 1, 0, 0, 0, 1],
                "sop_uids": sops,
                "pixel_hashes": [f"ct{c}-{z}" for z in range(vol.shape[0])],
                "label_covid": 1.0,
                "scale": 1.0,
            }
        )
    located: dict[str, tuple[str, str, str]] = {}
    for modality in ("cxr", "ct"):
        with ShardWriter(
            out / "shards",
            f"{modality}-t0",
            modality=modality,
            max_samples=max_samples,
            max_bytes=1 << 30,
            attrs={"config_hash": "abc123"},
            compression=compression,
        ) as w:
            for mod, key, arr, meta in samples:
                if mod == modality:
                    w.add(key, arr, meta)
        for info in w.shards:
            for key, digest in zip(info.keys, info.data_hashes, strict=True):
                located[key] = (f"shards/{info.name}", info.sha256, digest)
    manifest = pd.DataFrame(rows)
    manifest["shard"] = [located[k][0] for k in manifest["sample_key"]]
    manifest["shard_sha256"] = [located[k][1] for k in manifest["sample_key"]]
    manifest["data_hash"] = [located[k][2] for k in manifest["sample_key"]]
    audit = audit_frame(
        [AuditRow("1000_x.zip", "CXR-UPDATE-20200523-COMPLETE", Action.KEPT, "unique exam")]
    )
    write_outputs(out, manifest, patients_frame(manifest), audit)
    (out / "report.html").write_text("<html></html>")
    return out


def test_round_trip_types(tmp_path: Path) -> None:
    out = make_output(tmp_path)
    m = read_manifest(out)
    assert set(MANIFEST_COLUMNS + CT_COLUMNS) <= set(m.columns)
    schema = pq.read_schema(out / "manifest.parquet")
    assert str(schema.field("exam_time").type) == "timestamp[us]"
    for col, value_type in (
        ("shape", pa.int64()),
        ("direction", pa.float64()),
        ("source_zips", pa.string()),
        ("pixel_hashes", pa.string()),
    ):
        assert pa.types.is_list(schema.field(col).type)
        assert schema.field(col).type.value_type == value_type
    assert str(schema.field("orphan").type) == "bool"
    assert str(schema.field("days_from_encounter").type) == "double"
    ct = m[m["modality"] == "ct"].iloc[0]
    assert list(ct["direction"]) == [1.0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert list(ct["shape"]) == [6, 32, 32]
    cxr = m[m["modality"] == "cxr"].iloc[0]
    assert cxr["size_xyz"] is None
    assert pd.isna(m.loc[m["sample_key"] == "cxr-1000-0", "age_years"]).all()
    assert m["exam_time"].iloc[0] == pd.Timestamp("2020-03-01 14:00:00")
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    patients = pd.read_parquet(out / "patients.parquet")
    assert len(patients) == 14
    assert patients["n_samples"].sum() == len(m)
    audit = pd.read_csv(out / "audit.csv", dtype=str)
    assert list(audit.columns[:6]) == AUDIT_COLUMNS
    assert audit["action"].tolist() == ["kept"]


def test_check_contract_passes_and_names_shortfalls(tmp_path: Path) -> None:
    out = make_output(tmp_path)
    assert check_contract(out) == []
    (out / "report.html").unlink()
    assert check_contract(out) == ["missing report.html"]
    (out / "report.html").write_text("")
    m = read_manifest(out)
    shard = m["shard"].iloc[0]
    (out / shard).rename(out / (shard + ".moved"))
    assert f"shard {shard} named in the manifest does not exist" in check_contract(out)


def test_write_outputs_validates_before_writing(tmp_path: Path) -> None:
    out = make_output(tmp_path)
    m = read_manifest(out)
    before = (out / "manifest.parquet").read_bytes()
    patients = pd.read_parquet(out / "patients.parquet")
    audit = pd.read_csv(out / "audit.csv", dtype=str)
    with pytest.raises(ManifestError, match="lacks columns: patient_group"):
        write_outputs(out, m.drop(columns=["patient_group"]), patients, audit)
    bad = m.copy()
    bad.loc[0, "split"] = "holdout"
    with pytest.raises(ManifestError, match=r"split has values \['holdout'\]"):
        write_outputs(out, bad, patients, audit)
    bad = m.copy()
    bad.loc[1, "sample_key"] = bad.loc[0, "sample_key"]
    with pytest.raises(ManifestError, match="sample_key not unique"):
        write_outputs(out, bad, patients, audit)
    bad = m.copy()
    bad["direction"] = [[1.0, 0.0, 0.0]] * len(bad)
    with pytest.raises(ManifestError, match="direction must hold 9 numbers"):
        write_outputs(out, bad, patients, audit)
    with pytest.raises(ManifestError, match=r"audit has actions \['kept-ish'\]"):
        write_outputs(out, m, patients, audit.assign(action="kept-ish"))
    assert (out / "manifest.parquet").read_bytes() == before


def test_patients_frame_one_row_per_group_with_ids_splits_and_counts() -> None:
    m = pd.DataFrame(
        {
            "patient_group": ["g2", "g1", "g1", "g2", None],
            "patient_id": ["2", "1", "3", "2", "9"],
            "source_patient_id": ["2", "1-old", "3", "2", "9"],
            "split": ["test", "train", "train", "val", "train"],
            "modality": ["cxr", "cxr", "ct", "cxr", "cxr"],
        }
    )
    p = patients_frame(m, {"g1": ["7"]})
    assert p.to_dict("records") == [
        {"patient_group": "g1", "patient_ids": ["1", "1-old", "3", "7"], "split": "train",
         "n_samples": 2, "n_cxr": 1, "n_ct": 1},
        {"patient_group": "g2", "patient_ids": ["2"], "split": "test,val",
         "n_samples": 2, "n_cxr": 2, "n_ct": 0},
    ]  # fmt: skip  # the row without a group is in none
    assert patients_frame(m.iloc[:0]).empty and list(patients_frame(m.iloc[:0])) == list(p)


def test_numeric_list_columns_through_numpy_are_the_per_cell_arrays() -> None:
    """``_list_array``'s numpy path gives the array (or the error) the per-cell path gives,
    and takes that path for the 1,024-value signatures."""
    from hiroml.store import tables as m

    rng = np.random.default_rng(16)
    signatures = [tuple(rng.integers(0, 256, 1024).tolist()) for _ in range(40)]
    cases = {
        "signatures": signatures,
        "arrays": [np.asarray(s, dtype=np.uint8) for s in signatures],
        "floats": [(1.0, 2.5, 3.0)] * 5,
        "mixed": [(1, 2, 3), (1.5, 2, 3)],
        "ragged": [(1, 2), (1, 2, 3)],
        "missing": [(1, 2), None],
        "one value": [(1,), (2,)],
        "negative": [(-1, 2)],
        "too big": [(300, 2)],
        "nan": [(float("nan"), 1.0)],
        "empty": [(), ()],
        "text": [("a", "b"), ("c",)],
    }
    types = (pa.list_(pa.uint8()), pa.list_(pa.int64()), pa.list_(pa.float64()))
    for name, values in cases.items():
        for typ in types:
            try:
                want, want_err = pa.array([m._as_list(v) for v in values], type=typ), None
            except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
                want, want_err = None, type(e)
            try:
                got, got_err = m._list_array(values, typ), None
            except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
                got, got_err = None, type(e)
            assert got_err == want_err, (name, typ)
            if want is not None:
                assert got is not None and got.type == want.type, (name, typ)
                assert repr(got.to_pylist()) == repr(want.to_pylist()), (name, typ)
    fast = m._uniform_numbers(signatures, pa.uint8())
    assert fast is not None and fast.to_pylist() == [list(s) for s in signatures]


def _as_list_before(v: object) -> object:
    """manifest._as_list before its shortcut for text arrays (the reference)."""
    from hiroml.store import tables as m

    if isinstance(v, list | tuple) and len(v) == 1 and type(v[0]) is str:
        return [v[0]]
    if isinstance(v, list | tuple | np.ndarray) and len(v) > 1:
        if isinstance(v, np.ndarray) and v.dtype.kind in "iufb":
            return v.tolist()
        if set(map(type, v)) <= m._PLAIN:
            return list(v)
        return [x.item() if hasattr(x, "item") else x for x in v]
    if m._is_missing(v):
        return None
    if isinstance(v, str):
        return [v]
    return [x.item() if hasattr(x, "item") else x for x in v]  # type: ignore[union-attr]


def test_cell_shortcuts_give_what_the_general_path_gives() -> None:
    """The shortcuts for text arrays read back from a manifest and for plain scalars."""
    from hiroml.store import tables as m

    def obj(*items: object) -> np.ndarray:
        a = np.empty(len(items), dtype=object)
        a[:] = list(items)
        return a

    cells = [
        obj("a"), obj("a", "b"), obj(), obj(None), obj(np.nan), obj("a", None),
        obj(np.int64(3), "x"), ("a",), ("a", "b"), (None,), [], "a", None, np.nan,
        np.array([1, 2]), np.array([np.nan]), np.array(["u", "v"]),
    ]  # fmt: skip
    for cell in cells:
        assert repr(m._as_list(cell)) == repr(_as_list_before(cell)), repr(cell)
    scalars = [0, 1, True, False, 1.5, -0.0, float("nan"), None, np.nan, np.float64(2.5),
               np.int64(7), np.bool_(True), pd.NA, pd.NaT, "x"]  # fmt: skip
    for v in scalars:
        want = None if m._is_missing(v) else (v.item() if hasattr(v, "item") else v)
        got = m._scalar(v)
        assert repr(got) == repr(want) and type(got) is type(want), repr(v)
