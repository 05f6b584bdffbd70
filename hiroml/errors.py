"""The exception hierarchy. Messages are built before raising and name the file concerned."""

from __future__ import annotations


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


class ManifestError(HiromlError):
    """A table handed to :func:`hiroml.manifest.write_outputs` breaks the output contract
    (``docs/design.md`` §4)."""


class ShardError(HiromlError):
    """A shard cannot be written or read as asked (bad or duplicate key, bad option, a
    sample the shard does not hold)."""


class SelfCheckError(ConfigError):
    """The self-check of the numeric paths (:mod:`hiroml.doctor`) found a library that gives
    other values than hiroml's golden ones, or fails: ``hiroml-build`` exits 2 before writing
    anything (``doctor.enabled=false`` builds anyway)."""
