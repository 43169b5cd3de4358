"""``python -m totes warehouse verify`` and ``warehouse rebuild`` (issue 12, item 8) over a
warehouse the local chain built: several batches, fact history from live activity, a key
deleted at the source (a tombstone and marks).

Verify exits 0 on the quiet warehouse and 1 once a BI user deleted a fact row and edited a
dimension value, naming exactly those tables and keys (never a value); a rebuild from the
processed lake into a fresh database gives the same warehouse, row for row (checksums of every
table, lineage included), and verifies clean.
"""

from __future__ import annotations

import pytest

from totes.db import connect
from totes.star.model import STAR_TABLES
from totes_tools import cli
from totes_tools.source.generator import generate
from totes_tools.source.simulator import Simulator
from totes_tools.warehouse.checksums import table_checksums
from totes_tools.warehouse.rebuild import COUNTS
from totes_tools.warehouse.verify import verify

SMALL_BATCHES = {"INGEST_MAX_BATCH_ROWS": "400"}


@pytest.fixture
def built(make_chain, fresh_db):
    """A chain's warehouse after two cycles: the initial load in several batches, then live
    activity (new versions) and a design deleted at the source."""
    source = fresh_db("src")
    src = connect(source)
    generate(src, 300, seed=21)
    chain = make_chain(source, env=SMALL_BATCHES)
    [[design]] = src.run(
        "INSERT INTO design (design_name, file_location, file_name, created_at, last_updated)"
        " VALUES ('Unused', '/d', 'd.json', localtimestamp, localtimestamp) RETURNING design_id"
    )
    first = chain.run_cycle()
    assert first.ok, first.format()
    src.run("DELETE FROM design WHERE design_id = :d", d=design)
    simulator = Simulator(src, seed=4)
    for _ in range(5):
        simulator.step()
    src.run(  # new versions of two orders: the old ones stay as history
        "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = localtimestamp"
        " WHERE sales_order_id IN (1, 2)"
    )
    second = chain.run_cycle()
    assert second.ok, second.format()
    assert len(chain.processed.manifest_keys()) > 3
    yield chain, src, design
    src.close()


