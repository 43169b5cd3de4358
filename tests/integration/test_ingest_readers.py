"""A run of several batches reads each large table once (``extract.readers``), on sessions that
see exactly the run's snapshot, and writes the very batches a run that selects every table
again for every batch writes; a run that fails midway leaves no reader behind."""

from __future__ import annotations

import re
import threading
import time
import traceback
from dataclasses import replace

import pg8000.native
import pyarrow as pa
import pytest
from ingest_support import (
    batch_tables,
    insert_sales_orders,
    settings_for,
    versions_in_lake,
    versions_in_source,
)

from totes.db import connect
from totes.errors import ReaderFailed
from totes.extract import adbc, capture, closure, plan, readers
from totes.extract.plan import Piece
from totes.extract.snapshot import export, imported, snapshot
from totes.lake import Manifest
from totes.source.model import TABLES, TABLES_BY_NAME
from totes.stages import ingest_batch
from totes.stages.ingest_batch import ingest

# Every test here runs once per reader driver (pg8000, ADBC).
pytestmark = pytest.mark.usefixtures("reader_driver")


@pytest.fixture
def statements(monkeypatch) -> list[str]:
    """Every SQL text any session of the process runs (the readers' threads included), on
    either driver."""
    seen: list[str] = []

    def spying(real):
        def spy(self, sql, *args, **kwargs):
            seen.append(sql)
            return real(self, sql, *args, **kwargs)

        return spy

    monkeypatch.setattr(pg8000.native.Connection, "run", spying(pg8000.native.Connection.run))
    monkeypatch.setattr(adbc.Session, "run", spying(adbc.Session.run))
    monkeypatch.setattr(adbc.Session, "stream", spying(adbc.Session.stream))
    return seen


def run_read(driver: str, table, *, one_piece: bool) -> str:
    """The statement a reader of ``driver`` reads its table's rows with: of the whole run, or
    of one published piece."""
    if driver == "adbc":
        return closure.run_selection_sql(table, one_piece=one_piece)
    return closure.run_copy_sql(table, one_piece=one_piece)


def contents(lake, manifests: list[Manifest]) -> list[dict]:
    """Per batch: its window (but the clock-stamped end of the last), rows and every table's
    rows in key order."""
    out = []
    for i, manifest in enumerate(manifests):
        tables = batch_tables(lake, manifest)
        out.append(
            {
                "part": manifest.extra["part"],
                "window": (
                    manifest.window_lo,
                    manifest.window_hi if i < len(manifests) - 1 else None,
                ),
                "new_rows": manifest.extra["new_rows"],
                "tables": {
                    name: t.sort_by(TABLES_BY_NAME[name].key).to_pylist()
                    for name, t in sorted(tables.items())
                },
            }
        )
    return out


def empty(lake) -> None:
    for key in [o["Key"] for o in lake.s3.list_objects_v2(Bucket=lake.bucket).get("Contents", [])]:
        lake.s3.delete_object(Bucket=lake.bucket, Key=key)


def test_a_multi_batch_capture_reads_each_large_table_once_and_writes_the_same_batches(
    stack, source, lake, statements, reader_driver, read_alone
):
    settings = settings_for(stack, max_batch_rows=5_000, chunk_rows=2_000)
    per_batch = contents(lake, ingest(replace(settings, readers=0), source, lake.s3))
    empty(lake)
    statements.clear()

    manifests = ingest(settings, source, lake.s3)

    assert len(manifests) >= 8
    assert contents(lake, manifests) == per_batch
    reads = len(manifests) if read_alone else 1  # a scan per piece, or one for the run
    read_once = {
        t.name
        for t in TABLES
        if statements.count(run_read(reader_driver, t, one_piece=read_alone)) == reads
    }
    assert len(read_once) == readers.MAX_READERS
    assert {"sales_order", "payment"} <= read_once
    for table in TABLES:
        again = statements.count(closure.copy_sql(table))
        assert again == (0 if table.name in read_once else len(manifests)), table.name


def reader_session(driver: str, source):
    """A reader's session of ``driver``, as the ingest stage opens it."""
    if driver == "adbc":
        return adbc.connect(source, "totes-ingest-reader")
    return connect(source, application_name="totes-ingest-reader")


