"""Loads of several batches at once (load's reserved concurrency): a first capture's facts are
COPYed before the load lock, so backfill batches' COPYs overlap, and the warehouse still ends
exactly as the same batches loaded one by one leave it."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_warehouse_backfill import history, later, load, state

from totes.errors import DatabaseUnavailable, LoadFailed
from totes.star.model import DELETED_KEYS
from totes.warehouse import ledger, merge
from totes.warehouse.ledger import LOAD_LOCK_KEY
from totes.warehouse.migrations import migrate
from totes_tools.warehouse.synthetic import deleted_keys, star_batch, with_calendar

FACTS = ("fact_sales_order", "fact_purchase_order", "fact_payment")
WAIT_SECONDS = 30.0


class Loading:
    """``load`` of one batch on a connection of its own, on a thread."""

    def __init__(self, con, batch: str, seq: int, tables: dict[str, pa.Table]):
        self.con = con
        [[self.pid]] = con.run("SELECT pg_backend_pid()")
        self.result = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(batch, seq, tables))
        self._thread.start()

    def _run(self, batch, seq, tables) -> None:
        try:
            self.result = load(self.con, batch, tables, seq)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def join(self):
        self._thread.join(WAIT_SECONDS)
        assert not self._thread.is_alive(), "the load did not end"
        if self.error is not None:
            raise self.error
        return self.result


def holding_the_lock(con) -> None:
    con.run("BEGIN")
    con.run("SELECT pg_advisory_xact_lock(:key)", key=LOAD_LOCK_KEY)


def waiting_for_the_lock(watcher, loading: Loading, kind: str = "advisory") -> None:
    """Until ``loading``'s backend waits for the load lock (queued for the advisory lock, or
    asking for it again and again, as a batch that copied its facts does), or for a lock of
    any kind (``kind`` None: another transaction's row)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        assert loading.error is None, loading.error
        rows = watcher.run(
            "SELECT 1 FROM pg_locks WHERE pid = :pid AND NOT granted"
            " AND locktype = coalesce(CAST(:kind AS text), locktype)"
            " UNION ALL SELECT 1 FROM pg_stat_activity WHERE pid = :pid"
            " AND query LIKE '%pg_try_advisory_xact_lock%'",
            pid=loading.pid,
            kind=kind,
        )
        if rows:
            return
        time.sleep(0.02)
    raise AssertionError(f"the load never waited for a lock ({kind or 'any'})")


def locked_tables(watcher, pid: int) -> set[str]:
    rows = watcher.run(
        "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
        " WHERE l.pid = :pid AND l.granted AND l.mode = 'RowExclusiveLock'",
        pid=pid,
    )
    return {r[0] for r in rows}


def queued_then_copying(pg_connect, creds, queued: tuple, copying: tuple) -> None:
    """A session holds the load lock; ``queued`` (a ``(batch, seq, tables)`` with nothing to
    copy before the lock) waits for it first, then ``copying`` copies its facts (sales orders
    among them) and waits too; the session lets go, and both load."""
    holder, watcher = pg_connect(creds), pg_connect(creds)
    holding_the_lock(holder)
    first = Loading(pg_connect(creds), *queued)
    waiting_for_the_lock(watcher, first)  # first in the lock's queue
    second = Loading(pg_connect(creds), *copying)
    waiting_for_the_lock(watcher, second)
    assert "fact_sales_order" in locked_tables(watcher, second.pid)
    holder.run("COMMIT")
    assert first.join().loaded
    assert second.join().loaded


@pytest.fixture
def warehouse_db(fresh_db, pg_connect):
    creds = fresh_db("wh")
    migrate(pg_connect(creds))
    return creds


def serial(fresh_db, pg_connect, batches) -> dict[str, list]:
    """The warehouse the ``(batch, seq, tables)`` leave loaded one by one, in that order."""
    con = pg_connect(fresh_db("ref"))
    migrate(con)
    for batch, seq, tables in batches:
        load(con, batch, tables, seq)
    return state(con)


def test_a_backfill_batch_copies_its_facts_while_another_load_holds_the_lock(
    warehouse_db, pg_connect, fresh_db
):
    """What makes a backfill's loads overlap: a first capture's facts (the bulk of its rows)
    are COPYed before the batch waits for the load lock; the batch is still one transaction,
    which commits once the lock is its own."""
    holder, watcher = pg_connect(warehouse_db), pg_connect(warehouse_db)
    batch = ("c1-000", 1, star_batch(sales=40, purchases=20, payments_=30, seed=3))
    holding_the_lock(holder)
    loading = Loading(pg_connect(warehouse_db), *batch)
    waiting_for_the_lock(watcher, loading)
    assert locked_tables(watcher, loading.pid) >= set(FACTS)
    assert watcher.run("SELECT count(*) FROM fact_sales_order") == [[0]]  # not committed yet
    holder.run("COMMIT")
    assert loading.join().loaded
    assert state(watcher) == serial(fresh_db, pg_connect, [batch])


@pytest.fixture
def attempts(monkeypatch) -> list[tuple[str, int]]:
    """(batch, attempt) of every transaction ``load_batch`` began."""
    seen: list[tuple[str, int]] = []
    real = merge._attempt

    def recording(con, manifest, *args):
        seen.append((manifest.batch_id, args[-1]))
        return real(con, manifest, *args)

    monkeypatch.setattr(merge, "_attempt", recording)
    return seen


@pytest.mark.parametrize("held", [False, True])
def test_batches_loaded_at_once_end_as_loaded_one_by_one(warehouse_db, pg_connect, fresh_db, held):
    """The history's batches (a capture in three parts, one carrying a version another stored,
    one a version twice; a later capture with a deletion; a late older capture) and a second
    delivery of the first, all at once; ``held``: all of them wait for the lock first, so every
    first capture's facts are copied before any batch commits."""
    batches = history()
    deliveries = [*batches, batches[0]]
    holder, watcher = pg_connect(warehouse_db), pg_connect(warehouse_db)
    if held:
        holding_the_lock(holder)
    loads = [Loading(pg_connect(warehouse_db), *b) for b in deliveries]
    if held:
        # The second delivery waits for the first's ledger row, a batch carrying a version
        # another copied waits for that one's transaction, the others for the load lock.
        for loading in loads:
            waiting_for_the_lock(watcher, loading, kind=None)
        holder.run("COMMIT")
    results = [loading.join() for loading in loads]
    assert sorted(r.batch_id for r in results if r.loaded) == sorted(b for b, _, _ in batches)
    assert [r.loaded for r in results].count(False) == 1
    assert state(watcher) == serial(fresh_db, pg_connect, batches)


def test_a_tombstone_committed_while_a_batch_waited_for_the_lock_marks_its_copied_facts(
    warehouse_db, pg_connect, fresh_db, attempts
):
    """A capture's facts copied before the lock, then a later capture deleting two of those
    orders commits first: under the lock the facts would now be staged (the deletion marks
    join the staged keys), so the batch is loaded again and its orders 1 and 2 are marked
    deleted, as when the deletion is loaded first."""
    first = star_batch(sales=12, seed=5)
    dims = {n: t for n, t in first.items() if not n.startswith("fact_")}
    deleting = {**dims, DELETED_KEYS: deleted_keys(fact_sales_order=[1, 2])}
    copied, deletion = ("c5-000", 5, first), ("c6-000", 6, deleting)
    queued_then_copying(pg_connect, warehouse_db, deletion, copied)
    assert ("c5-000", 2) in attempts
    after = state(pg_connect(warehouse_db))
    assert after == serial(fresh_db, pg_connect, [deletion, copied])
    assert [r[0] for r in after["fact_sales_order"] if r[-1] is not None] == [1, 2]


def test_a_deadlock_between_copied_facts_and_a_load_under_the_lock_loads_both(
    warehouse_db, pg_connect, fresh_db, attempts
):
    """Capture 5 copies a version before the lock; capture 6, merging under the lock (an older
    capture is loaded), writes the same version and waits for it while capture 5 waits for
    the lock: a deadlock, had capture 5 queued for the lock. Capture 5 gives way instead and
    is loaded again, everything under the lock. Both batches load, and the warehouse is the
    one-by-one warehouse."""
    base = star_batch(sales=6, seed=7)
    dims = {n: t for n, t in base.items() if not n.startswith("fact_")}
    version = later(base["fact_sales_order"][:1], 1)
    batches = [
        ("c5-000", 5, base),
        ("c5-001", 5, with_calendar({**dims, "fact_sales_order": version})),
        ("c6-000", 6, with_calendar({**dims, "fact_sales_order": version})),
    ]
    con = pg_connect(warehouse_db)
    load(con, *[batches[0][0], batches[0][2], batches[0][1]])
    queued_then_copying(pg_connect, warehouse_db, batches[2], batches[1])
    # the batch that copied gave way (it never queued for the lock): loaded again
    assert [a for a in attempts if a[1] > 1] == [("c5-001", 2)]
    assert state(con) == serial(fresh_db, pg_connect, [batches[0], batches[2], batches[1]])


# -- review (session 25): the argument's corners ------------------------------------------------


def test_a_failing_read_of_the_ledger_before_the_lock_names_the_ledger(
    warehouse_db, pg_connect, monkeypatch
):
    """The capture probe (``ledger.older_capture_loaded``) now runs before the lock, next to
    the tombstones' probe; a failure of it names the ledger it reads, not the tombstones."""

    def failing(con, seq):
        con.run("SELECT CAST(:seq AS int) / 0", seq=seq)  # a server error: division by zero
        return False

    monkeypatch.setattr(ledger, "older_capture_loaded", failing)
    con = pg_connect(warehouse_db)
    with pytest.raises(LoadFailed) as failed:
        load(con, "c1-000", star_batch(sales=3, seed=1), 1)
    message = str(failed.value)
    assert message.startswith(f"batch c1-000: reading {ledger.LEDGER} failed: "), message
    assert con.run("SELECT count(*) FROM etl_batch_ledger") == [[0]]


def test_a_deadlock_on_every_attempt_fails_the_batch_naming_the_step_and_leaves_nothing(
    warehouse_db, pg_connect, monkeypatch, attempts
):
    """A load that loses every deadlock (``40P01``, raised by the server) is tried
    ``ATTEMPTS`` times, then fails naming the batch, the step and the deadlock; nothing of it
    is committed and the load lock is free again."""
    real, real_unless = ledger.lock, ledger.lock_unless_blocking

    def deadlock(con):
        con.run("DO $$BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END$$")

    monkeypatch.setattr(ledger, "lock", lambda con: (real(con), deadlock(con)))
    monkeypatch.setattr(
        ledger, "lock_unless_blocking", lambda con: (real_unless(con), deadlock(con))
    )
    con, other = pg_connect(warehouse_db), pg_connect(warehouse_db)
    with pytest.raises(LoadFailed) as failed:
        load(con, "c1-000", star_batch(sales=3, seed=1), 1)
    message = str(failed.value)
    assert attempts == [("c1-000", n) for n in range(1, merge.ATTEMPTS + 1)]
    assert message.startswith("batch c1-000: waiting for the load lock failed: "), message
    assert "40P01" in message
    assert message.endswith(f"(the last of {merge.ATTEMPTS} attempts)")
    assert con.run("SELECT count(*) FROM etl_batch_ledger") == [[0]]
    assert con.run("SELECT count(*) FROM fact_sales_order") == [[0]]
    assert other.run("SELECT pg_try_advisory_lock(:key)", key=LOAD_LOCK_KEY) == [[True]]
    other.run("SELECT pg_advisory_unlock(:key)", key=LOAD_LOCK_KEY)


def test_a_deadlock_once_is_loaded_again_under_the_lock(
    warehouse_db, pg_connect, fresh_db, monkeypatch, attempts
):
    """A ``40P01`` (raised by the server) while the batch that copied its facts waits for the
    lock: the batch is rolled back and loaded at its second attempt, everything under the
    lock, into the warehouse it loads alone."""
    real = ledger.lock_unless_blocking
    failed: list[bool] = []

    def deadlocking_once(con):
        got = real(con)
        if not failed:
            failed.append(True)
            con.run("DO $$BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END$$")
        return got

    monkeypatch.setattr(ledger, "lock_unless_blocking", deadlocking_once)
    batch = ("c1-000", 1, star_batch(sales=5, purchases=3, payments_=4, seed=2))
    con = pg_connect(warehouse_db)
    assert load(con, batch[0], batch[2], batch[1]).loaded
    assert attempts == [("c1-000", 1), ("c1-000", 2)]
    monkeypatch.undo()
    assert state(con) == serial(fresh_db, pg_connect, [batch])


def test_a_deadlock_within_one_captures_backfill_loads_every_batch(
    warehouse_db, pg_connect, fresh_db, attempts
):
    """One capture's parts overlap (a version in two parts): part 1 meets a version part 0
    stored, so its facts are staged and merged under the lock, where it writes a version part
    2 copied before the lock and waits for it, while part 2 waits for the lock. PostgreSQL
    fails one of the two, which is loaded again: a deadlock within a single capture's
    backfill, which docs/load.md said could not happen."""
    base = star_batch(sales=6, seed=7)
    dims = {n: t for n, t in base.items() if not n.startswith("fact_")}
    sales = base["fact_sales_order"]
    overlapping = pa.concat_tables([sales[0:1], sales[3:6]])  # part 0's first, part 2's last
    parts = [
        ("c5-000", 5, with_calendar({**dims, "fact_sales_order": sales[0:3]})),
        ("c5-001", 5, with_calendar({**dims, "fact_sales_order": overlapping})),
        ("c5-002", 5, with_calendar({**dims, "fact_sales_order": sales[5:6]})),
    ]
    con = pg_connect(warehouse_db)
    load(con, parts[0][0], parts[0][2], parts[0][1])
    holder, watcher = pg_connect(warehouse_db), pg_connect(warehouse_db)
    holding_the_lock(holder)
    staged = Loading(pg_connect(warehouse_db), *parts[1])
    waiting_for_the_lock(watcher, staged)  # first in the lock's queue, its facts refused
    copying = Loading(pg_connect(warehouse_db), *parts[2])
    waiting_for_the_lock(watcher, copying)
    assert "fact_sales_order" in locked_tables(watcher, copying.pid)
    holder.run("COMMIT")
    assert staged.join().loaded
    assert copying.join().loaded
    assert [a for a in attempts if a[1] > 1] in ([("c5-001", 2)], [("c5-002", 2)])
    assert state(watcher) == serial(fresh_db, pg_connect, parts)


def test_parked_facts_released_under_the_lock_while_another_batch_copied_them_load_once(
    warehouse_db, pg_connect, fresh_db, attempts
):
    """Capture 5's first part parks the orders of a set-aside design; a later part carries
    those versions again (with the design) and COPYs them before the lock, while a batch
    bringing only the design, first in the lock's queue, releases the parked versions and
    waits for that part's uncommitted copies. One of the two is loaded again; every version
    is stored once, as one by one."""
    full = star_batch(sales=12, purchases=4, payments_=6, seed=13)
    sales, designs = full["fact_sales_order"], full["dim_design"]
    d = sales["design_id"][0].as_py()
    without = {**full, "dim_design": designs.filter(pc.not_equal(designs["design_id"], d))}
    of_d = sales[:6].filter(pc.equal(sales[:6]["design_id"], d))
    design = {"dim_design": designs.filter(pc.equal(designs["design_id"], d))}
    parked = ("c5-000", 5, {**without, "fact_sales_order": sales[:6]})
    releasing = ("c5-001", 5, design)
    copied = ("c5-002", 5, {**full, "fact_sales_order": pa.concat_tables([of_d, sales[6:]])})
    aside = {"dim_design": [d]}

    def first(con):
        batch, seq, tables = parked
        return load(con, batch, tables, seq, set_aside=aside)

    con = pg_connect(warehouse_db)
    assert first(con).tables["fact_sales_order"].parked == len(of_d) > 0
    queued_then_copying(pg_connect, warehouse_db, releasing, copied)
    watcher = pg_connect(warehouse_db)
    assert [a for a in attempts if a[1] > 1] in ([("c5-001", 2)], [("c5-002", 2)])
    assert watcher.run("SELECT count(*) FROM etl_parked_fact_sales_order") == [[0]]
    reference = pg_connect(fresh_db("ref"))
    migrate(reference)
    first(reference)
    for batch, seq, tables in (releasing, copied):
        load(reference, batch, tables, seq)
    assert state(watcher) == state(reference)


def test_a_load_under_the_lock_that_meets_a_copied_version_loads_at_its_first_attempt(
    warehouse_db, pg_connect, fresh_db, attempts, monkeypatch
):
    """Capture 6 carries later versions of three orders; capture 5's later parts carry them
    too (one each) and COPY them before the lock. While capture 6 holds the lock and merges
    (a large batch takes seconds there), such a part copies its version and waits for the
    lock longer than ``deadlock_timeout``; capture 6 then writes that version and waits for
    it. PostgreSQL's deadlock check would fail capture 6 (its wait closed the cycle), on every
    attempt while such parts keep coming (found by review: the test failed so on attempt 3).
    The part gives way instead (``ledger.lock_unless_blocking``): capture 6 loads at once,
    the part is loaded again under the lock."""
    from totes.warehouse import facts

    base = star_batch(sales=3, seed=7)
    dims = {n: t for n, t in base.items() if not n.startswith("fact_")}
    sales = base["fact_sales_order"]
    changed = later(sales, 1)
    con = pg_connect(warehouse_db)
    load(con, "c5-000", base, 5)
    watcher = pg_connect(warehouse_db)
    parts = [
        (f"c5-00{k + 1}", 5, with_calendar({**dims, "fact_sales_order": changed[k : k + 1]}))
        for k in range(3)
    ]
    copiers: list[Loading] = []
    real = facts.merge_fact

    def slow_under_the_lock(con, batch, *args, **kwargs):
        if batch == "c6-000" and len(copiers) < len(parts):
            copier = Loading(pg_connect(warehouse_db), *parts[len(copiers)])
            copiers.append(copier)
            waiting_for_the_lock(watcher, copier)
            time.sleep(2.5)  # the rest of a large batch's merges: the copier waits > 1 s
        return real(con, batch, *args, **kwargs)

    monkeypatch.setattr(facts, "merge_fact", slow_under_the_lock)
    later_capture = with_calendar({**dims, "fact_sales_order": changed})
    try:
        result = load(pg_connect(warehouse_db), "c6-000", later_capture, 6)
    finally:
        for copier in copiers:
            assert copier.join().loaded
    assert result.loaded
    assert sorted(attempts) == [("c5-000", 1), ("c5-001", 1), ("c5-001", 2), ("c6-000", 1)]
    monkeypatch.undo()  # the reference loads without the slow merge
    one_by_one = [("c5-000", 5, base), ("c6-000", 6, later_capture), parts[0]]
    assert state(watcher) == serial(fresh_db, pg_connect, one_by_one)


def test_a_batch_waiting_for_the_lock_gives_way_to_a_holder_it_blocks_directly_or_through_others(
    warehouse_db, pg_connect, new_role
):
    """``ledger.lock_unless_blocking`` as a role with no privileges at all (the catalog reads
    it makes need none): it keeps asking while the holder is busy elsewhere and gets the lock
    once the holder is done; it returns False while the holder waits for its transaction, at
    once or through another backend's wait."""
    asking = pg_connect(new_role(warehouse_db))
    holder, middle, watcher = (pg_connect(warehouse_db) for _ in range(3))
    pids = {id(c): c.run("SELECT pg_backend_pid()")[0][0] for c in (holder, middle)}
    threads: list[threading.Thread] = []

    def ask() -> list[bool]:
        got: list[bool] = []
        threads.append(
            threading.Thread(
                target=lambda: got.append(ledger.lock_unless_blocking(asking, poll_seconds=0.01))
            )
        )
        threads[-1].start()
        return got

    def waiting(con, key: int) -> None:
        """``con`` waits for advisory lock ``key`` (on a thread) until it is queued for it."""
        threads.append(
            threading.Thread(target=con.run, args=(f"SELECT pg_advisory_xact_lock({key})",))
        )
        threads[-1].start()
        deadline = time.monotonic() + WAIT_SECONDS
        query = "SELECT 1 FROM pg_locks WHERE pid = :pid AND NOT granted"
        while not watcher.run(query, pid=pids[id(con)]):
            assert time.monotonic() < deadline, "never queued"
            time.sleep(0.01)

    def done(got: list[bool]) -> bool:
        threads[-1].join(WAIT_SECONDS)
        assert len(got) == 1, "lock_unless_blocking did not return"
        return got[0]

    # the holder busy elsewhere: the lock, once it is done
    holding_the_lock(holder)
    asking.run("BEGIN")
    got = ask()
    time.sleep(0.2)
    assert got == []  # still asking
    holder.run("COMMIT")
    assert done(got) is True
    asking.run("COMMIT")

    # the holder waits for the asking transaction: directly, then through ``middle``
    for through in (None, middle):
        holding_the_lock(holder)
        asking.run("BEGIN")
        asking.run("SELECT pg_advisory_xact_lock(1)")  # what the holder's chain waits for
        if through is None:
            waiting(holder, 1)
        else:
            through.run("BEGIN")
            through.run("SELECT pg_advisory_xact_lock(2)")
            waiting(through, 1)
            waiting(holder, 2)
        assert done(ask()) is False
        asking.run("ROLLBACK")  # the waits of the chain end in turn
        if through is not None:
            threads[-3].join(WAIT_SECONDS)  # middle's wait for the asking transaction
            through.run("COMMIT")
        threads[-2].join(WAIT_SECONDS)  # the holder's
        holder.run("COMMIT")


# -- review (session 26) -------------------------------------------------------------------------


def test_a_later_capture_whose_copy_met_an_older_captures_versions_rewrites_them_under_the_lock(
    warehouse_db, pg_connect, fresh_db, attempts
):
    """Capture 5 copies its orders before the lock and waits for it; capture 6 carries the same
    versions and, no older capture being loaded yet, COPYs them before the lock too, which
    waits for capture 5. Capture 5 commits first, so capture 6's COPY meets its versions and
    is refused; under the lock capture 6 must see that an older capture is now loaded and
    rewrite those versions (capture 6 on every order, as one by one), deciding under the lock
    and not before it."""
    base = star_batch(sales=8, seed=9)
    dims = {n: t for n, t in base.items() if not n.startswith("fact_")}
    older = ("c5-000", 5, base)
    newer = ("c6-000", 6, with_calendar({**dims, "fact_sales_order": base["fact_sales_order"]}))
    holder, watcher = pg_connect(warehouse_db), pg_connect(warehouse_db)
    holding_the_lock(holder)
    first = Loading(pg_connect(warehouse_db), *older)
    waiting_for_the_lock(watcher, first)
    second = Loading(pg_connect(warehouse_db), *newer)
    waiting_for_the_lock(watcher, second, kind="transactionid")  # its COPY waits for capture 5
    holder.run("COMMIT")
    assert first.join().loaded
    assert second.join().tables["fact_sales_order"].updated == 8
    assert sorted(attempts) == [("c5-000", 1), ("c6-000", 1)]
    after = state(watcher)
    assert {r[-2] for r in after["fact_sales_order"]} == {6}
    assert after == serial(fresh_db, pg_connect, [older, newer])


def test_a_batch_whose_backend_is_terminated_while_it_asks_for_the_lock_leaves_nothing(
    warehouse_db, pg_connect, fresh_db
):
    """The backend of a batch holding copied facts is terminated between two asks for the
    lock: the load fails as the lost connection it is (``DatabaseUnavailable`` naming the
    step, not retried on the dead connection), nothing of it stays (its ledger row, its
    copies), the holder goes on, and the redelivery loads it on a new connection."""
    batch = ("c1-000", 1, star_batch(sales=5, purchases=3, payments_=4, seed=4))
    holder, watcher = pg_connect(warehouse_db), pg_connect(warehouse_db)
    holding_the_lock(holder)
    loading = Loading(pg_connect(warehouse_db), *batch)
    waiting_for_the_lock(watcher, loading)
    watcher.run("SELECT pg_terminate_backend(:pid)", pid=loading.pid)
    with pytest.raises(DatabaseUnavailable) as lost:
        loading.join()
    assert str(lost.value).startswith(
        "batch c1-000: lost the warehouse connection while waiting for the load lock"
    ), lost.value
    holder.run("COMMIT")
    assert watcher.run("SELECT count(*) FROM etl_batch_ledger") == [[0]]
    assert watcher.run("SELECT count(*) FROM fact_sales_order") == [[0]]
    assert load(pg_connect(warehouse_db), batch[0], batch[2], batch[1]).loaded
    assert state(watcher) == serial(fresh_db, pg_connect, [batch])
