"""hiroml: the CRDW COVID-19 datamart's imaging drops as training-ready HDF5 datasets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["HiromlDataset", "__version__"]

if TYPE_CHECKING:
    from hiroml.dataset import HiromlDataset


def __getattr__(name: str) -> Any:
    # torch is imported only when the Dataset is asked for.
    if name == "HiromlDataset":
        from hiroml.dataset import HiromlDataset

        return HiromlDataset
    raise AttributeError(f"module 'hiroml' has no attribute {name!r}")
