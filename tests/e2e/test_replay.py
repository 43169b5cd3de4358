"""Replaying a raw batch with ``python -m totes replay`` on the local chain: a quarantined batch
whose data the operator repaired loads on replay, and replaying a loaded batch changes nothing.

One small generated source serves the module (no test writes to it); each test has its own
stack and warehouse, and ingests everything as one batch.
"""

from __future__ import annotations

import pytest
from e2e_reference import expected_warehouse, source_state, warehouse_problems

from totes.db import connect
from totes.lake import manifest_key
from totes_tools.cli import main
from totes_tools.local.chain import LocalChain
from totes_tools.warehouse.checksums import table_checksums


@pytest.fixture(scope="module")
def source(generated_source):
    with generated_source("replay_src", 120, seed=7) as creds:
        yield creds


def replay(chain: LocalChain, batch_id: str, *flags: str) -> int:
    return main(
        [
            "replay",
            "--batch",
            batch_id,
            "--endpoint-url",
            chain.endpoint_url,
            "--bucket",
            chain.names.raw_bucket,
            *flags,
        ]
    )


def ingest_one_batch(chain: LocalChain) -> str:
    report = chain.ingest()
    assert report.ok, report.format()
    (batch_id,) = report.stages["ingest"].batches
    return batch_id


def problems(chain: LocalChain) -> list[str]:
    src, wh = connect(chain.source), connect(chain.warehouse)
    try:
        return warehouse_problems(src, wh, expected_warehouse(source_state(src)))
    finally:
        src.close()
        wh.close()


def ledger_and_checksums(chain: LocalChain) -> tuple[list[str], dict]:
    con = connect(chain.warehouse)
    try:
        batches = [r[0] for r in con.run("SELECT batch_id FROM etl_batch_ledger ORDER BY 1")]
        return batches, table_checksums(con)
    finally:
        con.close()


def test_a_batch_quarantined_for_a_corrupt_file_loads_once_the_file_is_repaired_and_replayed(
    make_chain, source, capsys
):
    chain = make_chain(source)
    batch_id = ingest_one_batch(chain)
    original = chain.raw.get_manifest(manifest_key(batch_id))
    damaged = original.files_for("sales_order")[0].key
    good_bytes = chain.raw.get_bytes(damaged)
    chain.raw.put_bytes(damaged, b"PAR1 not parquet at all", "application/octet-stream")

    quarantined = chain.drain()

    assert quarantined.ok, quarantined.format()
    assert quarantined.stages["transform"].quarantined == [batch_id]
    assert chain.processed.manifest_keys() == []
    assert f"quarantine/{batch_id}/reason.json" in chain.raw.keys("quarantine/")

    chain.raw.put_bytes(damaged, good_bytes, "application/vnd.apache.parquet")  # the repair
    assert replay(chain, batch_id) == 0
    replayed = chain.drain()

    assert replayed.ok, replayed.format()
    assert replayed.stages["transform"].quarantined == []
    assert replayed.stages["load"].batches == [batch_id]
    assert problems(chain) == []
    assert ledger_and_checksums(chain)[0] == [batch_id]
    manifest = chain.raw.get_manifest(manifest_key(batch_id))
    assert manifest.extra["replay"]["count"] == 1
    assert (manifest.batch_id, manifest.window_lo, manifest.window_hi, manifest.files) == (
        original.batch_id,
        original.window_lo,
        original.window_hi,
        original.files,
    )
    assert f"replayed batch {batch_id} (replay #1)" in capsys.readouterr().out
    # The watermark did not move: the next ingest finds nothing new.
    assert chain.ingest().stages["ingest"].batches == []


def test_replaying_a_loaded_batch_changes_nothing_in_the_warehouse(make_chain, source):
    chain = make_chain(source)
    first = chain.run_cycle()
    assert first.ok, first.format()
    (batch_id,) = first.stages["load"].batches
    before = ledger_and_checksums(chain)

    assert replay(chain, batch_id) == 0
    assert replay(chain, batch_id) == 0  # twice: each replay is a new event
    again = chain.drain()

    assert again.ok, again.format()
    assert again.stages["transform"].batches == [batch_id, batch_id]
    assert again.stages["load"].batches == [batch_id, batch_id]
    assert again.stages["load"].metric_total("LoadRowsInserted") == {}  # ledger: already loaded
    assert ledger_and_checksums(chain) == before
    assert chain.raw.get_manifest(manifest_key(batch_id)).extra["replay"]["count"] == 2


def test_a_repair_that_drops_a_row_needs_recount_and_then_loads_the_rest(make_chain, source):
    chain = make_chain(source)
    batch_id = ingest_one_batch(chain)
    (entry,) = chain.raw.get_manifest(manifest_key(batch_id)).files_for("payment")
    payments = chain.raw.get_table(entry.key)
    # File damage quarantines the batch (a bad value in a row would only set that row aside).
    chain.raw.put_bytes(entry.key, b"PAR1 torn", "application/octet-stream")
    assert chain.drain().stages["transform"].quarantined == [batch_id]

    chain.raw.put_table(entry.key, payments.slice(1))  # restored, all but one row
    assert replay(chain, batch_id) == 0
    counts_disagree = chain.drain()
    assert counts_disagree.stages["transform"].quarantined == [batch_id]

    assert replay(chain, batch_id, "--recount") == 0
    recounted = chain.drain()

    assert recounted.ok, recounted.format()
    assert recounted.stages["transform"].quarantined == []
    assert recounted.stages["load"].batches == [batch_id]
    processed = chain.processed.get_manifest(manifest_key(batch_id))
    assert processed.row_counts["fact_payment"] == payments.num_rows - 1
    assert ledger_and_checksums(chain)[0] == [batch_id]


def test_replaying_a_batch_that_does_not_exist_fails_naming_it(make_chain, source, capsys):
    chain = make_chain(source)

    assert replay(chain, "20240101T000000000000-000") == 2

    error = capsys.readouterr().err
    assert "batch 20240101T000000000000-000" in error
    assert f"s3://{chain.names.raw_bucket}/manifests/" in error
