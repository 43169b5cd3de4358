"""The ingest Lambda handler on a scheduler event: credentials from (local) Secrets Manager,
a batch in the raw bucket, its metrics as EMF with the agreed names, the batch id as the
correlation id, no credentials in any output; a run with nothing new says so in a metric."""

from __future__ import annotations

import dataclasses
import json

import boto3
import pytest
from ingest_support import batch_tables, ids, insert_sales_orders

from totes.lake import Lake, batch_id_for, manifest_key
from totes.observability import metrics
from totes.stages import runtime
from totes_tools.local.chain import context_for, load_handler, schedule_event
from totes_tools.source.snapshot import load_snapshot


@pytest.fixture
def handler(stack, source_db, pg_connect, snapshot_dir, monkeypatch):
    load_snapshot(pg_connect(source_db), snapshot_dir)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "ingest")
    # A cold start for this stack: forget what earlier tests' invocations cached.
    runtime.reset()
    return load_handler("ingest")


def emitted(output: str) -> tuple[list[dict], list[dict]]:
    """(EMF metric documents, log records) printed by one invocation."""
    docs = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [d for d in docs if "_aws" in d], [d for d in docs if "_aws" not in d]


def metric_values(docs: list[dict]) -> dict[tuple[str, str | None], float]:
    out = {}
    for doc in docs:
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = doc[metric["Name"]]
                out[metric["Name"], doc.get("table")] = (
                    value[0] if isinstance(value, list) else value
                )
    return out


def test_the_handler_writes_a_batch_and_reports_rows_bytes_and_duration(
    handler, stack, capsys, log_lines
):
    result = handler(schedule_event(), context_for("ingest"))

    docs, _ = emitted(capsys.readouterr().out)
    _, logs = emitted(log_lines.getvalue())
    lake = Lake(boto3.client("s3"), stack.raw_bucket)
    manifest = lake.latest_manifest()
    assert result == {"batches": [manifest.batch_id], "rows": manifest.row_counts}
    values = metric_values(docs)
    assert {table: values["IngestRows", table] for table in manifest.row_counts} == (
        manifest.row_counts
    )
    assert values["IngestBytes", None] == sum(f.bytes for f in manifest.files)
    assert values["IngestDurationSeconds", None] > 0
    assert ("IngestEmptyRuns", None) not in values
    written = [r for r in logs if r.get("message") == "raw batch written"]
    assert [r["correlation_id"] for r in written] == [manifest.batch_id]


def test_a_run_with_nothing_new_emits_an_empty_run_metric(handler, stack, capsys):
    handler(schedule_event(), context_for("ingest"))
    capsys.readouterr()

    result = handler(schedule_event(), context_for("ingest"))

    docs, _ = emitted(capsys.readouterr().out)
    values = metric_values(docs)
    assert result == {"batches": [], "rows": {}}
    assert values["IngestEmptyRuns", None] == 1
    assert not [k for k in values if k[0] == "IngestRows"]


def test_no_credential_appears_in_any_output(handler, stack, capsys, log_lines):
    sm = boto3.client("secretsmanager")
    secret = json.loads(sm.get_secret_value(SecretId=stack.source_secret)["SecretString"])
    secret["password"] = "pw-that-must-not-leak"
    secret["host"], secret["port"] = "127.0.0.1", 1  # unreachable: the error path logs too
    sm.put_secret_value(SecretId=stack.source_secret, SecretString=json.dumps(secret))

    with pytest.raises(Exception, match="cannot reach database") as err:
        handler(schedule_event(), context_for("ingest"))

    out = capsys.readouterr()
    everything = out.out + out.err + log_lines.getvalue() + str(err.value)
    assert "cannot reach database" in log_lines.getvalue() + out.out
    assert "pw-that-must-not-leak" not in everything
    assert Lake(boto3.client("s3"), stack.raw_bucket).manifest_keys() == []


def test_a_manifest_dated_ahead_of_the_source_is_passed_over_counted_and_capture_goes_on(
    handler, stack, source_db, pg_connect, capsys, log_lines, monkeypatch
):
    """Issue 14, M4: a raw manifest dated 9999 (its capture state ahead of the source, its
    capture time 9999) with the state pointer naming it once stalled ingest with ok: True.
    Both are passed over and counted with exactly the dimensions the template's
    CaptureStateSetAsideAlarm reads (tests/template), and the next rows are captured."""
    handler(schedule_event(), context_for("ingest"))
    lake = Lake(boto3.client("s3"), stack.raw_bucket)
    genuine = lake.latest_manifest()
    future = batch_id_for(10**15)
    state = dict(genuine.extra["capture"], snapshot="999999999:999999999:", seq=10**15)
    extra = {"capture": state, "capture_seq": 10**15, "hi_utc": "9999-12-31T23:59:59+00:00"}
    lake.put_manifest(
        dataclasses.replace(genuine, batch_id=future, files=(), extra={**genuine.extra, **extra})
    )
    lake.put_state(manifest_key(future), state)
    new = set(insert_sales_orders(pg_connect(source_db), 2))
    # In Lambda the shared Metrics is made with POWERTOOLS_SERVICE_NAME=ingest already set,
    # which gives every function-level metric its one dimension; this process made it earlier.
    monkeypatch.setattr(metrics, "service", "ingest")
    capsys.readouterr()

    result = handler(schedule_event(), context_for("ingest"))

    docs, _ = emitted(capsys.readouterr().out)
    counted = [
        (doc["IngestStatesSetAside"], directive["Dimensions"], doc["service"])
        for doc in docs
        for directive in doc["_aws"]["CloudWatchMetrics"]
        if any(m["Name"] == "IngestStatesSetAside" for m in directive["Metrics"])
    ]
    # the pointer and the manifest, counted once per run (issue 15: 0 on a run passing none)
    assert counted == [([2.0], [["service"]], "ingest")]
    passed_over = [
        json.loads(line)["key"]
        for line in log_lines.getvalue().splitlines()
        if "lake object passed over as capture state" in line
    ]
    assert passed_over == ["state/latest.json", manifest_key(future)]
    [batch] = result["batches"]
    assert batch < future
    assert new <= ids(batch_tables(lake, lake.get_manifest(manifest_key(batch))))["sales_order"]
