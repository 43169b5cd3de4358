"""The transform stage against the emulated lake (moto): the real snapshot as one raw batch
becomes the full star schema, checked against SQL on the same snapshot in PostgreSQL; rows the
star cannot take are set aside alone with a record, a metric and a log line without the value,
while the rest of the batch flows; a batch with a damaged file or manifest ends in quarantine
with a reason that names the problem; a manifest that is gone is reported once; the handler
runs once per manifest eTag. (Issue 12 turned row problems from batch quarantine into row
quarantine: the dangling-reference and row-value tests below say so.)"""

from __future__ import annotations

import json

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from parquet_damage import damage_a_column_name, damage_a_value

from totes.lake import (
    RAW_PREFIX,
    Lake,
    Manifest,
    ManifestFile,
    data_key,
    manifest_key,
    schema_fingerprint,
    table_to_parquet_bytes,
)
from totes.observability import metrics
from totes.settings import TransformSettings
from totes.source.model import DELETED_KEYS, DELETED_KEYS_SCHEMA, TABLES_BY_NAME, UNREPRESENTABLE
from totes.stages import runtime
from totes.stages.transform_batch import transform
from totes.star.model import DELETED_KEYS_SCHEMA as STAR_DELETED_KEYS_SCHEMA
from totes.star.model import FACTS, OLDEST_VERSION, SOURCE_VERSION, STAR_TABLES_BY_NAME
from totes_tools.local.chain import context_for, load_handler, parse_emf
from totes_tools.source.snapshot import load_snapshot, read_snapshot

BATCH = "20241115T120000000000-000"
WINDOW_HI = "2024-11-15T12:00:00"
HI_UTC = "2024-11-15T12:00:00+00:00"


@pytest.fixture(scope="module")
def snapshot(snapshot_dir) -> dict[str, pa.Table]:
    return read_snapshot(snapshot_dir)


@pytest.fixture
def lakes(stack) -> tuple[Lake, Lake, TransformSettings]:
    s3 = boto3.client("s3")
    settings = TransformSettings.from_env()
    return Lake(s3, settings.raw_bucket), Lake(s3, settings.processed_bucket), settings


