"""The Iceberg stage: one processed batch (named by its manifest) committed into the Iceberg
tables, and the tables' scheduled maintenance. Optional, and independent of load.

The processed bucket notifies load directly (S3 -> Lambda, unchanged) and, when the Iceberg
target is enabled, also sends its events to EventBridge, whose rule invokes this stage for
every processed manifest. Either target may fail, lag or be replayed without touching the
other: each reads the same manifests, keeps its own at-most-once records (Powertools
idempotency per function; the warehouse's ledger, the Iceberg ledger and snapshot summaries)
and has its own retries and failure queue.

The batch's files are read and checked exactly as load reads them (``load_batch.read_batch``:
row counts and schema fingerprints against the manifest and the star model), then committed
table by table (``totes.iceberg.batch``). A failure is raised naming the batch, the table and
the cause; the tables the batch already committed stay committed and a retry completes the
rest. The maintenance schedule invokes the same function with ``{"action": "maintain"}``, so
it never runs beside a batch (reserved concurrency 1).
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.client import BaseClient
from pyiceberg.catalog import Catalog

from totes import freshness, manifest_checks
from totes.errors import LoadFailed
from totes.freshness import seconds_since
from totes.iceberg.batch import BatchResult, apply_batch
from totes.iceberg.catalog import ensure_tables, open_catalog
from totes.iceberg.maintenance import maintain
from totes.iceberg.settings import IcebergSettings
from totes.lake import (
    ICEBERG_COMMITTED_KEY,
    MANIFEST_PREFIX,
    MANIFEST_SUFFIX,
    Lake,
    batch_id_from_manifest_key,
)
from totes.observability import emit, logger, timed
from totes.stages import runtime
from totes.stages.load_batch import read_batch
from totes.stages.trigger import ObjectRef, run_once

MAINTAIN = "maintain"
_ready: set[tuple[IcebergSettings, str | None]] = set()  # catalogs whose tables this process made


@functools.cache
def _open(settings: IcebergSettings, endpoint: str | None) -> Catalog:
    return open_catalog(settings, endpoint)


def catalog(settings: IcebergSettings) -> Catalog:
    """The catalog, its tables created (or evolved) once per process, not once per batch."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    opened = _open(settings, endpoint)
    if (settings, endpoint) not in _ready:
        ensure_tables(opened, settings)
        _ready.add((settings, endpoint))
    return opened


def manifest_ref(event: dict[str, Any]) -> ObjectRef | None:
    """The processed manifest an EventBridge "Object Created" event names; None for any other
    object. S3 spells the eTag ``etag`` there (the emulator ``eTag``)."""
    detail = event.get("detail") or {}
    bucket = (detail.get("bucket") or {}).get("name", "")
    obj = detail.get("object") or {}
    key = unquote_plus(str(obj.get("key", "")))
    if not (key.startswith(MANIFEST_PREFIX) and key.endswith(MANIFEST_SUFFIX)):
        logger.warning("ignoring a non-manifest object", extra={"key": key})
        return None
    etag = str(obj.get("etag") or obj.get("eTag") or "").strip('"')
    return ObjectRef(bucket, key, etag)


def load(
    manifest_key: str, settings: IcebergSettings, s3_client: BaseClient, target: Catalog
) -> dict[str, Any]:
    """Commit the processed batch ``manifest_key`` names into the Iceberg tables. Its duration
    is emitted whatever the outcome, a failure included."""
    with timed("IcebergDurationSeconds"):
        return _load(manifest_key, settings, s3_client, target)


def _load(
    manifest_key: str, settings: IcebergSettings, s3_client: BaseClient, target: Catalog
) -> dict[str, Any]:
    batch_id = batch_id_from_manifest_key(manifest_key)
    logger.set_correlation_id(batch_id)
    lake = Lake(s3_client, settings.processed_bucket)
    try:
        manifest = lake.get_manifest(manifest_key)
    except (ValueError, TypeError, AttributeError) as exc:  # not JSON, or not a manifest's
        raise LoadFailed(f"batch {batch_id}: unreadable manifest: {exc}") from None
    # The checks load makes (issue 14): a copied, forged or damaged manifest stops here, named,
    # before a file is read or a table is touched.
    refused = manifest_checks.problems(manifest, manifest_key, "processed", datetime.now(UTC))
    if refused:
        raise LoadFailed(f"batch {batch_id}: {manifest_key}: {'; '.join(refused)}")
    tables = read_batch(lake, manifest)
    result = apply_batch(target, settings.database, manifest, tables)
    # Committed (or found committed): what follows cannot undo it, and a retry finds the batch
    # in the ledger and does this again.
    record_committed(s3_client, settings, batch_id, manifest.extra)
    emit("IcebergCommitConflicts", result.conflicts)
    emit("IcebergCommits", result.commits)
    freshness = _freshness((manifest.extra or {}).get("hi_utc"))
    if not result.loaded:
        logger.info("batch already in the Iceberg ledger; nothing to do")
        return {"status": "already_loaded", "batch_id": batch_id}
    _emit(result)
    rows = result.row_counts()
    logger.info(
        "batch committed to Iceberg",
        extra={"rows": rows, "commits": result.commits, "freshness_seconds": freshness},
    )
    return {"status": "loaded", "batch_id": batch_id, "rows": rows, "commits": result.commits}


