# ruff: noqa: S608  (SQL below names tables of the model only)
"""Issue 12's table, row by row, through the whole local chain (ingest -> transform -> load)
against the real embedded PostgreSQL: nothing lost outside the happy path. Each test would fail
on the window-watermark design (and says how); here every cycle succeeds and the warehouse's
live picture equals the source.

A generated source per test (they write to it); the warehouse is compared with SQL over the
source (``e2e_reference``), the live picture being ``source_deleted_at IS NULL``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from e2e_reference import expected_warehouse, source_state, warehouse_problems

from totes.db import connect
from totes.identifiers import quote
from totes.lake import STATE_KEY, manifest_key
from totes_tools.repository import repository_root
from totes_tools.source.generator import generate


@pytest.fixture
def source(fresh_db):
    creds = fresh_db("src")
    con = connect(creds)
    try:
        generate(con, 300, seed=5)
    finally:
        con.close()
    return creds


class Run:
    """A chain over ``source`` and the source states it saw, cycle by cycle."""

    def __init__(self, chain, source):
        self.chain = chain
        self.src = connect(source)
        self.states = []

    def cycle(self):
        report = self.chain.run_cycle()
        assert report.ok, report.format()
        self.states.append(source_state(self.src))
        return report

    def problems(self) -> list[str]:
        wh = connect(self.chain.warehouse)
        try:
            return warehouse_problems(self.src, wh, expected_warehouse(*self.states), live=True)
        finally:
            wh.close()

    def warehouse(self, sql: str, **params):
        wh = connect(self.chain.warehouse)
        try:
            return wh.run(sql, **params)
        finally:
            wh.close()


@pytest.fixture
def run(make_chain, source):
    r = Run(make_chain(source), source)
    r.cycle()
    yield r
    r.src.close()


NEW_ORDER = (
    "INSERT INTO sales_order (design_id, staff_id, counterparty_id, units_sold, unit_price,"
    " currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id,"
    " created_at, last_updated) VALUES (1, 1, 1, 1000, 2.5, 1, '2024-12-01', '2024-12-02', 1,"
    " {stamp}, {stamp}) RETURNING sales_order_id"
)


def test_a_transaction_open_across_cycles_arrives_in_the_first_cycle_after_it_commits(run):
    # Its rows are stamped 11 minutes back, as a transaction open that long stamps them: a
    # window watermark (lag 2 s + overlap 600 s) has moved past them by the time they commit.
    long = connect(run.chain.source)
    long.run("BEGIN")
    [[order]] = long.run(NEW_ORDER.format(stamp="localtimestamp - interval '11 minutes'"))
    long.run(
        "UPDATE payment SET paid = NOT paid,"
        " last_updated = localtimestamp - interval '11 minutes' WHERE payment_id = 3"
    )
    long.run("SAVEPOINT inner_work")  # a subtransaction: its id is listed in no snapshot
    long.run("UPDATE design SET design_name = 'Linen' WHERE design_id = 2")
    long.run("RELEASE SAVEPOINT inner_work")
    for _ in range(3):
        run.src.run(NEW_ORDER.format(stamp="localtimestamp"))  # other commits move on
        run.cycle()
    long.run("COMMIT")
    long.close()

    run.cycle()

    assert run.problems() == []
    assert run.warehouse("SELECT count(*) FROM fact_sales_order WHERE sales_order_id = :o", o=order)
    assert run.warehouse("SELECT design_name FROM dim_design WHERE design_id = 2") == [["Linen"]]


def test_a_source_time_zone_change_and_back_loses_nothing(run):
    db = quote(run.chain.source.dbname)
    run.src.run(f"ALTER DATABASE {db} SET timezone = 'Pacific/Kiritimati'")  # UTC+14
    ahead = connect(run.chain.source)
    ahead.run(NEW_ORDER.format(stamp="localtimestamp"))
    ahead.close()
    run.cycle()
    run.src.run(f"ALTER DATABASE {db} SET timezone = 'UTC'")
    back = connect(run.chain.source)  # stamps 14 hours below the rows just loaded
    back.run(NEW_ORDER.format(stamp="localtimestamp"))
    back.run(
        "UPDATE payment SET paid = NOT paid, last_updated = localtimestamp WHERE payment_id = 5"
    )
    back.close()

    run.cycle()

    assert run.problems() == []


def test_a_future_stamped_dimension_row_arrives_at_once_and_its_correction_wins(run):
    run.src.run(
        "UPDATE design SET design_name = 'Future', last_updated = localtimestamp"
        " + interval '1 day' WHERE design_id = 4"
    )
    run.cycle()  # a window watermark would wait a day for this version
    future = run.warehouse("SELECT design_name FROM dim_design WHERE design_id = 4")
    run.src.run(
        "UPDATE design SET design_name = 'Corrected', last_updated = localtimestamp"
        " WHERE design_id = 4"
    )  # stamped a day before the version it replaces

    run.cycle()

    assert future == [["Future"]]
    assert run.warehouse("SELECT design_name FROM dim_design WHERE design_id = 4") == [
        ["Corrected"]
    ]
    assert run.problems() == []


def quarantined_rows(chain) -> list[dict]:
    out = []
    for key in chain.raw.keys("quarantine/rows/"):
        body = chain.raw.get_bytes(key).decode()
        out += [json.loads(line) for line in body.splitlines() if line.strip()]
    return out


def test_rows_the_star_cannot_hold_are_set_aside_alone_and_arrive_once_fixed(run):
    src = run.src
    src.run("UPDATE sales_order SET created_at = 'infinity' WHERE sales_order_id = 1")
    src.run("UPDATE payment SET last_updated = '10000-01-01 00:00' WHERE payment_id = 2")
    src.run("ALTER TABLE sales_order ALTER COLUMN units_sold DROP NOT NULL")
    src.run(
        "UPDATE sales_order SET units_sold = NULL, last_updated = localtimestamp"
        " WHERE sales_order_id = 3"
    )
    [[good]] = src.run(NEW_ORDER.format(stamp="localtimestamp"))
    src.run(
        "UPDATE design SET design_name = 'Hemp', last_updated = localtimestamp WHERE design_id = 1"
    )

    report = run.chain.run_cycle()  # a window watermark failed every cycle for every table

    assert report.ok, report.format()
    aside = {(r["table"], r["key"], r["column"]) for r in quarantined_rows(run.chain)}
    assert aside == {
        ("sales_order", 1, "created_at"),
        ("payment", 2, "last_updated"),
        ("sales_order", 3, "units_sold"),
    }
    assert run.warehouse("SELECT count(*) FROM fact_sales_order WHERE sales_order_id = :g", g=good)
    assert run.warehouse("SELECT design_name FROM dim_design WHERE design_id = 1") == [["Hemp"]]

    src.run(
        "UPDATE sales_order SET created_at = localtimestamp, units_sold = 1000,"
        " last_updated = localtimestamp WHERE sales_order_id IN (1, 3)"
    )
    src.run("UPDATE payment SET last_updated = localtimestamp WHERE payment_id = 2")
    run.cycle()

    for order in (1, 3):
        [[stored]] = run.warehouse(
            "SELECT count(*) FROM fact_sales_order WHERE sales_order_id = :o"
            " AND last_updated_date = CURRENT_DATE",
            o=order,
        )
        assert stored == 1


def test_a_malformed_text_date_sets_aside_only_its_row(run):
    run.src.run(
        "UPDATE sales_order SET agreed_delivery_date = 'not-a-date',"
        " last_updated = localtimestamp WHERE sales_order_id = 7"
    )
    run.src.run(
        "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = localtimestamp"
        " WHERE sales_order_id = 8"
    )
    run.src.run(
        "UPDATE payment SET paid = NOT paid, last_updated = localtimestamp WHERE payment_id = 9"
    )

    report = run.chain.run_cycle()

    assert report.ok, report.format()
    assert [(r["table"], r["key"], r["column"]) for r in quarantined_rows(run.chain)] == [
        ("sales_order", 7, "agreed_delivery_date")
    ]
    versions = run.warehouse(
        "SELECT count(*) FROM fact_sales_order WHERE sales_order_id = 8"
    )  # the other order of the same batch arrived
    assert versions[0][0] >= 2
    run.src.run(
        "UPDATE sales_order SET agreed_delivery_date = '2025-01-31',"
        " last_updated = localtimestamp WHERE sales_order_id = 7"
    )
    run.cycle()
    assert run.warehouse(
        "SELECT count(*) FROM fact_sales_order WHERE sales_order_id = 7"
        " AND agreed_delivery_date = DATE '2025-01-31'"
    ) == [[1]]
    assert run.problems() == []


def test_a_3mb_text_value_arrives_intact(run):
    big = ('a "tote", with\nnewlines ' * 150_000)[: 3 * 2**20]
    run.src.run(
        "UPDATE design SET file_location = :v, last_updated = localtimestamp WHERE design_id = 3",
        v=big,
    )

    run.cycle()

    [[stored]] = run.warehouse("SELECT file_location FROM dim_design WHERE design_id = 3")
    assert stored == big


def test_hard_deletes_are_marked_and_the_set_null_cascade_arrives(run):
    src = run.src
    # A design no order uses and an order with a transaction but no payment yet: the source's
    # RESTRICT keys let exactly such rows be deleted.
    [[design]] = src.run(
        "INSERT INTO design (design_name, file_location, file_name, created_at, last_updated)"
        " VALUES ('Unused', '/d', 'd.json', localtimestamp, localtimestamp) RETURNING design_id"
    )
    [[order]] = src.run(NEW_ORDER.format(stamp="localtimestamp"))
    [[transaction]] = src.run(
        "INSERT INTO transaction (transaction_type, sales_order_id, created_at, last_updated)"
        " VALUES ('SALE', :o, localtimestamp, localtimestamp) RETURNING transaction_id",
        o=order,
    )
    run.cycle()
    [[payment]] = src.run("SELECT max(payment_id) FROM payment")
    src.run("DELETE FROM design WHERE design_id = :d", d=design)
    src.run("DELETE FROM payment WHERE payment_id = :p", p=payment)
    src.run("DELETE FROM sales_order WHERE sales_order_id = :o", o=order)

    run.cycle()

    def marked(table, key_column, key):
        return run.warehouse(
            f"SELECT bool_and(source_deleted_at IS NOT NULL), count(*) FROM {table}"
            f" WHERE {key_column} = :k",
            k=key,
        )[0]

    assert marked("dim_design", "design_id", design) == [True, 1]
    assert marked("fact_payment", "payment_id", payment)[0] is True
    assert marked("fact_sales_order", "sales_order_id", order)[0] is True
    assert run.warehouse(
        "SELECT sales_order_id FROM dim_transaction WHERE transaction_id = :t", t=transaction
    ) == [[None]]  # ON DELETE SET NULL kept the transaction's stamp
    assert run.problems() == []

    src.run(
        "INSERT INTO design (design_id, design_name, file_location, file_name, created_at,"
        " last_updated) VALUES (:d, 'Back', '/x', 'x.json', localtimestamp, localtimestamp)",
        d=design,
    )
    run.cycle()
    assert marked("dim_design", "design_id", design) == [False, 1]
    assert run.problems() == []


def test_a_corrupt_newest_manifest_and_a_lost_one_do_not_stop_later_cycles(run):
    chain = run.chain
    newest = chain.raw.latest_manifest()
    chain.raw.put_bytes(STATE_KEY, b"{damaged", "application/json")
    chain.raw.put_bytes(manifest_key(newest.batch_id), b"\x00not json", "application/json")
    run.src.run(NEW_ORDER.format(stamp="localtimestamp"))
    chain.drain()  # the corrupt manifest's notification reaches transform, which sets it aside
    run.cycle()
    assert run.problems() == []

    run.src.run(NEW_ORDER.format(stamp="localtimestamp"))
    chain.ingest()
    lost = chain.raw.latest_manifest()
    chain.s3.delete_object(Bucket=chain.names.raw_bucket, Key=manifest_key(lost.batch_id))
    report = chain.drain()
    assert report.ok, report.format()  # reported once, not retried onto the failure queue
    run.src.run(NEW_ORDER.format(stamp="localtimestamp"))
    run.cycle()
    run.cycle()
    assert chain.failures() == []


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "1e12", "99999999999", "0.5"])
def test_bad_batch_options_are_refused_at_the_command_line_naming_the_option(value):
    root = repository_root()
    result = subprocess.run(
        [
            sys.executable, "-m", "totes", "run", "--source-url", "postgresql://u@h/db",
            "--warehouse-url", "postgresql://u@h/db", "--max-batch-rows", value,
        ],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
        check=False,
    )  # fmt: skip

    assert result.returncode == 2
    assert "argument --max-batch-rows: must be a whole number from 1 to 50,000,000" in result.stderr
