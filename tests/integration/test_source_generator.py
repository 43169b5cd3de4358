"""Generating into PostgreSQL: same seed, same database (by content checksum), every foreign
key holds, sequences continue after the generated ids, and a non-empty target is refused."""

from __future__ import annotations

import pytest

from totes_tools.source.ddl import TargetNotEmpty
from totes_tools.source.generator import content_checksum, generate


def test_same_seed_gives_the_same_database_and_another_seed_does_not(fresh_db, pg_connect):
    a, b, c = (pg_connect(fresh_db("gen")) for _ in range(3))
    counts = generate(a, 1_500, seed=3)
    assert generate(b, 1_500, seed=3) == counts
    generate(c, 1_500, seed=4)
    assert content_checksum(a) == content_checksum(b)
    differing = {t for t, s in content_checksum(a).items() if content_checksum(c)[t] != s}
    assert {"sales_order", "purchase_order", "payment", "design"} <= differing


def test_generated_database_has_its_foreign_keys_and_ready_sequences(source_db, pg_connect):
    con = pg_connect(source_db)
    counts = generate(con, 800)
    fks = con.run("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated")
    assert fks == [[17]]
    new_order = con.run(
        "INSERT INTO sales_order (design_id, staff_id, counterparty_id, units_sold, unit_price, "
        "currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id, "
        "last_updated) VALUES (1, 1, 1, 1000, 2.5, 1, '2024-11-20', '2024-11-21', 1, now()) "
        "RETURNING sales_order_id"
    )
    assert new_order == [[counts["sales_order"] + 1]]


def test_generating_into_a_non_empty_database_is_refused(source_db, pg_connect):
    con = pg_connect(source_db)
    con.run("CREATE TABLE keep_me (x int)")
    with pytest.raises(TargetNotEmpty, match=r"is not empty \(1 table\(s\): public.keep_me\)"):
        generate(con, 100)
    assert con.run(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'address'"
    ) == [[0]]
