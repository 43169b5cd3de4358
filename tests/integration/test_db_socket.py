"""``totes.db.connect`` sets ``TCP_NODELAY`` on TCP connections (pg8000 does not): without it
every ``COPY ... FROM STDIN`` waits about 40 ms for a delayed ACK (Nagle), eleven times per load
batch. The embedded server listens on a Unix socket only, so the plaintext case goes through a
loopback TCP relay to it; the TLS case uses ``tls_postgres`` (skipped without an OpenSSL build).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from tls_postgres import Pki, tls_postgres

from totes.db import DbCredentials, connect


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def tcp_relay(unix_path: str) -> Iterator[int]:
    """A loopback TCP port relaying each connection to the server's Unix socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    opened: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.socket(socket.AF_UNIX)
                server.connect(unix_path)
                opened.extend((client, server))
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for sock in opened:
            sock.close()


def no_delay(con) -> bool:
    return bool(con._usock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_a_tcp_connection_sends_without_nagle_delay(warehouse_db):
    assert warehouse_db.unix_socket_dir, "the embedded server is reached by its Unix socket"
    unix_path = os.path.join(warehouse_db.unix_socket_dir, f".s.PGSQL.{warehouse_db.port}")
    with tcp_relay(unix_path) as port:
        creds = DbCredentials.from_url(
            f"postgresql://{warehouse_db.user}@127.0.0.1:{port}/{warehouse_db.dbname}"
        )
        con = connect(creds, timeout=10)
        try:
            assert con._usock.family == socket.AF_INET
            assert no_delay(con)
            con.run("CREATE TEMP TABLE one (x int)")
            started = time.perf_counter()
            for _ in range(5):
                con.run("COPY one FROM STDIN", stream=[b"1\n"])
            # Reported, not asserted (wall-clock): ~40 ms per COPY when Nagle is on.
            print(f"COPY of 1 row over TCP: {(time.perf_counter() - started) / 5 * 1000:.1f} ms")
        finally:
            con.close()


def test_a_unix_socket_connection_is_left_alone(warehouse_db, monkeypatch):
    """No Nagle option, and no TLS attempt: pg8000 left to itself builds a default SSL context
    (the system's CA store) and asks the server for TLS on every connection, a Unix socket's
    included, which the server always refuses there."""
    import ssl

    contexts: list[object] = []
    real = ssl.create_default_context

    def counted(*args, **kwargs):
        contexts.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    con = connect(warehouse_db, timeout=10)
    try:
        assert con._usock.family == socket.AF_UNIX
        assert contexts == []
    finally:
        con.close()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    pki = Pki.make(tmp_path_factory.mktemp("nodelay-pki"), key_usage=True, names=("localhost",))
    with tls_postgres(pki) as running:
        yield running


def test_a_tls_connection_sends_without_nagle_delay(tls_server):
    con = connect(tls_server.creds("localhost", sslmode="require"), timeout=10)
    try:
        [[tls]] = con.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert tls is True
        assert no_delay(con)
    finally:
        con.close()
