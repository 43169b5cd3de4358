"""The chain running while the business writes: a simulator committing steps in another
thread and a transaction that commits late, with rows stamped before rows others committed
earlier. Every version the source ever committed is recorded by an audit trigger (test-only),
so the warehouse can be checked against the truth: nothing invented, nothing doubled, and
everything the source holds at the end is there."""

from __future__ import annotations

import threading

import pytest
from e2e_reference import FACT_TABLES, SOURCE_SQL, source_state, warehouse_problems, warehouse_rows

from totes.db import connect
from totes_tools.source.generator import generate
from totes_tools.source.simulator import Simulator, late_commit

SOURCE_OF = {
    "fact_sales_order": "sales_order",
    "fact_purchase_order": "purchase_order",
    "fact_payment": "payment",
}

AUDIT = """
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO %I SELECT ($1).*', 'audit_' || TG_TABLE_NAME) USING NEW;
    RETURN NULL;
END $$"""


def install_audit(con) -> None:
    """Every committed insert or update of an order or payment, kept as a row version."""
    con.run(AUDIT)
    for table in SOURCE_OF.values():
        con.run(f"CREATE TABLE audit_{table} (LIKE {table})")
        con.run(
            f"CREATE TRIGGER audit AFTER INSERT OR UPDATE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION audit_row()"
        )
        con.run(f"INSERT INTO audit_{table} SELECT * FROM {table}")  # noqa: S608


def committed_versions(con, fact: str) -> set:
    """Every version the source committed, shaped as the warehouse's fact rows."""
    table = SOURCE_OF[fact]
    sql = SOURCE_SQL[fact].replace(f"FROM {table}", f"FROM audit_{table}")
    return {tuple(r) for r in con.run(sql)}


@pytest.mark.slow
@pytest.mark.parametrize("reader_driver", ["pg8000", "adbc"])  # the large tables' readers
def test_a_simulator_and_a_late_commit_during_several_cycles_lose_and_double_nothing(
    source_db, make_chain, pg_connect, reader_driver
):
    source = pg_connect(source_db)
    generate(source, 150, seed=21)
    install_audit(source)
    chain = make_chain(
        source_db,
        env={"INGEST_MAX_BATCH_ROWS": "300", "INGEST_READER_DRIVER": reader_driver},
    )
    stop = threading.Event()
    steps = []

    def business() -> None:
        con = connect(source_db, application_name="test-business")
        simulator = Simulator(con, seed=9)
        try:
            while not stop.wait(0.02):
                steps.append(simulator.step())
        finally:
            con.close()

    writer = threading.Thread(target=business, daemon=True)
    writer.start()
    reports = []
    try:
        with late_commit(source_db, sales=3, purchases=1, seed=4) as late:
            reports.append(chain.run_cycle())
            reports.append(chain.run_cycle())
        reports.append(chain.run_cycle())
    finally:
        stop.set()
        writer.join(timeout=60)
    reports.append(chain.run_cycle())  # the business is quiet now: catch up

    assert [r.failures for r in reports] == [[], [], [], []]
    assert len(steps) > 5, "the simulator barely ran while the chain did"
    warehouse = pg_connect(chain.warehouse)
    final = source_state(source)
    for fact in FACT_TABLES:
        loaded = warehouse_rows(warehouse, fact)
        assert [row for row, n in loaded.items() if n > 1] == [], f"{fact}: doubled versions"
        invented = set(loaded) - committed_versions(source, fact)
        assert invented == set(), f"{fact}: rows the source never committed"
        lost = set(final[fact]) - set(loaded)
        assert lost == set(), f"{fact}: current source versions missing"
    late_ids = set(late["inserted"]["sales_order"])
    late_rows = {r for r in final["fact_sales_order"] if r[0] in late_ids}
    assert len(late_rows) == 3
    assert late_rows <= set(warehouse_rows(warehouse, "fact_sales_order"))
    dimensions = {t: rows for t, rows in final.items() if t.startswith("dim_")}
    assert warehouse_problems(source, warehouse, dimensions) == []
