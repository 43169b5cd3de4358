"""The loader's role: ``warehouse grant-loader`` (run by the owner after migrate) leaves a role
exactly the load's privileges (docs/deploy.md, Warehouse roles), read back from the server,
memberships and PUBLIC included; it refuses a role that would keep DDL rights.

The end-to-end proof that the whole chain loads with such a role, and that the role can drop,
alter, truncate, delete and create nothing, is tests/e2e/test_restricted_loader.py."""

from __future__ import annotations

import pytest

from totes.errors import SchemaDrift
from totes.identifiers import quote
from totes.star.model import STAR_TABLES
from totes.warehouse.migrations import migrate
from totes.warehouse.roles import (
    LOADER_TABLE_PRIVILEGES,
    GrantRefused,
    effective_privileges,
    grant_loader,
)
from totes_tools.cli import main as cli_main

STAR = {t.name for t in STAR_TABLES}
SEQUENCES = {
    "sequence:fact_payment_payment_record_id_seq",
    "sequence:fact_purchase_order_purchase_record_id_seq",
    "sequence:fact_sales_order_sales_record_id_seq",
}


@pytest.fixture
def owner_con(warehouse_db, pg_connect):
    con = pg_connect(warehouse_db)
    migrate(con)
    return con


def test_grant_loader_leaves_the_role_exactly_the_loaders_privileges_and_is_idempotent(
    warehouse_db, owner_con, new_role, capsys
):
    loader = new_role(warehouse_db)
    # Before: privileges the loader must not keep, and a write PUBLIC must not hold.
    owner_con.run(f"GRANT ALL ON fact_sales_order, etl_batch_ledger TO {quote(loader.user)}")
    owner_con.run(f"GRANT CREATE ON SCHEMA public TO {quote(loader.user)}")
    owner_con.run("GRANT DELETE, TRUNCATE ON dim_staff TO PUBLIC")
    url = warehouse_db.to_url()

    for _ in range(2):  # idempotent: the second run changes nothing and says the same
        assert cli_main(["warehouse", "grant-loader", "--url", url, "--role", loader.user]) == 0
        out = capsys.readouterr().out
        assert out.startswith(
            f"role {loader.user} holds exactly the loader's privileges in schema public:\n"
        )
        assert "  fact_sales_order                   INSERT, SELECT, UPDATE\n" in out
        held = effective_privileges(owner_con, loader.user, "public")
        assert held == {
            **{name: {"SELECT", "INSERT", "UPDATE"} for name in STAR},
            # RETURNING and ON CONFLICT of the claim need SELECT; so does the marker's read
            "etl_batch_ledger": {"SELECT", "INSERT", "UPDATE"},
            "etl_deleted_keys": {"SELECT", "INSERT", "UPDATE"},
            # the park is a queue: released facts are moved out
            "etl_parked_fact_sales_order": {"SELECT", "INSERT", "DELETE"},
            "etl_parked_fact_purchase_order": {"SELECT", "INSERT", "DELETE"},
            "etl_parked_fact_payment": {"SELECT", "INSERT", "DELETE"},
            "schema_migrations": {"SELECT"},
            **{name: {"USAGE"} for name in SEQUENCES},
            "schema:public": {"USAGE"},
            "database": {"CONNECT", "TEMPORARY"},
        }
    [[public_writes]] = owner_con.run(
        "SELECT has_table_privilege('public', 'dim_staff', 'DELETE')"
        " OR has_table_privilege('public', 'dim_staff', 'TRUNCATE')"
    )
    assert public_writes is False


def test_every_table_the_migrations_create_has_a_loader_decision(owner_con):
    """A migration adding a table must say what the loader may do with it (roles.py): the
    loader otherwise gets nothing on it, and a load writing there would fail."""
    tables = {
        name
        for [name] in owner_con.run(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    assert tables == set(LOADER_TABLE_PRIVILEGES)


def test_grant_loader_refuses_a_role_that_would_keep_ddl_rights(
    warehouse_db, owner_con, new_role, pg_cluster
):
    member_of_owner = new_role(warehouse_db, "ownerish")
    owner_con.run(f"GRANT {quote(pg_cluster.admin.user)} TO {quote(member_of_owner.user)}")
    with pytest.raises(GrantRefused, match=r"is or acts as .*the owner of public\.dim_"):
        grant_loader(owner_con, member_of_owner.user, "public")

    noinherit = new_role(warehouse_db, "setrole")  # may still SET ROLE to the owner
    owner_con.run(f"ALTER ROLE {quote(noinherit.user)} NOINHERIT")
    owner_con.run(f"GRANT {quote(pg_cluster.admin.user)} TO {quote(noinherit.user)}")
    with pytest.raises(GrantRefused, match=r"is or acts as .*the owner of public\.dim_"):
        grant_loader(owner_con, noinherit.user, "public")

    with pytest.raises(GrantRefused, match="is a superuser"):
        grant_loader(owner_con, pg_cluster.admin.user, "public")

    with pytest.raises(GrantRefused, match="role 'nobody_here' does not exist"):
        grant_loader(owner_con, "nobody_here", "public")


def test_a_privilege_held_through_a_membership_is_named_and_nothing_changes(
    warehouse_db, owner_con, new_role
):
    loader = new_role(warehouse_db)
    group = new_role(warehouse_db, "writers")
    owner_con.run(f"GRANT DELETE ON fact_payment TO {quote(group.user)}")
    owner_con.run(f"GRANT {quote(group.user)} TO {quote(loader.user)}")

    with pytest.raises(GrantRefused) as refused:
        grant_loader(owner_con, loader.user, "public")

    assert "beyond them {'fact_payment': ['DELETE']}" in str(refused.value)
    held = effective_privileges(owner_con, loader.user, "public")
    assert held["dim_staff"] == set()  # rolled back: nothing granted


def test_grant_loader_and_migrate_refuse_a_schema_that_is_not_there(
    warehouse_db, pg_connect, new_role
):
    con = pg_connect(warehouse_db)
    loader = new_role(warehouse_db)
    with pytest.raises(SchemaDrift, match=r"schema 'wh' does not exist: create it"):
        migrate(con, "wh")
    with pytest.raises(GrantRefused, match=r"schema 'public' lacks table\(s\) dim_date, "):
        grant_loader(con, loader.user, "public")
