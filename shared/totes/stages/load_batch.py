"""The load stage: one processed batch (named by its manifest) merged into the warehouse.

Reads the processed manifest and its Parquet files, refuses files that do not match the
manifest (row count, schema fingerprint) or the star model, checks once per process that the
warehouse holds every migration the code ships (it never migrates: its role has no DDL
rights; a warehouse behind the code is refused, ``SchemaBehind``, naming the missing
migrations), and merges the batch in one transaction (``totes.warehouse.merge``). Its
connection resolves unqualified names in the warehouse schema only (``search_path`` set at
connect, from ``WAREHOUSE_SCHEMA``). Powertools idempotency sits in front (``run_once``); the
warehouse's batch ledger sits behind it, so a redelivered event changes nothing even after
its idempotency record has expired.

Failures are raised, naming the batch, table and cause: the batch rolled back, so the async
retry or the failure destination can take over safely. A manifest that cannot be trusted
(``totes.manifest_checks``: another batch's, files that are not the batch's own, no files,
malformed capture fields) is refused before any file is read or the warehouse is reached.
The one failure after the commit (reporting the batch) is ``LoadedButUnreported``: the batch
stays loaded and a retry is acknowledged by the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from pg8000.exceptions import DatabaseError
from pg8000.native import Connection

from totes import freshness, manifest_checks
from totes.db import (
    DbCredentials,
    close,
    connect,
    credentials_from_secret_store,
    set_socket_timeout,
)
from totes.errors import DatabaseUnavailable, LoadedButUnreported, LoadFailed, SchemaBehind
from totes.lake import (
    UNREADABLE_PARQUET,
    Lake,
    Manifest,
    batch_id_from_manifest_key,
    schema_fingerprint,
)
from totes.observability import emit, logger, timed
from totes.server_errors import describe_error
from totes.settings import LoadSettings
from totes.stages import runtime
from totes.stages.trigger import ObjectRef, handle_manifests
from totes.warehouse import ledger
from totes.warehouse.merge import expected_fingerprint, load_batch
from totes.warehouse.migrations import require_current
from totes.warehouse.results import LoadResult

# pg8000's timeout bounds every socket wait, not just connecting: a bulk merge statement or a
# wait for the load lock answers nothing for a long time. So connect with the short default,
# then let statements run up to (just under) the function's timeout.
SOCKET_TIMEOUT_SECONDS = 880.0

# Warehouses (database, user, schema) this process found current; one behind is checked
# again on every batch, so the first batch after the owner migrates goes through.
_current: set[tuple[str, str, str]] = set()


def read_batch(lake: Lake, manifest: Manifest) -> dict[str, pa.Table]:
    """Every table of the batch, each checked against its manifest entry and the model."""
    batch = manifest.batch_id
    parts: dict[str, list[pa.Table]] = {}
    for entry in manifest.files:
        where = f"batch {batch}: table {entry.table} ({entry.key})"
        try:
            expected = expected_fingerprint(entry.table)
        except KeyError:
            raise LoadFailed(f"{where}: not a star table nor deleted_keys") from None
        try:
            table = lake.get_table(entry.key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise LoadFailed(f"{where}: cannot read the file ({code})") from None
        except UNREADABLE_PARQUET as exc:  # its message may quote the data: not kept
            raise LoadFailed(
                f"{where}: not a readable Parquet file ({type(exc).__name__})"
            ) from None
        if table.num_rows != entry.rows:
            raise LoadFailed(
                f"{where}: file has {table.num_rows} rows, the manifest says {entry.rows}"
            )
        actual = schema_fingerprint(table.schema)
        if actual != entry.fingerprint:
            raise LoadFailed(
                f"{where}: schema fingerprint {actual} differs from the manifest's"
                f" {entry.fingerprint}"
            )
        if actual != expected:
            raise LoadFailed(
                f"{where}: schema fingerprint {actual} is not the star model's {expected}"
                f" (columns: {table.schema.names})"
            )
        parts.setdefault(entry.table, []).append(table)
    return {name: pa.concat_tables(tables) for name, tables in parts.items()}


def _check_schema(con: Connection, creds: DbCredentials, schema: str, batch_id: str) -> None:
    """Refuse to load into a warehouse behind the code (once per process when current: a
    cheap read of ``schema_migrations``). Never migrates: that is the owner's step."""
    target = (creds.where, creds.user, schema)
    if target in _current:
        return
    try:
        require_current(con, f"{creds.where} (schema {schema})")
    except DatabaseError as exc:  # e.g. the role may not read schema_migrations
        raise LoadFailed(
            f"batch {batch_id}: cannot read the warehouse's schema version in schema {schema}:"
            f" {_server_message(exc)}"
        ) from None
    except SchemaBehind as exc:
        logger.error(
            "warehouse schema is behind the code; batch refused, nothing written",
            extra={"missing_migrations": exc.missing, "schema": schema},
        )
        raise SchemaBehind(f"batch {batch_id}: {exc}", exc.missing) from None
    _current.add(target)


def _server_message(exc: DatabaseError) -> str:
    """The server's refusal named by objects and SQLSTATE, never a value it quotes
    (``server_errors.describe_error``)."""
    return describe_error(exc)


