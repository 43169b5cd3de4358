# ruff: noqa: S608  (SQL identifiers below come from the model only)
"""Ingest against a real PostgreSQL (the real snapshot) and moto S3: complete first runs,
bounded batches, nothing lost with ties and late commits, crash safety, self-contained
batches for every kind of change, clear failures that leave the state alone. (The capture
guarantee outside the happy path, by commit order, is in test_capture.py.)"""

from __future__ import annotations

import contextlib
import io
import re
import threading
from dataclasses import replace
from datetime import UTC, datetime
from itertools import pairwise

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from ingest_support import (
    as_model,
    batch_tables,
    ids,
    insert_sales_orders,
    settings_for,
    versions_in_lake,
    versions_in_source,
)

from totes.db import DbCredentials, connect
from totes.errors import DatabaseUnavailable, SchemaDrift
from totes.identifiers import quote
from totes.lake import RAW_PREFIX, STATE_KEY, Lake, Manifest, schema_fingerprint
from totes.source.model import TABLES, UNREPRESENTABLE
from totes.stages.ingest_batch import PARTS_IN_FLIGHT, ingest
from totes_tools.source.simulator import Simulator, late_commit
from totes_tools.source.snapshot import read_snapshot

# --- complete and bounded ----------------------------------------------------------------


def test_first_run_takes_every_row_with_the_raw_schema(stack, source, lake, snapshot_dir):
    manifests = ingest(settings_for(stack), source, lake.s3)

    assert len(manifests) == 1
    manifest = manifests[0]
    assert (manifest.stage, manifest.window_lo) == ("raw", None)
    assert manifest.extra["captured_everything"] == "first capture"
    assert set(manifest.extra["source_tables"]) == {t.name for t in TABLES}
    assert lake.get_manifest(f"manifests/{manifest.batch_id}.json") == manifest
    got = batch_tables(lake, manifest)
    expected = read_snapshot(snapshot_dir)
    for table in TABLES:
        key = table.key
        assert got[table.name].schema == table.lake_schema
        assert got[table.name].column(UNREPRESENTABLE).null_count == got[table.name].num_rows
        mine = as_model(got[table.name], table.name).sort_by(key)
        assert mine.equals(expected[table.name].sort_by(key)), table.name
    assert {(f.table, f.fingerprint) for f in manifest.files} == {
        (t.name, schema_fingerprint(t.lake_schema)) for t in TABLES
    }
    assert all(
        f.key.startswith(f"{RAW_PREFIX}/{f.table}/{manifest.batch_id}/") for f in manifest.files
    )


def test_raw_parts_dictionary_encode_their_text_columns_only(stack, source, lake):
    # Dictionaries of nearly distinct keys, stamps and decimals were most of the encoding time.
    [manifest] = ingest(settings_for(stack), source, lake.s3)

    part = next(f for f in manifest.files if f.table == "payment")
    metadata = pq.ParquetFile(io.BytesIO(lake.get_bytes(part.key))).metadata
    encoded = {
        metadata.schema.column(i).name: metadata.row_group(0).column(i).encodings
        for i in range(metadata.num_columns)
    }
    dictionary = {name for name, encodings in encoded.items() if "RLE_DICTIONARY" in encodings}
    assert dictionary == {"payment_date", UNREPRESENTABLE}


def test_two_parts_are_stored_at_once_and_never_more(stack, source, lake, monkeypatch):
    # An upload mostly waits on S3: with one part in flight every read stalled behind it.
    both = threading.Barrier(PARTS_IN_FLIGHT, timeout=20)
    lock = threading.Lock()
    storing, most = [0], [0]
    real = Lake.put_bytes

    def put_bytes(self, key, body, content_type):
        if not key.startswith(f"{RAW_PREFIX}/"):
            return real(self, key, body, content_type)
        with lock:
            storing[0] += 1
            most[0] = max(most[0], storing[0])
        try:
            if not both.broken:
                with contextlib.suppress(threading.BrokenBarrierError):
                    both.wait()  # the first two parts meet here, or the barrier times out
            return real(self, key, body, content_type)
        finally:
            with lock:
                storing[0] -= 1

    monkeypatch.setattr(Lake, "put_bytes", put_bytes)
    [manifest] = ingest(settings_for(stack, chunk_rows=2_000), source, lake.s3)

    assert most[0] == PARTS_IN_FLIGHT
    assert both.n_waiting == 0
    assert not both.broken  # the first two met: one was stored while the other was
    keys = [f.key for f in manifest.files if f.table == "sales_order"]
    assert keys == sorted(keys)  # listed in the order they were read
    assert sum(f.rows for f in manifest.files if f.table == "sales_order") > 2 * 2_000


