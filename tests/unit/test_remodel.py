"""The star remodelling on small hand-made batches: each warehouse table's rows compared whole."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal
from unittest import mock

import pyarrow as pa
import pytest
from factories import T0, address, full_batch, full_rows, raw, sales_order

from totes.source.model import DELETED_KEYS_SCHEMA, TABLES
from totes.star import model as star
from totes.star import remodel

T1 = datetime(2024, 5, 6, 9, 30, 0, 123000)
T2 = datetime(2024, 6, 1, 8, 0, 0, 1000)
EPOCH = datetime(1970, 1, 1)


def as_rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def test_dim_location_keeps_null_optional_address_fields():
    batch = {
        "address": raw(
            "address",
            address(2, address_line_2="Flat 3", district="Yorkshire"),
            address(1),
        )
    }
    result = remodel.dim_location(batch)
    assert result.schema == star.DIM_LOCATION.arrow_schema
    assert as_rows(result) == [
        {
            "location_id": 1,
            "address_line_1": "1 High Street",
            "address_line_2": None,
            "district": None,
            "city": "Leeds",
            "postal_code": "LS1 1AA",
            "country": "United Kingdom",
            "phone": "0113 000000",
            "source_version": T0,
        },
        {
            "location_id": 2,
            "address_line_1": "2 High Street",
            "address_line_2": "Flat 3",
            "district": "Yorkshire",
            "city": "Leeds",
            "postal_code": "LS1 1AA",
            "country": "United Kingdom",
            "phone": "0113 000000",
            "source_version": T0,
        },
    ]


def test_dim_counterparty_takes_the_changed_legal_address_and_its_newer_version():
    batch = {
        "counterparty": raw(
            "counterparty",
            {
                "counterparty_id": 7,
                "counterparty_legal_name": "Fahey and Sons",
                "legal_address_id": 3,
                "commercial_contact": "Ann",
                "delivery_contact": None,
            },
        ),
        "address": raw(
            "address",
            address(3),  # the old version, also in the batch
            address(3, address_line_1="9 New Road", city="York", last_updated=T1),
        ),
    }
    assert as_rows(remodel.dim_counterparty(batch)) == [
        {
            "counterparty_id": 7,
            "counterparty_legal_name": "Fahey and Sons",
            "counterparty_legal_address_line_1": "9 New Road",
            "counterparty_legal_address_line_2": None,
            "counterparty_legal_district": None,
            "counterparty_legal_city": "York",
            "counterparty_legal_postal_code": "LS1 1AA",
            "counterparty_legal_country": "United Kingdom",
            "counterparty_legal_phone_number": "0113 000000",
            "source_version": T1,
            "oldest_version": T0,  # the counterparty row's own stamp
        }
    ]


def test_the_joined_dimensions_carry_the_older_stamp_as_a_tie_breaker_the_others_do_not():
    lineage = {t.name: t.lineage for t in star.DIMENSIONS if len(t.lineage) > 1}
    assert lineage == {
        "dim_staff": ("source_version", "oldest_version"),
        "dim_counterparty": ("source_version", "oldest_version"),
    }
    # Two snapshots of one counterparty that tie on the newest stamp (the counterparty's, T2)
    # but hold different addresses get different lineage; the later snapshot's is greater.
    counterparty = raw(
        "counterparty",
        {
            "counterparty_id": 7,
            "counterparty_legal_name": "Fahey and Sons",
            "legal_address_id": 3,
            "commercial_contact": "Ann",
            "delivery_contact": None,
            "last_updated": T2,
        },
    )
    before = {"counterparty": counterparty, "address": raw("address", address(3))}
    after = {
        "counterparty": counterparty,
        "address": raw("address", address(3, city="York", last_updated=T1)),
    }
    versions = [
        remodel.dim_counterparty(b).select(["source_version", "oldest_version"]).to_pylist()
        for b in (before, after)
    ]
    assert versions == [
        [{"source_version": T2, "oldest_version": T0}],
        [{"source_version": T2, "oldest_version": T1}],
    ]


def test_dim_staff_follows_a_department_that_moved():
    batch = {
        "staff": raw(
            "staff",
            {
                "staff_id": 2,
                "first_name": "Jeremie",
                "last_name": "Franey",
                "department_id": 1,
                "email_address": "jeremie.franey@terrifictotes.com",
                "last_updated": T1,
            },
            {
                "staff_id": 1,
                "first_name": "Deron",
                "last_name": "Beier",
                "department_id": 2,
                "email_address": "deron.beier@terrifictotes.com",
            },
        ),
        "department": raw(
            "department",
            {"department_id": 1, "department_name": "Sales", "location": "Manchester"},
            {
                "department_id": 1,
                "department_name": "Sales",
                "location": "Leeds",
                "manager": "Richard Roma",
                "last_updated": T2,
            },
            {"department_id": 2, "department_name": "Purchasing", "location": None},
        ),
    }
    assert as_rows(remodel.dim_staff(batch)) == [
        {
            "staff_id": 1,
            "first_name": "Deron",
            "last_name": "Beier",
            "department_name": "Purchasing",
            "location": None,
            "email_address": "deron.beier@terrifictotes.com",
            "source_version": T0,
            "oldest_version": T0,
        },
        {
            "staff_id": 2,
            "first_name": "Jeremie",
            "last_name": "Franey",
            "department_name": "Sales",
            "location": "Leeds",
            "email_address": "jeremie.franey@terrifictotes.com",
            "source_version": T2,  # the department's move is newer than the staff row
            "oldest_version": T1,  # the staff row's own stamp
        },
    ]


def test_dim_currency_names_from_iso_4217_and_null_with_a_warning_for_an_unknown_code():
    batch = {
        "currency": raw(
            "currency",
            {"currency_id": 3, "currency_code": "EUR"},
            {"currency_id": 1, "currency_code": "GBP"},
            {"currency_id": 2, "currency_code": "USD"},
            {"currency_id": 4, "currency_code": "XYZ"},
        )
    }
    with mock.patch.object(remodel.logger, "warning") as warning:
        result = remodel.dim_currency(batch)
    assert [
        (r["currency_id"], r["currency_code"], r["currency_name"]) for r in as_rows(result)
    ] == [
        (1, "GBP", "Pound Sterling"),
        (2, "USD", "US Dollar"),
        (3, "EUR", "Euro"),
        (4, "XYZ", None),
    ]
    assert result.schema == star.DIM_CURRENCY.arrow_schema
    warning.assert_called_once()
    extra = warning.call_args.kwargs["extra"]
    assert extra["currency_ids"] == [4]  # by key: the code itself is a row value
    assert "XYZ" not in repr(warning.call_args)


def test_dim_design_transaction_and_payment_type_copy_their_source_rows():
    batch = {
        "design": raw(
            "design",
            {
                "design_id": 5,
                "design_name": "Wooden",
                "file_location": "/usr",
                "file_name": "wooden-20220717-npgz.json",
            },
        ),
        "transaction": raw(
            "transaction",
            {
                "transaction_id": 2,
                "transaction_type": "PURCHASE",
                "sales_order_id": None,
                "purchase_order_id": 1,
            },
            {
                "transaction_id": 1,
                "transaction_type": "SALE",
                "sales_order_id": 1,
                "purchase_order_id": None,
            },
        ),
        "payment_type": raw(
            "payment_type", {"payment_type_id": 1, "payment_type_name": "SALES_RECEIPT"}
        ),
    }
    assert as_rows(remodel.dim_design(batch)) == [
        {
            "design_id": 5,
            "design_name": "Wooden",
            "file_location": "/usr",
            "file_name": "wooden-20220717-npgz.json",
            "source_version": T0,
        }
    ]
    assert as_rows(remodel.dim_transaction(batch)) == [
        {
            "transaction_id": 1,
            "transaction_type": "SALE",
            "sales_order_id": 1,
            "purchase_order_id": None,
            "source_version": T0,
        },
        {
            "transaction_id": 2,
            "transaction_type": "PURCHASE",
            "sales_order_id": None,
            "purchase_order_id": 1,
            "source_version": T0,
        },
    ]
    assert as_rows(remodel.dim_payment_type(batch)) == [
        {"payment_type_id": 1, "payment_type_name": "SALES_RECEIPT", "source_version": T0}
    ]


def test_fact_sales_order_splits_timestamps_keeping_milliseconds_and_parses_text_dates():
    created = datetime(2024, 5, 6, 14, 20, 52, 186000)
    batch = {
        "sales_order": raw(
            "sales_order",
            sales_order(11, staff_id=4, created_at=created, last_updated=T2),
        )
    }
    assert as_rows(remodel.fact_sales_order(batch)) == [
        {
            "sales_order_id": 11,
            "created_date": date(2024, 5, 6),
            "created_time": time(14, 20, 52, 186000),
            "last_updated_date": date(2024, 6, 1),
            "last_updated_time": time(8, 0, 0, 1000),
            "sales_staff_id": 4,
            "counterparty_id": 1,
            "units_sold": 1000,
            "unit_price": Decimal("2.50"),
            "currency_id": 1,
            "design_id": 1,
            "agreed_payment_date": date(2024, 5, 12),
            "agreed_delivery_date": date(2024, 5, 10),
            "agreed_delivery_location_id": 1,
            "source_version": T2,
        }
    ]


def test_facts_keep_every_version_once_and_dimensions_only_the_newest():
    batch = {
        "sales_order": raw(
            "sales_order",
            sales_order(1, units_sold=2000, last_updated=T1),
            sales_order(1),
            sales_order(1),  # the same version delivered twice (an overlap re-read)
        ),
        "design": raw(
            "design",
            {
                "design_id": 1,
                "design_name": "New",
                "file_location": "/",
                "file_name": "n.json",
                "last_updated": T1,
            },
            {"design_id": 1, "design_name": "Old", "file_location": "/", "file_name": "o.json"},
        ),
    }
    facts = remodel.fact_sales_order(batch)
    assert [(r["units_sold"], r["source_version"]) for r in as_rows(facts)] == [
        (1000, T0),
        (2000, T1),
    ]
    assert [r["design_name"] for r in as_rows(remodel.dim_design(batch))] == ["New"]


def test_fact_purchase_order_rows():
    batch = {
        "purchase_order": raw(
            "purchase_order",
            {
                "purchase_order_id": 3,
                "staff_id": 2,
                "counterparty_id": 5,
                "item_code": "ZDOI5EA",
                "item_quantity": 371,
                "item_unit_price": Decimal("361.39"),
                "currency_id": 1,
                "agreed_delivery_date": "2022-11-09",
                "agreed_payment_date": "2022-11-07",
                "agreed_delivery_location_id": 6,
            },
        )
    }
    assert as_rows(remodel.fact_purchase_order(batch)) == [
        {
            "purchase_order_id": 3,
            "created_date": date(2022, 11, 3),
            "created_time": time(14, 20, 49, 962000),
            "last_updated_date": date(2022, 11, 3),
            "last_updated_time": time(14, 20, 49, 962000),
            "staff_id": 2,
            "counterparty_id": 5,
            "item_code": "ZDOI5EA",
            "item_quantity": 371,
            "item_unit_price": Decimal("361.39"),
            "currency_id": 1,
            "agreed_delivery_date": date(2022, 11, 9),
            "agreed_payment_date": date(2022, 11, 7),
            "agreed_delivery_location_id": 6,
            "source_version": T0,
        }
    ]


def test_fact_payment_drops_account_numbers_and_keeps_the_paid_flag():
    batch = {
        "payment": raw(
            "payment",
            {
                "payment_id": 8,
                "transaction_id": 8,
                "counterparty_id": 2,
                "payment_amount": Decimal("1234.56"),
                "currency_id": 2,
                "payment_type_id": 3,
                "paid": True,
                "payment_date": "2022-11-04",
                "company_ac_number": 67305075,
                "counterparty_ac_number": 31622269,
                "last_updated": T1,
            },
        )
    }
    assert as_rows(remodel.fact_payment(batch)) == [
        {
            "payment_id": 8,
            "created_date": date(2022, 11, 3),
            "created_time": time(14, 20, 49, 962000),
            "last_updated_date": date(2024, 5, 6),
            "last_updated_time": time(9, 30, 0, 123000),
            "transaction_id": 8,
            "counterparty_id": 2,
            "payment_amount": Decimal("1234.56"),
            "currency_id": 2,
            "payment_type_id": 3,
            "paid": True,
            "payment_date": date(2022, 11, 4),
            "source_version": T1,
        }
    ]


def test_dim_date_covers_every_fact_date_with_iso_weekdays_english_names_and_quarters():
    # created 2024-02-11 (a Sunday, Q1); agreed dates in Q2, Q3 and Q4; updated 2024-05-06.
    batch = {
        "sales_order": raw(
            "sales_order",
            sales_order(
                1,
                created_at=datetime(2024, 2, 11, 10, 0),
                last_updated=datetime(2024, 5, 6, 10, 0),
                agreed_delivery_date="2024-08-15",
                agreed_payment_date="2024-12-31",
            ),
        )
    }
    result = remodel.dim_date({"fact_sales_order": remodel.fact_sales_order(batch)})
    assert result.schema == star.DIM_DATE.arrow_schema
    assert as_rows(result) == [
        {"date_id": date(2024, 2, 11), "year": 2024, "month": 2, "day": 11, "day_of_week": 7,
         "day_name": "Sunday", "month_name": "February", "quarter": 1, "source_version": EPOCH},
        {"date_id": date(2024, 5, 6), "year": 2024, "month": 5, "day": 6, "day_of_week": 1,
         "day_name": "Monday", "month_name": "May", "quarter": 2, "source_version": EPOCH},
        {"date_id": date(2024, 8, 15), "year": 2024, "month": 8, "day": 15, "day_of_week": 4,
         "day_name": "Thursday", "month_name": "August", "quarter": 3, "source_version": EPOCH},
        {"date_id": date(2024, 12, 31), "year": 2024, "month": 12, "day": 31, "day_of_week": 2,
         "day_name": "Tuesday", "month_name": "December", "quarter": 4, "source_version": EPOCH},
    ]  # fmt: skip


def test_build_star_writes_only_tables_with_rows_each_in_its_exact_schema():
    batch = {
        "sales_order": raw("sales_order", sales_order(1)),
        "design": raw(
            "design",
            {"design_id": 1, "design_name": "A", "file_location": "/", "file_name": "a.json"},
        ),
        "currency": raw("currency", {"currency_id": 1, "currency_code": "GBP"}),
    }
    result = remodel.build_star(batch)
    assert list(result) == ["dim_date", "dim_currency", "dim_design", "fact_sales_order"]
    for name, table in result.items():
        assert table.schema == star.STAR_TABLES_BY_NAME[name].arrow_schema, name


def test_build_star_of_an_empty_batch_is_empty():
    assert remodel.build_star({}) == {}


def test_extra_source_columns_are_ignored_by_the_remodelling():
    table = raw("currency", {"currency_id": 1, "currency_code": "GBP"})
    wider = table.append_column("symbol", pa.array(["£"]))
    assert remodel.dim_currency({"currency": wider}).equals(
        remodel.dim_currency({"currency": table})
    )


@pytest.mark.parametrize("table", star.STAR_TABLES, ids=lambda t: t.name)
def test_every_builder_returns_its_exact_schema_even_when_empty(table):
    builders = remodel.DIMENSION_BUILDERS | remodel.FACT_BUILDERS
    result = remodel.dim_date({}) if table.name == "dim_date" else builders[table.name]({})
    assert result.schema == table.arrow_schema
    assert result.num_rows == 0


def _other(value, arrow_type: pa.DataType):
    """A different value of the type (a reference then points at no row of the batch)."""
    if value is None:
        return pa.scalar(5).cast(arrow_type).as_py()
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | Decimal):
        return value + 1
    if isinstance(value, datetime):
        return value + timedelta(days=1, milliseconds=1)
    if value in ("SALE", "SALES_RECEIPT"):
        return {"SALE": "PURCHASE", "SALES_RECEIPT": "SALES_REFUND"}[value]
    if isinstance(value, str) and len(value) == 10 and value[4] == "-":
        return "2025-01-31"
    return "other " + str(value)


@pytest.mark.parametrize("model", TABLES, ids=lambda t: t.name)
def test_the_model_declares_exactly_the_columns_the_star_is_built_from(model):
    """A column the model says the star does not carry changes nothing when it is NULL (so
    the gates never set a row aside for it); every carried column changes the star."""
    rows = full_rows()
    built = remodel.build_star(full_batch())
    for column in model.columns:
        row = rows[model.name][0]
        if column.carried:
            changed = {**row, column.name: _other(row.get(column.name, T0), column.arrow_type)}
            after = remodel.build_star(full_batch(**{model.name: [changed]}))
            assert after != built, f"{model.name}.{column.name} is carried but unused"
        else:
            emptied = {**row, column.name: None}
            batch = full_batch(**{model.name: [emptied]})
            batch[model.name] = batch[model.name].cast(model.checked_schema)
            assert remodel.build_star(batch) == built, f"{model.name}.{column.name} is used"


def test_deleted_keys_land_in_the_star_table_of_their_source_table_once_each():
    deleted = pa.table(
        {
            "table": ["payment", "address", "department", "address", "design", "sales_order"],
            "key": pa.array([3, 1, 2, 1, 9, 7], pa.int32()),
        },
        schema=DELETED_KEYS_SCHEMA,
    )
    result = remodel.deleted_keys(deleted)
    assert result.schema == star.DELETED_KEYS_SCHEMA
    assert result.to_pylist() == [
        {"star_table": "dim_design", "key": 9},
        {"star_table": "dim_location", "key": 1},
        {"star_table": "fact_payment", "key": 3},
        {"star_table": "fact_sales_order", "key": 7},
    ]  # department: no star table of its own (its staff are not deleted with it)
    assert remodel.deleted_keys(DELETED_KEYS_SCHEMA.empty_table()).num_rows == 0


def test_deleted_keys_of_a_table_the_model_does_not_know_are_counted_and_ignored():
    deleted = pa.table(
        {
            "table": ["invoice", "design", "invoice", None],
            "key": pa.array([1, 2, 3, 4], pa.int32()),
        },
        schema=DELETED_KEYS_SCHEMA,
    )
    with mock.patch.object(remodel.logger, "warning") as warning:
        result = remodel.deleted_keys(deleted)
    assert result.to_pylist() == [{"star_table": "dim_design", "key": 2}]
    # Counted, never named: the names are values of the file's rows (may be anything); a
    # NULL name is one of them.
    warning.assert_called_once_with(
        "data quality: deleted keys of unknown source tables ignored",
        extra={"unknown_tables": 2, "rows": 3},
    )
