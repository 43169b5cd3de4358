"""The deployed chain run on one machine: the same three handlers, the same S3 notifications,
the same retry rule, with moto standing in for AWS.

On AWS, EventBridge Scheduler invokes ingest; S3 ``ObjectCreated`` notifications on each
bucket's ``manifests/*.json`` invoke transform and load asynchronously; the template's async
config retries a failed event twice (three attempts) and then sends it to the on-failure
destination. moto cannot run Lambda code without Docker, so here the buckets notify SQS
queues (with the template's filters) and :class:`LocalChain` hands each queued S3 event to
the handler in-process, applying the same retry rule and sending exhausted events to the
local failure queue. Everything a handler reads (settings, secrets, the idempotency table)
comes from the emulator exactly as it would on AWS.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import io
import json
import logging
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote_plus

from aws_lambda_powertools.metrics.provider import cold_start

from totes.db import DbCredentials, connect
from totes.errors import SchemaDrift, TotesError
from totes.identifiers import quote
from totes.lake import MANIFEST_PREFIX, Lake, Manifest, batch_id_from_manifest_key, manifest_key
from totes.observability import logger
from totes.source.model import TABLES
from totes.stages import runtime
from totes_tools.local.aws import (
    REGION,
    StackNames,
    aws_environment,
    client,
    create_stack_resources,
    environment,
    moto_server,
)
from totes_tools.local.iceberg import IcebergNames, create_iceberg_resources
from totes_tools.ops import metricstore
from totes_tools.ops.metricstore import Datapoint
from totes_tools.repository import functions_dir, sam_dir

STAGES = ("ingest", "transform", "load")
# The template's EventInvokeConfig: MaximumRetryAttempts 2, i.e. up to three attempts.
MAX_RETRY_ATTEMPTS = 2
MAX_ATTEMPTS = MAX_RETRY_ATTEMPTS + 1
# The template's Timeout and MemorySize per function (tests/template checks they agree).
FUNCTION_TIMEOUT_SECONDS = {"ingest": 900, "transform": 300, "load": 900, "iceberg": 900}
FUNCTION_MEMORY_MB = {"ingest": 1769, "transform": 1769, "load": 1024, "iceberg": 2048}
# Longer than any function's timeout, so a slow handler never sees its event redelivered.
VISIBILITY_TIMEOUT_SECONDS = 15 * 60
ACCOUNT = "123456789012"

Handler = Callable[[dict, object], object]


@dataclass
class LambdaContext:
    """What Powertools reads from the Lambda context (logger keys, idempotency deadline)."""

    function_name: str
    memory_limit_in_mb: int = 1024
    timeout_seconds: float = 900.0
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = "local"
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        left = self.timeout_seconds - (time.monotonic() - self._started)
        return max(0, int(left * 1000))


def context_for(stage: str) -> LambdaContext:
    return LambdaContext(
        function_name=f"totes-{stage}-local",
        memory_limit_in_mb=FUNCTION_MEMORY_MB[stage],
        timeout_seconds=FUNCTION_TIMEOUT_SECONDS[stage],
    )


def load_handler(stage: str) -> Handler:
    """``functions/<stage>/app.py:handler``, imported by path (``functions`` is no package)."""
    path = functions_dir() / stage / "app.py"
    if not path.is_file():
        raise TotesError(f"the {stage} handler is missing: {path}")
    spec = importlib.util.spec_from_file_location(f"totes_local_{stage}_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


def schedule_event(now: datetime | None = None) -> dict:
    """The event EventBridge Scheduler sends ingest (``sam/events`` holds the template's)."""
    template_event = sam_dir() / "events" / "ingest_schedule.json"
    if template_event.is_file():
        event = json.loads(template_event.read_text())
    else:
        event = {
            "version": "0",
            "id": "",
            "detail-type": "Scheduled Event",
            "source": "aws.scheduler",
            "account": ACCOUNT,
            "time": "",
            "region": REGION,
            "resources": [f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/default/totes-ingest"],
            "detail": "{}",
        }
    now = now or datetime.now(UTC)
    # Whichever shape the template uses (EventBridge event, or the Scheduler target input
    # with its context attributes), stamp this invocation's time and id.
    for key in ("time", "scheduled-time"):
        if key in event:
            event[key] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    for key in ("id", "execution-id"):
        if key in event:
            event[key] = str(uuid.uuid4())
    return event


@dataclass(frozen=True)
class Delivery:
    """One S3 event taken from a notification queue."""

    stage: str
    event: dict
    receipt: str | None = None
    sent_at: float | None = None  # when the queue got it (SentTimestamp): the manifest landed

    @property
    def keys(self) -> list[str]:
        if "detail" in self.event:  # EventBridge (the Iceberg target's rule)
            return [unquote_plus(self.event["detail"]["object"]["key"])]
        return [unquote_plus(r["s3"]["object"]["key"]) for r in self.event.get("Records", ())]

    @property
    def batch_id(self) -> str:
        ids = []
        for key in self.keys:
            try:
                ids.append(batch_id_from_manifest_key(key))
            except ValueError:
                ids.append(key)
        return ",".join(ids) or "?"


@dataclass
class Failure:
    stage: str
    batch_id: str
    attempts: int
    error: str

    def __str__(self) -> str:
        return (
            f"{self.stage} failed for batch {self.batch_id} after {self.attempts} attempt(s):"
            f" {self.error}"
        )


@dataclass
class GoneFailure:
    """A record on the failure queue whose batch data no longer exists: redriving it can never
    succeed, so it is reported once (with the command that drops it) and not redriven."""

    stage: str
    batch_id: str
    missing: str
    command: str
    # The record itself, so the end of the cycle can see whether the data came back.
    record: object = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return (
            f"{self.stage} batch {self.batch_id} on the failure queue cannot be redriven: "
            f"{self.missing}. Drop it: {self.command}"
        )


@dataclass
class Metric:
    """One metric value a handler emitted (parsed from its EMF output)."""

    name: str
    value: float
    dimensions: dict[str, str]
    namespace: str = ""
    unit: str = ""


@dataclass
class StageReport:
    invocations: int = 0
    batches: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    rows_set_aside: int = 0  # rows quarantined alone (the rest of their batch flowed)
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    metrics: list[Metric] = field(default_factory=list)
    # Each invocation's (start, end) on the wall clock (``time.time``: comparable between
    # processes, so a pipelined run can tell how much its stages overlapped).
    spans: list[tuple[float, float]] = field(default_factory=list)
    # Per event handled: (batch id, when its manifest landed, first attempt's start, last
    # attempt's end), so a bench can replay the batches' timeline.
    deliveries: list[tuple[str, float | None, float, float]] = field(default_factory=list)

    def add_rows(self, counts: Mapping[str, int]) -> None:
        for table, n in counts.items():
            self.rows[table] = self.rows.get(table, 0) + int(n)

    def metric_total(self, name: str) -> dict[str, float]:
        """Sum of one metric per ``table`` dimension ("" when it has none)."""
        out: dict[str, float] = {}
        for m in self.metrics:
            if m.name == name:
                table = m.dimensions.get("table", "")
                out[table] = out.get(table, 0.0) + m.value
        return out


@dataclass
class CycleReport:
    """What one cycle did: per stage batches, rows per table and seconds; failures."""

    stages: dict[str, StageReport] = field(
        default_factory=lambda: {s: StageReport() for s in STAGES}
    )
    failures: list[Failure] = field(default_factory=list)
    gone: list[GoneFailure] = field(default_factory=list)  # reported once, not redriven
    freshness_seconds: float | None = None
    seconds: float = 0.0
    replayed: int = 0
    # Every datapoint of the cycle: the handlers' EMF and what AWS would publish about it
    # (Lambda errors and throttles, the failure queue's depth and oldest message's age).
    datapoints: list[Datapoint] = field(default_factory=list)
    failure_queue_oldest_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and not self.gone

    def format(self) -> str:
        lines = [f"cycle: {self.seconds:.2f} s" + ("" if self.ok else " (with failures)")]
        if self.replayed:
            lines.append(f"  redriven from the failure queue: {self.replayed} event(s)")
        for stage in [*STAGES, *(s for s in self.stages if s not in STAGES)]:
            report = self.stages[stage]
            extra = f", {len(report.quarantined)} quarantined" if report.quarantined else ""
            if report.rows_set_aside:
                extra += f", {report.rows_set_aside} rows set aside"
            lines.append(
                f"  {stage:<9} {len(report.batches)} batch(es){extra}, {report.seconds:.2f} s,"
                f" {sum(report.rows.values())} rows"
            )
            merged = {
                name: sum(report.metric_total(f"LoadRows{name.title()}").values())
                for name in ("inserted", "updated", "skipped")
            }
            if stage == "load" and any(merged.values()):
                lines.append("    " + ", ".join(f"{k} {int(v)}" for k, v in merged.items()))
            for table, n in sorted(report.rows.items()):
                lines.append(f"    {table:<22} {n:>10}")
        if self.freshness_seconds is not None:
            lines.append(f"  warehouse freshness: {self.freshness_seconds:.1f} s")
        if self.failure_queue_oldest_seconds is not None:
            lines.append(
                f"  failure queue: oldest event waiting {self.failure_queue_oldest_seconds:.0f} s"
            )
        lines.extend(f"  FAILED: {failure}" for failure in self.failures)
        lines.extend(f"  GONE: {gone}" for gone in self.gone)
        return "\n".join(lines)


def parse_emf(text: str) -> list[Metric]:
    """The metric values in Powertools' EMF lines; other lines are ignored."""
    return [_metric(p) for p in metricstore.from_emf(text)]


def _metric(point: Datapoint) -> Metric:
    return Metric(point.name, point.value, point.dimensions, point.namespace, point.unit)


class LocalChain:
    """The stack's resources in one emulator plus the three handlers, driven like AWS drives them.

    ``handlers`` replaces any stage's handler (tests inject faults this way) and ``deliver``
    may reorder or repeat the S3 events taken from a queue before they are handed over, as
    S3 and Lambda are allowed to. ``env`` adds function environment (e.g. batch sizes).
    ``warehouse`` is what the load's secret holds; ``owner`` (default: the same) is who
    migrates, a step of its own before any load, as the deploy's WarehouseMigration step is.
    """

    def __init__(
        self,
        endpoint_url: str,
        names: StackNames,
        source: DbCredentials,
        warehouse: DbCredentials,
        *,
        max_batch_rows: int | None = None,
        chunk_rows: int | None = None,
        env: Mapping[str, str] | None = None,
        handlers: Mapping[str, Handler] | None = None,
        deliver: Callable[[str, list[Delivery]], list[Delivery]] | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        metrics_path: Path | None = None,
        owner: DbCredentials | None = None,
        iceberg: bool = False,
    ):
        self.endpoint_url = endpoint_url
        self.names = names
        self.source = source
        self.warehouse = warehouse
        self.owner = owner or warehouse
        self.env = dict(env or {})
        if max_batch_rows is not None:
            self.env["INGEST_MAX_BATCH_ROWS"] = str(max_batch_rows)
        if chunk_rows is not None:
            self.env["INGEST_CHUNK_ROWS"] = str(chunk_rows)
        self._handlers = dict(handlers or {})
        self.deliver = deliver or (lambda stage, deliveries: deliveries)
        self.max_attempts = max_attempts
        self.s3 = client("s3", endpoint_url)
        self.sqs = client("sqs", endpoint_url)
        self.raw = Lake(self.s3, names.raw_bucket)
        self.processed = Lake(self.s3, names.processed_bucket)
        self._queue_urls: dict[str, str] = {}
        # The optional Iceberg target: a fourth handler fed by its own rule and queue.
        self.iceberg = IcebergNames.of(names) if iceberg else None
        self.stages = ("transform", "load", "iceberg") if iceberg else ("transform", "load")
        # Metrics: every cycle's datapoints, kept here and (with ``metrics_path``) appended
        # to that JSON-lines file, cycles numbered on from the file's last one.
        self.metrics_path = metrics_path
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.cycle = metricstore.last_cycle(metrics_path) + 1 if metrics_path else 0
        self.datapoints: list[Datapoint] = []
        self._names_written = False
        self._warm: set[str] = set()  # stages whose "container" has served an invocation

    # -- set-up -----------------------------------------------------------------------------

    def prepare(self, *, migrate: bool = True) -> None:
        """Create whatever resources are missing (secrets updated) and, as the owner,
        migrate the warehouse: the deploy's step before the functions go live (the load
        never migrates; it refuses a warehouse behind its code)."""
        create_stack_resources(self.endpoint_url, self.names, self.source, self.warehouse)
        if self.iceberg:
            create_iceberg_resources(self.endpoint_url, self.names, self.iceberg)
        self._fresh_clients()
        if migrate:
            self.migrate()

    def migrate(self) -> list:
        from totes.settings import DEFAULT_WAREHOUSE_SCHEMA, schema_name
        from totes.warehouse.migrations import migrate

        schema = schema_name(self.env.get("WAREHOUSE_SCHEMA", DEFAULT_WAREHOUSE_SCHEMA))
        con = connect(self.owner, application_name="totes-migrate")
        try:
            return migrate(con, schema)
        finally:
            con.close()

    @staticmethod
    def _fresh_clients() -> None:
        """A cold start: forget the settings, clients and secrets the stages cached in this
        process (``totes.stages.runtime`` owns them). A Lambda container never outlives its
        stack; a local process may drive several stacks (tests) or emulators one after
        another."""
        runtime.reset()

    def handler(self, stage: str) -> Handler:
        if stage not in self._handlers:
            with environment(self.function_env(stage)):  # a handler may read it at import
                self._handlers[stage] = load_handler(stage)
        return self._handlers[stage]

    def function_env(self, stage: str) -> dict[str, str]:
        iceberg = {}
        if self.iceberg and stage == "iceberg":
            iceberg = self.iceberg.function_env(self.names)
        elif self.iceberg and stage == "ingest":  # it reads the target's committed marker
            iceberg = {"ICEBERG_BUCKET": self.iceberg.bucket}
        return {
            **self.names.function_env(),
            **iceberg,
            "POWERTOOLS_SERVICE_NAME": stage,
            "AWS_LAMBDA_FUNCTION_NAME": f"totes-{stage}-local",
            **self.env,
        }

    # -- one cycle ----------------------------------------------------------------------------

    def run_cycle(self, report: CycleReport | None = None) -> CycleReport:
        """Redrive earlier failed events, ingest once on a scheduler event, then route
        notifications until none is pending; then record the cycle's metrics (one cycle
        stands for one scheduled run), with those of ``report`` (what else ran in that
        period: ``maintain_iceberg``'s report)."""
        report = report or CycleReport()
        started = time.monotonic()
        self.replay_failures(report)
        self.ingest(report)
        self.drain(report)
        self.recheck_gone(report)
        self.warehouse_freshness(report)
        report.seconds = time.monotonic() - started
        self.end_cycle(report)
        return report

    def warehouse_freshness(self, report: CycleReport) -> None:
        """After a cycle that loaded: the warehouse's freshness from the loaded marker (the
        newest capture its ledger holds, as load's own ``WarehouseFreshnessSeconds`` says),
        not from the last batch handled, which a redrive makes an old one."""
        from totes.freshness import read_marker, seconds_since

        if report.freshness_seconds is None:
            return
        marker = read_marker(self.processed)
        if marker is not None:
            report.freshness_seconds = seconds_since(marker.hi_utc)

    def recheck_gone(self, report: CycleReport) -> None:
        """Forget the gone reports whose data this cycle wrote again: a replayed raw batch
        (``python -m totes replay``) is transformed after the failure queue was read, so its
        load record looked gone then; it stays on the queue, and the next cycle redrives it
        (the ledger acknowledges the batch this cycle loaded) and deletes it."""
        from totes_tools.failures import FailureRecord, missing_data

        report.gone = [
            gone
            for gone in report.gone
            if not isinstance(gone.record, FailureRecord) or missing_data(self.s3, gone.record)
        ]

    def ingest(self, report: CycleReport | None = None) -> CycleReport:
        """One scheduled ingest run; its batches and rows are the handler's answer (nothing
        is listed: a listing of the lake grows with its age)."""
        report = report or CycleReport()
        self._fresh_clients()
        outcome = self._invoke("ingest", schedule_event(), "next window", report)
        stage = report.stages["ingest"]
        if outcome is _FAILED:
            logger.warning("ingest failed", extra={"failure": str(report.failures[-1])})
        elif isinstance(outcome, dict):
            stage.batches.extend(outcome.get("batches", []))
            stage.add_rows(outcome.get("rows", {}))
        return report

    def end_cycle(self, report: CycleReport) -> None:
        """What AWS would publish about the failure queue at the end of this cycle
        (``ApproximateNumberOfMessagesVisible``, ``ApproximateAgeOfOldestMessage``), then the
        cycle's datapoints kept and, with ``metrics_path``, appended to the file."""
        depth, oldest = self.failure_queue_state()
        report.failure_queue_oldest_seconds = oldest if depth else None
        queues = [(self.names.failure_queue, depth, oldest)]
        if self.iceberg:  # the Iceberg target's own failure queue
            queues.append((self.iceberg.failure_queue, *self.failure_queue_state("iceberg")))
        now = time.time()
        for queue_name, depth, oldest in queues:
            queue = {"QueueName": queue_name}
            for name, value, unit in (
                ("ApproximateNumberOfMessagesVisible", depth, "Count"),
                ("ApproximateAgeOfOldestMessage", oldest, "Seconds"),
            ):
                report.datapoints.append(self._emulated("AWS/SQS", name, value, queue, unit, now))
        self.datapoints.extend(report.datapoints)
        if self.metrics_path is not None:
            names = None if self._names_written else self.local_names()
            metricstore.append(self.metrics_path, report.datapoints, names)
            self._names_written = True
        self.cycle += 1

    def local_names(self) -> dict[str, object]:
        """What the template's references mean here (``totes_tools.ops.cloudwatch``)."""
        names: dict[str, object] = {
            "functions": {f"{s.title()}Function": context_for(s).function_name for s in STAGES},
            "failure_queue": self.names.failure_queue,
            "region": REGION,
            "account": ACCOUNT,
        }
        if self.iceberg:  # the template's IcebergTarget=ENABLED resources exist here too
            names["functions"] = {
                **names["functions"],  # type: ignore[dict-item]
                "IcebergFunction": context_for("iceberg").function_name,
            }
            names["queues"] = {"IcebergFailureQueue": self.iceberg.failure_queue}
            names["resources"] = {
                "IcebergDatabase": self.iceberg.database,
                "AthenaWorkGroup": "local",
            }
            names["conditions"] = {"IcebergEnabled": True}
        return names

    def failure_queue_state(self, stage: str = "") -> tuple[int, float]:
        """Events on the failure queue (``stage`` "iceberg": the Iceberg target's) and the age
        in seconds of the oldest (0 when empty), read as SQS measures them: from each
        message's ``SentTimestamp``. A peek: messages are received with no visibility timeout,
        so they stay where they are."""
        queue = self.names.failure_queue
        if stage == "iceberg" and self.iceberg:
            queue = self.iceberg.failure_queue
        url = self._queue_url(queue)
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        depth = int(attrs.get("ApproximateNumberOfMessages", 0))
        if not depth:
            return 0, 0.0
        messages = self.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=0,
            AttributeNames=["SentTimestamp"],
        ).get("Messages", [])
        sent = [int(m["Attributes"]["SentTimestamp"]) / 1000 for m in messages]
        return depth, max(0.0, time.time() - min(sent)) if sent else 0.0

    def _emulated(
        self, namespace: str, name: str, value: float, dims: dict, unit: str, when: float
    ) -> Datapoint:
        return Datapoint(
            namespace, name, float(value), dict(dims), unit, when, self.cycle, self.run_id,
            "emulated",
        )  # fmt: skip

    def maintain_iceberg(self, report: CycleReport | None = None) -> CycleReport:
        """The Iceberg target's maintenance, as its schedule invokes it (``{"action":
        "maintain"}`` to the same function, under the same retry rule). Call ``end_cycle``
        after it to record its metrics as one scheduled run of its own, or ``run_cycle`` to
        record them with that cycle's ingest (the demo: on AWS ingest runs every 5 minutes
        whatever else does)."""
        if not self.iceberg:
            raise TotesError("the Iceberg target is off in this chain (LocalChain(iceberg=True))")
        report = report or CycleReport()
        self._fresh_clients()
        self._invoke("iceberg", {"action": "maintain"}, "maintenance", report)
        return report

    def drain(
        self, report: CycleReport | None = None, stages: tuple[str, ...] | None = None
    ) -> CycleReport:
        """Hand queued S3 events to ``stages`` (default: transform and load, and the Iceberg
        target when it is on) until their queues are empty."""
        report = report or CycleReport()
        self._fresh_clients()
        while True:
            handled = 0
            for stage in stages or self.stages:
                queue = self._queue_of(stage)
                deliveries = self.deliver(stage, self.receive(stage, queue))
                for delivery in deliveries:
                    self._handle(delivery, report)
                    handled += 1
            if not handled:
                return report

    def follow(
        self,
        stage: str,
        upstream_done: Callable[[], bool],
        report: CycleReport | None = None,
        poll_seconds: float = 0.05,
        shared_with: Path | None = None,
    ) -> CycleReport:
        """Hand each S3 event to ``stage`` as soon as it lands on the stage's queue, one
        invocation per manifest as S3's notifications invoke the function on AWS, until
        ``upstream_done()`` says nothing more can be sent and the queue is empty. Run in its
        own process per stage, transform of one batch overlaps ingest of the next and load
        follows transform (``totes_tools.local.pipeline``): the order in which batches reach
        a stage is whatever the queue gives. ``shared_with``: a lock file of several
        processes following one queue (concurrent invocations of one function): each receive
        takes one event, so they share the events instead of the first taking all that wait,
        and holds the file's lock, because the emulator's ReceiveMessage is not safe against
        two at once (moto keeps no lock: a message can be handed to both).

        ``upstream_done`` is read before each receive: moto sends a notification inside the
        PutObject that causes it, so once the upstream has finished, every event it caused
        is already queued and an empty receive after that means the end."""
        report = report or CycleReport()
        self._fresh_clients()
        queue = self._queue_of(stage)
        while True:
            finished = upstream_done()
            if shared_with is None:
                received = self.receive(stage, queue)
            else:
                with shared_with.open("a") as lock_file:
                    fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
                    received = self.receive(stage, queue, 1)
            deliveries = self.deliver(stage, received)
            for delivery in deliveries:
                self._handle(delivery, report)
            if not deliveries:
                if finished:
                    return report
                time.sleep(poll_seconds)

    def replay_failures(self, report: CycleReport | None = None) -> CycleReport:
        """Redrive the S3 events on the failure queue (what an operator does after fixing the
        cause): each goes to its stage again under the same retry rule. Failed scheduled
        ingests are dropped: the next run covers their window, the capture state never moved.
        With the Iceberg target on, its own failure queue is redriven to it alone (a failed
        maintenance run is dropped likewise: the next scheduled one does its work).

        A record is deleted from the queue only once its redrive succeeds; one that fails
        again stays as it was (no second record), so the queue's oldest-message age keeps
        saying since when the batch is stuck.

        A record whose batch data is gone (its manifest, or a file the manifest lists, no
        longer exists) can never succeed: it is not redriven but stays on the queue, reported
        once (``report.gone``, with the command that drops it; later cycles keep it quietly
        until the operator runs ``python -m totes failures drop``).

        Interrupted (Ctrl-C, a crash of the process), the records not yet settled are made
        visible again at once, not after the 15-minute hold: `failures list` and the next cycle
        see them."""
        from totes_tools.failures import FailureQueue

        report = report or CycleReport()
        self._fresh_clients()
        stage_of = {self.names.raw_bucket: "transform", self.names.processed_bucket: "load"}
        queue = FailureQueue(self.sqs, self._queue_url(self.names.failure_queue))
        records = queue.receive_all(hold_seconds=VISIBILITY_TIMEOUT_SECONDS)
        settled = 0
        try:
            for record in records:
                self._redrive(queue, record, stage_of, report)
                settled += 1
        finally:  # interrupted: what was not settled goes back now, not after the hold
            for record in records[settled:]:
                with contextlib.suppress(Exception):
                    queue.release(record)
        if self.iceberg:  # its own failure queue: EventBridge events, redriven to it alone
            iceberg_queue = FailureQueue(self.sqs, self._queue_url(self.iceberg.failure_queue))
            for record in iceberg_queue.receive_all(hold_seconds=VISIBILITY_TIMEOUT_SECONDS):
                # Lambda's on-failure record wraps the event; EventBridge's DLQ holds it bare.
                event = record.event or (record.body if "detail" in record.body else {})
                if not event or event.get("action") == "maintain":
                    iceberg_queue.delete(record)  # a failed maintenance: the next one covers it
                    continue
                report.replayed += 1
                if self._handle(Delivery("iceberg", event), report, record_failure=False):
                    iceberg_queue.delete(record)
                else:
                    iceberg_queue.release(record)
        return report

    def _redrive(self, queue, record, stage_of: dict[str, str], report: CycleReport) -> None:
        """One failure record: redriven, kept as gone, or deleted (see ``replay_failures``)."""
        from totes_tools.failures import drop_hint, missing_data

        stages = {stage_of.get(bucket) for bucket, _ in record.objects}
        if len(stages) != 1 or None in stages:
            queue.delete(record)
            return
        stage = stages.pop()
        missing = missing_data(self.s3, record)
        if missing:
            if not record.reported:
                queue_url = None if self.names == StackNames() else queue.url
                command = drop_hint(record.batch, self.endpoint_url, queue_url)
                report.gone.append(GoneFailure(stage, record.batch, missing, command, record))
                logger.warning("failure record's data is gone", extra={"batch": record.batch})
            queue.keep_reported(record)
            return
        report.replayed += 1
        if self._handle(Delivery(stage, record.event), report, record_failure=False):
            queue.delete(record)
        else:
            queue.release(record)

    def receive(self, stage: str, queue: str, limit: int | None = None) -> list[Delivery]:
        """Every S3 event waiting on ``queue`` (moto's ``s3:TestEvent`` dropped), or at most
        ``limit`` of them."""
        url = self._queue_url(queue)
        out: list[Delivery] = []
        while limit is None or len(out) < limit:
            messages = self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=min(10, limit - len(out)) if limit else 10,
                VisibilityTimeout=VISIBILITY_TIMEOUT_SECONDS,
                WaitTimeSeconds=0,
                AttributeNames=["SentTimestamp"],
            ).get("Messages", [])
            if not messages:
                return out
            for message in messages:
                body = json.loads(message["Body"])
                delivered = body.get("Records") or "detail" in body  # S3 or EventBridge
                if body.get("Event") == "s3:TestEvent" or not delivered:
                    self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                    continue
                sent = message.get("Attributes", {}).get("SentTimestamp")
                sent_at = int(sent) / 1000 if sent else None
                out.append(Delivery(stage, body, message["ReceiptHandle"], sent_at))
        return out

    def pending(self) -> dict[str, int]:
        """Messages waiting (visible or in flight) per notification queue."""
        out = {}
        queues = [self.names.transform_queue, self.names.load_queue]
        for queue in queues + ([self.iceberg.queue] if self.iceberg else []):
            attrs = self.sqs.get_queue_attributes(
                QueueUrl=self._queue_url(queue),
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )["Attributes"]
            out[queue] = sum(int(v) for v in attrs.values())
        return out

    def failures(self) -> list[dict]:
        """The records on the local failure queue (the on-failure destination), consumed."""
        url = self._queue_url(self.names.failure_queue)
        out = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get(
                "Messages", []
            )
            if not messages:
                return out
            for message in messages:
                out.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    # -- invocation ---------------------------------------------------------------------------

    def _handle(self, delivery: Delivery, report: CycleReport, record_failure: bool = True) -> bool:
        """Hand one event to its stage; False when it failed every attempt."""
        stage = report.stages.setdefault(delivery.stage, StageReport())
        first = len(stage.spans)
        result = self._invoke(
            delivery.stage, delivery.event, delivery.batch_id, report, record_failure
        )
        if len(stage.spans) > first:
            stage.deliveries.append(
                (delivery.batch_id, delivery.sent_at, stage.spans[first][0], stage.spans[-1][1])
            )
        if delivery.receipt is not None:
            with contextlib.suppress(Exception):  # a repeated delivery was already deleted
                self.sqs.delete_message(
                    QueueUrl=self._queue_url(self._queue_of(delivery.stage)),
                    ReceiptHandle=delivery.receipt,
                )
        if result is _FAILED:
            return False
        stage.batches.append(delivery.batch_id)
        stage.rows_set_aside += _rows_set_aside(result)
        if _quarantined(result):
            stage.quarantined.append(delivery.batch_id)
            return True
        for key in delivery.keys:
            batch_id = batch_id_from_manifest_key(key)
            manifest = self._manifest(self.processed, manifest_key(batch_id))
            if manifest is None:
                continue
            stage.add_rows(manifest.row_counts)
            hi_utc = manifest.extra.get("hi_utc")
            if delivery.stage == "load" and hi_utc:
                report.freshness_seconds = (
                    datetime.now(UTC) - datetime.fromisoformat(hi_utc)
                ).total_seconds()
        return True

    def _invoke(
        self,
        stage: str,
        event: dict,
        batch_id: str,
        report: CycleReport,
        record_failure: bool = True,
    ) -> object:
        """Up to ``max_attempts`` invocations; then (``record_failure``) a record on the
        failure queue. Each attempt also counts as Lambda would publish it: ``Errors`` 1 or 0,
        ``Throttles`` 0 (one local process never throttles)."""
        stage_report = report.stages.setdefault(stage, StageReport())
        handler = self.handler(stage)
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            context = context_for(stage)
            captured = io.StringIO()
            started, wall_started = time.monotonic(), time.time()
            failed = True
            if stage not in self._warm:  # each function's first invocation is a cold start
                cold_start.reset_cold_start_flag()
                self._warm.add(stage)
            try:
                with environment(self.function_env(stage)), contextlib.redirect_stdout(captured):
                    result = handler(event, context)
                failed = False
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "handler failed",
                    extra={"stage": stage, "batch": batch_id, "attempt": attempt, "error": error},
                )
                last_exc = exc
            else:
                return result
            finally:
                stage_report.invocations += 1
                stage_report.seconds += time.monotonic() - started
                stage_report.spans.append((wall_started, time.time()))
                self._passthrough(captured.getvalue(), stage_report, report)
                function = {"FunctionName": context.function_name}
                now = time.time()
                for name, value in (("Errors", float(failed)), ("Throttles", 0.0)):
                    report.datapoints.append(
                        self._emulated("AWS/Lambda", name, value, function, "Count", now)
                    )
        if record_failure:
            self._send_failure(stage, event, context, attempt, last_exc)
        report.failures.append(Failure(stage, batch_id, attempt, error))
        return _FAILED

    def _passthrough(self, text: str, stage_report: StageReport, report: CycleReport) -> None:
        """Keep the metrics a handler printed; anything else it printed goes on to stdout."""
        points = metricstore.from_emf(
            text, cycle=self.cycle, run=self.run_id, default_time=time.time()
        )
        stage_report.metrics.extend(_metric(p) for p in points)
        report.datapoints.extend(points)
        if points:
            text = "\n".join(line for line in text.splitlines() if '"_aws"' not in line)
        if text.strip():
            sys.stdout.write(text if text.endswith("\n") else text + "\n")

    def _send_failure(
        self, stage: str, event: dict, context: LambdaContext, attempts: int, exc: Exception
    ) -> None:
        """The record Lambda's on-failure destination receives for an exhausted async event."""
        record = {
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat(),
            "requestContext": {
                "requestId": context.aws_request_id,
                "functionArn": f"{context.invoked_function_arn}:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": attempts,
            },
            "requestPayload": event,
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "responsePayload": {
                "errorMessage": str(exc),
                "errorType": type(exc).__name__,
                "stackTrace": traceback.format_exception(exc)[-3:],
            },
        }
        failure_queue = self.names.failure_queue
        if stage == "iceberg" and self.iceberg:
            failure_queue = self.iceberg.failure_queue
        self.sqs.send_message(
            QueueUrl=self._queue_url(failure_queue),
            MessageBody=json.dumps(record, default=str),
        )

    def _queue_of(self, stage: str) -> str:
        if stage == "iceberg" and self.iceberg:
            return self.iceberg.queue
        return self.names.transform_queue if stage == "transform" else self.names.load_queue

    def _queue_url(self, queue: str) -> str:
        if queue not in self._queue_urls:
            self._queue_urls[queue] = self.sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        return self._queue_urls[queue]

    @staticmethod
    def _manifest(lake: Lake, key: str) -> Manifest | None:
        try:
            return lake.get_manifest(key)
        except lake.s3.exceptions.NoSuchKey:
            return None


