"""The exception hierarchy. Messages are built before raising and name the file concerned."""

from __future__ import annotations

import traceback
import zipfile
import zlib

# Exit statuses of the commands (hiroml-build; hiroml-versions exits 3 as it does)
EXIT_CONFIG = 2  # configuration or datamart error: nothing was written
EXIT_LOCKED = 3  # another build holds the output's lock
EXIT_SHRINK = 4  # the shrink guard refused to publish
EXIT_SYSTEMATIC = 5  # one error hit most images of a modality: nothing published
EXIT_NO_SPACE = 6  # the output's disk is full: the previous version is intact


class HiromlError(Exception):
    """Base of every error hiroml raises on purpose."""


class ArgumentError(HiromlError, ValueError):
    """A bad argument to a public function (a dtype, a column or a sample key that is not
    there): a ``ValueError``, as Python users expect, and a :class:`HiromlError`, so that
    ``except HiromlError`` still catches it."""


class ConfigError(HiromlError):
    """A configuration value is missing, misspelled or out of range."""


class DatamartError(HiromlError):
    """The datamart folder itself cannot be used (missing, unreadable, or holding no batch
    folder at all): ``hiroml-build`` exits 2, before anything is written."""


class ZipSafetyError(HiromlError):
    """A zip exceeds a safety cap (member count, size, compression ratio) or has unsafe
    member names."""


class BadInputError(HiromlError):
    """One input file (zip, member, DICOM) is unusable; the build records it and goes on."""


class RemapError(HiromlError):
    """The patient-id remap sheet is inconsistent (cycle, conflicting targets) or unreadable."""


class DecodeError(BadInputError):
    """Pixel data could not be decoded."""


class GeometryError(BadInputError):
    """A CT series has geometry we refuse to store (gaps, duplicates, odd orientation...)."""


class ExportError(HiromlError):
    """The export cannot run: no such output, version or modality/format pair, or a stored
    sample that cannot be written in the format asked for."""


class OutputLockedError(HiromlError):
    """Another build holds the output folder's lock (``<out>/.hiroml/build.lock``):
    ``hiroml-build`` exits 3 at once, or waits with ``wait_for_lock=true``."""


class ShrinkRefusedError(HiromlError):
    """The build would remove more of the previous dataset than
    ``publish.max_removed_fraction`` allows, without an explanation in the audit:
    ``hiroml-build`` exits 4 and the previous output is left exactly as it was
    (``allow_shrink=true`` publishes anyway)."""


class SystematicFailureError(HiromlError):
    """Most images of one modality that the build converted failed with one same error (a
    library that fails on every image, not bad input): ``hiroml-build`` exits 5 and publishes
    nothing (``publish.max_error_fraction``, ``publish.min_errors``)."""


class BuildError(HiromlError):
    """The build could not complete (strict mode with errors, patient leakage, a full disk,
    a demo folder holding something else...); the previous output is left as it was."""


class DiskFullError(BuildError):
    """The disk of the output (or its quota) is full: ``hiroml-build`` exits 6 and the
    previous version stays the latest, whole (:mod:`hiroml.pipeline.diskfull`)."""


class WorkerDiedError(BuildError):
    """A worker process died (killed when memory ran out, a crash in native code) twice while
    running the same work, and that work cannot be cut into smaller pieces: nothing is
    published (:mod:`hiroml.pipeline.executor`)."""


class ManifestError(HiromlError):
    """A table handed to :func:`hiroml.store.tables.write_outputs` breaks the output contract
    (``docs/design.md`` §4)."""


class ShardError(HiromlError):
    """A shard cannot be written or read as asked (bad or duplicate key, bad option, a
    sample the shard does not hold)."""


# Exceptions that mean an input is bad, not that hiroml is wrong: an audit ``error`` row and
# nothing more. Anything else raised while one member or exam is converted is a hiroml bug:
# still an error row (one bad exam never stops a build), but its traceback goes to the run log
# and the build's summary counts it apart ("internal errors: N - please report").
BAD_INPUT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    BadInputError,  # DecodeError, GeometryError: raised on purpose, naming the file
    ZipSafetyError,
    zipfile.BadZipFile,  # a zip or member that cannot be inflated
    zlib.error,
    EOFError,  # a truncated member
    OSError,  # a member or file that cannot be read
)


def is_bad_input(err: BaseException) -> bool:
    """Whether ``err`` says the input is bad rather than that hiroml has a bug: one of
    :data:`BAD_INPUT_EXCEPTIONS`, or any exception raised inside pydicom itself (pydicom
    raises many types on a damaged file, e.g. ``NotImplementedError`` for an unknown VR when
    an element is read; its ``InvalidDicomError`` among them)."""
    if isinstance(err, BAD_INPUT_EXCEPTIONS):
        return True
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = str(tb.tb_frame.f_globals.get("__name__", "")) if tb is not None else ""
    return where == "pydicom" or where.startswith("pydicom.")


def internal_trace(err: BaseException) -> str:
    """The formatted traceback of ``err`` when it is a hiroml bug, "" when it is bad input."""
    if is_bad_input(err):
        return ""
    return "".join(traceback.format_exception(err)).rstrip()


class SelfCheckError(ConfigError):
    """The self-check of the numeric paths (:mod:`hiroml.doctor`) found a library that gives
    other values than hiroml's golden ones, or fails: ``hiroml-build`` exits 2 before writing
    anything (``doctor.enabled=false`` builds anyway)."""
