"""Each warehouse table computed independently by SQL over the totesys source, and the
comparisons the end-to-end tests make with what the chain loaded.

The reference queries are written out here by hand from ``warehouse.md`` (not generated from
the code under test), so a remodelling bug cannot hide by being repeated in its own check.
"""

from __future__ import annotations

import calendar
from collections import Counter
from datetime import date

import pycountry

from totes.star.model import DIMENSIONS, FACTS, STAR_TABLES_BY_NAME

# One query per table, columns in the warehouse's order.
SOURCE_SQL = {
    "dim_staff": """
        SELECT s.staff_id, s.first_name, s.last_name, d.department_name, d.location,
               s.email_address
        FROM staff s JOIN department d ON d.department_id = s.department_id""",
    "dim_location": """
        SELECT address_id, address_line_1, address_line_2, district, city, postal_code,
               country, phone
        FROM address""",
    # currency_name is added from pycountry's ISO 4217 data below
    "dim_currency": "SELECT currency_id, currency_code FROM currency",
    "dim_design": "SELECT design_id, design_name, file_location, file_name FROM design",
    "dim_counterparty": """
        SELECT c.counterparty_id, c.counterparty_legal_name, a.address_line_1,
               a.address_line_2, a.district, a.city, a.postal_code, a.country, a.phone
        FROM counterparty c JOIN address a ON a.address_id = c.legal_address_id""",
    "dim_transaction": """
        SELECT transaction_id, transaction_type::text, sales_order_id, purchase_order_id
        FROM transaction""",
    "dim_payment_type": "SELECT payment_type_id, payment_type_name::text FROM payment_type",
    "fact_sales_order": """
        SELECT sales_order_id, created_at::date, created_at::time(3), last_updated::date,
               last_updated::time(3), staff_id, counterparty_id, units_sold, unit_price,
               currency_id, design_id, agreed_payment_date::date, agreed_delivery_date::date,
               agreed_delivery_location_id
        FROM sales_order""",
    "fact_purchase_order": """
        SELECT purchase_order_id, created_at::date, created_at::time(3), last_updated::date,
               last_updated::time(3), staff_id, counterparty_id, item_code, item_quantity,
               item_unit_price, currency_id, agreed_delivery_date::date,
               agreed_payment_date::date, agreed_delivery_location_id
        FROM purchase_order""",
    "fact_payment": """
        SELECT payment_id, created_at::date, created_at::time(3), last_updated::date,
               last_updated::time(3), transaction_id, counterparty_id, payment_amount,
               currency_id, payment_type_id, paid, payment_date::date
        FROM payment""",
}

# Every date a fact row references, straight from the source columns.
REFERENCED_DATES_SQL = """
    SELECT d FROM (
        SELECT created_at::date AS d FROM sales_order
        UNION SELECT last_updated::date FROM sales_order
        UNION SELECT agreed_payment_date::date FROM sales_order
        UNION SELECT agreed_delivery_date::date FROM sales_order
        UNION SELECT created_at::date FROM purchase_order
        UNION SELECT last_updated::date FROM purchase_order
        UNION SELECT agreed_payment_date::date FROM purchase_order
        UNION SELECT agreed_delivery_date::date FROM purchase_order
        UNION SELECT created_at::date FROM payment
        UNION SELECT last_updated::date FROM payment
        UNION SELECT payment_date::date FROM payment
    ) AS dates"""

FACT_TABLES = [t.name for t in FACTS]
STAR_WITHOUT_CALENDAR = [t.name for t in (*DIMENSIONS, *FACTS) if t.name != "dim_date"]


def warehouse_rows(con, table: str, live: bool = False) -> Counter:
    """A table's rows in the warehouse; ``live``: only those whose key still exists at the
    source (``source_deleted_at IS NULL``, the picture BI users are told to query)."""
    columns = ", ".join(STAR_TABLES_BY_NAME[table].column_names)
    where = " WHERE source_deleted_at IS NULL" if live and table != "dim_date" else ""
    return Counter(tuple(r) for r in con.run(f"SELECT {columns} FROM {table}{where}"))  # noqa: S608


def iso_4217_name(code: str) -> str | None:
    currency = pycountry.currencies.get(alpha_3=code)
    return currency.name if currency else None


def source_rows(con, table: str) -> Counter:
    rows = [tuple(r) for r in con.run(SOURCE_SQL[table])]
    if table == "dim_currency":
        rows = [(cid, code, iso_4217_name(code)) for cid, code in rows]
    return Counter(rows)


def source_state(con) -> dict[str, Counter]:
    """Every reference table over the source as it is now."""
    return {table: source_rows(con, table) for table in STAR_WITHOUT_CALENDAR}


def calendar_row(d: date) -> tuple:
    return (
        d,
        d.year,
        d.month,
        d.day,
        d.isoweekday(),
        calendar.day_name[d.weekday()],
        calendar.month_name[d.month],
        (d.month - 1) // 3 + 1,
    )


def diff(table: str, expected: Counter, actual: Counter, show: int = 3) -> str:
    missing = list((expected - actual).elements())
    extra = list((actual - expected).elements())
    if not missing and not extra:
        return ""
    return (
        f"{table}: {len(missing)} row(s) missing, e.g. {missing[:show]};"
        f" {len(extra)} unexpected, e.g. {extra[:show]}"
    )


def expected_warehouse(*states: dict[str, Counter]) -> dict[str, Counter]:
    """What the warehouse must hold after the chain saw the source in each of ``states``
    (oldest first): dimensions as in the last state, facts every version seen, once each."""
    last = states[-1]
    out = {}
    for table in STAR_WITHOUT_CALENDAR:
        if table.startswith("dim_"):
            out[table] = last[table]
        else:
            versions = set()
            for state in states:
                versions |= set(state[table])
            out[table] = Counter(versions)
    return out


def warehouse_problems(
    source_con, warehouse_con, expected: dict[str, Counter], live: bool = False
) -> list[str]:
    """Every way the warehouse differs from ``expected``, plus calendar problems: a date the
    source references missing from dim_date, or a dim_date row with wrong attributes.
    ``live``: compare only the live picture (facts: the versions of keys that still exist)."""
    if live:
        existing = source_state(source_con)
        expected = {
            table: rows
            if table.startswith("dim_")
            else Counter({r: n for r, n in rows.items() if r[0] in {e[0] for e in existing[table]}})
            for table, rows in expected.items()
        }
    problems = [
        diff(table, rows, warehouse_rows(warehouse_con, table, live))
        for table, rows in expected.items()
    ]
    calendar_rows = warehouse_rows(warehouse_con, "dim_date")
    wrong = [r for r in calendar_rows if r != calendar_row(r[0])]
    if wrong:
        problems.append(f"dim_date: {len(wrong)} wrong row(s), e.g. {wrong[:3]}")
    have = {r[0] for r in calendar_rows}
    needed = {r[0] for r in source_con.run(REFERENCED_DATES_SQL)}
    if needed - have:
        problems.append(f"dim_date lacks referenced dates {sorted(needed - have)[:5]}")
    return [p for p in problems if p]
