"""The loader's grants: what the load function's database role may do, and nothing more.

The warehouse has two kinds of credential. The OWNER owns the schema and its tables and runs
the migrations (``python -m totes warehouse migrate``; on AWS the WarehouseMigration custom
resource). The LOADER (the load function's secret) holds no DDL right at all: whoever takes
the load function or its secret can change rows the load may change, but cannot drop, alter,
truncate or create anything. Its privileges, table by table (``LOADER_TABLE_PRIVILEGES``):

- star tables: SELECT, INSERT, UPDATE (merges are upserts; facts add versions);
- ``etl_batch_ledger``: SELECT, INSERT, UPDATE. SELECT because the claim is
  ``INSERT ... ON CONFLICT DO NOTHING RETURNING batch_id`` (RETURNING and a conflict target
  need SELECT on those columns) and the loaded marker reads the newest batch;
- ``etl_deleted_keys`` (tombstones): SELECT, INSERT, UPDATE (an upsert, then read to mark);
- ``etl_parked_<fact>``: SELECT, INSERT, DELETE. The park is a queue: a parked fact whose
  references resolve is moved out (``DELETE ... RETURNING``); these are the only rows the
  loader may delete, and never star rows;
- ``schema_migrations``: SELECT (the schema-version check, ``migrations.require_current``);
- USAGE on the sequences behind the facts' SERIAL record ids (``nextval`` on insert; not
  UPDATE, so never ``setval``);
- USAGE on the schema (not CREATE), CONNECT and TEMPORARY on the database (the load stages
  each batch in temporary tables).

Foreign-key checks run with the referenced table owner's rights, so REFERENCES is not needed.
:func:`grant_loader` (the owner runs it, idempotently) revokes whatever else it granted the
role before, revokes writes on these tables and CREATE on the schema from PUBLIC, grants the
above, then reads the role's effective privileges back (memberships and PUBLIC included) and
refuses if they are not exactly these. Identifiers come from the code's models and are quoted
(``totes.identifiers``); the role name only ever enters SQL quoted, after it was found in
``pg_roles``.
"""

from __future__ import annotations

from pg8000.native import Connection

from totes.errors import TotesError
from totes.identifiers import quote
from totes.star.model import FACTS, STAR_TABLES
from totes.warehouse.deletes import TOMBSTONES
from totes.warehouse.ledger import LEDGER
from totes.warehouse.migrations import MIGRATIONS_TABLE
from totes.warehouse.parking import park_name

READ_WRITE = ("SELECT", "INSERT", "UPDATE")
LOADER_TABLE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    **{t.name: READ_WRITE for t in STAR_TABLES},
    LEDGER: READ_WRITE,
    TOMBSTONES: READ_WRITE,
    **{park_name(t): ("SELECT", "INSERT", "DELETE") for t in FACTS},
    MIGRATIONS_TABLE: ("SELECT",),
}
# Every table privilege PostgreSQL knows (MAINTAIN from 17 on): what is checked to be absent.
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
MAINTAIN_FROM = 170000


class GrantRefused(TotesError):
    """The role cannot be made a restricted loader (it would keep DDL rights), or it holds
    more than the loader's privileges after granting (granted by someone else)."""


def table_privileges(con: Connection) -> tuple[str, ...]:
    [[version]] = con.run("SELECT current_setting('server_version_num')::int")
    return TABLE_PRIVILEGES + (("MAINTAIN",) if int(version) >= MAINTAIN_FROM else ())


def _qualified(schema: str, name: str) -> str:
    return f"{quote(schema)}.{quote(name)}"


def fact_sequences(con: Connection, schema: str) -> list[str]:
    """The sequences owned by columns of the warehouse's tables (the facts' SERIAL ids)."""
    rows = con.run(
        "SELECT s.relname FROM pg_class s"
        " JOIN pg_namespace n ON n.oid = s.relnamespace"
        " JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid"
        "  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')"
        " JOIN pg_class t ON t.oid = d.refobjid"
        " WHERE s.relkind = 'S' AND n.nspname = :schema AND t.relname = ANY(:tables)"
        " ORDER BY s.relname",
        schema=schema,
        tables=list(LOADER_TABLE_PRIVILEGES),
    )
    return [str(name) for [name] in rows]


def _check_role(con: Connection, role: str, schema: str) -> None:
    """Refuse a role that would keep DDL rights whatever is granted: a superuser, the
    current (owner) user, or an owner (or member of the owner) of the warehouse's tables.
    Membership counts even without INHERIT: a member may ``SET ROLE`` to the owner."""
    found = con.run("SELECT rolsuper FROM pg_roles WHERE rolname = :r", r=role)
    if not found:
        raise GrantRefused(f"role {role!r} does not exist: create it first (docs/deploy.md)")
    if found[0][0]:
        raise GrantRefused(f"role {role!r} is a superuser: a loader must not be")
    [[me]] = con.run("SELECT current_user")
    if me == role:
        raise GrantRefused(f"role {role!r} is the current (owner) user: the loader must differ")
    owners = con.run(
        "SELECT DISTINCT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = :schema AND c.relname = ANY(:tables)"
        " AND pg_has_role(:role, c.relowner, 'MEMBER') ORDER BY 1",
        schema=schema,
        tables=list(LOADER_TABLE_PRIVILEGES),
        role=role,
    )
    if owners:
        table, owner = owners[0]
        raise GrantRefused(
            f"role {role!r} is or acts as {owner!r}, the owner of {schema}.{table}: an owner"
            " may drop and alter; the loader must be a role of its own"
        )
    missing = [
        name
        for name in LOADER_TABLE_PRIVILEGES
        if con.run("SELECT to_regclass(:t) IS NULL", t=_qualified(schema, name))[0][0]
    ]
    if missing:
        raise GrantRefused(
            f"schema {schema!r} lacks table(s) {', '.join(missing)}: migrate it first"
            " (`python -m totes warehouse migrate`)"
        )


