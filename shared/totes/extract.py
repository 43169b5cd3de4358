"""Incremental extraction from totesys: the watermark, the self-contained selection SQL and
the bulk COPY -> Arrow path.

Everything here runs inside one ``REPEATABLE READ READ ONLY`` transaction (``snapshot``), so
the clock, the batch plan, the closure of referenced rows and every table's rows all come from
one consistent view of the source.

The window is ``[lo, hi)`` on ``last_updated``. ``hi`` is the source's own clock
(``localtimestamp``: the same zone semantics as its ``timestamp without time zone`` columns)
minus a safety lag, truncated to the columns' millisecond precision; ``lo`` is the previous
batch's ``hi`` minus an overlap. The lag covers transactions still in flight; the overlap
re-reads a stretch of the past so rows committed late with an early stamp are still seen.
Versions read twice are deduplicated downstream by (id, last_updated).

COPY cannot take bind parameters, so the window travels as transaction-local settings
(``set_config(..., true)`` with parameters) that the constant SQL text reads back; SQL
identifiers come only from ``totes.source.model``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.csv as pacsv

from totes.errors import SchemaDrift
from totes.source.model import TABLES, TABLES_BY_NAME, Table

# Source tables that become warehouse facts: their rows are selected by the window only.
FACT_TABLES = ("sales_order", "purchase_order", "payment")

# Dimension rows that embed a parent's columns (dim_staff carries its department's name and
# location, dim_counterparty its legal address): a changed parent pulls in these children.
EMBEDDED_PARENTS: dict[str, str] = {"staff": "department_id", "counterparty": "legal_address_id"}

_LO = "(SELECT current_setting('totes.window_lo')::timestamp)"
_HI = "(SELECT current_setting('totes.window_hi')::timestamp)"

# information_schema.columns.data_type values each model type may have at the source.
_ACCEPTED_TYPES = {
    "serial": {"integer"},
    "integer": {"integer"},
    "text": {"text", "character varying"},
    "varchar(3)": {"character varying", "text", "character"},
    "numeric(10,2)": {"numeric"},
    "boolean": {"boolean"},
    "timestamp(3)": {"timestamp without time zone"},
    '"PaymentTypeName"': {"USER-DEFINED", "text", "character varying"},
    '"TransactionType"': {"USER-DEFINED", "text", "character varying"},
}


def q(identifier: str) -> str:
    """Double-quote an identifier from the model (``transaction`` is a keyword)."""
    return '"' + identifier.replace('"', '""') + '"'


@dataclass(frozen=True)
class Window:
    """``[lo, hi)`` on ``last_updated``, source clock; ``lo`` None takes everything before hi."""

    lo: datetime | None
    hi: datetime

    @property
    def lo_iso(self) -> str | None:
        return iso(self.lo) if self.lo is not None else None

    @property
    def hi_iso(self) -> str:
        return iso(self.hi)


@dataclass(frozen=True)
class Clock:
    """The source clock read at the start of the snapshot."""

    now: datetime  # localtimestamp (source zone, no zone attached)
    hi: datetime  # now - lag, truncated to milliseconds


def iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds")


@contextlib.contextmanager
def snapshot(con) -> Iterator[None]:
    """One read-only repeatable-read transaction: every statement inside sees one snapshot."""
    con.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        con.run("SET LOCAL DateStyle = 'ISO, YMD'")
        yield
    finally:
        con.run("ROLLBACK")


def check_schema(con) -> None:
    """Raise ``SchemaDrift`` naming every missing table, missing column or changed type.

    Extra source columns are ignored: extraction names its columns explicitly.
    """
    rows = con.run(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ANY(:names)",
        names=[t.name for t in TABLES],
    )
    found: dict[str, dict[str, str]] = {}
    for table_name, column_name, data_type in rows:
        found.setdefault(table_name, {})[column_name] = data_type
    problems = []
    for table in TABLES:
        columns = found.get(table.name)
        if columns is None:
            problems.append(f"table {table.name!r} is missing")
            continue
        for col in table.columns:
            actual = columns.get(col.name)
            if actual is None:
                problems.append(f"column {table.name}.{col.name} is missing")
            elif actual not in _ACCEPTED_TYPES[col.sql_type]:
                problems.append(
                    f"column {table.name}.{col.name} has type {actual}, expected {col.sql_type}"
                )
    if problems:
        raise SchemaDrift("source schema drift: " + "; ".join(problems))


def read_clock(con, lag_seconds: float) -> Clock:
    """The source clock now and ``hi`` = now - lag at millisecond precision."""
    now, hi = con.run(
        "SELECT localtimestamp, "
        "date_trunc('milliseconds', localtimestamp - make_interval(secs => CAST(:lag AS float8)))",
        lag=float(lag_seconds),
    )[0]
    return Clock(now=now, hi=hi)


def to_utc(con, value: datetime) -> datetime:
    """The instant a source-clock timestamp names, as an aware UTC datetime (the source's
    TimeZone setting, daylight saving included, decides the offset)."""
    instant = con.run(
        "SELECT CAST(:ts AS timestamp) AT TIME ZONE current_setting('TimeZone')", ts=iso(value)
    )[0][0]
    return instant.astimezone(UTC)


def set_window(con, window: Window) -> None:
    """Publish the window to the constant selection SQL of this transaction."""
    con.run(
        "SELECT set_config('totes.window_lo', :lo, true), set_config('totes.window_hi', :hi, true)",
        lo=window.lo_iso or "-infinity",
        hi=window.hi_iso,
    )


def _changed(alias: str) -> str:
    return f"{alias}.{q('last_updated')} >= {_LO} AND {alias}.{q('last_updated')} < {_HI}"


def _pullers(table: Table) -> list[tuple[Table, str]]:
    """(child table, fk column) pairs whose selected rows need a row of ``table``; references
    to fact rows (transaction -> orders) are not followed: dim_transaction copies the ids."""
    return [
        (child, fk.column)
        for child in TABLES
        for fk in child.foreign_keys
        if fk.table == table.name and table.name not in FACT_TABLES
    ]


def _is_window_only(table: Table) -> bool:
    return table.name not in EMBEDDED_PARENTS and not _pullers(table)


def selected_keys_sql(table: Table, depth: int = 0) -> str:
    """A query of the keys of ``table`` the batch carries: rows changed in the window, rows
    whose embedded parent changed, and rows that other selected rows reference."""
    t = f"t{depth}"
    parts = [f"SELECT {t}.{q(table.key)} FROM {q(table.name)} {t} WHERE {_changed(t)}"]  # noqa: S608  # nosec B608
    fk_column = EMBEDDED_PARENTS.get(table.name)
    if fk_column:
        parent = TABLES_BY_NAME[next(f.table for f in table.foreign_keys if f.column == fk_column)]
        p = f"p{depth}"
        parts.append(
            f"SELECT {t}.{q(table.key)} FROM {q(table.name)} {t} "  # noqa: S608  # nosec B608
            f"JOIN {q(parent.name)} {p} ON {p}.{q(parent.key)} = {t}.{q(fk_column)} "
            f"WHERE {_changed(p)}"
        )
    for child, column in _pullers(table):
        c = f"c{depth}"
        if _is_window_only(child):
            where = _changed(c)
        else:
            where = f"{c}.{q(child.key)} IN ({selected_keys_sql(child, depth + 1)})"
        parts.append(
            f"SELECT {c}.{q(column)} FROM {q(child.name)} {c} "  # noqa: S608  # nosec B608
            f"WHERE {c}.{q(column)} IS NOT NULL AND {where}"
        )
    return "\nUNION ".join(parts)


def selection_sql(table: Table) -> str:
    """The self-contained SELECT of one table's rows for the published window."""
    columns = ", ".join(f"s.{q(c)}" for c in table.column_names)
    if _is_window_only(table):
        where = _changed("s")
    else:
        where = f"s.{q(table.key)} IN ({selected_keys_sql(table)})"
    return f"SELECT {columns} FROM {q(table.name)} s WHERE {where}"  # noqa: S608  # nosec B608


