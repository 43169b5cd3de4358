"""The one Logger and Metrics every stage shares (Powertools), and the one catalogue of the
metrics the pipeline emits: name, unit, dimensions, the stages that emit it, and what it means.

Stages emit only through :func:`emit`, which refuses a name outside :data:`CATALOGUE` or other
dimensions than the catalogue's, so a renamed metric fails in tests instead of leaving an
alarm or a dashboard widget watching nothing. ``tests/template`` checks every alarm and widget
of ``template.yaml`` against the metrics the local chain really emitted.

Dimensions are exactly what Powertools writes: ``service`` (the function's
``POWERTOOLS_SERVICE_NAME``) on every metric, plus ``table`` on the per-table ones, which go out
as their own EMF blob (one blob has one dimension set). The service is read when a metric is
emitted: on AWS each function has its own process and environment, locally one process runs
all three stages in turn, and each must carry its own service as it would on AWS.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric

NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "TerrificTotes")
SERVICE_ENV = "POWERTOOLS_SERVICE_NAME"

logger = Logger(service=os.environ.get(SERVICE_ENV, "totes"))
metrics = Metrics(namespace=NAMESPACE)
# An event answered from its idempotency record does no work and emits no metric; Powertools
# then warns on stderr, a plain-text line in a log group whose lines are otherwise JSON.
warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)


def _report_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """An exception Python cannot raise (in a finalizer, say) goes to the log as one JSON
    record instead of the interpreter's plain-text "Exception ignored in ..." lines."""
    exc = unraisable.exc_value
    logger.error(
        "exception ignored",
        extra={
            "during": unraisable.err_msg or "exception ignored",
            "object": repr(unraisable.object)[:200],
            "error": f"{type(exc).__name__}: {exc}" if exc is not None else None,
        },
    )


sys.unraisablehook = _report_unraisable

SERVICE = ("service",)
PER_TABLE = ("service", "table")


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the catalogue. ``dimensions`` are the exact dimension names it carries;
    ``stages`` the functions (services) that emit it; ``emitter`` is "totes" (our code, through
    :func:`emit`) or "powertools" (the library's own, e.g. the cold start)."""

    name: str
    unit: MetricUnit
    dimensions: tuple[str, ...]
    stages: tuple[str, ...]
    description: str
    emitter: str = "totes"


_SPECS = (
    # -- ingest ------------------------------------------------------------------------------
    MetricSpec(
        "IngestRows",
        MetricUnit.Count,
        PER_TABLE,
        ("ingest",),
        "Rows a run wrote to the raw lake, per source table (every part of the run).",
    ),
    MetricSpec(
        "IngestBytes",
        MetricUnit.Bytes,
        SERVICE,
        ("ingest",),
        "Parquet bytes a run wrote to the raw lake (runs that wrote a batch).",
    ),
    MetricSpec(
        "IngestDurationSeconds",
        MetricUnit.Seconds,
        SERVICE,
        ("ingest",),
        "Wall time of a run, failed runs included.",
    ),
    MetricSpec(
        "IngestEmptyRuns",
        MetricUnit.Count,
        SERVICE,
        ("ingest",),
        "1 for a successful run that found nothing new at the source (no batch written).",
    ),
    MetricSpec(
        "IngestCaptureLagSeconds",
        MetricUnit.Seconds,
        SERVICE,
        ("ingest",),
        "Source clock at this run's snapshot minus the snapshot time of the capture state the"
        " run started from (read from the lake). About one schedule interval when every run"
        " advances the capture; each run that does not adds one more: a stalled capture.",
    ),
    MetricSpec(
        "IngestStatesSetAside",
        MetricUnit.Count,
        SERVICE,
        ("ingest",),
        "Lake objects passed over as capture state (damaged, foreign, ahead of the source).",
    ),
    # -- transform ---------------------------------------------------------------------------
    MetricSpec(
        "TransformRows",
        MetricUnit.Count,
        PER_TABLE,
        ("transform",),
        "Rows written to the processed lake, per star table.",
    ),
    MetricSpec(
        "TransformDurationSeconds",
        MetricUnit.Seconds,
        SERVICE,
        ("transform",),
        "Wall time of one batch, whatever its outcome (processed, quarantined, gone, failed).",
    ),
    MetricSpec(
        "QuarantinedBatches",
        MetricUnit.Count,
        SERVICE,
        ("transform",),
        "1 for a batch quarantined whole (damaged file or manifest) or gone, 0 for one"
        " transformed: the zero shows the check ran.",
    ),
    MetricSpec(
        "TransformRejectedRows",
        MetricUnit.Count,
        SERVICE,
        ("transform",),
        "Rows of the batches quarantined whole.",
    ),
    MetricSpec(
        "QuarantinedRows",
        MetricUnit.Count,
        PER_TABLE,
        ("transform",),
        "Source rows set aside alone (the star cannot represent them), per source table.",
    ),
    # -- load --------------------------------------------------------------------------------
    *(
        MetricSpec(
            f"LoadRows{outcome.title()}",
            MetricUnit.Count,
            PER_TABLE,
            ("load",),
            f"Warehouse rows {meaning} by a batch, per star table.",
        )
        for outcome, meaning in (
            ("inserted", "inserted"),
            ("updated", "updated (dimension rows moved forward)"),
            ("skipped", "skipped (versions the warehouse already held, or older ones)"),
            ("parked", "parked (facts waiting for a dimension row set aside)"),
            ("deleted", "marked deleted at the source"),
        )
    ),
    MetricSpec(
        "LoadDurationSeconds",
        MetricUnit.Seconds,
        SERVICE,
        ("load",),
        "Wall time of one batch, whatever its outcome (loaded, already loaded, failed).",
    ),
    # -- both --------------------------------------------------------------------------------
    MetricSpec(
        "WarehouseFreshnessSeconds",
        MetricUnit.Seconds,
        SERVICE,
        ("ingest", "load"),
        "Now minus the newest source capture time the warehouse is known to hold. Ingest emits"
        " it on every run (the heartbeat: a quiet source whose captures are all loaded reads"
        " about 0), load after each batch, loaded or already loaded.",
    ),
    # -- the optional Iceberg target (issue 17; IcebergTarget=ENABLED) -----------------------
    *(
        MetricSpec(
            f"IcebergRows{outcome.title()}",
            MetricUnit.Count,
            PER_TABLE,
            ("iceberg",),
            f"Iceberg table rows {meaning} by a batch, per star table.",
        )
        for outcome, meaning in (
            ("inserted", "inserted"),
            ("updated", "updated (dimension rows moved forward)"),
            ("parked", "parked (facts waiting for a dimension row set aside)"),
            ("deleted", "marked deleted at the source"),
        )
    ),
    MetricSpec(
        "IcebergCommits",
        MetricUnit.Count,
        SERVICE,
        ("iceberg",),
        "Table commits (snapshots) a batch added; 0 for a batch already committed.",
    ),
    MetricSpec(
        "IcebergCommitConflicts",
        MetricUnit.Count,
        SERVICE,
        ("iceberg",),
        "Commits the catalog refused because another writer moved a table first (each was"
        " re-planned and retried).",
    ),
    MetricSpec(
        "IcebergDurationSeconds",
        MetricUnit.Seconds,
        SERVICE,
        ("iceberg",),
        "Wall time of one batch, whatever its outcome (committed, already committed, failed).",
    ),
    MetricSpec(
        "IcebergFreshnessSeconds",
        MetricUnit.Seconds,
        SERVICE,
        ("ingest", "iceberg"),
        "Now minus the newest source capture time the Iceberg tables are known to hold, by"
        " WarehouseFreshnessSeconds' rule: ingest emits it on every run from the target's"
        " committed marker (the heartbeat), the Iceberg function after each batch.",
    ),
    *(
        MetricSpec(name, MetricUnit.Count, SERVICE, ("iceberg",), meaning)
        for name, meaning in (
            ("IcebergFilesCompacted", "Data files a maintenance run rewrote into larger ones."),
            ("IcebergSnapshotsExpired", "Snapshots a maintenance run expired."),
            ("IcebergFilesRemoved", "Files no snapshot references, deleted by maintenance."),
        )
    ),
    MetricSpec(
        "IcebergMaintenanceSeconds",
        MetricUnit.Seconds,
        SERVICE,
        ("iceberg",),
        "Wall time of one maintenance run, a failed one included.",
    ),
    MetricSpec(
        "ColdStart",
        MetricUnit.Count,
        ("function_name", "service"),
        ("ingest", "transform", "load", "iceberg"),
        "1 for the first invocation of a container (Powertools' own metric).",
        emitter="powertools",
    ),
)

CATALOGUE: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}


