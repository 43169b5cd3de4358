"""The warehouse schema as a history of numbered SQL files (``sql/NNNN_name.sql``), applied in
order, each at most once.

``schema_migrations`` records what ran. The whole run holds a transaction-scoped advisory lock,
so concurrent cold starts of the load function serialise: the first applies, the others wait,
then find nothing left to do. Each file runs in the same transaction as its ledger row, so a
failing migration leaves neither its objects nor its record behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from pg8000.native import Connection

from totes.observability import logger

# An arbitrary, fixed 64-bit key: "totes schema migrations".
MIGRATION_LOCK_KEY = 0x70746573_6D696772

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


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


def migrate(con: Connection) -> list[str]:
    """Apply the migrations this database lacks; returns the ones applied (``NNNN_name``)."""
    applied: list[str] = []
    con.run("BEGIN")
    try:
        con.run("SELECT pg_advisory_xact_lock(:key)", key=MIGRATION_LOCK_KEY)
        con.run(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INT PRIMARY KEY, name VARCHAR NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in con.run("SELECT version FROM schema_migrations")}
        for migration in available():
            if migration.version in done:
                continue
            con.run(migration.sql)  # simple-query protocol: one file, many statements
            con.run(
                "INSERT INTO schema_migrations (version, name) VALUES (:v, :n)",
                v=migration.version,
                n=migration.name,
            )
            applied.append(f"{migration.version:04d}_{migration.name}")
        con.run("COMMIT")
    except BaseException:
        con.run("ROLLBACK")
        raise
    if applied:
        logger.info("warehouse migrations applied", extra={"migrations": applied})
    return applied