def test_hi_utc_names_the_snapshot_instant_in_utc_in_a_non_utc_source_zone(stack, source, lake):
    con = connect(source)
    con.run(f"ALTER DATABASE {quote(source.dbname)} SET timezone = 'America/New_York'")
    con.close()
    manifest = ingest(settings_for(stack), source, lake.s3)[0]

    con = connect(source)
    expected = con.run(
        "SELECT CAST(:now AS timestamp) AT TIME ZONE 'America/New_York'",
        now=manifest.extra["source_now"],
    )[0][0]
    con.close()
    assert manifest.extra["hi_utc"].endswith("+00:00")
    assert manifest.extra["hi_utc"] == expected.astimezone(UTC).isoformat()


def test_a_run_with_no_changes_writes_no_batch(stack, source, lake, pg_connect):
    settings = settings_for(stack)
    first = ingest(settings, source, lake.s3)
    keys = [k for k in lake.keys("") if k != STATE_KEY]

    assert ingest(settings, source, lake.s3) == []
    pg_connect(source).run("SELECT txid_current()")  # a commit that changes no row
    assert ingest(settings, source, lake.s3) == []
    assert [k for k in lake.keys("") if k != STATE_KEY] == keys
    assert lake.latest_manifest() == first[-1]


def changed_rows_in_window(tables: dict[str, pa.Table], manifest: Manifest) -> int:
    """Rows of the batch stamped inside its own window (the rest are referenced context)."""
    hi = pa.scalar(datetime.fromisoformat(manifest.window_hi), pa.timestamp("ms"))
    lo = manifest.window_lo and pa.scalar(
        datetime.fromisoformat(manifest.window_lo), pa.timestamp("ms")
    )
    count = 0
    for t in tables.values():
        inside = pc.less(t.column("last_updated"), hi)
        if lo is not None:
            inside = pc.and_(inside, pc.greater_equal(t.column("last_updated"), lo))
        count += pc.sum(inside).as_py() or 0
    return count


@pytest.mark.usefixtures("reader_driver")  # the readers read this run: both drivers
def test_a_large_backlog_splits_into_bounded_batches_at_timestamp_boundaries(
    stack, source, lake, pg_connect
):
    bound, chunk = 5_000, 2_000
    settings = settings_for(stack, max_batch_rows=bound, chunk_rows=chunk)

    manifests = ingest(settings, source, lake.s3)

    assert len(manifests) >= 8
    windows = [(m.window_lo, m.window_hi) for m in manifests]
    assert windows[0][0] is None
    assert all(a[1] == b[0] for a, b in pairwise(windows))
    assert [m.batch_id for m in manifests] == sorted(m.batch_id for m in manifests)
    assert max(f.rows for m in manifests for f in m.files) <= chunk
    changed = [changed_rows_in_window(batch_tables(lake, m), m) for m in manifests]
    assert changed == [m.extra["new_rows"] for m in manifests]
    assert max(changed) < 2 * bound  # the bound plus the rows tied on the last timestamp
    assert sum(changed) == len(versions_in_source(pg_connect(source)))
    assert versions_in_lake(lake) == versions_in_source(pg_connect(source))


def test_one_timestamp_holding_more_rows_than_the_bound_stays_one_batch(
    stack, source, lake, pg_connect
):
    settings = settings_for(stack, max_batch_rows=100)
    ingest(replace(settings, max_batch_rows=1_000_000), source, lake.s3)
    con = pg_connect(source)
    tie = set(insert_sales_orders(con, 250))

    manifests = ingest(settings, source, lake.s3)

    assert len(manifests) == 1
    assert ids(batch_tables(lake, manifests[0]))["sales_order"] == tie


# --- nothing lost ------------------------------------------------------------------------