_FAILED = object()


def _results(result: object) -> list[dict]:
    if not isinstance(result, dict):
        return []
    return [r for r in result.get("results", [result]) if isinstance(r, dict)]


def _quarantined(result: object) -> bool:
    """Transform answers a quarantined batch, or one whose raw manifest is gone, normally
    (status "quarantined" or "gone"), per manifest."""
    return any(r.get("status") in ("quarantined", "gone") for r in _results(result))


def _rows_set_aside(result: object) -> int:
    """Rows a stage set aside alone (transform's ``quarantined_rows``), over its manifests."""
    return sum(int(r.get("quarantined_rows") or 0) for r in _results(result))


# -- checks before anything is touched ---------------------------------------------------------


def check_source(creds: DbCredentials) -> None:
    """The source is reachable and holds every totesys table, so a wrong database fails
    before a bucket, a secret or the warehouse is touched."""
    con = connect(creds, application_name="totes-run-check")
    try:
        present = {
            row[0]
            for row in con.run(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_name = ANY(:names)",
                names=[t.name for t in TABLES],
            )
        }
        missing = [t.name for t in TABLES if t.name not in present]
        if len(missing) == len(TABLES):
            raise SchemaDrift(
                f"source {creds.where} holds none of the totesys tables: is it the right database?"
            )
        if missing:
            raise SchemaDrift(f"source {creds.where} lacks table(s): {', '.join(missing)}")
    finally:
        con.close()


