"""The pure parts of extraction: COPY CSV rows become typed Arrow chunks with the raw lake
schema (NULL vs empty text, embedded newlines, exact money, milliseconds, t/f booleans), in
chunks of a bounded size; the selection SQL is built only from the model."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

import pyarrow as pa

from totes.extract import closure
from totes.extract.stream import _CsvChunks, copy_table
from totes.extract.watermark import Window, window_after
from totes.source.model import TABLES, TABLES_BY_NAME

PAYMENT_ROWS = [
    b"1,10,3,552548.62,2,3,t,2022-11-04,67305075,31622269,"
    b"2022-11-03 14:20:52.187,2022-11-03 14:20:52.187\n",
    b"2,11,4,0.05,1,1,f,2022-11-05,1,2,2024-02-29 23:59:59.999,2024-02-29 23:59:59.999\n",
    b"3,12,5,-12.30,3,2,t,2023-01-01,3,4,2023-01-01 00:00:00,2023-01-01 00:00:00.5\n",
]

ADDRESS_ROWS = [
    b'1,"6826 Herzog Via",,"",Leeds,LS1,UK,"0113 1",2022-11-03 14:20:49.962,'
    b"2022-11-03 14:20:49.962\n",
    b'2,"line ""one""\nsecond line",x,,York,Y1,"UK, North",0,2022-11-03 14:20:49.962,'
    b"2022-11-03 14:20:49.962\n",
]


def stream(table_name: str, rows: list[bytes], chunk_rows: int) -> list[pa.Table]:
    chunks: list[pa.Table] = []
    sink = _CsvChunks(TABLES_BY_NAME[table_name], chunk_rows, chunks.append)
    for row in rows:  # pg8000 writes one CopyData message (one row) per call
        sink.write(row)
    sink.finish()
    assert sink.rows == len(rows)
    return chunks


def test_copy_rows_become_the_raw_schema_with_exact_money_and_milliseconds():
    (chunk,) = stream("payment", PAYMENT_ROWS, chunk_rows=10)

    assert chunk.schema == TABLES_BY_NAME["payment"].arrow_schema
    assert chunk.select(["payment_amount", "paid", "payment_date", "last_updated"]).to_pylist() == [
        {
            "payment_amount": Decimal("552548.62"),
            "paid": True,
            "payment_date": "2022-11-04",
            "last_updated": datetime(2022, 11, 3, 14, 20, 52, 187000),
        },
        {
            "payment_amount": Decimal("0.05"),
            "paid": False,
            "payment_date": "2022-11-05",
            "last_updated": datetime(2024, 2, 29, 23, 59, 59, 999000),
        },
        {
            "payment_amount": Decimal("-12.30"),
            "paid": True,
            "payment_date": "2023-01-01",
            "last_updated": datetime(2023, 1, 1, 0, 0, 0, 500000),
        },
    ]


def test_null_and_empty_text_stay_distinct_and_quoted_newlines_survive():
    (chunk,) = stream("address", ADDRESS_ROWS, chunk_rows=10)

    assert chunk.select(
        ["address_line_1", "address_line_2", "district", "country"]
    ).to_pylist() == [
        {
            "address_line_1": "6826 Herzog Via",
            "address_line_2": None,
            "district": "",
            "country": "UK",
        },
        {
            "address_line_1": 'line "one"\nsecond line',
            "address_line_2": "x",
            "district": None,
            "country": "UK, North",
        },
    ]


def test_rows_are_handed_on_in_chunks_of_at_most_chunk_rows():
    rows = PAYMENT_ROWS * 7  # 21 rows

    chunks = stream("payment", rows, chunk_rows=5)

    assert [c.num_rows for c in chunks] == [5, 5, 5, 5, 1]
    assert pa.concat_tables(chunks).equals(stream("payment", rows, chunk_rows=100)[0])


def test_no_rows_means_no_chunk():
    assert stream("payment", [], chunk_rows=5) == []


def test_the_window_starts_at_the_previous_hi_minus_the_overlap_and_first_runs_take_all():
    from totes.lake import Manifest

    hi = datetime(2024, 11, 15, 12, 0, 0)
    previous = Manifest("b", "raw", None, "2024-11-15T11:55:00.250", ())

    assert window_after(None, hi, 600) == Window(None, hi)
    assert window_after(previous, hi, 600) == Window(datetime(2024, 11, 15, 11, 45, 0, 250000), hi)
    assert window_after(previous, hi, 0).lo_iso == "2024-11-15T11:55:00.250"


def test_selection_sql_uses_only_model_identifiers_and_facts_use_the_window_alone():
    known = {t.name for t in TABLES} | {c for t in TABLES for c in t.column_names}
    for table in TABLES:
        sql = closure.copy_sql(table)
        quoted = set(re.findall(r'"([^"]+)"', sql))
        assert quoted <= known, table.name
        assert sql.startswith("COPY (SELECT ")
        assert sql.endswith(") TO STDOUT WITH (FORMAT csv, HEADER false)")
    for fact in closure.FACT_TABLES:
        assert " IN (" not in closure.selection_sql(TABLES_BY_NAME[fact])


def test_blocks_cut_anywhere_even_inside_a_quoted_newline_give_the_same_rows():
    data = b"".join(ADDRESS_ROWS * 3)
    whole = stream("address", ADDRESS_ROWS * 3, chunk_rows=100)[0]

    for cut in range(1, len(data)):
        chunks: list[pa.Table] = []
        sink = _CsvChunks(TABLES_BY_NAME["address"], 4, chunks.append)
        sink.write(data[:cut])
        sink.write(memoryview(data)[cut:])  # io.BufferedWriter hands the sink memoryviews
        sink.finish()
        assert [c.num_rows for c in chunks] == [4, 2], cut
        assert pa.concat_tables(chunks).equals(whole), cut


def test_copy_table_streams_through_a_buffer_into_chunks_of_chunk_rows():
    class Connection:
        """Stands in for pg8000: one write per CopyData message (one row)."""

        def run(self, sql, stream):
            for row in PAYMENT_ROWS * 7:
                stream.write(row)

    chunks: list[pa.Table] = []
    rows = copy_table(Connection(), TABLES_BY_NAME["payment"], 5, chunks.append)

    assert rows == 21
    assert [c.num_rows for c in chunks] == [5, 5, 5, 5, 1]
    assert pa.concat_tables(chunks).equals(stream("payment", PAYMENT_ROWS * 7, chunk_rows=100)[0])
