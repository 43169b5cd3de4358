"""The transform stage: one raw batch (named by its manifest) into the processed lake.

Reads the raw manifest and its Parquet files, passes them through the quality gates, remodels
the rows that pass into the star schema and writes one Parquet file per star table (and the
batch's deleted keys), then the processed manifest last (it is what triggers load). Keys are
functions of the batch id, so a re-run overwrites with equal content.

Bad input never stops good input (architecture invariant 7), and is never dropped silently:

- A row the star cannot represent is set aside alone: one JSON line per row and problem under
  ``quarantine/rows/<batch_id>.jsonl`` in the raw bucket (table, key, column, check, reason and
  the original value, cut at 64 KiB), counted in ``QuarantinedRows`` per table, logged by table,
  key, column and reason (never the value: it may be personal data). The rest of the batch is
  remodelled in the same invocation; the processed manifest's ``extra["set_aside"]`` names the
  dimension keys set aside so load parks the facts that point at them. A fixed row is captured
  again by ingest and flows like any other.
- Damage to a whole file or to the manifest (unreadable, not what the manifest describes, a
  manifest that is not JSON or lacks its fields) quarantines the batch: copied under
  ``quarantine/<batch_id>/`` with a ``reason.json``, counted in ``QuarantinedBatches``,
  replayable once repaired. So does a manifest ``totes.manifest_checks`` refuses (its key or
  content naming another batch or none, files that are not the batch's deterministic keys,
  malformed capture fields): only the manifest is copied, never the files it points at.
- A raw manifest that is gone before transform reads it is reported once (a ``reason.json``
  with status "gone", ``QuarantinedBatches``).

A batch that yields no processed rows (none captured, or every one set aside) publishes no
processed manifest (status ``nothing_to_load``): load never sees, and the warehouse ledger
never records, an empty batch.

Each of these is a normal result, not an exception: retrying cannot fix bad input, and later
batches must go on. The raw objects stay where they are.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from totes import manifest_checks, quality
from totes.errors import BatchRejected
from totes.lake import (
    BATCH_ID,
    PROCESSED_PREFIX,
    QUARANTINE_PREFIX,
    UNREADABLE_PARQUET,
    Lake,
    Manifest,
    ManifestFile,
    batch_id_from_manifest_key,
    data_key,
    parquet_bytes_to_table,
    schema_fingerprint,
)
from totes.observability import emit, logger, timed
from totes.settings import TransformSettings
from totes.stages import runtime
from totes.stages.trigger import ObjectRef, handle_manifests
from totes.star.model import DELETED_KEYS, SET_ASIDE
from totes.star.remodel import build_star, deleted_keys

_MISSING_OBJECT_CODES = {"NoSuchKey", "404", "NotFound"}
# Where the rows a batch set aside are recorded (raw bucket), one JSON object per line.
ROWS_QUARANTINE_PREFIX = f"{QUARANTINE_PREFIX}/rows"
# A recorded value longer than this (UTF-8 bytes) is cut, its full length kept beside it.
VALUE_LIMIT_BYTES = 64 * 1024
# Set-aside rows named per table in one log line (the record holds them all).
LOGGED_PROBLEMS = 50
# Under quarantine/: manifests whose key names no batch.
NOT_A_BATCH = "not-a-batch"


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _MISSING_OBJECT_CODES


def read_files(raw: Lake, manifest: Manifest) -> dict[ManifestFile, pa.Table | Exception]:
    """Each file of the batch as a table, or the error that makes it unusable (missing object,
    not Parquet, a damaged footer: ``lake.UNREADABLE_PARQUET``). Any other error (throttling,
    permissions) propagates, so the invocation is retried instead of the batch being
    quarantined for a passing fault."""
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
        except UNREADABLE_PARQUET as exc:
            read[entry] = exc
    return read


def quarantine_prefix(batch_id: str) -> str:
    """Where a batch is quarantined: ``quarantine/<batch_id>/``; a manifest key that names no
    batch (``lake.BATCH_ID``) under ``quarantine/not-a-batch/<digest of the id>/``, so a forged
    key cannot place objects elsewhere under ``quarantine/`` (the record names the key)."""
    if BATCH_ID.match(batch_id):
        return f"{QUARANTINE_PREFIX}/{batch_id}/"
    digest = hashlib.sha256(batch_id.encode()).hexdigest()[:16]
    return f"{QUARANTINE_PREFIX}/{NOT_A_BATCH}/{digest}/"


def quarantine(
    raw: Lake, manifest_key: str, batch_id: str, manifest: Manifest | None, reason: dict[str, Any]
) -> dict[str, Any]:
    """Copy the batch (manifest and files) under ``quarantine/<batch_id>/`` with its reason,
    so it can be inspected and replayed; count it; return the stage's result."""
    prefix = quarantine_prefix(batch_id)
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
        "status": "quarantined",
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
    emit("QuarantinedBatches", 1)
    emit("TransformRejectedRows", reason.get("rejected_rows", 0))
    logger.error("batch quarantined", extra={"reason_key": reason_key, "reason": record})
    return {
        "status": "quarantined",
        "batch_id": batch_id,
        "reason_key": reason_key,
        "checks": sorted({p["check"] for p in reason.get("problems", ())}),
    }


