"""TLS on the wire for any database host but a socket or loopback: ``connect`` asks a remote
server for TLS before it sends anything else, refuses a certificate it cannot verify, and
accepts one only when the configuration relaxes verification explicitly.

The server here is a few lines of PostgreSQL wire protocol on a real socket, reached by the
machine's host name (which is not a loopback literal, so it counts as remote): enough to see
what the client sends first and whether it completes the TLS handshake.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from totes.db import DbCredentials, connect
from totes.errors import DatabaseUnavailable

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
STARTUP_V3 = struct.pack("!i", 196608)
HOST = socket.gethostname()
PASSWORD = "tls-test-Pa55-5e1d"


class FakeServer:
    """One connection: record the first packet, answer the TLS request, try the handshake."""

    def __init__(self, answer: bytes, certificate: tuple[Path, Path] | None = None):
        self.answer = answer
        self.certificate = certificate
        self.first_packet = b""
        self.handshake: str | None = None
        self.listener = socket.create_server(("", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(2)
            self.first_packet = conn.recv(8)
            conn.sendall(self.answer)
            if self.answer != b"S":
                return
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.certificate)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(8)  # the start-up message, now encrypted
                    self.handshake = "completed"
            except (ssl.SSLError, OSError) as exc:
                self.handshake = f"refused by the client: {exc}"

    def creds(self, **query: str) -> DbCredentials:
        suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        return DbCredentials.from_url(f"postgresql://u:{PASSWORD}@{HOST}:{self.port}/db{suffix}")

    def close(self) -> None:
        self.thread.join(timeout=10)
        self.listener.close()


@pytest.fixture
def self_signed(tmp_path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={HOST}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_a_remote_host_is_asked_for_tls_before_anything_else_and_a_refusal_fails():
    server = FakeServer(b"N")
    try:
        with pytest.raises(DatabaseUnavailable, match=f"{HOST}.*refuses SSL"):
            connect(server.creds(), timeout=5)
    finally:
        server.close()
    assert server.first_packet == SSL_REQUEST


@pytest.mark.parametrize(
    ("host", "query"), [("127.0.0.1", ""), (HOST, "?sslmode=disable")], ids=["loopback", "disabled"]
)
def test_loopback_or_an_explicit_disable_asks_for_no_tls(host, query):
    server = FakeServer(b"")  # reads the first packet and hangs up
    creds = DbCredentials.from_url(f"postgresql://u:{PASSWORD}@{host}:{server.port}/db{query}")
    try:
        with pytest.raises(DatabaseUnavailable):
            connect(creds, timeout=5)
    finally:
        server.close()
    assert server.first_packet[4:8] == STARTUP_V3  # the start-up message, no SSLRequest


def test_an_unverifiable_certificate_is_refused(self_signed):
    server = FakeServer(b"S", self_signed)
    try:
        with pytest.raises(DatabaseUnavailable) as refused:
            connect(server.creds(), timeout=5)
    finally:
        server.close()
    assert server.first_packet == SSL_REQUEST
    assert str(server.handshake).startswith("refused by the client")
    assert PASSWORD not in str(refused.value)


def test_verification_is_relaxed_only_when_the_configuration_says_so(self_signed):
    server = FakeServer(b"S", self_signed)
    try:
        with pytest.raises(DatabaseUnavailable):  # the fake server ends after the handshake
            connect(server.creds(sslmode="require"), timeout=5)
    finally:
        server.close()
    assert (server.first_packet, server.handshake) == (SSL_REQUEST, "completed")


def test_the_named_ca_bundle_verifies_the_certificate(self_signed):
    cert, _ = self_signed
    server = FakeServer(b"S", self_signed)
    try:
        with pytest.raises(DatabaseUnavailable):
            connect(server.creds(sslrootcert=str(cert)), timeout=5)
    finally:
        server.close()
    assert (server.first_packet, server.handshake) == (SSL_REQUEST, "completed")
