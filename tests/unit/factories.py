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


def staff(staff_id: int, **over) -> dict:
    return {
        "staff_id": staff_id,
        "first_name": "Jeremie",
        "last_name": "Franey",
        "department_id": 1,
        "email_address": "jeremie.franey@terrifictotes.com",
        **over,
    }


def counterparty(counterparty_id: int, **over) -> dict:
    return {
        "counterparty_id": counterparty_id,
        "counterparty_legal_name": "Fahey and Sons",
        "legal_address_id": 1,
        "commercial_contact": "Micheal Toy",
        "delivery_contact": "Mrs. Lucy Runolfsdottir",
        **over,
    }


def payment(payment_id: int, **over) -> dict:
    return {
        "payment_id": payment_id,
        "transaction_id": 1,
        "counterparty_id": 1,
        "payment_amount": Decimal("1000.50"),
        "currency_id": 1,
        "payment_type_id": 1,
        "paid": False,
        "payment_date": "2024-05-20",
        "company_ac_number": 67305075,
        "counterparty_ac_number": 31622269,
        **over,
    }


def full_rows() -> dict[str, list[dict]]:
    """One complete row (key 1) of every source table, every reference resolving to it."""
    return {
        "address": [address(1)],
        "counterparty": [counterparty(1)],
        "currency": [{"currency_id": 1, "currency_code": "GBP"}],
        "department": [
            {
                "department_id": 1,
                "department_name": "Sales",
                "location": "Manchester",
                "manager": "Richard Roma",
            }
        ],
        "design": [
            {
                "design_id": 1,
                "design_name": "Wooden",
                "file_location": "/usr",
                "file_name": "wooden-20220717-npgz.json",
            }
        ],
        "staff": [staff(1)],
        "payment_type": [{"payment_type_id": 1, "payment_type_name": "SALES_RECEIPT"}],
        "sales_order": [sales_order(1)],
        "purchase_order": [
            {
                "purchase_order_id": 1,
                "staff_id": 1,
                "counterparty_id": 1,
                "item_code": "ZDOI5EA",
                "item_quantity": 371,
                "item_unit_price": Decimal("361.39"),
                "currency_id": 1,
                "agreed_delivery_date": "2024-05-14",
                "agreed_payment_date": "2024-05-15",
                "agreed_delivery_location_id": 1,
            }
        ],
        "transaction": [
            {
                "transaction_id": 1,
                "transaction_type": "SALE",
                "sales_order_id": 1,
                "purchase_order_id": None,
            }
        ],
        "payment": [payment(1)],
    }


def full_batch(**rows: list[dict]) -> dict[str, pa.Table]:
    """``full_rows()`` as raw tables, any table's rows replaced by keyword."""
    return {name: raw(name, *found) for name, found in {**full_rows(), **rows}.items()}