def test_every_version_reaches_a_batch_with_ties_and_a_late_commit(stack, source, lake, pg_connect):
    settings = settings_for(stack)
    ingest(settings, source, lake.s3)
    live = pg_connect(source)
    simulator = Simulator(live, seed=7)
    with late_commit(source, sales=2, purchases=1, flips=3, seed=3) as late:
        simulator.tie_burst(40)  # committed first, stamped after the late transaction began
        simulator.step()
        ingest(settings, source, lake.s3)  # runs while the late transaction is still open
        open_missing = versions_in_source(live) - versions_in_lake(lake)

    ingest(settings, source, lake.s3)  # the first run after the late commit

    late_rows = {
        (t, i) for kind in ("inserted", "updated") for t, v in late[kind].items() for i in v
    }
    assert late_rows
    assert open_missing == set()  # everything committed was captured while it stayed open
    assert versions_in_source(live) - versions_in_lake(lake) == set()


# --- crash safety ------------------------------------------------------------------------


class CrashingS3:
    """An S3 client that fails after ``allowed`` data files, like a Lambda killed mid-run."""

    def __init__(self, real, allowed: int):
        self.real = real
        self.allowed = allowed

    def put_object(self, **kwargs):
        if kwargs["Key"].startswith(RAW_PREFIX + "/"):
            if self.allowed == 0:
                raise ConnectionError("simulated crash while writing data files")
            self.allowed -= 1
        return self.real.put_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_crash_before_the_manifest_leaves_the_state_and_the_retry_is_complete(
    stack, source, lake, pg_connect
):
    settings = settings_for(stack, chunk_rows=3_000)
    first = ingest(settings, source, lake.s3)[-1]
    con = pg_connect(source)
    con.run(
        "UPDATE payment SET paid = NOT paid, last_updated = localtimestamp WHERE payment_id <= 9000"
    )
    new_orders = set(insert_sales_orders(con, 5))

    with pytest.raises(ConnectionError):
        ingest(settings, source, CrashingS3(lake.s3, allowed=4))
    assert lake.latest_manifest() == first

    retry = ingest(settings, source, lake.s3)
    assert len(retry) == 1
    got = batch_tables(lake, retry[0])
    assert ids(got)["payment"] == set(range(1, 9001))
    assert ids(got)["sales_order"] == new_orders
    assert retry[0].extra["previous_snapshot"] == first.extra["capture"]["snapshot"]
    assert all(lake.keys(f.key) == [f.key] for f in retry[0].files)


# --- self-containment --------------------------------------------------------------------


def source_frames(con) -> dict[str, dict[int, dict]]:
    out = {}
    for t in TABLES:
        cols = t.column_names
        rows = con.run(f"SELECT {', '.join(quote(c) for c in cols)} FROM {quote(t.name)}")
        out[t.name] = {r[0]: dict(zip(cols, r, strict=True)) for r in rows}
    return out


def expected_closure(src: dict[str, dict[int, dict]], changed: dict[str, set[int]]):
    """The rows a batch must carry, written independently of the extraction SQL."""
    sel = {t.name: set(changed.get(t.name, ())) for t in TABLES}

    def refs(table, column):
        return {src[table][i][column] for i in sel[table]} - {None}

    sel["staff"] |= {
        i for i, r in src["staff"].items() if r["department_id"] in changed.get("department", ())
    }
    sel["counterparty"] |= {
        i
        for i, r in src["counterparty"].items()
        if r["legal_address_id"] in changed.get("address", ())
    }
    for fact in ("sales_order", "purchase_order"):
        sel["staff"] |= refs(fact, "staff_id")
        sel["address"] |= refs(fact, "agreed_delivery_location_id")
    for fact in ("sales_order", "purchase_order", "payment"):
        sel["counterparty"] |= refs(fact, "counterparty_id")
        sel["currency"] |= refs(fact, "currency_id")
    sel["design"] |= refs("sales_order", "design_id")
    sel["payment_type"] |= refs("payment", "payment_type_id")
    sel["transaction"] |= refs("payment", "transaction_id")
    sel["address"] |= refs("counterparty", "legal_address_id")
    sel["department"] |= refs("staff", "department_id")
    return {k: v for k, v in sel.items() if v}


