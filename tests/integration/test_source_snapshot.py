# ruff: noqa: S608  (SQL identifiers below come from the model only)
"""The real snapshot loads into a fresh database with the README's row counts, exact money,
real nulls, every foreign key holding, and sequences ready for new rows."""

from __future__ import annotations

import shutil
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from totes.identifiers import quote
from totes.source.model import TABLES
from totes_tools.source.snapshot import SnapshotMismatch, load_snapshot, read_snapshot


@pytest.fixture
def loaded(source_db, pg_connect, snapshot_dir):
    con = pg_connect(source_db)
    counts = load_snapshot(con, snapshot_dir)
    return con, counts


def _count(con, sql):
    return con.run(sql)[0][0]


def test_snapshot_loads_with_the_readme_row_counts(loaded, snapshot_counts):
    con, counts = loaded
    in_db = {t.name: _count(con, f"SELECT count(*) FROM {quote(t.name)}") for t in TABLES}
    assert counts == snapshot_counts
    assert in_db == snapshot_counts


def test_every_foreign_key_holds_and_ids_are_kept(loaded, snapshot_counts):
    con, _ = loaded
    dangling = {}
    for table in TABLES:
        for fk in table.foreign_keys:
            dangling[table.name, fk.column] = _count(
                con,
                f"SELECT count(*) FROM {quote(table.name)} s"
                f" WHERE s.{quote(fk.column)} IS NOT NULL "
                f"AND NOT EXISTS (SELECT 1 FROM {quote(fk.table)} d "
                f"WHERE d.{quote(fk.ref_column)} = s.{quote(fk.column)})",
            )
    assert set(dangling.values()) == {0}
    ids = {
        t.name: con.run(f"SELECT min({quote(t.key)}), max({quote(t.key)}) FROM {quote(t.name)}")[0]
        for t in TABLES
    }
    assert ids == {name: [1, n] for name, n in snapshot_counts.items()}


def test_readme_facts_survive_loading_nulls_updates_and_one_transaction_per_order(loaded):
    con, _ = loaded
    facts = {
        "address_line_2 nulls": _count(
            con, "SELECT count(*) FROM address WHERE address_line_2 IS NULL"
        ),
        "district nulls": _count(con, "SELECT count(*) FROM address WHERE district IS NULL"),
        "payments updated": _count(
            con, "SELECT count(*) FROM payment WHERE last_updated > created_at"
        ),
        "sale transactions": _count(
            con,
            "SELECT count(*) FROM transaction WHERE transaction_type = 'SALE' "
            "AND sales_order_id IS NOT NULL AND purchase_order_id IS NULL",
        ),
        "purchase transactions": _count(
            con,
            "SELECT count(*) FROM transaction WHERE transaction_type = 'PURCHASE' "
            "AND purchase_order_id IS NOT NULL AND sales_order_id IS NULL",
        ),
        "currencies": [r[0] for r in con.run("SELECT currency_code FROM currency ORDER BY 1")],
        "small-table stamp": str(con.run("SELECT DISTINCT created_at FROM currency")[0][0]),
    }
    assert facts == {
        "address_line_2 nulls": 20,
        "district nulls": 14,
        "payments updated": 9_648,
        "sale transactions": 11_187,
        "purchase transactions": 4_649,
        "currencies": ["EUR", "GBP", "USD"],
        "small-table stamp": "2022-11-03 14:20:49.962000",
    }


def test_money_is_exact_cents_matching_the_float_export(loaded, snapshot_dir):
    con, _ = loaded
    exported = pq.read_table(
        snapshot_dir / "payment.parquet", columns=["payment_id", "payment_amount"]
    )
    expected = {
        pid: Decimal(f"{amount:.2f}")
        for pid, amount in zip(*(exported.column(i).to_pylist() for i in range(2)), strict=True)
    }
    stored = dict(con.run("SELECT payment_id, payment_amount FROM payment"))
    assert stored == expected


def test_new_rows_get_ids_past_the_loaded_ones(loaded, snapshot_counts):
    con, _ = loaded
    new_id = con.run(
        "INSERT INTO currency (currency_code, last_updated) VALUES ('CHF', now()) "
        "RETURNING currency_id"
    )[0][0]
    assert new_id == snapshot_counts["currency"] + 1


def _broken_copy(snapshot_dir, tmp_path, table, transform):
    target = tmp_path / "snap"
    shutil.copytree(snapshot_dir, target, ignore=shutil.ignore_patterns("README*"))
    path = target / f"{table}.parquet"
    path.chmod(0o644)
    pq.write_table(transform(pq.read_table(path)), path)
    return target


@pytest.mark.parametrize(
    ("table", "transform", "message"),
    [
        (
            "staff",
            lambda t: t.drop_columns(["email_address"]),
            "snapshot file staff.parquet: column 'email_address' is missing",
        ),
        (
            "currency",
            lambda t: t.append_column("rate", pa.array([1.0] * t.num_rows)),
            "snapshot file currency.parquet: column 'rate' is not a column of table currency",
        ),
        (
            "sales_order",
            lambda t: t.set_column(
                t.schema.get_field_index("units_sold"),
                "units_sold",
                pa.array([1.5] * t.num_rows),
            ),
            "snapshot file sales_order.parquet: column 'units_sold' holds fractional values",
        ),
        (
            "payment_type",
            lambda t: t.set_column(
                t.schema.get_field_index("payment_type_name"),
                "payment_type_name",
                pa.array(["REFUND"] * t.num_rows),
            ),
            "snapshot file payment_type.parquet: column 'payment_type_name' holds values "
            "outside enum PaymentTypeName",
        ),
    ],
)
def test_a_file_that_does_not_match_the_schema_is_named_with_its_column(
    snapshot_dir, tmp_path, table, transform, message
):
    broken = _broken_copy(snapshot_dir, tmp_path, table, transform)
    with pytest.raises(SnapshotMismatch) as err:
        read_snapshot(broken)
    assert str(err.value).startswith(message)
