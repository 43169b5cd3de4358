"""Load a totesys snapshot (one Parquet file per table, as a pandas export wrote them) into a
PostgreSQL database with the real source types.

The export widened types: money came out as float64, nullable ids as float64 (NaN for null),
timestamps as nanoseconds. Every column is converted to the model's Arrow type first, with
checks that lose nothing silently (money rounded to cents, ids must be whole numbers, enums
must be known labels, text dates must read YYYY-MM-DD); any mismatch raises an error naming
the file and column before the database is touched. Rows then go in through ``COPY FROM
STDIN`` (CSV written by Arrow, no per-row Python), keeping the ids, and the serial sequences
are moved past them. All of it is one transaction.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pg8000.exceptions import DatabaseError

from totes.errors import SchemaDrift
from totes.identifiers import quote
from totes.observability import logger
from totes.source.model import ENUMS, TABLES, Column, Table
from totes_tools.source.ddl import (
    constraint_statements,
    reset_sequences,
    run_statements,
    schema_statements,
)

_DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


class SnapshotMismatch(SchemaDrift):
    """A snapshot file does not match the totesys schema (the message names file and column)."""


def _mismatch(path: Path, column: str, problem: str) -> SnapshotMismatch:
    return SnapshotMismatch(f"snapshot file {path.name}: column {column!r} {problem}")


def _to_int(path: Path, col: Column, arr: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_floating(arr.type):
        finite = pc.fill_null(pc.is_finite(arr), True)
        if not pc.all(finite).as_py():
            raise _mismatch(path, col.name, "holds NaN or infinite values where ids are expected")
        whole = pc.fill_null(pc.equal(arr, pc.floor(arr)), True)
        if not pc.all(whole).as_py():
            raise _mismatch(path, col.name, "holds fractional values where integers are expected")
    elif not pa.types.is_integer(arr.type):
        raise _mismatch(
            path, col.name, f"has type {arr.type}, expected an integer ({col.sql_type})"
        )
    try:
        return arr.cast(pa.int32())
    except pa.ArrowInvalid as exc:
        raise _mismatch(path, col.name, f"does not fit a 32-bit integer: {exc}") from None


def _to_money(path: Path, col: Column, arr: pa.ChunkedArray) -> pa.ChunkedArray:
    target = col.arrow_type
    if pa.types.is_floating(arr.type):
        arr = pc.round(arr, 2)
    elif not (pa.types.is_integer(arr.type) or pa.types.is_decimal(arr.type)):
        raise _mismatch(path, col.name, f"has type {arr.type}, expected a number (numeric(10,2))")
    try:
        return arr.cast(target)
    except pa.ArrowInvalid as exc:
        raise _mismatch(path, col.name, f"does not fit numeric(10,2): {exc}") from None


def _to_text(path: Path, col: Column, arr: pa.ChunkedArray) -> pa.ChunkedArray:
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise _mismatch(path, col.name, f"has type {arr.type}, expected text")
    arr = arr.cast(pa.string())
    present = pc.drop_null(arr)
    if col.enum:
        unknown = pc.unique(
            pc.filter(present, pc.invert(pc.is_in(present, pa.array(ENUMS[col.enum]))))
        )
        if len(unknown):
            raise _mismatch(
                path, col.name, f"holds values outside enum {col.enum}: {unknown.to_pylist()[:5]}"
            )
    if (
        col.sql_type == "varchar(3)"
        and len(present)
        and pc.max(pc.utf8_length(present)).as_py() > 3
    ):
        raise _mismatch(path, col.name, "holds values longer than varchar(3)")
    dates_ok = lambda: pc.all(pc.match_substring_regex(present, _DATE_PATTERN)).as_py()  # noqa: E731
    if col.text_date and len(present) and not dates_ok():
        raise _mismatch(path, col.name, "holds text that is not a YYYY-MM-DD date")
    return arr


def _to_timestamp(path: Path, col: Column, arr: pa.ChunkedArray) -> pa.ChunkedArray:
    if not pa.types.is_timestamp(arr.type) or arr.type.tz is not None:
        raise _mismatch(path, col.name, f"has type {arr.type}, expected a timestamp without zone")
    try:
        return arr.cast(pa.timestamp("ms"))
    except pa.ArrowInvalid:
        raise _mismatch(path, col.name, "has sub-millisecond precision (timestamp(3))") from None


def _to_bool(path: Path, col: Column, arr: pa.ChunkedArray) -> pa.ChunkedArray:
    if not pa.types.is_boolean(arr.type):
        raise _mismatch(path, col.name, f"has type {arr.type}, expected boolean")
    return arr


_CONVERTERS = {
    "serial": _to_int,
    "integer": _to_int,
    "numeric(10,2)": _to_money,
    "boolean": _to_bool,
    "timestamp(3)": _to_timestamp,
}


def conform(path: Path, table: Table, raw: pa.Table) -> pa.Table:
    """The file's columns converted to the model's types and order, or ``SnapshotMismatch``."""
    present = set(raw.column_names)
    for col in table.columns:
        if col.name not in present:
            raise _mismatch(path, col.name, f"is missing (table {table.name})")
    extra = sorted(present - set(table.column_names))
    if extra:
        raise _mismatch(path, extra[0], f"is not a column of table {table.name}")
    arrays = []
    for col in table.columns:
        converted = _CONVERTERS.get(col.sql_type, _to_text)(path, col, raw.column(col.name))
        if col.not_null and converted.null_count:
            raise _mismatch(path, col.name, f"has {converted.null_count} null(s) but is NOT NULL")
        arrays.append(converted)
    return pa.Table.from_arrays(arrays, schema=table.arrow_schema)


def read_snapshot(directory: str | Path) -> dict[str, pa.Table]:
    """Every table of the snapshot, conformed to the model (raises before any database work)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SnapshotMismatch(f"snapshot directory {directory} does not exist")
    tables = {}
    for table in TABLES:
        path = directory / f"{table.name}.parquet"
        if not path.is_file():
            raise SnapshotMismatch(f"snapshot file {path.name} is missing from {directory}")
        try:
            raw = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SnapshotMismatch(
                f"snapshot file {path.name} is not readable Parquet: {exc}"
            ) from None
        tables[table.name] = conform(path, table, raw)
    return tables


