"""The quality gates on hand-made batches. Damage to a whole file or table (unreadable, not
what the manifest says, a column missing or of another type) rejects the batch with a reason
naming the check, table, column and file. A row the star cannot represent is set aside alone
with its table, key, column, check, reason and value, and every other row passes; the
dimension rows that embed it go aside with it, and the dimension keys set aside are named for
load. (Before issue 12 a row problem rejected the whole batch; these tests say otherwise.)"""

from __future__ import annotations

import json
from datetime import datetime
from unittest import mock

import pyarrow as pa
import pytest
from factories import T0, address, full_batch, full_rows, payment, raw, sales_order, staff

from totes import quality
from totes.errors import BatchRejected
from totes.lake import Manifest, ManifestFile, schema_fingerprint
from totes.quality import RowProblem
from totes.source.model import (
    DELETED_KEYS,
    DELETED_KEYS_SCHEMA,
    TABLES,
    TABLES_BY_NAME,
    UNREPRESENTABLE,
)


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


def gated(tables: dict[str, pa.Table]) -> quality.Gated:
    manifest, files = manifest_for(tables)
    return quality.gate(manifest, files)


def rejection(tables: dict[str, pa.Table], **rows_override) -> dict:
    manifest, files = manifest_for(tables, **rows_override)
    with pytest.raises(BatchRejected) as caught:
        quality.gate(manifest, files)
    json.dumps(caught.value.reason)  # the reason is stored as JSON
    return caught.value.reason


def with_side(table: pa.Table, texts: dict[int, str]) -> pa.Table:
    """``table`` in the raw lake schema: typed columns plus ``_unrepresentable`` (row -> text)."""
    side = pa.array([texts.get(i) for i in range(table.num_rows)], pa.string())
    return table.append_column(pa.field(UNREPRESENTABLE, pa.string()), side)


def outcome(result: quality.Gated) -> dict:
    """The whole answer, tables as their keys."""
    return {
        "keys": {
            name: t[TABLES_BY_NAME[name].key].to_pylist() for name, t in result.source.items()
        },
        "problems": list(result.problems),
        "set_aside_rows": result.set_aside_rows,
        "set_aside_keys": result.set_aside_keys,
        "set_aside": result.set_aside,
    }


ALL_KEYS = {t.name: [1] for t in TABLES}


def clean(**keys: list[int]) -> dict:
    return {
        "keys": {**ALL_KEYS, **keys},
        "problems": [],
        "set_aside_rows": {},
        "set_aside_keys": {},
        "set_aside": {},
    }


# --- a good batch ------------------------------------------------------------------------


def test_a_good_batch_passes_whole_in_the_checked_schema_with_no_deletions():
    tables = full_batch()
    result = gated(tables)
    assert outcome(result) == clean()
    for name, table in result.source.items():
        assert table.schema == TABLES_BY_NAME[name].checked_schema
        assert table.equals(tables[name].cast(TABLES_BY_NAME[name].checked_schema)), name
    assert result.deleted.equals(DELETED_KEYS_SCHEMA.empty_table())


def test_files_of_one_table_are_concatenated_with_or_without_the_side_column():
    tables = full_batch(sales_order=[sales_order(1), sales_order(2)])
    manifest, files = manifest_for(tables)
    more = with_side(raw("sales_order", sales_order(3)), {})
    second = ManifestFile(
        "sales_order", "raw/sales_order/B/part-0001.parquet", 1, schema_fingerprint(more.schema)
    )
    manifest = Manifest("B", "raw", None, "hi", (*manifest.files, second))
    result = quality.gate(manifest, {**files, second: more})
    assert result.source["sales_order"]["sales_order_id"].to_pylist() == [1, 2, 3]


def test_unknown_extra_columns_are_reported_and_dropped_not_fatal():
    tables = full_batch()
    tables["currency"] = with_side(tables["currency"], {}).append_column("symbol", pa.array(["£"]))
    with mock.patch.object(quality.logger, "warning") as warning:
        result = gated(tables)
    assert result.source["currency"].column_names == TABLES_BY_NAME["currency"].column_names
    warning.assert_called_once_with(
        "data quality: unknown source columns ignored",
        extra={"table": "currency", "columns": ["symbol"]},
    )