def test_readers_see_the_runs_snapshot_and_nothing_committed_after_it(
    source, pg_connect, reader_driver
):
    writer = pg_connect(source)
    con = connect(source)
    try:
        with snapshot(con):
            [[mine, ids]] = con.run(
                "SELECT CAST(pg_current_snapshot() AS text), array_agg(sales_order_id)"
                " FROM sales_order"
            )
            [[middle]] = con.run(
                "SELECT CAST(percentile_disc(0.5) WITHIN GROUP (ORDER BY last_updated) AS text)"
                " FROM sales_order"
            )
            snapshot_id = export(con)
            late = insert_sales_orders(writer, 3)  # committed after the run's snapshot

            other = reader_session(reader_driver, source)
            try:
                with imported(other, snapshot_id):
                    [[theirs, count]] = other.run(
                        "SELECT CAST(pg_current_snapshot() AS text), count(*) FROM sales_order"
                    )
            finally:
                other.close()
            assert (theirs, count) == (mine, len(ids))

            pieces = [Piece(None, middle, 0), Piece(middle, None, 0)]
            reader = readers.TableReader(
                TABLES_BY_NAME["sales_order"],
                lambda: reader_session(reader_driver, source),
                snapshot_id,
                capture.Selection(capture.EVERYTHING),
                pieces,
                500,
                reader_driver,
            ).start()
            try:
                first = pa.concat_tables(list(reader.piece(0)))
                second = pa.concat_tables(list(reader.piece(1)))
            finally:
                reader.stop()
    finally:
        con.close()

    got = first.column("sales_order_id").to_pylist() + second.column("sales_order_id").to_pylist()
    assert sorted(got) == sorted(ids)
    assert not set(late) & set(got)
    [[stamps_before]] = writer.run(
        "SELECT count(*) FROM sales_order WHERE last_updated < CAST(:m AS timestamp)"
        " AND NOT sales_order_id = ANY(:late)",
        m=middle,
        late=late,
    )
    assert first.num_rows == stamps_before  # piece 0: exactly the rows stamped before its end
    assert first.schema == TABLES_BY_NAME["sales_order"].lake_schema


def _reader_sessions(pg_connect, source, name: str = "totes-ingest-reader") -> int:
    [[n]] = pg_connect(source).run(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name", name=name
    )
    return int(n)


def _no_reader_left(pg_connect, source) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        threads = [t for t in threading.enumerate() if t.name.startswith("reader-")]
        if not threads and not _reader_sessions(pg_connect, source):
            return True
        time.sleep(0.1)
    return False


class FailAfterManifests:
    """An S3 client that fails the first data file after ``allowed`` manifests."""

    def __init__(self, real, allowed: int):
        self.real = real
        self.allowed = allowed

    def put_object(self, **kwargs):
        if kwargs["Key"].startswith("manifests/"):
            self.allowed -= 1
        elif self.allowed < 0:
            raise ConnectionError("simulated failure between two batches of one run")
        return self.real.put_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_run_that_fails_midway_stops_its_readers_and_closes_their_sessions(
    stack, source, lake, pg_connect
):
    settings = settings_for(stack, max_batch_rows=5_000, chunk_rows=2_000)

    with pytest.raises(ConnectionError):
        ingest(settings, source, FailAfterManifests(lake.s3, allowed=1))

    assert _no_reader_left(pg_connect, source)


def readers_select(monkeypatch, expression: str) -> None:
    """Every reader selects ``expression`` from its table, whichever driver and read mode."""
    monkeypatch.setattr(
        readers,
        "run_copy_sql",
        lambda t, **_: f"COPY (SELECT {expression} FROM {t.name}) TO STDOUT",  # noqa: S608
    )
    monkeypatch.setattr(
        readers,
        "run_selection_sql",
        lambda t, **_: f"SELECT {expression} FROM {t.name}",  # noqa: S608
    )


