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
import functools
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from totes.errors import SchemaDrift
from totes.identifiers import quote
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
    return f"{alias}.{quote('last_updated')} >= {_LO} AND {alias}.{quote('last_updated')} < {_HI}"


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


def _extra_setting(table: Table) -> str:
    return f"totes.extra_{table.name}"


def _extra_keys(table: Table) -> str:
    """The published extra keys of ``table`` as a one-column set (a hashed subplan)."""
    return f"(SELECT unnest(CAST(current_setting('{_extra_setting(table)}') AS integer[])))"


def _pulled_setting(table: Table) -> str:
    return f"totes.pulled_{table.name}"


def _pulled_keys(table: Table) -> str:
    return f"CAST(current_setting('{_pulled_setting(table)}') AS integer[])"


def _key_columns(table: Table) -> list[str]:
    return [table.key, *(fk.column for fk in table.foreign_keys)]


def closure_sql() -> str:
    """One statement that publishes, for the published window, every closure table's extra
    keys (rows not changed themselves that the batch still carries: referenced by selected
    rows, or embedding a changed parent) as transaction-local settings.

    References from window-only tables (the big fact tables) come from the keys
    ``copy_batch`` collected from their rows as it copied them (``totes.pulled_<table>``), so
    no fact table is scanned twice; what remains reads only the small dimension tables, and
    the key sets never leave the server. The per-table COPY then reads
    ``changed OR key IN extra``: one scan of its table.
    """
    closure = [t for t in TABLES if not _is_window_only(t)]
    changed_needed: list[Table] = []
    # Closures that follow a closure table's own rows need its whole key set.
    full_sets_needed = {
        child.name
        for table in closure
        for child, _ in _pullers(table)
        if not _is_window_only(child)
    }
    derived: list[str] = []

    def changed_cte(table: Table) -> str:
        if table not in changed_needed:
            changed_needed.append(table)
        return f"c_{table.name}"

    # Children come after their parents in TABLES: build the closures children first.
    for table in reversed(closure):
        parts = []
        fk_column = EMBEDDED_PARENTS.get(table.name)
        if fk_column:
            parent = TABLES_BY_NAME[
                next(f.table for f in table.foreign_keys if f.column == fk_column)
            ]
            parts.append(
                f"SELECT t.{quote(table.key)} AS k FROM {quote(table.name)} t "  # noqa: S608  # nosec B608
                f"JOIN {changed_cte(parent)} p ON p.{quote(parent.key)} = t.{quote(fk_column)}"
            )
        if any(_is_window_only(child) for child, _ in _pullers(table)):
            parts.append(f"SELECT unnest({_pulled_keys(table)}) AS k")
        for child, column in _pullers(table):
            if _is_window_only(child):
                continue
            else:
                parts.append(
                    f"SELECT c.{quote(column)} AS k FROM {quote(child.name)} c "  # noqa: S608  # nosec B608
                    f"WHERE c.{quote(column)} IS NOT NULL AND c.{quote(child.key)} IN "
                    f"(SELECT k FROM k_{child.name})"
                )
        derived.append(f"e_{table.name} AS (" + " UNION ".join(parts) + ")")
        if table.name in full_sets_needed:
            derived.append(
                f"k_{table.name} AS (SELECT {quote(table.key)} AS k FROM {changed_cte(table)} "  # noqa: S608  # nosec B608
                f"UNION SELECT k FROM e_{table.name})"
            )
    changed = [
        f"c_{t.name} AS MATERIALIZED (SELECT "  # noqa: S608  # nosec B608
        + ", ".join(f"s.{quote(c)}" for c in _key_columns(t))
        + f" FROM {quote(t.name)} s WHERE {_changed('s')})"
        for t in TABLES
        if t in changed_needed
    ]
    publish = ", ".join(
        f"set_config('{_extra_setting(t)}', "  # noqa: S608  # nosec B608
        f"(SELECT COALESCE(CAST(array_agg(DISTINCT k) AS text), '{{}}') FROM e_{t.name}), true)"
        for t in closure
    )
    return "WITH " + ",\n".join(changed + derived) + "\nSELECT " + publish


