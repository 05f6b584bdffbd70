"""Small value and HTML helpers of the report."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from hiroml.store.reader import cell_list, is_missing
from hiroml.vocab import SPLITS, Action

# non-kept actions, in the order the report lists them (errors have their own section too)
ACTION_ORDER = (Action.ERROR, Action.DUPLICATE, Action.MERGED, Action.DROPPED, Action.SKIPPED)
THUMB_PX = 176  # longest side of a radiograph thumbnail, pixels
CT_THUMB_PX = 150  # longest side of one CT plane, pixels
CT_WINDOW = (1500.0, -600.0)  # lung window: width, level (HU)
MAX_REASONS = 50  # reason lines shown per action; the others are counted in one line
MAX_REASON_ROWS = 20  # audit rows shown per reason line; every row is in audit.csv
MAX_TABLE_ROWS = 200  # rows of the orphans and linked ids tables; all are in the tables
MISSING = "—"

ReadArray = Callable[[str], np.ndarray]
T = TypeVar("T")


def _text(v: Any) -> str:
    """A cell as plain (unescaped) text."""
    if isinstance(v, list | tuple | np.ndarray):
        return ", ".join(_text(x) for x in cell_list(v)) or MISSING
    if is_missing(v):
        return MISSING
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        f = float(v)
        return str(int(f)) if f.is_integer() and abs(f) < 1e15 else f"{f:.4g}"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={_text(x)}" for k, x in v.items()) or MISSING
    return str(v)


def _e(v: Any) -> str:
    """A cell as escaped HTML text."""
    return html.escape(_text(v), quote=True)


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` of ``df``, or a column of ``None`` when it is absent."""
    if name in df.columns:
        return df[name]
    return pd.Series([None] * len(df), index=df.index, dtype=object)


def _keys(s: pd.Series) -> pd.Series:
    """A column as plain strings, missing values as ``""`` (for grouping and counting). A
    text column (or an object column of strings and missing values) is converted column-wise
    to pandas' ``str`` dtype; any other column cell by cell (:func:`_text`)."""
    if len(s) and text_only(s):
        out = s.fillna("").astype("str")
        if out.dtype == object:  # pandas 2 keeps a str subclass's cells (an enum member)
            plain = pa.array(out.to_numpy(dtype=object), type=pa.string()).to_pandas()
            out = pd.Series(plain.to_numpy(dtype=object), index=s.index, dtype=object)
        return out
    keys = [v if type(v) is str else _text(v) if not is_missing(v) else "" for v in s]
    return pd.Series(keys, index=s.index, dtype=object)


def text_only(s: pd.Series) -> bool:
    """Whether ``s`` holds only text and missing values (a ``str`` dtype, or an object
    column whose non-missing values are all strings), found without a Python loop."""
    if s.dtype == object:  # "empty": every value missing
        return pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty")
    return pd.api.types.is_string_dtype(s.dtype)


def arrow_lists(cells: pd.Series) -> pa.ListArray | None:
    """``cells`` as one Arrow list array when every cell is a list or missing, else None."""
    try:
        arr = pa.array(cells, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return arr if pa.types.is_list(arr.type) else None


def list_lengths(s: pd.Series) -> np.ndarray:
    """The number of values in each list cell of ``s`` (:func:`cell_list`: a missing cell
    has none, a lone string one), through Arrow when every cell is a list or missing."""
    arr = arrow_lists(s)
    if arr is not None:
        return np.asarray(pc.list_value_length(arr).fill_null(0), dtype=np.int64)
    return np.fromiter((len(cell_list(v)) for v in s), dtype=np.int64, count=len(s))


def _splits_in(values: Iterable[str]) -> list[str]:
    present = set(values.unique() if isinstance(values, pd.Series) else values)
    rest = sorted(v for v in present if v not in SPLITS)
    return [s for s in SPLITS if s in present] + rest


def _split_label(s: str) -> str:
    return s if s else "(no split)"


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "", raw: bool = False
) -> str:
    """A table; cells are escaped unless ``raw`` (then they are trusted HTML)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bar(value: float, total: float, *, label: str = "") -> str:
    pct = 0.0 if total <= 0 else max(0.0, min(100.0, 100.0 * value / total))
    return (
        f'<div class="cell-bar"><span class="num">{html.escape(label or _text(value))}</span>'
        f'<span class="track"><span class="fill" style="width:{pct:.1f}%"></span></span>'
        f'<span class="pct">{pct:.0f}%</span></div>'
    )


def _png_uri(img: Image.Image) -> str:
    """``img`` as an inline PNG. zlib level 1: a 176-pixel thumbnail is about 15% larger than
    with ``optimize=True`` and encodes about 15 times faster (2 ms instead of 30), which
    counted once a report showed a few hundred near-duplicate pairs."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _note(text: str, *, cls: str = "note") -> str:
    return f'<p class="{cls}">{text}</p>'
