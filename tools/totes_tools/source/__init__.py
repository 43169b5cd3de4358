"""Source tooling: the totesys DDL, the snapshot loader, the generator and the live simulator,
all derived from the runtime's source model (``totes.source.model``)."""
