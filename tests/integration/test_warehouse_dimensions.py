"""Dimension merges against a real PostgreSQL: the stored rows updated only forward, the new
keys inserted, each counted, and the joins probing the dimension's key only when it is much
larger than the batch (``totes.warehouse.dimensions``)."""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pytest
from plan_support import JoinRecorder

from totes.errors import LoadFailed
from totes.star.model import OLDEST_VERSION, SOURCE_VERSION, STAR_TABLES_BY_NAME
from totes.warehouse import dimensions as dims_module
from totes.warehouse.dimensions import merge_dimension
from totes.warehouse.merge import load_batch
from totes.warehouse.migrations import migrate
from totes.warehouse.results import TableResult
from totes.warehouse.staging import stage
from totes_tools.warehouse.synthetic import EPOCH, dimensions, processed_manifest

T = {m: EPOCH + timedelta(minutes=m) for m in (1, 5, 10, 12, 15, 20, 25, 30)}


@pytest.fixture
def warehouse(warehouse_db, pg_connect):
    con = pg_connect(warehouse_db)
    migrate(con)
    return con


@pytest.fixture(params=[True, False], ids=["probes", "planner"])
def probes(request, monkeypatch) -> bool:
    """Force the dimension joins to index probes or leave them to the planner whatever the
    sizes: both must give the same rows and counts."""
    monkeypatch.setattr(dims_module, "PROBE_ABOVE_BATCHES", -1 if request.param else 10**12)
    return request.param


def load(con, batch_id: str, tables: dict[str, pa.Table], seq: int = 5):
    manifest = processed_manifest(batch_id, tables, capture_seq=seq)
    return load_batch(con, manifest, tables)


def rows(name: str, *specs: tuple) -> pa.Table:
    """Rows of dimension ``name`` from (key, label, newest[, oldest]) with the synthetic rows'
    other columns; ``label`` goes to the first text column."""
    base = dimensions(staff=1, locations=1, counterparties=1)[name].to_pylist()[0]
    table = STAR_TABLES_BY_NAME[name]
    label = table.column_names[1]
    out = []
    for key, text, newest, *oldest in specs:
        row = {**base, table.key: key, label: text, SOURCE_VERSION: T[newest]}
        if OLDEST_VERSION in table.lineage:
            row[OLDEST_VERSION] = T[oldest[0] if oldest else newest]
        out.append(row)
    return pa.Table.from_pylist(out, schema=table.arrow_schema)


def stored(con, name: str) -> list[list]:
    """(key, label, loaded_batch_id) of every row of dimension ``name``, in key order."""
    table = STAR_TABLES_BY_NAME[name]
    key, label = table.key, table.column_names[1]
    return con.run(f"SELECT {key}, {label}, loaded_batch_id FROM {name} ORDER BY 1")  # noqa: S608


def test_new_keys_are_inserted_and_stored_rows_move_only_forward_each_counted(warehouse, probes):
    """Within one capture the stamps decide as a row: a newer ``source_version`` replaces,
    an older or equal one changes nothing; for a joined dimension an equal newest stamp is
    decided by the oldest (greater replaces), and the newest stamp outranks the oldest."""
    load(
        warehouse,
        "a",
        {
            "dim_location": rows("dim_location", (1, "a1", 20), (2, "a2", 20), (3, "a3", 20)),
            "dim_staff": rows(
                "dim_staff",
                *((key, f"a{key}", 20, 10) for key in range(1, 6)),
            ),
        },
    )
    result = load(
        warehouse,
        "b",
        {
            "dim_location": rows(
                "dim_location",
                (1, "newer", 30),
                (2, "older", 10),
                (3, "equal", 20),
                (5, "new", 1),
                (6, "new", 25),
            ),
            "dim_staff": rows(
                "dim_staff",
                (1, "newer", 30, 10),
                (2, "tie, newer oldest", 20, 15),
                (3, "tie, older oldest", 20, 5),
                (4, "equal", 20, 10),
                (5, "older newest, newer oldest", 15, 15),
                (6, "new", 12, 1),
            ),
        },
    )
    assert result.tables["dim_location"] == TableResult(staged=5, inserted=2, updated=1)
    assert result.tables["dim_staff"] == TableResult(staged=6, inserted=1, updated=2)
    assert stored(warehouse, "dim_location") == [
        [1, "newer", "b"],
        [2, "a2", "a"],
        [3, "a3", "a"],
        [5, "new", "b"],
        [6, "new", "b"],
    ]
    assert stored(warehouse, "dim_staff") == [
        [1, "newer", "b"],
        [2, "tie, newer oldest", "b"],
        [3, "a3", "a"],
        [4, "a4", "a"],
        [5, "a5", "a"],
        [6, "new", "b"],
    ]


def test_a_batch_with_a_key_twice_keeps_the_newest_of_its_rows(warehouse, probes):
    """Stored keys and new keys alike, whatever the order of the rows in the batch; for a
    joined dimension the oldest stamp decides between rows of one newest stamp."""
    load(
        warehouse,
        "a",
        {
            "dim_location": rows("dim_location", (1, "stored", 20)),
            "dim_staff": rows("dim_staff", (1, "stored", 20, 10)),
        },
    )
    result = load(
        warehouse,
        "b",
        {
            "dim_location": rows(
                "dim_location",
                (1, "middle", 25),
                (1, "newest", 30),
                (1, "oldest", 10),
                (7, "newest", 12),
                (7, "old", 10),
            ),
            "dim_staff": rows(
                "dim_staff",
                (1, "low", 30, 10),
                (1, "high", 30, 20),
                (8, "high", 25, 15),
                (8, "low", 25, 12),
            ),
        },
    )
    assert result.tables["dim_location"] == TableResult(staged=5, inserted=1, updated=1)
    assert result.tables["dim_staff"] == TableResult(staged=4, inserted=1, updated=1)
    assert stored(warehouse, "dim_location") == [[1, "newest", "b"], [7, "newest", "b"]]
    assert stored(warehouse, "dim_staff") == [[1, "high", "b"], [8, "high", "b"]]


