"""The bench's pipelined initial load (``totes_tools.local.pipeline``): the three stages in
their own processes at once, transform and load invoked per manifest as it lands. Every batch
is transformed once and loaded once, in whatever order the queues give, and the warehouse is
the one the stage-after-stage run builds. No timing is asserted: only what the run did."""

from __future__ import annotations

import pytest

from totes.db import connect
from totes_tools.local import pipeline
from totes_tools.local.chain import LocalChain
from totes_tools.warehouse.checksums import table_checksums

# 150 orders (about 730 source rows) in batches of at most 200 rows: several batches to overlap.
SCALE = 150
ENV = {"INGEST_MAX_BATCH_ROWS": "200"}


def _ledger(creds) -> list[str]:
    con = connect(creds)
    try:
        return [r[0] for r in con.run("SELECT batch_id FROM etl_batch_ledger")]
    finally:
        con.close()


def _checksums(creds) -> dict:
    con = connect(creds)
    try:
        return table_checksums(con)
    finally:
        con.close()


@pytest.mark.slow
def test_pipelined_initial_load_handles_every_batch_once_and_equals_the_sequential_one(
    aws, fresh_db, generated_source, new_stack_names
):
    with generated_source("pipe_src", SCALE, seed=11) as source:
        runs = {}
        for mode in ("sequential", "pipelined"):
            names, warehouse = new_stack_names(f"pipe-{mode[:3]}"), fresh_db(mode[:3])
            LocalChain(aws, names, source, warehouse, env=ENV).prepare()
            config = pipeline.child_config(aws, source, warehouse, names, ENV)
            run = (
                pipeline.run_pipelined(config)
                if mode == "pipelined"
                else {"stages": pipeline.run_stages(config)}
            )
            runs[mode] = (run, warehouse)

    piped, piped_warehouse = runs["pipelined"]
    stages = piped["stages"]
    ingested = stages["ingest"]["batch_ids"]
    assert len(ingested) >= 3, ingested  # enough batches for the stages to overlap
    # each batch transformed once and loaded once, in any order
    assert sorted(stages["transform"]["batch_ids"]) == sorted(ingested)
    assert sorted(stages["load"]["batch_ids"]) == sorted(ingested)
    assert sorted(_ledger(piped_warehouse)) == sorted(ingested)
    for stage in pipeline.STAGES:
        assert stages[stage]["failures"] == []
        assert len(stages[stage]["spans"]) == stages[stage]["invocations"]
    assert stages["ingest"]["invocations"] == 1
    assert stages["load"]["processes"] == pipeline.LOAD_WORKERS  # load's concurrency
    assert stages["transform"]["invocations"] == stages["load"]["invocations"] == len(ingested)
    # what the run reports about itself
    assert set(piped["busy_s"]) == set(pipeline.STAGES)
    assert piped["overlap_s"] >= 0
    assert piped["wall_seconds"] > 0

    sequential, sequential_warehouse = runs["sequential"]
    assert len(sequential["stages"]["load"]["batch_ids"]) == len(ingested)
    # every event's landing time came through the queue: the run can be replayed as a pipeline
    for stage in ("transform", "load"):
        landed = [d[1] for d in sequential["stages"][stage]["deliveries"]]
        assert len(landed) == len(ingested)
        assert None not in landed
    assert pipeline.projected(sequential["stages"]) is not None
    assert _checksums(piped_warehouse) == _checksums(sequential_warehouse)
    assert sum(n for n, _ in _checksums(piped_warehouse).values()) > 0


@pytest.mark.slow
def test_a_failed_stage_ends_the_pipelined_run_naming_it_and_its_followers_stop(
    aws, fresh_db, new_stack_names
):
    # a source without the totesys tables: ingest fails every attempt (schema drift)
    source, warehouse, names = fresh_db("empty"), fresh_db("wh"), new_stack_names("pipe-fail")
    LocalChain(aws, names, source, warehouse).prepare()

    with pytest.raises(SystemExit, match="the ingest stage failed") as failed:
        pipeline.run_pipelined(pipeline.child_config(aws, source, warehouse, names))

    assert "SchemaDrift" in str(failed.value)
    assert _ledger(warehouse) == []
