"""The capture guarantee outside the happy path, against a real PostgreSQL and moto S3: rows of
transactions of any length (subtransactions too), rows written under another time zone, rows
stamped in the future and their corrections, cascades that keep the stamp, values the lake
cannot hold, values of any size, hard deletes, a damaged or forged lake state, and a run cut
short between its batches. Each row of issue 12's table on the ingest side has a test here."""

from __future__ import annotations

import hashlib
import io
import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingest_support import batch_tables, ids, insert_sales_orders, settings_for
from ingest_support import versions_in_lake as lake_versions
from ingest_support import versions_in_source as source_versions

from totes.db import connect
from totes.errors import DamagedKeySet
from totes.extract.keysets import DELETED_KEYS, KEY_SCHEMA
from totes.identifiers import quote
from totes.lake import RAW_PREFIX, STATE_KEY, Manifest, manifest_key
from totes.source.model import UNREPRESENTABLE
from totes.stages.ingest_batch import ingest


def run(stack, source, lake, **overrides) -> list[Manifest]:
    return ingest(settings_for(stack, **overrides), source, lake.s3)


def deleted_in(lake, manifests: list[Manifest]) -> set[tuple[str, int]]:
    out = set()
    for manifest in manifests:
        for entry in manifest.files_for(DELETED_KEYS):
            table = lake.get_table(entry.key)
            out |= {(r["table"], r["key"]) for r in table.to_pylist()}
    return out


def missing_versions(con, lake) -> set:
    return source_versions(con) - lake_versions(lake)


# --- transactions of any length ----------------------------------------------------------


def test_a_transaction_open_across_several_cycles_arrives_in_the_first_cycle_after_it_commits(
    stack, source, lake, pg_connect
):
    run(stack, source, lake)
    live = pg_connect(source)
    long = connect(source)
    long.run("BEGIN")
    # Stamped when it began, and a subtransaction (pg_snapshot lists no subtransaction ids).
    [[early_order]] = long.run(
        "INSERT INTO sales_order (design_id, staff_id, counterparty_id, units_sold, unit_price,"
        " currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id,"
        " created_at, last_updated) VALUES (1, 1, 1, 1000, 2.5, 1, '2024-12-01', '2024-12-02',"
        " 1, now(), now()) RETURNING sales_order_id"
    )
    long.run("UPDATE payment SET paid = NOT paid, last_updated = now() WHERE payment_id = 42")
    long.run("SAVEPOINT inner_work")
    long.run("UPDATE design SET design_name = 'Linen' WHERE design_id = 7")  # same stamp kept

    for _ in range(3):  # other commits move on while it stays open
        insert_sales_orders(live, 5)
        assert run(stack, source, lake)
        assert missing_versions(live, lake) == set()  # all that committed is captured
    long.run("RELEASE SAVEPOINT inner_work")
    long.run("COMMIT")
    long.close()

    after = run(stack, source, lake)

    got = {name: table for m in after for name, table in batch_tables(lake, m).items()}
    assert early_order in ids(got)["sales_order"]
    assert 42 in ids(got)["payment"]
    designs = got["design"].to_pylist()
    assert {"design_id": 7, "design_name": "Linen"}.items() <= next(
        r for r in designs if r["design_id"] == 7
    ).items()
    assert missing_versions(live, lake) == set()


# --- clocks and stamps -------------------------------------------------------------------


def test_a_time_zone_change_and_back_loses_nothing(stack, source, lake, pg_connect):
    run(stack, source, lake)
    admin = pg_connect(source)
    admin.run(f"ALTER DATABASE {quote(source.dbname)} SET timezone = 'Pacific/Kiritimati'")
    ahead = connect(source)  # new sessions stamp localtimestamp 14 hours ahead
    ahead_orders = set(insert_sales_orders(ahead, 3))
    ahead.close()
    assert run(stack, source, lake)
    admin.run(f"ALTER DATABASE {quote(source.dbname)} SET timezone = 'UTC'")
    back = connect(source)  # stamps now earlier than the rows just written
    back_orders = set(insert_sales_orders(back, 3))
    back.close()

    manifests = run(stack, source, lake)

    assert back_orders <= ids(batch_tables(lake, manifests[-1]))["sales_order"]
    assert ahead_orders
    assert missing_versions(admin, lake) == set()