def put_raw_batch(
    raw: Lake, tables: dict[str, pa.Table], parts: int = 1, batch: str = BATCH, **rows
) -> str:
    """Write a raw batch as ingest does: each table's rows in ``parts`` files, manifest last."""
    files = []
    for name, table in tables.items():
        size = -(-table.num_rows // parts)
        for part in range(parts):
            chunk = table.slice(part * size, size)
            if chunk.num_rows == 0:
                continue
            key = data_key(RAW_PREFIX, name, batch, part)
            raw.put_bytes(key, table_to_parquet_bytes(chunk), "application/vnd.apache.parquet")
            fingerprint = schema_fingerprint(described_schema(name, table))
            files.append(ManifestFile(name, key, rows.get(name, chunk.num_rows), fingerprint))
    manifest = Manifest(
        batch,
        "raw",
        None,
        WINDOW_HI,
        tuple(files),
        extra={"hi_utc": HI_UTC, "source_tables": sorted(tables)},
    )
    return raw.put_manifest(manifest)


def described_schema(name: str, table: pa.Table) -> pa.Schema:
    """The schema ingest describes a file with: the raw lake schema (with the side column),
    the model's columns of a file written before the side column existed, or (deletions) the
    file's own."""
    model = TABLES_BY_NAME.get(name)
    if model is None:
        return table.schema
    return model.lake_schema if UNREPRESENTABLE in table.column_names else model.arrow_schema


def small_batch(snapshot) -> dict[str, pa.Table]:
    """Fifty sales orders and every dimension row they can point at."""
    names = ("address", "counterparty", "currency", "department", "design", "staff")
    return {**{n: snapshot[n] for n in names}, "sales_order": snapshot["sales_order"].slice(0, 50)}


def read_processed(processed: Lake) -> tuple[Manifest, dict[str, pa.Table]]:
    manifest = processed.get_manifest(manifest_key(BATCH))
    return manifest, {f.table: processed.get_table(f.key) for f in manifest.files}


def sql_rows(con, sql: str) -> list[tuple]:
    return [tuple(r) for r in con.run(sql)]


def test_the_real_snapshot_becomes_every_star_table(
    lakes, snapshot, snapshot_dir, source_db, pg_connect
):
    raw, processed, settings = lakes
    key = put_raw_batch(raw, snapshot, parts=3)

    result = transform(key, settings, raw.s3)
    manifest, tables = read_processed(processed)

    assert result == {
        "status": "processed",
        "batch_id": BATCH,
        "manifest_key": manifest_key(BATCH),
        "rows": manifest.row_counts,
        "quarantined_rows": 0,
        "quarantined_rows_key": None,
    }
    assert (
        manifest.stage,
        manifest.source_batch_id,
        manifest.window_lo,
        manifest.window_hi,
        manifest.extra,
    ) == (
        "processed",
        BATCH,
        None,
        WINDOW_HI,
        {
            "hi_utc": HI_UTC,
            "source_tables": sorted(snapshot),
            "set_aside": {},
            "quarantined_rows": {},
        },
    )
    assert raw.keys("quarantine/") == []

    con = pg_connect(source_db)
    load_snapshot(con, snapshot_dir)
    con.run(FACT_DATES_VIEW)
    [[distinct_dates]] = con.run("SELECT count(*) FROM fact_dates")
    assert manifest.row_counts == {
        "dim_date": distinct_dates,
        "dim_staff": 20,
        "dim_location": 30,
        "dim_currency": 3,
        "dim_design": 473,
        "dim_counterparty": 20,
        "dim_transaction": 15_836,
        "dim_payment_type": 4,
        "fact_sales_order": 11_187,
        "fact_purchase_order": 4_649,
        "fact_payment": 15_836,
    }
    for entry in manifest.files:
        expected = STAR_TABLES_BY_NAME[entry.table].arrow_schema
        assert tables[entry.table].schema == expected, entry.table
        assert entry.fingerprint == schema_fingerprint(expected)
        assert entry.key == f"processed/{entry.table}/{BATCH}/part-0000.parquet"

    # Every fact reference resolves inside the output.
    for fact in FACTS:
        for column, dimension in fact.references:
            keys = tables[dimension][STAR_TABLES_BY_NAME[dimension].key]
            dangling = pc.sum(pc.invert(pc.is_in(tables[fact.name][column], value_set=keys)))
            assert dangling.as_py() == 0, f"{fact.name}.{column} -> {dimension}"

    # Spot values, computed independently by SQL on the same snapshot.
    dim_date = tables["dim_date"]
    assert dim_date["date_id"].to_pylist() == [
        r[0] for r in con.run("SELECT d FROM fact_dates ORDER BY d")
    ]
    assert _rows(tables["dim_counterparty"], 3) == sql_rows(con, COUNTERPARTY_SQL)
    assert _rows(tables["dim_staff"], 3) == sql_rows(con, STAFF_SQL)
    assert _rows(tables["fact_payment"].filter(pc.is_in(
        tables["fact_payment"]["payment_id"], pa.array([1, 2, 9648, 15836], pa.int32())
    )), None) == sql_rows(con, PAYMENT_SQL)  # fmt: skip
    assert _revenue_by_currency(tables) == sql_rows(con, REVENUE_SQL)
    sunday = dim_date.filter(pc.equal(dim_date["day_of_week"], 7)).slice(0, 1).to_pylist()
    [[first_sunday]] = con.run("SELECT min(d) FROM fact_dates WHERE extract(isodow FROM d) = 7")
    assert (sunday[0]["date_id"], sunday[0]["day_name"]) == (first_sunday, "Sunday")


def _rows(table: pa.Table, limit: int | None) -> list[tuple]:
    lineage = {SOURCE_VERSION, OLDEST_VERSION}
    table = table.drop_columns([c for c in table.column_names if c in lineage])
    if limit is not None:
        table = table.slice(0, limit)
    return [tuple(r.values()) for r in table.to_pylist()]


def _revenue_by_currency(tables) -> list[tuple]:
    facts = tables["fact_sales_order"]
    revenue = pc.multiply(pc.cast(facts["units_sold"], pa.decimal128(20, 2)), facts["unit_price"])
    joined = (
        pa.table({"currency_id": facts["currency_id"], "revenue": revenue})
        .group_by("currency_id")
        .aggregate([("revenue", "sum")])
        .join(tables["dim_currency"], "currency_id")
    )
    rows = joined.select(["currency_code", "currency_name", "revenue_sum"]).to_pylist()
    return sorted(tuple(r.values()) for r in rows)


FACT_DATES_VIEW = """
    CREATE TEMP VIEW fact_dates (d) AS
    SELECT created_at::date FROM sales_order UNION SELECT last_updated::date FROM sales_order
    UNION SELECT agreed_delivery_date::date FROM sales_order
    UNION SELECT agreed_payment_date::date FROM sales_order
    UNION SELECT created_at::date FROM purchase_order
    UNION SELECT last_updated::date FROM purchase_order
    UNION SELECT agreed_delivery_date::date FROM purchase_order
    UNION SELECT agreed_payment_date::date FROM purchase_order
    UNION SELECT created_at::date FROM payment UNION SELECT last_updated::date FROM payment
    UNION SELECT payment_date::date FROM payment
"""
COUNTERPARTY_SQL = """
    SELECT c.counterparty_id, c.counterparty_legal_name, a.address_line_1, a.address_line_2,
           a.district, a.city, a.postal_code, a.country, a.phone
    FROM counterparty c JOIN address a ON a.address_id = c.legal_address_id
    ORDER BY c.counterparty_id LIMIT 3
"""
STAFF_SQL = """
    SELECT s.staff_id, s.first_name, s.last_name, d.department_name, d.location, s.email_address
    FROM staff s JOIN department d USING (department_id) ORDER BY s.staff_id LIMIT 3
"""
PAYMENT_SQL = """
    SELECT payment_id, created_at::date, created_at::time, last_updated::date,
           last_updated::time, transaction_id, counterparty_id, payment_amount, currency_id,
           payment_type_id, paid, payment_date::date
    FROM payment WHERE payment_id IN (1, 2, 9648, 15836) ORDER BY payment_id
"""
REVENUE_SQL = """
    SELECT c.currency_code,
           CASE c.currency_code WHEN 'GBP' THEN 'Pound Sterling' WHEN 'USD' THEN 'US Dollar'
                WHEN 'EUR' THEN 'Euro' END,
           sum(s.units_sold * s.unit_price)
    FROM sales_order s JOIN currency c USING (currency_id) GROUP BY c.currency_code ORDER BY 1
"""


def quarantined(raw: Lake, processed: Lake, result: dict) -> dict:
    """The quarantine record, after checking what every quarantine must leave behind."""
    assert result["status"] == "quarantined"
    assert result["reason_key"] == f"quarantine/{BATCH}/reason.json"
    reason = json.loads(raw.get_bytes(result["reason_key"]))
    assert (reason["status"], reason["batch_id"]) == ("quarantined", BATCH)
    assert raw.keys("manifests/") == [manifest_key(BATCH)]  # ingest's watermark state stays
    assert f"quarantine/{BATCH}/{manifest_key(BATCH)}" in raw.keys("quarantine/")
    assert processed.keys("") == []  # nothing processed, no processed manifest
    return reason


def test_a_corrupt_parquet_file_is_quarantined(lakes, snapshot):
    raw, processed, settings = lakes
    key = put_raw_batch(raw, small_batch(snapshot))
    raw.put_bytes(data_key(RAW_PREFIX, "design", BATCH), b"PAR1 not really", "x")

    reason = quarantined(raw, processed, transform(key, settings, raw.s3))

    [problem] = reason["problems"]
    assert (problem["check"], problem["table"], problem["key"]) == (
        "unreadable_file",
        "design",
        data_key(RAW_PREFIX, "design", BATCH),
    )
    assert reason["rejected_rows"] == sum(t.num_rows for t in small_batch(snapshot).values())
    copies = raw.keys(f"quarantine/{BATCH}/raw/")
    assert copies == sorted(f"quarantine/{BATCH}/{k}" for k in raw.keys("raw/"))


def test_a_parquet_file_whose_footer_is_damaged_is_quarantined_not_raised(lakes, snapshot):
    raw, processed, settings = lakes
    key = put_raw_batch(raw, small_batch(snapshot))
    design = data_key(RAW_PREFIX, "design", BATCH)
    raw.put_bytes(design, damage_a_column_name(raw.get_bytes(design), "design_name"), "x")

    reason = quarantined(raw, processed, transform(key, settings, raw.s3))

    [problem] = reason["problems"]
    assert (problem["check"], problem["table"], problem["key"]) == (
        "unreadable_file",
        "design",
        design,
    )
    assert "UnicodeDecodeError" in problem["message"]


def test_a_raw_part_whose_values_are_damaged_is_quarantined_not_remodelled(lakes, snapshot):
    raw, processed, settings = lakes
    batch = small_batch(snapshot)
    key = put_raw_batch(raw, batch)
    design = data_key(RAW_PREFIX, "design", BATCH)
    name = batch["design"]["design_name"][0].as_py()
    raw.put_bytes(design, damage_a_value(raw.get_bytes(design), name), "x")

    result = transform(key, settings, raw.s3)

    assert result["status"] == "quarantined", f"remodelled with a design_name other than {name}"
    [problem] = quarantined(raw, processed, result)["problems"]
    assert (problem["check"], problem["table"], problem["key"]) == (
        "unreadable_file",
        "design",
        design,
    )


def test_a_missing_column_is_quarantined(lakes, snapshot):
    raw, processed, settings = lakes
    batch = small_batch(snapshot)
    batch["staff"] = batch["staff"].drop_columns(["email_address"])
    key = put_raw_batch(raw, batch)

    reason = quarantined(raw, processed, transform(key, settings, raw.s3))

    problems = [(p["check"], p["table"], p.get("column")) for p in reason["problems"]]
    assert problems == [
        ("manifest_fingerprint", "staff", None),  # the file is not what ingest described
        ("missing_column", "staff", "email_address"),
    ]


def test_a_dangling_reference_sets_those_orders_aside_and_the_rest_of_the_batch_flows(
    lakes, snapshot
):
    raw, processed, settings = lakes
    batch = small_batch(snapshot)
    batch["design"] = batch["design"].filter(pc.not_equal(batch["design"]["design_id"], 9))
    orders = batch["sales_order"]
    pointing = sorted(orders.filter(pc.equal(orders["design_id"], 9))["sales_order_id"].to_pylist())
    key = put_raw_batch(raw, batch)

    result = transform(key, settings, raw.s3)

    manifest, tables = read_processed(processed)
    assert pointing  # the real snapshot's first fifty orders include design 9
    assert result == {
        "status": "processed",
        "batch_id": BATCH,
        "manifest_key": manifest_key(BATCH),
        "rows": manifest.row_counts,
        "quarantined_rows": len(pointing),
        "quarantined_rows_key": f"quarantine/rows/{BATCH}.jsonl",
    }
    assert read_records(raw) == [
        {
            "batch_id": BATCH,
            "table": "sales_order",
            "key": order,
            "column": "design_id",
            "check": "dangling_reference",
            "reason": "design_id points at a design row not in the batch",
            "value": "9",
            "value_bytes": 1,
            "value_truncated": False,
        }
        for order in pointing
    ]
    expected = sorted(set(orders["sales_order_id"].to_pylist()) - set(pointing))
    assert tables["fact_sales_order"]["sales_order_id"].to_pylist() == expected
    assert manifest.row_counts["dim_design"] == batch["design"].num_rows
    assert (manifest.extra["set_aside"], manifest.extra["quarantined_rows"]) == (
        {},
        {"sales_order": len(pointing)},
    )
    assert raw.keys("quarantine/") == [f"quarantine/rows/{BATCH}.jsonl"]  # no batch quarantine


def read_records(raw: Lake, batch: str = BATCH) -> list[dict]:
    body = raw.get_bytes(f"quarantine/rows/{batch}.jsonl").decode()
    return [json.loads(line) for line in body.splitlines()]


def test_a_manifest_whose_counts_disagree_is_quarantined(lakes, snapshot):
    raw, processed, settings = lakes
    key = put_raw_batch(raw, small_batch(snapshot), sales_order=51)

    reason = quarantined(raw, processed, transform(key, settings, raw.s3))

    assert reason["problems"] == [
        {
            "check": "manifest_rows",
            "table": "sales_order",
            "key": data_key(RAW_PREFIX, "sales_order", BATCH),
            "message": "file has 50 rows, manifest says 51",
            "rows": 50,
        }
    ]


def test_a_rerun_of_a_batch_rewrites_the_same_objects_with_equal_content(lakes, snapshot):
    raw, processed, settings = lakes
    key = put_raw_batch(raw, small_batch(snapshot))
    transform(key, settings, raw.s3)
    first = {k: processed.get_bytes(k) for k in processed.keys("")}
    transform(key, settings, raw.s3)
    assert {k: processed.get_bytes(k) for k in processed.keys("")} == first
    assert sorted(first) == sorted(
        [manifest_key(BATCH)]
        + [f"processed/{t}/{BATCH}/part-0000.parquet" for t in SMALL_BATCH_TABLES]
    )


SMALL_BATCH_TABLES = (
    "dim_date",
    "dim_staff",
    "dim_location",
    "dim_currency",
    "dim_design",
    "dim_counterparty",
    "fact_sales_order",
)


def s3_event(bucket: str, key: str, etag: str) -> dict:
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": key.replace("/", "%2F"), "eTag": etag, "size": 1},
                },
            }
        ]
    }


