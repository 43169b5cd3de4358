"""The warehouse side of capture by commit order (issue 12), against a real PostgreSQL: rows
follow the capture sequence rather than ``last_updated``, deleted keys are marked and unmarked
whatever the order of the batches, and facts whose dimension row transform set aside wait in a
park until it arrives."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from totes.errors import LoadFailed
from totes.star.model import (
    CAPTURE_SEQ,
    DELETED_KEYS,
    SOURCE_DELETED_AT,
    SOURCE_VERSION,
    STAR_TABLES,
    STAR_TABLES_BY_NAME,
)
from totes.warehouse import backfill, facts
from totes.warehouse.merge import load_batch
from totes.warehouse.migrations import migrate
from totes.warehouse.results import LoadResult, TableResult
from totes_tools.warehouse.checksums import content_columns
from totes_tools.warehouse.synthetic import (
    EPOCH,
    deleted_keys,
    dimensions,
    processed_manifest,
    sales_orders,
    with_calendar,
)

# The capture time of sequence n (its hi_utc): what a deletion at n stamps.
CAPTURED = datetime(2025, 3, 1, 12, 0)
PARKS = ["etl_parked_fact_sales_order", "etl_parked_fact_purchase_order", "etl_parked_fact_payment"]


def captured(seq: int) -> datetime:
    return CAPTURED + timedelta(minutes=seq)


@pytest.fixture
def warehouse(warehouse_db, pg_connect):
    con = pg_connect(warehouse_db)
    migrate(con)
    return con


def load(con, batch_id, tables, seq=None, *, set_aside=None) -> LoadResult:
    """Load ``tables`` as batch ``batch_id`` of capture ``seq`` (None: a legacy batch)."""
    manifest = processed_manifest(
        batch_id, tables, hi=captured(seq or 0), capture_seq=seq, set_aside=set_aside
    )
    return load_batch(con, manifest, tables)


def probing(monkeypatch, on: bool) -> None:
    """Force the fact version joins to index probes (``on``) or leave them to the planner's
    hash joins whatever the table's size: both must give the same warehouse."""
    monkeypatch.setattr(facts, "PROBE_ABOVE_BATCHES", -1 if on else 10**12)