def _key_set_text(keys: list[pa.ChunkedArray | pa.Array]) -> str:
    """Distinct non-null integer keys as a PostgreSQL array literal, built by Arrow."""
    chunks = [c for k in keys for c in (k.chunks if isinstance(k, pa.ChunkedArray) else [k])]
    if not chunks:
        return "{}"
    distinct = pc.unique(pa.concat_arrays(chunks)).drop_null()
    if not len(distinct):
        return "{}"
    text = distinct.cast(pa.string())
    joined = pc.binary_join(pa.ListArray.from_arrays([0, len(text)], text), ",")[0]
    return "{" + joined.as_py() + "}"


def copy_batch(
    con, window: Window, chunk_rows: int, on_chunk: Callable[[Table, pa.Table], None]
) -> dict[str, int]:
    """Copy every table's rows of the self-contained batch for ``window``; returns the rows
    per table.

    Window-only tables go first; the keys their rows reference in closure tables are
    collected from the Arrow chunks on the way (vectorised, bounded by the batch's distinct
    keys) and published, then ``closure_sql`` completes each closure and the closure tables
    are copied. Everything reads the one snapshot of the enclosing transaction.
    """
    set_window(con, window)
    closure = [t for t in TABLES if not _is_window_only(t)]
    pulled: dict[str, list] = {t.name: [] for t in closure}
    references = {
        child.name: [(t.name, column) for t in closure for c, column in _pullers(t) if c == child]
        for child in TABLES
    }
    rows: dict[str, int] = {}

    def collect(table: Table, chunk: pa.Table) -> None:
        for target, column in references[table.name]:
            pulled[target].append(pc.unique(chunk.column(column)))
        on_chunk(table, chunk)

    for table in TABLES:
        if _is_window_only(table):
            rows[table.name] = copy_table(con, table, chunk_rows, functools.partial(collect, table))
    names = [_pulled_setting(t) for t in closure]
    params = {f"p{i}": _key_set_text(pulled[t.name]) for i, t in enumerate(closure)}
    con.run(
        "SELECT " + ", ".join(f"set_config('{name}', :p{i}, true)" for i, name in enumerate(names)),
        **params,
    )
    con.run(closure_sql())
    for table in TABLES:
        if not _is_window_only(table):
            rows[table.name] = copy_table(
                con, table, chunk_rows, functools.partial(on_chunk, table)
            )
    return rows


def selection_sql(table: Table) -> str:
    """The self-contained SELECT of one table's rows for the published window and closure
    (``copy_batch``): changed rows, plus the extra keys its closure published."""
    columns = ", ".join(f"s.{quote(c)}" for c in table.column_names)
    where = _changed("s")
    if not _is_window_only(table):
        where = f"({where}) OR s.{quote(table.key)} IN {_extra_keys(table)}"
    return f"SELECT {columns} FROM {quote(table.name)} s WHERE {where}"  # noqa: S608  # nosec B608


def copy_sql(table: Table) -> str:
    return f"COPY ({selection_sql(table)}) TO STDOUT WITH (FORMAT csv, HEADER false)"