def test_a_future_stamp_and_its_older_stamped_correction_both_arrive_at_once(
    stack, source, lake, pg_connect
):
    run(stack, source, lake)
    con = pg_connect(source)
    con.run(
        "UPDATE design SET design_name = 'Future', last_updated = localtimestamp + interval"
        " '1 day' WHERE design_id = 9"
    )
    first = run(stack, source, lake)
    con.run(
        "UPDATE design SET design_name = 'Corrected', last_updated = localtimestamp"
        " WHERE design_id = 9"
    )
    second = run(stack, source, lake)

    def name_of(manifests):
        rows = batch_tables(lake, manifests[0])["design"].to_pylist()
        return next(r["design_name"] for r in rows if r["design_id"] == 9)

    assert name_of(first) == "Future"
    assert name_of(second) == "Corrected"
    assert first[0].extra["capture_seq"] < second[0].extra["capture_seq"]


def test_an_on_delete_set_null_cascade_arrives_although_its_stamp_did_not_change(
    stack, source, lake, pg_connect
):
    run(stack, source, lake)
    con = pg_connect(source)
    [[transaction_id, order_id]] = con.run(
        "SELECT transaction_id, sales_order_id FROM transaction"
        " WHERE sales_order_id IS NOT NULL ORDER BY transaction_id LIMIT 1"
    )
    [[stamp_before]] = con.run(
        "SELECT last_updated FROM transaction WHERE transaction_id = :t", t=transaction_id
    )
    con.run("DELETE FROM sales_order WHERE sales_order_id = :o", o=order_id)

    manifests = run(stack, source, lake)

    rows = batch_tables(lake, manifests[-1])["transaction"].to_pylist()
    row = next(r for r in rows if r["transaction_id"] == transaction_id)
    assert row["sales_order_id"] is None
    assert row["last_updated"] == stamp_before  # the cascade kept the stamp
    assert ("sales_order", order_id) in deleted_in(lake, manifests)


# --- values ------------------------------------------------------------------------------


def test_values_the_lake_cannot_hold_travel_aside_and_the_run_goes_on(
    stack, source, lake, pg_connect
):
    run(stack, source, lake)
    con = pg_connect(source)
    con.run("UPDATE sales_order SET created_at = 'infinity' WHERE sales_order_id = 1")
    con.run("UPDATE payment SET last_updated = '10000-01-01 00:00:00' WHERE payment_id = 2")
    con.run("ALTER TABLE sales_order ALTER COLUMN units_sold DROP NOT NULL")
    con.run(
        "UPDATE sales_order SET units_sold = NULL, last_updated = localtimestamp"
        " WHERE sales_order_id = 3"
    )
    good = set(insert_sales_orders(con, 4))

    manifests = run(stack, source, lake)

    got = batch_tables(lake, manifests[-1])
    orders = {r["sales_order_id"]: r for r in got["sales_order"].to_pylist()}
    assert good <= set(orders)
    assert orders[1]["created_at"] is None
    assert json.loads(orders[1][UNREPRESENTABLE]) == {"created_at": "infinity"}
    assert orders[3]["units_sold"] is None
    assert orders[3][UNREPRESENTABLE] is None
    payments = {r["payment_id"]: r for r in got["payment"].to_pylist()}
    assert json.loads(payments[2][UNREPRESENTABLE]) == {"last_updated": "10000-01-01 00:00:00"}
    assert all(orders[i][UNREPRESENTABLE] is None for i in good)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_a_3mb_value_and_a_50mb_row_arrive_intact(stack, source, lake, pg_connect):
    run(stack, source, lake)
    con = pg_connect(source)
    # Quotes, commas and newlines inside: the CSV must be cut only between rows.
    big = ('line "one", two\n' * 200_000)[: 3 * 2**20]
    huge = "x" * (25 * 2**20)
    con.run(
        "UPDATE design SET design_name = :big, last_updated = localtimestamp WHERE design_id = 5",
        big=big,
    )
    con.run(
        "UPDATE design SET file_location = :huge, file_name = :huge,"
        " last_updated = localtimestamp WHERE design_id = 6",
        huge=huge,
    )

    manifests = run(stack, source, lake, chunk_rows=2)

    rows = {
        r["design_id"]: r for m in manifests for r in batch_tables(lake, m)["design"].to_pylist()
    }
    assert digest(rows[5]["design_name"]) == digest(big)
    assert digest(rows[6]["file_location"]) == digest(huge)
    assert digest(rows[6]["file_name"]) == digest(huge)