def test_a_transaction_may_point_at_orders_outside_the_batch():
    tables = {
        "transaction": raw(
            "transaction",
            {"transaction_id": 1, "transaction_type": "SALE", "sales_order_id": 5},
        )
    }
    assert outcome(gated(tables)) == clean(**{"transaction": [1]}) | {"keys": {"transaction": [1]}}


def test_the_deletions_pass_as_they_are():
    deleted = pa.table(
        {"table": ["design", "payment"], "key": pa.array([4, 5], pa.int32())},
        schema=DELETED_KEYS_SCHEMA,
    )
    result = gated({**full_batch(), DELETED_KEYS: deleted})
    assert outcome(result) == clean()
    assert result.deleted.equals(deleted)


# --- damage to a whole file or table: the batch is rejected ----------------------------------


def test_a_manifest_whose_row_count_disagrees_is_rejected():
    reason = rejection(full_batch(), sales_order=3)
    assert reason == {
        "batch_id": "B",
        "problems": [
            {
                "check": "manifest_rows",
                "table": "sales_order",
                "key": "raw/sales_order/B/part-0000.parquet",
                "message": "file has 1 rows, manifest says 3",
                "rows": 1,
            }
        ],
        "rejected_rows": 13,
    }


def test_a_schema_fingerprint_that_disagrees_is_rejected():
    tables = full_batch()
    manifest, files = manifest_for(tables)
    wrong = ManifestFile("currency", "raw/currency/B/part-0000.parquet", 1, "0000")
    entries = tuple(wrong if f.table == "currency" else f for f in manifest.files)
    files = {wrong if f.table == "currency" else f: t for f, t in files.items()}
    with pytest.raises(BatchRejected) as caught:
        quality.gate(Manifest("B", "raw", None, "hi", entries), files)
    [problem] = caught.value.reason["problems"]
    assert (problem["check"], problem["table"]) == ("manifest_fingerprint", "currency")


def test_a_missing_column_is_rejected_naming_table_and_column():
    tables = full_batch()
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


def test_a_column_of_another_type_is_rejected_the_side_column_too():
    tables = full_batch()
    units = tables["sales_order"]["units_sold"].cast(pa.int64())
    tables["sales_order"] = tables["sales_order"].set_column(
        tables["sales_order"].schema.get_field_index("units_sold"), "units_sold", units
    )
    tables["design"] = tables["design"].append_column(UNREPRESENTABLE, pa.array([1]))
    assert [(p["table"], p["check"], p["message"]) for p in rejection(tables)["problems"]] == [
        ("design", "column_type", "column _unrepresentable is int64, expected string"),
        ("sales_order", "column_type", "column units_sold is int64, expected int32"),
    ]


def test_a_deletions_file_of_another_shape_is_rejected():
    deleted = pa.table({"table": ["design"], "key": pa.array([4], pa.int64())})
    [problem] = rejection({**full_batch(), DELETED_KEYS: deleted})["problems"]
    assert (problem["check"], problem["table"], problem["column"]) == (
        "column_type",
        DELETED_KEYS,
        "key",
    )


def test_an_unreadable_file_is_rejected_naming_the_file():
    tables = full_batch()
    manifest, files = manifest_for(tables)
    entry = next(f for f in manifest.files if f.table == "design")
    files[entry] = pa.ArrowInvalid("Parquet magic bytes not found in footer")
    with pytest.raises(BatchRejected) as caught:
        quality.gate(manifest, files)
    assert caught.value.reason["problems"] == [
        {
            "check": "unreadable_file",
            "table": "design",
            "key": "raw/design/B/part-0000.parquet",
            "message": "cannot read the file: ArrowInvalid: Parquet magic bytes not found"
            " in footer",
            "rows": 1,
        }
    ]
    assert caught.value.reason["rejected_rows"] == sum(t.num_rows for t in tables.values())


# --- a row the star cannot represent: set aside alone ----------------------------------------


