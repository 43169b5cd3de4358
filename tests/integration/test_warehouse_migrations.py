"""The warehouse schema: built by numbered migrations exactly as the star model (and so
warehouse.md) says, applied once however often and however concurrently migrate runs."""

from __future__ import annotations

import threading
from datetime import timedelta

import pyarrow as pa
import pytest

from totes.identifiers import quote, quote_all
from totes.star.model import (
    DELETED_KEYS,
    FACTS,
    SOURCE_VERSION,
    STAR_TABLES,
    WAREHOUSE_LINEAGE,
)
from totes.warehouse import migrations
from totes.warehouse.deletes import TRACKED_TABLES
from totes.warehouse.merge import load_batch
from totes.warehouse.migrations import available, migrate
from totes.warehouse.staging import loaded_columns, stage, staging_name
from totes_tools.cli import main as cli_main
from totes_tools.warehouse.checksums import table_checksums
from totes_tools.warehouse.synthetic import EPOCH, deleted_keys, processed_manifest, star_batch

# Migration 0007 dropped the B-trees on references to the small dimensions (3 to 30 rows):
# only these dimensions' references keep one (docs/load.md "Fact indexes").
B_TREE_DIMENSIONS = {"dim_design", "dim_transaction"}


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


def _server_version(con) -> int:
    [[version]] = con.run("SELECT current_setting('server_version_num')::int")
    return int(version)


def test_every_fact_reference_is_declared_checked_by_the_load_and_indexed(warehouse_db, pg_connect):
    """Migration 0006: on PostgreSQL >= 18 every fact reference stays a declared foreign key,
    NOT ENFORCED (the load checks it); below 18 the constraints are gone. On both, the column's
    comment names the dimension it references, and an index leads with the column unless it
    references a small dimension (0007)."""
    con = pg_connect(warehouse_db)
    migrate(con)
    expected = {(f.name, column, dim) for f in FACTS for column, dim in f.references}
    fks = con.run(
        "SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text"
        " FROM pg_constraint c JOIN pg_attribute a"
        " ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
        " WHERE c.contype = 'f'"
    )
    if _server_version(con) >= 180000:
        assert {tuple(row) for row in fks} == expected
        enforced = "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conenforced"
        assert con.run(enforced) == [[0]]
    else:
        assert fks == []
    comments = {
        (table, column, comment)
        for table, column, comment in con.run(
            "SELECT c.relname, a.attname, col_description(c.oid, a.attnum) FROM pg_class c"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0"
            " WHERE c.relname = ANY(:facts) AND col_description(c.oid, a.attnum) IS NOT NULL",
            facts=[f.name for f in FACTS],
        )
    }
    assert {(t, c) for t, c, _ in comments} == {(t, c) for t, c, _ in expected}
    for table, column, comment in comments:
        fact = next(f for f in FACTS if f.name == table)
        dim = dict(fact.references)[column]
        assert comment.startswith(f"references {dim}("), (table, column, comment)
    indexed = {
        (table, column)
        for table, column in con.run(
            "SELECT i.indrelid::regclass::text, a.attname FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        )
    }
    assert {(t, c) for t, c, d in expected if d == "dim_date" or d in B_TREE_DIMENSIONS} == {
        (t, c) for t, c in indexed if (t, c) in {(t, c) for t, c, _ in expected}
    }


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


def test_fact_date_references_are_brin_indexed_large_dimensions_b_tree_and_small_ones_not(
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
        if dim == "dim_date" or dim in B_TREE_DIMENSIONS
    }


def _load_as_at_0004(con, tables: dict[str, pa.Table]) -> None:
    """Write a batch as the loader of migration 0004 did: the processed columns and
    ``loaded_batch_id`` (no capture, no marks), and its ledger row."""
    con.run("BEGIN")
    for table in STAR_TABLES:
        stage(con, table, tables[table.name])
        cols = table.column_names if table.name == "dim_date" else loaded_columns(table)
        batch = [] if table.name == "dim_date" else ["'legacy'"]
        con.run(
            f"INSERT INTO {quote(table.name)} ({quote_all(cols)}"  # noqa: S608
            f"{', loaded_batch_id' if batch else ''})"
            f" SELECT DISTINCT {quote_all(cols)}{', ' + batch[0] if batch else ''}"
            f" FROM {quote(staging_name(table))}"
        )
    con.run(
        "INSERT INTO etl_batch_ledger (batch_id, window_hi, row_counts)"
        " VALUES ('legacy', '2024-12-31', '{}')"
    )
    con.run("COMMIT")


def test_a_warehouse_holding_data_at_0004_migrates_to_legacy_rows_that_captures_overtake(
    warehouse_db, pg_connect, monkeypatch
):
    """Rows stored before 0005 keep their content and take capture 0, unmarked; a captured
    batch then moves a dimension row even with an older stamp, and deletes mark legacy rows."""
    con = pg_connect(warehouse_db)
    monkeypatch.setattr(migrations, "available", lambda: [m for m in available() if m.version <= 4])
    migrate(con)
    monkeypatch.undo()
    legacy = star_batch(sales=20, purchases=10, payments_=10, seed=3)
    _load_as_at_0004(con, legacy)
    before = table_checksums(con)

    assert migrate(con)[0] == "0005_capture_order_and_deletes"

    assert table_checksums(con) == before
    lineage = {
        t.name: con.run(
            f"SELECT capture_seq, source_deleted_at, count(*) FROM {t.name} GROUP BY 1, 2"  # noqa: S608
        )
        for t in TRACKED_TABLES
    }
    assert lineage == {t.name: [[0, None, legacy[t.name].num_rows]] for t in TRACKED_TABLES}
    assert con.run("SELECT batch_id, capture_seq FROM etl_batch_ledger") == [["legacy", 0]]

    staff = legacy["dim_staff"].slice(0, 1).to_pylist()
    staff[0].update(first_name="Captured", source_version=EPOCH - timedelta(days=1))
    tables = {
        "dim_staff": pa.Table.from_pylist(staff, schema=legacy["dim_staff"].schema),
        DELETED_KEYS: deleted_keys(fact_sales_order=[1]),
    }
    load_batch(con, processed_manifest("c1", tables, capture_seq=7), tables)
    assert con.run("SELECT first_name, capture_seq FROM dim_staff WHERE staff_id = 1") == [
        ["Captured", 7]
    ]
    assert con.run(
        "SELECT sales_order_id, capture_seq, source_deleted_at IS NOT NULL FROM fact_sales_order"
        " WHERE sales_order_id <= 2 ORDER BY 1"
    ) == [[1, 0, True], [2, 0, False]]


def test_every_fact_has_a_park_with_the_staged_columns_and_the_batch_and_capture(
    warehouse_db, pg_connect
):
    con = pg_connect(warehouse_db)
    migrate(con)
    for fact in FACTS:
        columns = [row[:3] for row in _columns(con, f"etl_parked_{fact.name}")]
        # name, type, nullable: after the record id, the staged columns as in the fact table
        staged = [row[:3] for row in _expected_columns(fact)[1 : 1 + len(loaded_columns(fact))]]
        assert columns == [
            *staged,
            ("batch_id", "character varying", False),
            ("capture_seq", "bigint", False),
        ], fact.name
