"""Deprecated alias of :mod:`hiroml.data.export` (the module moved there); importing it warns.

It will be removed in a later release: import from the new module.
"""

from __future__ import annotations

import warnings

from hiroml.cli.export import (
    main,
)
from hiroml.data.export import (
    FORMATS,
    INDEX_COLUMNS,
    SIDECAR_COLUMNS,
    SUFFIX,
    ExportResult,
    cxr_uint16,
    export,
    manifest_path,
    safe_name,
)
from hiroml.vocab import EXPORT_INDEX_NAME as INDEX_NAME

__all__ = [
    "FORMATS",
    "INDEX_COLUMNS",
    "INDEX_NAME",
    "SIDECAR_COLUMNS",
    "SUFFIX",
    "ExportResult",
    "cxr_uint16",
    "export",
    "main",
    "manifest_path",
    "safe_name",
]

warnings.warn(
    "hiroml.export is deprecated; import hiroml.data.export instead",
    DeprecationWarning,
    stacklevel=2,
)
