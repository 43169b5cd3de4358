# ruff: noqa: S608  (SQL identifiers below come from the model only)
"""What the ingest tests share: settings, reading a raw batch back from the lake alone, and the
row versions of the source and of the lake."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa

from totes.identifiers import quote
from totes.lake import Lake, Manifest
from totes.settings import IngestSettings
from totes.source.model import TABLES, TABLES_BY_NAME


def settings_for(stack, **overrides) -> IngestSettings:
    base = IngestSettings(
        raw_bucket=stack.raw_bucket,
        source_secret_id=stack.source_secret,
        max_batch_rows=1_000_000,
        chunk_rows=100_000,
    )
    return replace(base, **overrides)


def batch_tables(lake: Lake, manifest: Manifest) -> dict[str, pa.Table]:
    """The batch's rows per source table, read back from the lake using the manifest alone."""
    out = {}
    for table in manifest.tables:
        if table in TABLES_BY_NAME:
            parts = [lake.get_table(f.key) for f in manifest.files_for(table)]
            out[table] = pa.concat_tables(parts)
    return out


def as_model(table: pa.Table, name: str) -> pa.Table:
    """A raw lake table as the model's columns and types (the side column dropped)."""
    model = TABLES_BY_NAME[name]
    return table.select(model.column_names).cast(model.arrow_schema)


def ids(tables: dict[str, pa.Table]) -> dict[str, set[int]]:
    return {
        name: set(t.column(TABLES_BY_NAME[name].key).to_pylist())
        for name, t in tables.items()
        if t.num_rows
    }


def versions_in_lake(lake: Lake) -> set[tuple[str, int, object]]:
    seen = set()
    for key in lake.manifest_keys():
        for name, t in batch_tables(lake, lake.get_manifest(key)).items():
            key_col = TABLES_BY_NAME[name].key
            seen |= {
                (name, r[key_col], r["last_updated"])
                for r in t.select([key_col, "last_updated"]).to_pylist()
            }
    return seen


def versions_in_source(con) -> set[tuple[str, int, object]]:
    return {
        (t.name, row[0], row[1])
        for t in TABLES
        for row in con.run(f"SELECT {quote(t.key)}, last_updated FROM {quote(t.name)}")
    }


def insert_sales_orders(con, n: int) -> list[int]:
    """``n`` new sales orders in one statement: they share one last_updated (a tie)."""
    rows = con.run(
        "INSERT INTO sales_order (design_id, staff_id, counterparty_id, units_sold, unit_price, "
        "currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id, "
        "created_at, last_updated) "
        "SELECT 1 + g % 400, 1 + g % 20, 1 + g % 20, 1000 + g, 2.50, 1 + g % 3, "
        "'2024-12-01', '2024-12-02', 1 + g % 30, localtimestamp, localtimestamp "
        "FROM generate_series(1, CAST(:n AS int)) g RETURNING sales_order_id",
        n=n,
    )
    return [r[0] for r in rows]
