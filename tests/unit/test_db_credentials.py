"""Connection settings parse both URL forms and the secret JSON, and never leak a password."""

import json
import ssl
from dataclasses import replace

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


PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_sslrootcert_may_hold_the_pem_text_itself():
    creds = DbCredentials.from_secret(
        {"host": "db.example.com", "username": "u", "dbname": "d", "sslrootcert": PEM}
    )
    assert creds.ca_arguments() == {"cadata": PEM}


def test_sslrootcert_file_name_resolves_in_the_layer_certs_folder(tmp_path, monkeypatch):
    import totes.db

    monkeypatch.setattr(totes.db, "CERTS_DIR", tmp_path)
    (tmp_path / "private-ca.pem").write_text(PEM)
    creds = DbCredentials.from_url("postgresql://u@db.example.com/d?sslrootcert=private-ca.pem")
    assert creds.ca_arguments() == {"cafile": str(tmp_path / "private-ca.pem")}


def test_a_missing_sslrootcert_file_is_named():
    creds = DbCredentials.from_url("postgresql://u@db.example.com/d?sslrootcert=nope.pem")
    with pytest.raises(ConfigurationError, match=r"nope\.pem"):
        creds.ca_arguments()


def test_rds_hosts_use_the_bundled_rds_cas_when_present(tmp_path, monkeypatch):
    import totes.db

    monkeypatch.setattr(totes.db, "CERTS_DIR", tmp_path)
    rds = DbCredentials.from_url("postgresql://u@wh.abc123.eu-west-2.rds.amazonaws.com/d")
    assert rds.ca_arguments() == {}  # no bundle shipped: the system store, verification on
    (tmp_path / totes.db.RDS_BUNDLE).write_text(PEM)
    assert rds.ca_arguments() == {"cafile": str(tmp_path / totes.db.RDS_BUNDLE)}
    other = DbCredentials.from_url("postgresql://u@db.example.com/d")
    assert other.ca_arguments() == {}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://loader:p%40ss%3Aw%2Fd@wh.example:6543/warehouse",
        "postgresql://reader@db.example/totesys?sslmode=require",
        "postgresql://reader:x@db.example:5432/totesys?sslrootcert=rds-global-bundle.pem",
        "postgresql://reader:x@db.example/totesys?sslmode=disable&sslrootcert=/etc/ca%20dir/ca.pem",
        "postgresql://postgres@/totes_1?host=/tmp/pg%20socket&port=5433",
    ],
)
def test_to_url_keeps_every_field_through_a_round_trip(url):
    creds = DbCredentials.from_url(url)

    again = DbCredentials.from_url(creds.to_url())

    assert again == creds


def test_to_url_keeps_a_pem_sslrootcert():
    creds = DbCredentials("reader", "totesys", host="db.example", password="x", sslrootcert=PEM)

    assert DbCredentials.from_url(creds.to_url()) == creds


@pytest.mark.parametrize(
    ("url", "mode"),
    [
        ("postgresql://u@db.example.com/d", "verify-full"),
        ("postgresql://u@127.0.0.1/d", "disable"),
        ("postgresql://u@localhost/d", "disable"),
        ("postgresql://u@[::1]/d", "disable"),
        ("postgresql://u@127.0.0.1:15432/d?sslmode=require", "require"),
        ("postgresql://u@localhost:15432/d?sslmode=verify-full", "verify-full"),
        ("postgresql://u@db.example.com/d?sslmode=disable", "disable"),
        ("postgresql://u@/d?host=/tmp/pg&sslmode=verify-full", "disable"),
    ],
    ids=lambda v: v.split("@")[-1] if "@" in v else v,
)
def test_an_explicit_sslmode_holds_on_loopback_too(url, mode):
    """Issue 14, L1: only without an sslmode does loopback (a port forward) mean plaintext;
    unix sockets never use TLS (PostgreSQL has none there)."""
    creds = DbCredentials.from_url(url)
    assert creds.tls_mode == mode
    assert (creds.ssl_context() is None) == (mode == "disable")


def test_an_explicit_sslmode_survives_the_secret_and_the_url():
    creds = DbCredentials.from_url("postgresql://u:x@localhost:15432/d?sslmode=verify-full")
    assert DbCredentials.from_secret(creds.to_secret()).tls_mode == "verify-full"
    assert DbCredentials.from_url(creds.to_url()) == creds
    plain = DbCredentials.from_url("postgresql://u:x@localhost:15432/d")
    assert "sslmode" not in json.loads(plain.to_secret())
    assert DbCredentials.from_secret(plain.to_secret()).tls_mode == "disable"


def test_certificate_checks_are_the_same_on_every_python():
    """Issue 14, P1: strict X.509 for the system store (3.13's default, now on 3.11 too),
    lifted for a CA the configuration names; partial chains as on 3.13."""
    certifi = pytest.importorskip("certifi")
    store = DbCredentials.from_url("postgresql://u@db.example.com/d").ssl_context()
    named = DbCredentials.from_url(
        f"postgresql://u@db.example.com/d?sslrootcert={certifi.where()}"
    ).ssl_context()
    relaxed = DbCredentials.from_url("postgresql://u@db.example.com/d?sslmode=require")
    both = ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    assert store.verify_flags & both == both
    assert named.verify_flags & both == ssl.VERIFY_X509_PARTIAL_CHAIN
    assert (store.verify_mode, named.verify_mode) == (ssl.CERT_REQUIRED, ssl.CERT_REQUIRED)
    assert (store.check_hostname, named.check_hostname) == (True, True)
    assert relaxed.ssl_context().verify_mode == ssl.CERT_NONE


def test_the_way_back_to_the_secret_is_neither_compared_nor_shown_nor_copied():
    creds = DbCredentials("u", "d", host="db.example.com", password="pw")
    again = replace(creds, refresh=lambda: creds)
    assert again == creds
    assert "lambda" not in repr(again)
    assert again.with_dbname("other").refresh is None
