"""``croissant.json``: the version described in Croissant 1.1 (MLCommons), with the
Responsible-AI vocabulary (Croissant RAI 1.0), for ML dataset tooling.

The document names the version's tables (``manifest.parquet``, ``patients.parquet``,
``audit.csv``) and the HDF5 shards its manifest names as ``cr:FileObject`` s with their
SHA-256, and describes ``manifest.parquet`` as the ``samples`` RecordSet: one field per
column, its type from the Parquet schema (a list column is a field with ``isArray``), keyed
by ``sample_key``. Paths (``contentUrl``) are relative to the folder that holds the file: in a
version folder the shards are ``../../shards/...``; the copy at the output root
(:func:`for_root`) names them ``shards/...``. ``mlcroissant`` validates the document and
loads the samples from it (tests/test_records.py).

The RAI fields hold what the build knows: the source batches and their delivery dates
(collection and its timeframe), missing values, the conversion settings (preprocessing), the
deduplication rules (manipulation), the known limitations of the dataset card, what the
outputs carry of a patient (personal and sensitive information), the split rule (use cases)
and the representativeness of the splits (biases). Name, licence, creators and publisher
are for the authors to add.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hiroml._version import __version__
from hiroml.report.flow import text_column
from hiroml.report.representativeness import JOINT, delivery_week, representativeness
from hiroml.store.shards import shard_sha256
from hiroml.vocab import AUDIT, MANIFEST, PATIENTS, SHARDS_DIR

#: The specifications the document conforms to.
CONFORMS_TO = ("http://mlcommons.org/croissant/1.1", "http://mlcommons.org/croissant/RAI/1.0")
#: The ``contentUrl`` prefix of the shards in a version folder (``<out>/versions/<name>/``).
VERSION_PREFIX = "../../"
_CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "dct": "http://purl.org/dc/terms/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileObject": "cr:fileObject",
    "fileProperty": "cr:fileProperty",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "equivalentProperty": "cr:equivalentProperty",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
_FORMATS = {MANIFEST: "application/x-parquet", PATIENTS: "application/x-parquet", AUDIT: "text/csv"}


def data_type(t: pa.DataType) -> tuple[str, bool]:
    """The Croissant ``dataType`` of a Parquet column type and whether it is a list."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return data_type(t.value_type)[0], True
    if pa.types.is_boolean(t):
        return "sc:Boolean", False
    if pa.types.is_integer(t):
        return "sc:Integer", False
    if pa.types.is_floating(t):
        return "sc:Float", False
    if pa.types.is_timestamp(t):
        return "sc:DateTime", False
    if pa.types.is_date(t):
        return "sc:Date", False
    return "sc:Text", False


def _fields(schema: pa.Schema) -> list[dict[str, Any]]:
    fields = []
    for col in schema:
        kind, is_list = data_type(col.type)
        field: dict[str, Any] = {
            "@type": "cr:Field",
            "@id": f"samples/{col.name}",
            "name": col.name,
            "dataType": kind,
            "source": {"fileObject": {"@id": MANIFEST}, "extract": {"column": col.name}},
        }
        if is_list:
            field["isArray"] = True
            field["repeated"] = True  # read as a list by Croissant 1.0 readers too
        fields.append(field)
    return fields


def _file(name: str, url: str, sha: str, fmt: str, size: int) -> dict[str, Any]:
    return {
        "@type": "cr:FileObject",
        "@id": name,
        "name": name,
        "contentUrl": url,
        "contentSize": f"{size} B",
        "encodingFormat": fmt,
        "sha256": sha,
    }


def _distribution(folder: Path, out: Path, manifest: pd.DataFrame) -> list[dict[str, Any]]:
    """The tables in ``folder`` and the shards under ``out`` that ``manifest`` names."""
    files = [
        _file(n, n, shard_sha256(folder / n), _FORMATS[n], (folder / n).stat().st_size)
        for n in (MANIFEST, PATIENTS, AUDIT)
        if (folder / n).is_file()
    ]
    shards = pd.DataFrame(
        {"shard": text_column(manifest, "shard"), "sha": text_column(manifest, "shard_sha256")}
    ).drop_duplicates("shard")
    for shard, sha in sorted(zip(shards["shard"], shards["sha"], strict=True)):
        if not shard:
            continue
        size = (out / shard).stat().st_size if (out / shard).is_file() else 0
        files.append(
            _file(
                shard,
                VERSION_PREFIX + shard,
                sha or shard_sha256(out / shard),
                "application/x-hdf5",
                size,
            )
        )
    return files


def _batches(manifest: pd.DataFrame, batches: Sequence[str]) -> list[str]:
    return sorted((set(batches) | set(text_column(manifest, "batch").unique())) - {""})


