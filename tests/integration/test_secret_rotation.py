"""Secret rotation (issue 14, L4): when the database refuses the cached credentials, ingest
and load read their secret again once, past Powertools' 5-minute cache, and connect with the
new one; a refusal the secret does not explain still fails, after that one read.

Real passwords: the embedded PostgreSQL checks the passwords of this test's roles
(``PostgresCluster.checking_passwords_of``), changed with ALTER ROLE; the secret is updated in
moto. Both strategies Secrets Manager offers:

- single user: the user's password changes, and the secret with it;
- alternating users: the secret moves to the other user (whose password was just set), and
  the previous user's password changes at the following rotation. A cache younger than one
  rotation still works; an older one is refused, which is the case shown.

The two users share their privileges through a group role, and each logs in as that group
(``ALTER ROLE ... SET role``). On the warehouse the group is the loader: the owner migrated
and ran grant-loader for the group, so either user loads and neither holds a DDL right;
docs/deploy.md describes the same setup for the real databases.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from dataclasses import dataclass, replace

import boto3
import pytest

from totes.db import DbCredentials, connect
from totes.errors import AuthenticationFailed, DatabaseUnavailable
from totes.identifiers import quote
from totes.lake import Lake
from totes.observability import logger
from totes.stages import runtime
from totes.warehouse.migrations import migrate
from totes.warehouse.roles import grant_loader
from totes_tools.local.aws import receive_s3_events
from totes_tools.local.chain import context_for, load_handler, schedule_event
from totes_tools.source.generator import generate
from totes_tools.warehouse.synthetic import put_processed_batch, star_batch

RETRIED = "database refused the cached credentials; the secret has changed (rotated), retrying"


@pytest.fixture
def log_lines(monkeypatch) -> io.StringIO:
    """What the shared Powertools logger writes (its handler keeps the stream it was born with)."""
    buffer = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", buffer)
    return buffer


def records(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]


@dataclass
class Roles:
    """A group role and its two login users (``a``, ``b``) on the cluster."""

    cluster: object
    group: str

    @property
    def a(self) -> str:
        return f"{self.group}_a"

    @property
    def b(self) -> str:
        return f"{self.group}_b"

    def admin(self, dbname: str | None = None):
        creds = self.cluster.admin
        return connect(creds.with_dbname(dbname) if dbname else creds)

    def set_password(self, user: str, password: str) -> None:
        con = self.admin()
        try:  # utility statements take no parameters; role and password are this test's own
            con.run(f"ALTER ROLE {quote(user)} PASSWORD '{password}'")
        finally:
            con.close()


@pytest.fixture
def roles(pg_cluster, source_db, warehouse_db):
    """Users a and b, members of a group (the warehouse's loader role, granted by the tests
    that load) that may read the source; the server checks their passwords for the duration
    of the test."""
    group = f"rot_{uuid.uuid4().hex[:10]}"
    made = Roles(pg_cluster, group)
    con = made.admin()
    try:
        con.run(f"CREATE ROLE {quote(group)} NOLOGIN")
        for user in (made.a, made.b):
            con.run(f"CREATE ROLE {quote(user)} LOGIN PASSWORD NULL IN ROLE {quote(group)}")
            con.run(f"ALTER ROLE {quote(user)} SET role = {quote(group)}")
    finally:
        con.close()

    def drop() -> None:
        for db in (source_db, warehouse_db):
            con = made.admin(db.dbname)
            try:
                owners = ", ".join(quote(r) for r in (group, made.a, made.b))
                con.run(f"REASSIGN OWNED BY {owners} TO {quote(pg_cluster.admin.user)}")
                con.run(f"DROP OWNED BY {owners}")
            finally:
                con.close()
        con = made.admin()
        try:
            for role in (made.a, made.b, group):
                con.run(f"DROP ROLE IF EXISTS {quote(role)}")
        finally:
            con.close()

    checking = pg_cluster.checking_passwords_of(group)
    try:
        checking.__enter__()
    except OSError as exc:  # a server named by URL whose pg_hba.conf is not ours to edit
        drop()
        pytest.skip(f"cannot make the server check passwords: {exc}")
    try:
        yield made
    finally:
        checking.__exit__(None, None, None)
        drop()


def put_secret(secret_id: str, creds: DbCredentials) -> None:
    boto3.client("secretsmanager").put_secret_value(
        SecretId=secret_id, SecretString=creds.to_secret()
    )


def rotate(strategy: str, roles: Roles, secret_id: str, current: DbCredentials) -> DbCredentials:
    """One rotation of ``secret_id`` (whose credentials are ``current``, cached by the stage)
    that leaves the cached credentials refused; returns the secret's new credentials."""
    if strategy == "single-user":
        new = replace(current, password=f"pw-{uuid.uuid4().hex}")
        roles.set_password(new.user, new.password)
        put_secret(secret_id, new)
        return new
    other = roles.b if current.user == roles.a else roles.a
    new = replace(current, user=other, password=f"pw-{uuid.uuid4().hex}")
    roles.set_password(new.user, new.password)  # rotation n: the other user, then the secret
    put_secret(secret_id, new)
    roles.set_password(current.user, f"pw-{uuid.uuid4().hex}")  # rotation n+1's first step
    return new


