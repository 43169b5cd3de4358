"""The large-table readers' two drivers (``extract.adbc``: pg8000 COPY csv, ADBC binary COPY)
write the same raw lake from the same source: the same manifests, the same Parquet parts, the
same values, the odd ones included; and ADBC readers see exactly the run's snapshot while the
source is written to."""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections import Counter
from dataclasses import replace

import pytest
from ingest_support import insert_sales_orders, settings_for

from totes.errors import ReaderFailed
from totes.extract import adbc, readers
from totes.lake import Lake
from totes.source import model
from totes.source.model import TABLES_BY_NAME
from totes.stages.ingest_batch import ingest

# Clock-dependent manifest fields (the run's own instant), not part of what a driver decides.
CLOCK_FIELDS = ("hi_utc", "source_now", "capture")
READ_TABLES = {"sales_order", "payment", "transaction", "purchase_order"}
WINDOW_ONLY = {"sales_order", "payment", "purchase_order"}


def seed_odd_values(con) -> None:
    """The values the capture tests seed, in the tables the readers read: timestamps the lake
    cannot hold (+-infinity, year 10000, BC), a numeric past numeric(10,2), NULLs where the
    model has none, empty text against NULL text, quotes, commas, newlines, non-ASCII, a 3 MB
    value and a 2 x 9 MB row."""
    con.run("ALTER TABLE sales_order ALTER COLUMN units_sold DROP NOT NULL")
    con.run("ALTER TABLE sales_order ALTER COLUMN agreed_payment_date DROP NOT NULL")
    con.run("ALTER TABLE sales_order ALTER COLUMN unit_price TYPE numeric")
    con.run("ALTER TABLE payment ALTER COLUMN last_updated DROP NOT NULL")
    con.run("UPDATE sales_order SET created_at = 'infinity' WHERE sales_order_id = 1")
    con.run("UPDATE sales_order SET created_at = '-infinity' WHERE sales_order_id = 2")
    con.run("UPDATE sales_order SET units_sold = NULL WHERE sales_order_id = 3")
    con.run("UPDATE sales_order SET unit_price = 123456789.125 WHERE sales_order_id = 4")
    con.run("UPDATE sales_order SET unit_price = -0.01 WHERE sales_order_id = 5")
    con.run(
        "UPDATE sales_order SET agreed_delivery_date = '', agreed_payment_date = NULL"
        " WHERE sales_order_id = 6"
    )
    con.run(
        "UPDATE sales_order SET agreed_delivery_date = :v WHERE sales_order_id = 7",
        v='a "quoted", value\nover two lines, Zoë 東京 \\N',
    )
    con.run(
        "UPDATE sales_order SET agreed_delivery_date = :big WHERE sales_order_id = 8",
        big=('line "one", two\n' * 200_000)[: 3 * 2**20],
    )
    con.run(
        "UPDATE sales_order SET agreed_delivery_date = :huge, agreed_payment_date = :huge"
        " WHERE sales_order_id = 9",
        huge="x" * (9 * 2**20),
    )
    con.run("UPDATE payment SET last_updated = '10000-01-01 00:00:00' WHERE payment_id = 2")
    con.run("UPDATE payment SET last_updated = '4713-01-01 00:00:00 BC' WHERE payment_id = 3")
    con.run("UPDATE payment SET last_updated = '-infinity' WHERE payment_id = 4")
    con.run("UPDATE payment SET last_updated = NULL WHERE payment_id = 5")
    con.run("UPDATE transaction SET purchase_order_id = NULL WHERE transaction_id = 6")


def lake_of_run(lake: Lake, manifests) -> list[dict]:
    """Per batch: the manifest without its clock fields, and every part as Arrow."""
    out = []
    for manifest in manifests:
        extra = {k: v for k, v in manifest.extra.items() if k not in CLOCK_FIELDS}
        last = manifest.extra["part"] == manifest.extra["parts"] - 1
        out.append(
            {
                "window": (manifest.window_lo, None if last else manifest.window_hi),
                "extra": extra,
                "files": [(f.table, f.key, f.rows, f.fingerprint, f.bytes) for f in manifest.files],
                "parts": [lake.get_table(f.key) for f in manifest.files],
            }
        )
    return out


def empty(lake: Lake) -> None:
    for item in lake.s3.list_objects_v2(Bucket=lake.bucket).get("Contents", []):
        lake.s3.delete_object(Bucket=lake.bucket, Key=item["Key"])


