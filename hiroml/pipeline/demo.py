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


def demo_datamart(cfg: BuildConfig) -> Path:
    """Generate (once) the synthetic demo datamart used when ``paths.datamart`` is null."""
    from hiroml import synth

    out = Path(cfg.paths.output)
    root = Path(cfg.paths.demo_dir or f"{out}-demo-datamart")
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
    synth.generate(root, seed=cfg.seed, size=cfg.demo_size)
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
