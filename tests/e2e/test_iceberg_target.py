"""The Iceberg target end to end (issue 17): the local chain with the target on feeds the
warehouse and the Iceberg tables from the same processed manifests, and both end equal table
by table, whatever the delivery order, however often a batch is delivered, and after a crash
between writing a commit's files and committing it."""

from __future__ import annotations

import pytest

import totes.iceberg.commit as commit
from totes.iceberg.catalog import open_catalog
from totes.iceberg.tables import LEDGER, all_tables
from totes.lake import MANIFEST_PREFIX
from totes.star.model import DIMENSIONS
from totes_tools.local.aws import client
from totes_tools.local.iceberg import differences, read_tables
from totes_tools.source.simulator import Simulator
from totes_tools.source.snapshot import load_snapshot

pytestmark = pytest.mark.slow

NEW_ADDRESS = (
    "INSERT INTO address (address_line_1, city, postal_code, country, phone, created_at,"
    " last_updated) VALUES ('1 New St', NULL, 'N1', 'UK', '0', localtimestamp, localtimestamp)"
    " RETURNING address_id"
)
NEW_ORDER = (
    "INSERT INTO sales_order (design_id, staff_id, counterparty_id, units_sold, unit_price,"
    " currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id,"
    " created_at, last_updated) VALUES (1, 1, 1, 1000, 2.50, 1, '2024-12-01', '2024-12-02',"
    " :location, localtimestamp, localtimestamp) RETURNING sales_order_id"
)


class Targets:
    """The chain with the Iceberg target on, and both targets at hand."""

    def __init__(self, chain, pg_connect):
        self.chain = chain
        self.warehouse = pg_connect(chain.warehouse)
        self.settings = chain.iceberg.settings(chain.names)
        self.catalog = open_catalog(self.settings)

    def differences(self) -> dict[str, str]:
        return differences(self.warehouse, read_tables(self.settings))

    def snapshots(self) -> dict[str, int]:
        return {
            name: len(self.catalog.load_table((self.settings.database, name)).snapshots())
            for name in all_tables()
        }

    def ledger(self) -> set[str]:
        rows = read_tables(self.settings, [LEDGER])[LEDGER]
        return set(rows.column("batch_id").to_pylist())


def test_the_iceberg_tables_equal_the_warehouse_through_changes_redeliveries_and_reordering(
    snapshot_dir, source_db, make_chain, pg_connect
):
    source = pg_connect(source_db)
    load_snapshot(source, snapshot_dir)
    chaos = {"on": False}

    def deliver(stage, deliveries):
        """Once chaos is on: every stage gets its events newest first, each twice."""
        if not chaos["on"]:
            return deliveries
        return [d for d in reversed(deliveries) for _ in (1, 2)]

    targets = Targets(make_chain(source_db, iceberg=True, deliver=deliver), pg_connect)
    chain = targets.chain

    first = chain.run_cycle()

    assert first.ok, first.format()
    assert first.stages["iceberg"].batches == first.stages["load"].batches
    assert targets.differences() == {}

    simulator = Simulator(source, seed=7)
    for _ in range(30):
        simulator.step()
    # A key deleted at the source (marked in both targets), and a new address the star cannot
    # hold (a NULL city) with a new order delivered there: the order waits in the parks.
    designs = [
        source.run(
            "INSERT INTO design (design_name, file_location, file_name, created_at,"
            " last_updated) VALUES ('Unused', '/d', 'd.json', localtimestamp, localtimestamp)"
            " RETURNING design_id"
        )[0][0]
        for _ in range(2)
    ]
    design, gone = designs
    source.run("ALTER TABLE address ALTER COLUMN city DROP NOT NULL")
    [[address]] = source.run(NEW_ADDRESS)
    [[order]] = source.run(NEW_ORDER, location=address)
    second = chain.run_cycle()

    assert second.ok, second.format()
    assert second.stages["transform"].rows_set_aside == 1
    assert targets.differences() == {}
    parked = read_tables(targets.settings, ["etl_parked_fact_sales_order"])
    assert parked["etl_parked_fact_sales_order"].column("sales_order_id").to_pylist() == [order]

    # Three captures queued before any of them is delivered, then every stage's events
    # delivered newest first and each twice: the deleted design, the fixed address (the
    # parked order is released), a design that comes back.
    chaos["on"] = True
    for step in range(3):
        if step == 0:  # before the simulator may sell it
            source.run("DELETE FROM design WHERE design_id = ANY(:d)", d=designs)
        for _ in range(10):
            simulator.step()
        if step == 0:
            source.run(
                "UPDATE address SET city = 'Leeds', last_updated = localtimestamp"
                " WHERE address_id = :a",
                a=address,
            )
        if step == 1:
            source.run(
                "INSERT INTO design (design_id, design_name, file_location, file_name,"
                " created_at, last_updated)"
                " VALUES (:d, 'Back', '/x', 'x.json', localtimestamp, localtimestamp)",
                d=design,
            )
        chain.ingest()
    third = chain.drain()

    assert third.ok, third.format()
    assert len(third.stages["iceberg"].batches) == 6  # three batches, each delivered twice
    assert targets.differences() == {}
    released = read_tables(targets.settings, ["fact_sales_order", "etl_parked_fact_sales_order"])
    assert order in released["fact_sales_order"].column("sales_order_id").to_pylist()
    assert released["etl_parked_fact_sales_order"].num_rows == 0
    marks = read_tables(targets.settings, ["dim_design"])["dim_design"].to_pylist()
    marked = {row["design_id"] for row in marks if row["source_deleted_at"] is not None}
    assert gone in marked
    assert design not in marked  # it came back after its deletion

    # Every processed manifest delivered again, after the idempotency records expired: both
    # targets acknowledge from their ledgers; not one Iceberg table gains a snapshot.
    before = targets.snapshots()
    assert targets.ledger() == {
        key.removeprefix(MANIFEST_PREFIX).removesuffix(".json")
        for key in chain.processed.manifest_keys()
    }
    ddb = client("dynamodb", chain.endpoint_url)
    for item in ddb.scan(TableName=chain.names.idempotency_table)["Items"]:
        ddb.delete_item(TableName=chain.names.idempotency_table, Key={"id": item["id"]})
    chaos["on"] = False
    for key in chain.processed.manifest_keys():
        chain.processed.put_bytes(key, chain.processed.get_bytes(key), "application/json")
    again = chain.drain()

    assert again.ok, again.format()
    assert targets.snapshots() == before
    assert targets.differences() == {}


