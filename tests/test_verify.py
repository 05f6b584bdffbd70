"""verify.py: a sound folder passes; planted leaks, corrupt shards and mismatched rows fail;
stray shards only warn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_manifest import make_output

from hiroml.cli.verify import main
from hiroml.store.reader import read_manifest
from hiroml.store.shards import ShardWriter, open_shard, read_index, shard_sha256
from hiroml.store.tables import patients_frame, write_outputs
from hiroml.store.verify import examine, verify


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return make_output(tmp_path, n_patients=8, n_ct=1)


def _rewrite(out: Path, m: pd.DataFrame) -> None:
    audit = pd.read_csv(out / "audit.csv", dtype=str).fillna("")
    write_outputs(out, m, patients_frame(m), audit)


def test_sound_output(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify(out) == []
    assert main([str(out)]) == 0
    assert "sound, 17 samples in 5 shards, 0 warning(s)" in capsys.readouterr().out


def test_planted_leaks(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = read_manifest(out)
    tr = m.index[(m["split"] == "train") & (m["modality"] == "cxr")]
    ot = m.index[(m["split"] != "train") & (m["modality"] == "cxr")]
    a, b = tr[0], ot[0]
    other = m.loc[b, "split"]
    # the same patient in two splits (under different groups: a missed remap)
    m.loc[b, "patient_id"] = m.loc[a, "patient_id"]
    # a SOP Instance UID shared across splits
    m.at[ot[1], "sop_uids"] = [*m.loc[ot[1], "sop_uids"], m.loc[tr[1], "sop_uid"]]
    # identical source pixels across splits
    m.at[tr[2], "pixel_hashes"] = ["deadbeef"]
    m.at[ot[2], "pixel_hashes"] = ["deadbeef"]
    _rewrite(out, m)
    errors = verify(out)
    splits = ", ".join(sorted({"train", other}))
    assert f"leak: patient_id '{m.loc[a, 'patient_id']}' in splits {splits}" in errors
    assert any(e.startswith(f"leak: SOP Instance UID '{m.loc[tr[1], 'sop_uid']}'") for e in errors)
    assert any(e.startswith("leak: pixel hash 'deadbeef' in splits") for e in errors)
    assert main([str(out)]) == 1
    assert "NOT sound" in capsys.readouterr().out


def test_group_in_two_splits(out: Path) -> None:
    m = read_manifest(out)
    i = m.index[m["modality"] == "cxr"][0]
    g = m.loc[i, "patient_group"]
    m.loc[m["patient_group"] == g, "split"] = ["train", "test"]
    _rewrite(out, m)
    errors = verify(out)
    assert f"leak: patient_group '{g}' in splits test, train" in errors
    assert "a patient group appears in more than one split" in errors


def test_corrupted_shard_fails_checksum(out: Path) -> None:
    m = read_manifest(out)
    shard = m["shard"].iloc[0]
    with open_shard(out / shard) as f:
        offset, _ = read_index(f)[m["sample_key"].iloc[0]]
    assert offset > 0
    data = bytearray((out / shard).read_bytes())
    data[offset + 100] ^= 0xFF  # flip bits in the pixel data of the shard's first sample
    (out / shard).write_bytes(bytes(data))
    errors = verify(out)
    assert any(e.startswith(f"shard {shard}: sha256") and "corrupt" in e for e in errors)


def test_row_disagreeing_with_shard(out: Path) -> None:
    m = read_manifest(out)
    m.at[0, "shape"] = [1, 2]
    m.loc[1, "data_hash"] = "0" * 32
    m.loc[2, "sample_key"] = "not-there"
    _rewrite(out, m)
    errors = verify(out, deep=False)
    assert (
        f"sample {m.loc[0, 'sample_key']}: shape (32, 32) in {m.loc[0, 'shard']}, manifest (1, 2)"
        in errors
    )
    assert (
        f"sample {m.loc[1, 'sample_key']}: data_hash in {m.loc[1, 'shard']} differs from manifest"
        in errors
    )
    assert f"sample not-there: not in shard {m.loc[2, 'shard']}" in errors


def test_stray_shards_only_warn(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ShardWriter(out / "shards", "cxr-stale", modality="cxr", max_samples=9, max_bytes=99) as w:
        w.add("x", np.zeros((2, 2), np.uint8), {})
    (out / "shards" / "cxr-dead.h5.tmp").write_bytes(b"half")
    found = examine(out)
    assert found.errors == []
    assert sorted(found.warnings) == [
        f"shard shards/cxr-stale.h5 is not named in the manifest (left by an interrupted "
        f"build: the next build reuses or deletes it, hiroml-versions {out} --prune deletes "
        "it now)",
        "shards/cxr-dead.h5.tmp: leftover of an interrupted write",
    ]
    assert main([str(out), "--quick"]) == 0
    assert "warning: shard shards/cxr-stale.h5" in capsys.readouterr().out


def test_wrong_offset_index(out: Path) -> None:
    import h5py

    m = read_manifest(out)
    row = m[m["modality"] == "cxr"].iloc[0]
    with h5py.File(out / row["shard"], "r+") as f:
        f["offsets"][0] = f["offsets"][0] + 2
    m.loc[m["shard"] == row["shard"], "shard_sha256"] = shard_sha256(out / row["shard"])
    _rewrite(out, m)
    assert verify(out) == [
        f"sample {row['sample_key']}: the offset index of {row['shard']} is wrong"
    ]
