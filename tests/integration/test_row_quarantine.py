"""Row-level quarantine from a real source: the rows of issue 12's table that concern transform.

Against the embedded PostgreSQL holding the real snapshot and moto S3, ingest captures a bad
row together with other changes (new orders, other tables), and transform sets aside exactly
that row: every other row of the batch reaches the processed lake in the same run, the row is
recorded under quarantine/rows/ with its original value, and no log line or metric carries the
value. Once the source fixes the row, the fixed version arrives by itself in the next batch.
"""

from __future__ import annotations

import json

import pytest
from ingest_support import batch_tables, insert_sales_orders, settings_for

from totes.lake import Lake, Manifest, manifest_key
from totes.settings import TransformSettings
from totes.source.model import TABLES_BY_NAME
from totes.stages.ingest_batch import ingest
from totes.stages.transform_batch import transform
from totes.star.model import STAR_TABLES_BY_NAME
from totes_tools.local.chain import parse_emf


def cycle(stack, source, lake: Lake) -> list[tuple[Manifest, dict]]:
    """One ingest run, then transform of every batch it wrote: (raw manifest, result)."""
    manifests = ingest(settings_for(stack), source, lake.s3)
    settings = TransformSettings.from_env()
    return [(m, transform(manifest_key(m.batch_id), settings, lake.s3)) for m in manifests]


def processed_keys(lake: Lake, batch_id: str) -> dict[str, set[int]]:
    """The keys of every star table in the processed batch."""
    processed = Lake(lake.s3, TransformSettings.from_env().processed_bucket)
    manifest = processed.get_manifest(manifest_key(batch_id))
    out: dict[str, set[int]] = {}
    for entry in manifest.files:
        if entry.table in STAR_TABLES_BY_NAME and entry.table != "dim_date":
            key = STAR_TABLES_BY_NAME[entry.table].key
            out.setdefault(entry.table, set()).update(
                processed.get_table(entry.key)[key].to_pylist()
            )
    return out


def expected_keys(lake: Lake, raw: Manifest, aside: set[tuple[str, int]]) -> dict[str, set[int]]:
    """Every key of the raw batch in the star table of its source table, but those set aside."""
    out: dict[str, set[int]] = {}
    for name, table in batch_tables(lake, raw).items():
        model = TABLES_BY_NAME[name]
        if model.star_table is not None:
            keys = set(table[model.key].to_pylist()) - {k for t, k in aside if t == name}
            out.setdefault(model.star_table, set()).update(keys)
    return {name: keys for name, keys in out.items() if keys}


def records(lake: Lake, batch_id: str) -> list[dict]:
    body = lake.get_bytes(f"quarantine/rows/{batch_id}.jsonl").decode()
    return [json.loads(line) for line in body.splitlines()]