# --- deletes -----------------------------------------------------------------------------


def test_hard_deletes_travel_as_deleted_keys_and_a_returning_key_travels_again(
    stack, source, lake, pg_connect
):
    run(stack, source, lake)
    con = pg_connect(source)
    [[design]] = con.run(
        "SELECT min(design_id) FROM design d WHERE NOT EXISTS"
        " (SELECT 1 FROM sales_order s WHERE s.design_id = d.design_id)"
    )
    con.run("DELETE FROM design WHERE design_id = :d", d=design)
    con.run("DELETE FROM payment WHERE payment_id = 10")
    [[order]] = con.run(
        "SELECT min(s.sales_order_id) FROM sales_order s JOIN transaction t"
        " USING (sales_order_id) WHERE NOT EXISTS"
        " (SELECT 1 FROM payment p WHERE p.transaction_id = t.transaction_id)"
    )
    if order is not None:
        con.run("DELETE FROM sales_order WHERE sales_order_id = :o", o=order)

    deleted = run(stack, source, lake)
    quiet = run(stack, source, lake)
    con.run(
        "INSERT INTO design (design_id, design_name, file_location, file_name, created_at,"
        " last_updated) VALUES (:d, 'Back', '/x', 'x.json', localtimestamp, localtimestamp)",
        d=design,
    )
    back = run(stack, source, lake)

    expected = {("design", design), ("payment", 10)} | (
        {("sales_order", order)} if order is not None else set()
    )
    assert deleted_in(lake, deleted) == expected
    assert deleted[-1].extra["deleted_rows"] == {t: 1 for t, _ in expected}
    assert quiet == []
    assert deleted_in(lake, back) == set()
    assert design in ids(batch_tables(lake, back[-1]))["design"]


def test_without_deletes_no_key_set_is_rewritten_when_only_updates_happened(
    stack, source, lake, pg_connect
):
    first = run(stack, source, lake)
    con = pg_connect(source)
    con.run(
        "UPDATE payment SET paid = NOT paid, last_updated = localtimestamp WHERE payment_id < 50"
    )

    second = run(stack, source, lake)

    assert second[-1].extra["capture"]["keysets"] == first[-1].extra["capture"]["keysets"]
    assert deleted_in(lake, second) == set()


# --- the lake's state --------------------------------------------------------------------


def silently_damaged(body: bytes, keys: np.ndarray) -> bytes:
    """``body`` (a key set) with one bit flipped where, read without page checksums, it still
    reads as as many sorted distinct keys, other ones: damage only the checksum shows."""
    for at, bit in itertools.product(range(4, len(body) - 8), range(8)):
        damaged = body[:at] + bytes([body[at] ^ (1 << bit)]) + body[at + 1 :]
        try:
            read = pq.ParquetFile(io.BytesIO(damaged)).read().column("key").to_numpy()
        except Exception:  # noqa: S112 - damage that the reader refuses is not wanted here
            continue
        still_plausible = len(read) == len(keys) and bool(np.all(read[1:] > read[:-1]))
        if still_plausible and not np.array_equal(read, keys):
            return damaged
    raise AssertionError("no silent damage found")


def test_a_damaged_key_set_stops_the_run_by_name_before_anything_is_written(
    stack, source, lake, pg_connect
):
    """Read as it is, a damaged key set marks live rows deleted or hides deletions. Each page
    carries a CRC-32, and what its state recorded (count, sorted distinct keys) is checked."""
    first = run(stack, source, lake)[-1]
    keysets = first.extra["capture"]["keysets"]
    payment = keysets["payment"]["key"]
    body = lake.get_bytes(payment)
    stored = lake.get_table(payment).column("key").to_numpy()
    con = pg_connect(source)
    con.run("DELETE FROM payment WHERE payment_id = 10")  # the run must read the key set
    manifests = lake.keys("manifests/")

    for damaged, what in [
        (silently_damaged(body, stored), "unreadable Parquet"),
        (key_set_bytes(stored[1:]), "keys where its state recorded"),  # a key lost, no CRCs
        (key_set_bytes(stored[::-1]), "not sorted and distinct"),
    ]:
        lake.put_bytes(payment, damaged, "application/vnd.apache.parquet")
        with pytest.raises(DamagedKeySet, match=f"key set of payment at {payment}.*{what}"):
            run(stack, source, lake)
        assert lake.keys("manifests/") == manifests  # nothing written, the state unchanged

    lake.put_bytes(payment, body, "application/vnd.apache.parquet")
    assert deleted_in(lake, run(stack, source, lake)) == {("payment", 10)}


