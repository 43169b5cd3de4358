"""Merge one processed batch into the warehouse: one batch, one transaction.

The steps, each in its own module:

- ``ledger``: the batch's ledger row, inserted first (``ON CONFLICT DO NOTHING``): a batch
  already in the ledger is acknowledged and skipped, and a second delivery of a batch being
  loaded waits for the first's transaction, then is skipped; then the load lock, one writer at
  a time for every step below;
- ``backfill``: a first capture's facts, the bulk of a backfill's rows, COPYed straight in
  *before* the load lock, so the loads of a backfill's batches overlap (load's reserved
  concurrency) instead of queueing for the whole of each other's COPYs. Under the lock the
  choice is made again. Had it changed (a tombstone committed meanwhile), had the load holding
  the lock come to wait for these rows (the batch gives way: ``ledger.lock_unless_blocking``),
  or had PostgreSQL broken a deadlock, the transaction is rolled back and the batch loaded
  again with everything under the lock;
- ``staging``: every table of the batch (and its deletions) bulk-copied (``COPY ... FROM
  STDIN`` in PostgreSQL's binary format, ``binary_copy``) into a temporary staging table;
- ``dimensions``: merges that move only forward in commit order (an update of the stored rows,
  which change only when the incoming ``(capture_seq, source_version[, oldest_version])`` is
  greater as a row, then an insert of the keys not stored yet), so batches applied in any
  order converge;
- ``calendar``: ``dim_date`` inserted where missing (a calendar row never changes);
- ``parking``: facts referencing a dimension row transform set aside (and the warehouse lacks)
  wait in a park; every load releases the parked rows whose references now resolve;
- ``references``: the facts' references checked against the batch's own dimension rows (in
  Arrow) and the rest against the warehouse's dimensions (the foreign keys are not enforced by
  PostgreSQL, migration 0006);
- ``facts``: a version (natural id,
  last_updated) not stored yet is inserted, one stored by an older capture rewritten, so both
  the original and every changed version stay, each exactly once;
- ``deletes``: the batch's deletions upserted into the tombstones, then ``source_deleted_at``
  recomputed for the keys the batch touched.

This module orders them and owns the transaction: any failure rolls the whole batch back and
is raised naming the batch, the step, the table and the cause. Every batch, one row or a
million, takes the same path: no DDL, no lock stronger than ROW EXCLUSIVE on a star table, a
cost that follows the batch, not the table (docs/load.md "One load path").
"""

from __future__ import annotations

import contextlib

import pyarrow as pa
from pg8000.exceptions import DatabaseError, InterfaceError
from pg8000.native import Connection

from totes.errors import DatabaseUnavailable, LoadFailed
from totes.identifiers import quote
from totes.lake import Manifest, empty_table, schema_fingerprint
from totes.manifest_checks import Capture, ManifestRefused, capture
from totes.observability import logger
from totes.server_errors import describe_error
from totes.star.model import (
    DELETED_KEYS,
    DELETED_KEYS_SCHEMA,
    STAR_TABLES,
    STAR_TABLES_BY_NAME,
    StarTable,
)
from totes.warehouse import backfill, deletes, facts, ledger, parking, references
from totes.warehouse.binary_copy import Unencodable
from totes.warehouse.calendar import merge_calendar
from totes.warehouse.dimensions import merge_dimension
from totes.warehouse.results import LoadResult, TableResult
from totes.warehouse.staging import stage, stage_deleted_keys, staging_name

# Server memory per sort or hash of the batch's statements (the DISTINCT ON of the dimension
# merges and of the fact insert), for the batch's transaction only: a 1M-row batch sorts in
# memory (~125MB) where the 4MB default spilled ~94MB to disk (fact insert 8.1 s -> 4.8 s).
# Those statements run under the load lock, so this is at most one such sort at a time.
SORT_MEMORY = "256MB"
# PostgreSQL's SQLSTATE for the transaction it failed to break a deadlock.
DEADLOCK_DETECTED = "40P01"
# A batch's attempts: facts copied before the lock, then everything under it (twice). A batch
# holding copied facts waits for the lock without queueing and gives way (rolls back) as soon
# as the holder waits for it (``ledger.lock_unless_blocking``): PostgreSQL's deadlock check
# would otherwise fail the load under the lock, every time. Deadlocks it still breaks (two
# batches' COPYs before the lock each waiting for a version the other copied) are loaded again.
ATTEMPTS = 3


class _Again(Exception):
    """This attempt was rolled back; load the batch again, everything under the lock."""


