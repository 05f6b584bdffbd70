"""Consumers of a built output: the PyTorch Dataset, MONAI and Lightning interop, plain-file
export."""
