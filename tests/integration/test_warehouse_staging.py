"""Staging stores exactly what the CSV path (Arrow's CSV writer into ``COPY ... (FORMAT csv)``,
the staging before the binary format) stored, for the values where the two formats differ
most: NULLs beside empty strings, long and non-ASCII text, quotes and separators, numeric
scale and sign, milliseconds in times and timestamps, dates far from today."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest

from totes.identifiers import quote, quote_all
from totes.star.model import STAR_TABLES, StarColumn, StarTable
from totes.warehouse.staging import loaded_columns, stage, staging_name
from totes_tools.warehouse.csv_copy import csv_chunks

EDGE = StarTable(
    "edge_values",
    "dimension",
    (
        StarColumn("k", "INT", nullable=False),
        StarColumn("s", "VARCHAR"),
        StarColumn("i", "INT"),
        StarColumn("d", "DATE"),
        StarColumn("t", "TIME"),
        StarColumn("ts", "TIMESTAMP"),
        StarColumn("n", "NUMERIC(10,2)"),
        StarColumn("b", "BOOLEAN"),
    ),
    key="k",
)
ROWS = [
    (
        "a",
        1,
        dt.date(2024, 1, 2),
        36_000_123,
        dt.datetime(2024, 1, 2, 3, 4, 5, 678_000),
        "1.50",
        True,
    ),
    ("", None, dt.date(1, 1, 1), None, dt.datetime(1, 1, 1), None, False),
    (
        None,
        -(2**31),
        dt.date(9999, 12, 31),
        0,
        dt.datetime(9999, 12, 31, 23, 59, 59, 999_000),
        "-2.00",
        None,
    ),
    ('x"y,z\n\\N\t', 2**31 - 1, None, 86_399_999, None, "0.01", True),
    (
        "é漢字🎉" * 50,
        0,
        dt.date(1970, 1, 1),
        1,
        dt.datetime(1969, 12, 31, 23, 59, 59, 1_000),
        "99999999.99",
        False,
    ),
    ("L" * 200_000, 5, dt.date(1999, 12, 31), 500, dt.datetime(2000, 1, 1), "-99999999.99", True),
    (
        " ",
        7,
        dt.date(2000, 2, 29),
        86_399_000,
        dt.datetime(2000, 2, 29, 12, 0, 0, 1_000),
        "0.00",
        False,
    ),
]


def edge_table() -> pa.Table:
    columns = list(zip(*ROWS, strict=True))
    values = {
        "k": list(range(len(ROWS))),
        "s": columns[0],
        "i": columns[1],
        "d": columns[2],
        "t": columns[3],
        "ts": columns[4],
        "n": [None if v is None else Decimal(v) for v in columns[5]],
        "b": columns[6],
        "source_version": [dt.datetime(2024, 5, 6, 7, 8, 9, 123_000)] * len(ROWS),
    }
    return pa.Table.from_pydict(values, schema=EDGE.arrow_schema)


def csv_stored(con, table: StarTable, data: pa.Table) -> str:
    """What the CSV staging stored: a copy of the staging table filled by its CSV chunks (the
    staging's code before the binary format, kept for the bench's floor)."""
    copy = quote(f"csv_{table.name}")
    con.run(f"CREATE TEMP TABLE {copy} (LIKE {quote(staging_name(table))}) ON COMMIT DROP")
    con.run(
        f"COPY {copy} ({quote_all(loaded_columns(table))}) FROM STDIN WITH (FORMAT csv)",
        stream=csv_chunks(data, rows=3),
    )
    return copy


def rows_as_text(con, relation: str, table: StarTable) -> list[list[str]]:
    """Every row, each value as PostgreSQL's text (scale, milliseconds and all), in key order."""
    columns = ", ".join(f"{quote(c)}::text" for c in loaded_columns(table))
    return con.run(f"SELECT {columns} FROM {relation} ORDER BY {quote(table.key)}")  # noqa: S608


def test_binary_staging_stores_exactly_what_csv_staging_stored(warehouse_db, pg_connect):
    con = pg_connect(warehouse_db)
    data = edge_table()
    con.run("BEGIN")
    stage(con, EDGE, data)
    copy = csv_stored(con, EDGE, data)
    binary = rows_as_text(con, quote(staging_name(EDGE)), EDGE)
    assert binary == rows_as_text(con, copy, EDGE)
    assert len(binary) == len(ROWS)
    assert binary[1][1:3] == ["", None]  # an empty string is not NULL, a NULL stays NULL
    assert binary[0][4:7] == ["10:00:00.123", "2024-01-02 03:04:05.678", "1.50"]
    assert binary[6][6] == "0.00"
    con.run("ROLLBACK")


@pytest.mark.parametrize("table", STAR_TABLES, ids=lambda t: t.name)
def test_every_star_table_stages_as_csv_did(warehouse_db, pg_connect, table):
    """Every star table's staging table takes the binary rows of its processed schema: a NULL in
    every column, and a row of typical values from the synthetic batch."""
    from totes_tools.warehouse.synthetic import star_batch, with_calendar

    batch = with_calendar(star_batch(sales=3, purchases=3, payments_=3, seed=5))
    data = pa.concat_tables(
        [batch[table.name].slice(0, 3), pa.Table.from_pylist([{}], schema=table.arrow_schema)]
    )
    con = pg_connect(warehouse_db)
    con.run("BEGIN")
    stage(con, table, data)
    copy = csv_stored(con, table, data)
    order = ", ".join(f"{quote(c)}::text" for c in loaded_columns(table))
    stored = [
        sorted(con.run(f"SELECT {order} FROM {relation}"), key=repr)  # noqa: S608
        for relation in (quote(staging_name(table)), copy)
    ]
    assert stored[0] == stored[1]
    assert len(stored[0]) == data.num_rows
    con.run("ROLLBACK")