def test_the_handler_transforms_a_manifest_once_per_etag(lakes, snapshot):
    raw, processed, settings = lakes
    key = put_raw_batch(raw, small_batch(snapshot))
    etag = raw.s3.head_object(Bucket=settings.raw_bucket, Key=key)["ETag"]
    handler = load_handler("transform")
    runtime.reset()  # a cold start in this test's stack

    first = handler(s3_event(settings.raw_bucket, key, etag), context_for("transform"))
    processed.s3.delete_object(Bucket=settings.processed_bucket, Key=manifest_key(BATCH))
    again = handler(s3_event(settings.raw_bucket, key, etag), context_for("transform"))

    assert first == again
    assert first["results"][0]["status"] == "processed"
    assert manifest_key(BATCH) not in processed.keys("manifests/")  # the redelivery did nothing


def test_a_manifest_that_is_not_json_is_quarantined_naming_the_object(lakes):
    raw, processed, settings = lakes
    raw.put_bytes(manifest_key(BATCH), b"{not json", "application/json")

    reason = quarantined(raw, processed, transform(manifest_key(BATCH), settings, raw.s3))

    [problem] = reason["problems"]
    assert problem["check"] == "unreadable_manifest"
    assert problem["message"].startswith(
        f"{manifest_key(BATCH)} is not a manifest: JSONDecodeError"
    )
    assert raw.keys("quarantine/") == [
        f"quarantine/{BATCH}/{manifest_key(BATCH)}",
        f"quarantine/{BATCH}/reason.json",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1, 2]", "is not a manifest: AttributeError"),
        (b'{"batch_id": "x"}', "is not a manifest: TypeError"),
    ],
)
def test_a_json_object_that_is_not_a_manifest_is_quarantined(lakes, body, message):
    raw, processed, settings = lakes
    raw.put_bytes(manifest_key(BATCH), body, "application/json")

    reason = quarantined(raw, processed, transform(manifest_key(BATCH), settings, raw.s3))

    [problem] = reason["problems"]
    assert problem["check"] == "unreadable_manifest"
    assert problem["message"].startswith(f"{manifest_key(BATCH)} {message}")