def test_a_null_where_the_star_needs_a_value_sets_that_fact_row_aside_alone():
    orders = [sales_order(1), sales_order(2, units_sold=None), sales_order(3)]
    assert outcome(gated(full_batch(sales_order=orders))) == {
        **clean(sales_order=[1, 3]),
        "problems": [
            RowProblem(
                "sales_order",
                2,
                "units_sold",
                "null_in_required_column",
                "units_sold is NULL where the star needs a value",
                None,
            )
        ],
        "set_aside_rows": {"sales_order": 1},
        "set_aside_keys": {"sales_order": [2]},
        "set_aside": {},  # facts are not waited for
    }


def test_a_null_in_a_column_the_star_does_not_carry_is_no_problem():
    tables = full_batch(
        payment=[payment(1, company_ac_number=None, counterparty_ac_number=None)],
        department=[{**full_rows()["department"][0], "manager": None}],
    )
    assert outcome(gated(tables)) == clean()


def test_a_value_the_lake_could_not_hold_in_a_carried_column_sets_the_row_aside_with_its_text():
    orders = raw("sales_order", sales_order(1, created_at=None), sales_order(2))
    orders = with_side(orders, {0: json.dumps({"created_at": "infinity"})})
    assert outcome(gated(full_batch() | {"sales_order": orders})) == {
        **clean(sales_order=[2]),
        "problems": [
            RowProblem(
                "sales_order",
                1,
                "created_at",
                "unrepresentable_value",
                "created_at holds a value the lake's timestamp[ms] cannot hold",
                "infinity",
            )
        ],
        "set_aside_rows": {"sales_order": 1},
        "set_aside_keys": {"sales_order": [1]},
        "set_aside": {},
    }


def test_an_unrepresentable_created_at_of_a_dimension_is_not_carried_so_the_row_flows():
    designs = with_side(
        raw("design", {**full_batch()["design"].to_pylist()[0], "created_at": None}),
        {0: json.dumps({"created_at": "infinity"})},
    )
    result = gated(full_batch() | {"design": designs})
    assert outcome(result) == clean()
    assert result.source["design"]["created_at"].to_pylist() == [None]


def test_a_dimension_row_past_year_9999_is_set_aside_and_the_facts_pointing_at_it_flow():
    design = full_batch()["design"].to_pylist()[0]
    designs = with_side(
        raw("design", {**design, "last_updated": None}, {**design, "design_id": 2}),
        {0: json.dumps({"last_updated": "10000-01-01 00:00:00"})},
    )
    assert outcome(gated(full_batch() | {"design": designs})) == {
        **clean(design=[2]),
        "problems": [
            RowProblem(
                "design",
                1,
                "last_updated",
                "unrepresentable_value",
                "last_updated holds a value the lake's timestamp[ms] cannot hold",
                "10000-01-01 00:00:00",
            )
        ],
        "set_aside_rows": {"design": 1},
        "set_aside_keys": {"design": [1]},
        "set_aside": {"dim_design": [1]},  # sales order 1 points at it: load parks it
    }


def test_a_text_date_that_is_not_a_real_date_sets_that_row_aside_with_its_text():
    orders = [
        sales_order(1),
        sales_order(2, agreed_payment_date="2024-02-30"),
        sales_order(3, agreed_delivery_date="not-a-date", agreed_payment_date="24-5-1"),
        sales_order(4, agreed_delivery_date="0000-01-01"),  # Arrow parses it; PostgreSQL cannot
    ]
    assert outcome(gated(full_batch(sales_order=orders))) == {
        **clean(sales_order=[1]),
        "problems": [
            RowProblem(
                "sales_order",
                2,
                "agreed_payment_date",
                "bad_text_date",
                "agreed_payment_date is not a YYYY-MM-DD date",
                "2024-02-30",
            ),
            RowProblem(
                "sales_order",
                3,
                "agreed_delivery_date",
                "bad_text_date",
                "agreed_delivery_date is not a YYYY-MM-DD date",
                "not-a-date",
            ),
            RowProblem(
                "sales_order",
                3,
                "agreed_payment_date",
                "bad_text_date",
                "agreed_payment_date is not a YYYY-MM-DD date",
                "24-5-1",
            ),
            RowProblem(
                "sales_order",
                4,
                "agreed_delivery_date",
                "bad_text_date",
                "agreed_delivery_date is not a YYYY-MM-DD date",
                "0000-01-01",
            ),
        ],
        "set_aside_rows": {"sales_order": 3},  # rows, not problems
        "set_aside_keys": {"sales_order": [2, 3, 4]},
        "set_aside": {},
    }


