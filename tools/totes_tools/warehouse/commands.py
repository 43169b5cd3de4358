"""``python -m totes warehouse ...``: the operator's door to the warehouse schema. Both
commands need the OWNER's URL: the load's own role can do neither (it holds no DDL right)."""

from __future__ import annotations

from totes.db import close, connect_url
from totes.warehouse.migrations import migrate as apply_migrations
from totes.warehouse.roles import grant_loader as apply_grants


def migrate(args) -> int:
    """Apply the pending migrations to the database at ``--url``; safe to run repeatedly."""
    con = connect_url(args.url, application_name="totes-migrate")
    try:
        applied = apply_migrations(con, args.schema)
    finally:
        close(con)
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("warehouse schema is up to date")
    return 0


def grant_loader(args) -> int:
    """Give ``--role`` exactly the load's privileges on the migrated warehouse (idempotent:
    run it again after every migrate that adds a table; the deploy's migration step does)."""
    con = connect_url(args.url, application_name="totes-grant-loader")
    try:
        held = apply_grants(con, args.role, args.schema)
    finally:
        close(con)
    print(f"role {args.role} holds exactly the loader's privileges in schema {args.schema}:")
    for target, privileges in held.items():
        print(f"  {target:<34} {', '.join(sorted(privileges))}")
    return 0