def test_a_foreign_manifest_is_quarantined_naming_the_object_and_what_is_wrong(lakes, snapshot):
    raw, processed, settings = lakes
    other = "20241115T110000000000-000"
    put_raw_batch(raw, small_batch(snapshot), batch=other)
    foreign = raw.get_manifest(manifest_key(other))  # a copy of another batch's manifest
    raw.s3.delete_object(Bucket=settings.raw_bucket, Key=manifest_key(other))
    raw.put_bytes(manifest_key(BATCH), foreign.to_json().encode(), "application/json")

    reason = quarantined(raw, processed, transform(manifest_key(BATCH), settings, raw.s3))

    files = [
        f"file {f.key!r} ({f.rows} rows) is not one of this batch's"
        f" (raw/<table>/{BATCH}/part-NNNN.parquet)"
        for f in foreign.files
    ]
    assert reason["problems"] == [
        {"check": "foreign_manifest", "message": f"{manifest_key(BATCH)}: {m}"}
        for m in [f"it holds batch {other!r}, its key names {BATCH!r}", *files]
    ]
    assert raw.keys(f"quarantine/{BATCH}/") == [
        f"quarantine/{BATCH}/{manifest_key(BATCH)}",  # the other batch's files stay put
        f"quarantine/{BATCH}/reason.json",
    ]