# (set-up SQL, fix SQL, the record: table, key, column, check, value, set_aside)
CASES = {
    "a NULL after DROP NOT NULL": (
        [
            "ALTER TABLE sales_order ALTER COLUMN units_sold DROP NOT NULL",
            "UPDATE sales_order SET units_sold = NULL, last_updated = localtimestamp"
            " WHERE sales_order_id = 3",
        ],
        ["UPDATE sales_order SET units_sold = 7, last_updated = localtimestamp"
         " WHERE sales_order_id = 3"],
        ("sales_order", 3, "units_sold", "null_in_required_column", None, {}),
    ),
    "'infinity' created_at": (
        ["UPDATE sales_order SET created_at = 'infinity' WHERE sales_order_id = 1"],
        ["UPDATE sales_order SET created_at = '2022-11-03 14:20:49.962' WHERE sales_order_id = 1"],
        ("sales_order", 1, "created_at", "unrepresentable_value", "infinity", {}),
    ),
    "a year past 9999": (
        ["UPDATE payment SET last_updated = '10000-01-01 00:00:00' WHERE payment_id = 2"],
        ["UPDATE payment SET last_updated = localtimestamp WHERE payment_id = 2"],
        ("payment", 2, "last_updated", "unrepresentable_value", "10000-01-01 00:00:00", {}),
    ),
    "microseconds after a widened column": (
        [
            "ALTER TABLE payment ALTER COLUMN created_at TYPE timestamp(6)",
            "UPDATE payment SET created_at = '2023-07-19 13:47:29.123456' WHERE payment_id = 6",
        ],
        ["UPDATE payment SET created_at = '2023-07-19 13:47:29.123' WHERE payment_id = 6"],
        ("payment", 6, "created_at", "unrepresentable_value", "2023-07-19 13:47:29.123456", {}),
    ),
    "a malformed text date": (
        ["UPDATE sales_order SET agreed_delivery_date = 'not-a-date' WHERE sales_order_id = 4"],
        ["UPDATE sales_order SET agreed_delivery_date = '2024-12-01' WHERE sales_order_id = 4"],
        ("sales_order", 4, "agreed_delivery_date", "bad_text_date", "not-a-date", {}),
    ),
    "a NULL in a dimension row": (
        [
            "ALTER TABLE staff ALTER COLUMN first_name DROP NOT NULL",
            "UPDATE staff SET first_name = NULL, last_updated = localtimestamp WHERE staff_id = 5",
        ],
        ["UPDATE staff SET first_name = 'Ann', last_updated = localtimestamp WHERE staff_id = 5"],
        ("staff", 5, "first_name", "null_in_required_column", None, {"dim_staff": [5]}),
    ),
}  # fmt: skip
REASONS = {
    "null_in_required_column": "{column} is NULL where the star needs a value",
    "unrepresentable_value": "{column} holds a value the lake's timestamp[ms] cannot hold",
    "bad_text_date": "{column} is not a YYYY-MM-DD date",
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_bad_row_is_set_aside_alone_and_its_fixed_version_arrives_by_itself(
    case, stack, source, lake, pg_connect, capsys, log_lines
):
    bad_sql, fix_sql, (table, key, column, check, value, set_aside) = CASES[case]
    ingest(settings_for(stack), source, lake.s3)  # the initial capture (not transformed)
    con = pg_connect(source)
    for sql in bad_sql:
        con.run(sql)
    new_orders = set(insert_sales_orders(con, 3))
    con.run("UPDATE design SET design_name = 'Linen', last_updated = localtimestamp"
            " WHERE design_id = 7")  # fmt: skip
    con.run("UPDATE payment SET paid = NOT paid, last_updated = localtimestamp"
            " WHERE payment_id = 42")  # fmt: skip
    capsys.readouterr()
    log_lines.seek(0)
    log_lines.truncate()

    [(raw, result)] = cycle(stack, source, lake)

    out = capsys.readouterr().out + log_lines.getvalue()
    assert (result["status"], result["quarantined_rows"]) == ("processed", 1)
    assert records(lake, raw.batch_id) == [
        {
            "batch_id": raw.batch_id,
            "table": table,
            "key": key,
            "column": column,
            "check": check,
            "reason": REASONS[check].format(column=column),
            "value": value,
            "value_bytes": None if value is None else len(value),
            "value_truncated": False,
        }
    ]
    got = processed_keys(lake, raw.batch_id)
    assert got == expected_keys(lake, raw, {(table, key)})  # everything else, same run
    assert new_orders <= got["fact_sales_order"]
    assert {7} <= got["dim_design"]
    assert 42 in got["fact_payment"] or (table, key) == ("payment", 42)
    processed = Lake(lake.s3, TransformSettings.from_env().processed_bucket)
    extra = processed.get_manifest(manifest_key(raw.batch_id)).extra
    assert extra["set_aside"] == set_aside
    assert extra["quarantined_rows"] == {table: 1}
    emitted = [(m.name, m.dimensions, m.value) for m in parse_emf(out)]
    assert ("QuarantinedRows", {"table": table}, 1.0) in emitted
    assert value is None or value not in out  # no value in any log line or metric

    for sql in fix_sql:
        con.run(sql)

    [(fixed_raw, fixed)] = cycle(stack, source, lake)

    assert (fixed["status"], fixed["quarantined_rows"]) == ("processed", 0)
    star_table = TABLES_BY_NAME[table].star_table
    assert key in processed_keys(lake, fixed_raw.batch_id)[star_table]
    assert lake.keys("quarantine/") == [f"quarantine/rows/{raw.batch_id}.jsonl"]


def test_an_address_set_aside_takes_its_counterparties_along_and_the_orders_flow(
    stack, source, lake, pg_connect
):
    ingest(settings_for(stack), source, lake.s3)
    con = pg_connect(source)
    con.run("ALTER TABLE address ALTER COLUMN city DROP NOT NULL")
    con.run("UPDATE address SET city = NULL, last_updated = localtimestamp WHERE address_id = 15")
    embedding = sorted(
        r[0]
        for r in con.run("SELECT counterparty_id FROM counterparty WHERE legal_address_id = 15")
    )
    [[order]] = con.run(
        "SELECT min(sales_order_id) FROM sales_order WHERE agreed_delivery_location_id = 15"
    )
    con.run("UPDATE sales_order SET units_sold = units_sold + 1, last_updated = localtimestamp"
            " WHERE sales_order_id = :o", o=order)  # fmt: skip

    [(raw, result)] = cycle(stack, source, lake)

    aside = {("address", 15), *{("counterparty", c) for c in embedding}}
    assert embedding  # the snapshot's address 15 is a legal address
    assert result["quarantined_rows"] == len(aside)
    assert [(r["table"], r["key"], r["check"]) for r in records(lake, raw.batch_id)] == [
        ("address", 15, "null_in_required_column"),
        *[("counterparty", c, "parent_set_aside") for c in embedding],
    ]
    got = processed_keys(lake, raw.batch_id)
    assert got == expected_keys(lake, raw, aside)
    assert order in got["fact_sales_order"]  # load parks it until location 15 arrives
    processed = Lake(lake.s3, TransformSettings.from_env().processed_bucket)
    assert processed.get_manifest(manifest_key(raw.batch_id)).extra["set_aside"] == {
        "dim_location": [15],
        "dim_counterparty": embedding,
    }

    con.run("UPDATE address SET city = 'Leeds', last_updated = localtimestamp"
            " WHERE address_id = 15")  # fmt: skip

    [(fixed_raw, fixed)] = cycle(stack, source, lake)

    got = processed_keys(lake, fixed_raw.batch_id)
    assert fixed["quarantined_rows"] == 0
    assert 15 in got["dim_location"]
    assert set(embedding) <= got["dim_counterparty"]


def test_hard_deletes_reach_the_processed_lake_as_star_keys(stack, source, lake, pg_connect):
    ingest(settings_for(stack), source, lake.s3)
    con = pg_connect(source)
    [[design]] = con.run(
        "SELECT min(design_id) FROM design d WHERE NOT EXISTS"
        " (SELECT 1 FROM sales_order s WHERE s.design_id = d.design_id)"
    )
    con.run("DELETE FROM design WHERE design_id = :d", d=design)
    con.run("DELETE FROM payment WHERE payment_id = 10")

    [(raw, result)] = cycle(stack, source, lake)

    processed = Lake(lake.s3, TransformSettings.from_env().processed_bucket)
    manifest = processed.get_manifest(manifest_key(raw.batch_id))
    [entry] = manifest.files_for("deleted_keys")
    assert result["rows"]["deleted_keys"] == 2
    assert processed.get_table(entry.key).to_pylist() == [
        {"star_table": "dim_design", "key": design},
        {"star_table": "fact_payment", "key": 10},
    ]
