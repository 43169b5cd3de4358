"""``python -m totes warehouse ...``: the operator's door to the warehouse schema."""

from __future__ import annotations

from totes.db import connect_url
from totes.warehouse.migrations import migrate as apply_migrations


def migrate(args) -> int:
    """Apply the pending migrations to the database at ``--url``; safe to run repeatedly."""
    con = connect_url(args.url, application_name="totes-migrate")
    try:
        applied = apply_migrations(con)
    finally:
        con.close()
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("warehouse schema is up to date")
    return 0