def empty(con) -> None:
    tables = ", ".join([*STAR_TABLES_BY_NAME, "etl_batch_ledger", "etl_deleted_keys", *PARKS])
    con.run(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


def state(con) -> dict[str, list]:
    """Everything but surrogate ids and loaded_batch_id: every star table's content and
    lineage, the tombstones and the parks, each in a fixed order."""
    out = {}
    for table in STAR_TABLES:
        cols = content_columns(table) + ([CAPTURE_SEQ, SOURCE_DELETED_AT] if table.tracked else [])
        order = ", ".join(str(i + 1) for i in range(len(cols)))
        out[table.name] = con.run(f"SELECT {', '.join(cols)} FROM {table.name} ORDER BY {order}")  # noqa: S608
    out["etl_deleted_keys"] = con.run("SELECT * FROM etl_deleted_keys ORDER BY 1, 2")
    for park in PARKS:
        out[park] = con.run(f"SELECT * FROM {park} ORDER BY 1, 4, 5, 2, 3")  # noqa: S608
    return out


def marks(con, name: str) -> list[list]:
    """(key, source_version, capture_seq, source_deleted_at) of every row, in key order."""
    key = STAR_TABLES_BY_NAME[name].key
    return con.run(
        f"SELECT {key}, source_version, capture_seq, source_deleted_at FROM {name}"  # noqa: S608
        f" ORDER BY {key}, source_version"
    )


def rows(table: pa.Table, *keys: int) -> pa.Table:
    key = STAR_TABLES_BY_NAME[_name(table)].key
    return table.filter(pc.is_in(table[key], pa.array(keys, pa.int32())))


def _name(table: pa.Table) -> str:
    return next(n for n, t in STAR_TABLES_BY_NAME.items() if t.arrow_schema.equals(table.schema))


def edited(table: pa.Table, **values) -> pa.Table:
    """Every row of ``table`` with ``values`` (column -> value)."""
    return pa.Table.from_pylist(
        [{**row, **values} for row in table.to_pylist()], schema=table.schema
    )


def later(facts: pa.Table, days: int, **values) -> pa.Table:
    """``facts`` as a later version: last_updated (and source_version) ``days`` later."""
    return pa.Table.from_pylist(
        [
            {
                **row,
                **values,
                "last_updated_date": row["last_updated_date"] + timedelta(days=days),
                SOURCE_VERSION: row[SOURCE_VERSION] + timedelta(days=days),
            }
            for row in facts.to_pylist()
        ],
        schema=facts.schema,
    )


def only(*tables: pa.Table) -> dict[str, pa.Table]:
    return {_name(t): t for t in tables}


# -- Dimensions follow commit order -------------------------------------------------------


def test_a_future_stamped_dimension_row_then_its_correction_ends_as_the_correction_in_any_order(
    warehouse,
):
    """Staff 1 was saved with a stamp a year ahead (capture 10), then corrected with a normal,
    older stamp (capture 11). The correction wins whichever batch loads first."""
    staff = dimensions(staff=1)["dim_staff"]
    future = EPOCH + timedelta(days=365)
    ahead = edited(staff, first_name="Future", source_version=future, oldest_version=future)
    fixed = edited(staff, first_name="Fixed", source_version=EPOCH + timedelta(days=1))
    outcomes = []
    for order in ([("a", ahead, 10), ("b", fixed, 11)], [("b", fixed, 11), ("a", ahead, 10)]):
        empty(warehouse)
        results = [load(warehouse, b, only(t), seq).tables["dim_staff"] for b, t, seq in order]
        outcomes.append(
            (
                results,
                warehouse.run("SELECT first_name, source_version, capture_seq FROM dim_staff"),
            )
        )
    fixed_row = [["Fixed", EPOCH + timedelta(days=1), 11]]
    assert outcomes == [
        ([TableResult(1, 1), TableResult(1, 0, updated=1)], fixed_row),
        ([TableResult(1, 1), TableResult(1, 0)], fixed_row),
    ]


def test_a_legacy_batch_after_a_captured_one_never_overwrites_it(warehouse):
    """A batch from before capture by commit order (no capture_seq: 0) is older than any
    captured batch, whatever its stamps; among legacy batches the stamps still decide."""
    dims = dimensions(staff=1, locations=1, designs=1, counterparties=1)
    orders = sales_orders(1, dims, seed=3)
    captured_batch = with_calendar({**dims, "fact_sales_order": orders})
    newer_stamp = EPOCH + timedelta(days=30)
    legacy = with_calendar(
        {
            "dim_staff": edited(dims["dim_staff"], first_name="Legacy", source_version=newer_stamp),
            "fact_sales_order": edited(orders, units_sold=1),
            **{n: t for n, t in dims.items() if n != "dim_staff"},
        }
    )
    load(warehouse, "new", captured_batch, 5)
    before = state(warehouse)
    result = load(warehouse, "old", legacy)
    assert (result.tables["dim_staff"], result.tables["fact_sales_order"]) == (
        TableResult(1, 0),
        TableResult(1, 0),
    )
    assert state(warehouse) == before
    assert warehouse.run("SELECT batch_id, capture_seq FROM etl_batch_ledger ORDER BY 1") == [
        ["new", 5],
        ["old", 0],
    ]


# -- Facts: versions, in place when a later capture delivers one again ------------------------


@pytest.mark.parametrize("probes", [True, False])
def test_a_fact_version_delivered_again_by_a_later_capture_is_rewritten_in_place(
    warehouse, probes, monkeypatch
):
    """Order 1 changed by a cascade that kept its stamp (capture 2: other units, same version),
    order 2 delivered again unchanged (capture 2): both rows take capture 2, order 1 its new
    content; an older or equal capture changes nothing. Either order, with or without index
    probes for the version joins: the same."""
    probing(monkeypatch, probes)
    dims = dimensions(staff=1, locations=1, designs=1, counterparties=1)
    orders = sales_orders(2, dims, seed=4)
    first = with_calendar({**dims, "fact_sales_order": orders})
    cascaded = pa.concat_tables([edited(rows(orders, 1), units_sold=99), rows(orders, 2)])
    second = with_calendar({**dims, "fact_sales_order": cascaded})
    outcomes = []
    for order in ([("b1", first, 1), ("b2", second, 2)], [("b2", second, 2), ("b1", first, 1)]):
        empty(warehouse)
        results = [load(warehouse, b, t, seq).tables["fact_sales_order"] for b, t, seq in order]
        facts = warehouse.run(
            "SELECT sales_order_id, units_sold, capture_seq, loaded_batch_id"
            " FROM fact_sales_order ORDER BY 1"
        )
        outcomes.append((results, facts, state(warehouse)))
    assert [o[:2] for o in outcomes] == [
        (
            [TableResult(2, 2), TableResult(2, 0, updated=2)],
            [[1, 99, 2, "b2"], [2, orders["units_sold"][1].as_py(), 2, "b2"]],
        ),
        (
            [TableResult(2, 2), TableResult(2, 0)],
            [[1, 99, 2, "b2"], [2, orders["units_sold"][1].as_py(), 2, "b2"]],
        ),
    ]
    assert outcomes[0][2] == outcomes[1][2]


class Statements:
    """A connection that records the SQL it runs."""

    def __init__(self, con):
        self.con = con
        self.sql: list[str] = []

    def run(self, sql, **params):
        self.sql.append(sql)
        return self.con.run(sql, **params)

    def __getattr__(self, name):
        return getattr(self.con, name)


def test_the_rewrite_runs_only_when_an_older_capture_was_loaded(warehouse):
    """The batches of one capture (a backfill's parts) cannot meet a stored version of an
    older capture, so they skip the rewrite's probes (``ledger.older_capture_loaded``); the
    first batch of a later capture runs it and rewrites what it redelivers."""
    dims = dimensions(staff=1, locations=1, designs=1, counterparties=1)
    orders = sales_orders(4, dims, seed=4)
    part0 = with_calendar({**dims, "fact_sales_order": orders.slice(0, 2)})
    part1 = with_calendar({**dims, "fact_sales_order": orders})
    spy = Statements(warehouse)
    rewrites = []
    results = []
    for batch, tables, seq in (("c5-000", part0, 5), ("c5-001", part1, 5), ("c6-000", part1, 6)):
        spy.sql.clear()
        results.append(load(spy, batch, tables, seq).tables["fact_sales_order"])
        rewrites.append(sum(s.startswith('UPDATE "fact_') for s in spy.sql))
    assert rewrites == [0, 0, 1]  # the later capture rewrites (one fact table in the batch)
    assert results == [TableResult(2, 2), TableResult(4, 2), TableResult(4, 0, updated=4)]
    assert warehouse.run("SELECT DISTINCT capture_seq FROM fact_sales_order") == [[6]]


# -- Deletes: order-free marks ------------------------------------------------------------


def deletion_history() -> dict[str, tuple[int, dict[str, pa.Table]]]:
    """Four captures. c1: staff 1-2, designs 1-2, orders 1-3 (version A). d2 deletes staff 1
    and 2, design 2 and orders 1-3. c3 brings staff 1 back renamed, design 2 unchanged, order 1
    at a new version B and order 3 unchanged (version A again). d4 deletes staff 2 and design 2
    again, and payment 1, which no batch ever carries."""
    dims = dimensions(staff=2, locations=1, designs=2, counterparties=1)
    refs = dimensions(staff=1, locations=1, designs=1, counterparties=1)  # facts point at 1s
    orders = sales_orders(3, refs, seed=7)
    c1 = with_calendar({**dims, "fact_sales_order": orders})
    c3 = with_calendar(
        {
            **dims,
            "dim_staff": edited(rows(dims["dim_staff"], 1), first_name="Back"),
            "fact_sales_order": pa.concat_tables(
                [later(rows(orders, 1), 1, units_sold=5), rows(orders, 3)]
            ),
        }
    )
    d2 = {DELETED_KEYS: deleted_keys(dim_staff=[1, 2], dim_design=[2], fact_sales_order=[1, 2, 3])}
    d4 = {DELETED_KEYS: deleted_keys(dim_staff=[2], dim_design=[2], fact_payment=[1])}
    return {"c1": (1, c1), "d2": (2, d2), "c3": (3, c3), "d4": (4, d4)}


# A first capture's dimensions are split and partly copied straight in from this many rows
# (``backfill``); at 1 every dimension of these small batches is, so the marks must hold on
# that path too (it must stage a dimension whose keys have tombstones).
DIMENSION_ROWS = pytest.mark.parametrize("dimension_rows", [backfill.DIMENSION_ROWS, 1])


@pytest.mark.slow
@DIMENSION_ROWS
def test_deletes_and_returns_give_the_same_marks_in_every_order(
    warehouse, monkeypatch, dimension_rows
):
    monkeypatch.setattr(backfill, "DIMENSION_ROWS", dimension_rows)
    history = deletion_history()
    stamp = {
        k: history["c1"][1]["fact_sales_order"][SOURCE_VERSION][k - 1].as_py() for k in (1, 2, 3)
    }
    expected = {
        # back at c3 after d2: alive; deleted at d2 and d4, never back: d4's mark
        "dim_staff": [[1, EPOCH, 3, None], [2, EPOCH, 1, captured(4)]],
        # brought again (unchanged) by c3, deleted again by d4: deleted at d4
        "dim_design": [[1, EPOCH, 3, None], [2, EPOCH, 3, captured(4)]],
        # order 1: a new version at c3 (alive, both versions); order 2 deleted at d2; order 3
        # the same version again at c3, so alive after d2
        "fact_sales_order": [
            [1, stamp[1], 1, None],
            [1, stamp[1] + timedelta(days=1), 3, None],
            [2, stamp[2], 1, captured(2)],
            [3, stamp[3], 3, None],
        ],
        "fact_payment": [],
        "etl_deleted_keys": [
            ["dim_design", 2, 4, captured(4)],
            ["dim_staff", 1, 2, captured(2)],
            ["dim_staff", 2, 4, captured(4)],
            ["fact_payment", 1, 4, captured(4)],
            ["fact_sales_order", 1, 2, captured(2)],
            ["fact_sales_order", 2, 2, captured(2)],
            ["fact_sales_order", 3, 2, captured(2)],
        ],
    }
    outcomes = {}
    for order in itertools.permutations(history):
        empty(warehouse)
        for batch_id in order:
            seq, tables = history[batch_id]
            load(warehouse, batch_id, tables, seq)
        found = {
            name: marks(warehouse, name) for name in expected if name.startswith(("dim", "fact"))
        }
        found["etl_deleted_keys"] = warehouse.run("SELECT * FROM etl_deleted_keys ORDER BY 1, 2")
        assert found == expected, order
        outcomes[order] = state(warehouse)
    assert len(outcomes) == 24
    assert all(s == outcomes[("c1", "d2", "c3", "d4")] for s in outcomes.values())


@pytest.mark.parametrize("order", [("c1", "d2", "c3", "d4"), ("d4", "c3", "d2", "c1")])
def test_index_probed_version_joins_mark_deletes_as_hash_joins_do(
    fresh_db, pg_connect, order, monkeypatch
):
    history = deletion_history()
    states = []
    for probes in (True, False):
        probing(monkeypatch, probes)
        con = pg_connect(fresh_db(f"probes{int(probes)}"))
        migrate(con)
        for batch_id in order:
            seq, tables = history[batch_id]
            load(con, batch_id, tables, seq)
        states.append(state(con))
    assert states[0] == states[1]
    assert [row[-1] for row in states[1]["fact_sales_order"]] == [
        None, None, captured(2), None
    ]  # fmt: skip


def test_a_deletion_counts_the_rows_it_marks_and_a_return_the_rows_it_unmarks(warehouse):
    history = deletion_history()
    results = {b: load(warehouse, b, t, seq).row_counts() for b, (seq, t) in history.items()}

    def counts(staged=0, inserted=0, updated=0, deleted_keys=0, marked=0, unmarked=0):
        return {
            "staged": staged, "inserted": inserted, "updated": updated, "parked": 0,
            "released": 0, "deleted_keys": deleted_keys, "marked": marked,
            "unmarked": unmarked, "skipped": staged - inserted - updated,
        }  # fmt: skip

    assert results["d2"] == {
        "dim_staff": counts(deleted_keys=2, marked=2),
        "dim_design": counts(deleted_keys=1, marked=1),
        "fact_sales_order": counts(deleted_keys=3, marked=3),
    }
    assert {n: results["c3"][n] for n in ("dim_staff", "dim_design", "fact_sales_order")} == {
        "dim_staff": counts(staged=1, updated=1, unmarked=1),
        "dim_design": counts(staged=2, updated=2, unmarked=1),
        # order 1: version B inserted, both versions unmarked; order 3 rewritten and unmarked
        "fact_sales_order": counts(staged=2, inserted=1, updated=1, unmarked=2),
    }
    assert results["d4"] == {
        "dim_staff": counts(deleted_keys=1, marked=1),  # a newer deletion: a new time
        "dim_design": counts(deleted_keys=1, marked=1),
        "fact_payment": counts(deleted_keys=1),  # never loaded: a tombstone only
    }


@DIMENSION_ROWS
def test_a_late_version_of_a_key_deleted_before_it_was_loaded_arrives_marked(
    warehouse, monkeypatch, dimension_rows
):
    monkeypatch.setattr(backfill, "DIMENSION_ROWS", dimension_rows)
    history = deletion_history()
    load(warehouse, "d2", history["d2"][1], 2)
    result = load(warehouse, "c1", history["c1"][1], 1)
    assert result.tables["fact_sales_order"] == TableResult(3, 3, marked=3)
    assert result.tables["dim_staff"] == TableResult(2, 2, marked=2)
    assert warehouse.run(
        "SELECT count(*) FILTER (WHERE source_deleted_at = :at), count(*) FROM fact_sales_order",
        at=captured(2),
    ) == [[3, 3]]


def test_a_batch_cannot_delete_calendar_rows_or_unknown_tables_or_without_a_capture(warehouse):
    # A star table is named; any other name is a value of the file's rows, only counted.
    for name, named in (("dim_date", r"\['dim_date'\] or"), ("dim_nothing", r"\[\] and of 1 name")):
        bad = {DELETED_KEYS: deleted_keys(**{name: [1]})}
        with pytest.raises(
            LoadFailed, match=rf"^batch bad: table deleted_keys deletes keys of {named}"
        ) as refused:
            load(warehouse, "bad", bad, 3)
        assert "dim_nothing" not in str(refused.value)
    legacy = {DELETED_KEYS: deleted_keys(dim_design=[1])}
    with pytest.raises(LoadFailed, match=r"^batch bad: deletes keys but .* no hi_utc or capture"):
        load(warehouse, "bad", legacy)
    assert state(warehouse)["etl_deleted_keys"] == []
    assert warehouse.run("SELECT count(*) FROM etl_batch_ledger") == [[0]]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"capture_seq": -1}, "capture_seq must be a non-negative integer: -1"),
        ({"capture_seq": "7"}, "capture_seq must be a non-negative integer: '7'"),
        ({"capture_seq": True}, "capture_seq must be a non-negative integer: True"),
        ({"set_aside": {"fact_payment": [1]}}, "set_aside must map dimension tables"),
        ({"set_aside": {"dim_design": ["1"]}}, "set_aside dim_design must be a list of integer"),
    ],
)
def test_a_manifest_with_a_malformed_capture_is_refused_before_any_write(warehouse, extra, message):
    tables = with_calendar(dimensions(staff=1, locations=1, designs=1, counterparties=1))
    manifest = processed_manifest("bad", tables)
    manifest.extra.update(extra)
    with pytest.raises(LoadFailed, match=f"^batch bad: {message}"):
        load_batch(warehouse, manifest, tables)
    assert warehouse.run("SELECT count(*) FROM etl_batch_ledger") == [[0]]


