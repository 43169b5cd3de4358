"""Terrific Totes ETL: totesys OLTP -> S3 lake -> PostgreSQL star schema.

The package is the Lambda layer: the three handlers in ``functions/`` are thin doorways
into ``totes.stages``; everything else here is importable and testable without AWS.
"""

__version__ = "0.1.0"