def _emit(result: LoadResult) -> None:
    """Rows per table and outcome (``LoadRowsDeleted``: rows this batch marked deleted at the
    source)."""
    for name, counts in result.row_counts().items():
        for metric_name, key in (
            ("LoadRowsInserted", "inserted"),
            ("LoadRowsUpdated", "updated"),
            ("LoadRowsSkipped", "skipped"),
            ("LoadRowsParked", "parked"),
            ("LoadRowsDeleted", "marked"),
        ):
            emit(metric_name, counts[key], table=name)


def record_loaded(con: Connection, lake: Lake) -> freshness.LoadedMarker | None:
    """Write the loaded marker (``totes.freshness``) from the ledger's newest batch. The ledger
    is read and the marker written under a session lock, so a slower load that finishes later
    never writes an older marker over a newer one."""
    con.run("SELECT pg_advisory_lock(:key)", key=ledger.MARKER_LOCK_KEY)
    try:
        newest = ledger.newest(con)
        if newest is None:
            return None
        marker = freshness.LoadedMarker(*newest)
        freshness.write_marker(lake, marker)
        return marker
    finally:
        con.run("SELECT pg_advisory_unlock(:key)", key=ledger.MARKER_LOCK_KEY)


def load(
    processed_manifest_key: str,
    settings: LoadSettings,
    s3_client: BaseClient,
    creds: DbCredentials,
) -> dict[str, Any]:
    """Merge the processed batch named by ``processed_manifest_key`` into the warehouse; then
    move the loaded marker forward and report the warehouse's freshness (for a batch already
    loaded too). Its duration is emitted whatever the outcome, a failure included."""
    with timed("LoadDurationSeconds"):
        return _load(processed_manifest_key, settings, s3_client, creds)


def _load(
    processed_manifest_key: str,
    settings: LoadSettings,
    s3_client: BaseClient,
    creds: DbCredentials,
) -> dict[str, Any]:
    batch_id = batch_id_from_manifest_key(processed_manifest_key)
    logger.set_correlation_id(batch_id)
    lake = Lake(s3_client, settings.processed_bucket)
    try:
        manifest = lake.get_manifest(processed_manifest_key)
    except (ValueError, TypeError, AttributeError) as exc:  # not JSON, or not a manifest's
        raise LoadFailed(f"batch {batch_id}: unreadable manifest: {exc}") from None
    refused = manifest_checks.problems(
        manifest, processed_manifest_key, "processed", datetime.now(UTC)
    )
    if refused:  # before any file is read or the warehouse is reached
        raise LoadFailed(f"batch {batch_id}: {processed_manifest_key}: {'; '.join(refused)}")
    tables = read_batch(lake, manifest)
    try:
        con = connect(creds, application_name="totes-load", search_path=settings.warehouse_schema)
    except DatabaseUnavailable as exc:
        raise DatabaseUnavailable(f"batch {batch_id}: {exc}") from None
    set_socket_timeout(con, SOCKET_TIMEOUT_SECONDS)
    try:
        _check_schema(con, creds, settings.warehouse_schema, batch_id)
        result = load_batch(con, manifest, tables)
        try:  # the batch is committed (or was already): what follows cannot roll it back
            marker = record_loaded(con, lake)
        except Exception as exc:
            raise LoadedButUnreported(
                f"batch {batch_id}: in the warehouse ledger (committed), then writing the"
                f" loaded marker failed: {type(exc).__name__}: {exc}"
            ) from exc
    finally:
        close(con)  # quietly when broken: a dead connection cannot close politely
    try:
        return _report(batch_id, result, marker)
    except Exception as exc:
        raise LoadedButUnreported(
            f"batch {batch_id}: in the warehouse ledger (committed), then reporting it failed:"
            f" {type(exc).__name__}: {exc}"
        ) from exc


def _report(
    batch_id: str, result: LoadResult, marker: freshness.LoadedMarker | None
) -> dict[str, Any]:
    fresh = None
    if marker is not None:
        fresh = freshness.seconds_since(marker.hi_utc)
        emit("WarehouseFreshnessSeconds", fresh)
    if not result.loaded:
        logger.info("batch already in the warehouse ledger; nothing to do")
        return {"status": "already_loaded", "batch_id": batch_id}
    _emit(result)
    rows = result.row_counts()
    logger.info("batch loaded", extra={"rows": rows, "freshness_seconds": fresh})
    return {"status": "loaded", "batch_id": batch_id, "rows": rows}


def from_s3_event(event: S3Event, context: LambdaContext | None = None) -> dict[str, Any]:
    """The handler's work: each processed manifest the event names, loaded at most once per
    (bucket, key, eTag) by idempotency, and at most once per batch by the ledger."""
    config = runtime.settings(LoadSettings)
    s3_client = runtime.s3()

    def work(ref: ObjectRef) -> dict[str, Any]:
        creds = credentials_from_secret_store(
            config.warehouse_secret_id, provider=runtime.secrets()
        )
        try:
            return load(ref.key, config, s3_client, creds)
        except LoadedButUnreported:
            logger.exception(
                "batch committed; what followed failed (a retry finds it in the ledger)",
                extra={"key": ref.key},
            )
            raise
        except Exception:
            logger.exception(
                "batch load failed; rolled back, nothing of it committed", extra={"key": ref.key}
            )
            raise

    return handle_manifests(
        event,
        context,
        bucket=config.processed_bucket,
        idempotency_table=config.idempotency_table,
        work=work,
    )