def _changed_stamps_sql() -> str:
    return "\nUNION ALL ".join(
        f"SELECT s.{quote('last_updated')} AS stamp FROM {quote(t.name)} s WHERE {_changed('s')}"  # noqa: S608  # nosec B608
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
    """A fingerprint of every row version stamped in ``window``: the count, and the sum of a
    64-bit hash of each version's (table, ctid, xmin). Any commit landing there since, late or
    not, changes it; a plain sum of xmins could cancel out (two updates whose old xmins sit
    symmetrically around the new one), a sum of hashes cannot in practice."""
    set_window(con, window)
    parts = "\nUNION ALL ".join(
        f"SELECT count(*) AS n, COALESCE(sum(CAST(hashtextextended("  # noqa: S608  # nosec B608
        f"CAST(s.ctid AS text) || ':' || CAST(s.xmin AS text), {seed}) AS numeric)), 0) AS x "
        f"FROM {quote(t.name)} s WHERE {_changed('s')}"
        for seed, t in enumerate(TABLES)
    )
    n, x = con.run(f"SELECT CAST(sum(n) AS bigint), CAST(sum(x) AS numeric) FROM ({parts}) f")[0]  # noqa: S608  # nosec B608
    return f"{n}:{x}"


# Bytes pg8000's per-row writes are gathered into (in C) before Python sees them.
COPY_BLOCK_BYTES = 2**20


class _CsvChunks(io.RawIOBase):
    """The raw sink under ``COPY ... TO STDOUT``: it receives the CSV in blocks, parses every
    complete row of a block into one typed Arrow table, and hands rows on in chunks of exactly
    ``chunk_rows`` (the last one smaller); it never holds more than about one chunk and one
    block.

    PostgreSQL sends one CopyData message per row and pg8000 calls ``write`` once per
    message; ``copy_table`` puts an ``io.BufferedWriter`` in front so those calls stay in C
    and this class sees one call per block. A block ends anywhere, so only the rows up to the
    last newline outside a quoted value are parsed (in PostgreSQL's CSV every ``"`` opens,
    closes or doubles inside a quoted value, so a newline is a row end exactly when an even
    number of quotes precede it); the rest waits for the next block.
    """

    def __init__(self, table: Table, chunk_rows: int, on_chunk: Callable[[pa.Table], None]):
        super().__init__()
        self.schema = table.arrow_schema
        self.chunk_rows = chunk_rows
        self.on_chunk = on_chunk
        self.buffer = bytearray()
        self.parsed: list[pa.Table] = []
        self.parsed_rows = 0
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

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buffer += data
        end = self._complete_rows_end()
        if end:
            self._parse(self.buffer[:end])
            del self.buffer[:end]
        return len(data)

    def _complete_rows_end(self) -> int:
        """Length of the buffer's prefix made of complete rows (the buffer starts a row)."""
        end = self.buffer.rfind(b"\n")
        while end >= 0 and self.buffer.count(b'"', 0, end) % 2:
            end = self.buffer.rfind(b"\n", 0, end)
        return end + 1

    def _parse(self, data: bytes | bytearray) -> None:
        parsed = pacsv.read_csv(
            io.BytesIO(data),
            read_options=self.read_options,
            parse_options=self.parse_options,
            convert_options=self.convert_options,
        ).cast(self.schema)
        self.parsed.append(parsed)
        self.parsed_rows += parsed.num_rows
        while self.parsed_rows >= self.chunk_rows:
            self._hand_on(self.chunk_rows)

    def _hand_on(self, rows: int) -> None:
        parsed = pa.concat_tables(self.parsed)
        rest = parsed.slice(rows)
        self.parsed = [rest] if rest.num_rows else []
        self.parsed_rows = rest.num_rows
        self.rows += rows
        self.on_chunk(parsed.slice(0, rows))

    def finish(self) -> None:
        """Parse what is left and hand on the last, smaller chunk."""
        if self.buffer:
            self._parse(bytes(self.buffer))
            self.buffer = bytearray()
        if self.parsed_rows:
            self._hand_on(self.parsed_rows)


def copy_table(con, table: Table, chunk_rows: int, on_chunk: Callable[[pa.Table], None]) -> int:
    """Stream the published batch's rows of ``table`` through ``COPY ... TO STDOUT`` into
    Arrow tables of at most ``chunk_rows`` rows with the raw lake schema; returns the rows."""
    sink = _CsvChunks(table, chunk_rows, on_chunk)
    blocks = io.BufferedWriter(sink, buffer_size=COPY_BLOCK_BYTES)
    con.run(copy_sql(table), stream=blocks)
    blocks.flush()
    sink.finish()
    return sink.rows