def check_source_has_rows(creds: DbCredentials) -> None:
    """A first run over a source with no rows at all is a mistake worth stopping on."""
    con = connect(creds, application_name="totes-run-check")
    try:
        # Table names come from the source model only.
        exists = " OR ".join(f"EXISTS (SELECT 1 FROM {quote(t.name)})" for t in TABLES)  # noqa: S608 # nosec B608
        if not con.run(f"SELECT {exists}")[0][0]:
            raise TotesError(f"source {creds.where} is empty: every totesys table has no rows")
    finally:
        con.close()


def check_warehouse(creds: DbCredentials) -> None:
    connect(creds, application_name="totes-run-check").close()


# -- the CLI --------------------------------------------------------------------------------


def run_command(args) -> int:
    """``python -m totes run``: one cycle of the deployed chain against the user's databases,
    the handlers called in this process or (``--invoker sam-local``) each through
    ``sam local invoke`` in Docker (``totes_tools.local.sam_local``)."""
    if not os.environ.get("POWERTOOLS_LOG_LEVEL"):
        logger.setLevel("ERROR")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the emulator's request log
    source = DbCredentials.from_url(args.source_url)
    warehouse = DbCredentials.from_url(args.warehouse_url)
    check_source(source)
    check_warehouse(warehouse)
    with contextlib.ExitStack() as stack:
        endpoint = args.endpoint_url or stack.enter_context(moto_server())
        stack.enter_context(aws_environment(endpoint))
        if args.endpoint_url:
            _check_endpoint(endpoint)
        metrics_path = metricstore.default_metrics_path() if args.endpoint_url else None
        sam_local = None
        if getattr(args, "invoker", "in-process") == "sam-local":
            from totes_tools.local.sam_local import SamLocal

            sam_local = stack.enter_context(SamLocal(endpoint, source, warehouse))
        chain = LocalChain(
            endpoint,
            StackNames(),
            source,
            warehouse,
            handlers=sam_local.handlers if sam_local else None,
            max_batch_rows=args.max_batch_rows,
            chunk_rows=args.chunk_rows,
            metrics_path=metrics_path,
            iceberg=getattr(args, "iceberg", False),
        )
        if sam_local:
            sam_local.bind(chain)
        if not _has_manifest(chain):
            check_source_has_rows(source)
        chain.prepare()
        report = chain.run_cycle()
    print(report.format(), flush=True)
    if metrics_path is not None:
        print(f"metrics: {metrics_path} (python -m totes dashboard draws them)", flush=True)
    for failure in report.failures:
        print(f"error: {failure}", file=sys.stderr)
    for gone in report.gone:
        print(f"error: {gone}", file=sys.stderr)
    return 0 if report.ok else 1


def _check_endpoint(endpoint: str) -> None:
    from botocore.exceptions import BotoCoreError

    try:
        client("sqs", endpoint).list_queues()
    except BotoCoreError as exc:
        raise TotesError(
            f"cannot reach the local AWS endpoint {endpoint} ({type(exc).__name__}):"
            " is `python -m totes local-aws` running there?"
        ) from None


def _has_manifest(chain: LocalChain) -> bool:
    """Whether the raw lake holds any manifest: one bounded request, never a full listing."""
    try:
        listed = chain.s3.list_objects_v2(
            Bucket=chain.names.raw_bucket, Prefix=MANIFEST_PREFIX, MaxKeys=1
        )
    except chain.s3.exceptions.NoSuchBucket:
        return False
    return bool(listed.get("KeyCount"))
