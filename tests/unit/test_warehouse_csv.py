"""The CSV that load streams into ``COPY ... FROM STDIN`` and the synthetic calendar: pure
functions, checked without a database."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa

from totes.star.model import STAR_TABLES_BY_NAME
from totes.warehouse.staging import csv_chunks
from totes_tools.warehouse.synthetic import calendar


def test_csv_keeps_empty_strings_apart_from_nulls_and_keeps_milliseconds():
    table = pa.table(
        {
            "s": pa.array(["a", "", None, 'x"y,z'], pa.string()),
            "t": pa.array([36_000_123, None, 0, 1], pa.time32("ms")),
            "ts": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 678_000)] * 4, pa.timestamp("ms")),
            "n": pa.array([Decimal("1.50"), None, Decimal("-2.00"), Decimal("0.01")]).cast(
                pa.decimal128(10, 2)
            ),
            "b": pa.array([True, False, None, True]),
        }
    )
    assert b"".join(csv_chunks(table)).decode().splitlines() == [
        '"a",10:00:00.123,2024-01-02 03:04:05.678,1.50,true',
        '"",,2024-01-02 03:04:05.678,,false',
        ",00:00:00.000,2024-01-02 03:04:05.678,-2.00,",
        '"x""y,z",00:00:00.001,2024-01-02 03:04:05.678,0.01,true',
    ]


def test_csv_comes_in_bounded_chunks_of_whole_rows():
    table = pa.table({"i": pa.array(range(10), pa.int32())})
    chunks = list(csv_chunks(table, rows=4))
    assert chunks == [b"0\n1\n2\n3\n", b"4\n5\n6\n7\n", b"8\n9\n"]


def test_the_synthetic_calendar_follows_the_warehouse_conventions():
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(400)]
    table = calendar(pa.array([*days[::-1], None], pa.date32()))
    assert table.schema == STAR_TABLES_BY_NAME["dim_date"].arrow_schema
    rows = table.drop_columns(["source_version"]).to_pylist()
    assert rows == [
        {
            "date_id": d,
            "year": d.year,
            "month": d.month,
            "day": d.day,
            "day_of_week": d.isoweekday(),
            "day_name": d.strftime("%A"),
            "month_name": d.strftime("%B"),
            "quarter": (d.month - 1) // 3 + 1,
        }
        for d in days
    ]
