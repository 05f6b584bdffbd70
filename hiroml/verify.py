"""Deprecated alias of :mod:`hiroml.store.verify` (the module moved there); importing it warns.

It will be removed in a later release: import from the new module.
"""

from __future__ import annotations

import warnings

from hiroml.cli.verify import (
    main,
)
from hiroml.store.verify import (
    Findings,
    examine,
    examine_all,
    near_duplicates_across_splits,
    verify,
)

__all__ = [
    "Findings",
    "examine",
    "examine_all",
    "main",
    "near_duplicates_across_splits",
    "verify",
]

warnings.warn(
    "hiroml.verify is deprecated; import hiroml.store.verify instead",
    DeprecationWarning,
    stacklevel=2,
)
