"""Storage: HDF5 shards, the output tables, atomic writes, files' SHA-256, the output lock, the
shrink guard, the output contract and its verification."""
