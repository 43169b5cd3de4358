"""The generator is a pure function of (scale, seed) and reproduces the real snapshot's shape:
ranges, weekday/hour pattern, ties, paid flips, proportions and optional-column nulls."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from totes.errors import ConfigurationError
from totes.source.model import TABLES
from totes_tools.source.generator import Plan
from totes_tools.source.snapshot import read_snapshot


def generated(scale: int, seed: int = 42, chunk_rows: int = 200_000) -> dict[str, pa.Table]:
    chunks: dict[str, list[pa.Table]] = {}
    for name, chunk in Plan(scale, seed, chunk_rows).tables():
        chunks.setdefault(name, []).append(chunk)
    return {name: pa.concat_tables(parts) for name, parts in chunks.items()}


def digest(tables: dict[str, pa.Table]) -> str:
    h = hashlib.sha256()
    for t in TABLES:
        h.update(tables[t.name].to_pandas().to_csv(index=False).encode())
    return h.hexdigest()


def _np(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy()


def shape(tables: dict[str, pa.Table]) -> dict:
    """The facts about a totesys that the generator promises, computed the same way for the
    real snapshot and for generated data."""
    so, po, pay, tx = (
        tables[n] for n in ("sales_order", "purchase_order", "payment", "transaction")
    )
    created = _np(so, "created_at").astype("datetime64[ms]")
    days = created.astype("datetime64[D]")
    hours = (created - days).astype("timedelta64[h]").astype(int)
    weekday_days = np.unique(days)
    pay_created, pay_updated = _np(pay, "created_at"), _np(pay, "last_updated")
    flipped = pay_updated > pay_created
    delay_h = (pay_updated - pay_created)[flipped].astype("timedelta64[ms]").astype(float) / 3.6e6
    addresses = tables["address"]
    return {
        "units_sold": (pc.min(so["units_sold"]).as_py(), pc.max(so["units_sold"]).as_py()),
        "unit_price": (
            float(pc.min(so["unit_price"]).as_py()),
            float(pc.max(so["unit_price"]).as_py()),
        ),
        "weekend sales": int(np.isin(np.busday_count(days, days + 1), 0).sum()),
        "hours": (int(hours.min()), int(hours.max())),
        "sales per active day": len(so) / len(weekday_days),
        "purchases per sale": len(po) / len(so),
        "designs per sale": tables["design"].num_rows / len(so),
        "one transaction and payment per order": len(tx) == len(pay) == len(so) + len(po),
        "paid share": float(np.mean(_np(pay, "paid"))),
        "paid iff updated": bool(np.array_equal(_np(pay, "paid"), flipped)),
        "flip delay hours": (float(delay_h.min()), float(delay_h.max())),
        "sales sharing a created_at": float(np.mean(np.unique(created, return_counts=True)[1] > 1)),
        "address_line_2 null share": addresses["address_line_2"].null_count / addresses.num_rows,
        "district null share": addresses["district"].null_count / addresses.num_rows,
        "small-table sizes": {
            n: tables[n].num_rows
            for n in ("address", "counterparty", "currency", "department", "staff", "payment_type")
        },
    }


@pytest.fixture(scope="module")
def real_shape(snapshot_dir):
    return shape(read_snapshot(snapshot_dir))


def test_same_seed_gives_identical_content_regardless_of_chunking():
    first = generated(3_000, seed=7)
    assert digest(first) == digest(generated(3_000, seed=7))
    assert digest(first) == digest(generated(3_000, seed=7, chunk_rows=500))
    assert digest(first) != digest(generated(3_000, seed=8))


def test_scale_gives_that_many_sales_and_proportional_other_tables():
    counts = {name: t.num_rows for name, t in generated(11_187).items()}
    assert counts == {
        "address": 30,
        "counterparty": 20,
        "currency": 3,
        "department": 8,
        "design": 473,
        "staff": 20,
        "payment_type": 4,
        "sales_order": 11_187,
        "purchase_order": 4_649,
        "transaction": 15_836,
        "payment": 15_836,
    }


def test_generated_shape_matches_the_real_snapshot(real_shape):
    ours = shape(generated(11_187))
    exact = ("units_sold", "weekend sales", "hours", "one transaction and payment per order",
             "paid iff updated", "small-table sizes")  # fmt: skip
    assert {k: ours[k] for k in exact} == {
        "units_sold": (ours["units_sold"][0], ours["units_sold"][1]),
        "weekend sales": 0,
        "hours": (8, 18),
        "one transaction and payment per order": True,
        "paid iff updated": True,
        "small-table sizes": real_shape["small-table sizes"],
    }
    assert {k: real_shape[k] for k in ("weekend sales", "hours", "paid iff updated")} == {
        "weekend sales": 0,
        "hours": (8, 18),
        "paid iff updated": True,
    }
    lo, hi = ours["units_sold"]
    assert 1_000 <= lo < 1_100
    assert 99_900 < hi <= 100_000
    assert ours["unit_price"] == (2.0, 4.0) == real_shape["unit_price"]
    for key, tolerance in [
        ("sales per active day", 2.0),
        ("purchases per sale", 0.01),
        ("designs per sale", 0.005),
        ("paid share", 0.03),
        ("address_line_2 null share", 0.25),
        ("district null share", 0.25),
    ]:
        assert ours[key] == pytest.approx(real_shape[key], abs=tolerance), key
    assert ours["flip delay hours"][0] >= 12
    assert ours["flip delay hours"][1] <= 6 * 24
    assert real_shape["flip delay hours"][1] <= 6 * 24
    assert ours["sales sharing a created_at"] > 0.02  # ties are common, not accidental


def test_orders_transactions_and_payments_agree_like_the_real_ones():
    tables = generated(2_000)
    so, tx, pay = tables["sales_order"], tables["transaction"], tables["payment"]
    sale_tx = tx.filter(pc.equal(tx["transaction_type"], "SALE"))
    sale_pay = pay.take(pc.subtract(sale_tx["transaction_id"], 1))
    order = so.take(pc.subtract(sale_tx["sales_order_id"], 1))
    assert sale_pay["counterparty_id"].equals(order["counterparty_id"])
    assert sale_pay["currency_id"].equals(order["currency_id"])
    assert sale_pay["payment_date"].equals(order["agreed_payment_date"])
    assert sale_pay["created_at"].equals(order["created_at"])
    amount = pc.multiply(order["units_sold"].cast(pa.decimal128(12, 0)), order["unit_price"])
    assert (
        sale_pay["payment_amount"]
        .cast(pa.decimal128(20, 2))
        .equals(amount.cast(pa.decimal128(20, 2)))
    )
    design_created = tables["design"]["created_at"].take(pc.subtract(order["design_id"], 1))
    assert pc.all(pc.less_equal(design_created, order["created_at"])).as_py()


def test_a_scale_below_one_is_refused():
    with pytest.raises(ConfigurationError, match="scale must be a positive"):
        Plan(0, 42)