def copy_sql(table: Table) -> str:
    return f"COPY ({selection_sql(table)}) TO STDOUT WITH (FORMAT csv, HEADER false)"


def _changed_stamps_sql() -> str:
    return "\nUNION ALL ".join(
        f"SELECT s.{q('last_updated')} AS stamp FROM {q(t.name)} s WHERE {_changed('s')}"  # noqa: S608  # nosec B608
        for t in TABLES
    )


def has_changes(con, window: Window) -> bool:
    """Whether any row of any table is stamped in ``window``."""
    set_window(con, window)
    return bool(con.run(f"SELECT EXISTS ({_changed_stamps_sql()})")[0][0])


def plan_windows(con, window: Window, max_batch_rows: int) -> list[tuple[Window, int]]:
    """Split ``window`` into consecutive windows of about ``max_batch_rows`` changed rows each,
    cut only between distinct ``last_updated`` values (so ties never straddle two batches).

    A piece holds fewer than ``max_batch_rows`` rows plus those sharing its last timestamp;
    a single timestamp holding more rows than the bound becomes one larger piece. The cut is
    a pure function of the data, so the same snapshot always gives the same plan. Returns
    (window, changed rows) pairs; an empty list when nothing changed.
    """
    set_window(con, window)
    rows = con.run(
        "WITH stamps AS (SELECT stamp, count(*) AS n FROM ("  # noqa: S608  # nosec B608
        + _changed_stamps_sql()
        + ") changed GROUP BY stamp), "
        "running AS (SELECT stamp, n, "
        "CAST(sum(n) OVER (ORDER BY stamp ROWS UNBOUNDED PRECEDING) AS bigint) - n AS before "
        "FROM stamps) "
        "SELECT min(stamp), CAST(sum(n) AS bigint) FROM running "
        "GROUP BY before / CAST(:bound AS bigint) ORDER BY 1",
        bound=int(max_batch_rows),
    )
    if not rows:  # every table empty: nothing to plan
        return []
    starts = [window.lo] + [r[0] for r in rows[1:]]
    ends = [r[0] for r in rows[1:]] + [window.hi]
    return [(Window(lo, hi), n) for lo, hi, (_, n) in zip(starts, ends, rows, strict=True)]


