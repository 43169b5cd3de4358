"""Fact merges, bulk path (backfills): drop, insert, rebuild, re-validate.

Inside the batch's transaction the fact table's foreign keys and secondary (BI) indexes are
dropped, the new versions inserted, each index rebuilt by one sort and the foreign keys
re-added, which validates every stored row set-based. A failed validation is diagnosed with
the per-row path's anti-joins, so the error still names the missing ids. The fact table is
locked against readers (ACCESS EXCLUSIVE) until commit, so ``auto`` takes this path only for a
batch that is large both absolutely and relative to the table (``set_based_fk_check``).
"""

from __future__ import annotations

from pg8000.exceptions import DatabaseError
from pg8000.native import Connection

from totes.identifiers import quote
from totes.star.model import StarTable
from totes.warehouse.facts import batch_rows, check_references, merge_versions
from totes.warehouse.results import TableResult

# Where bulk pays. Per inserted row the per-row path pays the FK triggers and the maintenance
# of every BI index; per stored row the bulk path pays re-validating the FKs and rebuilding the
# indexes. The first measurement (per-row ~65 us, bulk ~6 us, bulk winning above ~1/11 of the
# table) predates migration 0003, which made the four date indexes BRIN: cheaper to maintain
# per row and to rebuild. Re-measured after it (``python -m totes_tools.warehouse.bench
# --scale 300000``, PostgreSQL 18.4, 2 shared cores, one run): the whole merge of 301k rows
# into an empty warehouse takes 14.0 s per-row and 4.4 s bulk, next to a raw COPY of 1.3 s,
# i.e. roughly 40 us of FK and index work per inserted row against roughly 7 us per stored row
# (break-even nearer 1/5 of the table than 1/10). The thresholds are unchanged; they keep
# readers' lock waits to real backfills.
BULK_FACT_ROWS = 50_000
BULK_FACT_SHARE = 1 / 10
# Server memory per sort of a bulk batch (work_mem: the insert's DISTINCT ON sort;
# maintenance_work_mem: each index rebuild), for the batch's transaction only. A 1M-row batch
# sorts in memory (~125MB) where the 4MB default spilled ~94MB to disk (insert 8.1 s -> 4.8 s).
# Loads are serialised, so this is at most one such sort at a time.
BULK_SORT_MEMORY = "256MB"


def set_based_fk_check(batch_rows: int, stored_rows: int) -> bool:
    """Whether the bulk path (drop foreign keys and BI indexes, insert, rebuild, re-validate)
    beats maintaining them row by row: only for a batch that is large and a sizeable share of
    the table it joins."""
    return batch_rows >= BULK_FACT_ROWS and batch_rows >= BULK_FACT_SHARE * stored_rows


def stored_rows(con: Connection, table: StarTable) -> int:
    """The planner's row estimate (no scan); -1 (never analysed) counts as empty."""
    [[estimate]] = con.run(
        "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = CAST(:t AS regclass)",
        t=table.name,
    )
    return int(estimate)


def merge_fact_bulk(
    con: Connection, batch: str, seq: int, table: StarTable, staged: int
) -> TableResult:
    """The foreign keys and the secondary (BI) indexes are dropped, the rows written (the same
    version semantics as the per-row path), the indexes rebuilt by one sort each and the
    foreign keys re-added, which validates every stored row set-based; only if that fails are
    the references diagnosed, so the error still names the missing ids."""
    con.run(f"SET LOCAL work_mem = '{BULK_SORT_MEMORY}'")
    con.run("SAVEPOINT fact_bulk")
    foreign_keys = _drop_foreign_keys(con, table)
    indexes = _drop_secondary_indexes(con, table)
    inserted, updated = merge_versions(con, table, batch_rows(table), batch=batch, seq=seq)
    if not inserted and not updated:  # a redelivery: undo the drops, rebuild nothing
        con.run("ROLLBACK TO SAVEPOINT fact_bulk")
        return TableResult(staged, 0)
    con.run(f"SET LOCAL maintenance_work_mem = '{BULK_SORT_MEMORY}'")
    for definition in indexes:
        con.run(definition)
    if foreign_keys:
        additions = ", ".join(
            f"ADD CONSTRAINT {name} {definition}" for name, definition in foreign_keys
        )
        con.run("SAVEPOINT fact_references")
        try:
            con.run(f"ALTER TABLE {quote(table.name)} {additions}")
        except DatabaseError:
            con.run("ROLLBACK TO SAVEPOINT fact_references")
            check_references(con, batch, table)  # names the missing ids if that was the cause
            raise
        con.run("RELEASE SAVEPOINT fact_references")
    return TableResult(staged, inserted, updated)


def _drop_foreign_keys(con: Connection, table: StarTable) -> list[tuple[str, str]]:
    """Drop the fact table's foreign keys (inside the batch's transaction) and return their
    names (quoted by the catalog) and definitions, to re-add after the insert."""
    foreign_keys = con.run(
        "SELECT quote_ident(conname), pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = CAST(:table AS regclass) AND contype = 'f' ORDER BY conname",
        table=table.name,
    )
    if foreign_keys:
        drops = ", ".join(f"DROP CONSTRAINT {name}" for name, _ in foreign_keys)
        con.run(f"ALTER TABLE {quote(table.name)} {drops}")
    return [(name, definition) for name, definition in foreign_keys]


def _drop_secondary_indexes(con: Connection, table: StarTable) -> list[str]:
    """Drop the fact table's indexes that back no constraint (the BI indexes; the primary and
    version keys stay) and return their definitions, read from the catalog, to rebuild."""
    indexes = con.run(
        "SELECT quote_ident(c.relname), pg_get_indexdef(i.indexrelid)"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = CAST(:table AS regclass) AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid"
        " AND k.conrelid = i.indrelid) ORDER BY c.relname",
        table=table.name,
    )
    if indexes:
        con.run(f"DROP INDEX {', '.join(name for name, _ in indexes)}")
    return [definition for _, definition in indexes]
