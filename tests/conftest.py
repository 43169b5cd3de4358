"""Fixtures that build real things: a PostgreSQL server (embedded, or the one named by
TOTES_TEST_DATABASE_URL) with fresh databases per test, and a moto server with the stack's
resources. Nothing leaks between tests: every test gets new databases and a new stack."""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

import pytest

from totes.db import DbCredentials, connect
from totes_tools.local.aws import StackNames, aws_environment, create_stack_resources, moto_server
from totes_tools.local.postgres import PostgresCluster, postgres_cluster

REPO_ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT_DIR = REPO_ROOT.parent / "shared" / "data" / "totesys-2024-11-15"
REQUIRE_SHARED_ENV = "TOTES_REQUIRE_SHARED_DATA"
# Row counts the snapshot's README states: the expectation, written once.
SNAPSHOT_README_COUNTS = {
    "address": 30,
    "counterparty": 20,
    "currency": 3,
    "department": 8,
    "design": 473,
    "payment": 15_836,
    "payment_type": 4,
    "purchase_order": 4_649,
    "sales_order": 11_187,
    "staff": 20,
    "transaction": 15_836,
}

_stack_seq = itertools.count()


def unique_stack_names(tag: str) -> StackNames:
    """Resource names no other stack of this test process uses (one emulator holds them all)."""
    return StackNames.tagged(tag, str(next(_stack_seq)))


@pytest.fixture(scope="session")
def new_stack_names():
    """A factory of unique stack names (``new_stack_names("tag")``), so stacks in one
    emulator never share a resource."""
    return unique_stack_names


@pytest.fixture(scope="session")
def pg_cluster() -> PostgresCluster:
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def fresh_db(pg_cluster):
    """A factory: each call gives credentials of a new, empty database, dropped after the test."""
    made: list[DbCredentials] = []

    def make(prefix: str = "t") -> DbCredentials:
        creds = pg_cluster.create_database(prefix)
        made.append(creds)
        return creds

    yield make
    for creds in made:
        pg_cluster.drop_database(creds)


@pytest.fixture
def source_db(fresh_db) -> DbCredentials:
    return fresh_db("src")


@pytest.fixture
def warehouse_db(fresh_db) -> DbCredentials:
    return fresh_db("wh")


@pytest.fixture
def pg_connect():
    """Open pg8000 native connections that are closed after the test."""
    opened = []

    def _connect(creds: DbCredentials):
        con = connect(creds)
        opened.append(con)
        return con

    yield _connect
    for con in opened:
        with contextlib.suppress(Exception):  # already closed by the test
            con.close()


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws(moto_endpoint):
    """AWS clients of every library pointed at the emulator for the duration of the test."""
    with aws_environment(moto_endpoint):
        yield moto_endpoint


@pytest.fixture
def stack(aws, source_db, warehouse_db, monkeypatch) -> StackNames:
    """A fresh set of the stack's resources (unique names per test) with the database secrets,
    and the functions' environment variables set as the template sets them."""
    names = unique_stack_names("t")
    create_stack_resources(aws, names, source=source_db, warehouse=warehouse_db)
    for key, value in names.function_env().items():
        monkeypatch.setenv(key, value)
    return names


@pytest.fixture(scope="session")
def snapshot_dir() -> Path:
    """The real totesys snapshot beside the repository; absent in a user's fresh clone."""
    if not SNAPSHOT_DIR.is_dir():
        if os.environ.get(REQUIRE_SHARED_ENV):
            pytest.fail(f"{SNAPSHOT_DIR} is missing but {REQUIRE_SHARED_ENV} is set (CI)")
        pytest.skip(f"real snapshot not present at {SNAPSHOT_DIR} (only beside the repo)")
    return SNAPSHOT_DIR


@pytest.fixture(scope="session")
def snapshot_counts() -> dict[str, int]:
    return dict(SNAPSHOT_README_COUNTS)


@pytest.fixture(scope="session")
def generated_source(pg_cluster):
    """``with generated_source(prefix, scale, seed=S) as creds``: a database holding a
    generated totesys, dropped afterwards (for module-scoped sources)."""
    from totes_tools.source.generator import generate

    @contextlib.contextmanager
    def make(prefix: str, scale: int, seed: int):
        creds = pg_cluster.create_database(prefix)
        con = connect(creds)
        try:
            generate(con, scale, seed=seed)
        finally:
            con.close()
        try:
            yield creds
        finally:
            pg_cluster.drop_database(creds)

    return make


@pytest.fixture
def new_role(pg_cluster):
    """A factory: ``new_role(db)`` creates a unique LOGIN role (no privileges; the embedded
    server trusts local logins) and returns credentials of it on database ``db``; after the
    test its privileges there are revoked (``DROP OWNED BY``) and the role dropped."""
    made: list[tuple[str, DbCredentials]] = []

    def make(db: DbCredentials, prefix: str = "loader") -> DbCredentials:
        import dataclasses
        import uuid

        from totes.identifiers import quote

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        con = connect(pg_cluster.admin)
        try:
            con.run(f"CREATE ROLE {quote(name)} LOGIN")
        finally:
            con.close()
        made.append((name, db))
        return dataclasses.replace(db, user=name, password=None, refresh=None)

    yield make
    from totes.identifiers import quote

    for name, db in made:
        with contextlib.suppress(Exception):  # the database may be gone already
            con = connect(pg_cluster.admin.with_dbname(db.dbname))
            try:
                con.run(f"DROP OWNED BY {quote(name)}")
            finally:
                con.close()
        con = connect(pg_cluster.admin)
        try:
            con.run(f"DROP ROLE IF EXISTS {quote(name)}")
        finally:
            con.close()
