"""The load Lambda's handler against moto and a real PostgreSQL: a processed manifest in the
bucket becomes warehouse rows once, however often its event is delivered, and failures name
the batch, table and cause and leave nothing behind."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import traceback
import uuid
from decimal import Decimal
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from parquet_damage import damage_a_column_name

from totes.db import connect
from totes.errors import DatabaseUnavailable, LoadedButUnreported, LoadFailed
from totes.lake import Lake, Manifest, ManifestFile, data_key, manifest_key
from totes.stages import load_batch as load_stage
from totes.stages import runtime
from totes.star.model import DELETED_KEYS, STAR_TABLES_BY_NAME
from totes.warehouse.migrations import migrate
from totes_tools.local.aws import free_port, receive_s3_events
from totes_tools.warehouse.checksums import table_checksums
from totes_tools.warehouse.synthetic import (
    deleted_keys,
    processed_manifest,
    put_processed_batch,
    star_batch,
)

APP = Path(__file__).resolve().parents[2] / "functions" / "load" / "app.py"


def load_handler():
    """A cold start in this test's stack: the module reads its settings at import."""
    runtime.reset()
    spec = importlib.util.spec_from_file_location(f"load_app_{uuid.uuid4().hex}", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


class Context:
    function_name = "load"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:eu-west-2:123456789012:function:load"

    def __init__(self):
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return 600_000


@pytest.fixture(autouse=True)
def migrated(stack, warehouse_db):
    """The deploy's owner step (the stack's WarehouseMigration): the load never migrates."""
    con = connect(warehouse_db)
    try:
        migrate(con)
    finally:
        con.close()


@pytest.fixture
def processed(stack) -> Lake:
    return Lake(boto3.client("s3"), stack.processed_bucket)


def one_event(aws, stack) -> dict:
    [(event, _)] = receive_s3_events(aws, stack.load_queue)
    return event


def rows(creds) -> dict[str, int]:
    con = connect(creds)
    try:
        return {name: count for name, (count, _) in table_checksums(con).items()}
    finally:
        con.close()


def stored_columns(name: str) -> list[str]:
    """The processed schema's columns the warehouse keeps (dim_date, a calendar, keeps no
    source version)."""
    table = STAR_TABLES_BY_NAME[name]
    return table.column_names + ([] if name == "dim_date" else list(table.lineage))


def warehouse_rows(creds, names) -> dict[str, list[tuple]]:
    """Each table's rows as stored (no record ids, no lineage), ordered by all columns."""
    con = connect(creds)
    try:
        out = {}
        for name in names:
            columns = ", ".join(stored_columns(name))
            rows = con.run(f"SELECT {columns} FROM {name} ORDER BY {columns}")  # noqa: S608
            out[name] = [tuple(r) for r in rows]
        return out
    finally:
        con.close()


def batch_rows(tables) -> dict[str, list[tuple]]:
    """The batch's rows in the same shape and order."""
    out = {}
    for name, data in tables.items():
        columns = stored_columns(name)
        ordered = data.select(columns).sort_by([(c, "ascending") for c in columns])
        out[name] = [tuple(r.values()) for r in ordered.to_pylist()]
    return out


def test_a_processed_manifest_becomes_warehouse_rows_with_metrics(
    aws, stack, processed, warehouse_db, capsys
):
    tables = star_batch(sales=30, purchases=10, payments_=20)
    put_processed_batch(processed, "20240101T000000000000-000", tables)
    result = load_handler()(one_event(aws, stack), Context())
    [outcome] = result["results"]
    assert outcome["status"] == "loaded"
    assert outcome["rows"]["fact_sales_order"] == {
        "staged": 30, "inserted": 30, "updated": 0, "parked": 0, "released": 0,
        "deleted_keys": 0, "marked": 0, "unmarked": 0, "skipped": 0,
    }  # fmt: skip
    assert warehouse_rows(warehouse_db, tables) == batch_rows(tables)
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    names = {
        m["Name"] for blob in emf for d in blob["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]
    }
    assert {"LoadRowsInserted", "LoadRowsUpdated", "LoadRowsSkipped"} <= names
    assert {"LoadDurationSeconds", "WarehouseFreshnessSeconds"} <= names
    per_table = {
        blob["table"]: blob["LoadRowsInserted"] for blob in emf if "LoadRowsInserted" in blob
    }
    assert per_table == {name: [float(table.num_rows)] for name, table in tables.items()}


def test_deletions_and_parked_facts_are_loaded_from_the_lake_and_counted(
    aws, stack, processed, warehouse_db, capsys
):
    """A batch carrying a ``deleted_keys`` file marks the keys' rows; a fact referencing a
    dimension row transform set aside is parked: both counted per table in the metrics."""
    first = star_batch(sales=5, seed=2)
    put_processed_batch(processed, "c0000000000000000001-000", first, capture_seq=1)
    handler = load_handler()
    assert handler(one_event(aws, stack), Context())["results"][0]["status"] == "loaded"
    capsys.readouterr()
    orders = first["fact_sales_order"].slice(0, 1).to_pylist()
    orders[0].update(sales_order_id=6, design_id=999)
    second = {
        "dim_date": first["dim_date"],
        "fact_sales_order": pa.Table.from_pylist(orders, schema=first["fact_sales_order"].schema),
        DELETED_KEYS: deleted_keys(fact_sales_order=[1, 2], dim_design=[3]),
    }
    put_processed_batch(
        processed, "c0000000000000000002-000", second, capture_seq=2,
        set_aside={"dim_design": [999]},
    )  # fmt: skip
    [outcome] = handler(one_event(aws, stack), Context())["results"]
    assert {
        name: (counts["parked"], counts["deleted_keys"], counts["marked"])
        for name, counts in outcome["rows"].items()
        if name != "dim_date"
    } == {"dim_design": (0, 1, 1), "fact_sales_order": (1, 2, 2)}
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    counted = {
        (metric, blob["table"]): blob[metric]
        for blob in emf
        for metric in ("LoadRowsParked", "LoadRowsDeleted")
        if metric in blob
    }
    assert counted == {
        ("LoadRowsParked", "dim_date"): [0.0],
        ("LoadRowsDeleted", "dim_date"): [0.0],
        ("LoadRowsParked", "dim_design"): [0.0],
        ("LoadRowsDeleted", "dim_design"): [1.0],
        ("LoadRowsParked", "fact_sales_order"): [1.0],
        ("LoadRowsDeleted", "fact_sales_order"): [2.0],
    }


def test_a_duplicate_event_loads_nothing_even_after_its_idempotency_record_expired(
    aws, stack, processed, warehouse_db
):
    tables = star_batch(sales=30, purchases=10, payments_=20)
    put_processed_batch(processed, "20240101T000000000000-000", tables)
    event = one_event(aws, stack)
    handler = load_handler()
    first = handler(event, Context())
    after_one = rows(warehouse_db)
    assert handler(event, Context()) == first  # answered from the idempotency record

    ddb = boto3.client("dynamodb")
    for item in ddb.scan(TableName=stack.idempotency_table)["Items"]:
        ddb.delete_item(TableName=stack.idempotency_table, Key={"id": item["id"]})
    again = handler(event, Context())
    assert again == {
        "results": [{"status": "already_loaded", "batch_id": "20240101T000000000000-000"}]
    }
    assert rows(warehouse_db) == after_one
    con = connect(warehouse_db)
    try:
        assert con.run("SELECT batch_id FROM etl_batch_ledger") == [["20240101T000000000000-000"]]
    finally:
        con.close()


def test_a_file_that_does_not_match_its_manifest_fails_naming_batch_and_table(
    aws, stack, processed, warehouse_db
):
    batch = "20240102T000000000000-000"
    tables = star_batch(sales=30)
    put_processed_batch(processed, batch, tables)
    manifest = processed_manifest(batch, tables)
    files = tuple(
        ManifestFile(f.table, f.key, f.rows + 1, f.fingerprint)
        if f.table == "fact_sales_order"
        else f
        for f in manifest.files
    )
    processed.put_manifest(type(manifest)(**{**manifest.__dict__, "files": files}))
    receive_s3_events(aws, stack.load_queue)  # the first manifest's event is superseded
    event = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": stack.processed_bucket},
                    "object": {"key": f"manifests/{batch}.json", "eTag": "x", "size": 1},
                },
            }
        ]
    }
    with pytest.raises(LoadFailed) as failure:
        load_handler()(event, Context())
    assert str(failure.value) == (
        f"batch {batch}: table fact_sales_order"
        f" ({data_key('processed', 'fact_sales_order', batch)}):"
        " file has 30 rows, the manifest says 31"
    )
    assert set(rows_if_migrated(warehouse_db).values()) <= {0}