def test_a_readers_failure_fails_the_run_naming_its_table_before_its_batch_is_written(
    stack, source, lake, pg_connect, monkeypatch, reader_driver
):
    readers_select(monkeypatch, "no_such_column")
    settings = settings_for(stack, max_batch_rows=5_000, chunk_rows=2_000)

    with pytest.raises(
        ReaderFailed, match=rf"reader of (\w+) \({reader_driver}\) failed: .*no_such_column"
    ) as failed:
        ingest(settings, source, lake.s3)

    table = failed.value.args[0].split()[2]
    assert table in {t.name for t in TABLES}
    assert lake.latest_manifest() is None
    assert _no_reader_left(pg_connect, source)


LEAKED = "quokka.zanzibarsson@leak.example"


def test_a_readers_server_error_is_named_without_a_value_it_quotes_or_its_detail(
    stack, source, lake, pg_connect, monkeypatch, log_lines, reader_driver
):
    """A server error quoting a value (a data exception's message; ADBC's text embeds the
    message, DETAIL and query whole) fails the run naming the reader's table, driver and
    SQLSTATE; the value reaches neither the error, its traceback nor a log line."""
    value = f"CAST('{LEAKED}' AS int)"
    readers_select(monkeypatch, value)
    settings = settings_for(stack, max_batch_rows=5_000, chunk_rows=2_000)

    with pytest.raises(ReaderFailed) as failed:
        ingest(settings, source, lake.s3)

    assert re.fullmatch(
        rf"reader of \w+ \({reader_driver}\) failed: \w+: invalid text representation"
        r" \[SQLSTATE 22P02\]",
        str(failed.value),
    ), str(failed.value)
    said = "".join(traceback.format_exception(failed.value)) + log_lines.getvalue()
    assert LEAKED not in said
    assert lake.latest_manifest() is None


class KillReadersAfterManifests(FailAfterManifests):
    """An S3 client that, once ``allowed`` manifests are stored, terminates every reader's
    session (as an operator or a failover would), mid-run."""

    def __init__(self, real, allowed: int, killer):
        super().__init__(real, allowed)
        self.killer = killer
        self.killed = 0

    def put_object(self, **kwargs):
        done = self.real.put_object(**kwargs)
        if kwargs["Key"].startswith("manifests/"):
            self.allowed -= 1
            if self.allowed == 0:
                [[self.killed]] = self.killer.run(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'totes-ingest-reader'"
                    " AND datname = current_database()"
                )
        return done


def test_a_killed_reader_session_fails_the_run_naming_its_table_and_the_retry_loses_nothing(
    stack, source, lake, pg_connect, reader_driver, read_alone
):
    """The readers' sessions die after the run's first batch: the run fails naming a read
    table and its driver, writes no batch past the failure, leaves the resume state of the
    last batch it wrote, and the next run picks up every row from there."""
    settings = settings_for(stack, max_batch_rows=5_000, chunk_rows=2_000)
    s3 = KillReadersAfterManifests(lake.s3, allowed=1, killer=pg_connect(source))

    with pytest.raises(ReaderFailed, match=rf"reader of \w+ \({reader_driver}\) failed"):
        ingest(settings, source, s3)

    assert s3.killed == readers.MAX_READERS
    assert _no_reader_left(pg_connect, source)
    written = [lake.get_manifest(k) for k in lake.manifest_keys()]
    assert written
    left = lake.latest_manifest()
    assert left is not None
    assert left.batch_id == max(m.batch_id for m in written)
    assert left.extra["part"] < left.extra["parts"] - 1  # the run's last batch is not written
    assert left.extra["capture"]["resume"] is not None  # the rest is still to be read
    manifests = ingest(settings, source, lake.s3)
    assert manifests
    assert versions_in_lake(lake) == versions_in_source(pg_connect(source))


@pytest.mark.parametrize("bound", [1_000_000, 5_000])  # one piece; several, with readers
def test_a_statement_may_outlast_the_connect_timeout(
    stack, source, lake, pg_connect, monkeypatch, bound
):
    """The run's statements (and a reader's sorted COPY) answer nothing for seconds on a busy
    source; only connecting is bounded by the short connect timeout. Here every session
    connects with a 0.3 s timeout and the source holds a table locked for 1.5 s."""
    from totes.stages import ingest_batch

    real = ingest_batch.connect
    monkeypatch.setattr(ingest_batch, "connect", lambda creds, **kw: real(creds, timeout=0.3))
    locker = pg_connect(source)
    locker.run("BEGIN")
    locker.run("LOCK TABLE payment IN ACCESS EXCLUSIVE MODE")
    release = threading.Timer(1.5, lambda: locker.run("COMMIT"))
    release.start()
    try:
        manifests = ingest(settings_for(stack, max_batch_rows=bound), source, lake.s3)
    finally:
        release.join()

    assert sum(m.row_counts.get("payment", 0) for m in manifests) > 0


