"""The totesys DDL, derived from ``totes.source.model`` so the schema we test against is the
one the rest of the pipeline reads: the two Prisma enum types, then every table in dependency
order with its serial key, NOT NULLs, defaults, unique constraints and foreign keys (ON UPDATE
CASCADE, ON DELETE RESTRICT, or SET NULL for the two on ``transaction``).

Identifiers come only from the model and are always double-quoted (``transaction`` is a
keyword, the enum names are mixed case).
"""

from __future__ import annotations

from totes.errors import TotesError
from totes.identifiers import quote
from totes.source.model import ENUMS, TABLES, Column, Table


class TargetNotEmpty(TotesError):
    """The database we were asked to create the source in already holds tables."""


def enum_ddl(name: str, labels: tuple[str, ...]) -> str:
    values = ", ".join("'" + label.replace("'", "''") + "'" for label in labels)
    return f"CREATE TYPE {quote(name)} AS ENUM ({values})"


def _column_ddl(table: Table, column: Column) -> str:
    if column.name == table.key:
        return f"{quote(column.name)} serial NOT NULL"
    sql_type = column.sql_type.replace("timestamp(3)", "timestamp(3) without time zone")
    parts = [quote(column.name), sql_type]
    if column.not_null:
        parts.append("NOT NULL")
    if column.default is not None:
        parts.append(f"DEFAULT {column.default}")
    return " ".join(parts)


def foreign_key_clause(table: Table, fk) -> str:
    return (
        f"CONSTRAINT {quote(f'{table.name}_{fk.column}_fkey')} FOREIGN KEY ({quote(fk.column)}) "
        f"REFERENCES {quote(fk.table)} ({quote(fk.ref_column)}) "
        f"ON UPDATE {fk.on_update} ON DELETE {fk.on_delete}"
    )


def key_clauses(table: Table) -> list[str]:
    primary = f"CONSTRAINT {quote(table.name + '_pkey')} PRIMARY KEY ({quote(table.key)})"
    unique = [
        f"CONSTRAINT {quote(f'{table.name}_{col}_key')} UNIQUE ({quote(col)})"
        for col in table.unique
    ]
    return [primary, *unique]


def table_ddl(table: Table, constraints: bool = True) -> str:
    lines = [_column_ddl(table, c) for c in table.columns]
    if constraints:
        lines += key_clauses(table)
        lines += [foreign_key_clause(table, fk) for fk in table.foreign_keys]
    body = ",\n    ".join(lines)
    return f"CREATE TABLE {quote(table.name)} (\n    {body}\n)"


def schema_statements(constraints: bool = True) -> list[str]:
    """Every statement of the source schema, in an order PostgreSQL accepts.

    ``constraints=False`` leaves out keys and foreign keys, for bulk loaders that add them
    with ``constraint_statements`` after the rows are in."""
    enums = [enum_ddl(n, labels) for n, labels in ENUMS.items()]
    return enums + [table_ddl(t, constraints) for t in TABLES]


def constraint_statements() -> list[str]:
    """Primary and unique keys, then foreign keys, as ALTER TABLE statements. After a bulk
    load each index is built by one sort and each foreign key validated by one set-based join,
    instead of index inserts and a check per row."""
    keys = [
        f"ALTER TABLE {quote(t.name)} ADD {clause}" for t in TABLES for clause in key_clauses(t)
    ]
    return keys + [
        f"ALTER TABLE {quote(t.name)} ADD {foreign_key_clause(t, fk)}"
        for t in TABLES
        for fk in t.foreign_keys
    ]


def user_tables(con) -> list[str]:
    """Names of the ordinary tables in the connected database's non-system schemas."""
    rows = con.run(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
        "AND table_type = 'BASE TABLE' ORDER BY 1"
    )
    return [r[0] for r in rows]


def ensure_empty(con, where: str = "the target database") -> None:
    """Refuse to create the source over existing tables: we never mix data into a database."""
    existing = user_tables(con)
    if existing:
        shown = ", ".join(existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise TargetNotEmpty(
            f"{where} is not empty ({len(existing)} table(s): {shown}); use an empty database"
        )


def create_schema(con) -> None:
    """Create the enums and all eleven tables in one transaction (all or nothing)."""
    con.run("BEGIN")
    try:
        run_statements(con, schema_statements())
        con.run("COMMIT")
    except Exception:
        con.run("ROLLBACK")
        raise


def run_statements(con, statements: list[str]) -> None:
    for statement in statements:
        con.run(statement)


def reset_sequences(con) -> None:
    """Move every serial sequence past the table's largest id, so new rows get fresh ids."""
    for table in TABLES:
        highest = f"SELECT max({quote(table.key)}) FROM {quote(table.name)}"  # noqa: S608  # nosec B608 (model names)
        con.run(
            f"SELECT setval(pg_get_serial_sequence(:t, :c), COALESCE(({highest}), 0) + 1, false)",
            t=quote(table.name),
            c=table.key,
        )