def record_committed(
    s3_client: BaseClient, settings: IcebergSettings, batch_id: str, extra: Any
) -> freshness.LoadedMarker | None:
    """Move the Iceberg target's committed marker (``totes.freshness``) forward to this batch
    when it is newer than the one the marker names; ingest reads it on every run (the
    target's freshness heartbeat). The function runs one invocation at a time (reserved
    concurrency 1), so reading and writing the marker cannot race another batch."""
    capture = manifest_checks.capture(extra)
    if settings.bucket is None or not capture.hi_utc:
        return None
    lake = Lake(s3_client, settings.bucket)
    mine = freshness.LoadedMarker(
        batch_id, capture.seq, manifest_checks.parse_hi_utc(capture.hi_utc)
    )
    if mine.newer_than(freshness.read_marker(lake, ICEBERG_COMMITTED_KEY)):
        freshness.write_marker(lake, mine, ICEBERG_COMMITTED_KEY)
    return mine


def _emit(result: BatchResult) -> None:
    """Rows per table and outcome (``IcebergRowsDeleted``: rows this batch marked deleted at
    the source)."""
    for name, counts in result.row_counts().items():
        for metric_name, key in (
            ("IcebergRowsInserted", "inserted"),
            ("IcebergRowsUpdated", "updated"),
            ("IcebergRowsParked", "parked"),
            ("IcebergRowsDeleted", "marked"),
        ):
            emit(metric_name, counts[key], table=name)


def _freshness(hi_utc: str | None) -> float | None:
    """Now minus the batch's capture time (the manifest checks made sure it is one)."""
    if not hi_utc:
        return None
    freshness = seconds_since(manifest_checks.parse_hi_utc(hi_utc))
    emit("IcebergFreshnessSeconds", freshness)
    return freshness


def maintain_tables(settings: IcebergSettings) -> dict[str, Any]:
    """One maintenance run over every table (the schedule's invocation); its duration is
    emitted whatever the outcome, a failure included."""
    with timed("IcebergMaintenanceSeconds") as elapsed:
        reports = maintain(catalog(settings), settings)
    totals = {
        "IcebergFilesCompacted": sum(r.files_compacted for r in reports),
        "IcebergSnapshotsExpired": sum(r.snapshots_expired for r in reports),
        "IcebergFilesRemoved": sum(r.files_removed for r in reports),
    }
    for name, value in totals.items():
        emit(name, value)
    logger.info("Iceberg maintenance done", extra={"totals": totals, "seconds": elapsed.seconds})
    return {"status": "maintained", "tables": [asdict(r) for r in reports]}


def from_event(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    """The handler's work: the maintenance schedule, or each processed manifest EventBridge
    names, committed at most once per (bucket, key, eTag) by idempotency and at most once per
    batch by the Iceberg ledger and snapshot summaries."""
    config = runtime.settings(IcebergSettings)
    if event.get("action") == MAINTAIN:
        return maintain_tables(config)
    ref = manifest_ref(event)
    if ref is None:
        return {"results": []}
    s3_client = runtime.s3()

    def stage(ref: ObjectRef) -> dict[str, Any]:
        if ref.bucket != config.processed_bucket:
            logger.warning("manifest from an unexpected bucket", extra={"bucket": ref.bucket})
            return {"status": "ignored", "bucket": ref.bucket, "key": ref.key}
        try:
            return load(ref.key, config, s3_client, catalog(config))
        except Exception:
            logger.exception("Iceberg commit of the batch failed", extra={"key": ref.key})
            raise

    return {"results": [run_once(stage, ref, config.idempotency_table, context)]}