def loader_statements(
    schema: str, role: str, database: str, sequences: list[str], privileges: tuple[str, ...]
) -> list[str]:
    """The statements that leave ``role`` exactly the loader's privileges (in order)."""
    who, where = quote(role), quote(schema)
    public_writes = ", ".join(p for p in privileges if p != "SELECT")
    tables = ", ".join(_qualified(schema, t) for t in LOADER_TABLE_PRIVILEGES)
    statements = [
        # Nobody but the owner creates in the warehouse schema (PUBLIC had CREATE on
        # ``public`` before PostgreSQL 15).
        f"REVOKE CREATE ON SCHEMA {where} FROM PUBLIC",
        f"REVOKE ALL ON SCHEMA {where} FROM {who}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {where} FROM {who}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {where} FROM {who}",
        f"REVOKE {public_writes} ON {tables} FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA {where} TO {who}",
    ]
    for table, granted in LOADER_TABLE_PRIVILEGES.items():
        statements.append(f"GRANT {', '.join(granted)} ON {_qualified(schema, table)} TO {who}")
    if sequences:
        names = ", ".join(_qualified(schema, s) for s in sequences)
        statements.append(f"GRANT USAGE ON SEQUENCE {names} TO {who}")
    statements.append(f"GRANT CONNECT, TEMPORARY ON DATABASE {quote(database)} TO {who}")
    return statements


def effective_privileges(con: Connection, role: str, schema: str) -> dict[str, set[str]]:
    """What ``role`` may do, as the server decides it (its memberships and PUBLIC included):
    per warehouse table its table privileges, per owned sequence ``sequence:<name>``, the
    schema as ``schema:<name>`` and the database as ``database``."""
    privileges = table_privileges(con)
    out: dict[str, set[str]] = {}
    for table in LOADER_TABLE_PRIVILEGES:
        name = _qualified(schema, table)
        held = con.run(
            "SELECT p FROM unnest(CAST(:ps AS varchar[])) AS p"
            " WHERE has_table_privilege(:role, CAST(:t AS regclass), p)",
            ps=list(privileges),
            role=role,
            t=name,
        )
        out[table] = {str(p) for [p] in held}
    for sequence in fact_sequences(con, schema):
        held = con.run(
            "SELECT p FROM unnest(CAST(:ps AS varchar[])) AS p"
            " WHERE has_sequence_privilege(:role, CAST(:s AS regclass), p)",
            ps=["USAGE", "SELECT", "UPDATE"],
            role=role,
            s=_qualified(schema, sequence),
        )
        out[f"sequence:{sequence}"] = {str(p) for [p] in held}
    held = con.run(
        "SELECT p FROM unnest(CAST(:ps AS varchar[])) AS p"
        " WHERE has_schema_privilege(:role, :schema, p)",
        ps=["USAGE", "CREATE"],
        role=role,
        schema=schema,
    )
    out[f"schema:{schema}"] = {str(p) for [p] in held}
    held = con.run(
        "SELECT p FROM unnest(CAST(:ps AS varchar[])) AS p"
        " WHERE has_database_privilege(:role, current_database(), p)",
        ps=["CONNECT", "TEMPORARY", "CREATE"],
        role=role,
    )
    out["database"] = {str(p) for [p] in held}
    return out


def expected_privileges(sequences: list[str], schema: str) -> dict[str, set[str]]:
    """The loader's privileges exactly, in :func:`effective_privileges`' shape."""
    out = {table: set(granted) for table, granted in LOADER_TABLE_PRIVILEGES.items()}
    out.update({f"sequence:{s}": {"USAGE"} for s in sequences})
    out[f"schema:{schema}"] = {"USAGE"}
    out["database"] = {"CONNECT", "TEMPORARY"}
    return out


def grant_loader(con: Connection, role: str, schema: str) -> dict[str, set[str]]:
    """Give ``role`` exactly the loader's privileges on the migrated warehouse in ``schema``
    (one transaction; run by the owner; idempotent), then check what the server says the role
    may do; returns it. ``GrantRefused`` names a role that cannot be a restricted loader, or
    a privilege the role still holds from elsewhere (then nothing was changed)."""
    con.run("BEGIN")
    try:
        _check_role(con, role, schema)
        [[database]] = con.run("SELECT current_database()")
        sequences = fact_sequences(con, schema)
        for statement in loader_statements(
            schema, role, str(database), sequences, table_privileges(con)
        ):
            con.run(statement)
        held = effective_privileges(con, role, schema)
        wanted = expected_privileges(sequences, schema)
        extra = {k: sorted(v - wanted.get(k, set())) for k, v in held.items()}
        lacking = {k: sorted(v - held.get(k, set())) for k, v in wanted.items()}
        extra = {k: v for k, v in extra.items() if v}
        lacking = {k: v for k, v in lacking.items() if v}
        if extra or lacking:
            raise GrantRefused(
                f"role {role!r} would not hold exactly the loader's privileges in {schema}:"
                f" beyond them {extra or 'nothing'}, lacking {lacking or 'nothing'} (granted"
                " or revoked by another role, to PUBLIC, or through a membership): fix that"
                " and run grant-loader again"
            )
        con.run("COMMIT")
    except BaseException:
        con.run("ROLLBACK")
        raise
    return held
