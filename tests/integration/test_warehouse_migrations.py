"""The warehouse schema: built by numbered migrations exactly as the star model (and so
warehouse.md) says, applied once however often and however concurrently migrate runs."""

from __future__ import annotations

import threading

import pytest

from totes.star.model import FACTS, SOURCE_VERSION, STAR_TABLES, WAREHOUSE_LINEAGE
from totes.warehouse.migrations import available, migrate
from totes_tools.cli import main as cli_main

_PG_TYPES = {
    "DATE": "date",
    "TIME": "time without time zone",
    "INT": "integer",
    "VARCHAR": "character varying",
    "NUMERIC(10,2)": "numeric",
    "BOOLEAN": "boolean",
}


def _columns(con, table: str) -> list[tuple]:
    return [
        tuple(row)
        for row in con.run(
            "SELECT column_name, data_type, is_nullable = 'YES', numeric_precision,"
            " numeric_scale, datetime_precision FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = :t ORDER BY ordinal_position",
            t=table,
        )
    ]


def _expected_columns(table) -> list[tuple]:
    out = []
    if table.record_id:
        out.append((table.record_id, "integer", False, 32, 0, None))
    for c in table.columns:
        pg = _PG_TYPES[c.sql_type]
        precision, scale = {"integer": (32, 0), "numeric": (10, 2)}.get(pg, (None, None))
        fractional = 3 if pg == "time without time zone" else (0 if pg == "date" else None)
        out.append((c.name, pg, c.nullable, precision, scale, fractional))
    if table.name != "dim_date":
        out.append((SOURCE_VERSION, "timestamp without time zone", False, None, None, 3))
        out.append(("loaded_batch_id", "character varying", False, None, None, None))
        # Later lineage columns were added by a migration, so they follow loaded_batch_id.
        for stamp in table.lineage[1:]:
            out.append((stamp, "timestamp without time zone", False, None, None, 3))
    if table.tracked:
        pg_lineage = {
            "BIGINT": ("bigint", False, 64, 0, None),
            "TIMESTAMP": ("timestamp without time zone", True, None, None, 6),
        }
        out.extend((name, *pg_lineage[sql_type]) for name, sql_type in WAREHOUSE_LINEAGE)
    return out


def test_migrations_build_every_star_table_with_the_models_columns(warehouse_db, pg_connect):
    con = pg_connect(warehouse_db)
    migrate(con)
    for table in STAR_TABLES:
        assert _columns(con, table.name) == _expected_columns(table), table.name


def test_every_fact_reference_is_an_enforced_foreign_key_with_an_index(warehouse_db, pg_connect):
    con = pg_connect(warehouse_db)
    migrate(con)
    found = {
        (table, column, target)
        for table, column, target in con.run(
            "SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text"
            " FROM pg_constraint c JOIN pg_attribute a"
            " ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
            " WHERE c.contype = 'f'"
        )
    }
    expected = {(f.name, column, dim) for f in FACTS for column, dim in f.references}
    assert found == expected
    indexed = {
        (table, column)
        for table, column in con.run(
            "SELECT i.indrelid::regclass::text, a.attname FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        )
    }
    assert {(t, c) for t, c, _ in expected} <= indexed


def test_each_fact_version_is_unique(warehouse_db, pg_connect):
    con = pg_connect(warehouse_db)
    migrate(con)
    uniques = {
        (table, tuple(columns.split(",")))
        for table, columns in con.run(
            "SELECT c.conrelid::regclass::text, string_agg(a.attname, ',' ORDER BY k.n)"
            " FROM pg_constraint c, unnest(c.conkey) WITH ORDINALITY AS k(attnum, n),"
            " pg_attribute a WHERE c.contype = 'u' AND a.attrelid = c.conrelid"
            " AND c.connamespace = 'public'::regnamespace"
            " AND a.attnum = k.attnum GROUP BY c.oid, c.conrelid"
        )
    }
    assert uniques == {(f.name, (f.key, "last_updated_date", "last_updated_time")) for f in FACTS}


def test_a_second_migrate_applies_nothing(warehouse_db, pg_connect):
    con = pg_connect(warehouse_db)
    names = [f"{m.version:04d}_{m.name}" for m in available()]
    assert migrate(con) == names
    assert migrate(con) == []
    assert con.run("SELECT version, name FROM schema_migrations ORDER BY version") == [
        [m.version, m.name] for m in available()
    ]


def test_concurrent_migrations_apply_each_file_once(warehouse_db, pg_connect):
    connections = [pg_connect(warehouse_db) for _ in range(4)]
    barrier = threading.Barrier(len(connections))
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run(con):
        barrier.wait()
        try:
            results.append(migrate(con))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(con,)) for con in connections]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results, key=len) == [
        [],
        [],
        [],
        [f"{m.version:04d}_{m.name}" for m in available()],
    ]
    assert connections[0].run("SELECT count(*) FROM schema_migrations") == [[len(available())]]


def test_a_failing_migration_leaves_no_trace(warehouse_db, pg_connect, monkeypatch):
    from totes.warehouse import migrations

    broken = [*available(), migrations.Migration(9999, "broken", "CREATE TABLE x (); SELECT 1/0")]
    monkeypatch.setattr(migrations, "available", lambda: broken)
    con = pg_connect(warehouse_db)
    with pytest.raises(Exception, match="division by zero"):
        migrate(con)
    assert con.run("SELECT to_regclass('dim_date'), to_regclass('schema_migrations')") == [
        [None, None]
    ]


def test_the_migrate_command_reports_what_it_applied(warehouse_db, capsys):
    url = warehouse_db.to_url()
    assert cli_main(["warehouse", "migrate", "--url", url]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"applied {m.version:04d}_{m.name}" for m in available()
    ]
    assert cli_main(["warehouse", "migrate", "--url", url]) == 0
    assert capsys.readouterr().out == "warehouse schema is up to date\n"


def test_fact_date_references_are_brin_indexed_and_the_other_references_b_tree(
    warehouse_db, pg_connect
):
    con = pg_connect(warehouse_db)
    migrate(con)
    methods = {
        (table, column): method
        for table, column, method in con.run(
            "SELECT i.indrelid::regclass::text, a.attname, am.amname"
            " FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam"
            " WHERE i.indrelid::regclass::text LIKE 'fact%' AND NOT i.indisunique"
        )
    }
    assert methods == {
        (f.name, column): "brin" if dim == "dim_date" else "btree"
        for f in FACTS
        for column, dim in f.references
    }
