"""The ingest stage: one scheduled run turns everything that changed in totesys since the last
committed batch into one or more self-contained raw batches (Parquet parts, manifest last).

The state is the lake itself: the newest manifest in the raw bucket holds the previous ``hi``.
A manifest is written only after every data file of its batch is stored, so a crash at any
point leaves the state where it was, and the next run re-reads the same rows. Keys derive from
the batch id (the window's ``hi`` plus a part number), so a re-run of a window overwrites the
same objects with the same content.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pyarrow as pa
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.client import BaseClient
from pg8000.native import Connection

from totes.db import DbCredentials, connect, credentials_from_secret_store
from totes.errors import TotesError
from totes.extract import stream, watermark
from totes.extract.snapshot import check_schema, snapshot
from totes.extract.watermark import Window
from totes.lake import RAW_PREFIX, Lake, Manifest, ManifestFile, batch_id_for, data_key
from totes.lake import schema_fingerprint as fingerprint_of
from totes.observability import add_table_metric, logger, metrics
from totes.settings import IngestSettings
from totes.source.model import TABLES, Table
from totes.stages import runtime

STAGE = "raw"


def _write_batch(
    con: Connection, lake: Lake, batch_id: str, window: Window, settings: IngestSettings
) -> list[ManifestFile]:
    """Every table's rows for ``window`` as Parquet parts of at most ``chunk_rows`` rows.

    Encoding a part and storing it (Arrow and the S3 upload release the GIL) run on one
    background thread while the next chunk is read from the source; at most one part is in
    flight, so memory stays at about three chunks, and parts are stored in order.
    """
    files: list[ManifestFile] = []
    parts: dict[str, int] = {}
    in_flight: list[Future[None]] = []

    def store(table: Table, key: str, chunk: pa.Table) -> None:
        size = lake.put_table(key, chunk)
        files.append(
            ManifestFile(table.name, key, chunk.num_rows, fingerprint_of(table.arrow_schema), size)
        )

    def put(table: Table, chunk: pa.Table) -> None:
        part = parts[table.name] = parts.get(table.name, -1) + 1
        key = data_key(RAW_PREFIX, table.name, batch_id, part)
        while in_flight:
            in_flight.pop().result()  # re-raises a failed upload here, before the manifest
        in_flight.append(writer.submit(store, table, key, chunk))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-writer") as writer:
        stream.copy_batch(con, window, settings.chunk_rows, put)
        while in_flight:
            in_flight.pop().result()
    return files


def ingest(settings: IngestSettings, creds: DbCredentials, s3_client: BaseClient) -> list[Manifest]:
    """Extract every change since the last committed batch; return the manifests written
    (none when nothing changed). Raises ``DatabaseUnavailable`` / ``SchemaDrift`` before any
    object is written when the source is unreachable or not the schema we know."""
    lake = Lake(s3_client, settings.raw_bucket)
    previous = lake.latest_manifest()
    con = connect(creds, application_name="totes-ingest")
    try:
        with snapshot(con):
            check_schema(con)
            clock = watermark.read_clock(con, settings.lag_seconds)
            window = watermark.window_after(previous, clock.hi, settings.overlap_seconds)
            if watermark.nothing_new(con, previous, window):
                logger.info("no changes at the source", extra={"window_hi": window.hi_iso})
                return []
            plan = watermark.plan_windows(con, window, settings.max_batch_rows)
            if not plan:
                logger.info("no rows at the source", extra={"window_hi": window.hi_iso})
                return []
            tail = watermark.tail_fingerprint(con, window, settings.overlap_seconds)
            manifests = []
            for part, (piece, changed_rows) in enumerate(plan):
                batch_id = batch_id_for(window.hi, part)
                logger.set_correlation_id(batch_id)
                files = _write_batch(con, lake, batch_id, piece, settings)
                manifest = Manifest(
                    batch_id=batch_id,
                    stage=STAGE,
                    window_lo=piece.lo_iso,
                    window_hi=piece.hi_iso,
                    files=tuple(files),
                    extra={
                        "hi_utc": watermark.to_utc(con, piece.hi).isoformat(),
                        "source_tables": [t.name for t in TABLES],
                        "source_now": watermark.iso(clock.now),
                        "previous_hi": previous.window_hi if previous else None,
                        "changed_rows": changed_rows,
                        "part": part,
                        "parts": len(plan),
                        "lag_seconds": settings.lag_seconds,
                        "overlap_seconds": settings.overlap_seconds,
                        # Only the newest manifest's value is ever read (watermark.nothing_new).
                        "tail_fingerprint": tail if part == len(plan) - 1 else None,
                    },
                )
                lake.put_manifest(manifest)
                logger.info(
                    "raw batch written",
                    extra={
                        "batch_id": batch_id,
                        "window_lo": manifest.window_lo,
                        "window_hi": manifest.window_hi,
                        "rows": manifest.row_counts,
                        "files": len(files),
                    },
                )
                manifests.append(manifest)
            return manifests
    finally:
        con.close()


def _seconds_between(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def from_schedule_event(
    event: dict[str, Any], context: LambdaContext | None = None
) -> dict[str, Any]:
    """The Lambda's work: credentials from Secrets Manager, one ingest run, its metrics."""
    config = runtime.settings(IngestSettings)
    started = time.monotonic()
    try:
        creds = credentials_from_secret_store(config.source_secret_id)
        manifests = ingest(config, creds, runtime.s3())
    except TotesError as exc:  # operator-grade message, no credentials; the state is untouched
        logger.error("ingest failed", extra={"error": str(exc), "kind": type(exc).__name__})
        raise
    finally:
        seconds = time.monotonic() - started
        metrics.add_metric(name="IngestDurationSeconds", unit=MetricUnit.Seconds, value=seconds)
    if not manifests:
        metrics.add_metric(name="IngestEmptyRuns", unit=MetricUnit.Count, value=1)
        return {"batches": [], "rows": {}}
    rows: dict[str, int] = {}
    for manifest in manifests:
        for table, n in manifest.row_counts.items():
            rows[table] = rows.get(table, 0) + n
    for table, n in sorted(rows.items()):
        add_table_metric("IngestRows", MetricUnit.Count, n, table)
    size = sum(f.bytes for m in manifests for f in m.files)
    metrics.add_metric(name="IngestBytes", unit=MetricUnit.Bytes, value=size)
    first = manifests[0].extra
    if first.get("previous_hi"):
        lag = _seconds_between(first["source_now"], first["previous_hi"])
        metrics.add_metric(name="IngestWindowLagSeconds", unit=MetricUnit.Seconds, value=lag)
    return {"batches": [m.batch_id for m in manifests], "rows": rows}
