"""Live business activity on a totesys database, so the pipeline is tested against a source
that moves the way the real one does, including the cases that break naive incremental
extraction.

``Simulator.step()`` is one unit of activity in one transaction: new sales and purchase orders
with their transactions and payments, some payments flipped to paid, and one edit to another
table, cycling so that every table changes within seven steps (an address, a staff member's
department, a department's location, a design's name, a counterparty's contact, a new
currency, a payment type re-saved). ``tie_burst(n)`` writes many orders under one timestamp;
``late_commit`` holds a transaction open whose rows carry its early start time while others
commit later-stamped rows.

Every statement is set-based (``unnest`` of parameter arrays, ``INSERT ... RETURNING`` chained
through CTEs). Stamps come from the database clock exactly as the real columns get them:
``LOCALTIMESTAMP(3)``, the transaction's start time as ``timestamp(3) without time zone`` in
the server's zone, which is what ``CURRENT_TIMESTAMP`` defaults produce. Random choices come
from a numpy generator, so a seeded simulator on the same database does the same things.
"""

# ruff: noqa: S608  (every SQL identifier here is a literal of this module, values are parameters)
from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from totes.db import DbCredentials, connect
from totes.observability import logger

# The stamp of a simulated write: the caller's explicit (early) stamp, else the transaction start.
STAMP = "COALESCE(CAST(:stamp AS timestamp(3)), LOCALTIMESTAMP(3))"

NEW_CURRENCIES = ["CHF", "JPY", "CAD", "AUD", "SEK", "NOK", "DKK", "PLN", "NZD", "SGD", "HKD"]
LOCATIONS = ["Manchester", "Leeds", "Liverpool", "Sheffield", "York", "Bristol", "Glasgow"]
DESIGN_NAMES = ["Steel", "Soft", "Granite", "Concrete", "Frozen", "Wooden", "Bronze", "Linen"]
CONTACTS = ["Micheal Toy", "Melba Sanford", "Jane Wiza", "Myra Kovacek", "Lucy Runolfsdottir"]
STREETS = ["Axel Freeway", "Alexie Cliffs", "Sincere Fort", "Herzog Via", "Ratke Lane"]


def _pick(table: str, fraction: str) -> str:
    """SQL for an existing id of ``table`` chosen by a parameter in (0, 1]: robust to gaps."""
    key = f"{table}_id"
    scaled = f"ceil(CAST({fraction} AS float8) * (SELECT max({key}) FROM {table}))"  # nosec B608
    return f"(SELECT {key} FROM {table} WHERE {key} >= {scaled} ORDER BY {key} LIMIT 1)"  # nosec B608


_NEW_SALES = f"""
WITH v AS (
    SELECT * FROM unnest(
        CAST(:design AS float8[]), CAST(:staff AS float8[]), CAST(:counterparty AS float8[]),
        CAST(:currency AS float8[]), CAST(:location AS float8[]), CAST(:units AS int[]),
        CAST(:cents AS int[]), CAST(:delivery AS int[]), CAST(:payment AS int[]),
        CAST(:company_ac AS int[]), CAST(:counterparty_ac AS int[])
    ) WITH ORDINALITY AS v(design, staff, counterparty, currency, location, units, cents,
                           delivery, payment, company_ac, counterparty_ac, n)
), so AS (
    INSERT INTO sales_order (design_id, staff_id, counterparty_id, units_sold, unit_price,
        currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id,
        created_at, last_updated)
    SELECT {_pick("design", "v.design")}, {_pick("staff", "v.staff")},
        {_pick("counterparty", "v.counterparty")}, v.units, v.cents / 100.0,
        {_pick("currency", "v.currency")},
        to_char(CAST({STAMP} AS date) + v.delivery, 'YYYY-MM-DD'),
        to_char(CAST({STAMP} AS date) + v.payment, 'YYYY-MM-DD'),
        {_pick("address", "v.location")}, {STAMP}, {STAMP}
    FROM v ORDER BY v.n
    RETURNING sales_order_id, counterparty_id, currency_id, units_sold * unit_price AS amount,
        agreed_payment_date
), tx AS (
    INSERT INTO transaction (transaction_type, sales_order_id, created_at, last_updated)
    SELECT 'SALE', sales_order_id, {STAMP}, {STAMP} FROM so ORDER BY sales_order_id
    RETURNING transaction_id, sales_order_id
), numbered AS (
    SELECT so.*, tx.transaction_id, row_number() OVER (ORDER BY so.sales_order_id) AS n
    FROM so JOIN tx USING (sales_order_id)
)
INSERT INTO payment (transaction_id, counterparty_id, payment_amount, currency_id,
    payment_type_id, paid, payment_date, company_ac_number, counterparty_ac_number,
    created_at, last_updated)
SELECT x.transaction_id, x.counterparty_id, x.amount, x.currency_id,
    (SELECT payment_type_id FROM payment_type WHERE payment_type_name = 'SALES_RECEIPT'),
    false, x.agreed_payment_date, v.company_ac, v.counterparty_ac, {STAMP}, {STAMP}
FROM numbered x JOIN v USING (n)
RETURNING transaction_id
"""  # nosec B608

