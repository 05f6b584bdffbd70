"""The sequestered test split (``splits.sequester=true``): the test split's samples, labels
and tables written apart, so that the folder a training team gets holds no test image,
label or patient id, and the evaluator opens the sequestered folder.

Layout::

    <out>/                   the main folder: train and val samples, their tables and report
    <out>/sequestered/       an output folder of its own, the test split only: shards/,
                             versions/, manifest.parquet, patients.parquet, audit.csv, report,
                             build.json (hiroml-verify and HiromlDataset open it as any output)
    <out>/.hiroml/held/      the shards the conversion tasks wrote (every split), kept so that
                             a later build reuses finished tasks; the build's own state, as the
                             rest of .hiroml/ (the index cache holds every header): never
                             handed out

Splits are decided after conversion (they need the pixel links), so a task's shard may hold
samples of every split. Parting it: a held shard whose samples all fall on one side is
hard-linked (copied where the filesystem cannot link) under its own name into that side's
``shards/``; a mixed one is copied sample by sample into ``<name>-m<hash>.h5`` (main) and
``<name>-t<hash>.h5`` (sequestered), ``<hash>`` naming the set of sample keys, so a shard
file, once written, never changes.

The tables: a manifest or patients row goes with its split. An audit row goes to the
sequestered audit when one of its cells names a test patient id or patient group (as a
whole token: letters and digits not run on; exam keys, sample keys and zip names begin with
the patient id). The main tables' cross references (``near_duplicates`` of the manifest,
``links`` of the patients table) and the summary's lists of ids (``orphan_ids``) drop the
entries that name a test patient. The main folder keeps counts: ``build.json``'s ``splits``
has ``sequestered_samples``, ``sequestered_patients``, ``sequestered_audit_rows`` and the
``sequestered_version`` published with it.

The rule: ``build.json``'s ``splits`` records ``sequester``, the strategy and the rule in
words. Every version of a sequestered output must be: :func:`check_output` refuses (exit 2)
to sequester into an output whose versions hold an unsequestered test split, to publish a
sequestered output's test split into its main folder, and to deal new test patients by
another split rule than the one recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hiroml.config import BuildConfig
from hiroml.errors import ConfigError
from hiroml.vocab import (
    BUILD_JSON,
    HELD_SHARDS_DIR,
    MANIFEST,
    SEQUESTERED_DIR,
    SHARDS_DIR,
    SPLITS,
    Split,
    SplitStrategy,
)

if TYPE_CHECKING:
    from hiroml.exams.linking import GroupLink
    from hiroml.ingest.discover import Discovery
    from hiroml.pipeline.summary import BuildSummary
    from hiroml.pipeline.tasks import TaskResult
    from hiroml.versions.publishing import Published

log = logging.getLogger(__name__)

#: the ``splits`` keys whose values make the rule that chooses test patients (the fraction of
#: each split among them)
RULE_KEYS = ("strategy", *(s.value for s in SPLITS), "salt", "stratify", "test_list")
_TEMPORAL_KEYS = ("test_after", "test_fraction")
_RUNS = re.compile(r"[^A-Za-z0-9]+")


def sequestered_dir(out: Path | str) -> Path:
    """The sequestered folder of the output folder ``out``."""
    return Path(out) / SEQUESTERED_DIR


# --------------------------------------------------------------------------- the rule


def _recorded(path: Path) -> dict[str, Any]:
    """``config.splits`` of a version's ``build.json`` (empty when it records none)."""
    try:
        info = json.loads((path / BUILD_JSON).read_text(encoding="utf-8"))
        splits = info["config"]["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{path / BUILD_JSON} is unreadable ({e}): whether its test split is sequestered "
            "cannot be told; restore it, or build into a new paths.output"
        ) from e
    return dict(splits) if isinstance(splits, dict) else {}


def rule_of(splits: dict[str, Any]) -> dict[str, Any]:
    """The values of ``splits`` (a ``config.splits`` mapping) that choose test patients."""
    rule = {k: splits.get(k) for k in RULE_KEYS}
    given = rule["stratify"]
    names = given.split(",") if isinstance(given, str) else list(given or ())
    rule["stratify"] = [str(c).strip() for c in names if str(c).strip()]
    rule["strategy"] = str(rule["strategy"] or SplitStrategy.HASH)
    temporal = splits.get("temporal") or {}
    for k in _TEMPORAL_KEYS:
        rule[f"temporal.{k}"] = None if temporal.get(k) is None else str(temporal.get(k))
    return rule


