# ruff: noqa: S608  (SQL identifiers below come from the model only)
"""The simulator moves a totesys like the live business: every table changes, the stamps are
the database clock, ties happen on demand, and a late commit really makes visible a row older
than rows already visible."""

from __future__ import annotations

import datetime as dt

import pytest

from totes.identifiers import quote
from totes.source.model import TABLES
from totes_tools.source.generator import generate
from totes_tools.source.simulator import EDIT_ORDER, Simulator, late_commit


@pytest.fixture
def source(source_db, pg_connect):
    con = pg_connect(source_db)
    generate(con, 300, seed=5)
    return con


def versions(con) -> dict[str, set[tuple[int, dt.datetime]]]:
    return {
        t.name: {
            tuple(r) for r in con.run(f"SELECT {quote(t.key)}, last_updated FROM {quote(t.name)}")
        }
        for t in TABLES
    }


def ids_stamped(con, stamp) -> dict[str, set[int]]:
    found = {}
    for t in TABLES:
        rows = con.run(
            f"SELECT {quote(t.key)} FROM {quote(t.name)} WHERE last_updated = :s", s=stamp
        )
        if rows:
            found[t.name] = {r[0] for r in rows}
    return found


def test_after_a_cycle_of_steps_every_source_table_has_new_or_changed_rows(source):
    before = versions(source)
    simulator = Simulator(source, seed=1)
    for _ in range(len(EDIT_ORDER)):
        simulator.step()
    after = versions(source)
    assert {t for t in after if after[t] - before[t]} == {t.name for t in TABLES}


def test_each_step_reports_exactly_the_rows_it_stamped_with_the_database_clock(source):
    simulator = Simulator(source, seed=2)
    for _ in range(len(EDIT_ORDER)):
        clock_before = source.run("SELECT LOCALTIMESTAMP(3)")[0][0]
        step = simulator.step()
        reported = {
            t: set(step["inserted"].get(t, [])) | set(step["updated"].get(t, []))
            for t in set(step["inserted"]) | set(step["updated"])
        }
        assert ids_stamped(source, step["stamp"]) == reported
        assert clock_before <= step["stamp"] <= source.run("SELECT LOCALTIMESTAMP(3)")[0][0]


def test_new_orders_carry_consistent_transactions_and_payments(source):
    simulator = Simulator(source, seed=3)
    new_sales = set()
    for _ in range(5):
        new_sales |= set(simulator.step()["inserted"]["sales_order"])
    rows = source.run(
        "SELECT so.sales_order_id, t.transaction_type::text, p.payment_amount = "
        "so.units_sold * so.unit_price, p.counterparty_id = so.counterparty_id, "
        "p.payment_date = so.agreed_payment_date, pt.payment_type_name::text, "
        "so.units_sold BETWEEN 1000 AND 100000 AND so.unit_price BETWEEN 2 AND 4 "
        "FROM sales_order so JOIN transaction t USING (sales_order_id) "
        "JOIN payment p USING (transaction_id) JOIN payment_type pt USING (payment_type_id) "
        "WHERE so.sales_order_id = ANY(:ids)",
        ids=sorted(new_sales),
    )
    assert sorted(rows) == [
        [i, "SALE", True, True, True, "SALES_RECEIPT", True] for i in sorted(new_sales)
    ]


def test_a_tie_burst_commits_many_rows_under_one_last_updated(source):
    burst = Simulator(source, seed=4).tie_burst(120)
    stamped = ids_stamped(source, burst["stamp"])
    assert {t: len(ids) for t, ids in stamped.items()} == {
        "sales_order": 120,
        "transaction": 120,
        "payment": 240,  # 120 new payments and 120 flipped to paid
    }


def test_a_late_commit_makes_visible_a_row_older_than_rows_already_visible(
    source, source_db, pg_connect
):
    observer = pg_connect(source_db)
    live = Simulator(source, seed=6)
    with late_commit(source_db, sales=2, flips=1, seed=7) as late:
        later = live.step()  # commits while the late transaction is open
        visible_max = observer.run("SELECT max(last_updated) FROM sales_order")[0][0]
        late_ids = late["inserted"]["sales_order"]
        hidden = observer.run(
            "SELECT count(*) FROM sales_order WHERE sales_order_id = ANY(:ids)", ids=late_ids
        )
        assert hidden == [[0]]
        assert visible_max == later["stamp"] > late["stamp"]
    committed = observer.run(
        "SELECT sales_order_id, last_updated FROM sales_order WHERE sales_order_id = ANY(:ids) "
        "ORDER BY 1",
        ids=late_ids,
    )
    assert committed == [[i, late["stamp"]] for i in late_ids]
    assert late["stamp"] < visible_max  # older than what an earlier reader already saw


def test_a_late_commit_can_carry_an_explicit_early_stamp_and_rolls_back_on_error(source, source_db):
    early = dt.datetime(2024, 1, 2, 3, 4, 5, 678000)
    with late_commit(source_db, sales=1, purchases=1, stamp=early) as late:
        pass
    assert ids_stamped(source, early) == {
        "sales_order": set(late["inserted"]["sales_order"]),
        "purchase_order": set(late["inserted"]["purchase_order"]),
        "transaction": set(late["inserted"]["transaction"]),
        "payment": set(late["inserted"]["payment"]),
    }
    counts = source.run("SELECT count(*) FROM sales_order")
    with pytest.raises(RuntimeError), late_commit(source_db, sales=3):
        raise RuntimeError("abandon")
    assert source.run("SELECT count(*) FROM sales_order") == counts


def test_simulating_a_loaded_snapshot_works_on_its_real_ids(source_db, pg_connect, snapshot_dir):
    from totes_tools.source.snapshot import load_snapshot

    con = pg_connect(source_db)
    load_snapshot(con, snapshot_dir)
    step = Simulator(con, seed=8).step()
    assert min(step["inserted"]["sales_order"]) == 11_188
    assert min(step["inserted"]["transaction"]) == 15_837
