"""The source model declares the domain rules the rest derives from: roles, text dates,
accepted source types and embedded parents, and refuses a declaration that cannot hold."""

from __future__ import annotations

import pytest

from totes.source.model import (
    FACT_SOURCE,
    SQL_TYPES,
    TABLES,
    TABLES_BY_NAME,
    Column,
    ForeignKey,
    Table,
)


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
