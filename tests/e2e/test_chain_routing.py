"""The local chain's router on its own: S3 notifications through the template's queues to
stand-in handlers, with the template's retry rule and the failure queue. The stand-ins write
real manifests to the emulator, so the notifications are real; only the stage work is fake."""

from __future__ import annotations

import json
import os

import boto3
import pytest

from totes.db import DbCredentials
from totes.lake import Lake, Manifest, ManifestFile, batch_id_from_manifest_key
from totes_tools.local.aws import StackNames, environment
from totes_tools.local.chain import LocalChain, context_for, parse_emf

DUMMY = DbCredentials(user="u", dbname="d", host="127.0.0.1", password="p")


@pytest.fixture
def names(aws, new_stack_names) -> StackNames:
    return new_stack_names("route")


class FakeStages:
    """Stand-ins that move manifests like the real stages and record what they saw."""

    def __init__(self, batches_per_ingest: int = 1):
        self.batches_per_ingest = batches_per_ingest
        self.ingested = 0
        self.calls: list[tuple[str, str]] = []
        self.envs: list[dict] = []

    def _lake(self, bucket_var: str) -> Lake:
        return Lake(boto3.client("s3"), os.environ[bucket_var])

    def ingest(self, event, context):
        assert event["source"] == "aws.scheduler"
        self.envs.append({k: os.environ.get(k) for k in ("POWERTOOLS_SERVICE_NAME", "RAW_BUCKET")})
        lake = self._lake("RAW_BUCKET")
        ids = []
        for _ in range(self.batches_per_ingest):
            self.ingested += 1
            batch_id = f"20240101T0000000000{self.ingested:02d}-000"
            lake.put_manifest(
                Manifest(
                    batch_id,
                    "raw",
                    None,
                    "2024-01-01T00:00:00",
                    (ManifestFile("sales_order", f"raw/sales_order/{batch_id}/p", 3, "f"),),
                )
            )
            ids.append(batch_id)
        self.calls.append(("ingest", ",".join(ids)))
        # the real handler's answer: the chain reports it instead of listing the lake
        return {"batches": ids, "rows": {"sales_order": 3 * len(ids)}}

    def transform(self, event, context):
        key = event["Records"][0]["s3"]["object"]["key"]
        batch_id = batch_id_from_manifest_key(key.replace("%2F", "/"))
        self.calls.append(("transform", batch_id))
        self._lake("PROCESSED_BUCKET").put_manifest(
            Manifest(
                batch_id,
                "processed",
                None,
                "2024-01-01T00:00:00",
                (ManifestFile("fact_sales_order", f"processed/x/{batch_id}/p", 3, "f"),),
                source_batch_id=batch_id,
                extra={"hi_utc": "2024-01-01T00:00:00+00:00"},
            )
        )
        return {"batch_id": batch_id}

    def load(self, event, context):
        key = event["Records"][0]["s3"]["object"]["key"]
        self.calls.append(("load", batch_id_from_manifest_key(key.replace("%2F", "/"))))
        return {"loaded": True}

    def handlers(self) -> dict:
        return {"ingest": self.ingest, "transform": self.transform, "load": self.load}


def make_chain(names, fakes, **kwargs) -> LocalChain:
    chain = LocalChain(
        os.environ["AWS_ENDPOINT_URL"], names, DUMMY, DUMMY, handlers=fakes.handlers(), **kwargs
    )
    chain.prepare(migrate=False)
    return chain


def test_a_cycle_routes_every_batch_through_transform_and_load_once(names):
    fakes = FakeStages(batches_per_ingest=2)
    chain = make_chain(names, fakes)

    report = chain.run_cycle()

    b1, b2 = "20240101T000000000001-000", "20240101T000000000002-000"
    assert report.ok
    assert sorted(fakes.calls) == sorted(
        [
            ("ingest", f"{b1},{b2}"),
            ("transform", b1),
            ("transform", b2),
            ("load", b1),
            ("load", b2),
        ]
    )
    assert {s: sorted(r.batches) for s, r in report.stages.items()} == {
        "ingest": [b1, b2],
        "transform": [b1, b2],
        "load": [b1, b2],
    }
    assert report.stages["ingest"].rows == {"sales_order": 6}
    assert report.stages["transform"].rows == {"fact_sales_order": 6}
    assert chain.pending() == {names.transform_queue: 0, names.load_queue: 0}


def test_handlers_run_in_the_function_environment_which_is_restored_afterwards(names):
    fakes = FakeStages()
    chain = make_chain(names, fakes)
    before = dict(os.environ)

    chain.run_cycle()

    assert fakes.envs == [{"POWERTOOLS_SERVICE_NAME": "ingest", "RAW_BUCKET": names.raw_bucket}]
    assert dict(os.environ) == before


