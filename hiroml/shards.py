"""Deprecated alias of :mod:`hiroml.store.shards` (the module moved there); importing it warns.

It will be removed in a later release: import from the new module.
"""

from __future__ import annotations

import warnings

from hiroml.store.shards import (
    COMPRESSIONS,
    CT_CHUNKS,
    CT_CUBE,
    FORMAT,
    FORMAT_VERSION,
    SampleRef,
    ShardInfo,
    ShardWriter,
    array_hash,
    iter_samples,
    open_shard,
    read_index,
    read_into,
    read_meta,
    read_ref,
    read_sample,
    region_of,
    sample_refs,
    sample_shape,
    shard_keys,
    shard_sha256,
    stored_hash,
    stored_offset,
)

__all__ = [
    "COMPRESSIONS",
    "CT_CHUNKS",
    "CT_CUBE",
    "FORMAT",
    "FORMAT_VERSION",
    "SampleRef",
    "ShardInfo",
    "ShardWriter",
    "array_hash",
    "iter_samples",
    "open_shard",
    "read_index",
    "read_into",
    "read_meta",
    "read_ref",
    "read_sample",
    "region_of",
    "sample_refs",
    "sample_shape",
    "shard_keys",
    "shard_sha256",
    "stored_hash",
    "stored_offset",
]

warnings.warn(
    "hiroml.shards is deprecated; import hiroml.store.shards instead",
    DeprecationWarning,
    stacklevel=2,
)
