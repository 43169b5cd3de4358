"""The ingest stage: one scheduled run turns everything committed in totesys since the last
capture into one or more self-contained raw batches (Parquet parts, manifest last).

What is new is decided by commit order (``extract.capture``), deletions by the key sets
(``extract.keysets``). The state is the lake itself: the state pointer, else the newest
sound manifest (``extract.state``). A manifest is written only after every data file of its
batch is stored, and the pointer after the manifest, so a crash at any point leaves the state
where it was and the next run reads the same rows again. Keys derive from the batch id (the
run's capture sequence plus a part number), so objects are never half-replaced by a retry.
"""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.client import BaseClient
from pg8000.native import Connection

from totes import freshness
from totes.db import (
    DbCredentials,
    close,
    connect,
    credentials_from_secret_store,
    set_socket_timeout,
)
from totes.errors import TotesError
from totes.extract import adbc, capture, keysets, plan, readers, stream
from totes.extract.capture import CaptureState, KeySet, Resume
from totes.extract.keysets import refresh as keysets_refresh
from totes.extract.snapshot import check_schema, shared_sessions, snapshot
from totes.extract.state import starting_point
from totes.lake import (
    ICEBERG_COMMITTED_KEY,
    LOADED_KEY,
    RAW_PREFIX,
    Lake,
    Manifest,
    ManifestFile,
    batch_id_for,
    data_key,
    manifest_key,
)
from totes.lake import schema_fingerprint as fingerprint_of
from totes.observability import emit, logger, timed
from totes.settings import IngestSettings
from totes.source.model import TABLES, Table
from totes.stages import runtime

STAGE = "raw"
# pg8000's timeout bounds every socket wait, not just connecting: the run's counting and
# piece statements and a reader's sorted COPY send nothing for seconds per million rows on a
# busy source (the piece statement took 11 to 15 s at 1M orders here). So connect with the
# short default, then let statements run up to (just under) the function's timeout (900 s).
SOCKET_TIMEOUT_SECONDS = 880.0
# Parts of a batch being encoded and stored at once, besides the chunk being read.
PARTS_IN_FLIGHT = 2


def _session(creds: DbCredentials, application_name: str) -> Connection:
    con = connect(creds, application_name=application_name)
    set_socket_timeout(con, SOCKET_TIMEOUT_SECONDS)
    return con


def _reader_session(creds: DbCredentials, driver: str) -> readers.ReaderSession:
    """A reader's session of the run's driver. ADBC's libpq waits on a statement as long as it
    takes (no socket timeout to raise, unlike pg8000's); the function's timeout bounds it."""
    if driver == adbc.ADBC:
        return adbc.connect(creds, "totes-ingest-reader")
    return _session(creds, "totes-ingest-reader")


def _plan(
    con: Connection, creds: DbCredentials, selection: capture.Selection, settings: IngestSettings
) -> tuple[dict[str, plan.TableCounts], list[plan.Piece]]:
    """The run's counts and pieces. A capture of every row (a first capture: the run most
    likely cut into pieces) counts and cuts with its largest tables on sessions of their own,
    as many as its readers, sharing the snapshot: the two planning scans were the longest
    single-core stretch of a backfill (0.95 s at 1M orders, 0.56 s shared; docs/ingest.md
    "Planning on several sessions"). Every other run plans on its own session, and so does a
    first capture of a source too small to be cut (``plan.may_need_pieces``)."""
    helpers = 0
    if selection.everything and plan.may_need_pieces(con, settings.max_batch_rows):
        helpers = min(settings.readers, readers.MAX_READERS)
    connect = functools.partial(_session, creds, "totes-ingest-plan")
    with shared_sessions(con, connect, helpers) as sessions:
        for session in sessions:
            capture.publish(session, capture.rebased(session, selection))
        counts = plan.count(con, with_keys=not selection.everything, helpers=sessions)
        return counts, plan.pieces(con, counts, settings.max_batch_rows, sessions)