# -- Parked facts -------------------------------------------------------------------------


def parking_history() -> dict[str, tuple[int, dict[str, pa.Table], dict | None]]:
    """p5: orders 1 and 2; order 2 references design 50, which transform set aside (it is not
    in the batch). f6: design 50 fixed at the source, delivered alone."""
    dims = dimensions(staff=1, locations=1, designs=1, counterparties=1)
    orders = sales_orders(2, dims, seed=5)
    orders = pa.concat_tables([rows(orders, 1), edited(rows(orders, 2), design_id=50)])
    p5 = with_calendar({**dims, "fact_sales_order": orders})
    design_50 = edited(dims["dim_design"], design_id=50, design_name="Fixed")
    return {
        "p5": (5, p5, {"dim_design": [50]}),
        "f6": (6, {"dim_design": design_50}, None),
    }


@pytest.mark.parametrize("probes", [True, False])
def test_a_fact_of_a_set_aside_dimension_row_waits_in_the_park_until_the_row_arrives(
    warehouse, probes, monkeypatch
):
    probing(monkeypatch, probes)
    history = parking_history()
    seq, tables, set_aside = history["p5"]
    parked = load(warehouse, "p5", tables, seq, set_aside=set_aside)
    waiting = warehouse.run(
        "SELECT sales_order_id, design_id, batch_id, capture_seq FROM etl_parked_fact_sales_order"
    )
    seq, tables, _ = history["f6"]
    released = load(warehouse, "f6", tables, seq)

    assert parked.tables["fact_sales_order"] == TableResult(2, 1, parked=1)
    assert waiting == [[2, 50, "p5", 5]]
    assert released.tables == {
        "dim_design": TableResult(1, 1),
        "fact_sales_order": TableResult(0, 0, released=1),
    }
    assert warehouse.run(
        "SELECT sales_order_id, design_id, capture_seq, loaded_batch_id FROM fact_sales_order"
        " ORDER BY 1"
    ) == [[1, 1, 5, "p5"], [2, 50, 5, "p5"]]
    assert warehouse.run("SELECT count(*) FROM etl_parked_fact_sales_order") == [[0]]