def test_a_manifest_with_fields_of_the_wrong_kind_is_quarantined(lakes, snapshot):
    raw, processed, settings = lakes
    put_raw_batch(raw, small_batch(snapshot))
    data = json.loads(raw.get_bytes(manifest_key(BATCH)))
    data["stage"] = "processed"
    data["files"][0]["rows"] = "50"
    raw.put_bytes(manifest_key(BATCH), json.dumps(data).encode(), "application/json")

    reason = quarantined(raw, processed, transform(manifest_key(BATCH), settings, raw.s3))

    messages = [p["message"] for p in reason["problems"]]
    assert [p["check"] for p in reason["problems"]] == ["foreign_manifest"] * 2
    assert messages[0] == f"{manifest_key(BATCH)}: it is a 'processed' manifest, not a raw one"
    assert messages[1].startswith(f"{manifest_key(BATCH)}: file entry ManifestFile(")
    assert messages[1].endswith("has fields of the wrong kind")


def test_files_of_the_batch_that_are_not_its_deterministic_keys_are_quarantined(lakes, snapshot):
    raw, processed, settings = lakes
    put_raw_batch(raw, small_batch(snapshot))
    data = json.loads(raw.get_bytes(manifest_key(BATCH)))
    sneaked = f"{data_key(RAW_PREFIX, 'design', BATCH)}.old"  # beside the batch's own file
    raw.copy(data_key(RAW_PREFIX, "design", BATCH), sneaked)
    [design] = [f for f in data["files"] if f["table"] == "design"]
    design["key"] = sneaked
    raw.put_bytes(manifest_key(BATCH), json.dumps(data).encode(), "application/json")

    reason = quarantined(raw, processed, transform(manifest_key(BATCH), settings, raw.s3))

    assert reason["problems"] == [
        {
            "check": "foreign_manifest",
            "message": f"{manifest_key(BATCH)}: file {sneaked!r} ({design['rows']} rows) is not"
            f" one of this batch's (raw/<table>/{BATCH}/part-NNNN.parquet)",
        }
    ]
    assert reason["quarantined_objects"] == [f"quarantine/{BATCH}/{manifest_key(BATCH)}"]


@pytest.mark.parametrize("hi_utc", ["now", "infinity", "9999-12-31T00:00:00+00:00"])
def test_a_manifest_with_a_malformed_or_future_capture_time_is_quarantined(lakes, snapshot, hi_utc):
    raw, processed, settings = lakes
    put_raw_batch(raw, small_batch(snapshot))
    data = json.loads(raw.get_bytes(manifest_key(BATCH)))
    data["extra"]["hi_utc"] = hi_utc
    raw.put_bytes(manifest_key(BATCH), json.dumps(data).encode(), "application/json")

    reason = quarantined(raw, processed, transform(manifest_key(BATCH), settings, raw.s3))

    [problem] = reason["problems"]
    assert problem["check"] == "foreign_manifest"
    assert problem["message"].startswith(f"{manifest_key(BATCH)}: hi_utc ")
    assert repr(hi_utc) in problem["message"]


def test_a_manifest_key_that_names_no_batch_is_quarantined_apart_naming_the_key(lakes, snapshot):
    raw, processed, settings = lakes
    key = "manifests/rows.json"  # "rows" is no batch id (and quarantine/rows/ holds row records)
    put_raw_batch(raw, small_batch(snapshot))
    raw.copy(manifest_key(BATCH), key)

    result = transform(key, settings, raw.s3)

    assert result["status"] == "quarantined"
    assert result["reason_key"].startswith("quarantine/not-a-batch/")
    reason = json.loads(raw.get_bytes(result["reason_key"]))
    assert (reason["raw_manifest_key"], reason["batch_id"]) == (key, "rows")
    assert reason["problems"][0] == {
        "check": "foreign_manifest",
        "message": f"{key}: its key does not name a batch: 'rows' is neither c<capture sequence,"
        " 19 digits>-<part, 3 digits> nor a window id",
    }
    assert raw.keys("quarantine/rows/") == []
    assert processed.keys("") == []


