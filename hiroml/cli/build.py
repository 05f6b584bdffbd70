"""The Hydra entry point ``hiroml-build`` (also ``python -m hiroml``).

The only module that imports Hydra: it composes ``configs/build.yaml`` (shipped inside the
package as ``hiroml.conf``), converts it once into the typed :class:`~hiroml.config.BuildConfig`
and hands it to :func:`hiroml.pipeline.run`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import signal
import sys
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.resources import files
from types import FrameType

import hydra
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from hiroml.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    quiet_broken_pipe,
    unwritable,
    version_line,
)
from hiroml.config import BuildConfig
from hiroml.errors import (
    EXIT_CONFIG,
    EXIT_LOCKED,
    EXIT_NO_SPACE,
    EXIT_SHRINK,
    EXIT_SYSTEMATIC,
    ConfigError,
    DatamartError,
    DiskFullError,
    HiromlError,
    OutputLockedError,
    ShrinkRefusedError,
    SystematicFailureError,
)
from hiroml.pipeline import allocator, unchanged
from hiroml.pipeline.demo import demo_pending
from hiroml.pipeline.summary import BuildSummary
from hiroml.vocab import STATE_DIR

log = logging.getLogger("hiroml")
#: a build's errors reach the run log through this logger and the console once, as the
#: ``hiroml-build: ...`` line (its name is outside the console filter's ``hiroml``)
runlog = logging.getLogger("hiroml_build")

HELP = """hiroml-build: zipped DICOM exams -> a deduplicated, leakage-free HDF5 dataset.

Composes configs/build.yaml with the overrides given as key=value (the keys are listed
below and in docs/configuration.md), builds the output folder paths.output and publishes a
new version of it.

Examples:
  hiroml-build                                   # the demo: a synthetic datamart, hiroml-out/
  hiroml-build paths.datamart=/data/datamart paths.output=/data/hiroml-out
  hiroml-build paths.datamart=/data/dm cxr.size=[256,256] ct.enabled=false
  hiroml-build experiment=covid_cxr paths.datamart=/data/dm
  hiroml-build --cfg job                         # print the composed config, build nothing
"""

ConfigStore.instance().store(name="build_schema", node=BuildConfig)

#: Exit codes of ``hiroml-build`` (docs/troubleshooting.md, "Exit codes"): 0 built; 1 failed.


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
    if isinstance(err, DiskFullError):
        return EXIT_NO_SPACE
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
#: ``paths.output`` of the composed config, for the line an interrupted build ends with
_output: list[str] = []


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, as Ctrl-C raises KeyboardInterrupt."""


#: the build's own process: forked workers inherit :func:`_on_sigterm` and must simply end
_MAIN_PID: list[int] = []


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _MAIN_PID and os.getpid() != _MAIN_PID[0]:  # a forked worker: die as SIGTERM says
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise _Terminated()


def _schema_keys() -> list[str]:
    """Every key of the config schema, dotted (``cxr.size``), sections included: the fields
    of :class:`BuildConfig` and of its nested dataclasses (read from the classes, without
    building OmegaConf's structured config)."""
    keys: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            keys.append(f"{prefix}{field.name}")
            kind = hints[field.name]
            if isinstance(kind, type) and dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{field.name}.")

    walk(BuildConfig, "")
    return keys


def _groups() -> set[str]:
    """The config groups (``executor``, ``experiment``, ``local``) and ``hydra``."""
    root = files("hiroml.conf")
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")} | {"hydra"}


#: Hydra's options that take a value in the next argument
_VALUED = {
    "-cn",
    "--config-name",
    "-cp",
    "--config-path",
    "-cd",
    "--config-dir",
    "-c",
    "--cfg",
    "-p",
    "--package",
    "--experimental-rerun",
}


def unknown_key(argv: Sequence[str]) -> str | None:
    """The one-line refusal of the first override whose key the schema does not have
    (``+cxr.sise=[256,256]``, ``cxr.sise=...``, ``+foo=1``), with the nearest key; ``None``
    when every key is known. Group choices (``executor=dask``) and ``hydra.*`` pass."""
    keys, groups = None, _groups()
    skip = False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = not skip and arg in _VALUED
            continue
        if "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if "/" in key or "@" in key or key.split(".")[0] in groups:
            continue
        keys = keys if keys is not None else _schema_keys()
        if key in keys:
            continue
        near = difflib.get_close_matches(key, keys, n=1)
        hint = f"did you mean {near[0]}?" if near else "see hiroml-build --cfg job for the keys"
        return f"unknown key {key}; {hint}"
    return None


@hydra.main(version_base="1.3", config_path="pkg://hiroml.conf", config_name="build")
def _main(cfg: DictConfig) -> None:
    _composed.append(True)
    _output.append(str(cfg.paths.output))
    logging.captureWarnings(True)
    try:
        build_cfg = to_config(cfg)
        if build_cfg.runtime.malloc == "keep_freed":
            allocator.keep_freed_buffers()
        _announce_demo(build_cfg)
        seen = unchanged.look(build_cfg) if build_cfg.skip_unchanged else None
        summary = seen.summary if seen is not None else None
        if summary is None:
            summary = _full_build(build_cfg, seen)
    except HiromlError as e:
        runlog.error("%s", e)
        print(f"hiroml-build: {e}", file=sys.stderr)
        raise SystemExit(exit_code(e)) from None
    print("\n".join(summary.lines()))
    print(f"  open {summary.output}/report.html; check with: hiroml-verify {summary.output}")