def rows_if_migrated(creds) -> dict[str, int]:
    con = connect(creds)
    try:
        if con.run("SELECT to_regclass('dim_date')") == [[None]]:
            return {}
    finally:
        con.close()
    return rows(creds)


def test_a_missing_file_fails_naming_batch_table_and_key(aws, stack, processed):
    batch = "20240103T000000000000-000"
    tables = star_batch(sales=5)
    put_processed_batch(processed, batch, tables)
    key = data_key("processed", "dim_design", batch)
    boto3.client("s3").delete_object(Bucket=stack.processed_bucket, Key=key)
    with pytest.raises(LoadFailed) as failure:
        load_handler()(one_event(aws, stack), Context())
    assert str(failure.value) == (
        f"batch {batch}: table dim_design ({key}): cannot read the file (NoSuchKey)"
    )


def test_an_unreachable_warehouse_fails_naming_the_batch(aws, stack, processed, warehouse_db):
    batch = "20240104T000000000000-000"
    unreachable = warehouse_db.__class__(
        user="nobody", dbname="warehouse", host="127.0.0.1", port=free_port(), sslmode="disable"
    )
    boto3.client("secretsmanager").put_secret_value(
        SecretId=stack.warehouse_secret, SecretString=unreachable.to_secret()
    )
    put_processed_batch(processed, batch, star_batch(sales=5))
    with pytest.raises(DatabaseUnavailable) as failure:
        load_handler()(one_event(aws, stack), Context())
    assert str(failure.value).startswith(
        f"batch {batch}: cannot reach database 'warehouse' at 127.0.0.1:"
    )