@pytest.mark.parametrize("rows", ["none", "all set aside"])
def test_a_batch_without_processed_rows_publishes_no_processed_manifest(lakes, snapshot, rows):
    """Nothing to load: an empty processed manifest would be recorded in the warehouse ledger
    and stand for the batch id (a genuine batch of that id would later be skipped)."""
    raw, processed, settings = lakes
    if rows == "none":  # what ingest writes when only key sets changed
        raw.put_manifest(Manifest(BATCH, "raw", None, WINDOW_HI, (), extra={"hi_utc": HI_UTC}))
    else:  # one staff member, set aside: their department is not in the batch
        put_raw_batch(raw, {"staff": snapshot["staff"].slice(0, 1)})

    result = transform(manifest_key(BATCH), settings, raw.s3)

    assert result == {
        "status": "nothing_to_load",
        "batch_id": BATCH,
        "manifest_key": None,
        "rows": {},
        "quarantined_rows": 0 if rows == "none" else 1,
        "quarantined_rows_key": None if rows == "none" else f"quarantine/rows/{BATCH}.jsonl",
    }
    assert processed.keys("manifests/") == []
    assert [k for k in raw.keys("quarantine/") if not k.startswith("quarantine/rows/")] == []


def test_a_manifest_gone_before_transform_is_reported_once_without_an_exception(
    lakes, capsys, log_lines
):
    raw, processed, settings = lakes
    handler = load_handler("transform")
    runtime.reset()
    metrics.clear_metrics()  # what earlier direct calls of the stage left unflushed
    capsys.readouterr()
    event = s3_event(settings.raw_bucket, manifest_key(BATCH), "0123456789abcdef")

    first = handler(event, context_for("transform"))
    again = handler(event, context_for("transform"))  # a redelivery: nothing new to say

    reason_key = f"quarantine/{BATCH}/reason.json"
    assert (
        first
        == again
        == {"results": [{"status": "gone", "batch_id": BATCH, "reason_key": reason_key}]}
    )
    assert json.loads(raw.get_bytes(reason_key)) == {
        "status": "gone",
        "batch_id": BATCH,
        "raw_manifest_key": manifest_key(BATCH),
        "problems": [
            {
                "check": "manifest_gone",
                "message": f"s3://{settings.raw_bucket}/{manifest_key(BATCH)} does not exist"
                " (NoSuchKey): the batch was removed before transform read it; nothing of it"
                " was transformed",
            }
        ],
        "quarantined_objects": [],
        "missing_objects": [manifest_key(BATCH)],
    }
    emitted = [(m.name, m.value) for m in parse_emf(capsys.readouterr().out)]
    assert emitted.count(("QuarantinedBatches", 1.0)) == 1
    assert log_lines.getvalue().count('"raw manifest gone"') == 1
    assert processed.keys("") == []


def lake_rows(name: str, table: pa.Table, changes: dict[int, dict]) -> pa.Table:
    """``table`` in the raw lake schema (side column included), the rows of the keys in
    ``changes`` changed; a side value given as a dict is stored as its JSON."""
    model = TABLES_BY_NAME[name]
    rows = table.to_pylist()
    for row in rows:
        row[UNREPRESENTABLE] = None
        row.update(changes.get(row[model.key], {}))
        if isinstance(row[UNREPRESENTABLE], dict):
            row[UNREPRESENTABLE] = json.dumps(row[UNREPRESENTABLE])
    return pa.Table.from_pylist(rows, schema=model.lake_schema)


def keys_of(table: pa.Table, column: str) -> list[int]:
    return sorted(table[column].to_pylist())