def _write_batch(
    con: Connection,
    lake: Lake,
    batch_id: str,
    settings: IngestSettings,
    copied: dict[str, list[pa.Array]],
    counts: dict[str, plan.TableCounts] | None,
    run_reads: Mapping[str, readers.TableReader] | None = None,
    piece: int = 0,
) -> list[ManifestFile]:
    """Every table's rows of the published piece as Parquet parts of at most ``chunk_rows``
    rows; the keys copied are collected in ``copied`` (for delete detection). Tables in
    ``run_reads`` are read once for the whole run (``extract.readers``): their rows of piece
    ``piece`` come from there.

    Encoding a part and storing it (Arrow and the S3 upload release the GIL) run on
    background threads while the next chunk is read from the source; at most
    ``PARTS_IN_FLIGHT`` parts are in flight, so memory stays at a few chunks, and the parts
    are listed in the order they were read. Two, not one: an upload mostly waits on S3, and
    with one in flight every read stalled behind it (docs/ingest.md).
    """
    files: list[ManifestFile] = []
    parts: dict[str, int] = {}
    in_flight: deque[Future[ManifestFile]] = deque()

    def store(table: Table, key: str, chunk: pa.Table) -> ManifestFile:
        size = lake.put_table(key, chunk)
        return ManifestFile(
            table.name, key, chunk.num_rows, fingerprint_of(table.lake_schema), size
        )

    def put(table: Table, chunk: pa.Table) -> None:
        copied.setdefault(table.name, []).append(pc.unique(chunk.column(table.key)))
        part = parts[table.name] = parts.get(table.name, -1) + 1
        key = data_key(RAW_PREFIX, table.name, batch_id, part)
        while len(in_flight) >= PARTS_IN_FLIGHT:
            # re-raises a failed upload here, before the manifest
            files.append(in_flight.popleft().result())
        in_flight.append(writer.submit(store, table, key, chunk))

    with ThreadPoolExecutor(max_workers=PARTS_IN_FLIGHT, thread_name_prefix="raw-writer") as writer:
        stream.copy_batch(con, settings.chunk_rows, put, counts, run_reads, piece)
        while in_flight:
            files.append(in_flight.popleft().result())
    return files


def _deletions_file(lake: Lake, batch_id: str, deleted: pa.Table) -> ManifestFile:
    key = data_key(RAW_PREFIX, keysets.DELETED_KEYS, batch_id)
    size = lake.put_table(key, deleted)
    schema = fingerprint_of(keysets.DELETED_SCHEMA)
    return ManifestFile(keysets.DELETED_KEYS, key, deleted.num_rows, schema, size)


@dataclass
class IngestRun:
    """What one run did and saw: the manifests it wrote (none when nothing was new), the
    capture it started from (for the freshness heartbeat), the lag between that capture and
    this run's snapshot, and how many lake objects it passed over as capture state."""

    manifests: list[Manifest] = field(default_factory=list)
    capture: freshness.Capture = field(default_factory=lambda: freshness.Capture(None, None, True))
    lag_seconds: float | None = None
    states_set_aside: int = 0


def ingest(settings: IngestSettings, creds: DbCredentials, s3_client: BaseClient) -> list[Manifest]:
    """Capture every change since the lake's state; return the manifests written (none when
    nothing changed). Raises ``DatabaseUnavailable`` / ``SchemaDrift`` before any object is
    written when the source is unreachable or not the schema we know."""
    return ingest_run(settings, creds, s3_client).manifests


