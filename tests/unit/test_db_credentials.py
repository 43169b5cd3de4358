"""Connection settings parse both URL forms and the secret JSON, and never leak a password."""

import pytest

from totes.db import DbCredentials
from totes.errors import ConfigurationError


def test_tcp_url_is_parsed_with_decoded_password():
    creds = DbCredentials.from_url("postgresql://etl:p%40ss@db.example.com:6543/totesys")
    assert (creds.user, creds.password, creds.host, creds.port, creds.dbname) == (
        "etl",
        "p@ss",
        "db.example.com",
        6543,
        "totesys",
    )
    assert creds.unix_socket_dir is None
    assert not creds.is_local


def test_socket_url_is_parsed():
    creds = DbCredentials.from_url("postgresql://postgres@/wh?host=/tmp/pg")
    assert creds.unix_socket_dir == "/tmp/pg"
    assert creds.host is None
    assert creds.is_local
    assert creds.ssl_context() is None


def test_remote_host_gets_verified_tls():
    import ssl

    ctx = DbCredentials.from_url("postgresql://u:p@db.example.com/x").ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname


def test_secret_round_trip_and_repr_hides_password():
    creds = DbCredentials.from_url("postgresql://u:hunter2@127.0.0.1:5432/x")
    again = DbCredentials.from_secret(creds.to_secret())
    assert again == creds
    assert "hunter2" not in repr(creds)
    assert "hunter2" not in creds.where


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "postgresql://"),
        ("postgresql://u@h/", "names no database"),
        ("postgresql://u@h/db?sslmode=maybe", "sslmode"),
    ],
)
def test_bad_urls_are_explained(url, message):
    with pytest.raises(ConfigurationError, match=message):
        DbCredentials.from_url(url)


def test_secret_missing_keys_are_named():
    with pytest.raises(ConfigurationError, match="host"):
        DbCredentials.from_secret({"username": "u", "dbname": "d"})