def test_a_merge_writes_the_capture_and_batch_and_leaves_the_deletion_mark(warehouse, probes):
    """``merge_dimension`` alone (the deletion marks are ``deletes``' step): a stored row
    moved forward takes the batch's capture and id and keeps its ``source_deleted_at``."""
    load(warehouse, "a", {"dim_location": rows("dim_location", (1, "a1", 20), (2, "a2", 20))})
    marked = EPOCH + timedelta(days=3)
    warehouse.run("UPDATE dim_location SET source_deleted_at = :t", t=marked)
    table = STAR_TABLES_BY_NAME["dim_location"]
    warehouse.run("BEGIN")
    try:
        stage(warehouse, table, rows("dim_location", (1, "moved", 10), (3, "new", 1)))
        result = merge_dimension(warehouse, "b", 6, table, 2)
        after = warehouse.run(
            "SELECT location_id, address_line_1, capture_seq, loaded_batch_id, source_deleted_at"
            " FROM dim_location ORDER BY 1"
        )
    finally:
        warehouse.run("ROLLBACK")
    assert result == TableResult(staged=2, inserted=1, updated=1)
    assert after == [
        [1, "moved", 6, "b", marked],
        [2, "a2", 5, "a", marked],
        [3, "new", 6, "b", None],
    ]


def test_the_dimension_joins_probe_only_a_dimension_much_larger_than_the_batch(warehouse):
    """By size on disk: a first load into an empty dimension leaves both joins to the planner;
    a few rows onto a stored dimension many times their size probe its primary key, in the
    update and in the insert's anti-join."""
    recorder = JoinRecorder(warehouse)
    first = dimensions(transactions=5000)
    load(recorder, "big", {"dim_transaction": first["dim_transaction"]})
    assert recorder.dimension("dim_transaction") == [("UPDATE", False), ("INSERT", False)]
    recorder.probed.clear()
    few = first["dim_transaction"].slice(0, 5).to_pylist()
    for row in few[:3]:
        row[SOURCE_VERSION] += timedelta(days=1)
    for row in few[3:]:
        row["transaction_id"] += 10_000
    small = pa.Table.from_pylist(few, schema=first["dim_transaction"].schema)
    result = load(recorder, "small", {"dim_transaction": small})
    assert recorder.dimension("dim_transaction") == [("UPDATE", True), ("INSERT", True)]
    assert result.tables["dim_transaction"] == TableResult(staged=5, inserted=2, updated=3)


def test_a_row_without_a_stamp_never_hides_a_newer_row_of_its_key(warehouse, probes):
    """A key twice in a batch, one row stamped, one with a NULL stamp (a NOT NULL column the
    load refuses only in a row it writes): the stamped row is the newest, so a newer one
    replaces the stored row and a new key is inserted from it. Sorted ``DESC`` with NULLs
    first, the unstamped row was taken as the newest and compared as unknown: the newer row
    was lost without a word, the new key failed the batch."""
    table = STAR_TABLES_BY_NAME["dim_location"].arrow_schema
    schema = pa.schema([f.with_nullable(True) for f in table])
    load(warehouse, "a", {"dim_location": rows("dim_location", (1, "a1", 20))})
    twice = rows("dim_location", (1, "unstamped", 30), (1, "newer", 25), (2, "x", 1)).to_pylist()
    twice.append({**twice[2], "address_line_1": "new"})
    for row in twice[0], twice[2]:
        row[SOURCE_VERSION] = None
    result = load(warehouse, "b", {"dim_location": pa.Table.from_pylist(twice, schema=schema)})
    assert result.tables["dim_location"] == TableResult(staged=4, inserted=1, updated=1)
    assert stored(warehouse, "dim_location") == [[1, "newer", "b"], [2, "new", "b"]]


def test_a_null_in_a_not_null_column_fails_the_batch_only_in_a_row_it_writes(warehouse, probes):
    """A new or newer row with a NULL where the warehouse needs a value fails the batch naming
    table and column; an older row is not written, so, as the facts' anti-join does for a
    stored version, nothing checks it (the upsert's speculative insertion refused it too)."""
    load(warehouse, "a", {"dim_location": rows("dim_location", (1, "a1", 20))})
    older = rows("dim_location", (1, "older", 10)).to_pylist()
    older[0]["city"] = None
    table = STAR_TABLES_BY_NAME["dim_location"].arrow_schema
    result = load(warehouse, "b", {"dim_location": pa.Table.from_pylist(older, schema=table)})
    assert result.tables["dim_location"] == TableResult(staged=1, inserted=0, updated=0)
    for newer in (rows("dim_location", (1, "newer", 30)), rows("dim_location", (2, "new", 1))):
        broken = newer.to_pylist()
        broken[0]["city"] = None
        with pytest.raises(LoadFailed) as failed:
            load(warehouse, "c", {"dim_location": pa.Table.from_pylist(broken, schema=table)})
        assert "column city" in str(failed.value)
        assert "[SQLSTATE 23502]" in str(failed.value)
    assert stored(warehouse, "dim_location") == [[1, "a1", "a"]]