def dangling_references(tables: dict[str, pa.Table]) -> list[str]:
    """Warehouse references that the batch cannot resolve from its own rows."""
    have = ids(tables)
    needs = [
        ("sales_order", "design_id", "design"),
        ("sales_order", "staff_id", "staff"),
        ("sales_order", "counterparty_id", "counterparty"),
        ("sales_order", "currency_id", "currency"),
        ("sales_order", "agreed_delivery_location_id", "address"),
        ("purchase_order", "staff_id", "staff"),
        ("purchase_order", "counterparty_id", "counterparty"),
        ("purchase_order", "currency_id", "currency"),
        ("purchase_order", "agreed_delivery_location_id", "address"),
        ("payment", "transaction_id", "transaction"),
        ("payment", "counterparty_id", "counterparty"),
        ("payment", "currency_id", "currency"),
        ("payment", "payment_type_id", "payment_type"),
        ("staff", "department_id", "department"),
        ("counterparty", "legal_address_id", "address"),
    ]
    out = []
    for table, column, target in needs:
        if table in tables:
            missing = set(tables[table].column(column).to_pylist()) - have.get(target, set())
            if missing:
                out.append(f"{table}.{column} -> {target} {sorted(missing)}")
    return out


def _stamp(table: str, where: str, sets: str) -> str:
    return (
        f"UPDATE {quote(table)} SET {sets}, last_updated = localtimestamp "
        f"WHERE {where} RETURNING {quote(table + '_id')}"
    )


CHANGES = {
    "address": _stamp(
        "address",
        "address_id IN (SELECT legal_address_id FROM counterparty LIMIT 1)",
        "city = 'Leeds'",
    ),
    "counterparty": _stamp("counterparty", "counterparty_id = 7", "delivery_contact = 'Ann'"),
    "department": _stamp("department", "department_id = 2", "location = 'Hull'"),
    "staff": _stamp("staff", "staff_id = 5", "email_address = 'x@example.com'"),
    "design": _stamp("design", "design_id = 11", "design_name = 'Steel'"),
    "currency": _stamp("currency", "currency_id = 2", "currency_code = 'USD'"),
    "payment_type": _stamp(
        "payment_type", "payment_type_id = 3", "payment_type_name = payment_type_name"
    ),
    "transaction": _stamp(
        "transaction", "transaction_id IN (12, 13)", "transaction_type = transaction_type"
    ),
    "sales_order": None,  # a new order
    "purchase_order": _stamp(
        "purchase_order", "purchase_order_id IN (3, 4000)", "item_quantity = item_quantity + 1"
    ),
    "payment": _stamp("payment", "payment_id IN (5, 777, 15000)", "paid = NOT paid"),
}


@pytest.mark.parametrize("kind", list(CHANGES))
def test_a_batch_carries_every_row_its_changes_reference(stack, source, lake, pg_connect, kind):
    settings = settings_for(stack)
    ingest(settings, source, lake.s3)
    con = pg_connect(source)
    if CHANGES[kind] is None:
        changed = set(insert_sales_orders(con, 3))
    else:
        changed = {r[0] for r in con.run(CHANGES[kind])}
    assert changed

    manifests = ingest(settings, source, lake.s3)

    assert len(manifests) == 1
    got = batch_tables(lake, manifests[0])
    assert dangling_references(got) == []
    assert ids(got) == expected_closure(source_frames(con), {kind: changed})


# --- clear failures ----------------------------------------------------------------------


def test_an_unreachable_source_fails_clearly_and_writes_nothing(stack, source, lake):
    ingest(settings_for(stack), source, lake.s3)
    keys = lake.keys("")
    nowhere = DbCredentials(
        user="u", password="secret-pw", host="127.0.0.1", port=1, dbname="totesys"
    )

    with pytest.raises(
        DatabaseUnavailable, match=re.escape("cannot reach database 'totesys' at 127.0.0.1:1")
    ) as err:
        ingest(settings_for(stack), nowhere, lake.s3)
    assert "secret-pw" not in str(err.value)
    assert lake.keys("") == keys


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        ("ALTER TABLE payment DROP COLUMN paid", "column payment.paid is missing"),
        ("DROP TABLE payment", "table 'payment' is missing"),
        (
            "ALTER TABLE sales_order ALTER COLUMN unit_price TYPE text",
            "column sales_order.unit_price has type text, expected numeric(10,2)",
        ),
    ],
)
def test_schema_drift_names_what_is_wrong_and_leaves_the_state(
    stack, source, lake, pg_connect, ddl, message
):
    first = ingest(settings_for(stack), source, lake.s3)[-1]
    con = pg_connect(source)
    con.run(ddl)
    insert = "UPDATE currency SET last_updated = localtimestamp"
    con.run(insert)
    keys = lake.keys("")

    with pytest.raises(SchemaDrift, match=re.escape(message)):
        ingest(settings_for(stack), source, lake.s3)
    assert lake.keys("") == keys
    assert lake.latest_manifest() == first
