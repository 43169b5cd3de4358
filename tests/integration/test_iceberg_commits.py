"""Iceberg commits against real catalogs: pyiceberg's SQL catalog (its conditional update is a
real optimistic lock) on a local warehouse, and the Glue catalog of the emulator with the
emulated S3 (as the local chain and, with AWS, the function use them)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.schema import Schema

import totes.iceberg.commit as commit
from totes.errors import LoadFailed, SchemaDrift
from totes.iceberg.batch import apply_batch
from totes.iceberg.catalog import ensure_tables, open_catalog, table_location
from totes.iceberg.maintenance import data_file_stats, maintain
from totes.iceberg.settings import IcebergSettings
from totes.iceberg.tables import TABLE_PROPERTIES, all_tables, star_rows
from totes.star.model import STAR_TABLES_BY_NAME
from totes_tools.local.aws import REGION, client
from totes_tools.local.iceberg import read_tables
from totes_tools.warehouse.synthetic import (
    deleted_keys,
    dimensions,
    processed_manifest,
    sales_orders,
    star_batch,
    with_calendar,
)

DIMENSION = "dim_staff"


@pytest.fixture
def sql_target(tmp_path):
    settings = IcebergSettings(
        processed_bucket="processed",
        idempotency_table="idempotency",
        warehouse=f"file://{tmp_path}/warehouse",
        database="star",
        catalog_uri=f"sqlite:///{tmp_path}/catalog.db",
    )
    catalog = open_catalog(settings, endpoint_url="")
    ensure_tables(catalog, settings)
    return catalog, settings


def batch(seq: int, sales: int = 50, *, seed: int = 0, renamed: str | None = None):
    tables = star_batch(sales, 10, 20, seed=seed)
    if renamed:  # every staff row with another name: an update of each stored row
        staff = tables[DIMENSION]
        tables[DIMENSION] = staff.set_column(
            staff.schema.get_field_index("first_name"),
            "first_name",
            pa.array([renamed] * staff.num_rows),
        )
    name = f"c{seq:019d}-000"
    return processed_manifest(name, tables, capture_seq=seq), tables


def snapshots(catalog, settings) -> dict[str, int]:
    return {
        name: len(catalog.load_table((settings.database, name)).snapshots())
        for name in all_tables()
    }


def on_two_threads(catalog, settings, batches, writers) -> dict:
    """``apply_batch`` of ``batches[i]`` with ``writers[i]`` on threads w0 and w1 at once:
    what each returned, by index (an index missing: that thread raised)."""
    results = {}

    def run(i: int) -> None:
        manifest, tables = batches[i]
        results[i] = apply_batch(catalog, settings.database, manifest, tables, writer=writers[i])

    threads = [threading.Thread(target=run, args=(i,), name=f"w{i}") for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def race_to_the_first_dimension_commit(monkeypatch) -> None:
    """Two writer threads: each one's first commit of the dimension waits for the other's, so
    both plan it on the same snapshot."""
    barrier = threading.Barrier(2, timeout=10)
    raced = set()

    def hold(table: str) -> None:
        name = threading.current_thread().name
        if table == DIMENSION and name not in raced:
            raced.add(name)
            barrier.wait()

    monkeypatch.setattr(commit, "before_commit", hold)


def test_two_batches_racing_for_the_same_tables_both_land_as_if_one_came_after_the_other(
    sql_target, monkeypatch
):
    """Both writers plan every table on the same snapshot (a barrier holds each just before
    its catalog commit); the catalog accepts one, the other's commit fails and is planned
    again on the new state. The tables equal those of the two batches applied one by one."""
    catalog, settings = sql_target
    first, second = batch(1, seed=1, renamed="First"), batch(2, seed=1, renamed="Second")
    race_to_the_first_dimension_commit(monkeypatch)
    writers = [
        commit.Writer(catalog, settings.database, m.batch_id, m.extra["capture_seq"], lambda s: 0)
        for m, _ in (first, second)
    ]
    results = on_two_threads(catalog, settings, [first, second], writers)

    assert sorted(results) == [0, 1]
    assert sum(w.conflicts for w in writers) >= 1
    staff = read_tables(settings, [DIMENSION], endpoint_url="")[DIMENSION]
    assert set(staff.column("first_name").to_pylist()) == {"Second"}  # the later capture
    assert set(staff.column("capture_seq").to_pylist()) == {2}
    ledger = read_tables(settings, ["etl_batch_ledger"], endpoint_url="")["etl_batch_ledger"]
    assert sorted(ledger.column("batch_id").to_pylist()) == [first[0].batch_id, second[0].batch_id]


def test_a_table_that_keeps_losing_the_race_fails_the_batch_naming_it(sql_target, monkeypatch):
    catalog, settings = sql_target
    manifest, tables = batch(1)
    rival = catalog.load_table((settings.database, DIMENSION))
    empty = rival.schema().as_arrow().empty_table()

    def rival_commits_first(table: str) -> None:
        if table == DIMENSION:  # another writer commits a snapshot in between, every time
            nonlocal rival
            rival.append(empty)
            rival = rival.refresh()

    monkeypatch.setattr(commit, "before_commit", rival_commits_first)
    writer = commit.Writer(catalog, settings.database, manifest.batch_id, 1, sleep=lambda s: None)

    with pytest.raises(LoadFailed, match=rf"batch {manifest.batch_id}: Iceberg table {DIMENSION}"):
        apply_batch(catalog, settings.database, manifest, tables, writer=writer)

    assert writer.conflicts == commit.MAX_ATTEMPTS
    staff = catalog.load_table((settings.database, DIMENSION))
    assert manifest.batch_id not in commit.committed_batches(staff)
    assert staff.scan().to_arrow().num_rows == 0


def test_a_batch_applied_again_is_acknowledged_without_a_snapshot(sql_target):
    catalog, settings = sql_target
    manifest, tables = batch(1)
    first = apply_batch(catalog, settings.database, manifest, tables)
    before = snapshots(catalog, settings)

    again = apply_batch(catalog, settings.database, manifest, tables)

    assert (first.loaded, again.loaded) == (True, False)
    assert snapshots(catalog, settings) == before


def test_maintenance_compacts_small_files_expires_snapshots_and_removes_orphans_keeping_rows(
    sql_target, monkeypatch
):
    catalog, settings = sql_target
    for seq in range(1, 7):
        manifest, tables = batch(seq, sales=30, seed=seq)
        apply_batch(catalog, settings.database, manifest, tables)
    # an orphan: a commit that wrote its files and never committed
    crashed, tables = batch(7, sales=30, seed=7)

    def crash(table: str) -> None:
        raise SystemError("died before the commit")

    monkeypatch.setattr(commit, "before_commit", crash)
    with pytest.raises(SystemError):
        apply_batch(catalog, settings.database, crashed, tables)
    monkeypatch.undo()
    before = read_tables(settings, endpoint_url="")
    facts = catalog.load_table((settings.database, "fact_sales_order"))
    assert data_file_stats(facts).files > 1

    later = datetime.now(UTC) + timedelta(days=30)
    tuned = IcebergSettings(**{**vars(settings), "keep_snapshots": 1})
    reports = {r.table: r for r in maintain(catalog, tuned, now=later)}

    sales = reports["fact_sales_order"]
    assert (sales.before.files > 1, sales.after.files) == (True, 1)
    assert sales.before.rows == sales.after.rows
    assert sales.snapshots_expired >= 6
    assert reports["dim_staff"].files_removed > 0  # expired snapshots' files and the orphan
    after = read_tables(settings, endpoint_url="")
    for name, rows in before.items():
        assert sorted(map(str, after[name].to_pylist())) == sorted(map(str, rows.to_pylist()))
    assert catalog.load_table((settings.database, "fact_sales_order")).current_snapshot()


def test_through_the_glue_catalog_of_the_emulator_the_tables_hold_athena_types(aws):
    s3 = client("s3", aws)
    glue = client("glue", aws)
    s3.create_bucket(Bucket="glue-ice", CreateBucketConfiguration={"LocationConstraint": REGION})
    glue.create_database(DatabaseInput={"Name": "glue_star"})
    settings = IcebergSettings("p", "i", "s3://glue-ice/warehouse", "glue_star")
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings)
    manifest, tables = batch(1, sales=20)

    result = apply_batch(catalog, settings.database, manifest, tables)

    assert result.loaded
    columns = {
        c["Name"]: c["Type"]
        for c in glue.get_table(DatabaseName="glue_star", Name="fact_sales_order")["Table"][
            "StorageDescriptor"
        ]["Columns"]
    }
    assert columns["created_time"] == "string"  # Athena has no Iceberg time type
    assert columns["unit_price"] == "decimal(10,2)"
    assert columns["source_deleted_at"] == "timestamp"
    facts = read_tables(settings, ["fact_sales_order"])["fact_sales_order"]
    assert facts.num_rows == 20
    assert pc.all(pc.match_like(facts.column("created_time"), "__:__:__.___")).as_py()


def test_a_cold_start_finds_the_tables_and_writes_nothing(sql_target, tmp_path):
    catalog, settings = sql_target
    files = sorted(p for p in (tmp_path / "warehouse").rglob("*") if p.is_file())

    ensure_tables(catalog, settings)

    assert sorted(p for p in (tmp_path / "warehouse").rglob("*") if p.is_file()) == files


# -- parked facts across a crash -----------------------------------------------------------------


def parking_batches():
    """p5: orders 1 and 2; order 2 references design 50, which transform set aside (it is not
    in the batch). f6: design 50 fixed at the source, delivered alone (the warehouse's
    ``test_warehouse_capture.parking_history``)."""
    dims = dimensions(staff=1, locations=1, designs=1, counterparties=1)
    orders = sales_orders(2, dims, seed=5)
    design = orders.schema.get_field_index("design_id")
    orders = orders.set_column(design, "design_id", pa.array([1, 50], pa.int32()))
    p5 = with_calendar({**dims, "fact_sales_order": orders})
    fixed = dims["dim_design"].set_column(0, "design_id", pa.array([50], pa.int32()))
    return (
        (processed_manifest("p5", p5, capture_seq=5, set_aside={"dim_design": [50]}), p5),
        (processed_manifest("f6", {"dim_design": fixed}, capture_seq=6), {"dim_design": fixed}),
    )


def test_a_crash_between_a_facts_commit_and_its_parks_loses_no_parked_fact(sql_target, monkeypatch):
    """p5 commits its facts (order 1) and dies before its park's commit (order 2 waiting for
    design 50); f6 brings design 50 before p5 is delivered again. The warehouse, whichever
    order it loads them in, holds both orders of p5 (``test_warehouse_capture``); so must the
    Iceberg tables once the retry completes p5."""
    catalog, settings = sql_target
    (p5, p5_tables), (f6, f6_tables) = parking_batches()

    def crash(table: str) -> None:
        if table == "etl_parked_fact_sales_order":
            raise SystemError("the function died between the facts' commit and the park's")

    monkeypatch.setattr(commit, "before_commit", crash)
    with pytest.raises(SystemError):
        apply_batch(catalog, settings.database, p5, p5_tables)
    monkeypatch.undo()
    facts = catalog.load_table((settings.database, "fact_sales_order"))
    assert commit.committed_batches(facts) == {"p5"}

    apply_batch(catalog, settings.database, f6, f6_tables)
    apply_batch(catalog, settings.database, p5, p5_tables)  # the retry

    tables = read_tables(settings, ["fact_sales_order", "etl_batch_ledger"], endpoint_url="")
    orders = tables["fact_sales_order"].sort_by("sales_order_id")
    assert orders.select(
        ["sales_order_id", "design_id", "capture_seq", "loaded_batch_id"]
    ).to_pylist() == [
        {"sales_order_id": 1, "design_id": 1, "capture_seq": 5, "loaded_batch_id": "p5"},
        {"sales_order_id": 2, "design_id": 50, "capture_seq": 5, "loaded_batch_id": "p5"},
    ]
    assert sorted(tables["etl_batch_ledger"].column("batch_id").to_pylist()) == ["f6", "p5"]


# -- tables created by an older version of the code ----------------------------------------------


def older_table(catalog, settings, name: str, without: str):
    """Table ``name`` as a version of the code without column ``without`` created it."""
    full = all_tables()[name]
    old = Schema(
        *[f for f in full.fields if f.name != without],
        identifier_field_ids=full.identifier_field_ids,
    )
    catalog.drop_table((settings.database, name))
    return catalog.create_table(
        (settings.database, name),
        old,
        location=table_location(settings, name),
        properties=TABLE_PROPERTIES,
    )


def test_a_table_gaining_a_column_in_the_middle_takes_the_next_batches(sql_target):
    """An older code version's dim_location without address_line_2 (a nullable column in the
    middle of the star's columns) holding rows; the new code evolves it on its cold start
    (the column lands last in the table) and its batches then rewrite and add rows."""
    catalog, settings = sql_target
    old = older_table(catalog, settings, "dim_location", without="address_line_2")
    manifest, tables = batch(1)
    stored = star_rows(STAR_TABLES_BY_NAME["dim_location"], tables["dim_location"], "c1", 1)
    old.append(stored.drop_columns(["address_line_2"]).cast(old.schema().as_arrow()))
    ensure_tables(catalog, settings)
    manifest, tables = batch(2)
    locations = tables["dim_location"]
    tables["dim_location"] = locations.set_column(
        locations.schema.get_field_index("address_line_2"),
        "address_line_2",
        pa.array(["Flat 1"] * locations.num_rows),
    )

    apply_batch(catalog, settings.database, manifest, tables)
    second = read_tables(settings, ["dim_location"], endpoint_url="")["dim_location"]
    apply_batch(catalog, settings.database, *batch(3, seed=3))
    third = read_tables(settings, ["dim_location"], endpoint_url="")["dim_location"]

    assert second.num_rows == third.num_rows == locations.num_rows
    assert set(second.column("address_line_2").to_pylist()) == {"Flat 1"}
    assert set(second.column("capture_seq").to_pylist()) == {2}
    assert set(third.column("capture_seq").to_pylist()) == {3}


def test_a_required_column_an_older_table_lacks_is_refused_naming_table_and_column(sql_target):
    """Iceberg v2 has no default for the rows a table holds: a required column cannot be
    added, so the difference stops the loader, named (docs/iceberg.md)."""
    catalog, settings = sql_target
    older_table(catalog, settings, "dim_location", without="city")

    with pytest.raises(SchemaDrift, match=r"star\.dim_location: column city"):
        ensure_tables(catalog, settings)


# -- a deletion racing the batch that carries the key ----------------------------------------------


@pytest.mark.parametrize("dies_at", [None, "fact_sales_order"])
def test_a_deletion_committed_while_a_batch_plans_its_dimension_marks_the_key(
    sql_target, monkeypatch, dies_at
):
    """c3 carries design 7; c5 deletes it. Serially, in either order, design 7 ends marked
    deleted (c5's tombstone is newer than c3's row), as in the warehouse. Here c5 runs whole
    while c3 holds its planned dim_design commit (a second writer, as the racing test's).
    ``dies_at``: c3 then dies before that table's commit, and its retry completes it (the
    dimension it holds is planned again with the tombstones as they are now)."""
    catalog, settings = sql_target
    manifest, tables = batch(3)
    deletion = {"deleted_keys": deleted_keys(dim_design=[7])}
    later = processed_manifest("c0000000000000000005-000", deletion, capture_seq=5)
    raced = []

    def deletion_lands(table: str) -> None:
        if table == "dim_design" and not raced:
            raced.append(table)
            apply_batch(catalog, settings.database, later, deletion)
        if table == dies_at:
            raise SystemError("the function died")

    monkeypatch.setattr(commit, "before_commit", deletion_lands)
    if dies_at:
        with pytest.raises(SystemError):
            apply_batch(catalog, settings.database, manifest, tables)
        monkeypatch.undo()
    apply_batch(catalog, settings.database, manifest, tables)

    assert raced
    designs = read_tables(settings, ["dim_design"], endpoint_url="")["dim_design"]
    marks = {
        row["design_id"]: row["source_deleted_at"]
        for row in designs.select(["design_id", "source_deleted_at"]).to_pylist()
    }
    assert marks[7] is not None
    assert {k for k, mark in marks.items() if mark is not None} == {7}


def test_one_batch_delivered_twice_at_once_lands_once(sql_target, monkeypatch):
    """Two invocations of the same batch both pass the ledger check and plan every table on
    the same snapshots (a barrier holds each before its first dimension commit); the loser of
    each table's race plans again and finds the batch's rows there. Every table ends as after
    one delivery: no row twice, one ledger row."""
    catalog, settings = sql_target
    manifest, tables = batch(1, sales=40)
    race_to_the_first_dimension_commit(monkeypatch)
    writers = [
        commit.Writer(catalog, settings.database, manifest.batch_id, 1, lambda s: 0) for _ in (0, 1)
    ]
    done = on_two_threads(catalog, settings, [(manifest, tables)] * 2, writers)

    assert sorted(done) == [0, 1]
    assert sum(w.conflicts for w in writers) >= 1
    stored = read_tables(settings, endpoint_url="")
    for name, rows in tables.items():
        assert stored[name].num_rows == rows.num_rows, name
    assert stored["etl_batch_ledger"].column("batch_id").to_pylist() == [manifest.batch_id]