def test_readers_select_the_same_new_rows_when_other_transactions_began_since_the_run_started(
    stack, source, lake, pg_connect, monkeypatch
):
    """``age()`` counts from a per-transaction reference: a reader that asks after other
    transactions began must not drop the rows just above the threshold (a busy source)."""
    settings = settings_for(stack, max_batch_rows=3)
    ingest(settings_for(stack), source, lake.s3)  # everything: the state has a threshold now
    con = pg_connect(source)
    insert_sales_orders(con, 3)
    insert_sales_orders(con, 3)  # a second stamp: two pieces, so readers
    busy = pg_connect(source)
    real = readers.TableReader._read

    def after_other_transactions(self):
        for _ in range(20):
            busy.run("SELECT txid_current()")  # each its own transaction: ids move on
        real(self)

    monkeypatch.setattr(readers.TableReader, "_read", after_other_transactions)

    manifests = ingest(settings, source, lake.s3)

    assert len(manifests) >= 2
    assert versions_in_lake(lake) == versions_in_source(con)


def _no_plan_session_left(pg_connect, source) -> bool:
    """No planning session in ``pg_stat_activity``, waiting a little: a closed session's
    backend leaves the view when it has exited, not when the client has closed."""
    deadline = time.monotonic() + 10
    while _reader_sessions(pg_connect, source, "totes-ingest-plan"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """The application name of every pg8000 session the run opens (its own, planning)."""
    names: list[str] = []
    real_session = ingest_batch._session

    def recording(creds, application_name):
        names.append(application_name)
        return real_session(creds, application_name)

    monkeypatch.setattr(ingest_batch, "_session", recording)
    return names


def test_a_first_capture_plans_on_sessions_it_closes_and_a_later_cycle_opens_none(
    stack, source, lake, pg_connect, monkeypatch, opened
):
    """A capture of every row counts and cuts with its largest tables on sessions of their
    own, as many as its readers, closed before the batches are read; a later cycle plans on
    the run's own session. A helper's failure fails the run before anything is written, and
    leaves no session open."""
    settings = settings_for(stack, max_batch_rows=5_000, chunk_rows=2_000)

    with monkeypatch.context() as patch:
        failing = plan.count

        def count(con, **kwargs):
            for helper in kwargs["helpers"][1:2]:
                helper.run("SELECT no_such_function()")
            return failing(con, **kwargs)

        patch.setattr(plan, "count", count)
        with pytest.raises(pg8000.native.DatabaseError, match="no_such_function"):
            ingest(settings, source, lake.s3)
    assert lake.latest_manifest() is None
    assert _no_plan_session_left(pg_connect, source)

    opened.clear()
    ingest(settings, source, lake.s3)
    assert opened.count("totes-ingest-plan") == settings.readers
    assert len(lake.manifest_keys()) > 1  # a run of several batches
    assert _no_plan_session_left(pg_connect, source)

    opened.clear()
    writer = pg_connect(source)
    writer.run("UPDATE sales_order SET units_sold = units_sold + 1 WHERE sales_order_id = 1")
    ingest(settings, source, lake.s3)
    assert opened == ["totes-ingest"]


def test_a_first_capture_too_small_to_be_cut_plans_on_its_own_session(stack, source, lake, opened):
    """A source whose files cannot hold more rows than the bound (``plan.may_need_pieces``)
    is captured in one piece: it opens no planning session, so one session is all a small
    source must allow, as before planning sessions."""
    ingest(settings_for(stack, max_batch_rows=50_000_000), source, lake.s3)

    assert opened == ["totes-ingest"]
    assert len(lake.manifest_keys()) == 1