def expected_fingerprint(table_name: str) -> str:
    """The schema fingerprint a processed file of this table must carry (``KeyError`` for a
    table that is neither a star table nor ``deleted_keys``)."""
    if table_name == DELETED_KEYS:
        return schema_fingerprint(DELETED_KEYS_SCHEMA)
    return schema_fingerprint(STAR_TABLES_BY_NAME[table_name].arrow_schema)


def load_batch(con: Connection, manifest: Manifest, tables: dict[str, pa.Table]) -> LoadResult:
    """Merge ``tables`` (star table name -> Arrow table with the processed schema, and
    optionally ``deleted_keys``) of the batch ``manifest`` names, atomically and at most once.
    ``con`` is a pg8000 native connection in autocommit state; if the connection breaks
    mid-batch the caller must discard it."""
    batch = manifest.batch_id
    unknown = sorted(set(tables) - set(STAR_TABLES_BY_NAME) - {DELETED_KEYS})
    if unknown:
        raise LoadFailed(f"batch {batch}: unknown star table(s) {unknown}")
    capture = _capture(batch, manifest)
    ordered = [t for t in STAR_TABLES if t.name in tables]
    arrays = {t.name: _conform(batch, t, tables[t.name]) for t in ordered}
    deleted = _deletions(batch, tables.get(DELETED_KEYS))
    if deleted.num_rows and (capture.hi_utc is None or not capture.seq):
        raise LoadFailed(
            f"batch {batch}: deletes keys but its manifest carries no hi_utc or capture_seq"
            " (a deletion is ordered by its capture)"
        )

    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _attempt(con, manifest, capture, ordered, arrays, deleted, attempt)
        except _Again as again:
            logger.info(
                "batch loaded again, everything under the load lock",
                extra={"batch": batch, "attempt": attempt, "reason": str(again)},
            )
    raise AssertionError("unreachable: the last attempt raises or returns")  # pragma: no cover


