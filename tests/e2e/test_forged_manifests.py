"""Forged manifests through the local chain (issue 14, M4 and L3): each manifest of the finding,
put at a batch's key before the genuine one, is refused (transform quarantines it naming the
object and what is wrong; load sends its event to the failure queue without touching the
warehouse), and the genuine batch of that id still loads afterwards: the warehouse then equals
SQL over the source.

One small generated source serves the module (no test writes to it), ingested in bounded
batches so one run makes several; each test has its own stack and warehouse. The batch forged
is the run's last; the others flow first, so "another batch" is a real one, already loaded.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from e2e_reference import expected_warehouse, source_state, warehouse_problems

from totes.db import connect
from totes.lake import Lake, Manifest, manifest_key
from totes_tools.cli import main
from totes_tools.local.chain import Delivery, LocalChain
from totes_tools.warehouse.checksums import table_checksums

SMALL_BATCHES = {"INGEST_MAX_BATCH_ROWS": "300"}


@pytest.fixture(scope="module")
def source(generated_source):
    with generated_source("forged_src", 120, seed=3) as creds:
        yield creds


def held_back(chain: LocalChain, stage: str, batch_id: str):
    """A delivery hook that takes ``stage``'s events for ``batch_id`` off its queue unhandled:
    as if that manifest had not been written yet."""
    url = chain._queue_url(chain._queue_of(stage))

    def deliver(at: str, deliveries: list[Delivery]) -> list[Delivery]:
        kept = []
        for delivery in deliveries:
            if at == stage and delivery.batch_id == batch_id:
                chain.sqs.delete_message(QueueUrl=url, ReceiptHandle=delivery.receipt)
            else:
                kept.append(delivery)
        return kept

    return deliver


def forged(lake: Lake, batch_id: str, other: str, forgery: str) -> bytes:
    """The forged manifest for ``batch_id``'s key, made from its genuine one and ``other``'s."""
    genuine = lake.get_manifest(manifest_key(batch_id))
    theirs = lake.get_manifest(manifest_key(other))
    made: Manifest = {
        "content naming another batch": theirs,
        "no files": dataclasses.replace(genuine, files=()),
        "files of another batch": dataclasses.replace(genuine, files=theirs.files),
        "hi_utc now": dataclasses.replace(genuine, extra={**genuine.extra, "hi_utc": "now"}),
        "hi_utc infinity": dataclasses.replace(
            genuine, extra={**genuine.extra, "hi_utc": "infinity"}
        ),
    }[forgery]
    return made.to_json().encode()


def ledger_and_checksums(chain: LocalChain) -> tuple[list[str], dict]:
    con = connect(chain.warehouse)
    try:
        batches = [r[0] for r in con.run("SELECT batch_id FROM etl_batch_ledger ORDER BY 1")]
        return batches, table_checksums(con)
    finally:
        con.close()


def problems(chain: LocalChain) -> list[str]:
    src, wh = connect(chain.source), connect(chain.warehouse)
    try:
        return warehouse_problems(src, wh, expected_warehouse(source_state(src)))
    finally:
        src.close()
        wh.close()


def ingest(chain: LocalChain) -> list[str]:
    report = chain.ingest()
    assert report.ok, report.format()
    batches = report.stages["ingest"].batches
    assert len(batches) >= 2, "too few batches: another batch is needed to forge from"
    return batches


def put_back(lake: Lake, key: str, body: bytes) -> None:
    lake.put_bytes(key, body, "application/json")


RAW_FORGERIES = {
    "content naming another batch": "it holds batch {other!r}, its key names {batch!r}",
    "files of another batch": "file 'raw/",
    "hi_utc now": "hi_utc must be an ISO time in UTC like 2024-11-15T12:00:00+00:00: 'now'",
    "no files": None,  # a raw batch may have no files: nothing to load, nothing published
}


@pytest.mark.parametrize("forgery", list(RAW_FORGERIES))
def test_a_forged_raw_manifest_is_refused_and_the_genuine_batch_of_its_id_loads_after(
    make_chain, source, forgery
):
    chain = make_chain(source, env=SMALL_BATCHES)
    *others, batch = ingest(chain)
    genuine = chain.raw.get_bytes(manifest_key(batch))
    chain.deliver = held_back(chain, "transform", batch)
    assert chain.drain().ok
    chain.deliver = lambda stage, deliveries: deliveries
    before = ledger_and_checksums(chain)
    assert before[0] == others

    put_back(chain.raw, manifest_key(batch), forged(chain.raw, batch, others[0], forgery))
    refused = chain.drain()

    assert refused.ok, refused.format()  # a normal answer: no retries, no failure record
    expected = RAW_FORGERIES[forgery]
    if expected is None:
        assert refused.stages["transform"].quarantined == []
    else:
        assert refused.stages["transform"].quarantined == [batch]
        reason = json.loads(chain.raw.get_bytes(f"quarantine/{batch}/reason.json"))
        messages = [p["message"] for p in reason["problems"]]
        assert {p["check"] for p in reason["problems"]} == {"foreign_manifest"}
        prefix = f"{manifest_key(batch)}: " + expected.format(other=others[0], batch=batch)
        assert any(m.startswith(prefix) for m in messages), messages
    assert manifest_key(batch) not in chain.processed.manifest_keys()
    assert refused.stages["load"].batches == []
    assert ledger_and_checksums(chain) == before  # the warehouse untouched

    put_back(chain.raw, manifest_key(batch), genuine)  # the genuine manifest, later
    loaded = chain.drain()

    assert loaded.ok, loaded.format()
    assert loaded.stages["load"].batches == [batch]
    assert ledger_and_checksums(chain)[0] == sorted([*others, batch])
    assert problems(chain) == []


PROCESSED_FORGERIES = {
    "content naming another batch": "it holds batch {other!r}, its key names {batch!r}",
    "no files": "it lists no files",
    "files of another batch": "file 'processed/",
    "hi_utc now": "hi_utc must be an ISO time in UTC like 2024-11-15T12:00:00+00:00: 'now'",
    "hi_utc infinity": (
        "hi_utc must be an ISO time in UTC like 2024-11-15T12:00:00+00:00: 'infinity'"
    ),
}


@pytest.mark.parametrize("forgery", list(PROCESSED_FORGERIES))
def test_a_forged_processed_manifest_fails_untouched_and_the_genuine_batch_of_its_id_loads_after(
    make_chain, source, forgery
):
    chain = make_chain(source, env=SMALL_BATCHES)
    *others, batch = ingest(chain)
    chain.deliver = held_back(chain, "load", batch)
    assert chain.drain().ok
    chain.deliver = lambda stage, deliveries: deliveries
    genuine = chain.processed.get_bytes(manifest_key(batch))
    before = ledger_and_checksums(chain)
    assert before[0] == others

    put_back(
        chain.processed, manifest_key(batch), forged(chain.processed, batch, others[0], forgery)
    )
    refused = chain.drain(stages=("load",))

    [failure] = refused.failures  # three attempts, then the failure queue
    assert (failure.stage, failure.batch_id, failure.attempts) == ("load", batch, 3)
    expected = PROCESSED_FORGERIES[forgery].format(other=others[0], batch=batch)
    assert failure.error.startswith(
        f"LoadFailed: batch {batch}: {manifest_key(batch)}: {expected}"
    ), failure.error
    [record] = chain.failures()
    assert record["responsePayload"]["errorType"] == "LoadFailed"
    assert ledger_and_checksums(chain) == before  # the warehouse untouched

    put_back(chain.processed, manifest_key(batch), genuine)  # the genuine manifest, later
    loaded = chain.drain(stages=("load",))

    assert loaded.ok, loaded.format()
    assert loaded.stages["load"].batches == [batch]
    assert ledger_and_checksums(chain)[0] == sorted([*others, batch])
    assert problems(chain) == []


@pytest.mark.parametrize("forgery", ["no files", "files of another batch"])
def test_a_rebuild_refuses_a_forged_processed_manifest_the_load_refused(
    make_chain, source, fresh_db, forgery, capsys
):
    """``warehouse rebuild`` loads "through the load function's own code": a processed manifest
    the load refused (it waits on the failure queue) must not reach a rebuilt warehouse either,
    or the rebuild holds a batch the chain's warehouse never had (another batch's rows loaded
    twice, or an empty batch id claimed in the ledger), and says so with exit 0."""
    chain = make_chain(source, env=SMALL_BATCHES)
    *others, batch = ingest(chain)
    chain.deliver = held_back(chain, "load", batch)
    assert chain.drain().ok
    chain.deliver = lambda stage, deliveries: deliveries
    put_back(
        chain.processed, manifest_key(batch), forged(chain.processed, batch, others[0], forgery)
    )
    [failure] = chain.drain(stages=("load",)).failures
    assert failure.batch_id == batch
    original = ledger_and_checksums(chain)
    assert original[0] == others

    fresh = fresh_db("rebuilt_forged")
    code = main(
        ["warehouse", "rebuild", "--warehouse-url", fresh.to_url(), "--endpoint-url",
         chain.endpoint_url, "--bucket", chain.names.processed_bucket]
    )  # fmt: skip
    out, err = capsys.readouterr()

    assert code == 1, out
    assert f"error: batch {batch} not loaded: batch {batch}: {manifest_key(batch)}: " in err
    con = connect(fresh)
    try:
        rebuilt = [r[0] for r in con.run("SELECT batch_id FROM etl_batch_ledger ORDER BY 1")]
        assert (rebuilt, table_checksums(con)) == original
    finally:
        con.close()


def test_a_rebuild_from_the_raw_bucket_by_mistake_is_refused_naming_the_bucket(
    make_chain, source, fresh_db, capsys
):
    """The runbook's one bucket name is easy to get wrong: the raw bucket also holds
    ``manifests/<batch>.json``. A rebuild pointed at it is a wrong argument (exit 2, one line
    naming the bucket), not N damaged batches to repair (exit 1, "fix ... then --resume")."""
    chain = make_chain(source, env=SMALL_BATCHES)
    assert chain.run_cycle().ok
    fresh = fresh_db("rebuilt_from_raw")
    bucket = chain.names.raw_bucket

    code = main(["warehouse", "rebuild", "--warehouse-url", fresh.to_url(),
                 "--endpoint-url", chain.endpoint_url, "--bucket", bucket])  # fmt: skip
    err = capsys.readouterr().err

    assert code == 2, err
    assert err.strip() == (
        f"error: s3://{bucket}/manifests/ holds raw manifests, not processed ones:"
        " is --bucket the processed bucket (the stack's ProcessedBucketName output)?"
    )
    con = connect(fresh)
    try:  # refused before the database was touched
        assert con.run("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [[0]]
    finally:
        con.close()
