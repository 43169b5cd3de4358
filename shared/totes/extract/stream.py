"""The bulk path of a batch: ``COPY ... TO STDOUT`` streamed into typed Arrow chunks.

``copy_batch`` copies every table of the self-contained batch for the published selection and
piece in closure order (window-only tables first, collecting the keys their rows reference,
then the closure tables); ``copy_table`` streams one table's rows through a bounded CSV ->
Arrow sink, so memory stays at about one chunk whatever the table size. Chunks are bounded in
rows and in bytes, and a single value of any size PostgreSQL holds is parsed whole.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pg8000.native import Connection

from totes.extract.closure import (
    closure_sql,
    closure_tables,
    copy_sql,
    extras_copy_sql,
    is_window_only,
    pulled_setting,
    pullers,
)
from totes.extract.plan import TableCounts
from totes.source.model import TABLES, Table

if TYPE_CHECKING:
    from typing_extensions import Buffer


def _key_set_text(keys: list[pa.ChunkedArray | pa.Array]) -> str:
    """Distinct non-null integer keys as a PostgreSQL array literal, built by Arrow."""
    chunks = [c for k in keys for c in (k.chunks if isinstance(k, pa.ChunkedArray) else [k])]
    if not chunks:
        return "{}"
    distinct = pc.unique(pa.concat_arrays(chunks)).drop_null()
    if not len(distinct):
        return "{}"
    text = distinct.cast(pa.string())
    joined: str = pc.binary_join(pa.ListArray.from_arrays([0, len(text)], text), ",")[0].as_py()
    return "{" + joined + "}"


def copy_batch(
    con: Connection,
    chunk_rows: int,
    on_chunk: Callable[[Table, pa.Table], None],
    counts: Mapping[str, TableCounts] | None = None,
    run_reads: Mapping[str, PieceSource] | None = None,
    piece: int = 0,
) -> dict[str, int]:
    """Copy every table's rows of the self-contained batch for the published selection and
    piece (``capture.publish``, ``capture.publish_piece``); returns the rows per table.

    Window-only tables go first; the keys their rows reference in closure tables are
    collected from the Arrow chunks on the way (vectorised, bounded by the batch's distinct
    keys) and published, then ``closure_sql`` completes each closure and the closure tables
    are copied. Everything reads the one snapshot of the enclosing transaction.

    With ``counts`` whose new keys are all known (a small change set, published by
    ``plan.publish_new_keys``), rows are found by key, and a fact table with nothing new is not
    read at all.

    ``run_reads``: tables read once for the whole run (``extract.readers``), whose rows of
    piece ``piece`` are taken from there instead of being selected again; a closure table's
    extra rows are then fetched by key (``closure.extras_copy_sql``).
    """
    run_reads = run_reads or {}
    keyed = counts is not None and all(c.new_keys is not None for c in counts.values())
    closure = closure_tables()
    pulled: dict[str, list[pa.Array]] = {t.name: [] for t in closure}
    references = {
        child.name: [(t.name, column) for t in closure for c, column in pullers(t) if c == child]
        for child in TABLES
    }
    rows: dict[str, int] = {}

    def collect(table: Table, chunk: pa.Table) -> None:
        for target, column in references[table.name]:
            pulled[target].append(pc.unique(chunk.column(column)))
        on_chunk(table, chunk)

    for table in TABLES:
        if is_window_only(table):
            if keyed and counts is not None and counts[table.name].new == 0:
                rows[table.name] = 0
                continue
            collect_table = functools.partial(collect, table)
            if table.name in run_reads:
                rows[table.name] = _from_source(
                    run_reads[table.name], piece, chunk_rows, collect_table
                )
                continue
            rows[table.name] = copy_table(con, table, chunk_rows, collect_table, keyed=keyed)
    names = [pulled_setting(t) for t in closure]
    params = {f"p{i}": _key_set_text(pulled[t.name]) for i, t in enumerate(closure)}
    con.run(
        "SELECT " + ", ".join(f"set_config('{name}', :p{i}, true)" for i, name in enumerate(names)),
        **params,
    )
    con.run(closure_sql())
    for table in TABLES:
        if is_window_only(table):
            continue
        emit = functools.partial(on_chunk, table)
        if table.name in run_reads:
            changed = _from_source(run_reads[table.name], piece, chunk_rows, emit)
            extra = copy_table(con, table, chunk_rows, emit, sql=extras_copy_sql(table))
            rows[table.name] = changed + extra
            continue
        rows[table.name] = copy_table(con, table, chunk_rows, emit, keyed=keyed)
    return rows


# Bytes pg8000's per-row writes are gathered into (in C) before Python sees them.
COPY_BLOCK_BYTES = 2**20
# A chunk is handed on at chunk_rows rows or at this many bytes, whichever comes first, so a
# table of huge values stays bounded in memory too.
CHUNK_BYTES = 64 * 2**20
# The position of the column Arrow's CSV reader could not convert, from its message.
_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")


class _CsvChunks(io.RawIOBase):
    """The raw sink under ``COPY ... TO STDOUT``: it receives the CSV in blocks, parses every
    complete row of a block into one typed Arrow table, and hands rows on in chunks of exactly
    ``chunk_rows`` rows or ``CHUNK_BYTES`` bytes (the last one smaller); it never holds more
    than about one chunk and one block (or one row, when a row is larger).

    PostgreSQL sends one CopyData message per row and pg8000 calls ``write`` once per
    message; ``copy_table`` puts an ``io.BufferedWriter`` in front so those calls stay in C
    and this class sees one call per block. A block ends anywhere, so only the rows up to the
    last newline outside a quoted value are parsed (in PostgreSQL's CSV every ``"`` opens,
    closes or doubles inside a quoted value, so a newline is a row end exactly when an even
    number of quotes precede it); the rest waits for the next block. While the buffer ends
    inside a quoted value (a value larger than a block), the search resumes where it stopped,
    so a value of any size costs one pass.
    """

    def __init__(
        self,
        table: Table,
        chunk_rows: int,
        on_chunk: Callable[[pa.Table], None],
        schema: pa.Schema | None = None,
    ):
        super().__init__()
        self.schema = table.lake_schema if schema is None else schema
        self.table_name = table.name
        self.chunk_rows = chunk_rows
        self.on_chunk = on_chunk
        self.buffer = bytearray()
        self.parsed: list[pa.Table] = []
        self.parsed_rows = 0
        self.parsed_bytes = 0
        self.rows = 0
        self.abandoned = False
        # Quotes counted in buffer[:_scanned] while the buffer ends inside a quoted value.
        self._scanned = 0
        self._quotes = 0
        self.column_names = self.schema.names
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

    def write(self, data: Buffer, /) -> int:
        if self.abandoned:  # the COPY failed: what the writer still holds goes nowhere
            return memoryview(data).nbytes
        self.buffer += data
        end = self._complete_rows_end()
        if end:
            self._parse(self.buffer[:end])
            del self.buffer[:end]
        return memoryview(data).nbytes

    def _complete_rows_end(self) -> int:
        """Length of the buffer's prefix made of complete rows (the buffer starts a row)."""
        end = self.buffer.rfind(b"\n")
        if end < self._scanned:
            return 0
        quotes = self._quotes + self.buffer.count(b'"', self._scanned, end)
        if quotes % 2 == 0:  # the usual case: the last newline ends a row
            self._scanned = self._quotes = 0
            return end + 1
        # The buffer ends inside a quoted value: the last row end is the last newline before
        # that value's opening quote; remember how far the buffer holds none.
        last_end = -1
        position, parity = self._scanned, self._quotes % 2
        while True:
            quote = self.buffer.find(b'"', position)
            if quote < 0:
                break
            if not parity:
                newline = self.buffer.rfind(b"\n", position, quote)
                if newline >= 0:
                    last_end = newline
            parity ^= 1
            position = quote + 1
        if not parity:
            newline = self.buffer.rfind(b"\n", position)
            last_end = max(last_end, newline)
        if last_end < 0:
            self._scanned, self._quotes = len(self.buffer), parity
            return 0
        self._scanned = self._quotes = 0
        return last_end + 1

    def _parse(self, data: bytes | bytearray) -> None:
        # Arrow parses in blocks that must each hold whole rows: one block for all of it, so
        # Arrow's own thread pool has nothing to split; without it, several readers' sinks
        # parse side by side without contending for its threads (measured: 3.1 -> 2.6 s for
        # a 300k first capture, same CPU; docs/ingest.md).
        options = pacsv.ReadOptions(
            column_names=self.column_names,
            block_size=max(COPY_BLOCK_BYTES, len(data) + 1),
            use_threads=False,
        )
        try:
            parsed = pacsv.read_csv(
                io.BytesIO(data),
                read_options=options,
                parse_options=self.parse_options,
                convert_options=self.convert_options,
            ).cast(self.schema)
        except pa.ArrowInvalid as exc:  # its message quotes the value: only the column is kept
            raise ValueError(self._unfit(str(exc))) from None
        self.parsed.append(parsed)
        self.parsed_rows += parsed.num_rows
        self.parsed_bytes += parsed.nbytes
        while self.parsed_rows >= self.chunk_rows:
            self._hand_on(self.chunk_rows)
        if self.parsed_bytes >= CHUNK_BYTES:
            self._hand_on(self.parsed_rows)

    def _unfit(self, message: str) -> str:
        """The refusal of a value the raw lake type cannot hold, naming its table and column
        (Arrow's message names the column by position, "In CSV column #3: ... invalid value
        '...'"), as ``extract.adbc.conform`` names it, never the value."""
        found = _CSV_COLUMN.match(message)
        if found is None or int(found[1]) >= len(self.schema):
            return f"{self.table_name}: a source value does not fit the raw lake schema"
        field = self.schema.field(int(found[1]))
        return (
            f"{self.table_name}.{field.name}: a source value does not fit the raw lake type"
            f" {field.type}"
        )

    def _hand_on(self, rows: int) -> None:
        parsed = pa.concat_tables(self.parsed)
        rest = parsed.slice(rows)
        self.parsed = [rest] if rest.num_rows else []
        self.parsed_rows = rest.num_rows
        self.parsed_bytes = rest.nbytes if rest.num_rows else 0
        self.rows += rows
        self.on_chunk(parsed.slice(0, rows))

    def finish(self) -> None:
        """Parse what is left and hand on the last, smaller chunk."""
        if self.buffer:
            self._parse(bytes(self.buffer))
            self.buffer = bytearray()
        if self.parsed_rows:
            self._hand_on(self.parsed_rows)


