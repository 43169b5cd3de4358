"""TLS against a real PostgreSQL (``tls_postgres``): what ``sslmode`` does on loopback, and how
a private CA is verified on every Python.

Loopback (issue 14, L1): an SSM or SSH port forward to RDS is a loopback host, so an explicit
``sslmode`` must hold there too; only without one does loopback mean plaintext. The server says
which it got (``pg_stat_ssl`` of the session itself).

Private CAs (issue 14, P1): Python 3.13, the Lambda runtime, verifies with
``VERIFY_X509_STRICT`` by default and refuses a CA without the keyUsage extension, which is
what PostgreSQL's own certificate recipe makes; 3.11 accepted it. Now both behave the same: a
CA the configuration names (``sslrootcert``) verifies with or without keyUsage, and the system
store stays strict. These reach the server by the machine's host name (``HOST``: remote to the
client, so verify-full by default), as a deployed stage reaches its database.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from tls_postgres import HOST, Pki, tls_postgres

from totes.db import DbCredentials, connect
from totes.errors import AuthenticationFailed, DatabaseUnavailable
from totes.extract import adbc


@pytest.fixture(scope="module")
def legacy_pki(tmp_path_factory) -> Pki:
    """PostgreSQL's recipe: a root CA without keyUsage, a server certificate for HOST."""
    return Pki.make(tmp_path_factory.mktemp("legacy-pki"), key_usage=False)


@pytest.fixture(scope="module")
def compliant_pki(tmp_path_factory) -> Pki:
    """A root CA with keyUsage, a server certificate for HOST and localhost."""
    return Pki.make(
        tmp_path_factory.mktemp("compliant-pki"), key_usage=True, names=(HOST, "localhost")
    )


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory) -> Pki:
    """A CA that did not sign either server's certificate."""
    return Pki.make(tmp_path_factory.mktemp("other-pki"), key_usage=True, ca_name="someone-else")


@pytest.fixture(scope="module")
def legacy_server(legacy_pki):
    with tls_postgres(legacy_pki) as running:
        yield running


@pytest.fixture(scope="module")
def compliant_server(compliant_pki):
    with tls_postgres(compliant_pki) as running:
        yield running


def session_tls(creds: DbCredentials) -> bool:
    """Whether the server sees this connection's session as TLS."""
    con = connect(creds, timeout=10)
    try:
        [[ssl]] = con.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        return bool(ssl)
    finally:
        con.close()


# ------------------------------------------------------------------ L1: sslmode on loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_without_sslmode_is_plaintext(compliant_server, host):
    assert session_tls(compliant_server.creds(host)) is False


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_with_an_explicit_disable_is_plaintext(compliant_server, host):
    assert session_tls(compliant_server.creds(host, sslmode="disable")) is False


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_with_sslmode_require_uses_tls(compliant_server, host):
    assert session_tls(compliant_server.creds(host, sslmode="require")) is True


def test_loopback_with_sslmode_verify_full_verifies_the_server(compliant_server, compliant_pki):
    """What a port-forwarding operator writes in the secret: host localhost, the CA as PEM."""
    secret = compliant_server.secret(
        "localhost", sslmode="verify-full", sslrootcert=compliant_pki.root_pem
    )
    assert session_tls(DbCredentials.from_secret(secret)) is True


def test_loopback_with_sslmode_verify_full_refuses_another_ca(compliant_server, other_pki):
    creds = compliant_server.creds(
        "localhost", sslmode="verify-full", sslrootcert=str(other_pki.root)
    )
    with pytest.raises(DatabaseUnavailable, match="certificate verify failed"):
        connect(creds, timeout=10)


def test_loopback_with_sslmode_verify_full_checks_the_host_name(legacy_server, legacy_pki):
    """The certificate names HOST only; localhost is the same server but not that name."""
    creds = legacy_server.creds(
        "localhost", sslmode="verify-full", sslrootcert=str(legacy_pki.root)
    )
    with pytest.raises(DatabaseUnavailable, match="certificate verify failed"):
        connect(creds, timeout=10)


# ------------------------------------------------------------------ P1: private CAs, every Python


