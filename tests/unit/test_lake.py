"""Batch ids: deterministic, sortable by capture sequence then part, recognisable, and the
limit of three part digits. Parquet files read back as written, without the dataset API."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import date, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from totes.lake import (
    BATCH_ID,
    UNREADABLE_PARQUET,
    batch_id_for,
    empty_table,
    parquet_bytes_to_table,
    table_to_parquet_bytes,
)


def test_a_parquet_file_reads_back_as_written_with_its_metadata():
    table = pa.table(
        {"id": pa.array([1, None, 3], pa.int32()), "day": [date(2024, 1, 1)] * 3}
    ).replace_schema_metadata({b"fingerprint": b"abc"})
    back = parquet_bytes_to_table(table_to_parquet_bytes(table))
    assert back.equals(table)
    assert back.schema.equals(table.schema, check_metadata=True)


def test_only_text_and_date_columns_are_dictionary_encoded_and_values_read_back_the_same():
    """Dictionaries of nearly distinct keys, stamps and decimals cost most of the encoding
    time and made files larger (docs/transform.md "Cost per batch"); text and dates repeat."""
    n = 1000
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int32()),
            "code": pa.array(["GBP", "EUR", None, "USD"] * (n // 4), pa.string()),
            "day": pa.array([date(2024, 1, 1 + i % 28) for i in range(n)], pa.date32()),
            "at": pa.array(
                [datetime(2024, 1, 1) + timedelta(seconds=i) for i in range(n)], pa.timestamp("ms")
            ),
            "price": pa.array([Decimal(i) / 100 for i in range(n)], pa.decimal128(10, 2)),
            "paid": pa.array([i % 3 == 0 for i in range(n)], pa.bool_()),
        }
    )
    body = table_to_parquet_bytes(table)
    back = parquet_bytes_to_table(body)
    assert back.equals(table)
    assert back.schema.equals(table.schema, check_metadata=True)
    row_group = pq.ParquetFile(io.BytesIO(body)).metadata.row_group(0)
    encoded = {
        row_group.column(i).path_in_schema: row_group.column(i).has_dictionary_page
        for i in range(row_group.num_columns)
    }
    assert encoded == {
        "id": False,
        "code": True,
        "day": True,
        "at": False,
        "price": False,
        "paid": False,
    }


def damage_a_value(body: bytes, value: str) -> bytes:
    """The Parquet file with the first stored copy of ``value`` (text is dictionary encoded,
    and a snappy page keeps a literal as it is) changed in its last character (one bit): the
    row count, the schema and the footer stay as they were."""
    at = body.index(value.encode()) + len(value) - 1
    return body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]


def test_a_value_damaged_in_a_stored_file_is_refused_never_read_as_another_value():
    table = pa.table({"id": pa.array([1, 2], pa.int32()), "name": ["Quokkaleak", "Wombat"]})
    damaged = damage_a_value(table_to_parquet_bytes(table), "Quokkaleak")

    # Without page checksums this reads back as ["Quokkaleaj", "Wombat"], nothing refused.
    with pytest.raises(UNREADABLE_PARQUET):
        parquet_bytes_to_table(damaged)


def test_a_file_written_without_page_checksums_still_reads():
    """The lake holds files written before pages carried checksums: they read as before."""
    table = pa.table({"id": pa.array([1, 2], pa.int32()), "name": ["Quokkaleak", "Wombat"]})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="snappy", use_dictionary=["name"])
    assert parquet_bytes_to_table(sink.getvalue()).equals(table)
    assert len(table_to_parquet_bytes(table)) > len(sink.getvalue())  # the pages' CRCs


def fresh_interpreter_prints(code: str) -> str:
    """What ``code`` prints in a new interpreter (imports counted from zero)."""
    done = subprocess.run(  # nosec B603 - our interpreter, fixed code
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_reading_a_parquet_file_does_not_import_the_dataset_api():
    """``pq.read_table`` imports ``pyarrow.dataset`` on first use: 0.2-0.4 s of a cold load or
    transform stage (docs/load.md "Per-batch overhead")."""
    code = (
        "import sys, pyarrow as pa\n"
        "from totes.lake import parquet_bytes_to_table, table_to_parquet_bytes\n"
        "parquet_bytes_to_table(table_to_parquet_bytes(pa.table({'a': [1]})))\n"
        "print('pyarrow.dataset' in sys.modules, flush=True)\n"
        "import os; os._exit(0)\n"  # no interpreter teardown: pyarrow's threads may abort it
    )
    assert fresh_interpreter_prints(code) == "False"


def test_batch_ids_sort_by_capture_sequence_then_part():
    ids = [batch_id_for(seq, part) for seq in (9, 10, 1_234_567) for part in (0, 1, 999)]

    assert ids == sorted(ids)
    assert batch_id_for(10, 2) == "c0000000000000000010-002"
    assert all(BATCH_ID.match(i) for i in ids)
    assert BATCH_ID.match("20241115T101500000000-000")  # a batch from before capture by commit
    assert sorted(["20241115T101500000000-000", batch_id_for(1)])[-1] == batch_id_for(1)
    # The edge of the known limit: a 1000th part sorts before the 999th.
    assert batch_id_for(5, 1000) < batch_id_for(5, 999)
    assert not BATCH_ID.match(batch_id_for(5, 1000))
    for forged in ("../x", "c1-000", "c0000000000000000010-000.json", ""):
        assert not BATCH_ID.match(forged)


def test_an_empty_table_has_the_schema_and_a_cold_load_never_imports_pandas():
    """``Schema.empty_table()`` imports pandas (0.15-0.2 s); the load builds the empty
    deletions of a batch without deletions with ``lake.empty_table``."""
    schema = pa.schema([pa.field("id", pa.int32(), nullable=False), pa.field("day", pa.date32())])
    empty = empty_table(schema)
    assert empty.num_rows == 0
    assert empty.schema.equals(schema, check_metadata=True)
    code = (
        "import sys\n"
        "from totes.warehouse.merge import _deletions\n"
        "_deletions('b', None)\n"
        "print('pandas' in sys.modules, flush=True)\n"
        "import os; os._exit(0)\n"
    )
    assert fresh_interpreter_prints(code) == "False"
