"""How much a run reads, and how a large run is cut into bounded batches.

One statement counts, per table, the live rows (for delete detection, ``keysets``) and the rows
new for the published selection; when they exceed the batch bound, the new rows are cut into
pieces between distinct ``last_updated`` values, so rows sharing a stamp never straddle two
batches. The stamp only orders the pieces of one snapshot here; what is new is decided by
``capture``. Every piece reads the same snapshot, so any cut gives a correct run.
"""

from __future__ import annotations

from dataclasses import dataclass

from pg8000.native import Connection

from totes.extract.capture import is_new, stamp
from totes.identifiers import quote
from totes.source.model import TABLES, Table

# Up to this many new rows in a table, the count also returns their keys, so the copy finds
# them through the primary key instead of a second scan of the table.
KEYED_ROWS = 20_000


@dataclass(frozen=True)
class TableCounts:
    live: int  # rows of the table in the snapshot (= keys: every table has a primary key)
    new: int  # rows new for the published selection
    # Their keys as a PostgreSQL array literal, when few enough (None: copy by scanning).
    new_keys: str | None = None


@dataclass(frozen=True)
class Piece:
    """Rows new for the selection with ``lo <= last_updated < hi`` (None: unbounded; a NULL
    stamp counts as the latest). Bounds are PostgreSQL timestamp text."""

    lo: str | None
    hi: str | None
    rows: int


def count(con: Connection, *, with_keys: bool = True) -> dict[str, TableCounts]:
    """Live and new rows of every table, and the new rows' keys where they are few: one scan
    each, in one statement (``with_keys`` False when every row is new anyway)."""

    def keys(t: Table) -> str:
        if not with_keys:
            return "CAST(NULL AS text)"
        return f"CAST(array_agg(s.{quote(t.key)}) FILTER (WHERE {is_new('s')}) AS text)"

    parts = "\nUNION ALL ".join(
        f"SELECT {i} AS i, count(*) AS live, count(*) FILTER (WHERE {is_new('s')}) AS new,"  # noqa: S608  # nosec B608
        f" {keys(t)} AS keys FROM {quote(t.name)} s"
        for i, t in enumerate(TABLES)
    )
    rows = con.run(
        f"SELECT i, live, new, CASE WHEN new <= :limit THEN COALESCE(keys, '{{}}') END"  # noqa: S608  # nosec B608
        f" FROM ({parts}) c ORDER BY i",
        limit=KEYED_ROWS if with_keys else -1,
    )
    return {TABLES[i].name: TableCounts(int(n), int(m), k) for i, n, m, k in rows}


def publish_new_keys(con: Connection, counts: dict[str, TableCounts]) -> None:
    """Publish each table's new keys for the keyed selection (``closure.selection_sql``)."""
    names = list(counts)
    con.run(
        "SELECT "  # nosec B608 (setting names from the model)
        + ", ".join(
            f"set_config('{new_keys_setting(n)}', :k{i}, true)" for i, n in enumerate(names)
        ),
        **{f"k{i}": counts[n].new_keys or "{}" for i, n in enumerate(names)},
    )


def new_keys_setting(table: str) -> str:
    return f"totes.new_{table}"


def _new_stamps_sql() -> str:
    return "\nUNION ALL ".join(
        f"SELECT {stamp('s')} AS stamp FROM {quote(t.name)} s WHERE {is_new('s')}"  # noqa: S608  # nosec B608
        for t in TABLES
    )


def pieces(con: Connection, new_rows: int, max_batch_rows: int) -> list[Piece]:
    """The run's batches: one when ``new_rows`` fits the bound, else pieces of fewer than
    ``max_batch_rows`` rows plus those sharing the piece's last stamp (a single stamp holding
    more rows than the bound stays one larger piece). A pure function of the snapshot."""
    if new_rows <= max_batch_rows:
        return [Piece(None, None, new_rows)]
    rows = con.run(
        "WITH stamps AS (SELECT stamp, count(*) AS n FROM ("  # noqa: S608  # nosec B608
        + _new_stamps_sql()
        + ") changed GROUP BY stamp), "
        "running AS (SELECT stamp, n, "
        "CAST(sum(n) OVER (ORDER BY stamp ROWS UNBOUNDED PRECEDING) AS bigint) - n AS before "
        "FROM stamps) "
        "SELECT CAST(min(stamp) AS text), CAST(sum(n) AS bigint) FROM running "
        "GROUP BY before / CAST(:bound AS bigint) ORDER BY min(stamp)",
        bound=int(max_batch_rows),
    )
    starts: list[str | None] = [None, *(r[0] for r in rows[1:])]
    ends: list[str | None] = [*(r[0] for r in rows[1:]), None]
    return [Piece(lo, hi, int(n)) for lo, hi, (_, n) in zip(starts, ends, rows, strict=True)]


def earlier(con: Connection, a: str, b: str) -> str:
    """The earlier of two PostgreSQL timestamps (text, any year PostgreSQL holds)."""
    [[value]] = con.run(
        "SELECT CAST(LEAST(CAST(:a AS timestamp), CAST(:b AS timestamp)) AS text)", a=a, b=b
    )
    return str(value)
