"""The Iceberg target on one machine: its resources in the emulator, wired as the template wires
them, and the tables read back for checks, the demo and measurements.

On AWS the processed bucket sends its events to EventBridge and a rule invokes the Iceberg
function for each processed manifest (``template.yaml``, ``IcebergManifestRule``). moto cannot
run Lambda code without Docker, so here the rule's target is an SQS queue the local chain
drains into the same handler, which receives the same EventBridge event shape. The catalog is
Glue in the emulator (as on AWS); the tables' files go to the emulated S3.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from totes.iceberg.settings import IcebergSettings
from totes.identifiers import quote, quote_all
from totes.lake import MANIFEST_PREFIX, MANIFEST_SUFFIX
from totes.star.model import STAR_TABLES, StarTable
from totes_tools.local.aws import REGION, StackNames, client


@dataclass(frozen=True)
class IcebergNames:
    """The Iceberg target's resources of one local stack, named after its processed bucket so
    stacks sharing one emulator never share them."""

    bucket: str
    queue: str
    failure_queue: str
    database: str
    rule: str

    @classmethod
    def of(cls, names: StackNames) -> IcebergNames:
        base = names.processed_bucket
        return cls(
            bucket=f"{base}-iceberg",
            queue=f"{names.load_queue}-iceberg",
            failure_queue=f"{names.failure_queue}-iceberg",
            database=re.sub(r"[^a-z0-9_]", "_", base.lower()) + "_star",
            rule=f"{base}-manifests",
        )

    def function_env(self, names: StackNames) -> dict[str, str]:
        """The environment the template gives the Iceberg function, pointed at these."""
        return {
            "PROCESSED_BUCKET": names.processed_bucket,
            "IDEMPOTENCY_TABLE": names.idempotency_table,
            "ICEBERG_WAREHOUSE": f"s3://{self.bucket}/warehouse",
            "ICEBERG_DATABASE": self.database,
        }

    def settings(self, names: StackNames) -> IcebergSettings:
        return IcebergSettings.from_env(self.function_env(names))


def manifest_pattern(processed_bucket: str) -> dict:
    """The template's rule pattern: every processed manifest's "Object Created" event."""
    return {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {
            "bucket": {"name": [processed_bucket]},
            "object": {"key": [{"wildcard": f"{MANIFEST_PREFIX}*{MANIFEST_SUFFIX}"}]},
        },
    }


def create_iceberg_resources(endpoint_url: str, names: StackNames, iceberg: IcebergNames) -> None:
    """The Iceberg bucket, the Glue database, the processed bucket's EventBridge switch and
    the rule whose target (here a queue) receives every processed manifest's event."""
    s3 = client("s3", endpoint_url)
    sqs = client("sqs", endpoint_url)
    events = client("events", endpoint_url)
    glue = client("glue", endpoint_url)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(
            Bucket=iceberg.bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
    with contextlib.suppress(glue.exceptions.AlreadyExistsException):
        glue.create_database(DatabaseInput={"Name": iceberg.database})
    sqs.create_queue(QueueName=iceberg.failure_queue)
    queue_url = sqs.create_queue(QueueName=iceberg.queue)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    events.put_rule(
        Name=iceberg.rule,
        EventPattern=json.dumps(manifest_pattern(names.processed_bucket)),
        State="ENABLED",
    )
    events.put_targets(Rule=iceberg.rule, Targets=[{"Id": "iceberg", "Arn": queue_arn}])
    config = s3.get_bucket_notification_configuration(Bucket=names.processed_bucket)
    config.pop("ResponseMetadata", None)
    if "EventBridgeConfiguration" not in config:
        config["EventBridgeConfiguration"] = {}
        s3.put_bucket_notification_configuration(
            Bucket=names.processed_bucket, NotificationConfiguration=config
        )


def read_tables(
    settings: IcebergSettings, names: list[str] | None = None, endpoint_url: str | None = None
) -> dict[str, pa.Table]:
    """Every row of the Iceberg tables (or of ``names``), as Arrow, from the catalog."""
    from totes.iceberg.catalog import open_catalog
    from totes.iceberg.commit import read_all
    from totes.iceberg.tables import all_tables

    catalog = open_catalog(settings, endpoint_url)
    schemas = all_tables()
    out = {}
    for name in names or list(schemas):
        table = catalog.load_table((settings.database, name))
        out[name] = read_all(table, schemas[name].as_arrow())
    return out


# -- the two targets compared ---------------------------------------------------------------------


def _comparable(value: object) -> object:
    """A warehouse value as the Iceberg table holds it (times as ``HH:MM:SS.mmm`` text)."""
    if isinstance(value, dt.time):
        return f"{value:%H:%M:%S}.{value.microsecond // 1000:03d}"
    return value


def warehouse_rows(con, table: StarTable) -> Counter:
    """The warehouse table's rows, in the Iceberg table's columns (facts without their
    warehouse-assigned ``*_record_id``), as a multiset of tuples."""
    from totes.iceberg.tables import star_schema

    names = [f.name for f in star_schema(table).fields]
    rows = con.run(f"SELECT {quote_all(names)} FROM {quote(table.name)}")  # noqa: S608  # nosec B608
    return Counter(tuple(_comparable(v) for v in row) for row in rows)


def iceberg_rows(data: pa.Table) -> Counter:
    return Counter(tuple(row.values()) for row in data.to_pylist())


def differences(con, tables: dict[str, pa.Table]) -> dict[str, str]:
    """Per star table, how the warehouse and the Iceberg table differ (nothing when equal):
    row counts and the keys of the rows only one side holds."""
    out = {}
    for table in STAR_TABLES:
        warehouse = warehouse_rows(con, table)
        iceberg = iceberg_rows(tables[table.name])
        if warehouse == iceberg:
            continue
        only_warehouse = sorted({row[0] for row in warehouse - iceberg}, key=str)
        only_iceberg = sorted({row[0] for row in iceberg - warehouse}, key=str)
        out[table.name] = (
            f"warehouse {sum(warehouse.values())} rows, Iceberg {sum(iceberg.values())};"
            f" keys only in the warehouse {only_warehouse[:10]},"
            f" only in Iceberg {only_iceberg[:10]}"
        )
    return out