def totes(capsys, *args: str) -> tuple[int, list[str], str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def differences(lines: list[str]) -> list[str]:
    start = lines.index("differences (table, key):")
    return [line for line in lines[start + 1 :] if line.startswith("  ")]


def test_verify_names_a_deleted_fact_and_an_edited_dimension_and_a_rebuild_from_the_lake_heals(
    built, fresh_db, capsys
):
    chain, src, design = built
    source_url, warehouse_url = chain.source.to_url(), chain.warehouse.to_url()
    wh = connect(chain.warehouse)
    assert wh.run(
        "SELECT source_deleted_at IS NOT NULL FROM dim_design WHERE design_id = :d", d=design
    ) == [[True]]
    [[history]] = wh.run("SELECT count(*) - count(DISTINCT sales_order_id) FROM fact_sales_order")
    assert history > 0  # older versions are in the warehouse, allowed as history
    before = table_checksums(wh)

    code, quiet, _ = totes(capsys, "warehouse", "verify", "--source-url", source_url,
                           "--warehouse-url", warehouse_url)  # fmt: skip

    assert code == 0, "\n".join(quiet)
    assert quiet[-1].startswith("result: the warehouse matches the source; ")
    assert "differences (table, key):" not in quiet
    rows = {line.split()[0]: line.split()[1:] for line in quiet[2:13]}
    assert list(rows) == [t.name for t in STAR_TABLES]
    # Equal digests everywhere, history included: nothing was re-read row by row.
    assert {name: int(r[-2]) for name, r in rows.items()} == dict.fromkeys(rows, 0)
    [[orders]] = src.run("SELECT count(*) FROM sales_order")
    assert rows["fact_sales_order"][:2] == [str(orders)] * 2  # source rows, live current versions

    # A BI user deletes a fact row (an order's current version) and edits a dimension value.
    [[order, secret_price]] = wh.run(
        "SELECT sales_order_id, unit_price FROM fact_sales_order"
        " ORDER BY capture_seq DESC, sales_order_id LIMIT 1"
    )
    wh.run(
        "DELETE FROM fact_sales_order WHERE sales_order_id = :o AND capture_seq ="
        " (SELECT max(capture_seq) FROM fact_sales_order WHERE sales_order_id = :o)",
        o=order,
    )
    wh.run(
        "UPDATE dim_counterparty SET counterparty_legal_name = 'Edited by hand'"
        " WHERE counterparty_id = 3"
    )

    code, damaged, _ = totes(capsys, "warehouse", "verify", "--source-url", source_url,
                             "--warehouse-url", warehouse_url)  # fmt: skip

    assert code == 1
    assert differences(damaged) == [
        "  dim_counterparty key 3: differs in counterparty_legal_name",
        f"  fact_sales_order key {order}: current version missing",
    ]
    assert damaged[-1].startswith("result: 2 difference(s) in 2 table(s); ")
    text = "\n".join(damaged)
    assert "Edited by hand" not in text  # no values shown
    assert f" {secret_price}" not in text

    # Rebuild from the processed lake into a fresh database, without the source.
    fresh = fresh_db("rebuilt")
    lake = ["--endpoint-url", chain.endpoint_url, "--bucket", chain.names.processed_bucket]
    manifests = len(chain.processed.manifest_keys())

    code, rebuilt, _ = totes(capsys, "warehouse", "rebuild", "--warehouse-url", fresh.to_url(),
                             *lake)  # fmt: skip

    assert code == 0, "\n".join(rebuilt)
    bucket = chain.names.processed_bucket
    assert rebuilt[:2] == [
        f"rebuilding {fresh.where} from the processed lake s3://{bucket}",
        f"{manifests} processed manifest(s) in s3://{bucket}, 0 in the ledger",
    ]
    summary = next(i for i, line in enumerate(rebuilt) if "batch(es) loaded" in line)
    assert rebuilt[summary].startswith(
        f"{manifests} batch(es) loaded, 0 already in the ledger, 0 failed,"
        f" of {manifests} processed manifest(s); "
    )
    assert rebuilt[summary + 1].split() == ["table", *COUNTS]
    counts = {line.split()[0]: line.split()[1:] for line in rebuilt[summary + 2 :]}
    assert list(counts) == [t.name for t in STAR_TABLES]
    [[facts]] = wh.run("SELECT count(*) FROM fact_sales_order")
    assert int(counts["fact_sales_order"][0]) == facts + 1  # inserted: the row deleted by hand too
    assert int(counts["dim_design"][COUNTS.index("marked")]) == 1  # the design deleted at source
    con = connect(fresh)
    try:
        assert table_checksums(con) == before
        assert con.run("SELECT batch_id FROM etl_batch_ledger ORDER BY 1") == wh.run(
            "SELECT batch_id FROM etl_batch_ledger ORDER BY 1"
        )
    finally:
        con.close()
    wh.close()
    code, healed, _ = totes(capsys, "warehouse", "verify", "--source-url", source_url,
                            "--warehouse-url", fresh.to_url())  # fmt: skip
    assert code == 0, "\n".join(healed)

    # A rebuild never writes over a warehouse holding data; --resume continues one.
    code, _, err = totes(capsys, "warehouse", "rebuild", "--warehouse-url", fresh.to_url(), *lake)
    assert code == 2
    assert "the warehouse already holds data" in err
    code, resumed, _ = totes(capsys, "warehouse", "rebuild", "--warehouse-url", fresh.to_url(),
                             "--resume", *lake)  # fmt: skip
    assert code == 0
    assert resumed[-1].startswith(
        f"0 batch(es) loaded, {manifests} already in the ledger, 0 failed,"
        f" of {manifests} processed manifest(s);"
    )


def test_verify_names_every_kind_of_difference_and_notes_rows_the_star_cannot_hold(built):
    chain, src, _ = built
    wh = connect(chain.warehouse)
    # Warehouse side: a live dimension row marked, a calendar row with a wrong day name.
    wh.run("UPDATE dim_staff SET source_deleted_at = localtimestamp WHERE staff_id = 2")
    [[day]] = wh.run("SELECT min(date_id) FROM dim_date")
    wh.run(
        "UPDATE dim_date SET day_name = 'Funday', quarter = quarter % 4 + 1 WHERE date_id = :d",
        d=day,
    )
    # Source side, not yet carried by a cycle: a key deleted (the warehouse has not marked it),
    # a new payment type, and a sales order the star cannot hold (set aside, not compared).
    [[payment]] = src.run("SELECT max(payment_id) FROM payment")
    src.run("DELETE FROM payment WHERE payment_id = :p", p=payment)
    [[new_type]] = src.run(
        "INSERT INTO payment_type (payment_type_name, created_at, last_updated)"
        " VALUES ('SALES_RECEIPT', localtimestamp, localtimestamp) RETURNING payment_type_id"
    )
    src.run("UPDATE sales_order SET created_at = 'infinity' WHERE sales_order_id = 5")
    # The edge of what verify can see: an older version (history) of order 1 edited by hand.
    # The source keeps only current rows, so this is not a difference (README, known limits).
    wh.run(
        "UPDATE fact_sales_order SET units_sold = units_sold + 100 WHERE sales_order_id = 1"
        " AND capture_seq = (SELECT min(capture_seq) FROM fact_sales_order"
        " WHERE sales_order_id = 1)"
    )
    assert wh.run("SELECT count(*) FROM fact_sales_order WHERE sales_order_id = 1") == [[2]]
    # Other orders' current versions deleted by hand, more than --show names.
    gone = [r[0] for r in wh.run("SELECT DISTINCT sales_order_id FROM fact_sales_order"
                                 " WHERE sales_order_id BETWEEN 100 AND 103")]  # fmt: skip
    wh.run("DELETE FROM fact_sales_order WHERE sales_order_id BETWEEN 100 AND 103")

    verdict = verify(connect(chain.source), wh, range_keys=64, show=2)
    lines = verdict.format().splitlines()

    diff_start = lines.index("differences (table, key):") + 1
    notes_start = lines.index("not compared (not differences):")
    assert lines[diff_start:notes_start] == [
        f"  dim_date key {day.isoformat()}: calendar attributes wrong in day_name, quarter",
        "  dim_staff key 2: marked deleted, but present at the source",
        f"  dim_payment_type key {new_type}: missing",
        f"  fact_sales_order key {gone[0]}: current version missing",
        f"  fact_sales_order key {gone[1]}: current version missing",
        "  fact_sales_order: ... and 2 more current version missing",
        f"  fact_payment key {payment}: absent at the source, but not marked deleted",
    ]
    assert lines[notes_start + 1 :] == [
        "  fact_sales_order key 5: refers to a dimension row set aside at the source,"
        " or is set aside itself",
        lines[-1],
    ]
    assert lines[-1].startswith("result: 8 difference(s) in 5 table(s); ")
    by_table = {t.table: t for t in verdict.tables}
    assert (by_table["fact_sales_order"].ranges, by_table["fact_sales_order"].reread) == (5, 2)
    wh.close()


def test_rebuild_and_verify_work_in_a_schema_other_than_public(built, fresh_db, capsys):
    """A warehouse kept in its own schema (the load's WAREHOUSE_SCHEMA): rebuild builds there
    and nowhere else, and verify reads there (with no --schema it finds no warehouse)."""
    chain, _, _ = built
    fresh = fresh_db("in_schema")
    owner = connect(fresh)
    owner.run("CREATE SCHEMA analytics")
    lake = ["--endpoint-url", chain.endpoint_url, "--bucket", chain.names.processed_bucket]

    code, rebuilt, _ = totes(capsys, "warehouse", "rebuild", "--warehouse-url", fresh.to_url(),
                             "--schema", "analytics", *lake)  # fmt: skip

    assert code == 0, "\n".join(rebuilt)
    assert rebuilt[0].startswith(f"rebuilding {fresh.where} (schema analytics) from ")
    listing = (
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema IN ('public', 'analytics') ORDER BY 2"
    )
    in_schema = connect(fresh, search_path="analytics")
    wh = connect(chain.warehouse)
    try:  # the chain's warehouse (in public) table for table, and nothing built in public
        built_tables = owner.run(listing)
        assert {s for s, _ in built_tables} == {"analytics"}
        assert [t for _, t in built_tables] == [t for _, t in wh.run(listing)]
        assert table_checksums(in_schema) == table_checksums(wh)
    finally:
        in_schema.close()
        wh.close()
        owner.close()
    urls = ["--source-url", chain.source.to_url(), "--warehouse-url", fresh.to_url()]
    code, out, _ = totes(capsys, "warehouse", "verify", *urls, "--schema", "analytics")
    assert code == 0, "\n".join(out)
    assert out[0].startswith(f"verifying the warehouse {fresh.where} (schema analytics) against")
    code, _, err = totes(capsys, "warehouse", "verify", *urls)  # public holds no warehouse
    assert code == 2
    assert "has no schema_migrations table" in err
