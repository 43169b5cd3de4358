"""Load throughput, measured on a synthetic batch of ``fact_sales_order`` rows.

``python -m totes_tools.warehouse.bench --scale 1000000`` (on an embedded PostgreSQL unless
``--url`` names an empty database it may fill and empty) times, in the same run and database:

1. ``raw_copy``: the batch's CSV stream ``COPY``-ed into an empty table with no keys (the floor);
2. ``merge``: ``load_batch`` of the whole batch (staging, dimension upserts, the set-based
   reference check, fact insert with every index maintained) into an empty warehouse;
3. ``redelivery``: the same rows again under another batch id (every fact row already stored);
4. ``incremental``: ``--increment`` new fact rows (with the whole dimension set) on top of the
   stored batch (the same path);
5. ``row_by_row_insert``: one autocommitted ``INSERT`` per row through pg8000, on a sample.

It prints one JSON document of seconds and rows/s. Not part of the test suite: the numbers
depend on the machine. ``measure`` is what a wider benchmark (``make bench``) can call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pyarrow as pa

from totes.db import DbCredentials, connect
from totes.star.model import FACT_SALES_ORDER, SOURCE_VERSION, STAR_TABLES
from totes.warehouse import ledger, merge, staging
from totes.warehouse.migrations import migrate
from totes_tools.warehouse.csv_copy import csv_chunks
from totes_tools.warehouse.synthetic import (
    dimensions,
    processed_manifest,
    sales_orders,
    with_calendar,
)

_WAREHOUSE_TABLES = ", ".join([*(t.name for t in STAR_TABLES), ledger.LEDGER])


def synthetic_batch(fact_rows: int, seed: int = 7) -> dict[str, pa.Table]:
    dims = dimensions(staff=50, locations=100, designs=500, counterparties=200)
    return with_calendar({**dims, "fact_sales_order": sales_orders(fact_rows, dims, seed=seed)})


def _rate(rows: int, seconds: float) -> dict:
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _raw_copy(con, facts: pa.Table) -> float:
    defs = ", ".join(
        f"{c.name} {staging.PG_TYPE.get(c.sql_type, c.sql_type)}" for c in FACT_SALES_ORDER.columns
    )
    con.run("DROP TABLE IF EXISTS bench_raw_copy")
    con.run(f"CREATE TABLE bench_raw_copy ({defs}, {SOURCE_VERSION} TIMESTAMP(3))")
    columns = ", ".join([*FACT_SALES_ORDER.column_names, SOURCE_VERSION])
    seconds = _timed(
        lambda: con.run(
            f"COPY bench_raw_copy ({columns}) FROM STDIN WITH (FORMAT csv)",
            stream=csv_chunks(facts),
        )
    )
    con.run("DROP TABLE bench_raw_copy")
    return seconds


def _row_by_row(con, batch: dict[str, pa.Table], sample: int) -> float:
    """The naive baseline: dimensions merged first (not timed), then one INSERT per fact."""
    dims = {name: table for name, table in batch.items() if name != "fact_sales_order"}
    merge.load_batch(con, processed_manifest("bench-dims", dims), dims)
    rows = batch["fact_sales_order"].slice(0, sample).to_pylist()
    names = [*FACT_SALES_ORDER.column_names, SOURCE_VERSION]
    sql = (
        f"INSERT INTO fact_sales_order ({', '.join(names)}, loaded_batch_id)"  # noqa: S608  # nosec B608
        f" VALUES ({', '.join(':' + n for n in names)}, 'bench-rows')"
        f" ON CONFLICT (sales_order_id, last_updated_date, last_updated_time) DO NOTHING"
    )

    def insert_all():
        for row in rows:
            con.run(sql, **row)

    return _timed(insert_all)


def measure(
    creds: DbCredentials,
    fact_rows: int = 1_000_000,
    sample_rows: int = 5_000,
    increment: int = 10_000,
) -> dict:
    """Every measurement above on the (empty or bench-owned) database ``creds`` names."""
    batch = synthetic_batch(fact_rows)
    total = sum(t.num_rows for t in batch.values())
    con = connect(creds, application_name="totes-bench-load", timeout=3600)
    try:
        migrate(con)
        con.run(f"TRUNCATE {_WAREHOUSE_TABLES} RESTART IDENTITY CASCADE")
        [[version]] = con.run("SHOW server_version")
        results: dict = {
            "fact_rows": fact_rows,
            "batch_rows": total,
            "postgres": version,
            "raw_copy": _rate(fact_rows, _raw_copy(con, batch["fact_sales_order"])),
        }
        con.run(f"TRUNCATE {_WAREHOUSE_TABLES} RESTART IDENTITY CASCADE")
        manifest = processed_manifest("bench-merge", batch)
        results["merge"] = _rate(total, _timed(lambda: merge.load_batch(con, manifest, batch)))
        again = processed_manifest("bench-redelivery", batch)
        results["redelivery"] = _rate(total, _timed(lambda: merge.load_batch(con, again, batch)))
        con.run("ANALYZE fact_sales_order")
        dims = {name: table for name, table in batch.items() if name != "fact_sales_order"}
        new = with_calendar(
            {
                **dims,
                "fact_sales_order": sales_orders(increment, batch, seed=8, first_id=fact_rows + 1),
            }
        )
        more = processed_manifest("bench-incremental", new)
        rows = sum(t.num_rows for t in new.values())
        results["incremental"] = _rate(rows, _timed(lambda: merge.load_batch(con, more, new)))
        con.run(f"TRUNCATE {_WAREHOUSE_TABLES} RESTART IDENTITY CASCADE")
        sample = min(sample_rows, fact_rows)
        results["row_by_row_insert"] = _rate(sample, _row_by_row(con, batch, sample))
        con.run(f"TRUNCATE {_WAREHOUSE_TABLES} RESTART IDENTITY CASCADE")
        return results
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m totes_tools.warehouse.bench", description=__doc__
    )
    parser.add_argument("--scale", type=int, default=1_000_000, help="fact rows in the batch")
    parser.add_argument("--sample", type=int, default=5_000, help="rows for the INSERT loop")
    parser.add_argument("--increment", type=int, default=10_000, help="incremental fact rows")
    parser.add_argument("--url", default=None, help="an empty database (default: embedded)")
    args = parser.parse_args(argv)
    if args.url:
        results = measure(DbCredentials.from_url(args.url), args.scale, args.sample, args.increment)
    else:
        from totes_tools.local.postgres import embedded_postgres

        with embedded_postgres() as cluster, cluster.database("bench") as creds:
            results = measure(creds, args.scale, args.sample, args.increment)
    json.dump(results, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
