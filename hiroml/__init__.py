"""hiroml: the CRDW COVID-19 datamart's imaging drops as training-ready HDF5 datasets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hiroml._version import __version__

__all__ = ["HiromlDataset", "__version__", "load_sitk"]

if TYPE_CHECKING:
    from hiroml.data.dataset import HiromlDataset, load_sitk


def __getattr__(name: str) -> Any:
    # torch is imported only when the Dataset is asked for.
    if name in ("HiromlDataset", "load_sitk"):
        from hiroml.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'hiroml' has no attribute {name!r}")