def region_fingerprint(con, window: Window) -> str:
    """A fingerprint of every row version stamped in ``window`` (count and xmin sum per
    table): any commit landing there since, late or not, changes it."""
    set_window(con, window)
    parts = "\nUNION ALL ".join(
        f"SELECT count(*) AS n, COALESCE(sum(CAST(CAST(s.xmin AS text) AS bigint)), 0) AS x "  # noqa: S608  # nosec B608
        f"FROM {q(t.name)} s WHERE {_changed('s')}"
        for t in TABLES
    )
    n, x = con.run(f"SELECT CAST(sum(n) AS bigint), CAST(sum(x) AS numeric) FROM ({parts}) f")[0]  # noqa: S608  # nosec B608
    return f"{n}:{x}"


class _CsvChunks:
    """The ``stream`` pg8000 writes COPY data into: PostgreSQL sends one CopyData message per
    row, so every ``chunk_rows`` writes are parsed into one typed Arrow table and handed on,
    and the buffer never holds more than one chunk."""

    def __init__(self, table: Table, chunk_rows: int, on_chunk: Callable[[pa.Table], None]):
        self.schema = table.arrow_schema
        self.chunk_rows = chunk_rows
        self.on_chunk = on_chunk
        self.buffer = bytearray()
        self.pending = 0
        self.rows = 0
        self.read_options = pacsv.ReadOptions(column_names=self.schema.names)
        self.parse_options = pacsv.ParseOptions(newlines_in_values=True)
        self.convert_options = pacsv.ConvertOptions(
            column_types={f.name: f.type for f in self.schema},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        )

    def write(self, data: bytes) -> None:
        self.buffer += data
        self.pending += 1
        if self.pending >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        parsed = pacsv.read_csv(
            io.BytesIO(self.buffer),
            read_options=self.read_options,
            parse_options=self.parse_options,
            convert_options=self.convert_options,
        )
        self.buffer = bytearray()
        self.rows += self.pending
        self.pending = 0
        self.on_chunk(parsed.cast(self.schema))


def copy_table(con, table: Table, chunk_rows: int, on_chunk: Callable[[pa.Table], None]) -> int:
    """Stream the published window's rows of ``table`` through ``COPY ... TO STDOUT`` into
    Arrow tables of at most ``chunk_rows`` rows with the raw lake schema; returns the rows."""
    sink = _CsvChunks(table, chunk_rows, on_chunk)
    con.run(copy_sql(table), stream=sink)
    sink.flush()
    return sink.rows