def ingest_run(settings: IngestSettings, creds: DbCredentials, s3_client: BaseClient) -> IngestRun:
    """:func:`ingest`, with what the run saw besides its manifests (:class:`IngestRun`).

    Every run that ends with a capture state writes it, even when nothing is new (the state's
    snapshot and capture time then advance), and every state it writes references key sets
    young enough to outlive the lake's lifecycle rules (``keysets.refresh``)."""
    lake = Lake(s3_client, settings.raw_bucket)
    # The readers' driver: a driver asked for is checked before anything is read; the default
    # (ADBC where it imports) is chosen when the run starts readers, its import meanwhile
    # hidden behind the run's first statements (``adbc.preload``).
    if settings.reader_driver is None:
        adbc.preload()
        logger.remove_keys(["reader_driver"])  # a warm process's earlier run may have set it
    else:
        logger.append_keys(reader_driver=adbc.choose(settings.reader_driver))
    con = _session(creds, "totes-ingest")
    run = IngestRun()
    try:
        with snapshot(con), contextlib.ExitStack() as stack:
            check_schema(con)
            current, captured_at, source_now = capture.read_snapshot(con)
            start = starting_point(lake, current)
            run.states_set_aside = len(start.passed_over)
            state = start.state
            run.capture = freshness.Capture(
                start.manifest_key,
                state.captured_at if state else None,
                state is not None and state.resume is None,
            )
            if state is not None and state.captured_at:
                run.lag_seconds = _seconds_between(captured_at.isoformat(), state.captured_at)
            quiet = freshness.Capture(
                start.manifest_key, None, run.capture.start_complete, quiet_run_at=captured_at
            )

            def fresh_keysets(keysets: dict[str, KeySet]) -> dict[str, KeySet]:
                return keysets_refresh(lake, keysets, captured_at, settings.raw_retention_days)

            if state is not None and state.resume is None and state.snapshot == current:
                logger.info("nothing committed at the source since the last capture")
                advanced = CaptureState(
                    current, state.seq, fresh_keysets(state.keysets), None, captured_at.isoformat()
                )
                lake.put_state(start.manifest_key or "", advanced.to_json())
                run.capture = quiet
                return run
            selection, reason = capture.selection_for(con, state, current)
            if reason:
                logger.info("capturing every row", extra={"reason": reason})
            capture.publish(con, selection)
            counts, pieces = _plan(con, creds, selection, settings)
            if len(pieces) == 1:
                plan.publish_new_keys(con, counts)
            seq = capture.next_seq(state, current)
            previous_keysets = state.keysets if state else {}
            copied: dict[str, list[pa.Array]] = {}
            driver = adbc.PG8000  # unused: a run of one piece starts no readers
            if len(pieces) > 1:
                driver = adbc.choose(settings.reader_driver)
                logger.append_keys(reader_driver=driver)
            run_reads = stack.enter_context(
                readers.run_reads(
                    con,
                    lambda: _reader_session(creds, driver),
                    selection,
                    pieces,
                    counts,
                    settings.chunk_rows,
                    settings.readers,
                    driver,
                )
            )
            for part, piece in enumerate(pieces):
                batch_id = batch_id_for(seq, part)
                logger.set_correlation_id(batch_id)
                capture.publish_piece(con, piece.lo, piece.hi)
                keyed = counts if len(pieces) == 1 else None
                files = (
                    _write_batch(con, lake, batch_id, settings, copied, keyed, run_reads, part)
                    if piece.rows
                    else []
                )
                extra: dict[str, Any] = {}
                if part < len(pieces) - 1:
                    after = CaptureState(
                        current,
                        seq,
                        previous_keysets,
                        _resume_after(con, state, piece.hi or ""),
                        captured_at.isoformat(),
                    )
                else:
                    reconciled = keysets.reconcile(
                        con,
                        lake,
                        previous_keysets,
                        {t: keysets.distinct_sorted(a) for t, a in copied.items()},
                        counts,
                        batch_id,
                        complete=selection.everything,
                        exact=state is None or state.resume is None,
                        written_at=captured_at.isoformat(),
                    )
                    after = CaptureState(
                        current,
                        seq,
                        fresh_keysets(reconciled.keysets),
                        None,
                        captured_at.isoformat(),
                    )
                    if not files and not reconciled.deleted and not reconciled.writes:
                        if state is not None:  # nothing new: only the capture advances
                            lake.put_state(start.manifest_key or "", after.to_json())
                        logger.info("nothing new at the source")
                        run.capture = quiet
                        return run
                    for key, keys in reconciled.writes.items():
                        keysets.write_keys(lake, key, keys)
                    if reconciled.deleted:
                        files.append(_deletions_file(lake, batch_id, reconciled.deleted_table()))
                    extra["deleted_rows"] = reconciled.deleted_rows
                manifest = Manifest(
                    batch_id=batch_id,
                    stage=STAGE,
                    window_lo=piece.lo,
                    window_hi=piece.hi or source_now.isoformat(sep=" ", timespec="milliseconds"),
                    files=tuple(files),
                    extra={
                        "capture": after.to_json(),
                        "capture_seq": seq,
                        "hi_utc": captured_at.isoformat(),
                        "source_now": source_now.isoformat(),
                        "previous_snapshot": state.snapshot.text if state else None,
                        "previous_captured_at": state.captured_at if state else None,
                        "captured_everything": reason,
                        "source_tables": [t.name for t in TABLES],
                        "new_rows": piece.rows,
                        "part": part,
                        "parts": len(pieces),
                        **extra,
                    },
                )
                lake.put_manifest(manifest)
                lake.put_state(manifest_key(batch_id), after.to_json())
                logger.info(
                    "raw batch written",
                    extra={
                        "batch_id": batch_id,
                        "rows": manifest.row_counts,
                        "files": len(files),
                        "deleted_rows": extra.get("deleted_rows", {}),
                    },
                )
                run.manifests.append(manifest)
            return run
    finally:
        close(con)  # quietly when the source went away mid-run (the run's error stands)