#: how long each size of the demo datamart takes to generate (hiroml-synth --help)
_DEMO_TIME = {"tiny": "; a few seconds", "demo": "; about 30 s", "bench": "; about 10 minutes"}


def _announce_demo(cfg: BuildConfig) -> None:
    """The first line of a first demo build: where the demo datamart goes and what it is."""
    root = demo_pending(cfg)
    if root is not None:
        takes = _DEMO_TIME.get(cfg.demo_size, "")
        print(
            f"hiroml-build: no paths.datamart given: generating the {cfg.demo_size} synthetic "
            f"datamart (made-up patients, not real data) in {root}/ first (once{takes})",
            flush=True,
        )


def _full_build(cfg: BuildConfig, seen: unchanged.Look | None = None) -> BuildSummary:
    """:func:`hiroml.pipeline.run`, imported only now: a re-run with nothing new answers
    (:mod:`hiroml.pipeline.unchanged`) without pandas, pydicom or OpenCV; ``seen``, what that
    check found, passes its datamart listing on. First the self-check
    (:func:`hiroml.doctor.checks.require`, once per process and, with ``doctor.cache``, once
    per environment; ``doctor.enabled``): a library that
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
        require(cache=cfg.doctor.cache)
    return run(cfg, check_unchanged=False, seen=seen)


#: arguments that can make Hydra's answer to "run or multirun?" other than "run": ``-m``, a
#: ``hydra.mode`` override, configs of the user's own (``--config-dir`` and the like)
_MODE_ARGS = (
    "-m",
    "--multirun",
    "hydra.mode",
    "+hydra.mode",
    "++hydra.mode",
    "~hydra.mode",
    "-c",
    "--config",
)


def _local_sets_mode() -> bool:
    """Whether the machine's own ``local/default.yaml`` mentions ``mode`` (then Hydra reads
    ``hydra.mode`` as it always does)."""
    try:
        text = files("hiroml.conf").joinpath("local", "default.yaml").read_text()
    except OSError:
        return False
    return "mode" in text


@contextmanager
def _one_composition(argv: Sequence[str]) -> Iterator[None]:
    """Hydra composes the whole config twice per run: once only to read ``hydra.mode`` (its
    ``get_mode``), then for the job. None of the shipped configs sets ``hydra.mode``, so
    without ``-m``, a ``hydra.mode`` override, a config folder of the user's (``-cd``, ``-cp``,
    ``-cn``) or a ``local/default.yaml`` that mentions ``mode``, that first composition
    answers ``None`` (run once) and Hydra is told so without composing; otherwise Hydra
    composes twice as it always does."""
    try:
        from hydra._internal.hydra import Hydra
    except ImportError:  # another Hydra layout: Hydra composes twice, its own way
        yield
        return
    if (
        any(a.startswith(_MODE_ARGS) for a in argv)
        or not hasattr(Hydra, "get_mode")
        or _local_sets_mode()
    ):
        yield
        return
    saved = Hydra.get_mode
    Hydra.get_mode = lambda *_a, **_k: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        Hydra.get_mode = saved  # type: ignore[method-assign]


def _interrupted() -> str:
    """The line an interrupted build ends with: which version is still the latest."""
    if not _output:
        return "interrupted before the build started; nothing was changed"
    from hiroml.versions.listing import find_version

    try:
        v = find_version(_output[-1])
    except (HiromlError, OSError):
        v = None
    if v is None:
        return "interrupted; no version was published; run again to resume"
    return f"interrupted; version {v.name} is intact; run again to resume"


def main() -> None:
    """``hiroml-build [overrides...]``; exit codes as :func:`exit_code` says; 130 after Ctrl-C,
    143 after SIGTERM. Every mistake ends with one ``hiroml-build: ...`` line on stderr."""
    argv = sys.argv[1:]
    if "--version" in argv:
        print(version_line("hiroml-build"))
        raise SystemExit(0)
    if "--help" in argv or "-h" in argv:
        from hiroml.cli.keys import help_lines

        print(HELP)
        print("Configuration keys (key = default: meaning; docs/configuration.md):")
        print("\n".join(help_lines()), end="\n\n")
    bad = unknown_key(argv)
    if bad is not None:
        print(f"hiroml-build: {bad}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    # Hydra's errors reach this function as exceptions (not its own multi-line report)
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    _MAIN_PID[:] = [os.getpid()]
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with _one_composition(argv):
            _main()
    except SystemExit as e:
        if e.code == 1 and not _composed:  # Hydra could not compose the config
            raise SystemExit(EXIT_CONFIG) from None
        raise
    except KeyboardInterrupt as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the line
        print(f"hiroml-build: {_interrupted()}", file=sys.stderr)
        raise SystemExit(
            EXIT_TERMINATED if isinstance(e, _Terminated) else EXIT_INTERRUPTED
        ) from None
    except BrokenPipeError:
        quiet_broken_pipe()
        raise SystemExit(0) from None
    except HydraException as e:  # before OSError: a missing config is both
        msg = " | ".join(x.strip() for x in str(e).splitlines() if x.strip())
        print(f"hiroml-build: {msg}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    except OSError as e:
        if _composed:
            raise
        where = str(e.filename or "")
        where = where.split(f"/{STATE_DIR}/")[0] if f"/{STATE_DIR}/" in where else where
        line = unwritable(e, where, todo="give paths.output= a folder you can write to")
        print(f"hiroml-build: {line or e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


if __name__ == "__main__":
    main()
