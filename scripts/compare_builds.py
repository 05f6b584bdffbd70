"""Build the tiny and demo synthetic datamarts and compare the outputs with a baseline.

A refactor must not change what a build produces. This script is how that is shown::

    python scripts/compare_builds.py record /tmp/before     # on the old commit
    python scripts/compare_builds.py record /tmp/after      # on the new commit
    python scripts/compare_builds.py compare /tmp/before /tmp/after

``record`` generates each datamart (the same seed gives the same zips), builds it with one
local worker and writes, next to the build, ``fingerprint.json``: the SHA-256 of the
generated datamart's files, of ``manifest.parquet``, ``patients.parquet`` and ``audit.csv``,
and a hash of every stored array read back through :class:`hiroml.HiromlDataset` (the
shard layout may change; the arrays must not).

``compare`` prints one line per difference and exits 1 if there is any. ``--decisions``
compares only the decisions and the arrays (the manifest's own columns, minus those that
describe the storage layout), for changes that extend the manifest on purpose.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

SIZES = ("tiny", "demo")
TABLES = ("manifest.parquet", "patients.parquet", "audit.csv")
# Columns that describe where and how bytes are stored, not what was decided or stored.
LAYOUT_COLUMNS = {"shard", "shard_sha256", "offset", "nbytes", "dataset", "index"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + _sha(p).encode())
    return h.hexdigest()


def _arrays(out: Path) -> dict[str, str]:
    from hiroml import HiromlDataset

    result: dict[str, str] = {}
    for modality in ("cxr", "ct"):
        try:
            ds = HiromlDataset(out, split=None, modality=modality)
        except Exception as e:  # no sample of that modality
            result[f"<{modality}>"] = f"unreadable: {type(e).__name__}"
            continue
        keys = ds.keys
        for i, key in enumerate(keys):
            arr = ds.read_array(i)
            digest = hashlib.sha256(arr.tobytes()).hexdigest()
            result[key] = f"{arr.dtype}{list(arr.shape)}:{digest}"
        ds.close()
    return result


def _decisions(out: Path) -> dict[str, str]:
    import pandas as pd

    result = {}
    m = pd.read_parquet(out / "manifest.parquet")
    keep = [c for c in m.columns if c not in LAYOUT_COLUMNS]
    m = m[keep].sort_values("sample_key").reset_index(drop=True)
    result["manifest(decisions)"] = hashlib.sha256(
        m.to_json(orient="records", date_format="iso").encode()
    ).hexdigest()
    p = pd.read_parquet(out / "patients.parquet").sort_values("patient_group")
    result["patients(decisions)"] = hashlib.sha256(p.to_json(orient="records").encode()).hexdigest()
    a = pd.read_csv(out / "audit.csv", dtype=str, keep_default_na=False)
    result["audit(decisions)"] = hashlib.sha256(a.to_csv(index=False).encode()).hexdigest()
    return result


def record(folder: Path) -> None:
    from hiroml import synth

    folder.mkdir(parents=True, exist_ok=True)
    for size in SIZES:
        mart, out = folder / f"{size}-datamart", folder / f"{size}-out"
        if not mart.exists():
            synth.generate(mart, seed=0, size=size)
        cmd = [
            sys.executable, "-m", "hiroml", f"paths.datamart={mart}", f"paths.output={out}",
            "executor.workers=1",
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        fp = {
            "datamart": _tree_hash(mart),
            **{name: _sha(out / name) for name in TABLES},
            **_decisions(out),
            "arrays": _arrays(out),
        }
        (folder / f"{size}-fingerprint.json").write_text(json.dumps(fp, indent=1, sort_keys=True))
        print(f"{size}: {len(fp['arrays'])} arrays recorded in {folder}")


def compare(before: Path, after: Path, decisions_only: bool) -> int:
    differences = 0
    for size in SIZES:
        a = json.loads((before / f"{size}-fingerprint.json").read_text())
        b = json.loads((after / f"{size}-fingerprint.json").read_text())
        names = ["datamart", *(f"{t.split('.')[0]}(decisions)" for t in TABLES)]
        if not decisions_only:
            names += list(TABLES)
        for name in names:
            same = a[name] == b[name]
            differences += not same
            print(f"{size:5} {name:22} {'identical' if same else 'DIFFERENT'}")
        keys = sorted(set(a["arrays"]) | set(b["arrays"]))
        changed = [k for k in keys if a["arrays"].get(k) != b["arrays"].get(k)]
        differences += len(changed)
        print(f"{size:5} {'arrays':22} {len(keys) - len(changed)}/{len(keys)} identical")
        for k in changed:
            print(f"      array {k}: {a['arrays'].get(k)} -> {b['arrays'].get(k)}")
    print("no difference" if not differences else f"{differences} difference(s)")
    return 1 if differences else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="generate, build and fingerprint into FOLDER")
    r.add_argument("folder", type=Path)
    c = sub.add_parser("compare", help="compare two recorded folders")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--decisions", action="store_true", help="ignore storage-layout columns")
    a = p.parse_args(argv)
    if a.cmd == "record":
        record(a.folder)
        return 0
    return compare(a.before, a.after, a.decisions)


if __name__ == "__main__":
    raise SystemExit(main())