_NEW_PURCHASES = f"""
WITH v AS (
    SELECT * FROM unnest(
        CAST(:staff AS float8[]), CAST(:counterparty AS float8[]), CAST(:currency AS float8[]),
        CAST(:location AS float8[]), CAST(:units AS int[]), CAST(:cents AS int[]),
        CAST(:delivery AS int[]), CAST(:payment AS int[]), CAST(:item_code AS text[]),
        CAST(:company_ac AS int[]), CAST(:counterparty_ac AS int[])
    ) WITH ORDINALITY AS v(staff, counterparty, currency, location, units, cents, delivery,
                           payment, item_code, company_ac, counterparty_ac, n)
), po AS (
    INSERT INTO purchase_order (staff_id, counterparty_id, item_code, item_quantity,
        item_unit_price, currency_id, agreed_delivery_date, agreed_payment_date,
        agreed_delivery_location_id, created_at, last_updated)
    SELECT {_pick("staff", "v.staff")}, {_pick("counterparty", "v.counterparty")}, v.item_code,
        v.units, v.cents / 100.0, {_pick("currency", "v.currency")},
        to_char(CAST({STAMP} AS date) + v.delivery, 'YYYY-MM-DD'),
        to_char(CAST({STAMP} AS date) + v.payment, 'YYYY-MM-DD'),
        {_pick("address", "v.location")}, {STAMP}, {STAMP}
    FROM v ORDER BY v.n
    RETURNING purchase_order_id, counterparty_id, currency_id,
        item_quantity * item_unit_price AS amount, agreed_payment_date
), tx AS (
    INSERT INTO transaction (transaction_type, purchase_order_id, created_at, last_updated)
    SELECT 'PURCHASE', purchase_order_id, {STAMP}, {STAMP} FROM po ORDER BY purchase_order_id
    RETURNING transaction_id, purchase_order_id
), numbered AS (
    SELECT po.*, tx.transaction_id, row_number() OVER (ORDER BY po.purchase_order_id) AS n
    FROM po JOIN tx USING (purchase_order_id)
)
INSERT INTO payment (transaction_id, counterparty_id, payment_amount, currency_id,
    payment_type_id, paid, payment_date, company_ac_number, counterparty_ac_number,
    created_at, last_updated)
SELECT x.transaction_id, x.counterparty_id, x.amount, x.currency_id,
    (SELECT payment_type_id FROM payment_type WHERE payment_type_name = 'PURCHASE_PAYMENT'),
    false, x.agreed_payment_date, v.company_ac, v.counterparty_ac, {STAMP}, {STAMP}
FROM numbered x JOIN v USING (n)
RETURNING transaction_id
"""  # nosec B608

# Oldest unpaid payments first (the real business pays in order, 0..6 days after creation);
# rows held by another open transaction (a late commit) are skipped, not waited for.
_FLIP_PAYMENTS = f"""
UPDATE payment SET paid = true, last_updated = {STAMP}
WHERE payment_id IN (
    SELECT payment_id FROM payment WHERE NOT paid AND last_updated < {STAMP}
    ORDER BY payment_id LIMIT :n FOR UPDATE SKIP LOCKED
)
RETURNING payment_id
"""  # nosec B608