def gone(raw: Lake, manifest_key: str, batch_id: str, code: str) -> dict[str, Any]:
    """The raw manifest no longer exists (deleted before transform read it): nothing can be
    transformed and no retry can change that, so report it once, with a record beside the
    quarantined batches, and answer normally (no retries, nothing on the failure queue)."""
    reason_key = f"{quarantine_prefix(batch_id)}reason.json"
    record = {
        "status": "gone",
        "batch_id": batch_id,
        "raw_manifest_key": manifest_key,
        "problems": [
            {
                "check": "manifest_gone",
                "message": f"s3://{raw.bucket}/{manifest_key} does not exist ({code}): the"
                " batch was removed before transform read it; nothing of it was transformed",
            }
        ],
        "quarantined_objects": [],
        "missing_objects": [manifest_key],
    }
    raw.put_bytes(reason_key, json.dumps(record, indent=1).encode(), "application/json")
    emit("QuarantinedBatches", 1)
    logger.error("raw manifest gone", extra={"reason_key": reason_key, "reason": record})
    return {"status": "gone", "batch_id": batch_id, "reason_key": reason_key}


def rows_quarantine_key(batch_id: str) -> str:
    return f"{ROWS_QUARANTINE_PREFIX}/{batch_id}.jsonl"


def row_record(problem: quality.RowProblem, batch_id: str) -> dict[str, Any]:
    """The quarantine record of one set-aside row and problem; a value past
    ``VALUE_LIMIT_BYTES`` is cut (at a character boundary) and its full length kept."""
    value, size, truncated = problem.value, None, False
    if value is not None:
        data = value.encode()
        size = len(data)
        if size > VALUE_LIMIT_BYTES:
            value, truncated = data[:VALUE_LIMIT_BYTES].decode(errors="ignore"), True
    return {
        "batch_id": batch_id,
        "table": problem.table,
        "key": problem.key,
        "column": problem.column,
        "check": problem.check,
        "reason": problem.reason,
        "value": value,
        "value_bytes": size,
        "value_truncated": truncated,
    }


def record_set_aside(raw: Lake, batch_id: str, gated: quality.Gated) -> str | None:
    """Write the records of the rows the batch set aside, count and log them (the log names
    table, key, column and reason only); the records' object key, or None when none."""
    if not gated.problems:
        return None
    key = rows_quarantine_key(batch_id)
    lines = (json.dumps(row_record(p, batch_id), sort_keys=True) + "\n" for p in gated.problems)
    raw.put_bytes(key, "".join(lines).encode(), "application/x-ndjson")
    for table, rows in gated.set_aside_rows.items():
        emit("QuarantinedRows", rows, table=table)
        named = [
            {"key": p.key, "column": p.column, "check": p.check, "reason": p.reason}
            for p in gated.problems
            if p.table == table
        ]
        logger.warning(
            "rows set aside",
            extra={
                "table": table,
                "rows": rows,
                "keys": gated.set_aside_keys.get(table, [])[:LOGGED_PROBLEMS],
                "problems": named[:LOGGED_PROBLEMS],
                "problems_not_shown": max(0, len(named) - LOGGED_PROBLEMS),
                "records_key": key,
            },
        )
    return key