def test_a_private_ca_without_key_usage_named_in_the_secret_verifies_on_every_python(
    legacy_server, legacy_pki
):
    """Failed on 3.13 before ("CA cert does not include key usage extension"); 3.11 passed."""
    secret = legacy_server.secret(HOST, sslrootcert=legacy_pki.root_pem)
    assert session_tls(DbCredentials.from_secret(secret)) is True


def test_the_system_store_refuses_a_ca_without_key_usage_on_every_python(
    legacy_server, legacy_pki, monkeypatch
):
    """No CA named: the system store (here SSL_CERT_FILE) with strict X.509 checks, on 3.11
    as on 3.13. Failed on 3.11 before (it connected); 3.13 passed."""
    monkeypatch.setenv("SSL_CERT_FILE", str(legacy_pki.root))
    with pytest.raises(DatabaseUnavailable, match="key usage"):
        connect(legacy_server.creds(HOST), timeout=10)


def test_the_system_store_verifies_a_ca_with_key_usage(
    compliant_server, compliant_pki, monkeypatch
):
    monkeypatch.setenv("SSL_CERT_FILE", str(compliant_pki.root))
    assert session_tls(compliant_server.creds(HOST)) is True


def test_a_named_ca_with_key_usage_verifies_too(compliant_server, compliant_pki):
    assert session_tls(compliant_server.creds(HOST, sslrootcert=str(compliant_pki.root))) is True


def test_a_named_ca_that_did_not_sign_the_server_is_refused(legacy_server, other_pki):
    creds = legacy_server.creds(HOST, sslrootcert=str(other_pki.root))
    with pytest.raises(DatabaseUnavailable, match="certificate verify failed"):
        connect(creds, timeout=10)


# ------------------------------------------------------------------ the readers' ADBC sessions


def adbc_session_tls(creds: DbCredentials) -> bool:
    """Whether the server sees an ADBC reader session (``extract.adbc``) as TLS."""
    session = adbc.connect(creds, "totes-ingest-reader")
    try:
        [[ssl]] = session.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") or []
        return bool(ssl)
    finally:
        session.close()


def test_adbc_sessions_take_the_same_tls_as_pg8000_on_loopback(compliant_server, compliant_pki):
    assert adbc_session_tls(compliant_server.creds("127.0.0.1")) is False
    assert adbc_session_tls(compliant_server.creds("127.0.0.1", sslmode="require")) is True
    secret = compliant_server.secret(
        "localhost", sslmode="verify-full", sslrootcert=compliant_pki.root_pem
    )
    assert adbc_session_tls(DbCredentials.from_secret(secret)) is True


def test_an_adbc_session_verifies_a_private_ca_named_in_the_secret(legacy_server, legacy_pki):
    secret = legacy_server.secret(HOST, sslrootcert=legacy_pki.root_pem)
    assert adbc_session_tls(DbCredentials.from_secret(secret)) is True


def test_an_adbc_session_refuses_another_ca_and_the_wrong_host_name(
    compliant_server, other_pki, legacy_server, legacy_pki
):
    another_ca = compliant_server.creds(HOST, sslrootcert=str(other_pki.root))
    with pytest.raises(DatabaseUnavailable, match="certificate verify failed"):
        adbc.connect(another_ca, "totes-ingest-reader")
    wrong_name = legacy_server.creds(
        "localhost", sslmode="verify-full", sslrootcert=str(legacy_pki.root)
    )
    with pytest.raises(DatabaseUnavailable, match=r"does not match host name|certificate"):
        adbc.connect(wrong_name, "totes-ingest-reader")


def test_an_adbc_session_encodes_odd_credentials_and_never_shows_the_password(
    compliant_server, compliant_pki
):
    odd = "p@ss:w/rd?#%&= x'"
    admin = connect(compliant_server.creds("127.0.0.1"), timeout=10)
    try:
        admin.run("CREATE ROLE \"odd@user\" LOGIN PASSWORD 'p@ss:w/rd?#%&= x'''")
    finally:
        admin.close()
    creds = replace(compliant_server.creds("127.0.0.1"), user="odd@user", password=odd)
    assert adbc_session_tls(creds) is False  # it connected: every character arrived intact

    wrong = replace(creds, password=odd + "-wrong")
    with pytest.raises(AuthenticationFailed, match="odd@user") as refused:
        adbc.connect(wrong, "totes-ingest-reader")
    assert odd not in str(refused.value)