def test_parking_and_release_give_the_same_warehouse_as_the_row_arriving_first(warehouse):
    history = parking_history()
    outcomes = []
    for order in (("p5", "f6"), ("f6", "p5")):
        empty(warehouse)
        results = {}
        for batch_id in order:
            seq, tables, set_aside = history[batch_id]
            results[batch_id] = load(warehouse, batch_id, tables, seq, set_aside=set_aside)
        outcomes.append(state(warehouse))
    # The row already there: p5's order 2 is not parked, it resolves.
    assert results["p5"].tables["fact_sales_order"] == TableResult(2, 2)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0]["etl_parked_fact_sales_order"] == []


def test_a_fact_stays_parked_while_its_row_is_missing_and_a_stored_set_aside_row_parks_nothing(
    warehouse,
):
    history = parking_history()
    seq, tables, set_aside = history["p5"]
    load(warehouse, "p5", tables, seq, set_aside=set_aside)
    other = with_calendar(dimensions(staff=1, locations=1, designs=1, counterparties=1))
    nothing = load(warehouse, "x7", other, 7)
    assert "fact_sales_order" not in nothing.tables
    assert warehouse.run("SELECT sales_order_id FROM etl_parked_fact_sales_order") == [[2]]
    # Design 1 is stored; a later batch sets its new version aside too: order 1 resolves to
    # the stored row (rewritten by the later capture), order 2 waits again.
    again = load(warehouse, "p8", tables, 8, set_aside={"dim_design": [1, 50]})
    assert again.tables["fact_sales_order"] == TableResult(2, 0, updated=1, parked=1)
    assert warehouse.run(
        "SELECT sales_order_id, batch_id, capture_seq FROM etl_parked_fact_sales_order ORDER BY 2"
    ) == [[2, "p5", 5], [2, "p8", 8]]
    # Both leave the park when the row arrives; the later capture's delivery is stored.
    seq, tables, _ = history["f6"]
    released = load(warehouse, "f9", tables, 9)
    assert released.tables["fact_sales_order"] == TableResult(0, 0, released=2)
    assert warehouse.run(
        "SELECT sales_order_id, capture_seq, loaded_batch_id FROM fact_sales_order ORDER BY 1"
    ) == [[1, 8, "p8"], [2, 8, "p8"]]