# -- Manifests load does not trust (issue 14, M4 and L3) ------------------------------------

GENUINE = "c0000000000000000007-000"
OTHER = "c0000000000000000006-000"


def with_(manifest: Manifest, **changes) -> Manifest:
    extra = {**manifest.extra, **changes.pop("extra", {})}
    return dataclasses.replace(manifest, extra=extra, **changes)


# Each forged manifest (from the genuine one and another batch's), and the start of the refusal.
FORGERIES = {
    "content naming another batch": (
        lambda genuine, other: other,
        f"it holds batch {OTHER!r}, its key names {GENUINE!r}",
    ),
    "no files": (lambda genuine, other: with_(genuine, files=()), "it lists no files"),
    "files of another batch": (
        lambda genuine, other: with_(genuine, files=other.files),
        f"file 'processed/dim_counterparty/{OTHER}/part-0000.parquet' (",
    ),
    "hi_utc now": (
        lambda genuine, other: with_(genuine, extra={"hi_utc": "now"}),
        "hi_utc must be an ISO time in UTC like 2024-11-15T12:00:00+00:00: 'now'",
    ),
    "hi_utc infinity": (
        lambda genuine, other: with_(genuine, extra={"hi_utc": "infinity"}),
        "hi_utc must be an ISO time in UTC like 2024-11-15T12:00:00+00:00: 'infinity'",
    ),
    "a raw manifest": (
        lambda genuine, other: with_(genuine, stage="raw"),
        "it is a 'raw' manifest, not a processed one",
    ),
    "another capture's sequence": (
        lambda genuine, other: with_(genuine, extra={"capture_seq": 6}),
        "capture_seq 6 is not the capture sequence its batch id carries (7;",
    ),
}


def event_for(stack, batch_id: str, etag: str) -> dict:
    """The S3 event of a put of ``batch_id``'s processed manifest (its own eTag)."""
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": stack.processed_bucket},
            "object": {"key": manifest_key(batch_id), "eTag": etag, "size": 1},
        },
    }
    return {"Records": [record]}


