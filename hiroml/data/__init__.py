"""Consumers of a built output: the PyTorch Dataset, MONAI and Lightning interop, plain-file
export. They read an output through :mod:`hiroml.store.reader` only."""

from typing import Any

#: What a Dataset yields for one sample (``image``, ``sample_key``, ``patient_id``, ``meta``...):
#: the one untyped dict, so that ``torch.utils.data.default_collate`` batches it.
Sample = dict[str, Any]
