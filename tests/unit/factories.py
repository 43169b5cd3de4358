"""Rows of the source tables for the pure tests, written once: a table in the raw lake schema
from a few dicts, and complete rows of the tables the tests build most (defaults overridable
per keyword), so each test spells out only what it is about."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pyarrow as pa

from totes.source.model import TABLES_BY_NAME

T0 = datetime(2022, 11, 3, 14, 20, 49, 962000)  # a stamp of the real snapshot


def raw(name: str, *rows: dict) -> pa.Table:
    """Rows of a source table in the raw lake schema; created_at/last_updated default to T0."""
    schema = TABLES_BY_NAME[name].arrow_schema
    full = [{"created_at": T0, "last_updated": T0, **r} for r in rows]
    return pa.Table.from_pylist(full, schema=schema)


def address(address_id: int, **over) -> dict:
    return {
        "address_id": address_id,
        "address_line_1": f"{address_id} High Street",
        "address_line_2": None,
        "district": None,
        "city": "Leeds",
        "postal_code": "LS1 1AA",
        "country": "United Kingdom",
        "phone": "0113 000000",
        **over,
    }


def sales_order(sales_order_id: int, **over) -> dict:
    return {
        "sales_order_id": sales_order_id,
        "design_id": 1,
        "staff_id": 1,
        "counterparty_id": 1,
        "units_sold": 1000,
        "unit_price": Decimal("2.50"),
        "currency_id": 1,
        "agreed_delivery_date": "2024-05-10",
        "agreed_payment_date": "2024-05-12",
        "agreed_delivery_location_id": 1,
        **over,
    }