def ledger(creds) -> list[str]:
    con = connect(creds)
    try:
        if con.run("SELECT to_regclass('etl_batch_ledger')") == [[None]]:
            return []
        return [r[0] for r in con.run("SELECT batch_id FROM etl_batch_ledger ORDER BY 1")]
    finally:
        con.close()


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_manifest_is_refused_before_the_warehouse_and_the_genuine_batch_loads_after(
    aws, stack, processed, warehouse_db, monkeypatch, log_lines, forgery
):
    forge, refusal = FORGERIES[forgery]
    other = processed.get_manifest(
        put_processed_batch(processed, OTHER, star_batch(sales=3, seed=1), capture_seq=6)
    )
    tables = star_batch(sales=5, purchases=2, payments_=3)
    genuine = processed.get_manifest(put_processed_batch(processed, GENUINE, tables, capture_seq=7))
    forged = forge(genuine, other)
    processed.put_bytes(manifest_key(GENUINE), forged.to_json().encode(), "application/json")
    receive_s3_events(aws, stack.load_queue)  # the events are given below, one by one
    connections = []
    real_connect = load_stage.connect
    monkeypatch.setattr(
        load_stage, "connect", lambda *a, **kw: connections.append(a) or real_connect(*a, **kw)
    )
    handler = load_handler()

    with pytest.raises(LoadFailed) as refused:
        handler(event_for(stack, GENUINE, "forged"), Context())

    assert str(refused.value).startswith(f"batch {GENUINE}: {manifest_key(GENUINE)}: {refusal}")
    assert connections == []  # refused before the warehouse was reached
    assert ledger(warehouse_db) == []
    assert "batch load failed; rolled back, nothing of it committed" in log_lines.getvalue()

    processed.put_manifest(genuine)  # the genuine manifest of that batch id, later
    [outcome] = handler(event_for(stack, GENUINE, "genuine"), Context())["results"]

    assert outcome["status"] == "loaded"
    assert ledger(warehouse_db) == [GENUINE]
    assert warehouse_rows(warehouse_db, tables) == batch_rows(tables)


def test_a_failure_after_the_commit_is_named_as_such_and_its_retry_is_acknowledged(
    aws, stack, processed, warehouse_db, monkeypatch, log_lines
):
    """L3: the log says "rolled back" only for what was; after the commit it says committed."""
    tables = star_batch(sales=5)
    put_processed_batch(processed, GENUINE, tables, capture_seq=7)
    event = one_event(aws, stack)
    report = load_stage._emit

    def unavailable(*args):
        raise RuntimeError("metrics went away")

    monkeypatch.setattr(load_stage, "_emit", unavailable)
    handler = load_handler()

    with pytest.raises(LoadedButUnreported) as failed:
        handler(event, Context())

    assert str(failed.value) == (
        f"batch {GENUINE}: in the warehouse ledger (committed), then reporting it failed:"
        " RuntimeError: metrics went away"
    )
    logged = log_lines.getvalue()
    assert "batch committed; what followed failed (a retry finds it in the ledger)" in logged
    assert "rolled back" not in logged
    assert ledger(warehouse_db) == [GENUINE]
    assert warehouse_rows(warehouse_db, tables) == batch_rows(tables)

    monkeypatch.setattr(load_stage, "_emit", report)
    assert handler(event, Context())["results"] == [
        {"status": "already_loaded", "batch_id": GENUINE}
    ]


def test_an_unreadable_file_is_named_without_the_readers_message(aws, stack, processed):
    """The reader's message may quote the bytes it choked on (row data): only its kind is
    kept (issue 14, M5: no load error quotes a row value, bar check_references' ids)."""
    batch = "20240105T000000000000-000"
    put_processed_batch(processed, batch, star_batch(sales=5))
    key = data_key("processed", "dim_staff", batch)
    processed.put_bytes(key, b"PAR1 Quokkaleak Zanzibarsson PAR1", "application/octet-stream")
    with pytest.raises(LoadFailed) as failure:
        load_handler()(one_event(aws, stack), Context())
    assert str(failure.value) == (
        f"batch {batch}: table dim_staff ({key}): not a readable Parquet file (ArrowInvalid)"
    )


def test_a_file_whose_footer_is_damaged_is_named_like_any_unreadable_file(aws, stack, processed):
    batch = "20240105T000000000000-000"
    put_processed_batch(processed, batch, star_batch(sales=5))
    key = data_key("processed", "dim_staff", batch)
    processed.put_bytes(
        key, damage_a_column_name(processed.get_bytes(key), "first_name"), "application/x"
    )
    with pytest.raises(LoadFailed) as failure:
        load_handler()(one_event(aws, stack), Context())
    assert str(failure.value) == (
        f"batch {batch}: table dim_staff ({key}): not a readable Parquet file (UnicodeDecodeError)"
    )