def test_a_crash_between_the_data_files_and_the_commit_changes_nothing_the_next_delivery_completes(
    generated_source, make_chain, pg_connect, monkeypatch
):
    with generated_source("ice-crash", 300, seed=3) as source:
        targets = Targets(make_chain(source, iceberg=True), pg_connect)
        chain = targets.chain
        written = []

        def crash(table: str) -> None:
            if table == "fact_sales_order":
                written.append(table)
                raise SystemError("the function died between writing the files and committing")

        monkeypatch.setattr(commit, "before_commit", crash)

        first = chain.run_cycle()

        # The warehouse loaded the batch; the Iceberg target failed it three times (the retry
        # rule), every time after writing the fact table's files and before committing them.
        assert [f.stage for f in first.failures] == ["iceberg"]
        assert first.stages["load"].batches == first.stages["transform"].batches
        assert len(written) == 3
        (batch,) = first.stages["load"].batches
        facts = targets.catalog.load_table((targets.settings.database, "fact_sales_order"))
        assert facts.current_snapshot() is None  # nothing visible
        data_files = chain.s3.list_objects_v2(
            Bucket=chain.iceberg.bucket,
            Prefix=f"warehouse/{targets.settings.database}/fact_sales_order/data/",
        ).get("Contents", [])
        assert len(data_files) == 3  # one orphan per attempt, referenced by no snapshot
        assert batch not in targets.ledger()
        committed = {
            dim.name: commit.committed_batches(
                targets.catalog.load_table((targets.settings.database, dim.name))
            )
            for dim in DIMENSIONS
        }
        assert all(batches == {batch} for batches in committed.values())
        dimension_snapshots = {dim.name: targets.snapshots()[dim.name] for dim in DIMENSIONS}

        monkeypatch.undo()
        second = chain.run_cycle()  # redrives the failure queue: the next delivery

        assert second.ok, second.format()
        assert second.replayed == 1
        assert batch in targets.ledger()
        assert targets.differences() == {}
        assert {d.name: targets.snapshots()[d.name] for d in DIMENSIONS} == dimension_snapshots


def test_a_failing_warehouse_neither_blocks_nor_rolls_back_the_iceberg_target(
    generated_source, make_chain, pg_connect
):
    def warehouse_down(event, context):
        raise ConnectionError("the warehouse is unreachable")

    with generated_source("ice-indep", 200, seed=5) as source:
        chain = make_chain(source, iceberg=True, handlers={"load": warehouse_down})
        targets = Targets(chain, pg_connect)

        report = chain.run_cycle()

        assert [f.stage for f in report.failures] == ["load"]
        (batch,) = report.stages["transform"].batches
        assert report.stages["iceberg"].batches == [batch]
        assert batch in targets.ledger()
        tables = read_tables(targets.settings, ["fact_sales_order"])
        assert tables["fact_sales_order"].num_rows > 0
