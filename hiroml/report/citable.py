"""The files a study cites, written into each version beside its report: ``croissant.json``
(:mod:`hiroml.report.croissant`) and ``CLAIM.md`` (:mod:`hiroml.report.claim`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from hiroml.report import card, claim, croissant
from hiroml.report.flow import Flow, compute_flow
from hiroml.vocab import BatchStatus


def write_citable(
    folder: Path,
    out: Path,
    manifest: pd.DataFrame,
    audit: pd.DataFrame,
    *,
    summary: Mapping[str, Any],
    settings: Mapping[str, Any] | None,
    dataset_hash: str,
    flow: Flow | None = None,
) -> None:
    """Write ``croissant.json`` and ``CLAIM.md`` into the version folder ``folder`` (which
    holds its tables; shards under ``out``). ``summary``: the build summary as the report
    gets it (``version``, ``split_rule``); ``settings``:
    :func:`hiroml.report.card.settings_of`; ``flow``: :func:`hiroml.report.flow.compute_flow`
    of ``audit`` and ``manifest`` (computed here when None)."""
    flow = compute_flow(audit, manifest) if flow is None else flow
    rule = summary.get("split_rule")
    batches = card._batches(audit, manifest)
    info = {
        "version": summary.get("version") or "",
        "dataset_hash": dataset_hash,
        "created": dt.datetime.now(dt.UTC).date().isoformat(),
        "batches": [b[0] for b in batches if b[3] == BatchStatus.COMPLETE],
        "settings": dict(settings or {}),
        "split_rule": str(rule.get("rule", "")) if isinstance(rule, Mapping) else "",
        "limitations": card._limitations(manifest, audit, flow, card._label_columns(manifest)),
    }
    croissant.write_croissant(folder, out, manifest, info=info)
    claim.write_claim(folder, manifest, audit, info=info, flow=flow)
