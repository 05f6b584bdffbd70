"""Deprecated alias of :mod:`hiroml.data.lightning` (the module moved there); importing it warns.

It will be removed in a later release: import from the new module.
"""

from __future__ import annotations

import warnings

from hiroml.data.lightning import (
    HiromlDataModule,
    Sample,
    Transform,
)

__all__ = [
    "HiromlDataModule",
    "Sample",
    "Transform",
]

warnings.warn(
    "hiroml.lightning is deprecated; import hiroml.data.lightning instead",
    DeprecationWarning,
    stacklevel=2,
)
