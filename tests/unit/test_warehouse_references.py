"""The load's reference check, client side: which referenced values the batch vouches for."""

from __future__ import annotations

from datetime import date, timedelta

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from totes.lake import table_to_parquet_bytes
from totes.star.model import STAR_TABLES_BY_NAME
from totes.warehouse.references import by_dimension, int_array_text, int_array_values, unresolved
from totes_tools.warehouse.synthetic import star_batch

FACT_PAYMENT = STAR_TABLES_BY_NAME["fact_payment"]
FACT_SALES = STAR_TABLES_BY_NAME["fact_sales_order"]
DAY0 = date(2024, 1, 1)

small_ids = st.lists(st.one_of(st.none(), st.integers(1, 12)), min_size=1, max_size=30)
id_sets = st.lists(st.integers(1, 12), max_size=12)


def _with(table: pa.Table, column: str, values: list) -> pa.Table:
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, pa.array(values, table.schema.field(column).type))


@settings(max_examples=60, deadline=None)
@given(
    transactions=small_ids,
    staged=id_sets,
    aside=id_sets,
    merged=st.booleans(),
    days=st.lists(st.integers(0, 9), min_size=0, max_size=30),
    calendar=st.lists(st.integers(0, 9), max_size=10),
)
def test_what_is_left_is_the_distinct_referenced_values_the_batch_does_not_vouch_for(
    transactions, staged, aside, merged, days, calendar
):
    """Against a set reference: per dimension, the distinct non-NULL values of its referencing
    columns (all of them: a sales order's four dates are one set), less the keys of the
    dimension's merged batch rows and less its set-aside keys; a dimension with none is left
    out. Another dimension's keys never vouch (dim_transaction's ids are not staff ids)."""
    n = len(transactions)
    payments = star_batch(payments_=n, seed=1)["fact_payment"]
    payments = _with(payments, "transaction_id", transactions)
    payments = _with(payments, "created_date", [DAY0 + timedelta(days=d % 10) for d in range(n)])
    payment_dates = [DAY0 + timedelta(days=days[i % len(days)]) if days else None for i in range(n)]
    payments = _with(payments, "payment_date", payment_dates)
    batch = star_batch(payments_=1, seed=1)
    transaction_rows = pa.Table.from_pylist(
        [{**batch["dim_transaction"].to_pylist()[0], "transaction_id": k} for k in staged],
        schema=batch["dim_transaction"].schema,
    )
    calendar_rows = pa.Table.from_pylist(
        [
            {**batch["dim_date"].to_pylist()[0], "date_id": DAY0 + timedelta(days=d)}
            for d in calendar
        ],
        schema=batch["dim_date"].schema,
    )
    # ids 1..12 staged in another dimension must not vouch for transaction ids
    design_rows = pa.Table.from_pylist(
        [{**batch["dim_design"].to_pylist()[0], "design_id": k} for k in range(1, 13)],
        schema=batch["dim_design"].schema,
    )
    dims = {"dim_date": calendar_rows, "dim_design": design_rows}
    if merged:
        dims["dim_transaction"] = transaction_rows

    left = unresolved(FACT_PAYMENT, payments, dims, {"dim_transaction": aside})

    for dim_name, columns in by_dimension(FACT_PAYMENT).items():
        key = STAR_TABLES_BY_NAME[dim_name].key
        expected = {v for c in columns for v in payments.column(c).to_pylist() if v is not None}
        if dim_name in dims:
            expected -= set(dims[dim_name].column(key).to_pylist())
        if dim_name == "dim_transaction":
            expected -= set(aside)
        got = left[dim_name].to_pylist() if dim_name in left else []
        assert len(got) == len(set(got))
        assert set(got) == expected, dim_name


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=50))
def test_integers_become_the_text_of_a_postgresql_array(values):
    assert int_array_text(pa.array(values, pa.int32())) == "{" + ",".join(map(str, values)) + "}"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=50))
def test_the_text_of_a_postgresql_array_becomes_its_integers(values):
    text = int_array_text(pa.array(values, pa.int32()))
    assert int_array_values(text, pa.int32()).to_pylist() == values
    assert int_array_values(None if not values else text, pa.int64()).type == pa.int64()


