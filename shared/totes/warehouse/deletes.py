"""Deleted keys: tombstones and the ``source_deleted_at`` marks, order-free.

A batch's deletions (the processed table ``deleted_keys``) are upserted into the tombstones
``etl_deleted_keys``, which keep the latest deletion of each key (the greatest
``capture_seq``) and are never removed. A key is deleted exactly when its tombstone is newer
than the key's latest content: a dimension row's ``capture_seq``, the greatest over a fact's
versions (a version delivered again by a later capture records it, ``facts``). Every row of a
deleted key carries ``source_deleted_at`` = the tombstone's ``deleted_at``, every other row
NULL. Both sides only grow with commit order, so any order of batches ends the same: a key
that reappears (content of a later capture) is unmarked, and a version arriving late for a key
deleted meanwhile, or for a key deleted before it was ever loaded, is inserted and marked.

Each batch recomputes the marks of the keys it touched (its staged rows, released parked
facts and its own deletions) that have a tombstone: the touched keys join the tombstones by
their primary key, then the table by its key index, so a batch pays for its own keys only.
"""

from __future__ import annotations

from pg8000.native import Connection

from totes.identifiers import quote
from totes.star.model import CAPTURE_SEQ, DELETED_KEYS, SOURCE_DELETED_AT, STAR_TABLES, StarTable

# Every table but the calendar: its keys can be deleted at the source and marked.
TRACKED_TABLES: tuple[StarTable, ...] = tuple(t for t in STAR_TABLES if t.tracked)
TOMBSTONES = "etl_deleted_keys"
STAGED_DELETIONS = f"stage_{DELETED_KEYS}"


def record_deletions(con: Connection, seq: int, deleted_at: str | None) -> dict[str, int]:
    """Upsert the staged deletions into the tombstones (a newer capture replaces an older
    deletion of the key, never the reverse); returns the distinct keys deleted per table.
    ``deleted_at`` is the capture's ISO time, stored as naive UTC."""
    counts = con.run(
        f"WITH deleted AS (SELECT DISTINCT star_table, key FROM {STAGED_DELETIONS}),"  # noqa: S608  # nosec B608
        f" upserted AS (INSERT INTO {TOMBSTONES} (star_table, key, capture_seq, deleted_at)"
        f" SELECT star_table, key, CAST(:seq AS bigint),"
        f" CAST(:deleted_at AS timestamptz) AT TIME ZONE 'UTC' FROM deleted"
        f" ON CONFLICT (star_table, key) DO UPDATE"
        f" SET capture_seq = EXCLUDED.capture_seq, deleted_at = EXCLUDED.deleted_at"
        f" WHERE {TOMBSTONES}.capture_seq < EXCLUDED.capture_seq)"
        f" SELECT star_table, count(*) FROM deleted GROUP BY star_table",
        seq=seq,
        deleted_at=deleted_at,
    )
    return {name: int(n) for name, n in counts}


def with_tombstones(con: Connection, tables: list[StarTable]) -> set[str]:
    """The names of ``tables`` that have at least one tombstone (one probe of the primary key
    each, in one statement)."""
    if not tables:
        return set()
    rows = con.run(
        f"SELECT name FROM unnest(CAST(:names AS varchar[])) AS name WHERE EXISTS"  # noqa: S608  # nosec B608
        f" (SELECT 1 FROM {TOMBSTONES} t WHERE t.star_table = name)",
        names=[t.name for t in tables],
    )
    return {str(name) for [name] in rows}


def recompute_marks(con: Connection, table: StarTable, touched: list[str]) -> tuple[int, int]:
    """Set ``source_deleted_at`` of every row of the ``touched`` keys that have a tombstone
    (``touched``: relations each selecting key values of ``table`` in their first column) to
    the tombstone's time if it is newer than the key's latest content (the greatest
    ``capture_seq`` of its rows: a dimension has one), else NULL. Returns the rows (marked,
    unmarked) whose mark changed."""
    key = quote(table.key)
    keys = " UNION ALL ".join(touched)
    name = quote(table.name)
    seq, mark = quote(CAPTURE_SEQ), quote(SOURCE_DELETED_AT)
    [[marked, unmarked]] = con.run(
        f"WITH marks AS ("  # noqa: S608  # nosec B608
        f" SELECT t.key, CASE WHEN t.capture_seq > max(r.{seq})"
        f" THEN t.deleted_at END AS mark"
        f" FROM {TOMBSTONES} t JOIN {name} r ON r.{key} = t.key"
        f" WHERE t.star_table = :name AND t.key IN ({keys})"
        f" GROUP BY t.key, t.capture_seq, t.deleted_at),"
        f" changed AS (UPDATE {name} r SET {mark} = m.mark FROM marks m"
        f" WHERE r.{key} = m.key AND r.{mark} IS DISTINCT FROM m.mark"
        f" RETURNING m.mark IS NOT NULL AS marked)"
        f" SELECT count(*) FILTER (WHERE marked), count(*) FILTER (WHERE NOT marked)"
        f" FROM changed",
        name=table.name,
    )
    return int(marked), int(unmarked)
