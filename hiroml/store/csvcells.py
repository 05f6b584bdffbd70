"""CSV cells that a spreadsheet does not run as formulas (OWASP, "CSV Injection").

hiroml's CSV files (``audit.csv``, the export's ``index.csv``) hold text taken from the input:
zip and member names, DICOM values, clinical labels. A text cell (or column name) that begins
with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is written with a ``'`` before it,
as OWASP advises, so that a spreadsheet shows it as text instead of evaluating it; a plain
number (``-3``, ``+1.5e3``) is left as it is. A cell that begins with ``'`` gets one more, so
that :func:`unescape_frame` gives back every original text exactly.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

#: What makes a spreadsheet read a cell as a formula (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def escape_cell(v: Any) -> Any:
    """``v`` with a ``'`` before it where a spreadsheet would run it, or it begins with ``'``;
    anything else (numbers, ``None``, other text) as it is."""
    if not isinstance(v, str) or not v:
        return v
    if v[0] == "'" or (v.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(v)):
        return "'" + v
    return v


def unescape_cell(v: Any) -> Any:
    """The text :func:`escape_cell` was given: one leading ``'`` removed."""
    return v[1:] if isinstance(v, str) and v.startswith("'") else v


def _map(frame: pd.DataFrame, f: Any, starts: tuple[str, ...]) -> pd.DataFrame:
    """``f`` on each text cell and column name; ``f`` leaves a text that begins with none of
    ``starts`` as it is, so a text column is mapped on those cells only (found column-wise)."""
    out = frame.copy()
    for c in out.columns:
        col = out[c]
        if not (col.dtype == object or pd.api.types.is_string_dtype(col.dtype)):
            continue
        try:
            hit = col.str.startswith(starts, na=False).to_numpy(dtype=bool)
        except (AttributeError, TypeError):  # no text at all (only None, numbers): per cell
            out[c] = col.map(f)
            continue
        if hit.all():
            out[c] = col.map(f)
        elif hit.any():
            out[c] = col.where(~hit, col[hit].map(f))
    out.columns = [f(c) for c in out.columns]
    return out


def escape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with every text cell and column name escaped (:func:`escape_cell`),
    for ``to_csv``."""
    return _map(frame, escape_cell, ("'", *FORMULA_STARTS))


def unescape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame read from a CSV hiroml wrote, with its original texts (:func:`unescape_cell`)."""
    return _map(frame, unescape_cell, ("'",))