def test_a_null_among_the_integers_is_refused_not_turned_into_an_empty_array():
    """Arrow's join of a list holding a NULL is NULL: the text was ``{}``, so a probe of the
    stored keys or the references would have looked for nothing and found nothing missing."""
    with pytest.raises(ValueError, match="1 NULL"):
        int_array_text(pa.array([1, None, 3], pa.int32()))


def test_every_reference_of_a_self_contained_batch_is_vouched_for_by_its_own_rows():
    """A batch that carries every row its facts reference leaves nothing to probe."""
    batch = star_batch(sales=30, purchases=20, payments_=25, seed=3)
    dims = {n: t for n, t in batch.items() if n.startswith("dim_")}
    for fact in ("fact_sales_order", "fact_purchase_order", "fact_payment"):
        assert unresolved(STAR_TABLES_BY_NAME[fact], batch[fact], dims) == {}
    left = unresolved(FACT_SALES, batch["fact_sales_order"], {})
    assert set(left) == {d for _, d in FACT_SALES.references}


def test_the_check_and_the_backfill_copy_never_import_pandas(tmp_path):
    """``pa.array`` of a list or a NumPy array goes through Arrow's pandas shim: importing
    pandas cost a cold load stage 0.66 s (py-spy, `make bench`) once the backfill COPY added
    its two constant columns that way. Both build their arrays from buffers. The rows are read
    from Parquet as the load reads them."""
    from test_lake import fresh_interpreter_prints

    batch = star_batch(sales=3, purchases=3, payments_=3, seed=2)
    for name in ("fact_sales_order", "fact_payment"):
        (tmp_path / f"{name}.parquet").write_bytes(table_to_parquet_bytes(batch[name]))
    code = (
        "import pathlib, sys\n"
        "from totes.lake import parquet_bytes_to_table\n"
        "from totes.star.model import STAR_TABLES_BY_NAME as T\n"
        "from totes.warehouse.backfill import with_capture\n"
        "from totes.warehouse.binary_copy import copy_stream\n"
        "from totes.warehouse.references import unresolved\n"
        f"d = pathlib.Path({str(tmp_path)!r})\n"
        "b = {n: parquet_bytes_to_table((d / f'{n}.parquet').read_bytes())"
        " for n in ('fact_sales_order', 'fact_payment')}\n"
        "left = unresolved(T['fact_sales_order'], b['fact_sales_order'], {}, {'dim_design': [1]})\n"
        "assert 'dim_design' in left\n"
        "rows = with_capture(b['fact_payment'], 7, 'c7-000')\n"
        "assert rows.column('loaded_batch_id').to_pylist() == ['c7-000'] * 3\n"
        "assert rows.column('capture_seq').to_pylist() == [7] * 3\n"
        "assert len(b''.join(copy_stream(rows))) > 100\n"
        "from totes.warehouse.references import int_array_text, int_array_values\n"
        "assert int_array_text(rows.column('payment_id').combine_chunks()) == '{1,2,3}'\n"
        "ids = int_array_values('{1,2,3}', rows.column('payment_id').type)\n"
        "assert ids.to_pylist() == [1, 2, 3]\n"
        "from totes.warehouse.backfill import stored_keys\n"
        "class Con:\n"
        "    answers = [[[2, 3]], [['{2,3}']]]\n"
        "    def run(self, sql, **params):\n"
        "        return self.answers.pop(0)\n"
        "found = stored_keys(Con(), T['fact_payment'], b['fact_payment'])\n"
        "assert sorted(found.to_pylist()) == [2, 3]\n"
        "print('pandas' in sys.modules, flush=True)\n"
        "import os; os._exit(0)\n"
    )
    assert fresh_interpreter_prints(code) == "False"


def test_a_set_aside_key_past_the_columns_range_spares_nothing_and_fails_nothing():
    """Set-aside keys come from a manifest: one no int32 column can hold matches no row."""
    sales = star_batch(sales=5, seed=1)["fact_sales_order"]
    designs = set(sales.column("design_id").to_pylist())
    left = unresolved(FACT_SALES, sales, {}, {"dim_design": [2**40, *sorted(designs)[:1]]})
    assert set(left["dim_design"].to_pylist()) == designs - set(sorted(designs)[:1])
