"""Deprecated alias of :mod:`hiroml.data.monai` (the module moved there); importing it warns.

It will be removed in a later release: import from the new module.
"""

from __future__ import annotations

import warnings

from hiroml.data.monai import (
    LPS_TO_RAS,
    Sample,
    ToMetaTensord,
    ras_affine,
    to_monai,
)

__all__ = [
    "LPS_TO_RAS",
    "Sample",
    "ToMetaTensord",
    "ras_affine",
    "to_monai",
]

warnings.warn(
    "hiroml.monai is deprecated; import hiroml.data.monai instead",
    DeprecationWarning,
    stacklevel=2,
)