@pytest.fixture
def readers_seen(monkeypatch) -> list[tuple[str, str]]:
    """(driver, table) of every reader a run starts."""
    seen: list[tuple[str, str]] = []
    real = readers.TableReader.start

    def start(self):
        seen.append((self.driver, self.table.name))
        return real(self)

    monkeypatch.setattr(readers.TableReader, "start", start)
    return seen


def test_both_drivers_write_the_same_manifests_and_parts_odd_values_included(
    stack, source, lake, pg_connect, readers_seen, read_alone
):
    seed_odd_values(pg_connect(source))
    settings = settings_for(stack, max_batch_rows=5_000, chunk_rows=2_000)

    runs = {}
    for driver in adbc.DRIVERS:
        empty(lake)
        readers_seen.clear()
        manifests = ingest(replace(settings, reader_driver=driver), source, lake.s3)
        assert {d for d, _ in readers_seen} == {driver}
        assert {t for _, t in readers_seen} == READ_TABLES
        runs[driver] = lake_of_run(lake, manifests)

    pg8000_run, adbc_run = runs["pg8000"], runs["adbc"]
    assert len(pg8000_run) >= 8
    for ours, theirs in zip(pg8000_run, adbc_run, strict=True):
        assert ours["window"] == theirs["window"]
        assert ours["extra"] == theirs["extra"]
        assert ours["files"] == theirs["files"]
        for a, b in zip(ours["parts"], theirs["parts"], strict=True):
            assert a.schema == b.schema
            assert a.equals(b)
    # The odd values did travel (and aside where the lake cannot hold them).
    orders = {
        r["sales_order_id"]: r
        for batch in adbc_run
        for f, part in zip(batch["files"], batch["parts"], strict=True)
        if f[0] == "sales_order"
        for r in part.to_pylist()
    }
    assert orders[1]["created_at"] is None
    assert "infinity" in orders[1]["_unrepresentable"]
    assert orders[4]["unit_price"] is None
    assert "123456789.125" in orders[4]["_unrepresentable"]
    assert str(orders[5]["unit_price"]) == "-0.01"
    assert (orders[6]["agreed_delivery_date"], orders[6]["agreed_payment_date"]) == ("", None)
    assert orders[7]["agreed_delivery_date"].startswith('a "quoted", value\nover')
    assert len(orders[9]["agreed_payment_date"]) == 9 * 2**20


def test_adbc_readers_see_only_the_runs_snapshot_while_the_source_is_written(
    stack, source, lake, pg_connect, readers_seen, read_alone
):
    """Orders are inserted and payments updated throughout three multi-batch runs on ADBC
    readers: afterwards every version the source holds is in the lake, and no version arrived
    twice (a reader seeing a later snapshot than its run would deliver the rows committed in
    between in this run and again in the next)."""
    settings = settings_for(stack, max_batch_rows=5_000, chunk_rows=2_000, reader_driver="adbc")
    writer = pg_connect(source)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            step = 0
            while not stop.is_set():
                step += 1
                insert_sales_orders(writer, 5)
                writer.run(
                    "UPDATE payment SET last_updated = clock_timestamp()"
                    " WHERE payment_id = 1 + (:s * 37) % 15000",
                    s=step,
                )
                time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for _ in range(3):
            ingest(settings, source, lake.s3)
    finally:
        stop.set()
        thread.join()
    assert not errors
    ingest(settings, source, lake.s3)  # what was committed after the last run under load

    assert ("adbc", "sales_order") in readers_seen
    arrived: Counter[tuple[str, int, object]] = Counter()
    for key in lake.manifest_keys():
        manifest = lake.get_manifest(key)
        for f in manifest.files:
            if f.table not in TABLES_BY_NAME:
                continue
            id_column = TABLES_BY_NAME[f.table].key
            part = lake.get_table(f.key).select([id_column, "last_updated"])
            arrived.update((f.table, r[id_column], r["last_updated"]) for r in part.to_pylist())
    # Window-only tables carry each version once (transaction rows are also pulled in again
    # by the payments that reference them, by design).
    facts = {k: n for k, n in arrived.items() if k[0] in WINDOW_ONLY}
    assert max(facts.values()) == 1  # no version arrived twice
    now = pg_connect(source)
    for name in READ_TABLES:
        key = TABLES_BY_NAME[name].key
        held = {(name, r[0], r[1]) for r in now.run(f"SELECT {key}, last_updated FROM {name}")}  # noqa: S608
        assert held <= set(arrived), name


