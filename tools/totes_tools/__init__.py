"""Terrific Totes tooling: everything around the pipeline that the Lambdas never import.

The command line (``python -m totes``), the local stack (embedded PostgreSQL, AWS emulation,
the chain run in-process, demo and bench), the source tooling (DDL, snapshot loader, generator,
live simulator), the warehouse tooling (synthetic batches, checksums, bench) and replay. It
imports the runtime package ``totes``, never the other way round, and is not part of the
Lambda layer (built from ``shared/``), so the deployed artefact holds only the runtime.
"""