def copy_table(
    con: Connection,
    table: Table,
    chunk_rows: int,
    on_chunk: Callable[[pa.Table], None],
    *,
    keyed: bool = False,
    sql: str | None = None,
    schema: pa.Schema | None = None,
) -> int:
    """Stream the published batch's rows of ``table`` through ``COPY ... TO STDOUT`` into
    Arrow tables of at most ``chunk_rows`` rows with the raw lake schema; returns the rows.
    ``sql``/``schema``: another COPY of the table's rows and the columns it returns."""
    sink = _CsvChunks(table, chunk_rows, on_chunk, schema)
    blocks = io.BufferedWriter(sink, buffer_size=COPY_BLOCK_BYTES)
    try:
        con.run(sql or copy_sql(table, keyed=keyed), stream=blocks)
        blocks.flush()
    except BaseException:
        # Otherwise the writer flushes its last block into the sink when it is collected, the
        # sink's hand-on raises again (a stopped reader), and Python prints an unstructured
        # "Exception ignored in: <_io.BufferedWriter>".
        sink.abandoned = True
        blocks.close()
        raise
    sink.finish()
    return sink.rows


class PieceSource(Protocol):
    """One table's rows of the run, piece by piece (``extract.readers.TableReader``)."""

    def piece(self, index: int) -> Iterator[pa.Table]: ...


def _rechunked(chunks: Iterable[pa.Table], chunk_rows: int) -> Iterator[pa.Table]:
    """``chunks`` regrouped into chunks of exactly ``chunk_rows`` rows (the last smaller)."""
    held: list[pa.Table] = []
    rows = 0
    for chunk in chunks:
        held.append(chunk)
        rows += chunk.num_rows
        while rows >= chunk_rows:
            joined = pa.concat_tables(held)
            yield joined.slice(0, chunk_rows)
            rest = joined.slice(chunk_rows)
            held, rows = ([rest] if rest.num_rows else []), rest.num_rows
    if rows:
        yield pa.concat_tables(held)


def _from_source(
    source: PieceSource, piece: int, chunk_rows: int, on_chunk: Callable[[pa.Table], None]
) -> int:
    rows = 0
    for chunk in _rechunked(source.piece(piece), chunk_rows):
        rows += chunk.num_rows
        on_chunk(chunk)
    return rows