def test_any_other_missing_reference_still_fails_the_batch_naming_it(warehouse):
    """A parked candidate whose other reference is missing too, and a missing design that was
    not set aside: each fails the whole batch, naming table, column and ids."""
    seq, tables, set_aside = parking_history()["p5"]
    orders = tables["fact_sales_order"]
    both = {
        **tables,
        "fact_sales_order": pa.concat_tables(
            [orders, edited(rows(orders, 2), sales_order_id=3, counterparty_id=99)]
        ),
    }
    unlisted = {
        **tables,
        "fact_sales_order": pa.concat_tables(
            [orders, edited(rows(orders, 1), sales_order_id=4, design_id=60)]
        ),
    }
    failures = []
    for bad in (both, unlisted):
        with pytest.raises(LoadFailed) as failure:
            load(warehouse, "bad", bad, seq, set_aside=set_aside)
        failures.append(str(failure.value))
    assert failures == [
        "batch bad: table fact_sales_order: counterparty_id references 1 dim_counterparty"
        " row(s) that are neither in the warehouse nor in the batch, e.g. ['99']",
        "batch bad: table fact_sales_order: design_id references 1 dim_design row(s) that are"
        " neither in the warehouse nor in the batch, e.g. ['60']",
    ]
    assert all(rows == [] for rows in state(warehouse).values())


def test_a_parked_fact_released_after_its_key_was_deleted_arrives_marked(warehouse):
    history = parking_history()
    seq, tables, set_aside = history["p5"]
    load(warehouse, "p5", tables, seq, set_aside=set_aside)
    load(warehouse, "d7", {DELETED_KEYS: deleted_keys(fact_sales_order=[2])}, 7)
    seq, tables, _ = history["f6"]
    released = load(warehouse, "f6", tables, seq)
    assert released.tables["fact_sales_order"] == TableResult(0, 0, released=1, marked=1)
    assert marks(warehouse, "fact_sales_order")[1][2:] == [5, captured(7)]
