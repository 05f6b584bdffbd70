"""The Hydra entry point ``hiroml-build`` (also ``python -m hiroml``).

The only module that imports Hydra: it composes ``configs/build.yaml`` (shipped inside the
package as ``hiroml.conf``), converts it once into the typed :class:`~hiroml.config.BuildConfig`
and hands it to :func:`hiroml.pipeline.run`.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from hiroml.config import BuildConfig
from hiroml.errors import (
    EXIT_CONFIG,
    EXIT_LOCKED,
    EXIT_SHRINK,
    EXIT_SYSTEMATIC,
    ConfigError,
    DatamartError,
    HiromlError,
    OutputLockedError,
    ShrinkRefusedError,
    SystematicFailureError,
)
from hiroml.pipeline import allocator, unchanged
from hiroml.pipeline.summary import BuildSummary

log = logging.getLogger("hiroml")

ConfigStore.instance().store(name="build_schema", node=BuildConfig)

#: Exit codes of ``hiroml-build`` (README, "Exit codes"): 0 built; 1 the build failed.


def exit_code(err: HiromlError) -> int:
    """The exit code of ``hiroml-build`` for an error it reports."""
    if isinstance(err, ConfigError | DatamartError):
        return EXIT_CONFIG
    if isinstance(err, OutputLockedError):
        return EXIT_LOCKED
    if isinstance(err, ShrinkRefusedError):
        return EXIT_SHRINK
    if isinstance(err, SystematicFailureError):
        return EXIT_SYSTEMATIC
    return 1


def to_config(cfg: DictConfig) -> BuildConfig:
    """The typed config of a composed one; :class:`ConfigError` says what is wrong."""
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as e:  # OmegaConf's validation errors
        raise ConfigError(f"invalid configuration: {e}") from e
    if not isinstance(obj, BuildConfig):
        raise ConfigError(f"the composed config is a {type(obj).__name__}, not BuildConfig")
    return obj


#: Set once Hydra has composed a config and called the job: an exit before that is Hydra's
#: own report of a configuration it could not compose (a misspelled key, a bad override).
_composed: list[bool] = []


@hydra.main(version_base="1.3", config_path="pkg://hiroml.conf", config_name="build")
def _main(cfg: DictConfig) -> None:
    _composed.append(True)
    logging.captureWarnings(True)
    try:
        build_cfg = to_config(cfg)
        if build_cfg.runtime.malloc == "keep_freed":
            allocator.keep_freed_buffers()
        summary = unchanged.answer(build_cfg) if build_cfg.skip_unchanged else None
        if summary is None:
            summary = _full_build(build_cfg)
    except HiromlError as e:
        log.error("%s", e)
        print(f"hiroml-build: {e}", file=sys.stderr)
        raise SystemExit(exit_code(e)) from None
    print("\n".join(summary.lines()))
    print(f"  open {summary.output}/report.html; check with: hiroml-verify {summary.output}")


def _full_build(cfg: BuildConfig) -> BuildSummary:
    """:func:`hiroml.pipeline.run`, imported only now: a re-run with nothing new answers
    (:mod:`hiroml.pipeline.unchanged`) without pandas, pydicom or OpenCV. First the self-check
    (:func:`hiroml.doctor.checks.require`, once per process; ``doctor.enabled``): a library that
    gives other values than the golden ones raises a
    :class:`~hiroml.errors.SelfCheckError` (exit 2)."""
    # pydicom resets its logger to WARNING when imported. Its messages, and those of every
    # other third-party library, reach the run log only: the console handler passes hiroml's
    # own records (configs/hydra/job_logging/hiroml.yaml, hiroml/cli/logs.py). Python warnings
    # are logged too (to ``py.warnings``), so they also stay off the console.
    import pydicom  # noqa: F401

    from hiroml.doctor.checks import require
    from hiroml.pipeline import run

    logging.getLogger("pydicom").setLevel(logging.WARNING)
    if cfg.doctor.enabled:  # before anything is written: other stored values stop the build
        require()
    return run(cfg, check_unchanged=False)


def main() -> None:
    """``hiroml-build [overrides...]``; exit codes as :func:`exit_code` says."""
    try:
        _main()
    except SystemExit as e:
        if e.code == 1 and not _composed:  # Hydra could not compose the config
            raise SystemExit(EXIT_CONFIG) from None
        raise


if __name__ == "__main__":
    main()
