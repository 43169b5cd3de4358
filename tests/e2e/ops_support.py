"""What the operations tests need of the emulator's insides (moto's in-process backends: the
test process runs the moto server, so its state is the same objects): time made to pass for
objects and messages, lifecycle rules applied, many objects injected without a request each,
and S3 requests counted per client with a botocore event hook."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.sqs.models import sqs_backends

from totes.stages import runtime
from totes_tools.local.aws import REGION


def s3_backend():
    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def objects(bucket: str) -> dict[str, object]:
    """The current version of every object of ``bucket`` (key -> moto FakeKey)."""
    return dict(s3_backend().get_bucket(bucket).keys.items())


def age_objects(bucket: str, days: float, prefix: str = "") -> None:
    """Make ``days`` pass for every current object under ``prefix``."""
    for key, fake in objects(bucket).items():
        if key.startswith(prefix):
            fake.last_modified = fake.last_modified - timedelta(days=days)


def apply_lifecycle(bucket: str, rules: list[Mapping], parameters: Mapping[str, int]) -> list[str]:
    """Expire what the template's lifecycle rules expire today (current versions whose age in
    days exceeds a rule's ``ExpirationInDays``, under its ``Prefix``); the keys removed."""
    now = datetime.now(UTC).replace(tzinfo=None)
    removed = []
    for rule in rules:
        if rule.get("Status") != "Enabled" or "ExpirationInDays" not in rule:
            continue
        days = rule["ExpirationInDays"]
        days = parameters[days["Ref"]] if isinstance(days, dict) else int(days)
        for key, fake in objects(bucket).items():
            modified = fake.last_modified.replace(tzinfo=None)
            if key.startswith(rule.get("Prefix", "")) and now - modified > timedelta(days=days):
                s3_backend().delete_object(bucket, key)
                removed.append(key)
    return sorted(removed)


def inject(bucket: str, keys: list[str], body: bytes) -> None:
    """Objects put straight into the backend: no request each, no notification."""
    backend = s3_backend()
    for key in keys:
        backend.put_object(bucket, key, body, disable_notification=True)


def forget(bucket: str, prefix: str) -> None:
    """Drop injected objects again (they hold memory for the rest of the session)."""
    backend = s3_backend()
    for key in [k for k in objects(bucket) if k.startswith(prefix)]:
        backend.delete_object(bucket, key)


def age_messages(queue: str, seconds: float) -> None:
    """Make ``seconds`` pass for every message on ``queue``."""
    for message in sqs_backends[DEFAULT_ACCOUNT_ID][REGION].queues[queue]._messages:
        message.sent_timestamp -= int(seconds * 1000)


@contextlib.contextmanager
def counted_s3_requests(monkeypatch, *clients) -> Iterator[collections.Counter]:
    """Count S3 requests by operation: of the stages' clients (``runtime.s3()``, built anew
    after each ``runtime.reset()``) and of any ``clients`` given."""
    counter: collections.Counter = collections.Counter()

    def count(model, **_):
        counter[model.name] += 1

    # The stages' clients come from boto3's default session (``runtime.session``): a handler
    # registered on it is copied into every client built afterwards.
    session = runtime.session()
    session.events.register("before-call.s3", count)
    runtime.reset()
    for client in clients:
        client.meta.events.register("before-call.s3", count)
    try:
        yield counter
    finally:
        session.events.unregister("before-call.s3", count)
        for client in clients:
            client.meta.events.unregister("before-call.s3", count)


def failure_records(chain) -> str:
    """The failure queue's records, left on the queue (visibility 0) for the next cycle."""
    url = chain._queue_url(chain.names.failure_queue)
    messages = chain.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0
    ).get("Messages", [])
    return "\n".join(m["Body"] for m in messages)
