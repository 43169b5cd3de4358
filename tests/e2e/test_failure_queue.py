"""Batches on the failure queue whose data is gone (issue 12, item 7): the local chain reports
such a record once, with the command that drops it, and never redrives it again; ``python -m
totes failures list`` shows it and ``failures drop`` removes it, after which cycles succeed.

The record is made the way it happens: the warehouse is down for a cycle, so every load lands
on the failure queue; then the processed data of one of those batches is deleted from the lake
while its record waits there.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest

from totes.db import connect
from totes.freshness import read_marker
from totes.lake import manifest_key
from totes_tools import cli
from totes_tools.local.chain import GoneFailure
from totes_tools.source.generator import generate

SMALL_BATCHES = {"INGEST_MAX_BATCH_ROWS": "400"}


@pytest.fixture(scope="module")
def source(generated_source):
    with generated_source("failures_src", 250, seed=13) as creds:
        yield creds


@pytest.fixture
def stranded(make_chain, source, pg_cluster):
    """A chain whose loads all went to the failure queue while the warehouse was down, and the
    batch (the newest) whose processed manifest and files were then deleted."""
    chain = make_chain(source, env=SMALL_BATCHES)
    with pg_cluster.refusing_connections(chain.warehouse):
        down = chain.run_cycle()
    batches = down.stages["ingest"].batches
    assert len(batches) >= 3
    assert sorted((f.stage, f.batch_id, f.attempts) for f in down.failures) == [
        ("load", b, 3) for b in batches
    ]
    lost = batches[-1]
    doomed = [k for k in chain.processed.keys("processed/") if f"/{lost}/" in k]
    assert doomed
    for key in [*doomed, manifest_key(lost)]:
        chain.s3.delete_object(Bucket=chain.names.processed_bucket, Key=key)
    return chain, batches, lost


def ledger(chain) -> list[str]:
    con = connect(chain.warehouse)
    try:
        return [r[0] for r in con.run("SELECT batch_id FROM etl_batch_ledger ORDER BY 1")]
    finally:
        con.close()


def failures(*args: str) -> int:
    return cli.main(["failures", *args])


def test_a_batch_whose_processed_data_is_deleted_on_the_failure_queue_is_reported_once_and_dropped(
    stranded, capsys
):
    chain, batches, lost = stranded
    queue_url = chain.sqs.get_queue_url(QueueName=chain.names.failure_queue)["QueueUrl"]
    where = ["--endpoint-url", chain.endpoint_url, "--queue-url", queue_url]
    missing = f"s3://{chain.names.processed_bucket}/{manifest_key(lost)} no longer exists"
    command = f"python -m totes failures drop --batch {lost} {' '.join(where)}"

    reported = chain.run_cycle()

    assert reported.gone == [GoneFailure("load", lost, missing, command)]
    assert (reported.ok, reported.failures, reported.replayed) == (False, [], len(batches) - 1)
    assert reported.format().splitlines()[-1] == (
        f"  GONE: load batch {lost} on the failure queue cannot be redriven: {missing}."
        f" Drop it: {command}"
    )
    assert ledger(chain) == batches[:-1]

    quiet = chain.run_cycle()  # reported once: kept on the queue, neither redriven nor repeated

    assert (quiet.ok, quiet.gone, quiet.failures, quiet.replayed) == (True, [], [], 0)

    assert failures("list", *where) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == f"failure queue {queue_url}: 1 record(s)"
    assert re.fullmatch(rf"  load      {lost} +attempts 3, failed \d+ s ago", listed[1])
    assert listed[2].startswith(f"    DatabaseUnavailable: batch {lost}: ")
    assert listed[3:] == [f"    data: GONE ({missing})"]

    assert failures("drop", "--batch", lost, *where) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"dropped load batch {lost}",
        f"1 record(s) dropped, 0 left on {queue_url}",
    ]
    assert failures("drop", "--batch", lost, *where) == 1  # nothing left of it
    assert (
        capsys.readouterr().err.strip() == f"error: no record of batch {lost} on the failure queue"
    )

    later = chain.run_cycle()

    assert (later.ok, later.gone, later.failures, later.replayed) == (True, [], [], 0)
    assert chain.failures() == []


def test_drop_gone_removes_only_the_records_whose_data_is_gone(stranded, capsys):
    chain, batches, lost = stranded
    queue_url = chain.sqs.get_queue_url(QueueName=chain.names.failure_queue)["QueueUrl"]
    where = ["--endpoint-url", chain.endpoint_url, "--queue-url", queue_url]

    assert failures("drop", "--gone", *where) == 0

    assert capsys.readouterr().out.splitlines() == [
        f"dropped load batch {lost} (s3://{chain.names.processed_bucket}/{manifest_key(lost)}"
        " no longer exists)",
        f"1 record(s) dropped, {len(batches) - 1} left on {queue_url}",
    ]
    healed = chain.run_cycle()
    assert (healed.ok, healed.gone, healed.failures) == (True, [], [])
    assert healed.replayed == len(batches) - 1
    assert ledger(chain) == batches[:-1]
    assert chain.failures() == []


def test_drop_batch_refuses_a_record_whose_data_is_present_unless_forced(stranded, capsys):
    """The batch of a record whose data still exists would load on the next redrive; dropping
    it loses the batch for good (its deletions and fact versions never arrive again, and a
    rebuild cannot tell). ``drop --batch`` keeps such a record and says why (exit 1);
    ``--force`` drops it."""
    chain, batches, lost = stranded
    queue_url = chain.sqs.get_queue_url(QueueName=chain.names.failure_queue)["QueueUrl"]
    where = ["--endpoint-url", chain.endpoint_url, "--queue-url", queue_url]
    kept = batches[0]

    assert failures("drop", "--batch", kept, *where) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"0 record(s) dropped, {len(batches)} left on {queue_url}"]
    assert f"error: load batch {kept}: its data is still in the lake" in err
    assert "--force" in err

    healed = chain.run_cycle()  # the record was kept: the redrive loads the batch
    assert healed.replayed == len(batches) - 1
    assert ledger(chain) == batches[:-1]

    assert failures("drop", "--batch", lost, *where) == 0  # gone: dropped without --force
    capsys.readouterr()


def test_drop_batch_force_drops_a_record_whose_data_is_present(stranded, capsys):
    chain, batches, _ = stranded
    queue_url = chain.sqs.get_queue_url(QueueName=chain.names.failure_queue)["QueueUrl"]
    where = ["--endpoint-url", chain.endpoint_url, "--queue-url", queue_url]

    assert failures("drop", "--batch", batches[0], "--force", *where) == 0

    assert capsys.readouterr().out.splitlines() == [
        f"dropped load batch {batches[0]}",
        f"1 record(s) dropped, {len(batches) - 1} left on {queue_url}",
    ]


def test_a_gone_load_whose_raw_batch_is_still_there_is_recovered_by_a_replay(stranded, capsys):
    """The README's advice before dropping: a load record whose processed data is gone, while
    its raw batch is still in the raw bucket (within RawRetentionDays), is recovered whole by
    ``replay`` (transform writes the processed batch again); the next cycle loads it and the
    record leaves the queue. Nothing is lost."""
    chain, batches, lost = stranded

    code = cli.main(["replay", "--batch", lost, "--endpoint-url", chain.endpoint_url,
                     "--bucket", chain.names.raw_bucket])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    healed = chain.run_cycle()

    assert (healed.ok, healed.gone, healed.failures) == (True, [], []), healed.format()
    assert ledger(chain) == batches
    later = chain.run_cycle()  # the kept record: redriven, acknowledged by the ledger, deleted
    assert (later.ok, later.gone, later.failures, later.replayed) == (True, [], [], 1)
    assert chain.failures() == []


def test_a_cycle_that_redrives_an_old_batch_reports_the_warehouses_freshness_not_the_batchs(
    make_chain, fresh_db, pg_cluster
):
    """README: each cycle prints "the warehouse's freshness". A redriven batch older than what
    the warehouse already holds does not make the warehouse older: the figure is the loaded
    marker's (the newest capture the warehouse holds), as load's own metric says."""
    source = fresh_db("fresh_src")
    src = connect(source)
    generate(src, 60, seed=5)
    chain = make_chain(source)
    with pg_cluster.refusing_connections(chain.warehouse):
        down = chain.run_cycle()
    [old] = down.stages["ingest"].batches
    time.sleep(1.1)  # the next capture is later than the failed one
    src.run("UPDATE sales_order SET units_sold = units_sold + 1, last_updated = localtimestamp"
            " WHERE sales_order_id = 1")  # fmt: skip
    chain.ingest()
    newer = chain.drain(stages=("transform", "load"))  # as a schedule runs on, the redrive later
    assert newer.stages["load"].batches
    assert old not in newer.stages["load"].batches
    marker = read_marker(chain.processed)
    assert marker is not None
    assert marker.batch_id != old

    redriven = chain.run_cycle()

    assert (redriven.replayed, redriven.ok) == (1, True), redriven.format()
    assert redriven.stages["load"].batches == [old]
    since_marker = (datetime.now(UTC) - marker.hi_utc).total_seconds()
    assert redriven.freshness_seconds is not None
    assert redriven.freshness_seconds <= since_marker
    src.close()


def test_an_interrupted_redrive_leaves_the_records_it_had_not_finished_visible(stranded, capsys):
    """Ctrl-C during a cycle's redrive: the records not yet settled go back on the queue at
    once, so `failures list` (and the next cycle) see them, instead of an empty queue for the
    length of the redrive's hold (15 minutes)."""
    chain, batches, _ = stranded
    queue_url = chain.sqs.get_queue_url(QueueName=chain.names.failure_queue)["QueueUrl"]

    def interrupted(event, context):
        raise KeyboardInterrupt

    real = chain.handler("load")
    chain._handlers["load"] = interrupted
    with pytest.raises(KeyboardInterrupt):
        chain.run_cycle()
    chain._handlers["load"] = real

    assert failures("list", "--endpoint-url", chain.endpoint_url, "--queue-url", queue_url) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == f"failure queue {queue_url}: {len(batches)} record(s)"
    later = chain.run_cycle()
    assert later.replayed == len(batches) - 1  # the gone one is reported, the others redriven
    assert ledger(chain) == batches[:-1]
