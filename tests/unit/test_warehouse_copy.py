"""The binary COPY stream load sends into its staging tables, and the synthetic calendar: pure
functions, checked without a database (``integration/test_warehouse_staging.py`` checks what
PostgreSQL stores from it)."""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal

import pyarrow as pa
import pytest

from totes.lake import table_to_parquet_bytes
from totes.star.model import STAR_TABLES, STAR_TABLES_BY_NAME
from totes.warehouse.binary_copy import HEADER, TRAILER, Unencodable, copy_stream, encode_rows
from totes_tools.warehouse.csv_copy import csv_chunks
from totes_tools.warehouse.synthetic import calendar, star_batch, with_calendar

PG_EPOCH = dt.datetime(2000, 1, 1)


def reference_field(value: object, kind: pa.DataType) -> bytes:
    """One field as PostgreSQL's binary COPY format spells it, value by value (the documented
    send/receive forms), to check the vectorised encoder against."""
    if value is None:
        return struct.pack(">i", -1)
    if pa.types.is_string(kind):
        payload = str(value).encode()
    elif pa.types.is_boolean(kind):
        payload = bytes([bool(value)])
    elif pa.types.is_int32(kind):
        payload = struct.pack(">i", value)
    elif pa.types.is_date32(kind):
        assert isinstance(value, dt.date)
        payload = struct.pack(">i", (value - PG_EPOCH.date()).days)
    elif pa.types.is_time32(kind):
        assert isinstance(value, dt.time)
        micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 10**6
        payload = struct.pack(">q", micros + value.microsecond)
    elif pa.types.is_timestamp(kind):
        assert isinstance(value, dt.datetime)
        delta = value - PG_EPOCH
        payload = struct.pack(
            ">q", (delta.days * 86_400 + delta.seconds) * 10**6 + delta.microseconds
        )
    elif pa.types.is_decimal(kind):
        assert isinstance(value, Decimal)
        units = abs(int(value.scaleb(kind.scale)))  # the unscaled magnitude
        whole, fraction = divmod(units, 10**kind.scale)
        groups = [whole // 10_000, whole % 10_000, fraction * 10 ** (4 - kind.scale)]
        sign = 0x4000 if value < 0 else 0
        payload = struct.pack(">7h", 3, 1, sign, kind.scale, *groups)
    else:
        raise AssertionError(f"no reference for {kind}")
    return struct.pack(">i", len(payload)) + payload


def reference_rows(table: pa.Table) -> bytes:
    out = b""
    for row in table.to_pylist():
        out += struct.pack(">h", table.num_columns)
        for field in table.schema:
            out += reference_field(row[field.name], field.type)
    return out


EDGES = pa.table(
    {
        "s": pa.array(["a", "", None, 'x"y,z\n\\N', "é漢字🎉", "L" * 70_000]),
        "i": pa.array([1, None, -(2**31), 2**31 - 1, 0, 5], pa.int32()),
        "d": pa.array(
            [
                *(dt.date(2024, 1, 2), dt.date(1, 1, 1), dt.date(9999, 12, 31), None),
                *(dt.date(1970, 1, 1), dt.date(1999, 12, 31)),
            ],
            pa.date32(),
        ),
        "t": pa.array([36_000_123, None, 0, 86_399_999, 1, 500], pa.time32("ms")),
        "ts": pa.array(
            [
                *(dt.datetime(2024, 1, 2, 3, 4, 5, 678_000), dt.datetime(1, 1, 1)),
                *(dt.datetime(9999, 12, 31, 23, 59, 59, 999_000), None),
                *(dt.datetime(1969, 12, 31, 23, 59, 59, 1_000), PG_EPOCH),
            ],
            pa.timestamp("ms"),
        ),
        "n": pa.array(
            [
                *(Decimal("1.50"), None, Decimal("-2.00"), Decimal("0.01")),
                *(Decimal("99999999.99"), Decimal("-99999999.99")),
            ]
        ).cast(pa.decimal128(10, 2)),
        "b": pa.array([True, False, None, True, False, True]),
        "v": pa.array(["x", "y", "z", None, "", "w"]),
    }
)


def test_every_value_is_encoded_as_postgresql_spells_it_nulls_apart_from_empty_strings():
    assert encode_rows(EDGES.to_batches()[0]) == reference_rows(EDGES)


def test_columns_without_nulls_or_text_take_the_single_block_path_with_the_same_bytes():
    fixed = EDGES.drop_columns(["s", "v"]).slice(4)  # rows 4 and 5: no NULL in any column
    assert fixed.num_rows == 2
    assert all(c.null_count == 0 for c in fixed.columns)
    assert encode_rows(fixed.to_batches()[0]) == reference_rows(fixed)


def test_a_sliced_batch_encodes_its_own_rows():
    part = EDGES.slice(2, 3).to_batches()[0]
    assert part.column(0).offset == 2
    assert encode_rows(part) == reference_rows(EDGES.slice(2, 3))


def test_the_stream_comes_in_bounded_chunks_of_whole_rows_between_header_and_trailer():
    table = pa.table({"i": pa.array(range(10), pa.int32())})
    chunks = list(copy_stream(table, rows=4))
    assert chunks[0] == HEADER == b"PGCOPY\n\xff\r\n\x00" + bytes(8)
    assert chunks[-1] == TRAILER == b"\xff\xff"
    body = chunks[1:-1]
    assert [len(c) for c in body] == [4 * 10, 4 * 10, 2 * 10]  # int16 + int32 + int32 per row
    assert b"".join(body) == reference_rows(table)


def test_every_star_column_type_has_an_encoding():
    for table in STAR_TABLES:
        empty_row = pa.Table.from_pylist([{}], schema=table.arrow_schema)  # every value NULL
        rows = encode_rows(empty_row.to_batches()[0])
        assert rows == struct.pack(">h", empty_row.num_columns) + b"\xff\xff\xff\xff" * len(
            table.arrow_schema
        )


def test_a_numeric_beyond_its_precision_is_refused_naming_the_column_not_the_value():
    units = 10**10  # 100000000.00 in a decimal128(10, 2): only a damaged file carries it
    data = pa.py_buffer(struct.pack("<qq", units, 0))
    amount = pa.Array.from_buffers(pa.decimal128(10, 2), 1, [None, data])
    with pytest.raises(Unencodable) as refused:
        encode_rows(pa.record_batch({"payment_amount": amount}))
    assert "column payment_amount" in str(refused.value)
    assert "100000000" not in str(refused.value)


def test_a_timestamp_the_format_cannot_carry_is_refused_naming_the_column():
    far = pa.array([2**62], pa.timestamp("ms"))
    with pytest.raises(Unencodable, match="column stamp"):
        encode_rows(pa.record_batch({"stamp": far}))


def test_a_type_without_an_encoding_is_refused_naming_the_column():
    with pytest.raises(TypeError, match="column f: no binary COPY encoding"):
        encode_rows(pa.record_batch({"f": pa.array([1.5])}))


def test_the_stream_refuses_before_its_first_chunk_not_while_pg8000_sends_it():
    """An exception raised by the stream while pg8000 sends a COPY leaves the connection
    unusable: every refusal comes when the stream is made, before COPY starts."""
    with pytest.raises(Unencodable, match="column stamp"):
        copy_stream(pa.table({"stamp": pa.array([2**62], pa.timestamp("ms"))}))
    with pytest.raises(TypeError, match="column f: no binary COPY encoding"):
        copy_stream(pa.table({"f": pa.array([1.5])}))
    with pytest.raises(TypeError, match="column t: no binary COPY encoding"):
        copy_stream(pa.table({"t": pa.array([1], pa.time64("ns"))}))


def test_the_benchs_csv_keeps_empty_strings_apart_from_nulls_and_keeps_milliseconds():
    """The bench's COPY FROM floor streams CSV (``csv_copy``, the staging format before)."""
    table = pa.table(
        {
            "s": pa.array(["a", "", None, 'x"y,z'], pa.string()),
            "t": pa.array([36_000_123, None, 0, 1], pa.time32("ms")),
            "n": pa.array([Decimal("1.50"), None, Decimal("-2.00"), Decimal("0.01")]).cast(
                pa.decimal128(10, 2)
            ),
        }
    )
    chunks = list(csv_chunks(table, rows=3))
    assert [c.decode().splitlines() for c in chunks] == [
        ['"a",10:00:00.123,1.50', '"",,', ",00:00:00.000,-2.00"],
        ['"x""y,z",00:00:00.001,0.01'],
    ]


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


def test_encoding_a_batch_with_nulls_of_every_type_never_imports_pandas(tmp_path):
    """Arrow converts Python scalars (``fill_null(0)``, ``pa.scalar``) through its pandas shim:
    0.15-0.2 s of a cold load stage, which the load avoids (docs/load.md "Per-batch
    overhead"). The encoder reads NULLs from the buffers instead. The rows (synthetic values
    and a row of NULLs per star table) are read from Parquet as the load reads them."""
    from test_lake import fresh_interpreter_prints

    batch = with_calendar(star_batch(sales=3, purchases=3, payments_=3, seed=2))
    for table in STAR_TABLES:
        nulls = pa.Table.from_pylist([{}], schema=table.arrow_schema)
        rows = pa.concat_tables([batch[table.name], nulls])
        rows = rows.cast(pa.schema([f.with_nullable(True) for f in rows.schema]))
        (tmp_path / f"{table.name}.parquet").write_bytes(table_to_parquet_bytes(rows))
    code = (
        "import pathlib, sys\n"
        "from totes.lake import parquet_bytes_to_table\n"
        "from totes.warehouse.binary_copy import copy_stream\n"
        f"for path in pathlib.Path({str(tmp_path)!r}).glob('*.parquet'):\n"
        "    table = parquet_bytes_to_table(path.read_bytes())\n"
        "    assert table.num_rows > 1 and table.column(1).null_count >= 1, path\n"
        "    assert len(b''.join(copy_stream(table))) > 100, path\n"
        "print('pandas' in sys.modules, flush=True)\n"
        "import os; os._exit(0)\n"
    )
    assert fresh_interpreter_prints(code) == "False"
