"""The package version, in a module of its own so that any module can import it without
importing the package's lazy attributes (``hiroml.HiromlDataset`` pulls in torch)."""

__version__ = "0.1.0"  # keep equal to pyproject.toml's [project] version (a test checks)