def _batch_dates(batches: Sequence[str]) -> list[str]:
    dates = sorted(b.split("-UPDATE-")[1][:8] for b in batches if "-UPDATE-" in b)
    return [f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in dates if d.isdigit()]


def missing_text(manifest: pd.DataFrame) -> str:
    """What the manifest lacks, in numbers (age, sex, clinical rows)."""
    n = len(manifest)
    age = pd.to_numeric(manifest.get("age_years"), errors="coerce") if n else pd.Series()
    parts = [
        f"{int(age.isna().sum()) if n else 0} of {n} samples have no age ((0010,1010) Patient's "
        "Age absent or unreadable)",
        f"{int((text_column(manifest, 'sex') == '').sum())} no sex ((0010,0040) Patient's Sex)",
    ]
    if "orphan" in manifest.columns and n:
        orphans = manifest.loc[manifest["orphan"].fillna(False).astype(bool), "patient_id"]
        parts.append(f"{orphans.nunique()} patient(s) have no row in the clinical table")
    return "; ".join(parts) + ". Missing values are left missing, never imputed."


def _bias_text(manifest: pd.DataFrame) -> str:
    rep = representativeness(manifest)
    if not rep.patients:
        return "No patient."
    per_split = ", ".join(
        f"{s} {d[JOINT]:.3f}" for s, d in rep.split_distance.items() if d[JOINT] is not None
    )
    return (
        "Patients were selected by their COVID-19 encounter at one hospital: the dataset is not "
        f"a sample of a general population. Jensen-Shannon distance (base 2) of each split's "
        f"patients from all {rep.patients} patients, over age band x sex"
        f"{' x race/ethnicity' if len(rep.attributes) > 2 else ''}: {per_split}; per delivery "
        "week in report.html and DATASET.md."
    )


def _rai(manifest: pd.DataFrame, info: Mapping[str, Any]) -> dict[str, Any]:
    """The Responsible-AI fields the build knows (see the module docstring)."""
    from hiroml.report.card import _PRIVACY

    batches = _batches(manifest, info.get("batches") or ())
    dates = _batch_dates(batches)
    weeks = sorted({delivery_week(b) for b in batches})
    settings = info.get("settings") or {}
    return {
        "rai:dataCollection": (
            "Zipped DICOM exams delivered in weekly batch folders ({CXR|CT}-UPDATE-YYYYMMDD-"
            "COMPLETE) by the CRDW COVID-19 Limited Datamart of one hospital; "
            f"{len(batches)} batch(es) read: {', '.join(batches) or 'none'}."
        ),
        "rai:dataCollectionType": ["Secondary Data Analysis"],
        "rai:dataCollectionTimeframe": [dates[0], dates[-1]] if dates else [],
        "rai:dataCollectionRawData": "DICOM radiographs and CT series as the datamart delivered "
        f"them, in {len(weeks)} delivery week(s).",
        "rai:dataCollectionMissingData": missing_text(manifest),
        "rai:dataPreprocessingProtocol": f"Converted by hiroml {__version__} with: "
        + "; ".join(f"{k}={v}" for k, v in settings.items()),
        "rai:dataManipulationProtocol": (
            "Zips delivered twice are kept once; parts of a CT exam delivered in several zips "
            "are merged; patient ids linked by the remap sheet, a shared image or identical "
            "pixels form one patient group, and a patient group lies in one split. Every "
            "decision is a row of audit.csv."
        ),
        "rai:dataLimitations": list(info.get("limitations") or []),
        "rai:dataBiases": _bias_text(manifest),
        "rai:personalSensitiveInformation": (
            f"{_PRIVACY} manifest.parquet and patients.parquet hold the datamart's patient ids, "
            "age in years and sex from the DICOM header, exam date and time, and the clinical "
            "table's columns when one was joined: health data of identifiable patients under "
            "a limited data set's terms."
        ),
        "rai:dataUseCases": (
            "Training (split train), model selection (val) and evaluation (test) of models on "
            f"chest radiographs and CT. Split rule: {info.get('split_rule') or 'not recorded'}."
        ),
        "rai:dataReleaseMaintenancePlan": (
            "Rebuilt as new weekly batches arrive; each build that changes the dataset publishes "
            "a new immutable version (versions/<version>/) and a patient keeps its split across "
            "versions."
        ),
    }


