# ruff: noqa: S608  (SQL identifiers below come from the model only)
"""A large run is cut into pieces between distinct stamps (``plan.pieces``): counted in
equal-width stamp buckets, a burst inside one bucket cut exactly. Whatever the stamps (spread
over years, a burst within a millisecond, NULL, infinite, BC or past year 9999), the pieces
cover every new row once, each holds fewer rows than the bound plus those sharing its last
stamp, and a single stamp holding more stays one piece."""

from __future__ import annotations

import itertools

import pytest

from totes.extract import capture, plan
from totes.extract.capture import is_new, stamp
from totes.extract.snapshot import shared_sessions, snapshot
from totes.identifiers import quote
from totes.source.model import TABLES, TABLES_BY_NAME


def _rows_within(con, lo: str | None, hi: str | None) -> tuple[int, int]:
    """New rows in [lo, hi) (None: unbounded), and how many of them share its last stamp."""
    union = " UNION ALL ".join(
        f"SELECT {stamp('s')} AS st FROM {quote(t.name)} s WHERE {is_new('s')}" for t in TABLES
    )
    [[rows, last]] = con.run(
        f"WITH w AS (SELECT st FROM ({union}) u"
        " WHERE st >= CAST(COALESCE(:lo, '-infinity') AS timestamp)"
        " AND (st < CAST(:hi AS timestamp)) IS NOT FALSE)"
        " SELECT count(*), count(*) FILTER (WHERE st = (SELECT max(st) FROM w)) FROM w",
        lo=lo,
        hi=hi,
    )
    return int(rows), int(last)


def planned(con, bound: int, sessions=()) -> tuple[dict[str, plan.TableCounts], list[plan.Piece]]:
    """A first capture's counts and pieces, on ``con`` alone or with ``sessions`` helping."""
    counts = plan.count(con, with_keys=False, helpers=sessions)
    return counts, plan.pieces(con, counts, bound, sessions)


def helping(con, connect, n: int):
    """``n`` sessions sharing ``con``'s snapshot with a first capture's selection published,
    as a first capture's run opens them."""
    stack = shared_sessions(con, connect, n)
    sessions = stack.__enter__()
    for session in sessions:
        capture.publish(session, capture.rebased(session, capture.Selection(capture.EVERYTHING)))
    return stack, sessions


def cut(con, bound: int, connect=None) -> tuple[list[plan.Piece], int]:
    """The pieces of a first capture of the source at ``bound``, checked against the rows;
    with ``connect``, planned again with three sessions sharing the snapshot (the largest
    tables counted on them), which must give the same counts and pieces."""
    with snapshot(con):
        capture.publish(con, capture.Selection(capture.EVERYTHING))
        counts, pieces = planned(con, bound)
        if connect is not None:
            stack, sessions = helping(con, connect, 3)
            try:
                assert planned(con, bound, sessions) == (counts, pieces)
            finally:
                stack.__exit__(None, None, None)
        new_rows = sum(c.new for c in counts.values())
        assert pieces[0].lo is None
        assert pieces[-1].hi is None
        assert all(a.hi == b.lo for a, b in itertools.pairwise(pieces))
        assert sum(p.rows for p in pieces) == new_rows
        for piece in pieces:
            rows, last = _rows_within(con, piece.lo, piece.hi)
            assert rows == piece.rows
            # Fewer than the bound, plus the rows sharing the piece's last stamp.
            assert rows - last < bound, (piece, rows, last)
        return pieces, new_rows


def test_pieces_of_a_spread_backlog_are_bounded_and_nearly_full(source, pg_connect):
    con = pg_connect(source)
    with snapshot(con):
        capture.publish(con, capture.Selection(capture.EVERYTHING))
        total = sum(c.new for c in plan.count(con, with_keys=False).values())
    bound = total // 7

    pieces, _ = cut(con, bound, lambda: pg_connect(source))

    # Whole buckets only: each piece falls short of the bound by about a bucket's rows at most.
    assert len(pieces) <= 9
    assert all(p.rows > bound * 0.9 for p in pieces[:-1])


