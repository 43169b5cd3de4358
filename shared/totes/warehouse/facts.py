"""Fact merges: one path for every batch, and the steps the park shares.

A fact row is one version of a source row (natural id, ``last_updated``), stored once: a version
not stored yet is inserted, so the original and every changed version stay. A version delivered
again by a later capture (a greater ``capture_seq``) rewrites the stored one in place: its
content may differ without a new stamp (an ``ON UPDATE CASCADE`` keeps ``last_updated``), and
even with equal content the later capture records that the key was alive then, which decides
whether a deletion of the key is newer (``deletes``). An equal or older capture changes nothing,
so batches converge in any order.

The fact tables' foreign keys are not enforced by PostgreSQL (migration 0006), so the load
checks every batch's references before its versions are written (``references``). The versions
are written with every index maintained: no DDL, no lock stronger than ROW EXCLUSIVE on any
star table, so BI readers never wait on a load.
"""

from __future__ import annotations

from pg8000.native import Connection

from totes.identifiers import quote, quote_all
from totes.star.model import CAPTURE_SEQ, StarTable
from totes.warehouse import plans
from totes.warehouse.results import TableResult
from totes.warehouse.staging import LOADED_BATCH, loaded_columns, staging_name


def version_columns(table: StarTable) -> list[str]:
    return [table.key, "last_updated_date", "last_updated_time"]


def batch_rows(table: StarTable) -> str:
    """The batch's staged rows of ``table`` as a merge source: the loaded columns, then the
    batch's ``capture_seq`` (``:seq``) and batch id (``:batch``)."""
    return (
        f"(SELECT s.*, CAST(:seq AS bigint) AS {quote(CAPTURE_SEQ)},"  # noqa: S608  # nosec B608
        f" CAST(:batch AS varchar) AS {quote(LOADED_BATCH)}"
        f" FROM {quote(staging_name(table))} s)"
    )


# The version anti-join (and the rewrite's join) probe the version key's index once per staged
# row when the fact table takes more than this many times the staged table's pages; otherwise
# the planner's hash join reads the whole fact table in every batch, an O(table) cost per batch
# that makes a backfill of k batches O(n * k). Measured: docs/load.md "One load path".
PROBE_ABOVE_BATCHES = 2


def merge_fact(
    con: Connection,
    batch: str,
    seq: int,
    table: StarTable,
    staged: int,
    rewrite: bool = True,
) -> TableResult:
    """The staged facts' versions written with every index maintained (their references are
    checked first: ``references.check_staged_references``). ``rewrite=False``: no stored
    version can be of an older capture (``ledger.older_capture_loaded``), so the rewrite is
    skipped."""
    with plans.index_probes(con, plans.much_larger_than_batch(con, table, PROBE_ABOVE_BATCHES)):
        inserted, updated = merge_versions(
            con, table, batch_rows(table), rewrite=rewrite, batch=batch, seq=seq
        )
    return TableResult(staged, inserted, updated)


def merge_versions(
    con: Connection, table: StarTable, source: str, rewrite: bool = True, **params: object
) -> tuple[int, int]:
    """Write the versions of ``source`` (a relation of the loaded columns, ``capture_seq`` and
    ``loaded_batch_id``; ``params`` fill its placeholders) into the fact table: a stored version
    whose capture is older is rewritten in place, a version not stored yet is inserted, each
    once (the latest capture of a version repeated in ``source`` wins). Returns (inserted,
    updated).

    New versions go in by an anti-join against the version key rather than ``ON CONFLICT DO
    NOTHING``: no speculative insertion per row (measured about twice as fast, three times on
    redelivery). Safe because merges are serialised by the advisory lock; the version key still
    refuses a duplicate if anything else wrote one. (A version another load COPYed before the
    lock, not yet committed, makes this insert wait for that load, which then gives way: it
    rolls back and is loaded again, ``ledger.lock_unless_blocking``.)

    ``rewrite=False`` skips the rewrite (the caller knows no stored version is of an older
    capture): in a backfill it probed the version key once per staged row for nothing, about
    8% of the load's server CPU (docs/load.md "Alternatives measured (2)")."""
    cols = loaded_columns(table)
    version = version_columns(table)
    matches = " AND ".join(f"f.{quote(c)} = i.{quote(c)}" for c in version)
    latest = f"{quote_all(version)}, {quote(CAPTURE_SEQ)} DESC"
    written = [c for c in cols if c not in version] + [CAPTURE_SEQ, LOADED_BATCH]
    updated = 0
    if rewrite:
        con.run(
            f"UPDATE {quote(table.name)} f"  # noqa: S608  # nosec B608
            f" SET ({quote_all(written)}) = ({quote_all(written, alias='i')})"
            f" FROM (SELECT DISTINCT ON ({quote_all(version)}) * FROM {source} AS s"
            f" ORDER BY {latest}) AS i"
            f" WHERE {matches} AND f.{quote(CAPTURE_SEQ)} < i.{quote(CAPTURE_SEQ)}",
            **params,
        )
        updated = int(con.row_count)
    names = quote_all([*cols, CAPTURE_SEQ, LOADED_BATCH])
    con.run(
        f"INSERT INTO {quote(table.name)} ({names})"  # noqa: S608  # nosec B608
        f" SELECT DISTINCT ON ({quote_all(version)}) {names} FROM {source} AS i"
        f" WHERE NOT EXISTS (SELECT 1 FROM {quote(table.name)} f WHERE {matches})"
        f" ORDER BY {latest}",
        **params,
    )
    return int(con.row_count), updated
