"""Warehouse tooling: synthetic star batches, content checksums, the merge bench and the
``warehouse migrate`` command, over the runtime's merge and migrations."""