def test_a_side_column_that_is_not_a_json_object_sets_the_row_aside():
    orders = with_side(raw("sales_order", sales_order(1), sales_order(2)), {1: "[1, 2"})
    [problem] = gated(full_batch() | {"sales_order": orders}).problems
    assert problem == RowProblem(
        "sales_order",
        2,
        UNREPRESENTABLE,
        "unreadable_side_column",
        "_unrepresentable is not a JSON object of column texts",
        "[1, 2",
    )


def test_an_address_set_aside_takes_the_counterparty_embedding_it_along_the_order_flows():
    addresses = [address(1, city=None, postal_code=None), address(2)]
    null = "is NULL where the star needs a value"
    assert outcome(gated(full_batch(address=addresses))) == {
        **clean(address=[2], counterparty=[]),
        "problems": [
            RowProblem("address", 1, "city", "null_in_required_column", f"city {null}", None),
            RowProblem(
                "address", 1, "postal_code", "null_in_required_column", f"postal_code {null}", None
            ),
            RowProblem(
                "counterparty",
                1,
                "legal_address_id",
                "parent_set_aside",
                "the address row it embeds (legal_address_id) was set aside",
                "1",
            ),
        ],
        "set_aside_rows": {"address": 1, "counterparty": 1},
        "set_aside_keys": {"address": [1], "counterparty": [1]},
        "set_aside": {"dim_location": [1], "dim_counterparty": [1]},
    }


def test_a_department_set_aside_takes_its_staff_along_and_only_dim_staff_is_named():
    result = gated(
        full_batch(
            department=[{"department_id": 1, "department_name": None}],
            staff=[staff(1), staff(2, department_id=2)],
        )
    )
    assert outcome(result) == {
        **clean(department=[], staff=[]),
        "problems": [
            RowProblem(
                "department",
                1,
                "department_name",
                "null_in_required_column",
                "department_name is NULL where the star needs a value",
                None,
            ),
            RowProblem(
                "staff",
                1,
                "department_id",
                "parent_set_aside",
                "the department row it embeds (department_id) was set aside",
                "1",
            ),
            RowProblem(
                "staff",
                2,
                "department_id",
                "dangling_reference",
                "department_id points at a department row not in the batch",
                "2",
            ),
        ],
        "set_aside_rows": {"department": 1, "staff": 2},
        "set_aside_keys": {"department": [1], "staff": [1, 2]},
        "set_aside": {"dim_staff": [1, 2]},
    }


def test_a_dangling_reference_sets_that_fact_row_aside_not_the_batch():
    orders = [sales_order(1), sales_order(2, design_id=99)]
    assert outcome(gated(full_batch(sales_order=orders))) == {
        **clean(),
        "problems": [
            RowProblem(
                "sales_order",
                2,
                "design_id",
                "dangling_reference",
                "design_id points at a design row not in the batch",
                "99",
            )
        ],
        "set_aside_rows": {"sales_order": 1},
        "set_aside_keys": {"sales_order": [2]},
        "set_aside": {},
    }


def test_a_dimension_key_goes_aside_with_every_version_of_it_in_the_batch():
    later = datetime(2024, 1, 1)
    addresses = raw("address", address(1), address(1, last_updated=later, phone=None), address(2))
    result = gated({"address": addresses})
    assert outcome(result) == {
        "keys": {"address": [2]},
        "problems": [
            RowProblem(
                "address",
                1,
                "address_id",
                "key_set_aside",
                "another version of this key in the batch was set aside",
                None,
            ),
            RowProblem(
                "address",
                1,
                "phone",
                "null_in_required_column",
                "phone is NULL where the star needs a value",
                None,
            ),
        ],
        "set_aside_rows": {"address": 2},
        "set_aside_keys": {"address": [1]},
        "set_aside": {"dim_location": [1]},
    }


def test_only_the_bad_version_of_a_fact_goes_aside():
    orders = [sales_order(1), sales_order(1, last_updated=datetime(2024, 1, 1), units_sold=None)]
    result = gated(full_batch(sales_order=orders))
    assert result.source["sales_order"]["last_updated"].to_pylist() == [T0]
    assert result.set_aside_rows == {"sales_order": 1}