def test_a_burst_inside_one_bucket_is_cut_exactly(source, pg_connect):
    con = pg_connect(source)
    # Far apart stamps make every ordinary stamp share one equal-width bucket, and a burst of
    # distinct stamps within one millisecond sits inside one bucket whatever the width.
    con.run(
        "UPDATE sales_order SET last_updated = TIMESTAMP '2024-05-01 12:00:00'"
        " + sales_order_id * INTERVAL '1 microsecond'"
    )
    con.run("UPDATE payment SET last_updated = '4713-01-01 00:00:00 BC' WHERE payment_id = 1")
    con.run("UPDATE payment SET last_updated = '20000-01-01 00:00:00' WHERE payment_id = 2")
    [[orders]] = con.run("SELECT count(*) FROM sales_order")
    bound = max(2, orders // 5)

    pieces, _ = cut(con, bound, lambda: pg_connect(source))

    assert len(pieces) >= 5


@pytest.mark.parametrize("special", ["NULL", "'infinity'", "'-infinity'"])
def test_null_and_infinite_stamps_are_counted_once(source, pg_connect, special):
    con = pg_connect(source)
    con.run("ALTER TABLE sales_order ALTER COLUMN last_updated DROP NOT NULL")
    con.run(f"UPDATE sales_order SET last_updated = {special} WHERE sales_order_id % 3 = 0")
    [[tied]] = con.run("SELECT count(*) FROM sales_order WHERE sales_order_id % 3 = 0")

    pieces, _ = cut(con, max(2, tied // 4), lambda: pg_connect(source))

    # The tied special stamp is one piece larger than the bound; the rest are bounded.
    assert any(p.rows >= tied for p in pieces)


def test_a_single_stamp_is_one_piece(source, pg_connect):
    con = pg_connect(source)
    for table in TABLES:
        con.run(f"UPDATE {quote(table.name)} SET last_updated = TIMESTAMP '2024-05-01 12:00:00'")

    pieces, new_rows = cut(con, 100, lambda: pg_connect(source))

    assert pieces == [plan.Piece(None, None, new_rows)]


def test_the_largest_tables_are_planned_on_sessions_that_see_only_the_runs_snapshot(
    source, pg_connect
):
    """A first capture plans with its largest tables counted on sessions of their own. They
    read the run's snapshot: rows committed after it began are counted by neither the run
    nor its helpers. And they do the work: between them they count and bucket exactly the
    largest tables, one each, and the run's own session the rest."""
    con, writer = pg_connect(source), pg_connect(source)
    [[orders]] = con.run("SELECT count(*) FROM sales_order")
    helped: list[str] = []

    def connect():
        session = pg_connect(source)
        real_run = session.run

        def run(sql, **params):
            helped.append(sql)
            return real_run(sql, **params)

        session.run = run
        return session

    columns = ", ".join(c.name for c in TABLES_BY_NAME["sales_order"].columns[1:])
    with snapshot(con):
        capture.publish(con, capture.Selection(capture.EVERYTHING))
        alone = planned(con, orders // 3)
        writer.run(
            f"INSERT INTO sales_order SELECT sales_order_id + 1000000, {columns} FROM sales_order"
        )
        stack, sessions = helping(con, connect, 2)
        try:
            assert planned(con, orders // 3, sessions) == alone
            largest = plan._largest(con, 2)
        finally:
            stack.__exit__(None, None, None)
    [[after]] = con.run("SELECT count(*) FROM sales_order")
    assert after == 2 * orders  # the writer's rows were there to be seen
    assert alone[0]["sales_order"].live == orders
    assert len(alone[1]) > 1  # cut into pieces: the bucket count ran too
    counted = {t.name for t in TABLES for sql in helped if f'FROM "{t.name}" s' in sql}
    assert len(largest) == 2
    assert counted == set(largest)


@pytest.mark.parametrize("schema", ["Totes", "totes source"])
def test_a_source_in_a_schema_whose_name_needs_quoting_is_planned_on_helpers(
    source, pg_connect, schema
):
    """The source's tables may live in any schema its ``search_path`` names first (the schema
    check reads ``current_schema()``): a mixed-case name or one with a space included. The
    largest tables are still found and the helpers' counts and pieces equal the run's own."""
    owner = pg_connect(source)
    owner.run(f"CREATE SCHEMA {quote(schema)}")
    for table in TABLES:
        owner.run(f"ALTER TABLE {quote(table.name)} SET SCHEMA {quote(schema)}")

    def in_schema():
        session = pg_connect(source)
        session.run(f"SET search_path TO {quote(schema)}")
        return session

    con = in_schema()
    with snapshot(con):
        capture.publish(con, capture.Selection(capture.EVERYTHING))
        total = sum(c.new for c in plan.count(con, with_keys=False).values())

    cut(con, max(2, total // 4), in_schema)
