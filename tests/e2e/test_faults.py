"""Faults injected into the local chain, each on its own: whatever goes wrong, once the fault
is gone the warehouse equals the one a fault-free run builds from the same source.

One small generated source serves the module (no test writes to it); every test gets its own
stack and warehouse. Ingest is limited to small batches so one run makes several batches and
order, repetition and partial failure have something to act on.
"""

from __future__ import annotations

import pytest
from e2e_reference import expected_warehouse, source_state, warehouse_problems

from totes.db import connect
from totes.lake import Lake
from totes.warehouse import backfill, facts
from totes_tools.local.aws import aws_environment
from totes_tools.local.chain import LocalChain
from totes_tools.warehouse.checksums import table_checksums

SMALL_BATCHES = {"INGEST_MAX_BATCH_ROWS": "400"}


@pytest.fixture(scope="module")
def source(generated_source):
    with generated_source("faults_src", 250, seed=11) as creds:
        yield creds


@pytest.fixture(scope="module")
def fault_free(source, pg_cluster, moto_endpoint, new_stack_names):
    """Checksums of the warehouse a fault-free run builds (itself checked against SQL)."""
    with pg_cluster.database("faults_ref") as warehouse, aws_environment(moto_endpoint):
        chain = LocalChain(
            moto_endpoint,
            new_stack_names("ref"),
            source,
            warehouse,
            env=SMALL_BATCHES,
        )
        chain.prepare()
        report = chain.run_cycle()
        assert report.ok, report.format()
        assert len(report.stages["load"].batches) > 2, "too few batches to exercise the faults"
        src, wh = connect(source), connect(warehouse)
        try:
            assert warehouse_problems(src, wh, expected_warehouse(source_state(src))) == []
            sums = table_checksums(wh)
        finally:
            src.close()
            wh.close()
    return sums


@pytest.fixture
def chain_for(make_chain, source):
    def make(**kwargs) -> LocalChain:
        return make_chain(source, env=SMALL_BATCHES, **kwargs)

    return make


def checksums(chain: LocalChain) -> dict:
    con = connect(chain.warehouse)
    try:
        return table_checksums(con)
    finally:
        con.close()


def ledger(chain: LocalChain) -> list[str]:
    con = connect(chain.warehouse)
    try:
        return [r[0] for r in con.run("SELECT batch_id FROM etl_batch_ledger ORDER BY 1")]
    finally:
        con.close()


def test_every_event_delivered_twice_gives_the_fault_free_warehouse(chain_for, fault_free):
    chain = chain_for(deliver=lambda stage, ds: [d for d in ds for _ in (1, 2)])

    report = chain.run_cycle()

    assert report.ok, report.format()
    assert report.stages["load"].invocations == 2 * len(report.stages["ingest"].batches)
    assert checksums(chain) == fault_free
    assert ledger(chain) == sorted(report.stages["ingest"].batches)


def test_events_delivered_in_reverse_order_give_the_fault_free_warehouse(chain_for, fault_free):
    def newest_first(stage, deliveries):
        return sorted(deliveries, key=lambda d: d.batch_id, reverse=True)

    chain = chain_for(deliver=newest_first)

    report = chain.run_cycle()

    assert report.ok, report.format()
    batches = report.stages["ingest"].batches
    assert report.stages["transform"].batches == batches[::-1]
    assert report.stages["load"].batches == batches[::-1]
    assert checksums(chain) == fault_free


def test_a_crash_after_the_raw_files_and_before_the_manifest_is_healed_by_the_next_run(
    chain_for, fault_free, monkeypatch
):
    chain = chain_for()
    put_manifest = Lake.put_manifest

    def crash_in_raw_bucket(lake, manifest):
        if lake.bucket == chain.names.raw_bucket:
            raise RuntimeError("killed after the data files")
        return put_manifest(lake, manifest)

    monkeypatch.setattr(Lake, "put_manifest", crash_in_raw_bucket)
    crashed = chain.run_cycle()
    monkeypatch.setattr(Lake, "put_manifest", put_manifest)

    assert [(f.stage, f.attempts) for f in crashed.failures] == [("ingest", 3)]
    assert chain.raw.keys("raw/") != []  # orphan data files, but no manifest
    assert chain.raw.manifest_keys() == []
    assert ledger(chain) == []

    healed = chain.run_cycle()

    assert healed.ok, healed.format()
    assert checksums(chain) == fault_free


def test_a_transform_crash_before_its_manifest_is_retried_to_the_fault_free_warehouse(
    chain_for, fault_free, monkeypatch
):
    chain = chain_for()
    put_manifest = Lake.put_manifest
    crashes = []

    def crash_once_in_processed_bucket(lake, manifest):
        if lake.bucket == chain.names.processed_bucket and not crashes:
            crashes.append(manifest.batch_id)
            raise RuntimeError("transform killed after its data files")
        return put_manifest(lake, manifest)

    monkeypatch.setattr(Lake, "put_manifest", crash_once_in_processed_bucket)

    report = chain.run_cycle()

    assert report.ok, report.format()
    assert len(crashes) == 1
    assert report.stages["transform"].invocations == len(report.stages["ingest"].batches) + 1
    assert checksums(chain) == fault_free


def test_a_load_crash_inside_its_transaction_leaves_nothing_and_the_retry_gives_the_fault_free_warehouse(  # noqa: E501
    chain_for, fault_free, monkeypatch
):
    """The connection is lost right after the first fact table's rows are written, whichever
    way they went in: merged from staging, or COPYed straight in (a first capture's facts)."""
    chain = chain_for()
    crashes = []

    def then_lose_the_connection(write):
        def written_then_lost(con, batch, seq, table, *args, **kwargs):
            result = write(con, batch, seq, table, *args, **kwargs)
            if not crashes:
                crashes.append((batch, table.name))
                con.run("SELECT pg_terminate_backend(pg_backend_pid())")
            return result

        return written_then_lost

    monkeypatch.setattr(facts, "merge_fact", then_lose_the_connection(facts.merge_fact))
    monkeypatch.setattr(backfill, "copy_versions", then_lose_the_connection(backfill.copy_versions))

    report = chain.run_cycle()

    assert report.ok, report.format()
    assert len(crashes) == 1
    assert report.stages["load"].invocations == len(report.stages["ingest"].batches) + 1
    assert checksums(chain) == fault_free
    assert ledger(chain) == sorted(report.stages["ingest"].batches)


def test_a_source_unreachable_for_one_cycle_delays_but_changes_nothing(
    chain_for, fault_free, pg_cluster, source
):
    chain = chain_for()

    with pg_cluster.refusing_connections(source):
        down = chain.run_cycle()

    assert [(f.stage, f.attempts) for f in down.failures] == [("ingest", 3)]
    assert "DatabaseUnavailable" in down.failures[0].error
    assert chain.raw.keys("") == []

    up = chain.run_cycle()

    assert up.ok, up.format()
    assert checksums(chain) == fault_free


def test_a_warehouse_unreachable_for_one_cycle_is_redriven_from_the_failure_queue(
    chain_for, fault_free, pg_cluster
):
    chain = chain_for()

    with pg_cluster.refusing_connections(chain.warehouse):
        down = chain.run_cycle()

    batches = down.stages["ingest"].batches
    assert sorted(f.batch_id for f in down.failures) == batches
    assert {(f.stage, f.attempts) for f in down.failures} == {("load", 3)}

    up = chain.run_cycle()

    assert up.ok, up.format()
    assert up.replayed == len(batches)
    assert checksums(chain) == fault_free
    assert ledger(chain) == batches