def key_set_bytes(keys: np.ndarray) -> bytes:
    """A key set as files were written before pages carried checksums."""
    sink = io.BytesIO()
    pq.write_table(pa.table({"key": pa.array(keys, pa.int32())}, schema=KEY_SCHEMA), sink)
    return sink.getvalue()


def test_a_damaged_pointer_and_a_corrupt_newest_manifest_are_named_and_passed_over(
    stack, source, lake, pg_connect, log_lines
):
    run(stack, source, lake)
    con = pg_connect(source)
    insert_sales_orders(con, 2)
    newest = run(stack, source, lake)[-1]
    lake.put_bytes(STATE_KEY, b"{not json", "application/json")
    lake.put_bytes(manifest_key(newest.batch_id), b"\x00garbage", "application/json")
    later = set(insert_sales_orders(con, 3))

    manifests = run(stack, source, lake)

    out = log_lines.getvalue()
    assert STATE_KEY in out
    assert manifest_key(newest.batch_id) in out
    assert later <= ids(batch_tables(lake, manifests[-1]))["sales_order"]
    assert run(stack, source, lake) == []  # and the next cycle is quiet again


def test_a_state_ahead_of_the_source_is_ignored_and_named(
    stack, source, lake, pg_connect, log_lines
):
    first = run(stack, source, lake)[-1]
    forged = dict(first.extra["capture"], snapshot="999999999:999999999:", seq=10**15)
    lake.put_state(manifest_key(first.batch_id), forged)
    con = pg_connect(source)
    new = set(insert_sales_orders(con, 2))

    manifests = run(stack, source, lake)

    assert "its snapshot is ahead of the source" in log_lines.getvalue()
    assert new <= ids(batch_tables(lake, manifests[-1]))["sales_order"]
    assert manifests[-1].extra["capture_seq"] < 10**15


# --- a run cut short ---------------------------------------------------------------------


class CrashAfterManifests:
    """An S3 client that fails the first data file after ``allowed`` manifests."""

    def __init__(self, real, allowed: int):
        self.real = real
        self.allowed = allowed

    def put_object(self, **kwargs):
        if kwargs["Key"].startswith("manifests/"):
            self.allowed -= 1
        elif kwargs["Key"].startswith(RAW_PREFIX + "/") and self.allowed < 0:
            raise ConnectionError("simulated crash between two batches of one run")
        return self.real.put_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.mark.usefixtures("reader_driver")  # the readers read this run: both drivers
def test_a_run_cut_short_between_batches_resumes_after_its_last_manifest(
    stack, source, lake, pg_connect
):
    settings = settings_for(stack, max_batch_rows=8_000, chunk_rows=4_000)
    with pytest.raises(ConnectionError):
        ingest(settings, source, CrashAfterManifests(lake.s3, allowed=2))
    done = lake.latest_manifest()
    assert done is not None
    assert done.extra["capture"]["resume"] is not None
    con = pg_connect(source)
    late = set(insert_sales_orders(con, 3))

    resumed = ingest(settings, source, lake.s3)

    assert resumed[0].extra["capture_seq"] > done.extra["capture_seq"]
    resumed_rows = sum(m.extra["new_rows"] for m in resumed)
    total = sum(1 for _ in source_versions(con))
    assert resumed_rows < total  # the first batches were not read again
    assert late <= {i for m in resumed for i in ids(batch_tables(lake, m)).get("sales_order", ())}
    assert missing_versions(con, lake) == set()
    assert resumed[-1].extra["capture"]["resume"] is None