def copy_table(con, table: Table, data: pa.Table) -> int:
    """Bulk-load one conformed table through ``COPY FROM STDIN`` (CSV: unquoted empty = NULL)."""
    buffer = io.BytesIO()
    pacsv.write_csv(data, buffer)
    buffer.seek(0)
    columns = ", ".join(quote(c) for c in table.column_names)
    con.run(
        f"COPY {quote(table.name)} ({columns}) FROM STDIN WITH (FORMAT csv, HEADER true)",
        stream=buffer,
    )
    return data.num_rows


def has_source_schema(con) -> bool:
    rows = con.run(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_name = ANY(:names)",
        names=[t.name for t in TABLES],
    )
    return rows[0][0] == len(TABLES)


def load_tables(con, tables: dict[str, pa.Table]) -> dict[str, int]:
    """Create the schema if absent, COPY every table in dependency order, move the sequences;
    one transaction, so a failure leaves nothing half-loaded. On a fresh database keys
    and foreign keys are added after the rows (one index build or set-based validation
    each, not work per row)."""
    fresh = not has_source_schema(con)
    counts = {}
    con.run("BEGIN")
    try:
        if fresh:
            run_statements(con, schema_statements(constraints=False))
        for table in TABLES:
            counts[table.name] = copy_table(con, table, tables[table.name])
        reset_sequences(con)
        if fresh:
            run_statements(con, constraint_statements())
        con.run("COMMIT")
    except DatabaseError as exc:
        con.run("ROLLBACK")
        detail = exc.args[0].get("M", exc) if exc.args and isinstance(exc.args[0], dict) else exc
        raise SnapshotMismatch(f"the source data was refused by the database: {detail}") from None
    except Exception:
        con.run("ROLLBACK")
        raise
    con.run("ANALYZE")
    return counts


def load_snapshot(con, directory: str | Path) -> dict[str, int]:
    """Load the snapshot in ``directory`` into the connected database; rows per table."""
    counts = load_tables(con, read_snapshot(directory))
    logger.info("snapshot loaded", extra={"directory": str(directory), "rows": counts})
    return counts
