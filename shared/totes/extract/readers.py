"""A run of several pieces reads each large table once, not once per piece.

Without this, every piece of a multi-piece run (a first capture, a large backlog) selects its
rows of every table again, and with no index on ``xmin`` or ``last_updated`` each selection
scans the whole table: P pieces cost P scans, O(rows^2 / bound) for a backfill. Instead, each
large table gets a reader: its own session that imports the run's snapshot
(``snapshot.export`` / ``snapshot.imported``: the same view, however long the run), publishes
the same selection and the run's piece bounds, and COPYs the table's new rows once, in piece
order, each with its piece index (``closure.run_copy_sql``); in a run of a few pieces, piece
by piece instead, so the first batch's rows stream before the table is sorted
(``read_plan``). The readers run on threads, so
the server formats one table while the client parses another; each hands on its rows piece by
piece through a small bounded queue, so memory stays at a few chunks per reader while the run
writes batch after batch in order, manifest by manifest, exactly as before: the batches, the
resume state after each and every capture invariant are unchanged (only how their rows are
read is).

A reader's session is pg8000 (``COPY`` csv parsed into Arrow by ``stream``'s CSV sink) or ADBC
(``extract.adbc``: the same selection as Arrow record batches through binary COPY, cast to
the same raw schema); the run chooses one driver for all its readers (``adbc.choose``). Both
give the same rows, types and values (``tests/integration/test_ingest_reader_drivers.py``). A
reader that fails fails the run with ``ReaderFailed`` naming its table and driver.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import pyarrow as pa
from pg8000.native import Connection

from totes.db import close
from totes.errors import ReaderFailed, TotesError
from totes.extract import adbc, capture, snapshot, stream
from totes.extract.closure import (
    PIECE_BOUNDS_SETTING,
    PIECE_COLUMN,
    READ_PIECE_SETTING,
    run_copy_sql,
    run_selection_sql,
)
from totes.extract.plan import Piece, TableCounts, text_array_literal
from totes.server_errors import describe, fields_of
from totes.source.model import TABLES_BY_NAME, Table

# At most this many tables get a reader (sessions besides the run's own), the largest first.
MAX_READERS = 4
# Items (parts of chunks) a reader may hold ready beyond the one being written.
QUEUE_ITEMS = 2
# A run of at most this many pieces reads each piece on its own (docs/ingest.md "Before the
# first batch": at 3 pieces 0.1 s less server CPU than one sorted read, at 9 pieces 36% more).
PIECES_READ_ALONE = 3
_POLL_SECONDS = 0.1


# What a reader's connect returns: a pg8000 session, or an ADBC one (``adbc.Session``).
ReaderSession: TypeAlias = Connection | adbc.Session


class _Stopped(Exception):
    """The run stopped reading (it failed or finished early): the reader's COPY is abandoned."""


@dataclass(frozen=True)
class _End:
    """No more rows."""


def publish_bounds(con: ReaderSession, pieces: list[Piece]) -> None:
    """The first stamp of every piece but the first, for ``closure.run_copy_sql``."""
    bounds = [str(p.lo) for p in pieces[1:]]
    con.run(f"SELECT set_config('{PIECE_BOUNDS_SETTING}', :b, true)", b=text_array_literal(bounds))


def read_plan(pieces: int, alone: int = PIECES_READ_ALONE) -> list[int | None]:
    """The reads a reader makes of its table, in order: each piece's own (its index), when
    the run has at most ``alone`` pieces, else one read of them all sorted by piece (None). A
    sorted read sends nothing until the server has sorted every new row of the table; a
    piece's own read streams at once, for one more scan of the table per piece, so the number
    of scans stays bounded (cost O(rows))."""
    return list(range(pieces)) if pieces <= alone else [None]


def publish_read(con: ReaderSession, piece: int) -> None:
    """The piece the next ``closure.run_selection_sql(one_piece=True)`` reads."""
    con.run(f"SELECT set_config('{READ_PIECE_SETTING}', :p, true)", p=str(piece))


