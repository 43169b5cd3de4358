"""Dimension merges: each row moves only forward in the source's commit order, so batches
applied in any order converge to the same warehouse.

Two set-based statements per dimension, not an upsert: an ``UPDATE ... FROM`` the newest staged
row per key, then an anti-join ``INSERT`` of the keys not stored yet. ``INSERT ... ON CONFLICT
DO UPDATE`` paid a speculative insertion per staged row: for the 300k-order backfill's
``dim_transaction`` (425k rows) as one batch the two statements take 0.53 s of server CPU
against the upsert's 0.88 s, the whole load 2.97 s against 3.30 (docs/load.md "Alternatives
measured (5)"). Safe because loads are serialised by the load's advisory lock
(``ledger.lock``), as for the facts' version insert; the primary key still refuses a duplicate
if anything else wrote one.
"""

from __future__ import annotations

from pg8000.native import Connection

from totes.identifiers import quote, quote_all
from totes.star.model import CAPTURE_SEQ, StarTable
from totes.warehouse import plans
from totes.warehouse.results import TableResult
from totes.warehouse.staging import LOADED_BATCH, loaded_columns, staging_name

# The update's join and the insert's anti-join probe the dimension's primary key once per staged
# row when the dimension takes more than this many times the staged table's pages (``plans``);
# otherwise the planner may hash-join the whole dimension in every batch, an O(table) cost for
# a batch of a few rows. Measured: docs/load.md "Alternatives measured (5)".
PROBE_ABOVE_BATCHES = 2


def merge_dimension(
    con: Connection, batch: str, seq: int, table: StarTable, staged: int
) -> TableResult:
    """Merge the newest staged row per key, replacing a stored row only when the incoming
    ``(capture_seq, source_version[, oldest_version])`` is greater as a row. ``capture_seq``
    (the batch's capture, in commit order) decides: a version stamped in the future and then
    corrected with an older stamp ends as the correction. The stamps order only rows of equal
    capture, i.e. those of batches from before capture by commit order (all 0); for the joined
    dimensions the newest stamp alone can tie between two different snapshots, so the oldest
    breaks the tie. ``source_deleted_at`` is left to the deletion marks (``deletes``).

    The stored rows are updated first (from the newest staged row per key), then the keys not
    stored yet inserted (filtered before the sort: a batch of stored keys sorts nothing); the
    counts are the two statements' row counts. A staged row neither statement writes (older
    than or equal to the stored one) is not checked against the warehouse's NOT NULL columns,
    as for a fact version already stored; the upsert's speculative insertion checked it and
    failed the batch. A row that is written is checked, and a NULL fails the batch naming
    table and column. A row without a stamp is the oldest of its key (``NULLS LAST``): never
    chosen over a stamped one."""
    cols = loaded_columns(table)
    key = quote(table.key)
    stage = quote(staging_name(table))
    # NULLS LAST: ``DESC`` sorts NULLs first, so a row without a stamp was the "newest", its
    # comparison unknown, and a newer row of its key was never written.
    newest_first = (
        f"{key}, {', '.join(f'{quote(stamp)} DESC NULLS LAST' for stamp in table.lineage)}"
    )
    written = cols[1:]
    stored = quote_all((CAPTURE_SEQ, *table.lineage), alias="d")
    incoming = ", ".join(["CAST(:seq AS bigint)", quote_all(table.lineage, alias="i")])
    probes = plans.much_larger_than_batch(con, table, PROBE_ABOVE_BATCHES)
    with plans.index_probes(con, probes):
        con.run(
            f"UPDATE {quote(table.name)} d"  # noqa: S608  # nosec B608
            f" SET ({quote_all(written)}, {quote(CAPTURE_SEQ)}, {quote(LOADED_BATCH)})"
            f" = ({quote_all(written, alias='i')}, CAST(:seq AS bigint), CAST(:batch AS varchar))"
            f" FROM (SELECT DISTINCT ON ({key}) * FROM {stage} ORDER BY {newest_first}) AS i"
            f" WHERE d.{key} = i.{key} AND ROW({stored}) < ROW({incoming})",
            batch=batch,
            seq=seq,
        )
        updated = int(con.row_count)
        names = quote_all([*cols, CAPTURE_SEQ, LOADED_BATCH])
        con.run(
            f"INSERT INTO {quote(table.name)} ({names})"  # noqa: S608  # nosec B608
            f" SELECT DISTINCT ON ({key}) {quote_all(cols, alias='i')}, CAST(:seq AS bigint),"
            f" CAST(:batch AS varchar) FROM {stage} AS i"
            f" WHERE NOT EXISTS (SELECT 1 FROM {quote(table.name)} d WHERE d.{key} = i.{key})"
            f" ORDER BY {newest_first}",
            batch=batch,
            seq=seq,
        )
        inserted = int(con.row_count)
    return TableResult(staged, inserted, updated)
