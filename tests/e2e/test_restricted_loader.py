"""The whole chain with the load connecting as a role without DDL rights (issue 16).

As on AWS: an OWNER role owns the warehouse schema and, in a step of its own, migrates it and
grants the loader role (``warehouse migrate``, ``warehouse grant-loader``); the load
function's secret holds only the LOADER. The schema is not ``public``, so every statement the
load runs must resolve through the ``search_path`` its connection sets (``WAREHOUSE_SCHEMA``).
The real snapshot, then simulated changes, must reach the warehouse exactly as with the owner
(the snapshot test's equality check, SQL over the source); then the loader can drop, alter,
truncate, delete and create nothing.

The snapshot's batches (at most 15,836 fact rows) stay below the fact bulk path's threshold,
so this run never takes the (DDL-using) bulk path that issue 16 removes elsewhere.
"""

from __future__ import annotations

from e2e_reference import expected_warehouse, source_state, warehouse_problems
from pg8000.exceptions import DatabaseError

from totes.db import connect
from totes.identifiers import quote
from totes.star.model import STAR_TABLES
from totes.warehouse.roles import LOADER_TABLE_PRIVILEGES
from totes_tools.cli import main as cli_main
from totes_tools.local.chain import LocalChain
from totes_tools.source.snapshot import load_snapshot
from totes_tools.warehouse.checksums import table_checksums

SCHEMA = "totes_wh"
INSUFFICIENT_PRIVILEGE = "42501"


def refused(con, statement: str) -> str | None:
    """None when the server refuses ``statement`` for lack of privilege, else what happened."""
    try:
        con.run(statement)
    except DatabaseError as exc:
        code = exc.args[0].get("C") if exc.args and isinstance(exc.args[0], dict) else None
        return None if code == INSUFFICIENT_PRIVILEGE else f"{statement}: {exc}"
    return f"{statement}: allowed"


def test_the_chain_loads_as_a_role_without_ddl_rights_exactly_as_the_owner_and_it_can_drop_nothing(
    snapshot_dir, snapshot_counts, source_db, warehouse_db, new_role, aws, new_stack_names,
    pg_connect, pg_cluster,
):  # fmt: skip
    owner = new_role(warehouse_db, "owner")
    loader = new_role(warehouse_db, "loader")
    admin = pg_connect(pg_cluster.admin.with_dbname(warehouse_db.dbname))
    admin.run(f"CREATE SCHEMA {quote(SCHEMA)} AUTHORIZATION {quote(owner.user)}")
    # The owner's step, before any load.
    assert cli_main(["warehouse", "migrate", "--url", owner.to_url(), "--schema", SCHEMA]) == 0
    grant = ["grant-loader", "--url", owner.to_url(), "--role", loader.user]
    assert cli_main(["warehouse", *grant, "--schema", SCHEMA]) == 0
    source = pg_connect(source_db)
    load_snapshot(source, snapshot_dir)
    chain = LocalChain(
        aws,
        new_stack_names("e2e"),
        source_db,
        loader,  # the load's secret: the loader only
        owner=owner,
        env={"WAREHOUSE_SCHEMA": SCHEMA},
    )
    chain.prepare()  # migrates as the owner: nothing left to do
    warehouse = connect(owner, search_path=SCHEMA)
    before = source_state(source)

    first = chain.run_cycle()

    assert first.ok, first.format()
    assert first.stages["ingest"].rows == snapshot_counts
    assert warehouse_problems(source, warehouse, expected_warehouse(before)) == []

    from totes_tools.source.simulator import Simulator

    simulator = Simulator(source, seed=7)
    for _ in range(40):
        simulator.step()
    after = source_state(source)

    second = chain.run_cycle()

    assert second.ok, second.format()
    assert warehouse_problems(source, warehouse, expected_warehouse(before, after)) == []
    assert admin.run(  # nothing landed outside the schema
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public'"
    ) == [[0]]

    # Connected as the load connects, the loader can change no structure and remove no row.
    checksums = table_checksums(warehouse)
    as_loader = connect(loader, search_path=SCHEMA)
    attempts = [f"CREATE TABLE {quote(SCHEMA)}.sneaky (i int)", "CREATE TABLE sneaky (i int)"]
    for table in LOADER_TABLE_PRIVILEGES:
        name = f"{quote(SCHEMA)}.{quote(table)}"
        attempts += [
            f"DROP TABLE {name}",
            f"ALTER TABLE {name} ADD COLUMN sneaky int",
            f"ALTER TABLE {name} RENAME TO sneaky",
            f"CREATE INDEX sneaky ON {name} ((1))",
            f"TRUNCATE {name}",
        ]
        if "DELETE" not in LOADER_TABLE_PRIVILEGES[table]:  # the park's queue only
            attempts.append(f"DELETE FROM {name}")  # noqa: S608
    for table in STAR_TABLES:
        attempts.append(f"ALTER TABLE {quote(table.name)} DISABLE TRIGGER ALL")
    problems = [p for p in (refused(as_loader, s) for s in attempts) if p]
    as_loader.close()
    assert problems == []
    assert {"etl_batch_ledger", *(t.name for t in STAR_TABLES)} <= {
        t for t, privileges in LOADER_TABLE_PRIVILEGES.items() if "DELETE" not in privileges
    }
    assert table_checksums(warehouse) == checksums
    warehouse.close()
