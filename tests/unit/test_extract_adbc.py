"""The readers' ADBC driver, without a server: which driver a run takes, the libpq URI it
connects with (TLS as pg8000 gets it, credentials encoded), how ``run`` binds parameters, and
how record batches become the raw lake schema."""

from __future__ import annotations

import os
import stat
from datetime import datetime
from decimal import Decimal
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pyarrow as pa
import pytest

from totes.db import DbCredentials
from totes.errors import ConfigurationError, DatabaseUnavailable
from totes.extract import adbc
from totes.settings import IngestSettings

PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def parts(uri: str) -> tuple[object, dict[str, str]]:
    split = urlsplit(uri)
    return split, {k: v[-1] for k, v in parse_qs(split.query).items()}


# -- choice ----------------------------------------------------------------------------------


def test_adbc_is_chosen_where_it_can_be_imported_else_pg8000(monkeypatch):
    assert adbc.available()  # the dev set pins it
    assert adbc.choose(None) == adbc.ADBC
    monkeypatch.setattr(adbc, "available", lambda: False)
    assert adbc.choose(None) == adbc.PG8000
    assert adbc.choose("pg8000") == adbc.PG8000


def test_asking_for_adbc_where_it_cannot_be_imported_is_refused(monkeypatch):
    monkeypatch.setattr(adbc, "available", lambda: False)
    with pytest.raises(ConfigurationError, match="INGEST_READER_DRIVER=adbc"):
        adbc.choose("adbc")


def test_availability_is_an_import_of_the_driver(monkeypatch):
    monkeypatch.setattr(adbc, "_MODULE", "adbc_driver_postgresql_not_installed")
    assert adbc.available() is False


def test_the_driver_is_imported_once_on_a_thread_of_its_own():
    """A fresh process spends 0.15 to 0.25 s importing the driver (``pyarrow.dataset``); a run
    starts that first (``adbc.preload``) so its first statements at the source hide it."""
    from test_lake import fresh_interpreter_prints

    code = (
        "import sys, threading\n"
        "from totes.extract import adbc\n"
        "seen = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'adbc_driver_postgresql.dbapi':\n"
        "            seen.append(threading.current_thread().name)\n"
        "sys.meta_path.insert(0, Spy())\n"
        "assert 'adbc_driver_postgresql.dbapi' not in sys.modules\n"
        "thread = adbc.preload()\n"
        "assert adbc.preload() is thread\n"
        "assert adbc.available() and not thread.is_alive()\n"
        "print(seen)\n"
    )
    assert fresh_interpreter_prints(code) == "['adbc-import']"


@pytest.mark.parametrize(("raw", "expected"), [("", None), ("adbc", "adbc"), (" pg8000", "pg8000")])
def test_the_driver_setting(raw, expected):
    env = {"RAW_BUCKET": "b", "SOURCE_SECRET_ID": "s", "INGEST_READER_DRIVER": raw}
    assert IngestSettings.from_env(env).reader_driver == expected


def test_an_unknown_driver_setting_fails_by_name():
    env = {"RAW_BUCKET": "b", "SOURCE_SECRET_ID": "s", "INGEST_READER_DRIVER": "odbc"}
    with pytest.raises(ConfigurationError, match="INGEST_READER_DRIVER='odbc' is malformed"):
        IngestSettings.from_env(env)


# -- the libpq URI -------------------------------------------------------------------------


def test_a_unix_socket_names_its_directory_and_no_tls():
    creds = DbCredentials(user="postgres", dbname="src", unix_socket_dir="/tmp/pg", port=5433)
    split, query = parts(adbc.libpq_uri(creds, "totes-ingest-reader"))
    assert split.netloc == "postgres@"
    assert query["host"] == "/tmp/pg"
    assert query["port"] == "5433"
    assert query["application_name"] == "totes-ingest-reader"
    assert "sslmode" not in query


@pytest.mark.parametrize(
    ("host", "sslmode", "expected"),
    [
        ("127.0.0.1", None, "disable"),
        ("localhost", "verify-full", "verify-full"),
        ("db.example.com", None, "verify-full"),
        ("db.example.com", "require", "require"),
        ("db.example.com", "disable", "disable"),
    ],
)
def test_tls_follows_the_same_sslmode_as_pg8000(host, sslmode, expected):
    creds = DbCredentials(user="u", dbname="d", host=host, sslmode=sslmode)
    _, query = parts(adbc.libpq_uri(creds, "x"))
    assert query["sslmode"] == expected == creds.tls_mode
    # Verification against a CA only where verify-full: require encrypts without checking.
    assert ("sslrootcert" in query) == (expected == "verify-full")


def test_verify_full_without_a_named_ca_uses_the_system_store():
    _, query = parts(adbc.libpq_uri(DbCredentials(user="u", dbname="d", host="db.x"), "x"))
    assert query["sslrootcert"] == "system"


