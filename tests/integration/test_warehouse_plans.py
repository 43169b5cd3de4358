"""The join-plan switch the merges share (``totes.warehouse.plans``), against a real
PostgreSQL."""

from __future__ import annotations

import pytest
from pg8000.exceptions import DatabaseError

from totes.warehouse import plans

SETTINGS = "SELECT current_setting('enable_hashjoin'), current_setting('enable_mergejoin')"


def test_a_statement_failing_inside_the_probed_block_raises_its_own_error(warehouse_db, pg_connect):
    """The failure aborts the transaction, whose rollback restores the transaction-local
    settings; restoring them in the aborted transaction would fail and hide the cause."""
    con = pg_connect(warehouse_db)
    con.run("CREATE TEMP TABLE t (v int NOT NULL)")
    con.run("BEGIN")
    with pytest.raises(DatabaseError) as failed, plans.index_probes(con, True):
        con.run("INSERT INTO t VALUES (NULL)")
    assert failed.value.args[0]["C"] == "23502"  # not 25P02, "current transaction is aborted"
    con.run("ROLLBACK")
    assert con.run(SETTINGS) == [["on", "on"]]


def test_a_client_error_inside_the_probed_block_still_restores_the_settings(
    warehouse_db, pg_connect
):
    con = pg_connect(warehouse_db)
    con.run("BEGIN")
    try:
        with pytest.raises(KeyError), plans.index_probes(con, True):
            raise KeyError("not the database's")
        assert con.run(SETTINGS) == [["on", "on"]]
    finally:
        con.run("ROLLBACK")


def test_the_block_restores_the_settings_the_transaction_had_not_the_defaults(
    warehouse_db, pg_connect
):
    """A transaction that had merge joins off (a session or role setting) keeps them off after
    the block, and hash joins on: the saved values come back, whatever they were."""
    con = pg_connect(warehouse_db)
    con.run("SET enable_mergejoin = off")
    con.run("BEGIN")
    try:
        with plans.index_probes(con, True):
            assert con.run(SETTINGS) == [["off", "off"]]
        assert con.run(SETTINGS) == [["on", "off"]]
    finally:
        con.run("ROLLBACK")
