"""The created source schema, read back through information_schema / pg_catalog, is exactly
the one ``totesys-source.md`` describes. The expectation is written out from the spec page
here, independently of ``totes.source.model``, so a slip in the model shows up."""

from __future__ import annotations

import pytest

from totes_tools.source.ddl import create_schema

TS = "timestamp without time zone"
STAMPS = [("created_at", TS, False), ("last_updated", TS, False)]


def _t(key, *cols):
    return [(key, "integer", False), *cols, *STAMPS]


def nn(name, typ="text"):
    return (name, typ, False)


def null(name, typ="text"):
    return (name, typ, True)


# table -> [(column, data_type, nullable)] in column order, from the spec's table.
SPEC_COLUMNS = {
    "address": _t(
        "address_id",
        nn("address_line_1"),
        null("address_line_2"),
        null("district"),
        nn("city"),
        nn("postal_code"),
        nn("country"),
        nn("phone"),
    ),
    "counterparty": _t(
        "counterparty_id",
        nn("counterparty_legal_name"),
        nn("legal_address_id", "integer"),
        null("commercial_contact"),
        null("delivery_contact"),
    ),
    "currency": _t("currency_id", nn("currency_code", "character varying")),
    "department": _t("department_id", nn("department_name"), null("location"), null("manager")),
    "design": _t("design_id", nn("design_name"), nn("file_location"), nn("file_name")),
    "staff": _t(
        "staff_id",
        nn("first_name"),
        nn("last_name"),
        nn("department_id", "integer"),
        nn("email_address"),
    ),
    "payment_type": _t("payment_type_id", nn("payment_type_name", "USER-DEFINED")),
    "sales_order": _t(
        "sales_order_id",
        nn("design_id", "integer"),
        nn("staff_id", "integer"),
        nn("counterparty_id", "integer"),
        nn("units_sold", "integer"),
        nn("unit_price", "numeric"),
        nn("currency_id", "integer"),
        nn("agreed_delivery_date"),
        nn("agreed_payment_date"),
        nn("agreed_delivery_location_id", "integer"),
    ),
    "purchase_order": _t(
        "purchase_order_id",
        nn("staff_id", "integer"),
        nn("counterparty_id", "integer"),
        nn("item_code"),
        nn("item_quantity", "integer"),
        nn("item_unit_price", "numeric"),
        nn("currency_id", "integer"),
        nn("agreed_delivery_date"),
        nn("agreed_payment_date"),
        nn("agreed_delivery_location_id", "integer"),
    ),
    "transaction": _t(
        "transaction_id",
        nn("transaction_type", "USER-DEFINED"),
        null("sales_order_id", "integer"),
        null("purchase_order_id", "integer"),
    ),
    "payment": _t(
        "payment_id",
        nn("transaction_id", "integer"),
        nn("counterparty_id", "integer"),
        nn("payment_amount", "numeric"),
        nn("currency_id", "integer"),
        nn("payment_type_id", "integer"),
        nn("paid", "boolean"),
        nn("payment_date"),
        nn("company_ac_number", "integer"),
        nn("counterparty_ac_number", "integer"),
    ),
}

R, C, SN = "RESTRICT", "CASCADE", "SET NULL"
# (table, column) -> (referenced table, referenced column, on update, on delete)
SPEC_FOREIGN_KEYS = {
    ("counterparty", "legal_address_id"): ("address", "address_id", C, R),
    ("staff", "department_id"): ("department", "department_id", C, R),
    ("sales_order", "design_id"): ("design", "design_id", C, R),
    ("sales_order", "staff_id"): ("staff", "staff_id", C, R),
    ("sales_order", "counterparty_id"): ("counterparty", "counterparty_id", C, R),
    ("sales_order", "currency_id"): ("currency", "currency_id", C, R),
    ("sales_order", "agreed_delivery_location_id"): ("address", "address_id", C, R),
    ("purchase_order", "staff_id"): ("staff", "staff_id", C, R),
    ("purchase_order", "counterparty_id"): ("counterparty", "counterparty_id", C, R),
    ("purchase_order", "currency_id"): ("currency", "currency_id", C, R),
    ("purchase_order", "agreed_delivery_location_id"): ("address", "address_id", C, R),
    ("transaction", "sales_order_id"): ("sales_order", "sales_order_id", C, SN),
    ("transaction", "purchase_order_id"): ("purchase_order", "purchase_order_id", C, SN),
    ("payment", "transaction_id"): ("transaction", "transaction_id", C, R),
    ("payment", "counterparty_id"): ("counterparty", "counterparty_id", C, R),
    ("payment", "currency_id"): ("currency", "currency_id", C, R),
    ("payment", "payment_type_id"): ("payment_type", "payment_type_id", C, R),
}