# One edit per kind; each returns the ids it touched.
_EDITS = {
    "address": f"""
        UPDATE address SET address_line_2 = :text, phone = :phone, last_updated = {STAMP}
        WHERE address_id = {_pick("address", ":r")} RETURNING address_id""",  # nosec B608
    "staff": f"""
        UPDATE staff SET department_id = {_pick("department", ":r2")}, last_updated = {STAMP}
        WHERE staff_id = {_pick("staff", ":r")} RETURNING staff_id""",  # nosec B608
    "department": f"""
        UPDATE department SET location = :text, last_updated = {STAMP}
        WHERE department_id = {_pick("department", ":r")} RETURNING department_id""",  # nosec B608
    "design": f"""
        UPDATE design SET design_name = :text, last_updated = {STAMP}
        WHERE design_id = {_pick("design", ":r")} RETURNING design_id""",  # nosec B608
    "counterparty": f"""
        UPDATE counterparty SET commercial_contact = :text, last_updated = {STAMP}
        WHERE counterparty_id = {_pick("counterparty", ":r")} RETURNING counterparty_id""",  # nosec B608
    "currency": f"""
        INSERT INTO currency (currency_code, created_at, last_updated)
        SELECT code, {STAMP}, {STAMP} FROM unnest(CAST(:codes AS text[])) WITH ORDINALITY c(code, n)
        WHERE code NOT IN (SELECT currency_code FROM currency) ORDER BY n LIMIT 1
        RETURNING currency_id""",  # nosec B608
    "currency_touch": f"""
        UPDATE currency SET last_updated = {STAMP}
        WHERE currency_id = {_pick("currency", ":r")} RETURNING currency_id""",  # nosec B608
    "payment_type": f"""
        UPDATE payment_type SET last_updated = {STAMP}
        WHERE payment_type_id = {_pick("payment_type", ":r")} RETURNING payment_type_id""",  # nosec B608
}
EDIT_ORDER = tuple(k for k in _EDITS if k != "currency_touch")
# A new currency is rare in a real business: most currency edits only re-save a row.
NEW_CURRENCY_PROBABILITY = 0.15


@dataclass
class Activity:
    """What one step (or burst, or late commit) wrote: the stamp and the ids per table."""

    stamp: dt.datetime | None = None
    inserted: dict[str, list[int]] = field(default_factory=dict)
    updated: dict[str, list[int]] = field(default_factory=dict)

    def add(self, kind: str, table: str, ids) -> None:
        bucket = self.inserted if kind == "inserted" else self.updated
        bucket.setdefault(table, []).extend(int(i) for i in ids)

    def counts(self) -> dict[str, int]:
        tables = set(self.inserted) | set(self.updated)
        return {
            t: len(self.inserted.get(t, [])) + len(self.updated.get(t, [])) for t in sorted(tables)
        }