# A row of distinctive values, damaged one way per case, on the paths a first capture takes
# (issue 16): facts COPYed straight in, a large dimension split and its new keys COPYed, and
# the staged way. (case, table, threshold for the dimension split, damage, the step and what
# the error must name, the values no output may carry). A NULL the COPY meets sends the table
# the staged way (``backfill.copy_versions``), whose merge refuses it: "merging".
LEAK_BATCH = "c0000000000000000009-000"
QUOKKA = {"first_name": "Quokkaleak", "last_name": "Zanzibarsson", "location": "Leakington"}
PRICE = Decimal("73829.41")
LEAK_CASES = {
    "fact-copied-null": (
        "fact_sales_order", None, {"units_sold": None, "unit_price": PRICE},
        "merging fact_sales_order", ["column units_sold", "23502"], ["73829.41"],
    ),
    "fact-copied-time-out-of-range": (
        "fact_sales_order", None, {"created_time": 200_000_000, "unit_price": PRICE},
        "copying fact_sales_order", ["column created_time", "22008"], ["73829.41", "55:33:20"],
    ),
    "fact-copied-numeric-past-precision": (
        "fact_sales_order", None, {"unit_price": Decimal("987654321098.76")},
        "copying fact_sales_order", ["column unit_price"], ["987654321098", "98765432109876"],
    ),
    "dimension-split-nul-in-text": (
        "dim_staff", 1, {**QUOKKA, "email_address": "quokka\x00zanzibarsson@leak.example"},
        "copying dim_staff", ["column email_address", "22021"], ["Quokkaleak", "zanzibarsson"],
    ),
    "dimension-split-null": (
        "dim_staff", 1, {**QUOKKA, "email_address": None},
        "merging dim_staff", ["column email_address", "23502"], ["Quokkaleak", "Leakington"],
    ),
    "dimension-staged-nul-in-text": (
        "dim_staff", None, {**QUOKKA, "email_address": "quokka\x00zanzibarsson@leak.example"},
        "staging dim_staff", ["column email_address", "22021"], ["Quokkaleak", "zanzibarsson"],
    ),
}  # fmt: skip


def damaged(data: pa.Table, **values) -> pa.Table:
    """``data`` with its first row's ``values`` (raw storage for temporal columns, any decimal
    whatever its precision: as a damaged file would hold them)."""
    for name, value in values.items():
        i = data.schema.get_field_index(name)
        kind = data.schema.field(i).type
        column = data.column(i).combine_chunks()
        if value is None:
            mask = pa.array([True] + [False] * (len(column) - 1))
            column = pc.if_else(mask, pa.nulls(len(column), kind), column)
        elif pa.types.is_decimal(kind):
            wide = column.cast(pa.decimal128(38, kind.scale)).to_pylist()
            column = pa.array([value, *wide[1:]], pa.decimal128(38, kind.scale))
            column = column.cast(kind, safe=False)
        elif pa.types.is_time(kind):
            storage = column.cast(pa.int32() if kind.bit_width == 32 else pa.int64())
            column = pa.array([value, *storage.to_pylist()[1:]], storage.type).cast(kind)
        else:
            column = pa.array([value, *column.to_pylist()[1:]], kind)
        data = data.set_column(i, data.schema.field(i).with_nullable(True), column)
    return data


@pytest.mark.parametrize("case", list(LEAK_CASES))
def test_a_bad_value_on_the_first_captures_paths_is_named_by_table_and_column_never_quoted(
    aws, stack, processed, warehouse_db, monkeypatch, log_lines, capsys, case
):
    """A first capture's batch whose one row the warehouse cannot take: the whole batch fails
    (a processed file is transform's output; rows are set aside there, docs/invariants.md 7)
    naming the step, table and column; no value of the row reaches the exception, its
    traceback or any log line, though PostgreSQL's DETAIL ("Failing row contains (...)") and
    the encoding error's message carry them."""
    from totes.warehouse import backfill

    table, threshold, values, step, named, leaked = LEAK_CASES[case]
    if threshold is not None:
        monkeypatch.setattr(backfill, "DIMENSION_ROWS", threshold)
    tables = star_batch(sales=5, purchases=2, payments_=3)
    tables[table] = damaged(tables[table], **values)
    put_processed_batch(processed, LEAK_BATCH, tables, capture_seq=9)

    with pytest.raises(LoadFailed) as failed:
        load_handler()(one_event(aws, stack), Context())

    message = str(failed.value)
    assert message.startswith(f"batch {LEAK_BATCH}: {step} failed: "), message
    assert all(name in message for name in named), message
    assert ledger(warehouse_db) == []
    out = capsys.readouterr()
    haystack = "\n".join(
        [log_lines.getvalue(), out.out, out.err, "".join(traceback.format_exception(failed.value))]
    )
    assert "batch load failed; rolled back, nothing of it committed" in haystack
    assert [value for value in leaked if value in haystack] == []
    assert "Failing row" not in haystack


