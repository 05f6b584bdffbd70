"""The files a study cites, on the tiny build: croissant.json (validated and loaded through
mlcroissant) and CLAIM.md (the CLAIM 2024 data items, with the build's numbers)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import mlcroissant as mlc
import pandas as pd
import pyarrow.parquet as pq
import pytest

from hiroml.report import claim, croissant
from hiroml.store.verify import verify
from hiroml.versions.listing import find_version
from hiroml.vocab import AUDIT, CLAIM_NAME, CROISSANT_NAME, MANIFEST, PATIENTS, SPLITS


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(path: Path) -> tuple[mlc.Dataset, list[dict[str, object]]]:
    ds = mlc.Dataset(jsonld=str(path))
    assert ds.metadata.ctx.issues.errors == set(), ds.metadata.ctx.issues.report()
    return ds, list(ds.records("samples"))


def test_croissant_validates_and_loads_the_manifest(tiny_build_clinical: Path) -> None:
    out = tiny_build_clinical
    version = find_version(out)
    assert version is not None
    manifest = pd.read_parquet(version.path / MANIFEST)
    for where in (version.path, out):  # the version's, and the root copy
        ds, records = _load(where / CROISSANT_NAME)
        assert len(records) == len(manifest)
        keys = sorted(r["samples/sample_key"].decode() for r in records)  # type: ignore[union-attr]
        assert keys == sorted(manifest["sample_key"])
        assert ds.metadata.ctx.is_v1_1()
    doc = json.loads((version.path / CROISSANT_NAME).read_text(encoding="utf-8"))
    assert doc["conformsTo"] == list(croissant.CONFORMS_TO)
    assert doc["identifier"] == version.name and version.dataset_hash in doc["citeAs"]
    # every column a field, typed from the Parquet schema; list columns are arrays
    fields = {f["name"]: f for f in doc["recordSet"][0]["field"]}
    assert list(fields) == pq.read_schema(version.path / MANIFEST).names
    assert fields["age_years"]["dataType"] == "sc:Float"
    assert fields["exam_time"]["dataType"] == "sc:DateTime"
    assert fields["sample_key"]["dataType"] == "sc:Text"
    assert fields["source_zips"]["isArray"] is True and "isArray" not in fields["split"]
    # the tables and every shard, with their SHA-256
    files = {f["@id"]: f for f in doc["distribution"]}
    for table in (MANIFEST, PATIENTS, AUDIT):
        assert files[table]["sha256"] == _sha256(version.path / table)
    shards = set(manifest["shard"])
    assert set(files) == {MANIFEST, PATIENTS, AUDIT} | shards
    for shard in shards:
        assert files[shard]["encodingFormat"] == "application/x-hdf5"
        assert files[shard]["contentUrl"] == f"../../{shard}"
        assert files[shard]["sha256"] == _sha256(out / shard)
    root = json.loads((out / CROISSANT_NAME).read_text(encoding="utf-8"))
    assert {f["contentUrl"] for f in root["distribution"]} >= shards
    # the Responsible-AI fields the build knows
    for batch in json.loads((version.path / "build.json").read_text())["inputs"]["batches"]:
        assert batch in doc["rai:dataCollection"]
    assert "cxr.size=" in doc["rai:dataPreprocessingProtocol"]
    assert "hash split" in doc["rai:dataUseCases"]
    assert "patient names" in doc["rai:personalSensitiveInformation"]
    assert any("IN-PROGRESS" in x for x in doc["rai:dataLimitations"])
    assert "Jensen-Shannon" in doc["rai:dataBiases"]


def test_croissant_refuses_a_manifest_altered_after_publishing(
    tiny_build_clinical: Path, tmp_path: Path
) -> None:
    version = find_version(tiny_build_clinical)
    assert version is not None
    copy = tmp_path / "v"
    copy.mkdir()
    for name in (CROISSANT_NAME, MANIFEST):
        shutil.copy(version.path / name, copy / name)
    with (copy / MANIFEST).open("ab") as f:
        f.write(b"\0")
    ds = mlc.Dataset(jsonld=str(copy / CROISSANT_NAME))
    with pytest.raises(mlc.GenerationError, match=r"Download\(manifest.parquet\)") as caught:
        list(ds.records("samples"))
    assert "Hash of downloaded file" in str(caught.value.__cause__)


def test_verify_checks_croissant_json_against_the_version(
    tiny_build_clinical: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(tiny_build_clinical, out, symlinks=True)
    assert verify(out) == []
    version = find_version(out)
    assert version is not None
    path = version.path / CROISSANT_NAME
    doc = json.loads(path.read_text(encoding="utf-8"))
    shard = next(f for f in doc["distribution"] if f["encodingFormat"] == "application/x-hdf5")
    shard["sha256"] = "0" * 64
    doc["distribution"] = [f for f in doc["distribution"] if f["@id"] != PATIENTS]
    doc["recordSet"][0]["field"].append({**doc["recordSet"][0]["field"][0], "name": "bogus"})
    path.write_text(json.dumps(doc), encoding="utf-8")
    errors = verify(out)
    assert f"version {version.name}: {CROISSANT_NAME} lists {shard['@id']} with sha256 " in (
        "\n".join(errors)
    )
    assert any(f"{CROISSANT_NAME} has a field bogus that {MANIFEST} lacks" in e for e in errors)
    assert len(errors) == 2, errors  # a table it does not list is not an error
    path.write_text("{", encoding="utf-8")
    assert any(f"{CROISSANT_NAME} unreadable" in e for e in verify(out))


def _items(text: str) -> dict[int, str]:
    parts = re.split(r"^### (\d+)\. .*$", text, flags=re.M)
    return {int(n): body for n, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_claim_fills_the_data_items_with_the_builds_numbers(tiny_build_clinical: Path) -> None:
    out = tiny_build_clinical
    version = find_version(out)
    assert version is not None
    text = (version.path / CLAIM_NAME).read_text(encoding="utf-8")
    assert (out / CLAIM_NAME).read_text(encoding="utf-8") == text
    assert "ryai.240300" in text and version.name in text
    items = _items(text)
    assert list(items) == [7, 8, 9, 10, 11, 12, 13, 14, 19, 20, 35, 36, 40, 43]
    authors = [n for n, _, _ in claim.FOR_AUTHORS]
    assert sorted([*items, *authors]) == list(range(1, 45))  # each of the 44 items once
    manifest = pd.read_parquet(version.path / MANIFEST)
    for batch in set(manifest["batch"]):
        assert f"| {batch} |" in items[7]
    # item 19: patient groups and samples per split, as the manifest has them
    for split in SPLITS:
        rows = manifest[manifest["split"] == split]
        groups = rows["patient_group"].nunique()
        assert re.search(rf"^\| {split} \| {groups} \(\d+%\) \| {len(rows)} \|", items[19], re.M)
    assert "hash split" in items[19]
    assert "| icu |" in items[14]  # the label column, with its prevalence per split
    assert "orphan" not in items[12] and "1 patient(s) have no row" in items[12]
    assert version.dataset_hash in items[43]
    groups = manifest.groupby("split")["patient_group"].nunique()
    assert f"| all weeks | train | {groups['train']} | " in items[36]
    assert "**authors to state.**" in items[11]
