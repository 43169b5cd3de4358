"""``warehouse verify`` compares digests computed on two sides: in SQL by the warehouse, and
in this process from the remodelled Arrow rows. They agree only if both write the same text
for every value: here every star column type, with the values most likely to be written
differently (NULL next to the empty string, separators inside text, multi-byte characters,
negative and zero money, midnight and whole seconds, year 1 and 9999), goes through both."""

from __future__ import annotations

from datetime import date, time
from decimal import Decimal

import pyarrow as pa
import pytest

from totes.star.model import StarColumn, StarTable
from totes_tools.warehouse.verify import (
    field_sql,
    field_text,
    hash_sql,
    range_sql,
    row_hashes,
)

COLUMNS = (
    StarColumn("k", "INT", nullable=False),
    StarColumn("s", "VARCHAR"),
    StarColumn("d", "DATE"),
    StarColumn("t", "TIME"),
    StarColumn("m", "NUMERIC(10,2)"),
    StarColumn("b", "BOOLEAN"),
    StarColumn("i", "INT"),
)
TABLE = StarTable("probe", "fact", COLUMNS, key="k")
ROWS = [
    (1, "plain", date(2024, 11, 15), time(10, 11, 12, 123000), Decimal("12.50"), True, 7),
    (2, "", date(1, 1, 1), time(0, 0), Decimal("0.00"), False, 0),
    (3, None, None, None, None, None, None),
    (4, "a|b:c", date(9999, 12, 31), time(23, 59, 59, 999000), Decimal("-0.05"), True, -2),
    (5, "Zoë 北京 🎒", date(2000, 2, 29), time(1, 2, 3, 100000), Decimal("99999999.99"), False,
     2**31 - 1),
    (6, "-", date(1970, 1, 1), time(12, 0, 0), Decimal("-99999999.99"), None, -(2**31)),
    (7, "3:abc", date(2024, 1, 1), time(0, 0, 0, 1000), Decimal("1.00"), True, None),
]  # fmt: skip
SQL_TYPES = {"TIME": "TIME(3)"}


@pytest.fixture
def probe(warehouse_db, pg_connect):
    con = pg_connect(warehouse_db)
    defs = ", ".join(f"{c.name} {SQL_TYPES.get(c.sql_type, c.sql_type)}" for c in COLUMNS)
    con.run(f"CREATE TABLE probe ({defs})")
    for row in ROWS:
        con.run(
            "INSERT INTO probe VALUES (:k, :s, :d, :t, :m, :b, :i)",
            **dict(zip("ksdtmbi", row, strict=True)),
        )
    return con


def arrow_rows() -> pa.Table:
    columns = list(zip(*ROWS, strict=True))
    return pa.table(
        {c.name: pa.array(v, c.arrow_type) for c, v in zip(COLUMNS, columns, strict=True)}
    )


def test_sql_and_arrow_write_the_same_text_for_every_value_of_every_star_type(probe):
    fields = ", ".join(field_sql(c) for c in COLUMNS)
    in_sql = [tuple(r) for r in probe.run(f"SELECT {fields} FROM probe w ORDER BY k")]  # noqa: S608
    rows = arrow_rows()
    texts = [field_text(c, rows[c.name]).to_pylist() for c in COLUMNS]
    in_arrow = list(zip(*texts, strict=True))

    assert in_arrow == in_sql
    assert in_sql[2] == ("1:3", "-", "-", "-", "-", "-", "-")  # NULL is "-", "" is "0:"
    assert in_sql[1][1] == "0:"
    assert in_sql[4][1] == "8:Zoë 北京 🎒"  # characters, not bytes


def test_row_hashes_and_range_numbers_agree_between_sql_and_arrow(probe):
    in_sql = probe.run(
        f"SELECT k, {hash_sql(TABLE)}, {range_sql('w.i', 3)} FROM probe w ORDER BY k"  # noqa: S608
    )
    rows = arrow_rows()
    hashes = row_hashes([field_text(c, rows[c.name]) for c in COLUMNS])
    ranges = [None if i is None else i // 3 for i in rows["i"].to_pylist()]

    assert [(k, h, r) for k, h, r in in_sql] == list(
        zip(rows["k"].to_pylist(), hashes, ranges, strict=True)
    )
    assert len(set(hashes)) == len(ROWS)
