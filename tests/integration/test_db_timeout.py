"""``set_socket_timeout`` reaches into pg8000 (its private ``_usock``): a pg8000 upgrade that
renames or drops it must fail these tests, not leave load statements silently bound by the
connect timeout."""

from __future__ import annotations

import pytest
from pg8000.exceptions import InterfaceError

from totes.db import connect, set_socket_timeout


def test_a_shorter_timeout_really_applies_to_the_next_statement(warehouse_db):
    con = connect(warehouse_db, timeout=30)
    try:
        set_socket_timeout(con, 0.2)
        with pytest.raises((InterfaceError, TimeoutError)):
            con.run("SELECT pg_sleep(5)")
    finally:
        con.close()


def test_a_longer_timeout_lets_a_statement_outlast_the_connect_timeout(warehouse_db):
    con = connect(warehouse_db, timeout=0.5)
    try:
        set_socket_timeout(con, 30)
        assert con.run("SELECT pg_sleep(1.5), 1") == [["", 1]]
    finally:
        con.close()


def test_a_connection_without_the_private_socket_fails_loudly():
    class Upgraded:
        """What a pg8000 that renamed its socket attribute would look like here."""

    with pytest.raises(RuntimeError, match="no socket at _usock"):
        set_socket_timeout(Upgraded(), 5)