def _attempt(
    con: Connection,
    manifest: Manifest,
    capture: Capture,
    ordered: list[StarTable],
    arrays: dict[str, pa.Table],
    deleted: pa.Table,
    attempt: int,
) -> LoadResult:
    """One transaction of the batch (``load_batch``); ``_Again`` when it was rolled back to be
    tried once more, everything under the lock."""
    batch = manifest.batch_id
    step = ("ledger", ledger.LEDGER)
    early: dict[str, TableResult] = {}
    try:
        con.run("BEGIN")
        if not ledger.claim(con, manifest, capture.seq):
            con.run("ROLLBACK")
            return LoadResult(batch, loaded=False)
        con.run(f"SET LOCAL work_mem = '{SORT_MEMORY}'")
        refused: set[str] = set()  # facts whose COPY met a stored version: staged
        if attempt == 1:
            step = ("reading", ledger.LEDGER)
            rewrite = ledger.older_capture_loaded(con, capture.seq)
            step = ("reading", deletes.TOMBSTONES)
            direct = _direct(con, ordered, arrays, capture, deleted, rewrite)
            for table in ordered:
                if table.kind == "fact" and table.name in direct:
                    step = ("copying", table.name)
                    rows = arrays[table.name]
                    copied = backfill.copy_versions(con, batch, capture.seq, table, rows)
                    if copied is None:
                        refused.add(table.name)
                    else:
                        early[table.name] = copied
        step = ("waiting for", "the load lock")
        if not early:
            ledger.lock(con)
        elif not ledger.lock_unless_blocking(con):
            raise _Again(f"its copied {sorted(early)} blocked the load holding the lock")
        step = ("reading", ledger.LEDGER)
        rewrite = ledger.older_capture_loaded(con, capture.seq)
        step = ("reading", deletes.TOMBSTONES)
        direct = _direct(con, ordered, arrays, capture, deleted, rewrite)
        if not direct >= set(early):
            raise _Again(f"{sorted(set(early) - direct)} no longer copied straight in")
        direct -= refused
        for table in ordered:
            if table.name not in direct:
                step = ("staging", table.name)
                stage(con, table, arrays[table.name])
        if deleted.num_rows:
            step = ("staging", DELETED_KEYS)
            stage_deleted_keys(con, deleted)
        results: dict[str, TableResult] = {}
        for table in ordered:
            staged = arrays[table.name].num_rows
            if table.kind == "fact":
                step = ("parking", table.name)
                parked = parking.park(con, batch, capture.seq, table, capture.set_aside)
                step = ("checking the references of", table.name)
                # Every dimension precedes the facts in STAR_TABLES: those of this batch are
                # merged by now, so their staged keys are in the warehouse.
                dims = {n: arrays[n] for n in results if STAR_TABLES_BY_NAME[n].kind != "fact"}
                references.check_staged_references(
                    con,
                    batch,
                    table,
                    arrays[table.name],
                    dims,
                    capture.set_aside,
                    staged=table.name not in direct,
                )
                merged = early.get(table.name)
                if merged is None and table.name in direct:
                    step = ("copying", table.name)
                    rows = arrays[table.name]
                    merged = backfill.copy_versions(con, batch, capture.seq, table, rows)
                    if merged is None:  # a version already stored: the staged way
                        direct.discard(table.name)
                        stage(con, table, rows)
                if merged is None:
                    step = ("merging", table.name)
                    merged = facts.merge_fact(con, batch, capture.seq, table, staged, rewrite)
                results[table.name] = merged.plus(parked=parked)
            elif table.name == "dim_date":
                step = ("merging", table.name)
                results[table.name] = merge_calendar(con, table, staged)
            else:
                rows, copied = arrays[table.name], TableResult(0, 0)
                if table.name in direct:
                    step = ("copying", table.name)
                    new_keys, rows = backfill.copy_new_keys(con, batch, capture.seq, table, rows)
                    if new_keys is None:  # a key twice: every row the staged way
                        direct.discard(table.name)
                    else:
                        copied = new_keys
                    if rows.num_rows:  # the rows of stored keys (or all of them)
                        stage(con, table, rows)
                step = ("merging", table.name)
                merged = TableResult(0, 0)
                if rows.num_rows or table.name not in direct:
                    merged = merge_dimension(con, batch, capture.seq, table, rows.num_rows)
                results[table.name] = TableResult(
                    staged, copied.inserted + merged.inserted, merged.updated
                )
        released: set[str] = set()
        step = ("releasing parked rows of", "the facts")
        for table in parking.waiting(con):
            step = ("releasing parked rows of", table.name)
            moved = parking.release(con, table)
            if moved:
                released.add(table.name)
                results[table.name] = _result(results, table).plus(released=moved)
        deleted_keys: dict[str, int] = {}
        if deleted.num_rows:
            step = ("recording deletions in", deletes.TOMBSTONES)
            deleted_keys = deletes.record_deletions(con, capture.seq, capture.hi_utc)
        touched = {
            t.name: _touched(
                t, t.name in arrays and t.name not in direct, t.name in released, deleted_keys
            )
            for t in deletes.TRACKED_TABLES
        }
        step = ("marking deletions in", deletes.TOMBSTONES)
        marking = deletes.with_tombstones(
            con, [t for t in deletes.TRACKED_TABLES if touched[t.name]]
        )
        for table in deletes.TRACKED_TABLES:
            step = ("marking deletions in", table.name)
            counts = {"deleted_keys": deleted_keys.get(table.name, 0)}
            if table.name in marking:
                marked, unmarked = deletes.recompute_marks(con, table, touched[table.name])
                counts.update(marked=marked, unmarked=unmarked)
            if any(counts.values()):
                results[table.name] = _result(results, table).plus(**counts)
        step = ("ledger", ledger.LEDGER)
        ordered_results = {t.name: results[t.name] for t in STAR_TABLES if t.name in results}
        result = LoadResult(batch, loaded=True, tables=ordered_results)
        ledger.record(con, result)
        con.run("COMMIT")
        return result
    except LoadFailed:
        _rollback(con)
        raise
    except Unencodable as exc:  # names the column, never the value
        _rollback(con)
        what, table_name = step
        raise LoadFailed(f"batch {batch}: {what} {table_name} failed: {exc}") from None
    except DatabaseError as exc:
        _rollback(con)
        deadlock = _sqlstate(exc) == DEADLOCK_DETECTED
        if deadlock and attempt < ATTEMPTS:
            raise _Again(f"deadlock while {step[0]} {step[1]}") from None
        what, table_name = step
        tries = f" (the last of {ATTEMPTS} attempts)" if deadlock else ""
        raise LoadFailed(
            f"batch {batch}: {what} {table_name} failed: {_describe(exc)}{tries}"
        ) from None
    except (InterfaceError, OSError) as exc:
        _rollback(con)
        what, table_name = step
        raise DatabaseUnavailable(
            f"batch {batch}: lost the warehouse connection while {what} {table_name}: {exc}"
        ) from None
    except BaseException:
        _rollback(con)
        raise


def _capture(batch: str, manifest: Manifest) -> Capture:
    """The manifest's capture fields, or a refusal naming what is wrong (before the
    transaction: a malformed ``hi_utc`` never reaches the ledger or a commit)."""
    try:
        return capture(manifest.extra)
    except ManifestRefused as exc:
        raise LoadFailed(f"batch {batch}: {exc}") from None