def test_rows_the_star_cannot_take_are_set_aside_alone_recorded_counted_and_logged_without_values(
    lakes, snapshot, capsys, log_lines
):
    raw, processed, settings = lakes
    batch = small_batch(snapshot)
    orders = keys_of(batch["sales_order"], "sales_order_id")
    infinite, wide, undated, unsold = orders[:4]
    [staff_id] = (
        batch["sales_order"]
        .filter(pc.equal(batch["sales_order"]["sales_order_id"], orders[10]))["staff_id"]
        .to_pylist()
    )
    batch["sales_order"] = lake_rows(
        "sales_order",
        batch["sales_order"],
        {
            infinite: {"created_at": None, UNREPRESENTABLE: {"created_at": "infinity"}},
            wide: {"unit_price": None, UNREPRESENTABLE: {"unit_price": "123456789.125"}},
            undated: {"agreed_delivery_date": "not-a-date-4711"},
            unsold: {"units_sold": None},  # after DROP NOT NULL
        },
    )
    batch["staff"] = lake_rows(
        "staff",
        batch["staff"],
        {
            staff_id: {
                "last_updated": None,
                UNREPRESENTABLE: {"last_updated": "10000-01-01 00:00:00"},
            }
        },
    )
    key = put_raw_batch(raw, batch)
    etag = raw.s3.head_object(Bucket=settings.raw_bucket, Key=key)["ETag"]
    handler = load_handler("transform")
    runtime.reset()
    metrics.clear_metrics()
    capsys.readouterr()

    [result] = handler(s3_event(settings.raw_bucket, key, etag), context_for("transform"))[
        "results"
    ]

    manifest, tables = read_processed(processed)
    records_key = f"quarantine/rows/{BATCH}.jsonl"
    assert result == {
        "status": "processed",
        "batch_id": BATCH,
        "manifest_key": manifest_key(BATCH),
        "rows": manifest.row_counts,
        "quarantined_rows": 5,
        "quarantined_rows_key": records_key,
    }

    def record(table, key, column, check, reason, value):
        size = None if value is None else len(value.encode())
        return {
            "batch_id": BATCH,
            "table": table,
            "key": key,
            "column": column,
            "check": check,
            "reason": reason,
            "value": value,
            "value_bytes": size,
            "value_truncated": False,
        }

    timestamp = "the lake's timestamp[ms] cannot hold"
    assert read_records(raw) == [
        record("staff", staff_id, "last_updated", "unrepresentable_value",
               f"last_updated holds a value {timestamp}", "10000-01-01 00:00:00"),
        record("sales_order", infinite, "created_at", "unrepresentable_value",
               f"created_at holds a value {timestamp}", "infinity"),
        record("sales_order", wide, "unit_price", "unrepresentable_value",
               "unit_price holds a value the lake's decimal128(10, 2) cannot hold",
               "123456789.125"),
        record("sales_order", undated, "agreed_delivery_date", "bad_text_date",
               "agreed_delivery_date is not a YYYY-MM-DD date", "not-a-date-4711"),
        record("sales_order", unsold, "units_sold", "null_in_required_column",
               "units_sold is NULL where the star needs a value", None),
    ]  # fmt: skip
    # Every other row arrived in the same run, the orders of the set-aside staff member too.
    assert keys_of(tables["fact_sales_order"], "sales_order_id") == orders[4:]
    all_staff = keys_of(batch["staff"], "staff_id")
    assert keys_of(tables["dim_staff"], "staff_id") == [s for s in all_staff if s != staff_id]
    assert staff_id in tables["fact_sales_order"]["sales_staff_id"].to_pylist()
    for name, rows in (("dim_design", 473), ("dim_location", 30), ("dim_counterparty", 20)):
        assert manifest.row_counts[name] == rows
    assert (manifest.extra["set_aside"], manifest.extra["quarantined_rows"]) == (
        {"dim_staff": [staff_id]},  # load parks its orders until the staff row arrives
        {"staff": 1, "sales_order": 4},
    )
    out = capsys.readouterr().out
    quarantined = {
        m.dimensions["table"]: m.value for m in parse_emf(out) if m.name == "QuarantinedRows"
    }
    assert quarantined == {"staff": 1, "sales_order": 4}
    logged = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    aside = {line["table"]: line for line in logged if line["message"] == "rows set aside"}
    assert [(p["key"], p["column"], p["check"]) for p in aside["sales_order"]["problems"]] == [
        (infinite, "created_at", "unrepresentable_value"),
        (wide, "unit_price", "unrepresentable_value"),
        (undated, "agreed_delivery_date", "bad_text_date"),
        (unsold, "units_sold", "null_in_required_column"),
    ]
    assert aside["staff"]["keys"] == [staff_id]
    everything = log_lines.getvalue() + out
    for value in ("infinity", "123456789.125", "not-a-date-4711", "10000-01-01"):
        assert value not in everything  # no value in any log line or metric


