"""Properties of the remodelling over generated batches: it is deterministic, and the order of
the input rows does not matter (ingest's COPY order is not guaranteed)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from totes.source.model import TABLES_BY_NAME  # noqa: E402
from totes.star import remodel  # noqa: E402

BASE = datetime(2024, 3, 29, 23, 59, 59, 999000)  # near a month, quarter and day boundary
stamps = st.integers(min_value=0, max_value=400 * 24 * 3600 * 1000).map(
    lambda ms: BASE + timedelta(milliseconds=ms)
)
text_dates = st.dates(
    min_value=datetime(2022, 1, 1).date(), max_value=datetime(2026, 12, 31).date()
).map(lambda d: d.isoformat())
money = st.integers(min_value=0, max_value=99_999_999).map(lambda c: Decimal(c).scaleb(-2))


def versions(ids: int, row: st.SearchStrategy) -> st.SearchStrategy:
    """Rows of one table: several versions per id, each (id, last_updated) at most once."""
    key = st.tuples(st.integers(1, ids), stamps)
    return st.lists(st.tuples(key, row), min_size=1, max_size=12, unique_by=lambda r: r[0])


def table(name: str, rows: list) -> pa.Table:
    model = TABLES_BY_NAME[name]
    full = [
        {model.key: key, "created_at": BASE, "last_updated": stamp, **values}
        for (key, stamp), values in rows
    ]
    return pa.Table.from_pylist(full, schema=model.arrow_schema)


@st.composite
def batches(draw) -> dict[str, pa.Table]:
    ref = st.integers(1, 3)  # every dimension below has ids 1..3 in the batch
    dims = {
        "address": st.fixed_dictionaries(
            {
                "address_line_1": st.text(max_size=5),
                "address_line_2": st.none() | st.text(max_size=5),
                "district": st.none() | st.just("Kent"),
                "city": st.text(max_size=5),
                "postal_code": st.just("AB1"),
                "country": st.just("UK"),
                "phone": st.just("0"),
            }
        ),
        "counterparty": st.fixed_dictionaries(
            {"counterparty_legal_name": st.text(max_size=5), "legal_address_id": ref}
        ),
        "currency": st.fixed_dictionaries(
            {"currency_code": st.sampled_from(["GBP", "EUR", "ZZZ"])}
        ),
        "department": st.fixed_dictionaries(
            {"department_name": st.text(max_size=5), "location": st.none() | st.just("Leeds")}
        ),
        "staff": st.fixed_dictionaries(
            {
                "first_name": st.text(max_size=5),
                "last_name": st.just("X"),
                "department_id": ref,
                "email_address": st.just("x@y"),
            }
        ),
        "design": st.fixed_dictionaries(
            {
                "design_name": st.text(max_size=5),
                "file_location": st.just("/"),
                "file_name": st.just("f"),
            }
        ),
        "payment_type": st.fixed_dictionaries(
            {"payment_type_name": st.sampled_from(["SALES_RECEIPT", "PURCHASE_REFUND"])}
        ),
        "transaction": st.fixed_dictionaries(
            {
                "transaction_type": st.sampled_from(["SALE", "PURCHASE"]),
                "sales_order_id": st.none() | ref,
                "purchase_order_id": st.none() | ref,
            }
        ),
    }
    order = {
        "staff_id": ref,
        "counterparty_id": ref,
        "currency_id": ref,
        "agreed_delivery_date": text_dates,
        "agreed_payment_date": text_dates,
        "agreed_delivery_location_id": ref,
    }
    facts = {
        "sales_order": st.fixed_dictionaries(
            {**order, "design_id": ref, "units_sold": st.integers(1, 10**6), "unit_price": money}
        ),
        "purchase_order": st.fixed_dictionaries(
            {
                **order,
                "item_code": st.text(max_size=4),
                "item_quantity": st.integers(0, 99),
                "item_unit_price": money,
            }
        ),
        "payment": st.fixed_dictionaries(
            {
                "transaction_id": ref,
                "counterparty_id": ref,
                "payment_amount": money,
                "currency_id": ref,
                "payment_type_id": ref,
                "paid": st.booleans(),
                "payment_date": text_dates,
                "company_ac_number": st.integers(0, 10**8),
                "counterparty_ac_number": st.integers(0, 10**8),
            }
        ),
    }
    batch = {}
    for name, row in dims.items():
        # ids 1..3 always present (self-contained), plus extra versions of them.
        base = [((i, BASE), draw(row)) for i in (1, 2, 3)]
        extra = [r for r in draw(versions(3, row)) if r[0][1] != BASE]
        batch[name] = table(name, base + extra)
    for name, row in facts.items():
        batch[name] = table(name, draw(versions(20, row)))
    return batch


def shuffled(batch: dict[str, pa.Table], data) -> dict[str, pa.Table]:
    return {
        name: t.take(data.draw(st.permutations(list(range(t.num_rows))), label=name))
        for name, t in batch.items()
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), data=st.data())
def test_the_star_is_deterministic_and_independent_of_input_row_order(batch, data):
    first = remodel.build_star(batch)
    again = remodel.build_star(batch)
    reordered = remodel.build_star(shuffled(batch, data))
    assert list(first) == list(again) == list(reordered)
    for name in first:
        assert first[name].equals(again[name]), name
        assert first[name].equals(reordered[name]), name


def _is_real_date(text: str) -> bool:
    try:
        return datetime.strptime(text, "%Y-%m-%d").date().isoformat() == text
    except ValueError:
        return False


_DATE_LIKE = st.one_of(
    st.dates(min_value=datetime(1000, 1, 1).date()).map(lambda d: d.isoformat()),
    st.builds(
        "{:04d}-{:02d}-{:02d}".format,
        st.integers(0, 9999),
        st.integers(0, 13),
        st.integers(0, 32),
    ),
    st.text(alphabet="0123456789-/ x", max_size=12),
)


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.one_of(st.none(), _DATE_LIKE), max_size=60),
    split=st.integers(0, 60),
)
def test_a_text_date_is_flagged_exactly_when_it_is_not_a_real_yyyy_mm_dd_date(texts, split):
    """``unparseable_text_dates`` checks each distinct text once and looks rows up: the mask
    equals a value-by-value check (repeats, NULLs, chunked columns, 2024-02-30, month 13, year
    0, which Arrow parses and PostgreSQL refuses)."""
    from totes.star.dates import unparseable_text_dates

    column = pa.chunked_array(
        [pa.array(texts[:split], pa.string()), pa.array(texts[split:], pa.string())]
    )

    mask = unparseable_text_dates(column)

    assert mask.null_count == 0
    assert mask.to_pylist() == [t is not None and not _is_real_date(t) for t in texts]


@settings(max_examples=200, deadline=None)
@given(
    days=st.lists(st.one_of(st.none(), st.dates(min_value=datetime(1, 1, 1).date())), max_size=60),
    split=st.integers(0, 60),
)
def test_a_real_text_date_parses_to_its_own_day_however_often_it_repeats(days, split):
    """``parse_text_date`` parses each distinct text once and looks rows up: every row gets
    its own day, NULL stays NULL, over chunked columns with repeats."""
    from totes.star.dates import parse_text_date

    texts = [None if d is None else f"{d.year:04d}-{d.month:02d}-{d.day:02d}" for d in days]
    column = pa.chunked_array(
        [pa.array(texts[:split], pa.string()), pa.array(texts[split:], pa.string())]
    )

    parsed = parse_text_date(column)

    assert parsed.type == pa.date32()
    assert parsed.to_pylist() == days