def check_output(cfg: BuildConfig, out: Path) -> None:
    """Raise :class:`ConfigError` (``hiroml-build`` exits 2, nothing written) when this build
    would break the sequestering of ``out``: un-sequestering it, sequestering an output whose
    versions hold their test split, or dealing test patients by another rule."""
    from hiroml.versions.listing import list_versions

    held = sequestered_dir(out)
    if not cfg.splits.sequester:
        if (held / MANIFEST).is_file() or list_versions(held):
            raise ConfigError(
                f"{out}: its test split is sequestered in {held}; splits.sequester=false would "
                "publish test samples into the main folder: keep splits.sequester=true, or "
                "build into a new paths.output"
            )
        return
    versions = list_versions(out)
    open_ones = [v.name for v in versions if not _recorded(v.path).get("sequester")]
    if open_ones or (not versions and (out / MANIFEST).is_file()):
        named = ", ".join(open_ones[:3]) or "its root tables"
        raise ConfigError(
            f"splits.sequester=true: {out} already holds a test split that is not sequestered "
            f"({named}: their tables and shards name the test patients); build into a new "
            "paths.output"
        )
    if versions:
        _check_same_rule(cfg, versions[-1].path)


def _check_same_rule(cfg: BuildConfig, latest: Path) -> None:
    """Raise :class:`ConfigError` when ``cfg`` deals test patients by another rule than the
    one recorded in the version folder ``latest``."""
    was = rule_of(_recorded(latest))
    now = rule_of(dataclasses.asdict(cfg.splits))
    for key, value in now.items():
        if value != was[key]:
            raise ConfigError(
                f"splits.sequester=true: the test split of {latest.parent.parent} was chosen with "
                f"splits.{key}={was[key]!r} ({latest / BUILD_JSON}); splits.{key}={value!r} "
                "would add test patients by another rule: set it back, or build into a new "
                "paths.output"
            )


# --------------------------------------------------------------------------- the tables


@dataclass(frozen=True, slots=True)
class Tokens:
    """What names a test patient: ids and group names that are one run of letters and
    digits (``runs``), and the others by their first such run (``others``: matched as whole
    substrings where that run is a word of the text). Letters and digits are ASCII ones."""

    runs: frozenset[str]
    others: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, names: Iterable[str]) -> Tokens:
        runs: set[str] = set()
        others: dict[str, set[str]] = {}
        for n in {str(n) for n in names}:
            parts = [p for p in _RUNS.split(n) if p]
            if not parts:  # no letter or digit: it names nothing
                continue
            if parts == [n]:
                runs.add(n)
            else:
                others.setdefault(parts[0], set()).add(n)
        return cls(frozenset(runs), {k: tuple(sorted(v)) for k, v in others.items()})

    def named_in(self, text: str) -> bool:
        """Whether ``text`` names one of the tokens as a whole word."""
        if not text:
            return False
        words = set(_RUNS.split(text))
        if not self.runs.isdisjoint(words):
            return True
        return any(_bounded(text, t) for w in words & self.others.keys() for t in self.others[w])