def test_a_ca_given_as_pem_text_is_written_to_a_private_file(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    creds = DbCredentials(user="u", dbname="d", host="db.x", sslrootcert=PEM)
    _, query = parts(adbc.libpq_uri(creds, "x"))
    path = query["sslrootcert"]
    assert path.startswith(str(tmp_path))
    with open(path) as f:
        assert f.read() == PEM
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert parts(adbc.libpq_uri(creds, "x"))[1]["sslrootcert"] == path  # written once


def test_a_ca_file_named_in_the_configuration_is_passed_as_its_path(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    creds = DbCredentials(user="u", dbname="d", host="db.x", sslrootcert=str(ca))
    assert parts(adbc.libpq_uri(creds, "x"))[1]["sslrootcert"] == str(ca)


def test_credentials_and_database_are_percent_encoded():
    creds = DbCredentials(
        user="a@b:c", password="p@ss:w/rd?#%&= x", dbname="my db/1", host="db.x", port=6543
    )
    split, _ = parts(adbc.libpq_uri(creds, "x"))
    assert unquote(split.username or "") == "a@b:c"
    assert unquote(split.password or "") == "p@ss:w/rd?#%&= x"
    assert (split.hostname, split.port) == ("db.x", 6543)
    assert unquote(split.path) == "/my db/1"


def test_a_uri_libpq_cannot_parse_is_reported_without_the_password_in_any_encoding():
    """libpq quotes the whole URI when it cannot parse it (here an IPv6 host with no closing
    bracket, a typo in the secret): the password in it is percent-encoded, so a password
    whose characters encoding changes must be masked in that form too."""
    password = "Sec#ret%7f3a!never-logged"
    creds = DbCredentials(
        user="u", password=password, host="[::1", port=5432, dbname="db", sslmode="disable"
    )
    with pytest.raises(DatabaseUnavailable) as refused:
        adbc.connect(creds, "totes-ingest-reader")
    message = str(refused.value)
    assert "in URI" in message, message  # libpq did quote the URI
    assert password not in message
    assert quote(password, safe="") not in message


# -- run's parameters ----------------------------------------------------------------------


class FakeCursor:
    def __init__(self):
        self.executed: list[tuple[str, object]] = []
        self.description = None

    def execute(self, sql, parameters=None):
        self.executed.append((sql, parameters))


class FakeConnection:
    def __init__(self):
        self.cur = FakeCursor()

    def cursor(self):
        return self.cur


def test_run_binds_named_parameters_as_numbered_ones_never_as_text():
    con = FakeConnection()
    session = adbc.Session(con)
    session.run("SELECT set_config('a', :v, true), :w, :v", v="x'); DROP TABLE t; --", w="2")
    session.run("ROLLBACK")
    assert con.cur.executed == [
        ("SELECT set_config('a', $1, true), $2, $1", ("x'); DROP TABLE t; --", "2")),
        ("ROLLBACK", None),
    ]


@pytest.mark.parametrize(
    ("sql", "params", "match"),
    [("SELECT :a", {}, "has no value"), ("SELECT 1", {"a": "1"}, "not in the statement")],
)
def test_run_refuses_a_parameter_missing_or_unused(sql, params, match):
    with pytest.raises(ValueError, match=match):
        adbc.Session(FakeConnection()).run(sql, **params)


# -- conforming batches ------------------------------------------------------------------


SCHEMA = pa.schema(
    [
        pa.field("id", pa.int32()),
        pa.field("price", pa.decimal128(10, 2)),
        pa.field("stamp", pa.timestamp("ms")),
    ]
)


def numeric(values: list[str | None]) -> pa.Array:
    """What ADBC returns for a numeric: PostgreSQL's text in an opaque extension."""
    return pa.ExtensionArray.from_storage(
        pa.opaque(pa.string(), "numeric", "PostgreSQL"), pa.array(values, pa.string())
    )


def test_batches_are_cast_to_the_lake_schema_by_position():
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array([1, 2], pa.int32()),
            numeric(["12.50", None]),
            pa.array([datetime(2024, 1, 1, 0, 0, 0, 123000), None], pa.timestamp("us")),
        ],
        names=["case", "case", "case"],
    )
    table = adbc.conform(batch, SCHEMA, "t")
    assert table.schema == SCHEMA
    assert table.to_pylist() == [
        {"id": 1, "price": Decimal("12.50"), "stamp": datetime(2024, 1, 1, 0, 0, 0, 123000)},
        {"id": 2, "price": None, "stamp": None},
    ]


def test_a_value_the_lake_type_cannot_hold_names_table_and_column_not_the_value():
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array([1], pa.int32()),
            numeric(["1.00"]),
            pa.array([datetime(2024, 1, 1, 0, 0, 0, 123456)], pa.timestamp("us")),
        ],
        names=["a", "b", "c"],
    )
    with pytest.raises(ValueError, match=r"^t\.stamp: a source value does not fit") as failed:
        adbc.conform(batch, SCHEMA, "t")
    assert "123456" not in str(failed.value)


def test_a_batch_of_other_columns_is_refused():
    batch = pa.RecordBatch.from_arrays([pa.array([1], pa.int32())], names=["id"])
    with pytest.raises(ValueError, match="returned 1 columns, the raw lake has 3"):
        adbc.conform(batch, SCHEMA, "t")


def test_record_batches_follow_the_chunk_size_with_the_default_chunk_at_the_drivers_16_mib():
    assert adbc.batch_bytes(100_000) == 16 * 2**20  # INGEST_CHUNK_ROWS' default
    assert adbc.batch_bytes(5_000_000) == 16 * 2**20
    assert adbc.batch_bytes(50_000) == 50_000 * adbc.BATCH_BYTES_PER_ROW
    assert adbc.batch_bytes(5_000) == 2**20
