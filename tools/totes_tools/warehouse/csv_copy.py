"""Arrow tables as CSV for ``COPY ... FROM STDIN WITH (FORMAT csv)``: the bench's COPY FROM
floor (``totes_tools.local.bench.copy_from_floor``, ``warehouse.bench``) keeps the format the
load staged in until it moved to the binary format (``totes.warehouse.binary_copy``), so the
floor, and every "chain / floor" ratio, stays comparable with the runs before (docs/load.md
"Alternatives measured (3)")."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv

CSV_CHUNK_ROWS = 65_536


def csv_chunks(data: pa.Table, rows: int = CSV_CHUNK_ROWS) -> Iterator[bytes]:
    """The table as headerless CSV in bounded chunks (one COPY message each). Arrow quotes
    every string, so an empty string stays empty and an unquoted empty field is NULL."""
    options = pacsv.WriteOptions(include_header=False)
    for record_batch in data.to_batches(max_chunksize=rows):
        sink = io.BytesIO()
        pacsv.write_csv(record_batch, sink, options)
        yield sink.getvalue()
