"""The batch ledger and the load lock: why a batch is merged at most once.

Every load takes a transaction-scoped advisory lock (one warehouse writer at a time, so
concurrent deliveries of one batch serialise instead of racing), then inserts the batch's
ledger row ``ON CONFLICT DO NOTHING``: a batch already there is acknowledged and skipped. The
row is written in the same transaction as the batch's rows, so it exists exactly when they do,
and behind Powertools idempotency it keeps a redelivered event harmless after the idempotency
record has expired.
"""

from __future__ import annotations

import json

from pg8000.native import Connection

from totes.lake import Manifest
from totes.warehouse.results import LoadResult

# An arbitrary, fixed 64-bit key: "totes warehouse load". One warehouse writer at a time.
LOAD_LOCK_KEY = 0x70746573_6C6F6164
LEDGER = "etl_batch_ledger"


def lock(con: Connection) -> None:
    """Wait for the load lock; it is released by the transaction's end."""
    con.run("SELECT pg_advisory_xact_lock(:key)", key=LOAD_LOCK_KEY)


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


def record(con: Connection, result: LoadResult) -> None:
    """Store the batch's row counts in its ledger row (same transaction as the rows)."""
    con.run(
        "UPDATE etl_batch_ledger SET row_counts = CAST(:counts AS jsonb) WHERE batch_id = :batch",
        counts=json.dumps(result.row_counts(), sort_keys=True),
        batch=result.batch_id,
    )
