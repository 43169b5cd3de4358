"""The warehouse schema as a history of numbered SQL files (``sql/NNNN_name.sql``), applied in
order, each at most once, by the warehouse OWNER only.

``schema_migrations`` records what ran. Migrating is a step of its own (``python -m totes
warehouse migrate``; on AWS the stack's WarehouseMigration custom resource, before the new
functions go live), run with the owner's credentials: the load connects as a role without DDL
rights and only checks, once per process, that nothing is missing (:func:`require_current`),
refusing to load into a warehouse that is behind its code.

The whole run holds a transaction-scoped advisory lock, so concurrent runs serialise: the
first applies, the others wait, then find nothing left to do. Each file runs in the same
transaction as its ledger row, so a failing migration leaves neither its objects nor its
record behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from pg8000.exceptions import DatabaseError
from pg8000.native import Connection

from totes.errors import MigrationFailed, SchemaBehind, SchemaDrift
from totes.identifiers import quote
from totes.observability import logger
from totes.server_errors import describe_error
from totes.settings import DEFAULT_WAREHOUSE_SCHEMA

# An arbitrary, fixed 64-bit key: "totes schema migrations".
MIGRATION_LOCK_KEY = 0x70746573_6D696772
MIGRATIONS_TABLE = "schema_migrations"

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        """``NNNN_name``, as reports and errors name a migration."""
        return f"{self.version:04d}_{self.name}"


def available() -> list[Migration]:
    """Every migration shipped in the package, in version order."""
    found = []
    for entry in resources.files("totes.warehouse").joinpath("sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {versions}")
    return found


def migrate(con: Connection, schema: str = DEFAULT_WAREHOUSE_SCHEMA) -> list[str]:
    """Apply the migrations this database lacks, in ``schema`` (which must exist); returns the
    ones applied (``NNNN_name``). Needs the owner's rights; the load never calls it. A
    migration the server refuses (one that fails on the rows already there, say) raises
    ``MigrationFailed`` naming it, table, column and SQLSTATE, never a value of those rows."""
    applied: list[str] = []
    con.run("BEGIN")
    try:
        con.run("SELECT pg_advisory_xact_lock(:key)", key=MIGRATION_LOCK_KEY)
        if not con.run("SELECT 1 FROM pg_namespace WHERE nspname = :s", s=schema):
            raise SchemaDrift(
                f"schema {schema!r} does not exist: create it as the warehouse owner"
                f" (CREATE SCHEMA {quote(schema)}), then migrate"
            )
        # Unqualified names in the files land in (and resolve in) the schema, this
        # transaction only.
        con.run(f"SET LOCAL search_path TO {quote(schema)}")
        con.run(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
            " version INT PRIMARY KEY, name VARCHAR NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in con.run(f"SELECT version FROM {MIGRATIONS_TABLE}")}  # noqa: S608  # nosec B608
        for migration in available():
            if migration.version in done:
                continue
            try:
                con.run(migration.sql)  # simple-query protocol: one file, many statements
            except DatabaseError as exc:  # not chained: its text may quote a row's values
                raise MigrationFailed(
                    f"migration {migration.label} failed: {describe_error(exc)}"
                ) from None
            con.run(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES (:v, :n)",  # noqa: S608  # nosec B608
                v=migration.version,
                n=migration.name,
            )
            applied.append(migration.label)
        con.run("COMMIT")
    except BaseException:
        con.run("ROLLBACK")
        raise
    if applied:
        logger.info("warehouse migrations applied", extra={"migrations": applied})
    return applied


def missing(con: Connection) -> list[str]:
    """The shipped migrations the warehouse behind ``con`` (its ``search_path``) lacks, as
    ``NNNN_name`` in order: all of them when it has no ``schema_migrations`` at all. One
    catalog probe and one small read; writes nothing. A warehouse ahead of the code (a
    rollback of the functions) is not refused: migrations only add."""
    [[table]] = con.run("SELECT to_regclass(:t) IS NOT NULL", t=MIGRATIONS_TABLE)
    done: set[int] = set()
    if table:
        done = {int(v) for [v] in con.run(f"SELECT version FROM {MIGRATIONS_TABLE}")}  # noqa: S608  # nosec B608
    return [m.label for m in available() if m.version not in done]


def require_current(con: Connection, where: str) -> None:
    """Refuse (``SchemaBehind``, naming every missing migration) unless the warehouse holds
    every migration the code ships. The load calls this instead of migrating."""
    lacking = missing(con)
    if lacking:
        raise SchemaBehind(
            f"the warehouse at {where} lacks migration(s) {', '.join(lacking)}: the load never"
            " migrates; run `python -m totes warehouse migrate` as the warehouse owner (on"
            " AWS the stack's WarehouseMigration step does, before the functions go live)",
            lacking,
        )
