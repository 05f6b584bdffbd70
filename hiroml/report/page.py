"""``report.html``: the one self-contained page a researcher opens first after a build, and the
files written beside it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hiroml.report import representativeness
from hiroml.report.flow import Flow, compute_flow, flow_svg
from hiroml.report.html import ReadArray, _col, _keys, _note, _table
from hiroml.report.neardup import _near_duplicates
from hiroml.report.sections import (
    _balance,
    _counts,
    _decisions,
    _errors,
    _flow_section,
    _groups,
    _header,
    _orphans,
    _section,
    _thumbnails,
)
from hiroml.vocab import REPORT_NAME, Action

log = logging.getLogger(__name__)
_CSS = """
:root{--fg:#1d2433;--mut:#5b6577;--line:#dde2ea;--bg:#f6f8fb;--acc:#2f6fdb;--bad:#c62828;
--badbg:#fdecea;--ok:#2e7d32;--warn:#8a5a00;--warnbg:#fff6e0}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
main{max-width:1200px;margin:0 auto;padding:16px 24px 48px}
header,section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 18px;
margin:14px 0}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:0 0 10px}h3{font-size:16px;
margin:18px 0 6px;border-bottom:1px solid var(--line)}h4{font-size:14px;margin:10px 0 4px}
nav{position:sticky;top:0;z-index:2;background:var(--fg);padding:6px 24px}
nav a{color:#fff;text-decoration:none;margin-right:16px;font-size:13px}
.sub{color:var(--mut);margin:0 0 10px}
.badge{font-size:13px;border-radius:10px;padding:2px 10px;vertical-align:middle;margin-left:8px}
.badge.bad{background:var(--bad);color:#fff}.badge.ok{background:#e6f4ea;color:var(--ok)}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top;
overflow-wrap:break-word}th{white-space:nowrap}td{min-width:4em;max-width:44em}
th{background:#eef1f6;font-weight:600}tbody tr:nth-child(even){background:#fafbfd}
table.kv{width:auto}table.kv td:first-child{color:var(--mut);padding-right:24px;white-space:nowrap}
table.kv thead{display:none}table.narrow{width:auto;min-width:320px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 14px;min-width:110px}
.card .v{font-size:20px;font-weight:600}.card .k{color:var(--mut);font-size:12px}
.card .k2{color:var(--mut);font-size:11px;margin-top:2px}.glance .card{min-width:150px}
header details summary{font-size:13px;color:var(--mut)}
details.reason{margin:2px 0 2px 4px}details.reason>summary{font-size:13px;padding:2px 0}
details.reason .n{display:inline-block;min-width:40px;text-align:right;font-weight:600;
margin-right:10px}
.card.bad{border-color:var(--bad);background:var(--badbg)}.card.bad .v{color:var(--bad)}
.note{color:var(--mut)}.warn{color:var(--warn);background:var(--warnbg);padding:6px 10px;
border-radius:4px}
.error-box{border:2px solid var(--bad);background:var(--badbg)}.error-box h2{color:var(--bad)}
.error-box table{background:#fff}.ok-box h2{color:var(--ok)}
.cell-bar,.age,.sex{display:flex;align-items:center;gap:6px;white-space:nowrap}
.num{min-width:28px}.age .num{min-width:84px}.sex .num{min-width:92px}
.scroll{overflow-x:auto}table.balance td,table.balance th{overflow-wrap:normal;white-space:nowrap}
.track{position:relative;display:inline-block;width:52px;height:10px;background:#e8ecf2;
border-radius:3px;overflow:hidden}
.fill{position:absolute;left:0;top:0;bottom:0;background:var(--acc)}
.pct{color:var(--mut);font-size:11px;min-width:28px}
.iqr{position:absolute;top:0;bottom:0;background:#9bb9ef}
.med{position:absolute;top:0;bottom:0;width:2px;background:var(--fg)}
.stack{display:inline-flex}.stack span{display:block;height:100%}
.stack .f{background:#d0679d}.stack .m{background:#3f7fd9}.stack .o{background:#aab2bf}
details{margin:8px 0}summary{cursor:pointer;font-size:15px;padding:4px 0}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(184px,1fr));gap:10px}
figure{margin:0;text-align:center}
figure img{background:#000;max-width:100%;display:block;margin:0 auto}
figcaption{font-size:11px;color:var(--mut);overflow-wrap:anywhere}
.ct-sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(500px,1fr));gap:12px}
.ct-item{border:1px solid var(--line);border-radius:6px;padding:8px}
.ct-item p{margin:4px 0 0;font-size:12px;color:var(--mut);overflow-wrap:anywhere}
.planes{display:flex;gap:10px;align-items:flex-end;flex-wrap:wrap}
.broken{width:150px;height:150px;display:flex;align-items:center;justify-content:center;
background:var(--badbg);color:var(--bad);font-size:12px}
code{background:#eef1f6;padding:0 4px;border-radius:3px}
.flow{overflow-x:auto}.flow svg{max-width:100%;height:auto}
"""


def _split_rule_text(summary: Mapping[str, Any]) -> str:
    rule = summary.get("split_rule")
    return str(rule.get("rule", "")) if isinstance(rule, Mapping) else ""


def render_report(
    *,
    manifest: pd.DataFrame,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
    summary: Mapping[str, Any],
    read_array: ReadArray | None = None,
    max_thumbnails: int = 24,
    changes: str = "",
    near_duplicates: pd.DataFrame | None = None,
    flow: str | None = None,
    environment: Mapping[str, Any] | None = None,
    counts: Flow | None = None,
) -> str:
    """The report page as an HTML string; see :func:`write_report`. ``flow`` is the flow
    diagram's SVG (:func:`hiroml.report.flow.flow_svg`), drawn at the top, and ``counts`` its
    numbers (:func:`hiroml.report.flow.compute_flow`), shown in the header and the counts;
    each computed from ``audit`` and ``manifest`` when None."""
    if counts is None:
        counts = compute_flow(audit, manifest)
    if flow is None:
        flow = flow_svg(counts)
    n_errors = int((_keys(_col(audit, "action")) == Action.ERROR).sum())
    nav = "".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (
            *((("changes", "Changes"),) if changes else ()),
            ("flow", "Flow"),
            ("counts", "Counts"),
            ("splits", "Splits"),
            ("over-time", "Over time"),
            ("errors", f"Errors ({n_errors})"),
            ("decisions", "Decisions"),
            ("orphans", "Orphans"),
            ("groups", "Linked ids"),
            ("neardup", "Near duplicates"),
            ("thumbs", "Thumbnails"),
            ("environment", "Environment"),
        )
    )
    body = "".join(
        [
            _header(summary, n_errors, counts),
            _section("changes", "What changed since the previous version", changes)
            if changes
            else "",
            _flow_section(flow),
            _counts(manifest, patients, audit, counts),
            _balance(manifest, patients, _split_rule_text(summary)),
            representativeness.html_section(manifest),
            _errors(audit),
            _decisions(audit),
            _orphans(manifest, summary),
            _groups(patients),
            _near_duplicates(near_duplicates, read_array),
            _thumbnails(manifest, read_array, max_thumbnails),
            _environment(environment),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>hiroml build report</title><style>{_CSS}</style></head>"
        f"<body><nav>{nav}</nav><main>{body}</main></body></html>\n"
    )


def _environment(record: Mapping[str, Any] | None) -> str:
    """The environment that decided the stored values (``build.json``'s ``environment``)."""
    from hiroml.doctor.libraries import environment_rows

    rows = environment_rows(record)
    if not rows:
        return _section("environment", "Environment", _note("Not recorded by this build."))
    return _section("environment", "Environment", _table(["library", "version"], rows))


def shard_reader(out_dir: Path | str, manifest: pd.DataFrame) -> ReadArray:
    """A ``read_array`` for :func:`write_report` over a built output folder: the stored array
    of a sample key, read from its shard (``manifest.shard``, relative to ``out_dir``)."""
    from hiroml.store.shards import read_sample

    root = Path(out_dir)
    shard_of = pd.Series(
        _keys(_col(manifest, "shard")).to_numpy(), index=_keys(_col(manifest, "sample_key"))
    )

    def read_array(key: str) -> np.ndarray:
        return read_sample(root / str(shard_of[key]), key)[0]

    return read_array


def write_report(
    out_dir: Path,
    *,
    manifest: pd.DataFrame,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
    summary: Mapping[str, Any],
    read_array: ReadArray | None = None,
    max_thumbnails: int = 24,
    changes: str = "",
    near_duplicates: pd.DataFrame | None = None,
    settings: Mapping[str, Any] | None = None,
    dataset_hash: str = "",
    environment: Mapping[str, Any] | None = None,
    flow: Flow | None = None,
) -> Path:
    """Write ``out_dir/report.html``, one self-contained page, with ``flow.svg`` (the
    inclusion/exclusion flow, :mod:`hiroml.report.flow`, also drawn at the top of the page) and
    ``DATASET.md`` (the dataset card, :mod:`hiroml.report.card`) beside it; return the page's path.

    ``manifest``, ``patients`` and ``audit`` are the output tables of docs/design.md section 4
    (missing optional columns are tolerated; an empty manifest gives a page of errors and
    decisions); ``summary`` is the build summary, shown key by key in its order.
    ``read_array(sample_key)`` returns a sample's stored array: a radiograph (H, W) (float16
    in [0, 1], or uint8/uint16) or a CT volume numpy (z, y, x) in HU; without it the page
    has no thumbnails. ``max_thumbnails`` radiographs are shown per split, and
    ``max(1, max_thumbnails // 4)`` CT volumes per split (three mid-slices each).
    ``changes`` (trusted HTML, from :func:`hiroml.versions.changes.changes_html`) becomes the
    section "What changed since the previous version", shown first.
    ``near_duplicates`` (:func:`near_duplicate_frame`) lists the near-duplicate pairs across
    patient groups, shown with both thumbnails side by side.
    ``settings`` (config key -> value, :func:`hiroml.report.card.settings_of`) are the conversion
    settings printed in the card; ``summary`` keys ``version`` and ``dataset_hash`` are
    printed there when present; ``dataset_hash``, when given, is the card's (the publisher
    computed it already: the card then does not hash the manifest again).
    ``environment`` (:func:`hiroml.doctor.libraries.environment_record`, as ``build.json``
    records it) is shown as a table on the page and in the card.
    ``flow`` (:func:`hiroml.report.flow.compute_flow` of ``audit`` and ``manifest``) when the
    caller has it; else it is computed here.
    Each file is written to a temporary name then moved into place (``os.replace``).
    """
    from hiroml.report.card import render_card
    from hiroml.vocab import CARD_NAME, FLOW_NAME

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flow = compute_flow(audit, manifest) if flow is None else flow
    for problem in flow.problems():
        log.warning("flow diagram: the counts do not add up: %s", problem)
    svg = flow_svg(flow)
    page = render_report(
        manifest=manifest,
        patients=patients,
        audit=audit,
        summary=summary,
        read_array=read_array,
        max_thumbnails=max_thumbnails,
        flow=svg,
        changes=changes,
        near_duplicates=near_duplicates,
        environment=environment,
        counts=flow,
    )
    card = render_card(
        manifest=manifest,
        audit=audit,
        summary={**summary, "dataset_hash": dataset_hash} if dataset_hash else summary,
        flow=flow,
        settings=settings,
        environment=environment,
    )
    _write_text(out_dir, FLOW_NAME, svg)
    _write_text(out_dir, CARD_NAME, card)
    path = _write_text(out_dir, REPORT_NAME, page)
    log.info("report written: %s (%.1f kB)", path, len(page) / 1024)
    return path


def _write_text(out_dir: Path, name: str, text: str) -> Path:
    """Write ``out_dir/name`` through a temporary name and ``os.replace``."""
    path = out_dir / name
    tmp = out_dir / f".{name}.{os.getpid()}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