def _split_by_piece(chunk: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """The chunk's rows (in piece order) as (piece, rows without the piece column) runs."""
    pieces = chunk.column(PIECE_COLUMN).to_numpy()
    rows = chunk.drop_columns([PIECE_COLUMN])
    starts = [0, *(np.flatnonzero(np.diff(pieces)) + 1).tolist()]
    ends = [*starts[1:], len(pieces)]
    for start, end in zip(starts, ends, strict=True):
        yield int(pieces[start]), rows.slice(start, end - start)


class TableReader:
    """One table's rows of the whole run, read once on a session of its own that sees the run's
    exported snapshot, handed on piece by piece (``piece(0)``, then ``piece(1)``...)."""

    def __init__(
        self,
        table: Table,
        connect: Callable[[], ReaderSession],
        snapshot_id: str,
        selection: capture.Selection,
        pieces: list[Piece],
        chunk_rows: int,
        driver: str = adbc.PG8000,
    ):
        self.table = table
        self.driver = driver
        self._connect = connect
        self._snapshot_id = snapshot_id
        self._selection = selection
        self._pieces = pieces
        self._chunk_rows = chunk_rows
        self._queue: queue.Queue[tuple[int, pa.Table] | _End | BaseException] = queue.Queue(
            QUEUE_ITEMS
        )
        self._stop = threading.Event()
        self._held: tuple[int, pa.Table] | _End | None = None
        self.rows = 0
        self._thread = threading.Thread(target=self._read, name=f"reader-{table.name}", daemon=True)

    def start(self) -> TableReader:
        self._thread.start()
        return self

    # -- the reader's thread ---------------------------------------------------------------

    def _read(self) -> None:
        try:
            con = self._connect()
            try:
                with snapshot.imported(con, self._snapshot_id):
                    capture.publish(con, capture.rebased(con, self._selection))
                    publish_bounds(con, self._pieces)
                    schema = self.table.lake_schema.append(pa.field(PIECE_COLUMN, pa.int32()))
                    for piece in read_plan(len(self._pieces), PIECES_READ_ALONE):
                        one_piece = piece is not None
                        if piece is not None:
                            publish_read(con, piece)
                        if isinstance(con, adbc.Session):
                            self._stream_adbc(con, schema, one_piece)
                        else:
                            stream.copy_table(
                                con,
                                self.table,
                                self._chunk_rows,
                                self._hand_on,
                                sql=run_copy_sql(self.table, one_piece=one_piece),
                                schema=schema,
                            )
            finally:
                if isinstance(con, adbc.Session):
                    con.close()
                else:
                    close(con)
            self._put(_End())
        except _Stopped:
            return
        except BaseException as exc:  # handed to the run, which raises it
            with contextlib.suppress(_Stopped):
                self._put(exc)

    def _stream_adbc(self, con: adbc.Session, schema: pa.Schema, one_piece: bool) -> None:
        """The selection's record batches as ADBC reads them (sized after the chunk rows,
        ``adbc.batch_bytes``; the GIL is released while it reads), each cast to ``schema``."""
        size = adbc.batch_bytes(self._chunk_rows)
        with con.stream(run_selection_sql(self.table, one_piece=one_piece), size) as batches:
            for batch in batches:
                self._hand_on(adbc.conform(batch, schema, self.table.name))

    def _hand_on(self, chunk: pa.Table) -> None:
        for item in _split_by_piece(chunk):
            self._put(item)

    def _put(self, item: tuple[int, pa.Table] | _End | BaseException) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    # -- the run's side ----------------------------------------------------------------------

    def _next(self) -> tuple[int, pa.Table] | _End:
        if self._held is not None:
            item, self._held = self._held, None
            return item
        got = self._queue.get()
        if isinstance(got, Exception):
            # Not chained: the cause's own text (ADBC's embeds DETAIL and the query, a data
            # exception's message a value) would be printed with the traceback.
            raise ReaderFailed(
                f"reader of {self.table.name} ({self.driver}) failed: {_cause(got)}"
            ) from None
        if isinstance(got, BaseException):
            raise got
        return got

    def piece(self, index: int) -> Iterator[pa.Table]:
        """The table's rows of piece ``index``, in chunks (pieces are taken in order)."""
        while True:
            item = self._next()
            if isinstance(item, _End) or item[0] > index:
                self._held = item
                return
            if item[0] < index:
                raise RuntimeError(f"reader of {self.table.name}: piece {item[0]} was skipped")
            self.rows += item[1].num_rows
            yield item[1]

    def stop(self) -> None:
        """Abandon the read (its session is closed by its thread) and wait for the thread."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=_POLL_SECONDS)
            self._thread.join(_POLL_SECONDS)


def _cause(exc: Exception) -> str:
    """What went wrong, for the operator: a totes error's own message, a server error of
    either driver named by objects and SQLSTATE (``server_errors``: never a value its message
    or DETAIL quotes), else the exception's type and text (the raw lake's refusal of a value
    names the column only, ``adbc.conform``, ``stream``)."""
    if isinstance(exc, TotesError):
        return str(exc)
    fields = fields_of(exc)
    if fields:
        return f"{type(exc).__name__}: {describe(fields)}"
    return f"{type(exc).__name__}: {str(exc).strip()}"


def chosen_tables(counts: Mapping[str, TableCounts], limit: int = MAX_READERS) -> list[Table]:
    """The tables worth a reader: the ``limit`` with the most new rows (any at all)."""
    ranked = sorted(((c.new, name) for name, c in counts.items() if c.new), reverse=True)
    return [TABLES_BY_NAME[name] for _, name in ranked[:limit]]


@contextlib.contextmanager
def run_reads(
    con: Connection,
    connect: Callable[[], ReaderSession],
    selection: capture.Selection,
    pieces: list[Piece],
    counts: Mapping[str, TableCounts],
    chunk_rows: int,
    limit: int = MAX_READERS,
    driver: str = adbc.PG8000,
) -> Iterator[dict[str, TableReader]]:
    """Readers of the run's largest tables when the run has more than one piece (else none),
    started on the snapshot of ``con``'s transaction; stopped on the way out, whatever
    happened. ``connect`` opens a session of ``driver`` (``adbc.choose``)."""
    tables = chosen_tables(counts, limit) if len(pieces) > 1 and limit > 0 else []
    if not tables:
        yield {}
        return
    snapshot_id = snapshot.export(con)
    readers = {
        t.name: TableReader(t, connect, snapshot_id, selection, pieces, chunk_rows, driver)
        for t in tables
    }
    try:
        for reader in readers.values():
            reader.start()
        yield readers
    finally:
        for reader in readers.values():
            reader.stop()
