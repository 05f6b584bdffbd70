"""Radiograph view (frontal, lateral, unknown) from header evidence."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from hiroml.dicom import rawheader
from hiroml.records import Instance
from hiroml.vocab import View

_FRONTAL_POSITIONS = frozenset({"PA", "AP", "APS", "PAS", "FRONTAL", "AP SUPINE", "AP ERECT"})
_LATERAL_POSITIONS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT", "L", "R"})
_FRONTAL_WORDS = frozenset({"PA", "AP", "FRONTAL", "FRONT", "PORT", "PORTABLE", "1V", "1VIEW"})
_LATERAL_WORDS = frozenset({"LAT", "LATERAL", "LL", "RL", "LLAT", "RLAT"})
_MULTI_VIEW_WORDS = frozenset({"2V", "2VIEW", "2VIEWS", "3V", "3VIEWS", "PALAT", "PAL"})


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^A-Z0-9]+", text.upper()) if w]


def _view_from_text(text: str) -> View | None:
    """FRONTAL/LATERAL when a free-text description names exactly one kind of view."""
    words = _words(text)
    joined = {a + b for a, b in itertools.pairwise(words)}  # "1 VIEW" -> "1VIEW"
    bag = set(words) | joined
    frontal = bool(bag & _FRONTAL_WORDS)
    lateral = bool(bag & _LATERAL_WORDS)
    if bag & _MULTI_VIEW_WORDS or bag & {"2VIEW", "3VIEW"}:
        return None  # e.g. "CHEST 2 VIEWS": several views, this text cannot tell which
    if frontal and not lateral:
        return View.FRONTAL
    if lateral and not frontal:
        return View.LATERAL
    return None


@dataclass(frozen=True, slots=True)
class ViewEvidence:
    """The header values :func:`classify_view` reads, read once: (0018,5101) View Position,
    the code meanings of (0054,0220) View Code Sequence, (0008,103E) Series Description and
    (0020,0062) Image Laterality (each "" when absent)."""

    view_position: str = ""
    code_meanings: tuple[str, ...] = ()
    series_description: str = ""
    laterality: str = ""


def view_evidence(ds: Dataset) -> ViewEvidence:
    """The :class:`ViewEvidence` of a dataset."""
    return ViewEvidence(
        view_position=str(rawheader.get(ds, "ViewPosition", "") or ""),
        code_meanings=tuple(
            str(item.get("CodeMeaning", "") or "")
            for item in rawheader.get(ds, "ViewCodeSequence", None) or []
        ),
        series_description=str(rawheader.get(ds, "SeriesDescription", "") or ""),
        laterality=str(rawheader.get(ds, "ImageLaterality", "") or ""),
    )


def classify_view(ds: Dataset, *, exam_description: str = "") -> tuple[View, str]:
    """The view of a radiograph and the attribute that decided it.

    In order: (0018,5101) View Position (PA, AP -> frontal; LL, RL, LAT, LATERAL -> lateral;
    decubitus and oblique positions do not decide); the code meaning in (0054,0220) View Code
    Sequence; (0008,103E) Series Description; the exam description (the zip name's), only when
    it names a single kind of view ("XR-PORT-CHEST-1V" is frontal, "XR-CHEST-PA-LATERAL" is
    ambiguous); (0020,0062) Image Laterality L or R (weak evidence of a lateral). Else
    unknown. The second element reads e.g. ``"ViewPosition=PA"``.
    """
    return classify_evidence(view_evidence(ds), exam_description=exam_description)


def classify_evidence(ev: ViewEvidence, *, exam_description: str = "") -> tuple[View, str]:
    """:func:`classify_view` from the header values already read."""
    vp = ev.view_position.strip().upper()
    if vp in _FRONTAL_POSITIONS:
        return View.FRONTAL, f"ViewPosition={vp}"
    if vp in _LATERAL_POSITIONS:
        return View.LATERAL, f"ViewPosition={vp}"
    for code in ev.code_meanings:
        meaning = code.lower()
        if View.LATERAL in meaning and "decubitus" not in meaning:
            return View.LATERAL, f"ViewCodeSequence={meaning}"
        if "postero-anterior" in meaning or "antero-posterior" in meaning:
            return View.FRONTAL, f"ViewCodeSequence={meaning}"
    series = ev.series_description.strip()
    view = _view_from_text(series)
    if view is not None:
        return view, f"SeriesDescription={series}"
    view = _view_from_text(exam_description)
    if view is not None:
        return view, f"exam description={exam_description}"
    lat = ev.laterality.strip().upper()
    if lat in ("L", "R"):
        return View.LATERAL, f"ImageLaterality={lat} (weak)"
    return View.UNKNOWN, "no view attribute" + (f" (ViewPosition={vp})" if vp else "")


def _header_view(inst: Instance, exam_description: str) -> tuple[View, str]:
    """:func:`classify_view` from the indexed header, before the member is read."""
    ev = ViewEvidence(
        view_position=inst.view_position,
        series_description=inst.series_description,
        laterality=inst.laterality,
    )
    return classify_evidence(ev, exam_description=exam_description)