def test_a_value_past_64_kib_is_recorded_cut_at_a_character_with_its_full_length(lakes, snapshot):
    raw, _, settings = lakes
    batch = small_batch(snapshot)
    [first] = keys_of(batch["sales_order"], "sales_order_id")[:1]
    big = "€" * (2 * 2**20)  # 6 MiB of three-byte characters
    batch["sales_order"] = lake_rows(
        "sales_order", batch["sales_order"], {first: {"agreed_payment_date": big}}
    )

    result = transform(put_raw_batch(raw, batch), settings, raw.s3)

    [record] = read_records(raw)
    assert result["quarantined_rows"] == 1
    assert (record["key"], record["value_bytes"], record["value_truncated"]) == (
        first,
        len(big.encode()),
        True,
    )
    assert record["value"] == "€" * (64 * 1024 // 3)  # whole characters within 64 KiB


def test_an_address_set_aside_names_its_location_and_the_counterparties_embedding_it(
    lakes, snapshot
):
    raw, processed, settings = lakes
    batch = small_batch(snapshot)
    counterparties = batch["counterparty"]
    address_id = counterparties["legal_address_id"][0].as_py()
    embedding = keys_of(
        counterparties.filter(pc.equal(counterparties["legal_address_id"], address_id)),
        "counterparty_id",
    )
    batch["address"] = lake_rows("address", batch["address"], {address_id: {"city": None}})

    result = transform(put_raw_batch(raw, batch), settings, raw.s3)

    manifest, tables = read_processed(processed)
    assert result["quarantined_rows"] == 1 + len(embedding)
    assert manifest.extra["set_aside"] == {
        "dim_location": [address_id],
        "dim_counterparty": embedding,
    }
    assert [(r["table"], r["key"], r["check"]) for r in read_records(raw)] == [
        ("address", address_id, "null_in_required_column"),
        *[("counterparty", c, "parent_set_aside") for c in embedding],
    ]
    assert address_id not in tables["dim_location"]["location_id"].to_pylist()
    assert not set(embedding) & set(tables["dim_counterparty"]["counterparty_id"].to_pylist())
    assert manifest.row_counts["fact_sales_order"] == 50  # the orders all flow


def test_deleted_keys_become_star_keys_in_the_processed_batch(lakes, snapshot):
    raw, processed, settings = lakes
    deleted = pa.table(
        {
            "table": ["department", "design", "payment", "sales_order"],
            "key": pa.array([3, 4, 5, 6], pa.int32()),
        },
        schema=DELETED_KEYS_SCHEMA,
    )
    key = put_raw_batch(raw, {DELETED_KEYS: deleted})  # a batch of deletions only

    result = transform(key, settings, raw.s3)

    manifest, tables = read_processed(processed)
    assert result["rows"] == manifest.row_counts == {DELETED_KEYS: 3}
    assert [(f.table, f.key, f.fingerprint) for f in manifest.files] == [
        (
            DELETED_KEYS,
            f"processed/{DELETED_KEYS}/{BATCH}/part-0000.parquet",
            schema_fingerprint(STAR_DELETED_KEYS_SCHEMA),
        )
    ]
    assert tables[DELETED_KEYS].schema == STAR_DELETED_KEYS_SCHEMA
    assert tables[DELETED_KEYS].to_pylist() == [
        {"star_table": "dim_design", "key": 4},
        {"star_table": "fact_payment", "key": 5},
        {"star_table": "fact_sales_order", "key": 6},
    ]


def test_a_quarantined_batch_is_counted_and_the_next_batch_still_transforms(
    lakes, snapshot, capsys
):
    raw, processed, settings = lakes
    later = "20241115T130000000000-000"
    bad_key = put_raw_batch(raw, small_batch(snapshot))
    raw.put_bytes(data_key(RAW_PREFIX, "design", BATCH), b"PAR1 not really", "x")
    good_key = put_raw_batch(raw, small_batch(snapshot), batch=later)
    handler = load_handler("transform")
    runtime.reset()
    capsys.readouterr()

    results, emitted = [], []
    for key in (bad_key, good_key):
        etag = raw.s3.head_object(Bucket=settings.raw_bucket, Key=key)["ETag"]
        results += handler(s3_event(settings.raw_bucket, key, etag), context_for("transform"))[
            "results"
        ]
        emitted.append(
            {
                (m.name, m.dimensions.get("table")): m.value
                for m in parse_emf(capsys.readouterr().out)
            }
        )

    assert [(r["status"], r["batch_id"]) for r in results] == [
        ("quarantined", BATCH),
        ("processed", later),
    ]
    rejected = sum(t.num_rows for t in small_batch(snapshot).values())
    bad, good = emitted
    assert (bad[("QuarantinedBatches", None)], bad[("TransformRejectedRows", None)]) == (
        1,
        rejected,
    )
    assert not [name for name, _ in bad if name == "TransformRows"]
    assert good[("QuarantinedBatches", None)] == 0  # the check ran, nothing quarantined
    assert {t: good["TransformRows", t] for t in SMALL_BATCH_TABLES} == (
        processed.get_manifest(manifest_key(later)).row_counts
    )
    assert processed.keys("manifests/") == [manifest_key(later)]
    assert raw.keys("manifests/") == sorted([manifest_key(BATCH), manifest_key(later)])


def test_the_processed_manifest_is_written_last_and_a_crash_before_it_leaves_none(
    lakes, snapshot, monkeypatch
):
    raw, processed, settings = lakes
    key = put_raw_batch(raw, small_batch(snapshot))
    put_bytes = Lake.put_bytes
    writes, crash = [], ["processed/fact_sales_order/"]

    def watched(lake, object_key, body, content_type):
        if lake.bucket == settings.processed_bucket:
            writes.append(object_key)
            if crash and object_key.startswith(crash[0]):
                raise RuntimeError("transform killed while writing its data files")
        return put_bytes(lake, object_key, body, content_type)

    monkeypatch.setattr(Lake, "put_bytes", watched)
    with pytest.raises(RuntimeError, match="killed"):
        transform(key, settings, raw.s3)
    assert processed.keys("manifests/") == []  # load never sees half a batch

    crash.clear()
    writes.clear()
    result = transform(key, settings, raw.s3)

    manifest = processed.get_manifest(manifest_key(BATCH))
    assert result["status"] == "processed"
    assert (sorted(writes[:-1]), writes[-1]) == (
        sorted(f.key for f in manifest.files),
        manifest_key(BATCH),
    )


def test_deleted_keys_naming_unknown_tables_are_counted_never_quoted(
    lakes, capsys, caplog, log_lines
):
    """The raw ``deleted_keys`` file's ``table`` column is data: ingest writes model table
    names there, so another name comes from a damaged or forged file and may be anything
    (here an e-mail address). It is counted, as load counts the names no star table has."""
    raw, _, settings = lakes
    leaked = "quokka.zanzibarsson@leak.example"
    deleted = pa.table(
        {"table": [leaked, "design"], "key": pa.array([738291, 4], pa.int32())},
        schema=DELETED_KEYS_SCHEMA,
    )
    key = put_raw_batch(raw, {DELETED_KEYS: deleted})

    result = transform(key, settings, raw.s3)

    assert result["rows"] == {DELETED_KEYS: 1}  # the known table's deletion flows on
    logs = log_lines.getvalue()
    assert "deleted keys of unknown source tables ignored" in logs
    out = capsys.readouterr()
    haystack = "\n".join([logs, caplog.text, out.out, out.err, json.dumps(result)])
    assert leaked not in haystack
    [line] = [json.loads(x) for x in logs.splitlines() if "unknown source tables" in x]
    assert line["unknown_tables"] == 1
