"""The source model declares the domain rules the rest derives from: roles, text dates,
accepted source types, embedded parents, the columns the star carries and the star table of
each source table, and refuses a declaration that cannot hold."""

from __future__ import annotations

import pytest

from totes.extract import keysets
from totes.source.model import (
    DELETED_KEYS,
    DELETED_KEYS_SCHEMA,
    FACT_SOURCE,
    SQL_TYPES,
    TABLES,
    TABLES_BY_NAME,
    Column,
    ForeignKey,
    Table,
)
from totes.star.model import STAR_TABLES_BY_NAME


def test_every_column_type_has_a_lake_type_and_accepted_source_types():
    for table in TABLES:
        for column in table.columns:
            assert column.sql_type in SQL_TYPES, (table.name, column.name)
            assert column.accepted_types, (table.name, column.name)


def test_the_model_declares_the_fact_sources_text_dates_and_embedded_parents():
    assert [t.name for t in TABLES if t.role == FACT_SOURCE] == [
        "sales_order",
        "purchase_order",
        "payment",
    ]
    assert {t.name: t.text_date_columns for t in TABLES if t.text_date_columns} == {
        "sales_order": ("agreed_delivery_date", "agreed_payment_date"),
        "purchase_order": ("agreed_delivery_date", "agreed_payment_date"),
        "payment": ("payment_date",),
    }
    assert TABLES_BY_NAME["staff"].embedded_parent == ForeignKey("department_id", "department")
    assert TABLES_BY_NAME["counterparty"].embedded_parent == ForeignKey(
        "legal_address_id", "address"
    )


def test_a_table_cannot_embed_a_parent_it_does_not_reference_or_take_an_unknown_role():
    columns = (Column("thing_id", "serial"), Column("other_id", "integer"))
    with pytest.raises(ValueError, match="embeds other_id, not a foreign key"):
        Table("thing", columns, embeds="other_id")
    with pytest.raises(ValueError, match="role must be one of"):
        Table("thing", columns, role="fact")


def test_the_model_declares_which_columns_the_star_carries_and_which_need_a_value():
    not_carried = {
        t.name: [c.name for c in t.columns if not c.carried] for t in TABLES if not t.is_fact_source
    }
    assert not_carried == {
        "address": ["created_at"],
        "counterparty": ["commercial_contact", "delivery_contact", "created_at"],
        "currency": ["created_at"],
        "department": ["manager", "created_at"],
        "design": ["created_at"],
        "staff": ["created_at"],
        "payment_type": ["created_at"],
        "transaction": ["created_at"],
    }
    facts = {
        t.name: [c.name for c in t.columns if not c.carried] for t in TABLES if t.is_fact_source
    }
    assert facts == {
        "sales_order": [],
        "purchase_order": [],
        "payment": ["company_ac_number", "counterparty_ac_number"],
    }
    # The star needs a value exactly where a carried column is NOT NULL in the model.
    for table in TABLES:
        assert [c.name for c in table.required_columns] == [
            c.name for c in table.columns if c.carried and c.not_null
        ]
        nullable = {f.name for f in table.checked_schema if f.nullable}
        assert nullable == {c.name for c in table.columns if not c.required}, table.name
    assert [c.name for c in TABLES_BY_NAME["department"].required_columns] == [
        "department_id",
        "department_name",
        "last_updated",
    ]


def test_every_table_with_a_star_table_of_its_own_names_it_and_its_kind_matches_the_role():
    assert {t.name: t.star_table for t in TABLES} == {
        "address": "dim_location",
        "counterparty": "dim_counterparty",
        "currency": "dim_currency",
        "department": None,  # lives on inside dim_staff
        "design": "dim_design",
        "staff": "dim_staff",
        "payment_type": "dim_payment_type",
        "sales_order": "fact_sales_order",
        "purchase_order": "fact_purchase_order",
        "transaction": "dim_transaction",
        "payment": "fact_payment",
    }
    for table in TABLES:
        if table.star_table is not None:
            star_table = STAR_TABLES_BY_NAME[table.star_table]
            assert star_table.kind == ("fact" if table.is_fact_source else "dimension")
            assert star_table.key == (table.key if table.name != "address" else "location_id")


def test_a_reference_the_star_does_not_carry_is_refused():
    columns = (Column("thing_id", "serial"), Column("other_id", "integer", carried=False))
    with pytest.raises(ValueError, match="reference other_id must be carried"):
        Table("thing", columns, (ForeignKey("other_id", "other"),))


def test_ingest_writes_the_raw_deletions_in_the_schema_the_model_declares():
    assert keysets.DELETED_KEYS == DELETED_KEYS == "deleted_keys"
    assert keysets.DELETED_SCHEMA == DELETED_KEYS_SCHEMA
