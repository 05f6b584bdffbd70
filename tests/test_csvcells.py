"""CSV cells: text a spreadsheet would run as a formula is escaped in every CSV hiroml
writes (OWASP's CSV-injection advice), and read back as it was."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import MakeCfg
from hostile import _name, _study, dicom_bytes, make_cxr, zip_bytes

from hiroml import pipeline as build
from hiroml.store.csvcells import escape_cell, unescape_cell
from hiroml.store.reader import read_audit

FORMULA = '=HYPERLINK("x")'


@pytest.mark.parametrize(
    ("text", "written"),
    [
        (FORMULA, "'" + FORMULA),
        ("+1+cmd", "'+1+cmd"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("'quoted", "''quoted"),
        ("-3", "-3"),  # plain numbers stay numbers
        ("+1.5e3", "+1.5e3"),
        ("image.dcm", "image.dcm"),
        ("", ""),
    ],
)
def test_cells_escaped_and_read_back(text: str, written: str) -> None:
    assert escape_cell(text) == written
    assert unescape_cell(escape_cell(text)) == text


def test_a_member_named_like_a_formula_is_escaped_in_audit_csv_and_read_back(
    tiny_datamart: tuple[Path, dict[str, Any]], make_cfg: MakeCfg, tmp_path: Path
) -> None:
    import numpy as np

    root = tmp_path / "datamart"
    shutil.copytree(tiny_datamart[0], root)
    batch = root / "CXR-UPDATE-20200613-COMPLETE"
    batch.mkdir()
    rng = np.random.default_rng(5)
    good = zip_bytes([(FORMULA, dicom_bytes(make_cxr(1, rng)))])
    (batch / _name(_study(1), 1)).write_bytes(good)  # a valid image, its member named so
    (batch / _name(_study(2), 2)).write_bytes(zip_bytes([(FORMULA, b"not DICOM" * 20)]))
    (batch / f"{FORMULA}.zip").write_bytes(zip_bytes([("image.dcm", b"x")]))
    out = tmp_path / "out"
    build.run(make_cfg(root, out))
    raw = pd.read_csv(out / "audit.csv", dtype=str, keep_default_na=False)
    cells = [str(v) for v in raw.to_numpy().ravel()]
    assert not [c for c in cells if c.startswith(("=", "+", "@", "\t", "\r"))]
    bad = _name(_study(2), 2)
    assert raw.loc[raw["zip"] == bad, "member"].tolist() == ["'" + FORMULA]
    assert "'" + FORMULA + ".zip" in raw["zip"].tolist()
    audit = read_audit(out)  # what hiroml reads: the names as they were
    assert audit.loc[audit["zip"] == bad, "member"].tolist() == [FORMULA]
    assert FORMULA + ".zip" in audit["zip"].tolist()
    assert not any(str(v).startswith("'") for v in audit.to_numpy().ravel())