@pytest.fixture
def schema_con(source_db, pg_connect):
    con = pg_connect(source_db)
    create_schema(con)
    return con


def test_every_table_has_the_spec_columns_types_and_nullability(schema_con):
    rows = schema_con.run(
        "SELECT table_name, column_name, data_type, is_nullable = 'YES' "
        "FROM information_schema.columns WHERE table_schema = 'public' "
        "ORDER BY table_name, ordinal_position"
    )
    found: dict[str, list] = {}
    for table, column, data_type, nullable in rows:
        found.setdefault(table, []).append((column, data_type, nullable))
    assert found == SPEC_COLUMNS


def test_precise_types_money_stamps_varchar_and_enum_names(schema_con):
    rows = schema_con.run(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 "
        "AND format_type(a.atttypid, a.atttypmod) NOT IN ('integer', 'text', 'boolean')"
    )
    precise = {(t, c): ty for t, c, ty in rows}
    expected = {(t, c): "timestamp(3) without time zone" for t in SPEC_COLUMNS for c, *_ in STAMPS}
    expected |= {
        ("currency", "currency_code"): "character varying(3)",
        ("payment_type", "payment_type_name"): '"PaymentTypeName"',
        ("transaction", "transaction_type"): '"TransactionType"',
        ("sales_order", "unit_price"): "numeric(10,2)",
        ("purchase_order", "item_unit_price"): "numeric(10,2)",
        ("payment", "payment_amount"): "numeric(10,2)",
    }
    assert precise == expected


def test_keys_are_serial_and_created_at_defaults_to_current_timestamp(schema_con):
    rows = schema_con.run(
        "SELECT table_name, column_name, column_default FROM information_schema.columns "
        "WHERE table_schema = 'public' AND column_default IS NOT NULL"
    )
    defaults = {(t, c): d for t, c, d in rows}
    expected = {(t, f"{t}_id"): f"nextval('{t}_{t}_id_seq'::regclass)" for t in SPEC_COLUMNS}
    expected |= {(t, "created_at"): "CURRENT_TIMESTAMP" for t in SPEC_COLUMNS}
    assert defaults == expected


def test_primary_and_unique_keys_match_the_spec(schema_con):
    rows = schema_con.run(
        "SELECT tc.table_name, tc.constraint_type, kcu.column_name "
        "FROM information_schema.table_constraints tc "
        "JOIN information_schema.key_column_usage kcu "
        "  ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema "
        "WHERE tc.table_schema = 'public' AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE')"
    )
    expected = {(t, "PRIMARY KEY", f"{t}_id") for t in SPEC_COLUMNS} | {
        ("transaction", "UNIQUE", "sales_order_id"),
        ("transaction", "UNIQUE", "purchase_order_id"),
        ("payment", "UNIQUE", "transaction_id"),
    }
    assert {tuple(r) for r in rows} == expected
    assert len(rows) == len(expected)  # single-column keys only


def test_foreign_keys_and_their_update_delete_rules_match_the_spec(schema_con):
    rows = schema_con.run(
        "SELECT src.relname, sa.attname, dst.relname, da.attname, "
        "  con.confupdtype, con.confdeltype "
        "FROM pg_constraint con "
        "JOIN pg_class src ON src.oid = con.conrelid JOIN pg_class dst ON dst.oid = con.confrelid "
        "JOIN pg_attribute sa ON sa.attrelid = con.conrelid AND sa.attnum = con.conkey[1] "
        "JOIN pg_attribute da ON da.attrelid = con.confrelid AND da.attnum = con.confkey[1] "
        "WHERE con.contype = 'f' AND array_length(con.conkey, 1) = 1"
    )
    actions = {"a": "NO ACTION", "r": R, "c": C, "n": SN, "d": "SET DEFAULT"}
    found = {(t, c): (rt, rc, actions[u], actions[d]) for t, c, rt, rc, u, d in rows}
    assert found == SPEC_FOREIGN_KEYS


def test_enum_types_have_the_spec_labels_in_order(schema_con):
    rows = schema_con.run(
        "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) "
        "FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname"
    )
    assert {name: list(labels) for name, labels in rows} == {
        "PaymentTypeName": ["SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND"],
        "TransactionType": ["SALE", "PURCHASE"],
    }