def _deletions(batch: str, data: pa.Table | None) -> pa.Table:
    """The batch's ``deleted_keys`` in their schema (empty if none), naming unknown tables."""
    schema = DELETED_KEYS_SCHEMA
    if data is None:
        return empty_table(schema)
    missing = [n for n in schema.names if n not in data.column_names]
    wrong = [
        f"{f.name} is {data.schema.field(f.name).type}, expected {f.type}"
        for f in schema
        if f.name not in missing and not data.schema.field(f.name).type.equals(f.type)
    ]
    if missing or wrong:
        raise LoadFailed(
            f"batch {batch}: table {DELETED_KEYS} lacks column(s) {missing} or has wrong"
            f" types: {'; '.join(wrong)}"
        )
    data = data.select(schema.names)
    tracked = {t.name for t in deletes.TRACKED_TABLES}
    names = set(data.column("star_table").unique().to_pylist())
    if names - tracked or data.column("key").null_count:
        # Star tables are named; any other name is a row value of the file, only counted.
        named = sorted(n for n in names - tracked if n in STAR_TABLES_BY_NAME)
        others = len(names - tracked) - len(named)
        unknown = f" and of {others} name(s) no star table has" if others else ""
        raise LoadFailed(
            f"batch {batch}: table {DELETED_KEYS} deletes keys of {named}{unknown} or NULL"
            f" keys; only keys of {sorted(tracked)} can be deleted"
        )
    return data


def _direct(
    con: Connection,
    ordered: list[StarTable],
    arrays: dict[str, pa.Table],
    capture: Capture,
    deleted: pa.Table,
    rewrite: bool,
) -> set[str]:
    """The tables this batch may COPY straight in (``backfill.copyable``; ``rewrite``: an
    older capture is loaded, ``ledger.older_capture_loaded``): not staged unless that fails."""
    tombstoned = set() if rewrite else _tombstoned(con, ordered, deleted)
    return {
        t.name
        for t in ordered
        if backfill.copyable(t, arrays[t.name].num_rows, rewrite, capture.set_aside, tombstoned)
    }


def _sqlstate(exc: DatabaseError) -> str | None:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return info.get("C")


def _tombstoned(con: Connection, tables: list[StarTable], deleted: pa.Table) -> set[str]:
    """The tracked tables among ``tables`` (facts and dimensions: both may be copied straight
    in) that have a tombstone, stored or in this batch's deletions."""
    tracked = [t for t in tables if t.tracked]
    deleting = set(deleted.column("star_table").unique().to_pylist()) if deleted.num_rows else set()
    return deletes.with_tombstones(con, tracked) | {t.name for t in tracked if t.name in deleting}


def _touched(
    table: StarTable, staged: bool, released: bool, deleted_keys: dict[str, int]
) -> list[str]:
    """Relations selecting the keys of ``table`` this batch touched: its staged rows, the
    parked rows it released and its deletions."""
    key = quote(table.key)
    touched = []
    if staged:
        touched.append(f"SELECT {key} FROM {quote(staging_name(table))}")  # noqa: S608  # nosec B608
    if released:
        released_rows = quote(parking.release_name(table))
        touched.append(f"SELECT {key} FROM {released_rows}")  # noqa: S608  # nosec B608
    if deleted_keys.get(table.name):
        deletions = quote(deletes.STAGED_DELETIONS)
        touched.append(f"SELECT key FROM {deletions} WHERE star_table = :name")  # noqa: S608  # nosec B608
    return touched


def _result(results: dict[str, TableResult], table: StarTable) -> TableResult:
    return results.get(table.name) or TableResult(0, 0)


def _conform(batch: str, table: StarTable, data: pa.Table) -> pa.Table:
    """The batch's table in the model's column order and types, or a clear refusal."""
    schema = table.arrow_schema
    missing = [n for n in schema.names if n not in data.column_names]
    if missing:
        raise LoadFailed(f"batch {batch}: table {table.name} lacks column(s) {missing}")
    data = data.select(schema.names)
    wrong = [
        f"{f.name} is {data.schema.field(f.name).type}, expected {f.type}"
        for f in schema
        if not data.schema.field(f.name).type.equals(f.type)
    ]
    if wrong:
        raise LoadFailed(f"batch {batch}: table {table.name} has wrong types: {'; '.join(wrong)}")
    # Nullability is the warehouse's to enforce: its NOT NULL errors name table and column.
    return data.cast(pa.schema([f.with_nullable(True) for f in schema]))


def _rollback(con: Connection) -> None:
    with contextlib.suppress(Exception):  # a broken connection has nothing left to roll back
        con.run("ROLLBACK")


def _describe(exc: DatabaseError) -> str:
    """What PostgreSQL refused (``server_errors.describe``): table, column, key column(s) and
    constraint, never a row value. Load's exception, logs and failure-queue record carry this
    text (issue 14, M5)."""
    return describe_error(exc)