def warehouse_state(creds) -> dict:
    """What a refused load must leave as it was: the migrations recorded, the tables of the
    schema, and every star table's and the ledger's rows."""
    con = connect(creds)
    try:
        applied = con.run("SELECT version, name FROM schema_migrations ORDER BY version")
        tables = con.run(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' ORDER BY table_name"
        )
        [[ledger]] = con.run("SELECT count(*) FROM etl_batch_ledger")
    finally:
        con.close()
    return {"applied": applied, "tables": tables, "ledger": ledger, "rows": rows(creds)}


def test_a_warehouse_behind_the_code_is_refused_naming_the_missing_migration_and_untouched(
    aws, stack, processed, warehouse_db, monkeypatch, log_lines
):
    """The load never migrates (its role may not): a warehouse lacking a migration the code
    ships fails the batch, naming it, and writes nothing; once the owner migrates, the same
    batch loads (a refusal is not cached)."""
    from totes.errors import SchemaBehind
    from totes.warehouse import migrations

    shipped = migrations.available()
    newest = shipped[-1]
    con = connect(warehouse_db)
    try:  # the warehouse as it was before the newest migration shipped
        con.run("DELETE FROM schema_migrations WHERE version = :v", v=newest.version)
    finally:
        con.close()
    before = warehouse_state(warehouse_db)
    tables = star_batch(sales=5)
    put_processed_batch(processed, "20240105T000000000000-000", tables)
    event = one_event(aws, stack)

    with pytest.raises(SchemaBehind) as refused:
        load_handler()(event, Context())

    assert refused.value.missing == [newest.label]
    assert str(refused.value).startswith(
        f"batch 20240105T000000000000-000: the warehouse at {warehouse_db.where} (schema public)"
        f" lacks migration(s) {newest.label}: the load never migrates"
    )
    assert warehouse_state(warehouse_db) == before
    logged = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    [record] = [r for r in logged if r.get("missing_migrations")]
    assert record["missing_migrations"] == [newest.label]
    assert record["level"] == "ERROR"

    con = connect(warehouse_db)
    try:  # the owner's step (the migration itself is there: only its record was taken away)
        con.run(
            "INSERT INTO schema_migrations (version, name) VALUES (:v, :n)",
            v=newest.version,
            n=newest.name,
        )
    finally:
        con.close()
    [outcome] = load_handler()(event, Context())["results"]
    assert outcome["status"] == "loaded"


def test_an_unmigrated_warehouse_is_refused_naming_every_migration_and_gets_no_table(
    aws, stack, processed, fresh_db, monkeypatch
):
    from totes.errors import SchemaBehind
    from totes.warehouse import migrations

    empty = fresh_db("wh_empty")
    boto3.client("secretsmanager").put_secret_value(
        SecretId=stack.warehouse_secret, SecretString=empty.to_secret()
    )
    put_processed_batch(processed, "20240106T000000000000-000", star_batch(sales=5))

    with pytest.raises(SchemaBehind) as refused:
        load_handler()(one_event(aws, stack), Context())

    assert refused.value.missing == [m.label for m in migrations.available()]
    con = connect(empty)
    try:
        assert con.run(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public'"
        ) == [[0]]
    finally:
        con.close()


def test_the_schema_version_is_checked_once_per_process_not_per_batch(
    aws, stack, processed, warehouse_db, monkeypatch
):
    """A warm container does not read schema_migrations again for each batch."""
    from totes.warehouse import migrations

    checks = []
    real = migrations.missing
    monkeypatch.setattr(migrations, "missing", lambda con: checks.append(1) or real(con))
    handler = load_handler()
    for n in (7, 8):
        put_processed_batch(processed, f"2024010{n}T000000000000-000", star_batch(sales=3))
        [outcome] = handler(one_event(aws, stack), Context())["results"]
        assert outcome["status"] == "loaded"
    assert checks == [1]
