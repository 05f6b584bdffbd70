"""hiroml: the CRDW COVID-19 datamart's imaging drops as training-ready HDF5 datasets.

The public API: :class:`HiromlDataset` and :func:`load_sitk` (imported on first use: they
pull in torch), :class:`HiromlError` (the base of every error hiroml raises on purpose) and
``__version__``. The commands are in :mod:`hiroml.cli`; the stages in their packages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hiroml._version import __version__
from hiroml.errors import HiromlError

__all__ = ["HiromlDataset", "HiromlError", "__version__", "load_sitk"]

if TYPE_CHECKING:
    from hiroml.data.dataset import HiromlDataset, load_sitk


def __getattr__(name: str) -> Any:
    # torch is imported only when the Dataset is asked for.
    if name in ("HiromlDataset", "load_sitk"):
        from hiroml.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'hiroml' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
