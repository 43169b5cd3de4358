"""The transform stage: one raw batch (named by its manifest) into the processed lake.

Reads the raw manifest and its Parquet files, passes them through the quality gates, remodels
them into the star schema and writes one Parquet file per star table, then the processed
manifest last (it is what triggers load). Keys are functions of the batch id, so a re-run
overwrites with equal content.

A batch that fails its gates is copied under ``quarantine/<batch_id>/`` in the raw bucket with
a ``reason.json``, counted in ``QuarantinedBatches`` and answered with a normal result, not an
exception: retrying cannot fix bad input, and later batches must go on. The raw manifest stays
where it is, because ingest reads its watermark from the newest raw manifest.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from totes import quality
from totes.errors import BatchRejected
from totes.lake import (
    PROCESSED_PREFIX,
    QUARANTINE_PREFIX,
    Lake,
    Manifest,
    ManifestFile,
    batch_id_from_manifest_key,
    data_key,
    parquet_bytes_to_table,
    schema_fingerprint,
)
from totes.observability import add_table_metric, logger, metrics
from totes.settings import TransformSettings
from totes.stages import runtime
from totes.stages.trigger import ObjectRef, handle_manifests
from totes.star.remodel import build_star

_MISSING_OBJECT_CODES = {"NoSuchKey", "404", "NotFound"}


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _MISSING_OBJECT_CODES


def read_files(raw: Lake, manifest: Manifest) -> dict[ManifestFile, pa.Table | Exception]:
    """Each file of the batch as a table, or the error that makes it unusable (missing object,
    not Parquet). Any other error (throttling, permissions) propagates, so the invocation is
    retried instead of the batch being quarantined for a passing fault."""
    read: dict[ManifestFile, pa.Table | Exception] = {}
    for entry in manifest.files:
        try:
            body = raw.get_bytes(entry.key)
        except ClientError as exc:
            if not _is_missing(exc):
                raise
            read[entry] = exc
            continue
        try:
            read[entry] = parquet_bytes_to_table(body)
        except (pa.ArrowException, OSError) as exc:
            read[entry] = exc
    return read


def quarantine(
    raw: Lake, manifest_key: str, batch_id: str, manifest: Manifest | None, reason: dict[str, Any]
) -> dict[str, Any]:
    """Copy the batch (manifest and files) under ``quarantine/<batch_id>/`` with its reason,
    so it can be inspected and replayed; count it; return the stage's result."""
    prefix = f"{QUARANTINE_PREFIX}/{batch_id}/"
    keys = [manifest_key, *(f.key for f in manifest.files)] if manifest else [manifest_key]
    copied, missing = [], []
    for key in keys:
        try:
            raw.copy(key, prefix + key)
            copied.append(prefix + key)
        except ClientError as exc:
            if not _is_missing(exc):
                raise
            missing.append(key)
    record = {
        "batch_id": batch_id,
        "raw_manifest_key": manifest_key,
        **reason,
        "quarantined_objects": copied,
        "missing_objects": missing,
    }
    reason_key = f"{prefix}reason.json"
    raw.put_bytes(
        reason_key, json.dumps(record, indent=1, default=str).encode(), "application/json"
    )
    metrics.add_metric(name="QuarantinedBatches", unit=MetricUnit.Count, value=1)
    metrics.add_metric(
        name="TransformRejectedRows", unit=MetricUnit.Count, value=reason.get("rejected_rows", 0)
    )
    logger.error("batch quarantined", extra={"reason_key": reason_key, "reason": record})
    return {
        "status": "quarantined",
        "batch_id": batch_id,
        "reason_key": reason_key,
        "checks": sorted({p["check"] for p in reason.get("problems", ())}),
    }


def transform(
    raw_manifest_key: str, settings: TransformSettings, s3_client: BaseClient
) -> dict[str, Any]:
    """Transform the raw batch named by ``raw_manifest_key``; return what was written (or why
    the batch was quarantined)."""
    started = time.monotonic()
    batch_id = batch_id_from_manifest_key(raw_manifest_key)
    logger.set_correlation_id(batch_id)
    raw = Lake(s3_client, settings.raw_bucket)
    try:
        manifest = raw.get_manifest(raw_manifest_key)
    except (ValueError, TypeError) as exc:  # not JSON, or not a manifest's fields
        problem = {"check": "unreadable_manifest", "message": f"{type(exc).__name__}: {exc}"}
        return quarantine(raw, raw_manifest_key, batch_id, None, {"problems": [problem]})

    try:
        source = quality.gate(manifest, read_files(raw, manifest))
    except BatchRejected as rejected:
        return quarantine(raw, raw_manifest_key, batch_id, manifest, rejected.reason)

    processed = Lake(s3_client, settings.processed_bucket)
    entries = []
    for name, table in build_star(source).items():
        key = data_key(PROCESSED_PREFIX, name, manifest.batch_id)
        size = processed.put_table(key, table)
        entries.append(
            ManifestFile(name, key, table.num_rows, schema_fingerprint(table.schema), size)
        )
        add_table_metric("TransformRows", MetricUnit.Count, table.num_rows, name)
    out = Manifest(
        batch_id=manifest.batch_id,
        stage="processed",
        window_lo=manifest.window_lo,
        window_hi=manifest.window_hi,
        files=tuple(entries),
        source_batch_id=manifest.batch_id,
        extra=dict(manifest.extra),
    )
    manifest_key = processed.put_manifest(out)
    metrics.add_metric(
        name="TransformDurationSeconds", unit=MetricUnit.Seconds, value=time.monotonic() - started
    )
    logger.info("batch transformed", extra={"manifest_key": manifest_key, "rows": out.row_counts})
    return {
        "status": "processed",
        "batch_id": manifest.batch_id,
        "manifest_key": manifest_key,
        "rows": out.row_counts,
    }


def from_s3_event(event: S3Event, context: LambdaContext | None = None) -> dict[str, Any]:
    """The handler's work: each raw manifest the event names, transformed at most once per
    (bucket, key, eTag)."""
    config = runtime.settings(TransformSettings)
    s3_client = runtime.s3()

    def work(ref: ObjectRef) -> dict[str, Any]:
        return transform(ref.key, config, s3_client)

    return handle_manifests(
        event,
        context,
        bucket=config.raw_bucket,
        idempotency_table=config.idempotency_table,
        work=work,
    )