def nothing_to_load(batch_id: str, gated: quality.Gated, records_key: str | None) -> dict[str, Any]:
    """A batch that yields no processed rows (no rows at all, or every row set aside) has
    nothing to load: no processed manifest is published, so load never records an empty batch
    in the warehouse ledger (where it would stand for the batch id, ``manifest_checks``)."""
    logger.info(
        "batch transformed; nothing to load",
        extra={"quarantined_rows": gated.set_aside_rows},
    )
    return {
        "status": "nothing_to_load",
        "batch_id": batch_id,
        "manifest_key": None,
        "rows": {},
        "quarantined_rows": gated.rows_set_aside,
        "quarantined_rows_key": records_key,
    }


def transform(
    raw_manifest_key: str, settings: TransformSettings, s3_client: BaseClient
) -> dict[str, Any]:
    """Transform the raw batch named by ``raw_manifest_key``; return what was written and how
    many rows were set aside (or why the batch was quarantined, or that it is gone). Its
    duration is emitted whatever the outcome, a failure included."""
    with timed("TransformDurationSeconds"):
        return _transform(raw_manifest_key, settings, s3_client)


def _transform(
    raw_manifest_key: str, settings: TransformSettings, s3_client: BaseClient
) -> dict[str, Any]:
    batch_id = batch_id_from_manifest_key(raw_manifest_key)
    logger.set_correlation_id(batch_id)
    raw = Lake(s3_client, settings.raw_bucket)
    try:
        manifest = raw.get_manifest(raw_manifest_key)
    except ClientError as exc:
        if not _is_missing(exc):
            raise
        return gone(raw, raw_manifest_key, batch_id, exc.response["Error"]["Code"])
    except (ValueError, TypeError, AttributeError) as exc:  # not JSON, or not a manifest's
        problem = {
            "check": "unreadable_manifest",
            "message": f"{raw_manifest_key} is not a manifest: {type(exc).__name__}: {exc}",
        }
        return quarantine(raw, raw_manifest_key, batch_id, None, {"problems": [problem]})
    foreign = manifest_checks.problems(manifest, raw_manifest_key, "raw", datetime.now(UTC))
    if foreign:
        problems = [
            {"check": "foreign_manifest", "message": f"{raw_manifest_key}: {m}"} for m in foreign
        ]
        return quarantine(raw, raw_manifest_key, batch_id, None, {"problems": problems})

    try:
        gated = quality.gate(manifest, read_files(raw, manifest))
    except BatchRejected as rejected:
        return quarantine(raw, raw_manifest_key, batch_id, manifest, rejected.reason)
    records_key = record_set_aside(raw, batch_id, gated)

    processed = Lake(s3_client, settings.processed_bucket)
    tables = build_star(gated.source)
    deleted = deleted_keys(gated.deleted)
    if deleted.num_rows:
        tables[DELETED_KEYS] = deleted
    entries = []
    for name, table in tables.items():
        key = data_key(PROCESSED_PREFIX, name, manifest.batch_id)
        size = processed.put_table(key, table)
        entries.append(
            ManifestFile(name, key, table.num_rows, schema_fingerprint(table.schema), size)
        )
        emit("TransformRows", table.num_rows, table=name)
    if not entries:
        emit("QuarantinedBatches", 0)  # transformed, not quarantined: the check ran
        return nothing_to_load(batch_id, gated, records_key)
    out = Manifest(
        batch_id=manifest.batch_id,
        stage="processed",
        window_lo=manifest.window_lo,
        window_hi=manifest.window_hi,
        files=tuple(entries),
        source_batch_id=manifest.batch_id,
        extra={
            **(manifest.extra or {}),
            SET_ASIDE: gated.set_aside,
            "quarantined_rows": gated.set_aside_rows,
        },
    )
    manifest_key = processed.put_manifest(out)
    emit("QuarantinedBatches", 0)
    logger.info(
        "batch transformed",
        extra={
            "manifest_key": manifest_key,
            "rows": out.row_counts,
            "quarantined_rows": gated.set_aside_rows,
        },
    )
    return {
        "status": "processed",
        "batch_id": manifest.batch_id,
        "manifest_key": manifest_key,
        "rows": out.row_counts,
        "quarantined_rows": gated.rows_set_aside,
        "quarantined_rows_key": records_key,
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
