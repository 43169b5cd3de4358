"""Staging: each table of a batch bulk-copied into a temporary table before it is merged.

``COPY ... FROM STDIN WITH (FORMAT binary)`` of the Arrow columns in PostgreSQL's binary
format (``binary_copy``, bounded chunks, one COPY message each: the server checks and copies
each value instead of parsing text, a third of the CSV staging's server CPU), into an
unconstrained temporary table created in the batch's transaction (so the COPY can write its
rows frozen) that lives until commit, so the merges are set-based statements over rows
already on the server. A staged table of 10,000 rows or more is analysed (from a small
sample), so the planner knows the batch's size and key distribution.
"""

from __future__ import annotations

import pyarrow as pa
from pg8000.native import Connection

from totes.identifiers import quote, quote_all
from totes.star.model import DELETED_KEYS, StarTable
from totes.warehouse.binary_copy import copy_stream

ANALYZE_ROWS = 10_000
# Statistics of a staged table from a 3,000-row sample (PostgreSQL samples 300 rows per unit of
# the target) instead of the default 100's 30,000: every batch analyses up to five staged
# tables, and at the default that was a tenth of a 9-batch backfill's server CPU. Measured
# (docs/load.md "One load path"): 9 batches of 300k orders 12.9 -> 10.9 s of server CPU, the
# same rows as one batch 9.7 -> 9.4 s, the same warehouse.
STATISTICS_TARGET = 10

# Every merged row records the batch that last wrote it (except dim_date, a calendar).
LOADED_BATCH = "loaded_batch_id"
# The warehouse's column types where they differ from the model's names for them.
PG_TYPE = {"TIME": "TIME(3)", "TIMESTAMP": "TIMESTAMP(3)"}


def staging_name(table: StarTable) -> str:
    return f"stage_{table.name}"


def loaded_columns(table: StarTable) -> list[str]:
    """The columns a batch carries for ``table``: the model's, then its lineage stamps."""
    return [*table.column_names, *table.lineage]


def stage(con: Connection, table: StarTable, data: pa.Table) -> None:
    """COPY the rows into an unconstrained temporary table that lives until commit."""
    defs = ", ".join(
        f"{quote(c.name)} {PG_TYPE.get(c.sql_type, c.sql_type)}" for c in table.columns
    )
    name = quote(staging_name(table))
    stamps = ", ".join(f"{quote(stamp)} TIMESTAMP(3)" for stamp in table.lineage)
    con.run(f"CREATE TEMP TABLE {name} ({defs}, {stamps}) ON COMMIT DROP")
    # FREEZE: the table was created in this transaction, so PostgreSQL writes the rows frozen
    # (visible to all, hint bits set) and the merges' scans never set them page by page.
    # Measured: the 300k-order backfill's load -0.2 to -0.4 s of server CPU.
    con.run(
        f"COPY {name} ({quote_all(loaded_columns(table))}) FROM STDIN WITH (FORMAT binary, FREEZE)",
        stream=copy_stream(data),
    )
    if data.num_rows >= ANALYZE_ROWS:  # temp tables get no autovacuum statistics
        # Transaction-local; only ANALYZE reads it, and the load analyses nothing else.
        con.run(f"SET LOCAL default_statistics_target = {STATISTICS_TARGET}")
        con.run(f"ANALYZE {name}")


def stage_deleted_keys(con: Connection, data: pa.Table) -> None:
    """COPY the batch's deletions (star table, key) into a temporary table ``stage_deleted_keys``
    that lives until commit."""
    name = quote(f"stage_{DELETED_KEYS}")
    con.run(f"CREATE TEMP TABLE {name} (star_table VARCHAR, key INT) ON COMMIT DROP")
    con.run(
        f"COPY {name} (star_table, key) FROM STDIN WITH (FORMAT binary)",
        stream=copy_stream(data.select(["star_table", "key"])),
    )
