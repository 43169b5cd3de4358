"""Terrific Totes ETL: totesys OLTP -> S3 lake -> PostgreSQL star schema.

This package is the runtime, and exactly what the Lambda layer ships: the three handlers in
``functions/`` are thin doorways into ``totes.stages``; everything here is importable and
testable without AWS. The tooling (CLI, local stack, demo, bench, generator...) lives in the
``totes_tools`` package beside it (``tools/``), which imports this one and is never deployed.
"""

__version__ = "0.1.0"