class UnknownMetric(ValueError):
    """A metric name outside the catalogue, or dimensions other than the catalogue's."""


def emit(name: str, value: float, **dimensions: str) -> None:
    """Emit one value of the catalogue's metric ``name``; ``dimensions`` are its dimensions
    besides ``service`` (only ``table`` exists). Service-level metrics are collected by the
    handler's ``metrics`` and flushed once at its end (on failure too); per-table ones are
    written at once as their own blob."""
    spec = CATALOGUE.get(name)
    if spec is None or spec.emitter != "totes":
        raise UnknownMetric(f"{name!r} is not a metric of totes.observability.CATALOGUE")
    extra = tuple(d for d in spec.dimensions if d != "service")
    if sorted(dimensions) != sorted(extra):
        raise UnknownMetric(
            f"{name} carries the dimensions {list(spec.dimensions)}, not"
            f" {['service', *sorted(dimensions)]}"
        )
    service = os.environ.get(SERVICE_ENV)
    if service:
        metrics.provider.service = service
    if not extra:
        metrics.add_metric(name=name, unit=spec.unit, value=value)
        return
    with single_metric(name=name, unit=spec.unit, value=value, namespace=NAMESPACE) as metric:
        for key, dim in dimensions.items():
            metric.add_dimension(name=key, value=dim)


@dataclass
class Elapsed:
    seconds: float = 0.0


@contextmanager
def timed(name: str) -> Iterator[Elapsed]:
    """Emit the seconds the block took as the catalogue's metric ``name``, whatever its
    outcome: a stage that fails reports its duration too (the dashboard's duration panels and
    a stage stuck failing stay visible). The seconds are also on the yielded ``Elapsed``."""
    elapsed = Elapsed()
    started = time.monotonic()
    try:
        yield elapsed
    finally:
        elapsed.seconds = time.monotonic() - started
        emit(name, elapsed.seconds)