def _word_char(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _bounded(text: str, token: str) -> bool:
    """Whether ``token`` occurs in ``text`` with no letter or digit run on at either end."""
    start = text.find(token)
    while start >= 0:
        end = start + len(token)
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if not (_word_char(before) or _word_char(after)):
            return True
        start = text.find(token, start + 1)
    return False


def test_tokens(manifest: pd.DataFrame, patients: pd.DataFrame) -> Tokens:
    """The patient ids and patient groups of the test split."""
    names: set[str] = set()
    test = manifest[manifest["split"] == Split.TEST]
    for col in ("patient_id", "source_patient_id", "patient_group"):
        names |= set(test[col].astype(str))
    held = patients[patients["split"] == Split.TEST]
    names |= set(held["patient_group"].astype(str))
    for ids in held["patient_ids"]:
        names |= {str(p) for p in ids}
    return Tokens.of(names)


def _cell_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if hasattr(value, "__iter__"):
        return " ".join(_cell_text(v) for v in value)
    return str(value)


def _names(row: Sequence[Any], tokens: Tokens) -> bool:
    """Whether a cell of ``row`` names a test patient (the cells read as one text, a space
    between two)."""
    return tokens.named_in(" ".join(_cell_text(v) for v in row))


def _drop_named(value: Any, tokens: Tokens) -> Any:
    """A list cell without the entries that name a test patient."""
    if value is None or isinstance(value, str | float):
        return value
    return [v for v in value if not tokens.named_in(_cell_text(v))]


@dataclass(frozen=True, slots=True)
class Parted:
    """The tables of the main folder and of the sequestered folder."""

    manifest: pd.DataFrame
    patients: pd.DataFrame
    audit: pd.DataFrame
    held_manifest: pd.DataFrame
    held_patients: pd.DataFrame
    held_audit: pd.DataFrame
    tokens: Tokens


def part_tables(manifest: pd.DataFrame, patients: pd.DataFrame, audit: pd.DataFrame) -> Parted:
    """The tables parted by split (pure): test rows, and the audit rows that name a test
    patient, go to the sequestered side; the main side's cross references lose the entries
    that name a test patient."""
    tokens = test_tokens(manifest, patients)
    is_test = (manifest["split"] == Split.TEST).to_numpy()
    p_test = (patients["split"] == Split.TEST).to_numpy()
    columns = [audit[c].tolist() for c in audit.columns]  # plain lists: fast to walk
    a_test = [_names(row, tokens) for row in zip(*columns, strict=True)] if columns else []
    a_mask = pd.Series(a_test, index=audit.index, dtype=bool)
    main_m = manifest[~is_test].reset_index(drop=True)
    main_p = patients[~p_test].reset_index(drop=True)
    for frame, col in ((main_m, "near_duplicates"), (main_p, "links")):
        if col in frame.columns and len(frame):
            frame[col] = [_drop_named(v, tokens) for v in frame[col]]
    return Parted(
        manifest=main_m,
        patients=main_p,
        audit=audit[~a_mask].reset_index(drop=True),
        held_manifest=manifest[is_test].reset_index(drop=True),
        held_patients=patients[p_test].reset_index(drop=True),
        held_audit=audit[a_mask].reset_index(drop=True),
        tokens=tokens,
    )


def part_links(
    links: Sequence[GroupLink], tokens: Tokens
) -> tuple[list[GroupLink], list[GroupLink]]:
    """The pixel links of the main report (naming no test patient) and of the sequestered
    one (the others)."""
    main: list[GroupLink] = []
    held: list[GroupLink] = []
    for k in links:
        names = (
            k.sample_key,
            k.other_key,
            k.patient_id,
            k.other_patient_id,
            k.group,
            k.other_group,
        )
        (held if any(tokens.named_in(str(n)) for n in names) else main).append(k)
    return main, held


# --------------------------------------------------------------------------- the shards

#: root attributes a shard writer sets itself
_WRITER_ATTRS = frozenset({"format", "format_version", "modality", "layout", "n_samples"})


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link of the shard ``src`` (a copy where the filesystem cannot link),
    put in place atomically."""
    from hiroml.store.atomic import copy_atomic, temp_path

    tmp = temp_path(dst)
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)
        copy_atomic(src, dst)


def _copy_samples(src: Path, keys: Collection[str], folder: Path, prefix: str) -> tuple[str, str]:
    """The samples ``keys`` of the shard ``src`` copied, in its order, into a new shard
    ``<prefix>.h5`` in ``folder`` with its layout and attributes; (file name, SHA-256)."""
    from hiroml.store.shards import ShardWriter, open_shard, read_meta, read_ref, sample_refs

    wanted = set(keys)
    with open_shard(src) as f:
        layout = json.loads(str(f.attrs.get("layout", "{}")))
        attrs = {
            k: v.item() if hasattr(v, "item") else v
            for k, v in f.attrs.items()
            if k not in _WRITER_ATTRS
        }
        with ShardWriter(
            folder,
            prefix,
            modality=str(f.attrs["modality"]),
            max_samples=max(len(wanted), 1),
            max_bytes=2**62,
            compression=str(layout.get("compression", "none")),
            ct_chunks=str(layout.get("ct_chunks", "slice")),
            attrs=attrs,
        ) as writer:
            for key, ref in sample_refs(f).items():
                if key in wanted:
                    writer.add(key, read_ref(f, ref), read_meta(f, ref))
    (info,) = writer.shards
    return info.name, info.sha256


def _known_checksums(out: Path) -> dict[str, str]:
    """``<folder>/<shard>`` -> SHA-256 as the latest main and sequestered manifests record
    them (a shard parted by an earlier build is not read again to checksum it)."""
    from hiroml.store.reader import read_manifest
    from hiroml.versions.listing import VersionError, tables_dir

    known: dict[str, str] = {}
    for folder, tag in ((out, ""), (sequestered_dir(out), f"{SEQUESTERED_DIR}/")):
        try:
            m = read_manifest(tables_dir(folder)[0], columns=["shard", "shard_sha256"])
        except (OSError, ValueError, KeyError, VersionError):
            continue
        known.update(zip(tag + m["shard"].astype(str), m["shard_sha256"].astype(str), strict=True))
    return known


def part_shards(out: Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with each sample's ``shard`` and ``shard_sha256`` where it lies once its
    held shard is parted: a test sample under ``<out>/sequestered/shards/``, the others under
    ``<out>/shards/`` (each path relative to its folder)."""
    from hiroml.store.shards import shard_sha256

    known = _known_checksums(out)
    is_test = (manifest["split"] == Split.TEST).to_numpy()
    keys = manifest["sample_key"].astype(str).to_numpy()
    shard = manifest["shard"].astype(str).tolist()
    sha = manifest["shard_sha256"].astype(str).tolist()
    sides = {False: (out, "m"), True: (sequestered_dir(out), "t")}
    for folder, _ in sides.values():
        (folder / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    for rel, idx in manifest.groupby("shard", sort=True).indices.items():
        src = out / str(rel)
        if not str(rel).startswith(f"{HELD_SHARDS_DIR}/"):  # pragma: no cover - tasks' own
            raise ValueError(f"{rel}: a sequestered build's samples must lie in held shards")
        for side in (False, True):
            part = [int(i) for i in idx if is_test[i] == side]
            if not part:
                continue
            folder, tag = sides[side]
            if len(part) == len(idx):  # one side only: the held file itself
                name, digest = src.name, sha[part[0]]
                dst = folder / SHARDS_DIR / name
                if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
                    _link_or_copy(src, dst)
            else:
                chosen = sorted(keys[i] for i in part)
                h = hashlib.sha1("\n".join(chosen).encode()).hexdigest()[:8]
                name = f"{src.stem}-{tag}{h}.h5"
                prefix = f"{SEQUESTERED_DIR}/" if side else ""
                if (folder / SHARDS_DIR / name).is_file():  # parted by an earlier build
                    digest = known.get(f"{prefix}{SHARDS_DIR}/{name}", "")
                    digest = digest or shard_sha256(folder / SHARDS_DIR / name)
                else:
                    name, digest = _copy_samples(src, chosen, folder / SHARDS_DIR, name[:-3])
            for i in part:
                shard[i], sha[i] = f"{SHARDS_DIR}/{name}", digest
    return manifest.assign(shard=shard, shard_sha256=sha)


def _scrub_summary(summary: BuildSummary, tokens: Tokens) -> None:
    """Drop from the summary's lists of names (``orphan_ids``) those of test patients: the
    main folder's report and ``build.json`` show the summary."""
    for f in dataclasses.fields(summary):
        value = getattr(summary, f.name)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            setattr(summary, f.name, [v for v in value if not tokens.named_in(v)])


def sweep_held(out: Path, results: Sequence[TaskResult]) -> int:
    """Remove the held shards no task of this build names; how many."""
    live = {s for r in results for s in r.shards}
    gone = 0
    folder = out / HELD_SHARDS_DIR
    for p in sorted(folder.glob("*.h5")) if folder.is_dir() else ():
        if f"{HELD_SHARDS_DIR}/{p.name}" not in live:
            p.unlink(missing_ok=True)
            gone += 1
    return gone


# --------------------------------------------------------------------------- publishing


def publish(
    cfg: BuildConfig,
    out: Path,
    manifest: pd.DataFrame,
    patients: pd.DataFrame,
    audit: pd.DataFrame,
    summary: BuildSummary,
    found: Discovery,
    results: Sequence[TaskResult],
    orphan_advice: str,
    *,
    links: Sequence[GroupLink] = (),
) -> Published:
    """Publish the build parted: the test split as a version of ``<out>/sequestered``, then
    the rest as a version of ``out`` (:func:`hiroml.pipeline.publish.publish` each); the
    main version's ``build.json`` ``splits`` counts what was sequestered and names the
    sequestered version. Returns the main folder's :class:`Published`."""
    from hiroml.pipeline import publish as publishing

    parted = part_tables(part_shards(out, manifest), patients, audit)
    main_links, held_links = part_links(links, parted.tokens)
    rule = dict(summary.split_rule)
    summary.split_rule = {**rule, "sequestered_part": Split.TEST.value}
    held = publishing.publish(
        cfg,
        sequestered_dir(out),
        parted.held_manifest,
        parted.held_patients,
        parted.held_audit,
        summary,
        found,
        results,
        orphan_advice,
        links=held_links,
    )
    _scrub_summary(summary, parted.tokens)
    summary.split_rule = {
        **rule,
        "sequestered_samples": len(parted.held_manifest),
        "sequestered_patients": len(parted.held_patients),
        "sequestered_audit_rows": len(parted.held_audit),
        "sequestered_version": held.version.name,
    }
    main = publishing.publish(
        cfg,
        out,
        parted.manifest,
        parted.patients,
        parted.audit,
        summary,
        found,
        results,
        "" if parted.tokens.named_in(orphan_advice) else orphan_advice,
        links=main_links,
    )
    swept = sweep_held(out, results)
    log.info(
        "sequestered %d test sample(s) of %d patient group(s) in %s (version %s); %d held "
        "shard(s) no task names removed",
        len(parted.held_manifest),
        len(parted.held_patients),
        sequestered_dir(out),
        held.version.name,
        swept,
    )
    return main