def refused(creds: DbCredentials) -> bool:
    with contextlib.suppress(AuthenticationFailed):
        connect(creds).close()
        return False
    return True


STRATEGIES = ["single-user", "alternating-users"]


@pytest.fixture
def source_as_a(stack, source_db, roles) -> DbCredentials:
    """A small generated source the group may read, and its secret naming user a."""
    con = connect(source_db)
    try:
        generate(con, 20, seed=14)
        con.run(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {quote(roles.group)}")
    finally:
        con.close()
    creds = replace(source_db, user=roles.a, password=f"pw-{uuid.uuid4().hex}")
    roles.set_password(creds.user, creds.password)
    put_secret(stack.source_secret, creds)
    return creds


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ingest_reads_a_rotated_secret_again_and_connects(
    stack, source_as_a, roles, log_lines, monkeypatch, strategy
):
    monkeypatch.setenv("INGEST_LAG_SECONDS", "0")
    runtime.reset()  # a cold start
    handler = load_handler("ingest")
    first = handler(schedule_event(), context_for("ingest"))
    assert first["batches"]

    new = rotate(strategy, roles, stack.source_secret, source_as_a)
    assert refused(source_as_a)  # the cached credentials really are refused now

    handler(schedule_event(), context_for("ingest"))  # the same warm container
    retried = [r for r in records(log_lines) if r.get("message") == RETRIED]
    assert [(r["user"], r["new_user"]) for r in retried] == [(source_as_a.user, new.user)]

    handler(schedule_event(), context_for("ingest"))  # the re-read secret is cached now
    assert len([r for r in records(log_lines) if r.get("message") == RETRIED]) == 1


def test_ingest_fails_naming_the_refusal_when_the_secret_did_not_change(
    stack, source_as_a, roles, log_lines, monkeypatch
):
    monkeypatch.setenv("INGEST_LAG_SECONDS", "0")
    runtime.reset()
    handler = load_handler("ingest")
    roles.set_password(source_as_a.user, f"pw-{uuid.uuid4().hex}")  # changed; secret not

    with pytest.raises(DatabaseUnavailable, match=f"authentication failed for user '{roles.a}'"):
        handler(schedule_event(), context_for("ingest"))
    assert not [r for r in records(log_lines) if r.get("message") == RETRIED]


@pytest.fixture
def warehouse_as_a(stack, warehouse_db, roles) -> DbCredentials:
    """The owner's step (migrate, grant-loader to the group), then the load's secret naming
    user a."""
    con = connect(warehouse_db)
    try:
        migrate(con)
        grant_loader(con, roles.group, "public")
    finally:
        con.close()
    creds = replace(warehouse_db, user=roles.a, password=f"pw-{uuid.uuid4().hex}")
    roles.set_password(creds.user, creds.password)
    put_secret(stack.warehouse_secret, creds)
    return creds


def load_event(aws, stack, batch_id: str) -> dict:
    put_processed_batch(
        Lake(boto3.client("s3"), stack.processed_bucket), batch_id, star_batch(sales=3)
    )
    [(event, _)] = receive_s3_events(aws, stack.load_queue)
    return event


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_load_reads_a_rotated_secret_again_and_connects(
    aws, stack, warehouse_as_a, roles, log_lines, strategy
):
    runtime.reset()
    handler = load_handler("load")
    first = handler(load_event(aws, stack, "20240101T000000000000-000"), context_for("load"))
    assert [r["status"] for r in first["results"]] == ["loaded"]

    new = rotate(strategy, roles, stack.warehouse_secret, warehouse_as_a)
    assert refused(warehouse_as_a)

    second = handler(load_event(aws, stack, "20240102T000000000000-000"), context_for("load"))
    assert [r["status"] for r in second["results"]] == ["loaded"]
    retried = [r for r in records(log_lines) if r.get("message") == RETRIED]
    assert [(r["user"], r["new_user"]) for r in retried] == [(warehouse_as_a.user, new.user)]
    con = connect(new)
    try:
        [[ledger]] = con.run("SELECT count(*) FROM etl_batch_ledger")
    finally:
        con.close()
    assert ledger == 2
