"""Local AWS: a moto server on 127.0.0.1 and the stack's resources created inside it.

moto cannot run Lambda code without Docker, so bucket notifications go S3 -> SQS (with the
template's own prefix/suffix filters) and the local chain hands each message to the handler,
which receives the same S3 event shape as on AWS.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import boto3

from totes.db import DbCredentials
from totes.lake import MANIFEST_PREFIX, MANIFEST_SUFFIX

REGION = "eu-west-2"
# Dummy credentials for the emulator only; they are not secrets.
LOCAL_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # nosec B105
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


@dataclass(frozen=True)
class StackNames:
    """Resource names of one local stack (mirrors the template's resources)."""

    raw_bucket: str = "totes-raw-local"
    processed_bucket: str = "totes-processed-local"
    transform_queue: str = "totes-raw-manifests"
    load_queue: str = "totes-processed-manifests"
    failure_queue: str = "totes-failures"
    idempotency_table: str = "totes-idempotency"
    source_secret: str = "totes/source-db"  # noqa: S105 - a name, not a secret
    warehouse_secret: str = "totes/warehouse-db"  # noqa: S105

    @classmethod
    def tagged(cls, tag: str, suffix: str) -> StackNames:
        """Names of a further stack in the same emulator, ``tag`` and ``suffix`` around each."""
        return cls(
            raw_bucket=f"{tag}-raw-{suffix}",
            processed_bucket=f"{tag}-processed-{suffix}",
            transform_queue=f"{tag}-raw-manifests-{suffix}",
            load_queue=f"{tag}-processed-manifests-{suffix}",
            failure_queue=f"{tag}-failures-{suffix}",
            idempotency_table=f"{tag}-idempotency-{suffix}",
            source_secret=f"{tag}-source-db-{suffix}",
            warehouse_secret=f"{tag}-warehouse-db-{suffix}",
        )

    def function_env(self) -> dict[str, str]:
        """The environment the template gives the functions, pointed at these resources."""
        return {
            "RAW_BUCKET": self.raw_bucket,
            "PROCESSED_BUCKET": self.processed_bucket,
            "IDEMPOTENCY_TABLE": self.idempotency_table,
            "SOURCE_SECRET_ID": self.source_secret,
            "WAREHOUSE_SECRET_ID": self.warehouse_secret,
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(port: int | None = None) -> Iterator[str]:
    """A ThreadedMotoServer on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def aws_environment(endpoint_url: str) -> Iterator[None]:
    """Point every boto3 client (ours and Powertools') at the emulator, then restore."""
    with environment({**LOCAL_ENV, "AWS_ENDPOINT_URL": endpoint_url}):
        yield


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them exactly."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client(service: str, endpoint_url: str | None = None):
    return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION)


def create_stack_resources(
    endpoint_url: str,
    names: StackNames = StackNames(),
    source: DbCredentials | None = None,
    warehouse: DbCredentials | None = None,
) -> StackNames:
    """Create (or keep) the buckets, notification queues, idempotency table and secrets."""
    s3 = client("s3", endpoint_url)
    sqs = client("sqs", endpoint_url)
    ddb = client("dynamodb", endpoint_url)
    sm = client("secretsmanager", endpoint_url)

    sqs.create_queue(QueueName=names.failure_queue)
    for bucket, queue in (
        (names.raw_bucket, names.transform_queue),
        (names.processed_bucket, names.load_queue),
    ):
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
            )
        queue_url = sqs.create_queue(QueueName=queue)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": queue_arn,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {
                            "Key": {
                                "FilterRules": [
                                    {"Name": "prefix", "Value": MANIFEST_PREFIX},
                                    {"Name": "suffix", "Value": MANIFEST_SUFFIX},
                                ]
                            }
                        },
                    }
                ]
            },
        )

    with contextlib.suppress(ddb.exceptions.ResourceInUseException):
        ddb.create_table(
            TableName=names.idempotency_table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        ddb.update_time_to_live(
            TableName=names.idempotency_table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"},
        )

    for secret_name, creds in ((names.source_secret, source), (names.warehouse_secret, warehouse)):
        if creds is None:
            continue
        try:
            sm.create_secret(Name=secret_name, SecretString=creds.to_secret())
        except sm.exceptions.ResourceExistsException:
            sm.put_secret_value(SecretId=secret_name, SecretString=creds.to_secret())
    return names


def queue_url(endpoint_url: str, name: str) -> str:
    return client("sqs", endpoint_url).get_queue_url(QueueName=name)["QueueUrl"]


def receive_s3_events(
    endpoint_url: str, queue: str, wait_seconds: int = 0
) -> list[tuple[dict, str]]:
    """Pending S3 notification messages on ``queue`` as (S3 event dict, receipt handle);
    moto's ``s3:TestEvent`` messages are deleted and skipped."""
    sqs = client("sqs", endpoint_url)
    url = queue_url(endpoint_url, queue)
    out: list[tuple[dict, str]] = []
    while True:
        resp = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
        )
        messages = resp.get("Messages", [])
        if not messages:
            return out
        for message in messages:
            body = json.loads(message["Body"])
            if body.get("Event") == "s3:TestEvent":
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                continue
            out.append((body, message["ReceiptHandle"]))
        wait_seconds = 0
