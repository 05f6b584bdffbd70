"""hiroml-export: CT as NIfTI at its physical position, radiographs as 16-bit PNG, sidecars
with provenance, index.csv with split and labels; on the tiny build."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from hiroml.cli.export import main
from hiroml.data.export import cxr_uint16, export
from hiroml.data.monai import ras_affine
from hiroml.errors import ExportError, HiromlError
from hiroml.store.shards import read_sample


def test_nifti_affine_puts_every_voxel_at_its_physical_position(
    tiny_build_clinical: Path, tmp_path: Path
) -> None:
    out = tiny_build_clinical
    dest = tmp_path / "nifti"
    r = export(out, dest, fmt="nifti")
    m = pd.read_parquet(out / "manifest.parquet")
    ct = m[m["modality"] == "ct"].set_index("sample_key")
    index = pd.read_csv(dest / "index.csv", dtype={"patient_id": str})
    assert r.files == len(ct) == len(index) > 0
    assert set(index["sample_key"]) == set(ct.index)
    assert {"split", "patient_id", "icu", "age_years", "sex"} <= set(index.columns)
    for row in index.to_dict("records"):
        g = ct.loc[row["sample_key"]]
        img = nib.load(dest / row["file"])
        expected = ras_affine(g["spacing_xyz"], g["origin_xyz"], g["direction"])
        np.testing.assert_allclose(img.affine, expected, atol=1e-4)
        # the array: NIfTI (x, y, z) is the stored (z, y, x) transposed, HU unchanged
        stored, _ = read_sample(out / g["shard"], row["sample_key"])
        np.testing.assert_array_equal(np.asarray(img.dataobj), stored.transpose(2, 1, 0))
        # a voxel far from the origin, by hand: LPS = origin + D @ (spacing * index)
        i, j, k = (s - 1 for s in stored.shape[::-1])
        d = np.asarray(g["direction"]).reshape(3, 3)
        lps = np.asarray(g["origin_xyz"]) + d @ (np.asarray(g["spacing_xyz"]) * [i, j, k])
        ras = (img.affine @ [i, j, k, 1])[:3]
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-3)
        side = json.loads((dest / row["sidecar"]).read_text())
        assert side["sample_key"] == row["sample_key"]
        assert side["patient_id"] == str(row["patient_id"]) == g["patient_id"]
        assert side["source_zips"] == list(g["source_zips"])
        assert side["split"] == row["split"] == g["split"]
        assert "version" in side and side["format"] == "nifti"
        assert any(d["action"] == "kept" for d in side["decisions"])


def test_png_is_16_bit_and_holds_the_stored_intensities(
    tiny_build_clinical: Path, tmp_path: Path
) -> None:
    out = tiny_build_clinical
    dest = tmp_path / "png"
    r = export(out, dest, fmt="png", split="train")
    m = pd.read_parquet(out / "manifest.parquet")
    rows = m[(m["modality"] == "cxr") & (m["split"] == "train")].set_index("sample_key")
    index = pd.read_csv(dest / "index.csv", dtype={"patient_id": str})
    assert r.files == len(rows) == len(index) > 0
    assert set(index["split"]) == {"train"}
    for row in index.head(5).to_dict("records"):
        png = cv2.imread(str(dest / row["file"]), cv2.IMREAD_UNCHANGED)
        stored, _ = read_sample(out / rows.loc[row["sample_key"], "shard"], row["sample_key"])
        assert png.dtype == np.uint16 and png.shape == stored.shape
        want = np.round(np.clip(stored.astype(np.float64), 0, 1) * 65535).astype(np.uint16)
        np.testing.assert_array_equal(png, want)
        assert png.max() > 255  # really 16-bit, not 8-bit values in a 16-bit file
        side = json.loads((dest / row["sidecar"]).read_text())
        assert side["sop_uid"] == rows.loc[row["sample_key"], "sop_uid"]
        assert side["labels"]["icu"] in (0, 1, 0.0, 1.0)


def test_cxr_uint16_takes_a_2d_radiograph_and_rejects_other_arrays_with_value_error() -> None:
    """A bad argument is a ValueError (as Python users expect), not a hiroml data error."""
    png = cxr_uint16(np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32))  # (1, y, x) is squeezed
    np.testing.assert_array_equal(png, np.array([[0, 32768, 65535]], dtype=np.uint16))
    with pytest.raises(ValueError, match=r"not a 2-D radiograph: shape \(2, 3, 4\)") as e:
        cxr_uint16(np.zeros((2, 3, 4), dtype=np.float32))
    assert not isinstance(e.value, HiromlError)


def test_version_argument(tiny_build_clinical: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(tiny_build_clinical, out)
    with pytest.raises(ExportError, match=r"no version '9999-deadbeef'.*Leave out --version"):
        export(out, tmp_path / "x", fmt="png", version="9999-deadbeef")
    v = out / "versions" / "9999-deadbeef"
    v.mkdir(parents=True)
    m = pd.read_parquet(out / "manifest.parquet")
    m[m["split"] == "test"].to_parquet(v / "manifest.parquet")
    r = export(out, tmp_path / "v1", fmt="png", version="9999-deadbeef")
    assert r.version == "9999-deadbeef"
    assert r.files == int(((m["split"] == "test") & (m["modality"] == "cxr")).sum())
    side = json.loads(next((tmp_path / "v1" / "test").glob("*.json")).read_text())
    assert side["version"] == "9999-deadbeef"
    # no --version: the root manifest, named after the latest retained version
    assert export(out, tmp_path / "latest", fmt="png").version == "9999-deadbeef"


def test_cli_errors_are_one_line(
    tiny_build_clinical: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tiny_build_clinical), str(tmp_path / "a"), "--format", "nifti",
                 "--modality", "cxr"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("hiroml-export: --format nifti exports ct samples, not cxr")
    assert main([str(tmp_path / "nothing"), str(tmp_path / "b"), "--format", "png"]) == 1
    assert "no manifest.parquet" in capsys.readouterr().err
    assert main([str(tiny_build_clinical), str(tmp_path / "c"), "--format", "png",
                 "--split", "test"]) == 0  # fmt: skip
    assert "files written to" in capsys.readouterr().out
