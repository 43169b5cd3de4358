"""BI readers during loads (issue 16): never blocked, and every batch visible all at once.

A reader on its own connection runs ``SET lock_timeout = '1s'`` and a star query (sales facts
joined to ``dim_date``, ``dim_staff`` and ``dim_design``) in a loop while the loader runs (a) a
backfill of several batches and (b) a burst of small incremental batches. No query may time out
or fail, and the joined fact count may only ever be one of the cumulative batch totals: a
reader never sees part of a batch, nor a fact whose dimension row is not there.

Alongside, a monitor samples the loader's locks: it must never hold ACCESS EXCLUSIVE (the only
mode a reader's ACCESS SHARE waits for) on a warehouse table. The old bulk path did, from its
DROP CONSTRAINT to commit, on the fact and every dimension it references, so it failed here
at any size; with 1 s lock timeouts it also made readers time out once a rebuild took longer
than a second (5 of 34 reader queries on a 300k-order warehouse, docs/load.md).
"""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest
from pg8000.exceptions import DatabaseError

from totes.db import connect
from totes.warehouse.merge import load_batch
from totes.warehouse.migrations import migrate
from totes_tools.warehouse.synthetic import (
    dimensions,
    processed_manifest,
    purchase_orders,
    sales_orders,
    with_calendar,
)

STAR_QUERY = (
    "SELECT count(*), sum(f.units_sold) FROM fact_sales_order f"
    " JOIN dim_date d ON d.date_id = f.created_date"
    " JOIN dim_staff s ON s.staff_id = f.sales_staff_id"
    " JOIN dim_design g ON g.design_id = f.design_id"
    " WHERE d.quarter IN (1, 2, 3, 4)"
)
BACKFILL_BATCHES = 5
BACKFILL_ROWS = 20_000  # sales orders per backfill batch (and as many purchase orders)
BURST_BATCHES = 8
BURST_NEW = 100  # new sales orders per incremental batch, plus as many new versions


class Reader(threading.Thread):
    """The BI query in a loop on its own connection: each result, or the error it raised."""

    def __init__(self, creds):
        super().__init__(daemon=True)
        self.con = connect(creds, application_name="bi-reader")
        self.con.run("SET lock_timeout = '1s'")
        self.stop = threading.Event()
        self.counts: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    [[count, _]] = self.con.run(STAR_QUERY)
                    self.counts.append(int(count))
                except DatabaseError as exc:
                    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
                    self.errors.append(f"{info.get('C')} {info.get('M')}")
                time.sleep(0.01)
        finally:
            self.con.close()


class LockMonitor(threading.Thread):
    """Samples the loader's relation locks: every ACCESS EXCLUSIVE it holds on a table or
    index of the warehouse schema (its own temporary staging tables are not readers' concern)."""

    def __init__(self, creds, loader_pid: int):
        super().__init__(daemon=True)
        self.con = connect(creds, application_name="lock-monitor")
        self.pid = loader_pid
        self.stop = threading.Event()
        self.exclusive: set[str] = set()
        self.samples = 0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                rows = self.con.run(
                    "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                    " WHERE l.pid = :pid AND l.mode = 'AccessExclusiveLock'"
                    " AND c.relnamespace = 'public'::regnamespace",
                    pid=self.pid,
                )
                self.exclusive.update(r[0] for r in rows)
                self.samples += 1
                time.sleep(0.005)
        finally:
            self.con.close()


def backfill() -> list[dict[str, pa.Table]]:
    dims = dimensions(staff=50, locations=100, designs=500, counterparties=200)
    return [
        with_calendar(
            {
                **dims,
                "fact_sales_order": sales_orders(
                    BACKFILL_ROWS, dims, seed=i, first_id=i * BACKFILL_ROWS + 1
                ),
                "fact_purchase_order": purchase_orders(
                    BACKFILL_ROWS, dims, seed=100 + i, first_id=i * BACKFILL_ROWS + 1
                ),
            }
        )
        for i in range(BACKFILL_BATCHES)
    ]


def burst(first_id: int) -> list[dict[str, pa.Table]]:
    """Small batches: new orders, and new versions (a later ``last_updated``) of earlier ones."""
    dims = dimensions(staff=50, locations=100, designs=500, counterparties=200)
    batches = []
    for i in range(BURST_BATCHES):
        new = sales_orders(BURST_NEW, dims, seed=200 + i, first_id=first_id + i * BURST_NEW)
        changed = sales_orders(
            BURST_NEW, dims, seed=i, first_id=i * BURST_NEW + 1, updated_ms=(i + 1) * 60_000
        )
        facts = pa.concat_tables([new, changed])
        batches.append(with_calendar({"dim_staff": dims["dim_staff"], "fact_sales_order": facts}))
    return batches


@pytest.mark.parametrize("phase", ["backfill", "incremental burst"])
def test_bi_readers_are_never_blocked_and_see_each_batch_whole(warehouse_db, pg_connect, phase):
    con = pg_connect(warehouse_db)
    migrate(con)
    loads = backfill()
    seq = 0
    if phase == "incremental burst":  # onto a backfilled warehouse, loaded before the reader
        for tables in loads:
            seq += 1
            load_batch(con, processed_manifest(f"b{seq}", tables, capture_seq=seq), tables)
        con.run("ANALYZE")
        loads = burst(first_id=BACKFILL_BATCHES * BACKFILL_ROWS + 1)
    [[stored]] = con.run("SELECT count(*) FROM fact_sales_order")
    totals = [int(stored)]
    [[pid]] = con.run("SELECT pg_backend_pid()")
    reader = Reader(warehouse_db)
    monitor = LockMonitor(warehouse_db, pid)
    reader.start()
    monitor.start()
    try:
        for tables in loads:
            seq += 1
            result = load_batch(con, processed_manifest(f"b{seq}", tables, capture_seq=seq), tables)
            totals.append(totals[-1] + result.tables["fact_sales_order"].inserted)
        time.sleep(0.05)
    finally:
        reader.stop.set()
        monitor.stop.set()
        reader.join()
        monitor.join()

    assert reader.errors == []  # no lock timeout (55P03), nor anything else
    assert monitor.exclusive == set()
    assert monitor.samples > len(loads)
    assert reader.counts, "the reader ran no query during the loads"
    assert set(reader.counts) <= set(totals), sorted(set(reader.counts) - set(totals))
    assert reader.counts == sorted(reader.counts)  # each commit once, in order
    assert totals[-1] > totals[0]
