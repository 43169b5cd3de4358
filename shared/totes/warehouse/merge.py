"""Merge one processed batch into the warehouse: one batch, one transaction.

The steps, each in its own module:

- ``ledger``: the load lock and the batch's ledger row, inserted first (``ON CONFLICT DO
  NOTHING``): a batch already in the ledger is acknowledged and skipped, and two concurrent
  deliveries of one batch load it once;
- ``staging``: every table of the batch bulk-copied (``COPY ... FROM STDIN``, CSV written by
  Arrow) into a temporary staging table;
- ``dimensions``: upserts that move only forward (the stored row changes only when the
  incoming lineage, ``source_version`` then ``oldest_version`` for the joined dimensions, is
  newer compared as a row), so batches applied in any order converge;
- ``calendar``: ``dim_date`` inserted where missing (a calendar row never changes);
- ``facts`` (per-row path, incremental batches) and ``fact_bulk`` (bulk path, backfills):
  facts inserted where that version (natural id, last_updated) is not stored yet, so both the
  original and every changed version stay, each exactly once.

This module orders them and owns the transaction: any failure rolls the whole batch back and
is raised naming the batch, the step, the table and the cause.
"""

from __future__ import annotations

import contextlib
import re

import pyarrow as pa
from pg8000.exceptions import DatabaseError, InterfaceError
from pg8000.native import Connection

from totes.errors import DatabaseUnavailable, LoadFailed
from totes.lake import Manifest, schema_fingerprint
from totes.star.model import STAR_TABLES, STAR_TABLES_BY_NAME, StarTable
from totes.warehouse import fact_bulk, facts, ledger
from totes.warehouse.calendar import merge_calendar
from totes.warehouse.dimensions import merge_dimension
from totes.warehouse.results import LoadResult, TableResult
from totes.warehouse.staging import stage

FK_CHECKS = ("auto", "per-row", "set-based")


def expected_fingerprint(table_name: str) -> str:
    """The schema fingerprint a processed file of this table must carry."""
    return schema_fingerprint(STAR_TABLES_BY_NAME[table_name].arrow_schema)


def load_batch(
    con: Connection, manifest: Manifest, tables: dict[str, pa.Table], *, fk_check: str = "auto"
) -> LoadResult:
    """Merge ``tables`` (star table name -> Arrow table with the processed schema) of the batch
    ``manifest`` names, atomically and at most once. ``con`` is a pg8000 native connection in
    autocommit state; if the connection breaks mid-batch the caller must discard it."""
    if fk_check not in FK_CHECKS:
        raise ValueError(f"fk_check must be one of {FK_CHECKS}")
    batch = manifest.batch_id
    unknown = sorted(set(tables) - set(STAR_TABLES_BY_NAME))
    if unknown:
        raise LoadFailed(f"batch {batch}: unknown star table(s) {unknown}")
    ordered = [t for t in STAR_TABLES if t.name in tables]
    arrays = {t.name: _conform(batch, t, tables[t.name]) for t in ordered}

    step = ("ledger", ledger.LEDGER)
    try:
        con.run("BEGIN")
        ledger.lock(con)
        if not ledger.claim(con, manifest):
            con.run("ROLLBACK")
            return LoadResult(batch, loaded=False)
        for table in ordered:
            step = ("staging", table.name)
            stage(con, table, arrays[table.name])
        results: dict[str, TableResult] = {}
        for table in ordered:
            step = ("merging", table.name)
            staged = arrays[table.name].num_rows
            if table.kind == "fact":
                bulk = fk_check == "set-based" or (
                    fk_check == "auto"
                    and fact_bulk.set_based_fk_check(staged, fact_bulk.stored_rows(con, table))
                )
                results[table.name] = _merge_fact(con, batch, table, staged, bulk)
            elif table.name == "dim_date":
                results[table.name] = merge_calendar(con, table, staged)
            else:
                results[table.name] = merge_dimension(con, batch, table, staged)
        step = ("ledger", ledger.LEDGER)
        result = LoadResult(batch, loaded=True, tables=results)
        ledger.record(con, result)
        con.run("COMMIT")
        return result
    except LoadFailed:
        _rollback(con)
        raise
    except DatabaseError as exc:
        _rollback(con)
        what, table_name = step
        raise LoadFailed(f"batch {batch}: {what} {table_name} failed: {_describe(exc)}") from None
    except (InterfaceError, OSError) as exc:
        _rollback(con)
        what, table_name = step
        raise DatabaseUnavailable(
            f"batch {batch}: lost the warehouse connection while {what} {table_name}: {exc}"
        ) from None
    except BaseException:
        _rollback(con)
        raise


def _merge_fact(
    con: Connection, batch: str, table: StarTable, staged: int, bulk: bool
) -> TableResult:
    """One fact table on the path chosen for it (both give the same warehouse)."""
    if bulk:
        return fact_bulk.merge_fact_bulk(con, batch, table, staged)
    return facts.merge_fact_per_row(con, batch, table, staged)


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


# SQLSTATE classes whose primary message names objects only (table, column, constraint, type,
# role), never a value: connection (08), integrity constraint violations (23), transaction
# state (25), rollbacks such as deadlocks (40), syntax or access rules (42), resources (53),
# program limits (54), object state such as locks (55) and operator intervention such as
# timeouts (57). The rest, data exceptions (22) above all, may quote the offending value
# ('invalid input syntax for type integer: "..."'), so only their condition name is kept.
_MESSAGE_NAMES_ONLY = frozenset({"08", "23", "25", "40", "42", "53", "54", "55", "57"})
_CONDITIONS = {
    "22001": "value too long for its column",
    "22003": "numeric value out of range",
    "22007": "invalid datetime format",
    "22008": "datetime field overflow",
    "22012": "division by zero",
    "22021": "character not in repertoire",
    "22P02": "invalid text representation",
}
# The key columns of a unique, exclusion or foreign-key violation's DETAIL, without the
# values that follow: 'Key (staff_id)=(42) already exists.' gives "staff_id".
_DETAIL_KEY = re.compile(r"^Key \((?P<columns>.+?)\)=\(")


def _describe(exc: DatabaseError) -> str:
    """What PostgreSQL refused, naming table, column, key column(s) and constraint, never a
    row value: its DETAIL ("Failing row contains (...)", "Key (id)=(42) already exists.") and
    context (a COPY line) are left out, as is the message of a class that may quote a value.
    Load's exception, logs and failure-queue record carry this text (issue 14, M5)."""
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    if not info:
        return f"{type(exc).__name__} without PostgreSQL's error fields"
    code = str(info.get("C", "?"))
    if code[:2] in _MESSAGE_NAMES_ONLY:
        parts = [str(info.get("M", "error"))]
    else:
        parts = [_CONDITIONS.get(code, f"error of SQLSTATE class {code[:2]}")]
    for label, field in (("table", "t"), ("column", "c"), ("constraint", "n"), ("type", "d")):
        if info.get(field):
            parts.append(f"{label} {info[field]}")
    key = _DETAIL_KEY.match(str(info.get("D", "")))
    if key:
        parts.append(f"key ({key['columns']})")
    return f"{'; '.join(parts)} [SQLSTATE {code}]"
