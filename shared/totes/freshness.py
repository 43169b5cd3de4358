"""How current the warehouse is, proven on every ingest run: the freshness heartbeat.

Load writes, after each batch (loaded, or found already loaded), the **loaded marker**
``state/loaded.json`` in the processed bucket: the newest batch the warehouse's batch ledger
holds, its capture sequence and its capture time (``hi_utc``, the source snapshot the batch was
read in). It is read from the ledger under a lock, so it only moves forward whatever order
loads finish in. Ingest reads the marker on every run, with or without changes, and emits
``WarehouseFreshnessSeconds`` = now minus the newest capture time the warehouse is known to hold:

- when the marker covers the newest batch the capture state names (everything captured is
  loaded), the warehouse holds everything up to the state's snapshot; and when this run found
  nothing new, up to this run's snapshot: a quiet, caught-up source reads about 0 s;
- otherwise only up to the marker's capture time (batches are in flight, or stuck).

With the optional Iceberg target on, the Iceberg function keeps the same marker for its tables
(``state/iceberg-committed.json`` in the Iceberg bucket, moved forward after each batch it
commits or finds committed) and ingest emits ``IcebergFreshnessSeconds`` from it by the same
rule: each target's heartbeat, neither waiting on the other.

So the value grows only when captures stop reaching the warehouse (load failing, transform
stuck, ingest failing: a failed run still reports), never because the source is quiet. What it
cannot see: a batch that failed while newer ones loaded (batches load in any order). The
failure queue's oldest-message age alarms on that one. The parts of a run split into bounded
batches share the run's snapshot time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from totes.lake import LOADED_KEY, Lake, batch_id_from_manifest_key
from totes.observability import logger

_MISSING = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True)
class LoadedMarker:
    """The newest batch the warehouse ledger holds and the capture time it was read at."""

    batch_id: str
    capture_seq: int
    hi_utc: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "capture_seq": self.capture_seq,
            "hi_utc": self.hi_utc.isoformat(),
            "written_at": datetime.now(UTC).isoformat(),
        }

    @classmethod
    def from_json(cls, data: Any) -> LoadedMarker:
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) on a malformed marker."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        hi_utc = datetime.fromisoformat(str(data["hi_utc"]))
        if hi_utc.tzinfo is None:
            raise ValueError("hi_utc carries no time zone")
        return cls(str(data["batch_id"]), int(data["capture_seq"]), hi_utc.astimezone(UTC))

    def newer_than(self, other: LoadedMarker | None) -> bool:
        """Newest is the greatest capture sequence, then batch id (``ledger.newest``'s order)."""
        return other is None or (self.capture_seq, self.batch_id) > (
            other.capture_seq,
            other.batch_id,
        )


def write_marker(lake: Lake, marker: LoadedMarker, key: str = LOADED_KEY) -> None:
    body = json.dumps(marker.to_json(), sort_keys=True).encode()
    lake.put_bytes(key, body, "application/json")


def read_marker(lake: Lake, key: str = LOADED_KEY) -> LoadedMarker | None:
    """The loaded marker (``key``: the Iceberg target's), None when no batch was loaded yet or
    the marker is damaged (logged: its writer rewrites it after its next batch)."""
    try:
        body = lake.get_bytes(key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _MISSING:
            return None
        raise
    try:
        return LoadedMarker.from_json(json.loads(body))
    except (ValueError, KeyError, TypeError) as exc:
        logger.error("loaded marker unreadable", extra={"key": key, "problem": str(exc)})
        return None


def _aware(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(text)
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)


@dataclass(frozen=True)
class Capture:
    """What an ingest run knows of the capture: the newest manifest its starting state names
    (None: no batch was ever written), that state's snapshot time and whether it was complete
    (not an interrupted split run), and this run's snapshot time when the run wrote no batch."""

    start_manifest_key: str | None
    start_captured_at: str | None
    start_complete: bool
    quiet_run_at: datetime | None = None


def held_by_warehouse(capture: Capture, marker: LoadedMarker | None) -> datetime | None:
    """The newest source capture time the warehouse is known to hold (None: unknown, e.g.
    nothing loaded yet)."""
    newest = capture.start_manifest_key
    covered = newest is None or (
        marker is not None and marker.batch_id >= batch_id_from_manifest_key(newest)
    )
    if covered:
        if capture.quiet_run_at is not None:  # nothing new up to this run's snapshot
            return capture.quiet_run_at
        start = _aware(capture.start_captured_at) if capture.start_complete else None
        if start is not None:
            return max(start, marker.hi_utc) if marker else start
    return marker.hi_utc if marker else None


def seconds_since(when: datetime, now: datetime | None = None) -> float:
    return max(0.0, ((now or datetime.now(UTC)) - when).total_seconds())
