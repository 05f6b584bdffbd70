"""The report's near-duplicate pairs section."""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable
from typing import Any

import pandas as pd

from hiroml.report.html import ReadArray, _note, _png_uri
from hiroml.report.sections import _section
from hiroml.report.thumbnails import _figure, _read, cxr_thumbnail

log = logging.getLogger(__name__)
NEAR_COLUMNS = [
    "sample_key", "other_key", "patient_id", "other_patient_id", "group", "other_group",
    "similarity", "linked",
]  # fmt: skip
MAX_NEAR_PAIRS = 200  # pairs drawn with thumbnails; all are in the audit and manifest


def near_duplicate_frame(links: Iterable[Any]) -> pd.DataFrame:
    """The near-duplicate pairs among :class:`hiroml.exams.linking.GroupLink` records, one row each
    (columns ``NEAR_COLUMNS``), most similar first."""
    rows = [
        {c: getattr(k, c) for c in NEAR_COLUMNS}
        for k in links
        if getattr(k, "kind", "") == "near duplicate"
    ]
    df = pd.DataFrame(rows, columns=NEAR_COLUMNS)
    return df.sort_values(["similarity", "sample_key"], ascending=[False, True]).reset_index(
        drop=True
    )


def _pair_thumb(read_array: ReadArray | None, key: str) -> str | None:
    if read_array is None:
        return None
    arr = _read(read_array, key)
    if arr is None:
        return None
    try:
        return _png_uri(cxr_thumbnail(arr))
    except ValueError:
        log.warning("report: sample %s has no drawable image", key, exc_info=True)
        return None


def _near_duplicates(pairs: pd.DataFrame | None, read_array: ReadArray | None) -> str:
    title = "Near-duplicate radiographs across patient groups"
    if pairs is None or pairs.empty:
        body = _note(
            "No radiograph of one patient group is a near duplicate of another group's "
            "(rank correlation of 32 x 32 signatures below splits.near_duplicate_threshold)."
        )
        return _section("neardup", f"{title} (0)", body)
    body = _note(
        "The same radiograph re-exported (lossy, 8-bit, resized, another transfer syntax) "
        "under two patient groups: a missed remap would leak it across splits. Linked pairs "
        "were joined into one group (splits.link_near_duplicates); check each pair."
    )
    figs = []
    thumbs: dict[str, str | None] = {}  # a sample in many pairs is drawn once

    def thumb(key: str) -> str | None:
        if key not in thumbs:
            thumbs[key] = _pair_thumb(read_array, key)
        return thumbs[key]

    for r in pairs.head(MAX_NEAR_PAIRS).to_dict("records"):
        status = "linked" if r["linked"] else "NOT linked"
        left = _figure(
            thumb(str(r["sample_key"])),
            [f"patient {r['patient_id']} ({r['group']})", str(r["sample_key"])],
            alt=f"radiograph of {r['patient_id']}",
        )
        right = _figure(
            thumb(str(r["other_key"])),
            [f"patient {r['other_patient_id']} ({r['other_group']})", str(r["other_key"])],
            alt=f"radiograph of {r['other_patient_id']}",
        )
        label = html.escape(f"rank correlation {float(r['similarity']):.3f}, {status}")
        figs.append(f'<div class="sheet"><p>{label}</p>{left}{right}</div>')
    if len(pairs) > MAX_NEAR_PAIRS:
        figs.append(_note(f"{len(pairs) - MAX_NEAR_PAIRS} more pair(s) in audit.csv."))
    return _section("neardup", f"{title} ({len(pairs)})", body + "".join(figs))