def test_a_failing_event_is_retried_and_succeeds_on_its_third_attempt(names):
    fakes = FakeStages()
    attempts = []

    def flaky_transform(event, context):
        attempts.append(context.aws_request_id)
        if len(attempts) < 3:
            raise RuntimeError("transient")
        return fakes.transform(event, context)

    chain = make_chain(names, fakes)
    chain._handlers["transform"] = flaky_transform

    report = chain.run_cycle()

    assert report.ok
    assert len(set(attempts)) == 3  # three invocations, each its own request
    assert report.stages["transform"].invocations == 3
    assert report.stages["load"].batches == ["20240101T000000000001-000"]
    assert chain.failures() == []


def test_an_event_failing_three_times_lands_on_the_failure_queue_naming_stage_and_batch(names):
    fakes = FakeStages(batches_per_ingest=2)
    bad = "20240101T000000000001-000"

    def load_rejecting_one(event, context):
        if bad in event["Records"][0]["s3"]["object"]["key"]:
            raise ValueError("warehouse says no")
        return fakes.load(event, context)

    chain = make_chain(names, fakes)
    chain._handlers["load"] = load_rejecting_one

    report = chain.run_cycle()

    assert not report.ok
    assert [str(f) for f in report.failures] == [
        f"load failed for batch {bad} after 3 attempt(s): ValueError: warehouse says no"
    ]
    assert report.stages["load"].batches == ["20240101T000000000002-000"]
    [record] = chain.failures()
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["responsePayload"]["errorType"] == "ValueError"
    assert bad in json.dumps(record["requestPayload"])
    assert chain.pending() == {names.transform_queue: 0, names.load_queue: 0}


def test_a_failing_ingest_is_reported_and_nothing_downstream_runs(names):
    fakes = FakeStages()

    def ingest_down(event, context):
        raise ConnectionError("source unreachable")

    chain = make_chain(names, fakes)
    chain._handlers["ingest"] = ingest_down

    report = chain.run_cycle()

    assert [(f.stage, f.attempts) for f in report.failures] == [("ingest", 3)]
    assert fakes.calls == []
    assert "ConnectionError: source unreachable" in report.format()


def test_the_delivery_hook_may_reorder_and_repeat_events(names):
    fakes = FakeStages(batches_per_ingest=3)

    def deliver(stage, deliveries):
        repeat = (1, 2) if stage == "load" else (1,)
        return [d for d in reversed(deliveries) for _ in repeat]

    chain = make_chain(names, fakes, deliver=deliver)

    chain.run_cycle()

    b1, b2, b3 = (f"20240101T00000000000{i}-000" for i in (1, 2, 3))
    # transforms see 3, 2, 1, so their manifests queue 3, 2, 1 and loads see them reversed again
    assert [c for c in fakes.calls if c[0] != "ingest"] == [
        ("transform", b3),
        ("transform", b2),
        ("transform", b1),
        *[("load", b) for b in (b1, b1, b2, b2, b3, b3)],
    ]


def test_the_lambda_context_counts_down_from_the_function_timeout():
    context = context_for("load")
    assert context.function_name == "totes-load-local"
    assert context.invoked_function_arn.endswith(":function:totes-load-local")
    assert 0 < context.get_remaining_time_in_millis() <= 900_000


def test_emf_metric_lines_are_parsed_with_their_table_dimension():
    line = json.dumps(
        {
            "_aws": {
                "Timestamp": 1,
                "CloudWatchMetrics": [
                    {
                        "Namespace": "TerrificTotes",
                        "Dimensions": [["service", "table"]],
                        "Metrics": [{"Name": "LoadRowsInserted", "Unit": "Count"}],
                    }
                ],
            },
            "service": "load",
            "table": "fact_payment",
            "LoadRowsInserted": [5.0, 2.0],
        }
    )
    metrics = parse_emf(f"not json\n{line}\n")
    assert [(m.name, m.value, m.dimensions) for m in metrics] == [
        ("LoadRowsInserted", 5.0, {"service": "load", "table": "fact_payment"}),
        ("LoadRowsInserted", 2.0, {"service": "load", "table": "fact_payment"}),
    ]


def test_environment_restores_unset_and_changed_variables():
    os.environ.pop("TOTES_X", None)
    with environment({"TOTES_X": "1"}):
        assert os.environ["TOTES_X"] == "1"
    assert "TOTES_X" not in os.environ
