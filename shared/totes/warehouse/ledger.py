"""The batch ledger and the load lock: why a batch is merged at most once.

Every load first inserts the batch's ledger row ``ON CONFLICT DO NOTHING``: a batch already
there is acknowledged and skipped, and a second delivery of a batch being loaded waits on the
first's uncommitted row, then is skipped (or loads it, if the first rolled back). Then it
takes a transaction-scoped advisory lock, one warehouse writer at a time for the merges (a
first capture's facts are COPYed before it: ``merge``). The row is written in the same
transaction as the batch's rows, so it exists exactly when they do, and behind Powertools
idempotency it keeps a redelivered event harmless after the idempotency record has expired.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from pg8000.native import Connection

from totes.lake import Manifest
from totes.warehouse.results import LoadResult

# An arbitrary, fixed 64-bit key: "totes warehouse load". One warehouse merge at a time.
LOAD_LOCK_KEY = 0x70746573_6C6F6164
LEDGER = "etl_batch_ledger"


def lock(con: Connection) -> None:
    """Wait for the load lock; it is released by the transaction's end."""
    con.run("SELECT pg_advisory_xact_lock(:key)", key=LOAD_LOCK_KEY)


# How often a batch that wrote rows before the lock asks for it again (``lock_unless_blocking``).
LOCK_POLL_SECONDS = 0.02
# The lock if it is free; else whether its holder waits for this transaction, directly or
# through a chain of waits (``pg_blocking_pids``, from the holder on). A bigint advisory key is
# (classid, objid) = (high, low 32 bits), objsubid 1, in this database.
_LOCK_OR_BLOCKING = (
    "SELECT CASE WHEN pg_try_advisory_xact_lock(CAST(:key AS bigint)) THEN 'locked'"
    " WHEN pg_backend_pid() IN ("
    "  WITH RECURSIVE waiting(pid) AS ("
    "   SELECT l.pid FROM pg_locks l"
    "   WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    "   AND l.classid = CAST(:high AS oid) AND l.objid = CAST(:low AS oid)"
    "   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    "   UNION SELECT unnest(pg_blocking_pids(w.pid)) FROM waiting w"
    "  ) SELECT pid FROM waiting"
    " ) THEN 'blocking' ELSE 'waiting' END"
)


def lock_unless_blocking(con: Connection, poll_seconds: float = LOCK_POLL_SECONDS) -> bool:
    """Take the load lock, or return False as soon as its holder waits for this transaction
    (the caller then rolls back). For a batch that wrote rows before the lock (a first
    capture's facts: ``merge``). It asks without queueing (``pg_try_advisory_xact_lock``), so
    it is never in a wait PostgreSQL's deadlock check can see: that check runs in the backend
    that has waited ``deadlock_timeout`` (1 s) with the cycle closed, which would be the load
    under the lock, writing a version this batch copied, every time; this batch gives way
    instead, within a poll."""
    while True:
        [[state]] = con.run(
            _LOCK_OR_BLOCKING,
            key=LOAD_LOCK_KEY,
            high=LOAD_LOCK_KEY >> 32,
            low=LOAD_LOCK_KEY & 0xFFFFFFFF,
        )
        if state != "waiting":
            return bool(state == "locked")
        time.sleep(poll_seconds)


def claim(con: Connection, manifest: Manifest, seq: int) -> bool:
    """Insert the batch's ledger row (with its capture ``seq``); False if another load already
    committed it."""
    extra = manifest.extra or {}
    rows = con.run(
        "INSERT INTO etl_batch_ledger"
        " (batch_id, source_batch_id, window_lo, window_hi, hi_utc, capture_seq, row_counts)"
        " VALUES (:batch, :source, CAST(:lo AS timestamp), CAST(:hi AS timestamp),"
        " CAST(:hi_utc AS timestamptz), CAST(:seq AS bigint), '{}'::jsonb)"
        " ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
        seq=seq,
        batch=manifest.batch_id,
        source=manifest.source_batch_id,
        lo=manifest.window_lo,
        hi=manifest.window_hi,
        hi_utc=extra.get("hi_utc"),
    )
    return bool(rows)


def older_capture_loaded(con: Connection, seq: int) -> bool:
    """Whether any loaded batch has a capture older than ``seq``. Every stored fact row carries
    the capture of a batch in this ledger (the batch that wrote it, or that parked it; rows
    from before capture order carry 0, as do their ledger rows), so when none is older no
    stored version can be rewritten by this batch and the rewrite's probes can be skipped: the
    case of every batch of a backfill (one ingest run, one capture). The scan stops at the
    first older row, which in steady state is the first row it reads."""
    [[older]] = con.run(
        "SELECT EXISTS (SELECT 1 FROM etl_batch_ledger WHERE capture_seq < CAST(:seq AS bigint))",
        seq=seq,
    )
    return bool(older)


def record(con: Connection, result: LoadResult) -> None:
    """Store the batch's row counts in its ledger row (same transaction as the rows)."""
    con.run(
        "UPDATE etl_batch_ledger SET row_counts = CAST(:counts AS jsonb) WHERE batch_id = :batch",
        counts=json.dumps(result.row_counts(), sort_keys=True),
        batch=result.batch_id,
    )


# Another fixed key: "totes loaded marker". Held while the newest loaded batch is read from
# the ledger and written to the lake's loaded marker, so two loads never write it out of order.
MARKER_LOCK_KEY = 0x70746573_6D61726B


def newest(con: Connection) -> tuple[str, int, datetime] | None:
    """The newest batch in the ledger that carries its capture time: (batch id, capture seq,
    hi_utc, aware), or None. Newest is the greatest capture sequence, then batch id (the
    parts of one run share its sequence; batches from before capture order have 0)."""
    rows = con.run(
        "SELECT batch_id, capture_seq, hi_utc FROM etl_batch_ledger"
        " WHERE hi_utc IS NOT NULL ORDER BY capture_seq DESC, batch_id DESC LIMIT 1"
    )
    if not rows:
        return None
    batch_id, seq, hi_utc = rows[0]
    when = hi_utc if hi_utc.tzinfo else hi_utc.replace(tzinfo=UTC)
    return str(batch_id), int(seq), when.astimezone(UTC)
