"""The whole chain over the real totesys snapshot, checked against SQL over the source."""

from __future__ import annotations

from e2e_reference import expected_warehouse, source_state, warehouse_problems

from totes_tools.source.snapshot import load_snapshot


def test_the_snapshot_reaches_the_warehouse_as_sql_over_the_source_and_changes_add_versions(
    snapshot_dir, snapshot_counts, source_db, make_chain, pg_connect
):
    source = pg_connect(source_db)
    load_snapshot(source, snapshot_dir)
    chain = make_chain(source_db)
    warehouse = pg_connect(chain.warehouse)
    before = source_state(source)

    first = chain.run_cycle()

    assert first.ok, first.format()
    assert first.stages["ingest"].rows == snapshot_counts
    assert warehouse_problems(source, warehouse, expected_warehouse(before)) == []

    from totes_tools.source.simulator import Simulator

    simulator = Simulator(source, seed=7)
    for _ in range(40):
        simulator.step()
    after = source_state(source)
    changed = {t for t in after if after[t] != before[t]}
    assert {"fact_sales_order", "fact_payment"} <= changed

    second = chain.run_cycle()

    assert second.ok, second.format()
    assert warehouse_problems(source, warehouse, expected_warehouse(before, after)) == []
