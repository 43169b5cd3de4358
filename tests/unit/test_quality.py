"""The quality gates on hand-made batches: a good batch passes with its model columns, and each
kind of bad input is rejected with a reason naming the check, table, column and example rows."""

from __future__ import annotations

import json
from unittest import mock

import pyarrow as pa
import pytest
from factories import raw, sales_order

from totes import quality
from totes.errors import BatchRejected
from totes.lake import Manifest, ManifestFile, schema_fingerprint
from totes.source.model import TABLES_BY_NAME


def good_batch() -> dict[str, pa.Table]:
    return {
        "address": raw(
            "address",
            {
                "address_id": 1,
                "address_line_1": "1 High St",
                "city": "Leeds",
                "postal_code": "LS1",
                "country": "UK",
                "phone": "0",
            },
        ),
        "counterparty": raw(
            "counterparty",
            {"counterparty_id": 1, "counterparty_legal_name": "Acme", "legal_address_id": 1},
        ),
        "currency": raw("currency", {"currency_id": 1, "currency_code": "GBP"}),
        "department": raw("department", {"department_id": 1, "department_name": "Sales"}),
        "staff": raw(
            "staff",
            {
                "staff_id": 1,
                "first_name": "A",
                "last_name": "B",
                "department_id": 1,
                "email_address": "a@b",
            },
        ),
        "design": raw(
            "design", {"design_id": 1, "design_name": "D", "file_location": "/", "file_name": "f"}
        ),
        "sales_order": raw("sales_order", sales_order(1), sales_order(2)),
    }


def manifest_for(tables: dict[str, pa.Table], **rows_override) -> tuple[Manifest, dict]:
    files = {}
    for name, t in tables.items():
        entry = ManifestFile(
            name,
            f"raw/{name}/B/part-0000.parquet",
            rows_override.get(name, t.num_rows),
            schema_fingerprint(t.schema),
        )
        files[entry] = t
    return Manifest("B", "raw", None, "2024-05-06T09:30:02", tuple(files)), files


def rejection(tables: dict[str, pa.Table], **rows_override) -> dict:
    manifest, files = manifest_for(tables, **rows_override)
    with pytest.raises(BatchRejected) as caught:
        quality.gate(manifest, files)
    json.dumps(caught.value.reason)  # the reason is stored as JSON
    return caught.value.reason


def test_a_good_batch_passes_with_its_tables():
    tables = good_batch()
    manifest, files = manifest_for(tables)
    source = quality.gate(manifest, files)
    assert sorted(source) == sorted(tables)
    assert all(source[name].equals(tables[name]) for name in tables)


def test_files_of_one_table_are_concatenated():
    tables = good_batch()
    manifest, files = manifest_for(tables)
    second = ManifestFile("sales_order", "raw/sales_order/B/part-0001.parquet", 1, "x")
    more = raw("sales_order", sales_order(3))
    second = ManifestFile(second.table, second.key, 1, schema_fingerprint(more.schema))
    manifest = Manifest("B", "raw", None, "hi", (*manifest.files, second))
    source = quality.gate(manifest, {**files, second: more})
    assert source["sales_order"]["sales_order_id"].to_pylist() == [1, 2, 3]


def test_unknown_extra_columns_are_reported_and_dropped_not_fatal():
    tables = good_batch()
    tables["currency"] = tables["currency"].append_column("symbol", pa.array(["£"]))
    manifest, files = manifest_for(tables)
    with mock.patch.object(quality.logger, "warning") as warning:
        source = quality.gate(manifest, files)
    assert source["currency"].column_names == TABLES_BY_NAME["currency"].column_names
    warning.assert_called_once_with(
        "data quality: unknown source columns ignored",
        extra={"table": "currency", "columns": ["symbol"]},
    )


def test_a_manifest_whose_row_count_disagrees_is_rejected():
    reason = rejection(good_batch(), sales_order=3)
    assert reason["problems"] == [
        {
            "check": "manifest_rows",
            "table": "sales_order",
            "key": "raw/sales_order/B/part-0000.parquet",
            "message": "file has 2 rows, manifest says 3",
            "rows": 2,
        }
    ]
    assert reason["batch_id"] == "B"