def render_croissant(
    folder: Path,
    out: Path,
    manifest: pd.DataFrame,
    *,
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """The Croissant document of the version whose tables lie in ``folder`` (shards under
    ``out``). ``info``: ``version``, ``dataset_hash``, ``created`` (ISO date), ``batches``
    (the batch folder names read), ``settings`` (config key -> value), ``split_rule`` (the
    rule in words) and ``limitations`` (the dataset card's list), each optional."""
    from hiroml.report.card import _INTRO

    version = str(info.get("version") or "")
    digest = str(info.get("dataset_hash") or "")
    seq = version.split("-")[0]
    doc: dict[str, Any] = {
        "@context": _CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": list(CONFORMS_TO),
        "name": f"hiroml-{version}" if version else "hiroml-dataset",
        "description": _INTRO,
        # Croissant asks for MAJOR.MINOR.PATCH: the version's sequence number
        "version": f"{int(seq)}.0.0" if seq.isdigit() else "0.0.0",
        "identifier": version or None,
        "datePublished": str(info.get("created") or "")[:10] or None,
        "citeAs": f"hiroml dataset version {version or '(unversioned)'}, dataset_hash "
        f"{digest or '(not recorded)'}, built by hiroml {__version__}",
        "isLiveDataset": False,
        "keywords": ["chest radiograph", "chest CT", "COVID-19", "DICOM", "HDF5"],
        **_rai(manifest, info),
        "distribution": _distribution(folder, out, manifest),
        "recordSet": [
            {
                "@type": "cr:RecordSet",
                "@id": "samples",
                "name": "samples",
                "description": "One record per sample: manifest.parquet.",
                "key": {"@id": "samples/sample_key"},
                "field": _fields(pq.read_schema(folder / MANIFEST)),
            }
        ],
    }
    return {k: v for k, v in doc.items() if v is not None}


def for_root(text: str) -> str:
    """The root copy of a version's ``croissant.json``: shard paths relative to the output
    root instead of the version folder."""
    doc = json.loads(text)
    for f in doc.get("distribution", []):
        url = str(f.get("contentUrl", ""))
        if url.startswith(VERSION_PREFIX + SHARDS_DIR + "/"):
            f["contentUrl"] = url[len(VERSION_PREFIX) :]
    return dumps(doc)


def dumps(doc: Mapping[str, Any]) -> str:
    """The document as ``croissant.json`` holds it."""
    return json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"


def write_croissant(
    folder: Path, out: Path, manifest: pd.DataFrame, *, info: Mapping[str, Any]
) -> Path:
    """Write ``folder/croissant.json`` (atomically) for the version whose tables lie in
    ``folder``, shards under ``out`` (:func:`render_croissant`); return its path."""
    from hiroml.store.atomic import write_text_atomic
    from hiroml.vocab import CROISSANT_NAME

    path = Path(folder) / CROISSANT_NAME
    write_text_atomic(path, dumps(render_croissant(folder, out, manifest, info=info)))
    return path


def croissant_problems(folder: Path, manifest: pd.DataFrame) -> list[str]:
    """Where ``folder/croissant.json`` disagrees with the version it describes (``manifest``
    read from ``folder``): unreadable, a table whose SHA-256 is not the file's, a shard the
    manifest names that it lacks or lists with another SHA-256 than the manifest's
    ``shard_sha256``, a record field that is no manifest column. Empty when it agrees, and
    for a version without one (published before hiroml wrote it)."""
    from hiroml.vocab import CROISSANT_NAME

    path = Path(folder) / CROISSANT_NAME
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        files = {str(f["@id"]): str(f.get("sha256", "")) for f in doc["distribution"]}
        fields = [str(f["name"]) for f in doc["recordSet"][0]["field"]]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        return [f"{CROISSANT_NAME} unreadable ({type(e).__name__}: {e})"]
    bad = []
    for table in (MANIFEST, PATIENTS, AUDIT):
        if table in files and (folder / table).is_file():
            got = shard_sha256(folder / table)
            if got != files[table]:
                bad.append(
                    f"{CROISSANT_NAME} lists {table} with sha256 {files[table][:16]}..., "
                    f"the file has {got[:16]}..."
                )
    shards = pd.DataFrame(
        {"shard": text_column(manifest, "shard"), "sha": text_column(manifest, "shard_sha256")}
    ).drop_duplicates("shard")
    for shard, sha in zip(shards["shard"], shards["sha"], strict=True):
        if shard not in files:
            bad.append(f"{CROISSANT_NAME} does not list the shard {shard}")
        elif sha and files[shard] != sha:
            bad.append(
                f"{CROISSANT_NAME} lists {shard} with sha256 {files[shard][:16]}..., "
                f"the manifest has {sha[:16]}..."
            )
    bad += [
        f"{CROISSANT_NAME} has a field {c} that {MANIFEST} lacks"
        for c in fields
        if c not in manifest.columns
    ]
    return bad