def _resume_after(con: Connection, state: CaptureState | None, written_up_to: str) -> Resume:
    """The state after a piece that is not the run's last: rows new since the state the run
    started from, stamped at or after the next piece's first stamp, are still to be read (for
    a run that itself resumed, from the earlier of the two stamps: a superset, always safe)."""
    if state is not None and state.resume is not None:
        return Resume(state.resume.base, plan.earlier(con, state.resume.stamp_from, written_up_to))
    return Resume(state.snapshot if state else None, written_up_to)


def _seconds_between(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def from_schedule_event(
    event: dict[str, Any], context: LambdaContext | None = None
) -> dict[str, Any]:
    """The Lambda's work: credentials from Secrets Manager, one ingest run, its metrics. The
    duration and the freshness heartbeat are emitted whatever the run's outcome."""
    config = runtime.settings(IngestSettings)
    run: IngestRun | None = None
    try:
        with timed("IngestDurationSeconds"):
            creds = credentials_from_secret_store(
                config.source_secret_id, provider=runtime.secrets()
            )
            run = ingest_run(config, creds, runtime.s3())
    except TotesError as exc:  # operator-grade message, no credentials; the state is untouched
        logger.error("ingest failed", extra={"error": str(exc), "kind": type(exc).__name__})
        raise
    finally:
        heartbeat(config, run)
    manifests = run.manifests
    emit("IngestStatesSetAside", run.states_set_aside)
    if run.lag_seconds is not None:
        emit("IngestCaptureLagSeconds", run.lag_seconds)
    if not manifests:
        emit("IngestEmptyRuns", 1)
        return {"batches": [], "rows": {}}
    rows: dict[str, int] = {}
    for manifest in manifests:
        for table, n in manifest.row_counts.items():
            rows[table] = rows.get(table, 0) + n
    for table, n in sorted(rows.items()):
        emit("IngestRows", n, table=table)
    emit("IngestBytes", sum(f.bytes for m in manifests for f in m.files))
    return {"batches": [m.batch_id for m in manifests], "rows": rows}


def heartbeat(config: IngestSettings, run: IngestRun | None) -> float | None:
    """Emit ``WarehouseFreshnessSeconds`` for this run (``totes.freshness``); after a failed
    run, from the capture state the lake holds. With the Iceberg target on, also
    ``IcebergFreshnessSeconds`` from its committed marker, by the same rule. Never raises (it
    runs while an exception may be on its way out): a problem is logged, and the missing
    datapoint counts as breaching."""
    if not config.processed_bucket:
        return None
    try:
        s3_client = runtime.s3()
        if run is None:
            pointer = Lake(s3_client, config.raw_bucket).get_state() or {}
            found = pointer.get("capture")
            state: dict[str, Any] = found if isinstance(found, dict) else {}
            known = freshness.Capture(
                str(pointer.get("manifest_key") or "") or None,
                state.get("captured_at"),
                not state.get("resume"),
            )
        else:
            known = run.capture
    except Exception as exc:
        logger.error(
            "warehouse freshness not measured", extra={"error": f"{type(exc).__name__}: {exc}"}
        )
        return None
    processed = Lake(s3_client, config.processed_bucket)
    seconds = _freshness(known, processed, LOADED_KEY, "WarehouseFreshnessSeconds", "warehouse")
    if config.iceberg_bucket:
        iceberg = Lake(s3_client, config.iceberg_bucket)
        _freshness(known, iceberg, ICEBERG_COMMITTED_KEY, "IcebergFreshnessSeconds", "Iceberg")
    return seconds


def _freshness(
    known: freshness.Capture, lake: Lake, key: str, metric: str, target: str
) -> float | None:
    """One target's freshness from its marker (never raises, as ``heartbeat``)."""
    try:
        held = freshness.held_by_warehouse(known, freshness.read_marker(lake, key))
    except Exception as exc:
        logger.error(
            f"{target} freshness not measured", extra={"error": f"{type(exc).__name__}: {exc}"}
        )
        return None
    if held is None:
        logger.info(f"{target} freshness unknown: no batch loaded yet")
        return None
    seconds = freshness.seconds_since(held)
    emit(metric, seconds)
    return seconds
