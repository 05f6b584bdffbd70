"""The synthetic demo datamart a build uses when ``paths.datamart`` is null."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from hiroml.config import BuildConfig
from hiroml.errors import BuildError
from hiroml.vocab import TRUTH_NAME

log = logging.getLogger(__name__)


def demo_root(cfg: BuildConfig) -> Path:
    """Where the demo datamart is: ``paths.demo_dir``, else ``<paths.output>-demo-datamart``."""
    return Path(cfg.paths.demo_dir or f"{cfg.paths.output}-demo-datamart")


def demo_pending(cfg: BuildConfig) -> Path | None:
    """The demo datamart's folder when this build has to generate it first, else None."""
    if cfg.paths.datamart:
        return None
    root = demo_root(cfg)
    return None if (root / TRUTH_NAME).is_file() else root


def demo_datamart(cfg: BuildConfig) -> Path:
    """Generate (once) the synthetic demo datamart used when ``paths.datamart`` is null, with
    a progress bar (``progress``) over its planting steps."""
    from tqdm import tqdm

    from hiroml import synth

    root = demo_root(cfg)
    stamp = root / TRUTH_NAME
    if stamp.is_file():
        try:
            truth = json.loads(stamp.read_text())
            if truth.get("size") == cfg.demo_size and truth.get("seed") == cfg.seed:
                return root
        except ValueError:
            pass
        raise BuildError(
            f"{root} holds another synthetic datamart (or a damaged one): remove it, or set "
            "paths.demo_dir to another folder"
        )
    if root.exists() and any(root.iterdir()):
        raise BuildError(f"{root} exists and is not a hiroml demo datamart: set paths.demo_dir")
    log.info("generating the %s synthetic datamart in %s", cfg.demo_size, root)
    bar = tqdm(desc="demo datamart", unit="step", disable=not cfg.progress, leave=False)

    def step(done: int, total: int, zips: int) -> None:
        bar.total = total
        bar.set_postfix_str(f"{zips} zips", refresh=False)
        if done != bar.n:
            bar.update(done - bar.n)
        else:
            bar.refresh()

    with bar:
        synth.generate(root, seed=cfg.seed, size=cfg.demo_size, on_step=step)
    return root


def with_demo(cfg: BuildConfig) -> tuple[BuildConfig, Path]:
    """``cfg`` and the datamart it builds from. With ``paths.datamart`` null that is the demo
    datamart (generated once), and ``paths.clinical``, when null too, becomes the demo's own
    clinical table (``clinical.csv``: ``icu`` and other labels), so the demo output carries the
    label columns the README's examples use."""
    if cfg.paths.datamart:
        return cfg, Path(cfg.paths.datamart)
    root = demo_datamart(cfg)
    if cfg.paths.clinical is None:
        # the ground truth names it (read here: this runs before pydicom is imported)
        clinical = json.loads((root / TRUTH_NAME).read_text())["clinical"]
        paths = dataclasses.replace(cfg.paths, clinical=str(root / clinical))
        cfg = dataclasses.replace(cfg, paths=paths)
    return cfg, root
