"""The failure queue: what it holds, which records can never succeed, and dropping them.

When an asynchronous invocation of transform or load fails three times, Lambda's on-failure
destination (the local chain does the same) sends one record to the failure queue: the S3
event under ``requestPayload``, the error under ``responsePayload``, the attempts under
``requestContext``. Redriving a record re-runs its batch, which heals any passing fault (the
warehouse was down). It cannot heal a batch whose data is gone: a manifest deleted from the
lake, or a file it lists, fails the same way on every redrive. Such a record is "gone": the
local chain reports it once and no longer redrives it (``LocalChain.replay_failures``), and
the operator drops it with ``python -m totes failures drop --batch ID`` (or ``--gone``). A
record whose data still exists is redrivable, so ``drop --batch`` keeps it unless ``--force``.

``python -m totes failures list`` and ``drop`` work against the local emulator
(``--endpoint-url``) or AWS (``--queue-url``, the stack's ``FailureQueueUrl``; boto3's usual
credentials). Reading the queue hides each message for a moment (that is how SQS hands them
out); every message not dropped is made visible again before the command ends.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

from totes.errors import ConfigurationError, TotesError
from totes.lake import Manifest, batch_id_from_manifest_key

STAGES = ("ingest", "transform", "load")
# The message attribute the local chain puts on a gone record it has reported, so later
# cycles keep it on the queue without reporting it again.
REPORTED_ATTRIBUTE = "totes-gone-reported"
# How long a scan hides the messages it has seen, so each is seen once per scan.
SCAN_HOLD_SECONDS = 60
_MISSING = {"NoSuchKey", "404", "NotFound"}
_SQS_HOST = re.compile(r"^https://sqs\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/")
ERROR_SHOWN = 300  # characters of an error message printed by ``list``


@dataclass(frozen=True)
class FailureRecord:
    """One record of the failure queue and the SQS message that carries it."""

    body: dict[str, Any]
    receipt: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def event(self) -> dict[str, Any]:
        payload = self.body.get("requestPayload")
        return payload if isinstance(payload, dict) else {}

    @property
    def objects(self) -> list[tuple[str, str]]:
        """(bucket, key) of each S3 object the event names (the manifests); none for ingest."""
        out = []
        for record in self.event.get("Records") or ():
            try:
                s3 = record["s3"]
                out.append((s3["bucket"]["name"], unquote_plus(s3["object"]["key"])))
            except (KeyError, TypeError):
                continue
        return out

    @property
    def stage(self) -> str:
        """The function that failed, from its ARN (``<stack>-load``, ``totes-load-local``)."""
        arn = str((self.body.get("requestContext") or {}).get("functionArn") or "")
        parts = arn.split(":")
        name = parts[6] if len(parts) > 6 else arn
        for token in reversed(name.split("-")):
            if token in STAGES:
                return token
        return "ingest" if not self.objects else "?"

    @property
    def batch_ids(self) -> list[str]:
        ids = []
        for _, key in self.objects:
            try:
                ids.append(batch_id_from_manifest_key(key))
            except ValueError:
                ids.append(key)
        return ids

    @property
    def batch(self) -> str:
        return ",".join(self.batch_ids) or "-"

    @property
    def error_type(self) -> str:
        return str((self.body.get("responsePayload") or {}).get("errorType") or "?")

    @property
    def error_message(self) -> str:
        return str((self.body.get("responsePayload") or {}).get("errorMessage") or "")

    @property
    def attempts(self) -> int | None:
        count = (self.body.get("requestContext") or {}).get("approximateInvokeCount")
        return count if isinstance(count, int) else None

    @property
    def failed_at(self) -> datetime | None:
        try:
            stamp = datetime.fromisoformat(str(self.body.get("timestamp")))
        except ValueError:
            return None
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)

    @property
    def reported(self) -> bool:
        """The local chain has already reported this record as gone."""
        return REPORTED_ATTRIBUTE in self.attributes


def missing_data(s3, record: FailureRecord) -> str | None:
    """What of the record's batch no longer exists: its manifest, or a file the manifest lists
    (``s3://bucket/key``); None when everything is there, or the record names no objects.
    A manifest that exists but cannot be read is not "gone": the stage reports that itself."""
    for bucket, key in record.objects:
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return f"s3://{bucket}/{key} no longer exists"
            raise
        try:
            manifest = Manifest.from_json(body)
        except (ValueError, TypeError, AttributeError):
            continue
        for entry in manifest.files:
            try:
                s3.head_object(Bucket=bucket, Key=entry.key)
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    return f"s3://{bucket}/{entry.key} (a file of {key}) no longer exists"
                raise
    return None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "?"))


class FailureQueue:
    """The failure queue through a boto3 SQS client."""

    def __init__(self, sqs, url: str):
        self.sqs = sqs
        self.url = url

    def receive_all(self, hold_seconds: int = SCAN_HOLD_SECONDS, wait_seconds: int = 0):
        """Every record on the queue, each hidden for ``hold_seconds`` (so seen once); release
        or delete each afterwards."""
        out: list[FailureRecord] = []
        while True:
            messages = self.sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=hold_seconds,
                WaitTimeSeconds=wait_seconds,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not messages:
                return out
            for message in messages:
                try:
                    body = json.loads(message["Body"])
                except ValueError:
                    body = {"unreadable": True}
                if not isinstance(body, dict):
                    body = {"unreadable": True}
                out.append(
                    FailureRecord(
                        body, message["ReceiptHandle"], message.get("MessageAttributes") or {}
                    )
                )

    def release(self, record: FailureRecord) -> None:
        """Make a received record visible again at once."""
        self.sqs.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=record.receipt, VisibilityTimeout=0
        )

    def delete(self, record: FailureRecord) -> None:
        self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=record.receipt)

    def keep_reported(self, record: FailureRecord) -> None:
        """Keep a gone record on the queue, marked as reported (SQS cannot change a message's
        attributes, so the same body goes back with the mark and the received one is
        deleted)."""
        if record.reported:
            self.release(record)
            return
        stamp = datetime.now(UTC).isoformat()
        self.sqs.send_message(
            QueueUrl=self.url,
            MessageBody=json.dumps(record.body, default=str),
            MessageAttributes={
                **{
                    k: {"DataType": v["DataType"], "StringValue": v["StringValue"]}
                    for k, v in record.attributes.items()
                    if "StringValue" in v
                },
                REPORTED_ATTRIBUTE: {"DataType": "String", "StringValue": stamp},
            },
        )
        self.delete(record)


def drop_hint(batch_id: str, endpoint_url: str | None, queue_url: str | None) -> str:
    """The command that drops ``batch_id``'s records (what a gone report tells the operator)."""
    command = f"python -m totes failures drop --batch {batch_id}"
    if endpoint_url:
        command += f" --endpoint-url {endpoint_url}"
    if queue_url:
        command += f" --queue-url {queue_url}"
    return command


def age(failed_at: datetime | None, now: datetime) -> str:
    if failed_at is None:
        return "?"
    seconds = max(0, int((now - failed_at).total_seconds()))
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} {seconds % size // smaller_size} {smaller}"
    if seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


# -- the CLI ---------------------------------------------------------------------------------


def _clients(args):
    """(sqs, s3, queue url) for the emulator (``--endpoint-url``) or AWS."""
    import boto3

    queue_url = args.queue_url or os.environ.get("FAILURE_QUEUE_URL")
    if args.endpoint_url:
        from totes_tools.local.aws import LOCAL_ENV, StackNames, client, environment

        with environment(LOCAL_ENV):  # the emulator's dummy credentials
            sqs, s3 = client("sqs", args.endpoint_url), client("s3", args.endpoint_url)
        if not queue_url:
            try:
                queue_url = sqs.get_queue_url(QueueName=StackNames().failure_queue)["QueueUrl"]
            except ClientError as exc:
                raise TotesError(
                    f"no failure queue {StackNames().failure_queue!r} at {args.endpoint_url}"
                    f" ({_code(exc)}): has `python -m totes run` used this emulator?"
                ) from None
        return sqs, s3, queue_url
    if not queue_url:
        raise ConfigurationError(
            "which failure queue? pass --queue-url (the stack's FailureQueueUrl output) or set"
            " FAILURE_QUEUE_URL"
        )
    match = _SQS_HOST.match(queue_url)
    region = {"region_name": match[1]} if match else {}
    return boto3.client("sqs", **region), boto3.client("s3"), queue_url


def _describe(record: FailureRecord, s3, now: datetime) -> list[str]:
    attempts = record.attempts if record.attempts is not None else "?"
    message = " ".join(record.error_message.split())
    if len(message) > ERROR_SHOWN:
        message = message[:ERROR_SHOWN] + "..."
    lines = [
        f"  {record.stage:<9} {record.batch:<26} attempts {attempts},"
        f" failed {age(record.failed_at, now)} ago",
        f"    {record.error_type}: {message}",
    ]
    if record.objects:
        gone = missing_data(s3, record)
        lines.append(f"    data: GONE ({gone})" if gone else "    data: present")
    return lines


def list_command(args) -> int:
    """``python -m totes failures list``: every record, its stage, batch, error, attempts, age
    and whether its data still exists. The queue is left as it was."""
    sqs, s3, url = _clients(args)
    queue = FailureQueue(sqs, url)
    records = queue.receive_all(wait_seconds=0 if args.endpoint_url else 1)
    try:
        now = datetime.now(UTC)
        print(f"failure queue {url}: {len(records)} record(s)", flush=True)
        for record in sorted(records, key=lambda r: (r.batch, r.stage)):
            print("\n".join(_describe(record, s3, now)), flush=True)
    finally:
        for record in records:
            queue.release(record)
    return 0


def drop_command(args) -> int:
    """``python -m totes failures drop --batch ID | --gone``: delete those records; every
    other record is left on the queue. ``--batch`` keeps (exit 1) a record whose data still
    exists unless ``--force``: its redrive would load the batch, and a dropped batch is lost
    for good. Exit 1 when ``--batch`` matched none."""
    sqs, s3, url = _clients(args)
    queue = FailureQueue(sqs, url)
    records = queue.receive_all(wait_seconds=0 if args.endpoint_url else 1)
    force = getattr(args, "force", False)
    dropped: list[tuple[FailureRecord, str]] = []
    refused: list[FailureRecord] = []  # asked for, but its data is there: a redrive loads it
    try:
        for record in records:
            if args.batch is not None:
                if args.batch not in record.batch_ids:
                    continue
                why = "asked for"
                if record.objects and not force and missing_data(s3, record) is None:
                    refused.append(record)
                    continue
            else:
                why = missing_data(s3, record)
            if why:
                queue.delete(record)
                dropped.append((record, why))
    finally:
        kept = [r for r in records if all(r is not d for d, _ in dropped)]
        for record in kept:
            queue.release(record)
    for record, why in dropped:
        reason = "" if args.batch is not None else f" ({why})"
        print(f"dropped {record.stage} batch {record.batch}{reason}", flush=True)
    print(f"{len(dropped)} record(s) dropped, {len(kept)} left on {url}", flush=True)
    for record in refused:
        print(
            f"error: {record.stage} batch {record.batch}: its data is still in the lake, so a"
            " redrive (the next `python -m totes run`, or invoking the function with its"
            " payload) can load it; dropping it loses the batch for good (its deletions and"
            " fact versions never arrive again, and no rebuild holds them). Kept; pass --force"
            " to drop it anyway (e.g. once a redrive by hand has loaded it)",
            file=sys.stderr,
        )
    if refused:
        return 1
    if args.batch is not None and not dropped:
        print(f"error: no record of batch {args.batch} on the failure queue", file=sys.stderr)
        return 1
    return 0
