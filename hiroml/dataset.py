"""Deprecated alias of :mod:`hiroml.data.dataset` (the module moved there); importing it warns.

It will be removed in a later release: import from the new module.
"""

from __future__ import annotations

import warnings

from hiroml.data.dataset import (
    CT_GEOMETRY,
    MAX_OPEN,
    META_FLOAT,
    META_STR,
    HiromlDataset,
    Sample,
    load_sitk,
)

__all__ = [
    "CT_GEOMETRY",
    "MAX_OPEN",
    "META_FLOAT",
    "META_STR",
    "HiromlDataset",
    "Sample",
    "load_sitk",
]

warnings.warn(
    "hiroml.dataset is deprecated; import hiroml.data.dataset instead",
    DeprecationWarning,
    stacklevel=2,
)
