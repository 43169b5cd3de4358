"""Reading a failure-queue record as Lambda's on-failure destination writes it on AWS (and the
local chain copies): stage, batch, error, attempts and age, whatever the stack is called."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from totes_tools.failures import FailureRecord, age, drop_hint


def aws_record(function: str, bucket: str = "prod-processed", key: str = "manifests/x.json"):
    return {
        "version": "1.0",
        "timestamp": "2024-11-15T10:00:00.000Z",
        "requestContext": {
            "requestId": "e7b5",
            "functionArn": f"arn:aws:lambda:eu-west-2:111122223333:function:{function}:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3,
        },
        "requestPayload": {
            "Records": [{"s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]
        },
        "responsePayload": {"errorMessage": "batch x: cannot read", "errorType": "LoadFailed"},
    }


@pytest.mark.parametrize(
    ("function", "stage"),
    [
        ("totes-prod-load", "load"),
        ("load-test-transform", "transform"),  # a stack named after a stage
        ("totes-load-local", "load"),  # the local chain's names
        ("upload-stack-ingest", "ingest"),
    ],
)
def test_the_stage_comes_from_the_function_name_whatever_the_stack_is_called(function, stage):
    assert FailureRecord(aws_record(function)).stage == stage


def test_a_record_reads_as_batch_error_attempts_and_time():
    key = "manifests/c0000000000000000755-001.json"
    record = FailureRecord(aws_record("totes-prod-load", key=key.replace("/", "%2F")))

    assert (
        record.objects,
        record.batch_ids,
        record.batch,
        record.error_type,
        record.error_message,
        record.attempts,
        record.failed_at,
        record.reported,
    ) == (
        [("prod-processed", key)],
        ["c0000000000000000755-001"],
        "c0000000000000000755-001",
        "LoadFailed",
        "batch x: cannot read",
        3,
        datetime(2024, 11, 15, 10, tzinfo=UTC),
        False,
    )


def test_a_scheduled_ingest_record_names_no_batch_and_a_foreign_body_reads_as_unknown():
    ingest = aws_record("totes-prod-ingest")
    ingest["requestPayload"] = {"source": "aws.scheduler", "detail": "{}"}

    assert (FailureRecord(ingest).objects, FailureRecord(ingest).batch) == ([], "-")
    junk = FailureRecord({"unreadable": True})
    assert (junk.stage, junk.batch, junk.error_type, junk.attempts, junk.failed_at) == (
        "ingest",
        "-",
        "?",
        None,
        None,
    )


def test_ages_and_the_drop_hint():
    now = datetime(2024, 11, 15, 12, tzinfo=UTC)
    ages = [
        age(datetime(2024, 11, 15, 11, 59, 15, tzinfo=UTC), now),
        age(datetime(2024, 11, 15, 11, 15, tzinfo=UTC), now),
        age(datetime(2024, 11, 15, 9, 50, tzinfo=UTC), now),
        age(datetime(2024, 11, 12, 7, tzinfo=UTC), now),
        age(None, now),
    ]

    assert ages == ["45 s", "45 min", "2 h 10 min", "3 d 5 h", "?"]
    assert drop_hint("b1", None, "https://sqs.eu-west-2.amazonaws.com/1/q") == (
        "python -m totes failures drop --batch b1 --queue-url https://sqs.eu-west-2.amazonaws.com/1/q"
    )
    assert drop_hint("b1", "http://127.0.0.1:5055", None) == (
        "python -m totes failures drop --batch b1 --endpoint-url http://127.0.0.1:5055"
    )