class Simulator:
    """Advance a totesys database like the live business, one transaction per step."""

    def __init__(self, con, seed: int | None = None):
        self.con = con
        self.rng = np.random.default_rng(seed)
        self.steps = 0

    # --- public API ---------------------------------------------------------------------

    def step(self) -> dict:
        """One unit of activity (committed); returns {"stamp", "inserted", "updated"}."""
        with self._transaction() as activity:
            self.new_sales(activity, int(self.rng.integers(1, 5)))
            self.new_purchases(activity, int(self.rng.integers(1, 3)))
            self.flip_payments(activity, int(self.rng.integers(1, 4)))
            kind = EDIT_ORDER[self.steps % len(EDIT_ORDER)]
            if kind == "currency" and self.rng.random() >= NEW_CURRENCY_PROBABILITY:
                kind = "currency_touch"
            self.edit(activity, kind)
        self.steps += 1
        return _as_dict(activity)

    def tie_burst(self, n: int) -> dict:
        """``n`` sales orders (with transactions and payments) and up to ``n`` paid flips,
        all committed under one ``last_updated``: ties well beyond any batch bound."""
        with self._transaction() as activity:
            self.new_sales(activity, n)
            self.flip_payments(activity, n)
        return _as_dict(activity)

    # --- building blocks (run inside an open transaction) -------------------------------

    def new_sales(self, activity: Activity, n: int, stamp: dt.datetime | None = None) -> None:
        r = self.rng
        rows = self.con.run(
            _NEW_SALES,
            stamp=stamp,
            **self._fractions(n, "design", "staff", "counterparty", "currency", "location"),
            units=r.integers(1_000, 100_001, n).tolist(),
            cents=r.integers(200, 401, n).tolist(),
            delivery=r.integers(0, 8, n).tolist(),
            payment=r.integers(0, 7, n).tolist(),
            **self._accounts(n),
        )
        self._record_orders(activity, "sales_order", rows)

    def new_purchases(self, activity: Activity, n: int, stamp: dt.datetime | None = None) -> None:
        r = self.rng
        letters = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", dtype=np.uint8)
        codes = letters[r.integers(0, len(letters), (n, 7))].view("S7").ravel()
        rows = self.con.run(
            _NEW_PURCHASES,
            stamp=stamp,
            **self._fractions(n, "staff", "counterparty", "currency", "location"),
            units=r.integers(1, 1_000, n).tolist(),
            cents=r.integers(200, 100_001, n).tolist(),
            delivery=r.integers(0, 8, n).tolist(),
            payment=r.integers(0, 7, n).tolist(),
            item_code=[c.decode() for c in codes],
            **self._accounts(n),
        )
        self._record_orders(activity, "purchase_order", rows)

    def flip_payments(self, activity: Activity, n: int, stamp: dt.datetime | None = None) -> None:
        rows = self.con.run(_FLIP_PAYMENTS, n=n, stamp=stamp)
        activity.add("updated", "payment", (r[0] for r in rows))

    def edit(self, activity: Activity, table: str, stamp: dt.datetime | None = None) -> None:
        r = self.rng
        params: dict = {"stamp": stamp}
        sql = _EDITS[table]
        if ":r" in sql:
            params["r"] = float(1.0 - r.random())
        if ":r2" in sql:
            params["r2"] = float(1.0 - r.random())
        if ":phone" in sql:
            params["phone"] = f"{r.integers(1000, 10_000)} {r.integers(100_000, 1_000_000)}"
        if ":codes" in sql:
            params["codes"] = NEW_CURRENCIES
        if ":text" in sql:
            words = {
                "address": STREETS,
                "department": LOCATIONS,
                "design": DESIGN_NAMES,
                "counterparty": CONTACTS,
            }[table]
            params["text"] = str(words[int(r.integers(0, len(words)))])
        rows = self.con.run(sql, **params)
        kind = "inserted" if table == "currency" else "updated"
        activity.add(kind, table.removesuffix("_touch"), (row[0] for row in rows))

    # --- internals ----------------------------------------------------------------------

    def _fractions(self, n: int, *names: str) -> dict[str, list[float]]:
        return {name: (1.0 - self.rng.random(n)).tolist() for name in names}

    def _accounts(self, n: int) -> dict[str, list[int]]:
        return {
            "company_ac": self.rng.integers(10**7, 10**8, n).tolist(),
            "counterparty_ac": self.rng.integers(10**7, 10**8, n).tolist(),
        }

    def _record_orders(self, activity: Activity, order_table: str, rows) -> None:
        transactions = [r[0] for r in rows]
        key = f"{order_table}_id"
        orders = self.con.run(
            f"SELECT {key} FROM transaction WHERE transaction_id = ANY(CAST(:ids AS int[]))",  # nosec B608
            ids=transactions,
        )
        activity.add("inserted", order_table, sorted(r[0] for r in orders))
        activity.add("inserted", "transaction", transactions)
        activity.add("inserted", "payment", transactions and self._payments_of(transactions))

    def _payments_of(self, transactions: list[int]) -> list[int]:
        rows = self.con.run(
            "SELECT payment_id FROM payment WHERE transaction_id = ANY(CAST(:ids AS int[]))",
            ids=transactions,
        )
        return sorted(r[0] for r in rows)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Activity]:
        self.con.run("BEGIN")
        try:
            activity = Activity(stamp=self.con.run("SELECT LOCALTIMESTAMP(3)")[0][0])
            yield activity
            self.con.run("COMMIT")
        except Exception:
            self.con.run("ROLLBACK")
            raise


def _as_dict(activity: Activity) -> dict:
    return {"stamp": activity.stamp, "inserted": activity.inserted, "updated": activity.updated}


@contextlib.contextmanager
def late_commit(
    creds: DbCredentials,
    sales: int = 1,
    purchases: int = 0,
    flips: int = 0,
    stamp: dt.datetime | None = None,
    seed: int | None = None,
) -> Iterator[dict]:
    """Open a transaction on its own connection, write orders (and paid flips) stamped with
    an EARLY ``last_updated`` (the transaction's start time, or ``stamp`` if given), yield
    what was written while the transaction is still open, and commit on exit (roll back if
    the body raises). Rows committed by others meanwhile carry later stamps but become
    visible first: the case a watermark on ``last_updated`` alone loses."""
    con = connect(creds, application_name="totes-late-commit")
    sim = Simulator(con, seed)
    try:
        with sim._transaction() as activity:
            if stamp is not None:
                activity.stamp = stamp
            if sales:
                sim.new_sales(activity, sales, stamp)
            if purchases:
                sim.new_purchases(activity, purchases, stamp)
            if flips:
                sim.flip_payments(activity, flips, stamp)
            logger.info("late transaction open", extra={"rows": activity.counts()})
            yield _as_dict(activity)
    finally:
        con.close()