def test_a_schema_fingerprint_that_disagrees_is_rejected():
    tables = good_batch()
    manifest, files = manifest_for(tables)
    wrong = ManifestFile("currency", "raw/currency/B/part-0000.parquet", 1, "0000")
    entries = tuple(wrong if f.table == "currency" else f for f in manifest.files)
    files = {wrong if f.table == "currency" else f: t for f, t in files.items()}
    with pytest.raises(BatchRejected) as caught:
        quality.gate(Manifest("B", "raw", None, "hi", entries), files)
    [problem] = caught.value.reason["problems"]
    assert (problem["check"], problem["table"]) == ("manifest_fingerprint", "currency")


def test_a_missing_column_is_rejected_naming_table_and_column():
    tables = good_batch()
    tables["staff"] = tables["staff"].drop_columns(["email_address"])
    assert rejection(tables)["problems"] == [
        {
            "check": "missing_column",
            "table": "staff",
            "column": "email_address",
            "message": "required column email_address (string) is missing",
            "rows": 1,
        }
    ]


def test_a_column_of_another_type_is_rejected():
    tables = good_batch()
    units = tables["sales_order"]["units_sold"].cast(pa.int64())
    tables["sales_order"] = tables["sales_order"].set_column(
        tables["sales_order"].schema.get_field_index("units_sold"), "units_sold", units
    )
    [problem] = rejection(tables)["problems"]
    assert problem["check"] == "column_type"
    assert problem["message"] == "column units_sold is int64, expected int32"


def test_a_dangling_reference_is_rejected_with_example_rows():
    tables = good_batch()
    tables["sales_order"] = raw("sales_order", sales_order(1), sales_order(2, design_id=99))
    assert rejection(tables)["problems"] == [
        {
            "check": "dangling_reference",
            "table": "sales_order",
            "column": "design_id",
            "message": "sales_order.design_id points at design rows that are not in the batch",
            "rows": 1,
            "examples": [{"sales_order_id": 2, "design_id": 99}],
        }
    ]


def test_a_reference_to_a_table_absent_from_the_batch_is_dangling():
    tables = good_batch()
    del tables["department"]
    [problem] = rejection(tables)["problems"]
    assert (problem["check"], problem["table"], problem["column"]) == (
        "dangling_reference",
        "staff",
        "department_id",
    )


def test_a_transaction_may_point_at_orders_outside_the_batch():
    tables = {
        "transaction": raw(
            "transaction",
            {"transaction_id": 1, "transaction_type": "SALE", "sales_order_id": 5},
        )
    }
    manifest, files = manifest_for(tables)
    assert quality.gate(manifest, files)["transaction"].num_rows == 1


def test_a_null_in_a_not_null_column_and_a_bad_text_date_are_rejected():
    tables = good_batch()
    so = tables["sales_order"]
    so = so.set_column(
        so.schema.get_field_index("agreed_payment_date"),
        pa.field("agreed_payment_date", pa.string()),
        pa.array(["2024-02-30", "2024-05-12"]),
    )
    so = so.set_column(
        so.schema.get_field_index("units_sold"),
        pa.field("units_sold", pa.int32()),
        pa.array([None, 5], pa.int32()),
    )
    tables["sales_order"] = so
    assert rejection(tables)["problems"] == [
        {
            "check": "null_in_required_column",
            "table": "sales_order",
            "column": "units_sold",
            "message": "NULL in NOT NULL column units_sold",
            "rows": 1,
            "examples": [{"sales_order_id": 1, "units_sold": None}],
        },
        {
            "check": "bad_text_date",
            "table": "sales_order",
            "column": "agreed_payment_date",
            "message": "agreed_payment_date is not a YYYY-MM-DD date",
            "rows": 1,
            "examples": [{"sales_order_id": 1, "agreed_payment_date": "2024-02-30"}],
        },
    ]


def test_an_unreadable_file_is_rejected_naming_the_file():
    tables = good_batch()
    manifest, files = manifest_for(tables)
    entry = next(f for f in manifest.files if f.table == "design")
    files[entry] = pa.ArrowInvalid("Parquet magic bytes not found in footer")
    with pytest.raises(BatchRejected) as caught:
        quality.gate(manifest, files)
    problems = caught.value.reason["problems"]
    assert problems[0] == {
        "check": "unreadable_file",
        "table": "design",
        "key": "raw/design/B/part-0000.parquet",
        "message": "cannot read the file: ArrowInvalid: Parquet magic bytes not found in footer",
        "rows": 1,
    }
    assert caught.value.reason["rejected_rows"] == sum(t.num_rows for t in tables.values())
