"""How much a run reads, and how a large run is cut into bounded batches.

One statement counts, per table, the live rows (for delete detection, ``keysets``) and the rows
new for the published selection, with their stamp range; when they exceed the batch bound, the
new rows are cut into pieces between distinct ``last_updated`` values (counted in stamp
buckets, a burst cut exactly), so rows sharing a stamp never straddle two batches. The stamp
only orders the pieces of one snapshot here; what is new is decided by ``capture``. Every
piece reads the same snapshot, so any cut gives a correct run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

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
    # The earliest and latest finite stamp of the new rows (timestamp text; None: none).
    new_lo: str | None = None
    new_hi: str | None = None


@dataclass(frozen=True)
class Piece:
    """Rows new for the selection with ``lo <= last_updated < hi`` (None: unbounded; a NULL
    stamp counts as the latest). Bounds are PostgreSQL timestamp text."""

    lo: str | None
    hi: str | None
    rows: int


def count(
    con: Connection, *, with_keys: bool = True, helpers: Sequence[Connection] = ()
) -> dict[str, TableCounts]:
    """Live and new rows of every table, the new rows' earliest and latest finite stamp, and
    their keys where they are few: one scan each, in one statement (``with_keys`` False when
    every row is new anyway). The change test is evaluated once per row (``OFFSET 0`` keeps
    the planner from copying it into every aggregate's filter). With ``helpers`` (sessions
    reading the same snapshot with the same selection: ``snapshot.shared_sessions``) the
    largest tables are counted on them at the same time, one each."""

    def keys() -> str:
        if not with_keys:
            return "CAST(NULL AS text)"
        return "CAST(array_agg(k) FILTER (WHERE n) AS text)"

    def statement(tables: list[tuple[int, Table]]) -> str:
        finite = "FILTER (WHERE n AND isfinite(st))"
        parts = "\nUNION ALL ".join(
            f"SELECT {i} AS i, count(*) AS live, count(*) FILTER (WHERE n) AS new,"  # noqa: S608  # nosec B608
            f" {keys()} AS keys, min(st) {finite} AS lo, max(st) {finite} AS hi"
            f" FROM (SELECT {is_new('s')} AS n, s.{quote(t.key)} AS k, {stamp('s')} AS st"
            f" FROM {quote(t.name)} s OFFSET 0) x"
            for i, t in tables
        )
        return (
            f"SELECT i, live, new, CASE WHEN new <= {KEYED_ROWS if with_keys else -1}"  # noqa: S608  # nosec B608
            f" THEN COALESCE(keys, '{{}}') END, CAST(lo AS text), CAST(hi AS text)"
            f" FROM ({parts}) c ORDER BY i"
        )

    rows = _shared(con, helpers, statement)
    return {TABLES[i].name: TableCounts(int(n), int(m), k, lo, hi) for i, n, m, k, lo, hi in rows}


def _shared(
    con: Connection,
    helpers: Sequence[Connection],
    statement: Callable[[list[tuple[int, Table]]], str],
) -> list[list[Any]]:
    """The rows of ``statement`` over every table (``(index, table)`` pairs, in the model's
    order), sorted by their first column: on ``con`` alone, or with each helper taking one of
    the largest tables at the same time and ``con`` the rest."""
    tables = list(enumerate(TABLES))
    rows: list[list[Any]] = []
    if not helpers:
        rows = con.run(statement(tables))
        return sorted(rows, key=lambda row: int(row[0]))
    largest = _largest(con, len(helpers))
    alone = [[(i, t) for i, t in tables if t.name == name] for name in largest]
    rest = [(i, t) for i, t in tables if t.name not in largest]
    with ThreadPoolExecutor(max(1, len(alone)), thread_name_prefix="totes-plan") as pool:
        futures = [
            pool.submit(helper.run, statement(group))
            for helper, group in zip(helpers, alone, strict=False)
        ]
        if rest:
            rows.extend(con.run(statement(rest)))
        for future in futures:
            rows.extend(future.result())
    return sorted(rows, key=lambda row: int(row[0]))


def _largest(con: Connection, n: int) -> list[str]:
    """The ``n`` largest source tables on disk (file sizes: no statistics needed), in the
    schema the schema check reads (compared by name: a regnamespace cast would parse the name
    as an identifier, folding a mixed-case one)."""
    rows = con.run(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace"
        " WHERE c.relname = ANY(:names) AND s.nspname = current_schema()"
        " ORDER BY pg_relation_size(c.oid) DESC, c.relname LIMIT :n",
        names=[t.name for t in TABLES],
        n=n,
    )
    return [str(name) for [name] in rows]


# The least a heap row takes on disk: its 24-byte tuple header and 4-byte line pointer.
MIN_ROW_BYTES = 28


def may_need_pieces(con: Connection, max_batch_rows: int) -> bool:
    """Whether the source tables' files are large enough to hold more than ``max_batch_rows``
    rows, so that a capture of every row may be cut into pieces. False is certain (a row takes
    at least ``MIN_ROW_BYTES``); a first capture that cannot be cut plans on its own session,
    as it did before planning sessions (one session is all a small source must allow)."""
    [[size]] = con.run(
        "SELECT COALESCE(sum(pg_relation_size(c.oid)), 0) FROM pg_class c"
        " JOIN pg_namespace s ON s.oid = c.relnamespace"
        " WHERE c.relname = ANY(:names) AND s.nspname = current_schema()",
        names=[t.name for t in TABLES],
    )
    return int(size) > MIN_ROW_BYTES * max_batch_rows


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


def _new_stamps_sql(where: str = "", tables: Sequence[Table] = TABLES) -> str:
    return "\nUNION ALL ".join(
        f"SELECT {stamp('s')} AS stamp FROM {quote(t.name)} s WHERE {is_new('s')}{where}"  # noqa: S608  # nosec B608
        for t in tables
    )


def _bucket_count_sql(tables: list[tuple[int, Table]]) -> str:
    """The new stamps of ``tables`` counted per bucket of the published edges."""
    return (
        f"SELECT width_bucket(stamp, (SELECT CAST(current_setting('{_EDGES_SETTING}')"  # noqa: S608  # nosec B608
        " AS timestamp[]))) AS b, CAST(count(*) AS bigint) FROM ("
        + _new_stamps_sql(tables=[t for _, t in tables])
        + ") changed GROUP BY b"
    )


# The new rows' stamps are counted in about this many buckets per piece of the run (at least
# MIN_BUCKETS): a piece then falls short of the bound by at most about one bucket's rows.
BUCKETS_PER_PIECE = 64
MIN_BUCKETS = 1024
MAX_BUCKETS = 65_536
_EDGES_SETTING = "totes.stamp_edges"
# Equal-width edges between the earliest and latest new finite stamp, published and returned.
_EDGES_SQL = (
    "WITH r AS (SELECT min(lo) AS lo, max(hi) AS hi FROM"
    " unnest(CAST(:los AS timestamp[])) lo, unnest(CAST(:his AS timestamp[])) hi),"
    " edges AS (SELECT DISTINCT lo + (hi - lo) / CAST(:n AS integer) * i AS e"
    " FROM r, generate_series(1, CAST(:n AS integer) - 1) i WHERE lo < hi)"
    " SELECT set_config('totes.stamp_edges', COALESCE(CAST(array_agg(e ORDER BY e) AS text),"
    " '{}'), true), array_agg(CAST(e AS text) ORDER BY e) FROM edges"
)
_RANGE_LO = "(SELECT CAST(current_setting('totes.range_lo') AS timestamp))"
_RANGE_HI = "(SELECT CAST(NULLIF(current_setting('totes.range_hi'), '') AS timestamp))"


def pieces(
    con: Connection,
    counts: Mapping[str, TableCounts],
    max_batch_rows: int,
    helpers: Sequence[Connection] = (),
) -> list[Piece]:
    """The run's batches: one when the new rows (``counts``) fit the bound, else consecutive
    stamp ranges of at most ``max_batch_rows`` new rows each, cut only between distinct stamps
    (a single stamp holding more rows than the bound stays one larger piece). A pure function
    of the snapshot.

    Sorting every new row's stamp server-side was the largest single cost of a backfill (1.4 s
    at 300,000 orders, 11 to 15 s at 1M on a loaded machine). Instead the new stamps are
    counted in equal-width buckets between the earliest and latest finite stamp (known from
    the count, ``TableCounts.new_lo``/``new_hi``: a hashed count into a few thousand groups,
    no sort) and whole buckets are grouped into pieces; a
    bucket that alone holds more rows than the bound (a burst inside one bucket) is cut
    exactly by the sorting statement, over that bucket's rows only (``_exact_pieces``). With
    ``helpers`` (as for ``count``) the largest tables' buckets are counted on them at the same
    time; the sums per bucket, and so the pieces, are the same."""
    new_rows = sum(c.new for c in counts.values())
    if new_rows <= max_batch_rows:
        return [Piece(None, None, new_rows)]
    buckets = min(MAX_BUCKETS, max(MIN_BUCKETS, BUCKETS_PER_PIECE * new_rows // max_batch_rows))
    published, edges = _stamp_edges(
        con,
        buckets,
        [c.new_lo for c in counts.values() if c.new_lo is not None],
        [c.new_hi for c in counts.values() if c.new_hi is not None],
    )
    for helper in helpers:
        helper.run(f"SELECT set_config('{_EDGES_SETTING}', :edges, true)", edges=published)
    per_bucket: Counter[int] = Counter()
    for b, n in _shared(con, helpers, _bucket_count_sql):
        per_bucket[int(b)] += int(n)
    counted = sorted(per_bucket.items())
    # Bucket b holds the stamps in [edges[b - 1], edges[b]) (None: unbounded).
    bounds: list[str | None] = [None, *edges, None]
    cut: list[Piece] = []
    lo: str | None = None
    rows = 0
    for b, n in ((int(b), int(n)) for b, n in counted):
        start, end = bounds[b], bounds[b + 1]
        if n > max_batch_rows:  # a burst: cut this bucket by its exact stamps
            if rows:
                cut.append(Piece(lo, start, rows))
            cut.extend(_exact_pieces(con, start, end, max_batch_rows))
            lo, rows = end, 0
            continue
        if rows and rows + n > max_batch_rows:
            cut.append(Piece(lo, start, rows))
            lo, rows = start, 0
        rows += n
    if rows:
        cut.append(Piece(lo, None, rows))
    # The first piece starts unbounded, the last ends so (a burst bucket cut exactly may be
    # either): together the pieces cover every stamp.
    cut[0] = Piece(None, cut[0].hi, cut[0].rows)
    cut[-1] = Piece(cut[-1].lo, None, cut[-1].rows)
    return cut


def _stamp_edges(
    con: Connection, buckets: int, los: list[str], his: list[str]
) -> tuple[str, list[str]]:
    """Up to ``buckets - 1`` distinct equal-width edges between the earliest of ``los`` and
    the latest of ``his`` (the tables' new finite stamps; none when there are none),
    published for the bucket count; returned as published (an array's text, for helpers to
    publish too) and as a list. Computed server-side: PostgreSQL's timestamps reach years
    Python's cannot."""
    [[published, edges]] = con.run(
        _EDGES_SQL, n=buckets, los=text_array_literal(los), his=text_array_literal(his)
    )
    return str(published), [str(e) for e in edges or []]


def text_array_literal(values: list[str]) -> str:
    """Timestamp texts PostgreSQL produced, as an array literal (passed as a parameter)."""
    return (
        "{"
        + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
        + "}"
    )


def _exact_pieces(
    con: Connection, lo: str | None, hi: str | None, max_batch_rows: int
) -> list[Piece]:
    """Pieces of the new rows stamped in ``[lo, hi)``, cut between distinct stamps by sorting
    them: fewer than ``max_batch_rows`` rows each plus those sharing the piece's last stamp."""
    con.run(
        "SELECT set_config('totes.range_lo', :lo, true), set_config('totes.range_hi', :hi, true)",
        lo=lo or "-infinity",
        hi=hi or "",
    )
    within = f" AND {stamp('s')} >= {_RANGE_LO} AND ({stamp('s')} < {_RANGE_HI}) IS NOT FALSE"
    rows = con.run(
        "WITH stamps AS (SELECT stamp, count(*) AS n FROM ("  # noqa: S608  # nosec B608
        + _new_stamps_sql(within)
        + ") changed GROUP BY stamp), "
        "running AS (SELECT stamp, n, "
        "CAST(sum(n) OVER (ORDER BY stamp ROWS UNBOUNDED PRECEDING) AS bigint) - n AS before "
        "FROM stamps) "
        "SELECT CAST(min(stamp) AS text), CAST(sum(n) AS bigint) FROM running "
        "GROUP BY before / CAST(:bound AS bigint) ORDER BY min(stamp)",
        bound=int(max_batch_rows),
    )
    starts: list[str | None] = [lo, *(r[0] for r in rows[1:])]
    ends: list[str | None] = [*(r[0] for r in rows[1:]), hi]
    return [Piece(a, b, int(n)) for a, b, (_, n) in zip(starts, ends, rows, strict=True)]


def earlier(con: Connection, a: str, b: str) -> str:
    """The earlier of two PostgreSQL timestamps (text, any year PostgreSQL holds)."""
    [[value]] = con.run(
        "SELECT CAST(LEAST(CAST(:a AS timestamp), CAST(:b AS timestamp)) AS text)", a=a, b=b
    )
    return str(value)