def test_the_runs_driver_is_logged_as_a_key(stack, source, lake, log_lines):
    ingest(settings_for(stack, reader_driver="pg8000"), source, lake.s3)

    assert '"reader_driver":"pg8000"' in log_lines.getvalue()


@pytest.mark.parametrize(("bound", "readers_started"), [(1_000_000, False), (5_000, True)])
def test_the_default_driver_is_chosen_only_by_a_run_that_starts_readers(
    stack, source, lake, log_lines, monkeypatch, bound, readers_started
):
    """By default the choice (which waits for the driver's import, ``adbc.preload``) is made
    when the run starts readers: a run of one piece neither waits nor logs a driver."""
    chosen = []
    monkeypatch.setattr(adbc, "choose", lambda requested: chosen.append(requested) or "pg8000")

    manifests = ingest(settings_for(stack, max_batch_rows=bound), source, lake.s3)

    assert (len(manifests) > 1) is readers_started
    assert chosen == ([None] if readers_started else [])
    assert ('"reader_driver":"pg8000"' in log_lines.getvalue()) is readers_started


# A source timestamp column widened past the lake's milliseconds (the schema check accepts any
# precision of ``timestamp without time zone``), holding a value with microseconds.
MICROSECONDS = "2023-07-19 13:47:29.123456"
READ_PATHS = pytest.mark.parametrize(
    ("driver", "max_batch_rows"),
    [("pg8000", 1_000_000), ("pg8000", 5_000), ("adbc", 5_000)],
    ids=["one-piece-pg8000", "readers-pg8000", "readers-adbc"],
)


def widened_with_microseconds(con) -> None:
    con.run("ALTER TABLE sales_order ALTER COLUMN created_at TYPE timestamp(6)")
    con.run(
        "UPDATE sales_order SET created_at = CAST(:t AS timestamp) WHERE sales_order_id = 3",
        t=MICROSECONDS,
    )


@READ_PATHS
def test_a_stamp_past_milliseconds_travels_aside_in_its_row_on_every_read_path(
    stack, source, lake, pg_connect, log_lines, driver, max_batch_rows
):
    """As 'infinity' does (docs/ingest.md, values the lake cannot hold): NULL in the column,
    its text in ``_unrepresentable`` (transform sets the row aside), the run goes on. It
    failed the whole run (found by review): Arrow refuses microseconds in timestamp[ms]."""
    widened_with_microseconds(pg_connect(source))
    settings = settings_for(
        stack, max_batch_rows=max_batch_rows, chunk_rows=2_000, reader_driver=driver
    )

    manifests = ingest(settings, source, lake.s3)

    [row] = [
        r
        for batch in lake_of_run(lake, manifests)
        for f, part in zip(batch["files"], batch["parts"], strict=True)
        if f[0] == "sales_order"
        for r in part.to_pylist()
        if r["sales_order_id"] == 3
    ]
    assert row["created_at"] is None
    assert json.loads(row["_unrepresentable"]) == {"created_at": MICROSECONDS}
    assert MICROSECONDS not in log_lines.getvalue()


@READ_PATHS
def test_a_source_value_the_lake_cannot_hold_is_named_by_table_and_column_never_quoted(
    stack, source, lake, pg_connect, log_lines, monkeypatch, driver, max_batch_rows
):
    """A value that slips past the selection's rules (here: the timestamp rule removed) fails
    the run on every read path naming the table and column; neither the error, its traceback
    nor a log line carries the value (Arrow's CSV parser quotes it: 'invalid value ...'), and
    a reader's failure is not replaced by its session's failed ROLLBACK."""
    rules = model.SQL_TYPES["timestamp(3)"]
    monkeypatch.setitem(model.SQL_TYPES, "timestamp(3)", replace(rules, representable=None))
    widened_with_microseconds(pg_connect(source))
    settings = settings_for(
        stack, max_batch_rows=max_batch_rows, chunk_rows=2_000, reader_driver=driver
    )

    with pytest.raises((ValueError, ReaderFailed)) as failed:  # one piece; readers
        ingest(settings, source, lake.s3)

    message = str(failed.value)
    assert "sales_order.created_at: a source value does not fit the raw lake type" in message
    said = "".join(traceback.format_exception(failed.value)) + log_lines.getvalue()
    assert [v for v in (MICROSECONDS, "13:47:29", ".123456") if v in said] == []
    assert lake.latest_manifest() is None
