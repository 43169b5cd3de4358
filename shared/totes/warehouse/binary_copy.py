"""Arrow record batches as PostgreSQL's binary ``COPY`` format, vectorised (no loop per row).

Why: the staging ``COPY`` of CSV made the server parse text into every value (dates, times,
numerics, integers); in the binary format the server only checks and copies them. Measured
(docs/load.md "Alternatives measured (3)"): the 300k-order backfill's staging server CPU
falls by about two thirds (1.27 -> 0.45 s), and the encoder takes 0.12 s of client CPU where
Arrow's CSV writer took 0.32 s.

The format (PostgreSQL docs, "COPY", "Binary Format"): a header, then per row an int16 field
count and per field an int32 byte length (-1 for NULL) and the value in the type's binary
send/receive form, big-endian, then an int16 -1. A row is built as runs of fixed-width fields
(one NumPy structured array per run: lengths and values written column by column) separated
by the variable-width values (text, and fixed-width columns that hold NULLs), and Arrow's
``binary_join_element_wise`` concatenates each row's pieces in C++.

Types (those of ``totes.star.model``): ``int16/32/64`` (int2/int4/int8), ``bool``, ``date32``
(days since 2000-01-01), ``time32``/``time64`` (int64 microseconds since midnight),
``timestamp`` without time zone in s/ms/us (int64 microseconds since 2000-01-01), ``string``
(UTF-8 text; PostgreSQL validates it), ``decimal128`` of precision <= 18 (numeric: base-10000
digits, here a fixed number of groups per precision; PostgreSQL strips the leading and trailing
zero groups, so the stored value, scale included, is what numeric's text input gives). A value
the format cannot carry or the target type cannot hold raises ``Unencodable`` naming the
column, never the value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)
CHUNK_ROWS = 65_536
# The separator of a row's pieces: b"" (built from buffers: ``pa.scalar`` imports pandas).
_NOTHING = pa.Array.from_buffers(
    pa.large_binary(), 1, [None, pa.py_buffer(np.zeros(2, np.int64)), pa.py_buffer(b"")]
)[0]

_UNIX_TO_PG_DAYS = 10_957  # 1970-01-01 -> 2000-01-01
_UNIX_TO_PG_SECONDS = _UNIX_TO_PG_DAYS * 86_400
_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1}
_INT32 = np.iinfo(np.int32)
_INT64 = np.iinfo(np.int64)
# numeric's sign words
_POSITIVE, _NEGATIVE = 0x0000, 0x4000

# A field: its big-endian NumPy type and its value, one per row (a NULL's is ignored) or one
# for every row.
Field = tuple[str, "npt.NDArray[np.generic] | int"]


class Unencodable(ValueError):
    """A value of ``column`` has no binary form its warehouse type accepts (out of range)."""


def copy_stream(data: pa.Table, rows: int = CHUNK_ROWS) -> Iterator[bytes]:
    """``data`` as one binary COPY stream: the header, bounded chunks of whole rows (one COPY
    message each), the trailer. Every value is checked here, before the stream starts: an
    error raised while pg8000 streams a COPY leaves the connection unusable."""
    refuse_unencodable(data)
    return _stream(data, rows)


def _stream(data: pa.Table, rows: int) -> Iterator[bytes]:
    yield HEADER
    for batch in data.to_batches(max_chunksize=rows):
        if batch.num_rows:
            yield _encode(batch)
    yield TRAILER


def encode_rows(batch: pa.RecordBatch) -> bytes:
    """The rows of ``batch`` in the binary COPY format (without header or trailer)."""
    refuse_unencodable(pa.Table.from_batches([batch]))
    return _encode(batch)


def refuse_unencodable(data: pa.Table) -> None:
    """Raise ``Unencodable`` naming the first column holding a value its binary form cannot
    carry or its warehouse type cannot hold: a date or timestamp beyond the format's integers,
    a numeric beyond its declared precision (only a damaged file carries one); ``TypeError``
    naming a column of a type without an encoding."""
    for name, column in zip(data.column_names, data.columns, strict=True):
        kind = column.type
        if not _encodable(kind):
            raise TypeError(f"column {name}: no binary COPY encoding for Arrow type {kind}")
        if pa.types.is_date32(kind):  # int32 days since 1970 -> int32 days since 2000
            what, (low, high) = "date", _bounds(column.cast(pa.int32()))
            least, greatest = int(_INT32.min) + _UNIX_TO_PG_DAYS, int(_INT32.max)
        elif pa.types.is_timestamp(kind) and kind.unit in _MICROS:
            scale = _MICROS[kind.unit]
            shift = _UNIX_TO_PG_SECONDS * (1_000_000 // scale)
            what, (low, high) = "timestamp", _bounds(column.cast(pa.int64()))
            least, greatest = int(_INT64.min) // scale + shift, int(_INT64.max) // scale + shift
        elif pa.types.is_decimal(kind):
            largest = (Decimal(10) ** kind.precision - 1).scaleb(-kind.scale)
            what, (low, high) = "numeric", _bounds(column)
            least, greatest = -largest, largest
        else:
            continue
        if low is not None and (low < least or high > greatest):
            raise Unencodable(f"column {name}: a {what} value out of the warehouse type's range")


def _encodable(kind: pa.DataType) -> bool:
    """Whether ``kind`` has an encoding here (the model's types and their near kin)."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return True
    if pa.types.is_time64(kind):
        return bool(kind.unit == "us")  # nanoseconds: PostgreSQL's time holds microseconds
    if pa.types.is_timestamp(kind):
        return kind.tz is None and kind.unit in _MICROS
    if pa.types.is_decimal128(kind):
        return bool(kind.precision <= 18 and kind.scale >= 0)
    return kind.id in _FIXED


def _bounds(column: pa.ChunkedArray | pa.Array) -> tuple[Any, Any]:
    """The column's least and greatest value (both None where every value is NULL)."""
    both = pc.min_max(column)
    return both["min"].as_py(), both["max"].as_py()


def _encode(batch: pa.RecordBatch) -> bytes:
    n = batch.num_rows
    pieces: list[pa.Array] = []
    run: list[Field] = [(">i2", batch.num_columns)]
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            wide = pa.types.is_large_string(column.type)
            ends = _raw(column, np.int64 if wide else np.int32, extra=1, masked=False)
            lengths = np.diff(ends)
            if column.null_count:
                lengths = np.where(_valid(column), lengths, -1)
            run.append((">i4", lengths))
            pieces += [_run_array(run, n), column.cast(pa.large_binary())]
            run = []
            continue
        fields = _fixed_fields(name, column)
        width = sum(np.dtype(kind).itemsize for kind, _ in fields)
        if not column.null_count:
            run += [(">i4", width), *fields]
            continue
        valid = _valid(column)
        run.append((">i4", np.where(valid, width, -1)))
        validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
        pieces += [_run_array(run, n), _with_validity(_run_array(fields, n), validity)]
        run = []
    if run:
        pieces.append(_run_array(run, n))
    if len(pieces) == 1:
        return _data(pieces[0])
    rows = pc.binary_join_element_wise(
        *pieces, _NOTHING, null_handling="replace", null_replacement=b""
    )
    return _data(rows)


def _run_array(fields: list[Field], n: int) -> pa.Array:
    """Fixed-width fields, row after row, as a large_binary array of one element per row."""
    dtype = np.dtype([(f"f{i}", kind) for i, (kind, _) in enumerate(fields)])
    records = np.empty(n, dtype)
    for i, (_, values) in enumerate(fields):
        records[f"f{i}"] = values
    offsets = np.arange(0, (n + 1) * dtype.itemsize, dtype.itemsize, dtype=np.int64)
    return pa.Array.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(records)]
    )


def _with_validity(values: pa.Array, validity: pa.Buffer) -> pa.Array:
    """``values`` (a fresh large_binary array) with NULL where ``validity`` is unset."""
    _, offsets, data = values.buffers()
    return pa.Array.from_buffers(pa.large_binary(), len(values), [validity, offsets, data])


def _data(rows: pa.Array) -> bytes:
    """The concatenated elements of a fresh large_binary array."""
    _, offsets, data = rows.buffers()
    start, end = np.frombuffer(offsets, np.int64)[[rows.offset, rows.offset + len(rows)]]
    payload: bytes = data.slice(int(start), int(end - start)).to_pybytes()
    return payload


def _fixed_fields(name: str, column: pa.Array) -> list[Field]:
    """The big-endian fields of a fixed-width column's binary form (NULLs get a dummy)."""
    kind = column.type
    encode = _FIXED.get(kind.id)
    if encode is not None:
        return encode(name, column)
    if pa.types.is_timestamp(kind) and kind.tz is None and kind.unit in _MICROS:
        return _timestamp(name, column)
    if pa.types.is_decimal128(kind) and kind.precision <= 18 and kind.scale >= 0:
        return _numeric(name, column)
    raise TypeError(f"column {name}: no binary COPY encoding for Arrow type {kind}")


def _valid(column: pa.Array) -> npt.NDArray[np.bool_]:
    """Whether each value is not NULL, from the validity bitmap."""
    bitmap = column.buffers()[0]
    if bitmap is None:
        return np.ones(len(column), np.bool_)
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
    valid: npt.NDArray[np.bool_] = bits[column.offset : column.offset + len(column)].astype(bool)
    return valid


def _raw(
    column: pa.Array, dtype: type[np.generic], extra: int = 0, masked: bool = True
) -> npt.NDArray[Any]:
    """The column's values buffer read as ``dtype`` (``extra`` more entries, for offsets), NULL
    slots zeroed when ``masked``. Straight from the buffers: filling NULLs through Arrow
    (``fill_null(0)``) converts a Python scalar, which imports pandas (0.15-0.2 s at a cold
    start; ``unit/test_lake.py``)."""
    start = column.offset
    values = np.frombuffer(column.buffers()[1], dtype)[start : start + len(column) + extra]
    if masked and column.null_count:
        values = np.where(_valid(column), values, 0)
    return values


def _integer(kind: str) -> Callable[[str, pa.Array], list[Field]]:
    def encode(_name: str, column: pa.Array) -> list[Field]:
        return [(kind, _raw(column, np.dtype(kind).newbyteorder("=").type))]

    return encode


def _boolean(_name: str, column: pa.Array) -> list[Field]:
    bits = np.unpackbits(np.frombuffer(column.buffers()[1], np.uint8), bitorder="little")
    values = bits[column.offset : column.offset + len(column)]
    if column.null_count:
        values = np.where(_valid(column), values, 0)
    return [("u1", values)]


def _date(_name: str, column: pa.Array) -> list[Field]:
    return [(">i4", _raw(column, np.int32).astype(np.int64) - _UNIX_TO_PG_DAYS)]


def _time(_name: str, column: pa.Array) -> list[Field]:
    unit = column.type.unit  # not ns (refused by ``refuse_unencodable``)
    raw = _raw(column, np.int32 if pa.types.is_time32(column.type) else np.int64)
    return [(">i8", raw.astype(np.int64) * _MICROS[unit])]


def _timestamp(_name: str, column: pa.Array) -> list[Field]:
    scale = _MICROS[column.type.unit]
    since_2000 = _raw(column, np.int64) - _UNIX_TO_PG_SECONDS * (1_000_000 // scale)
    return [(">i8", since_2000 * scale)]


def _numeric(_name: str, column: pa.Array) -> list[Field]:
    """numeric's binary form: ndigits, weight, sign, dscale (int16 each), then base-10000
    digits (int16), the decimal point between two groups. A fixed layout for the column's
    precision: ``ceil((p - s) / 4)`` integer groups, ``ceil(s / 4)`` fraction groups."""
    kind = column.type
    precision, scale = kind.precision, kind.scale
    words = np.frombuffer(column.buffers()[1], np.int64)[2 * column.offset :][: 2 * len(column)]
    low = words[0::2]  # little-endian 128-bit, low word first; |value| < 10**18 (checked)
    if column.null_count:
        low = np.where(_valid(column), low, 0)
    magnitude = np.abs(low)
    whole, fraction = np.divmod(magnitude, 10**scale)
    int_groups = max(-(-(precision - scale) // 4), 1)
    frac_groups = -(-scale // 4)
    fraction = fraction * 10 ** (4 * frac_groups - scale)
    digits: list[npt.NDArray[np.int64]] = []
    for g in reversed(range(int_groups)):
        digits.append((whole // 10_000**g) % 10_000)
    for g in reversed(range(frac_groups)):
        digits.append((fraction // 10_000**g) % 10_000)
    sign = np.where(low < 0, _NEGATIVE, _POSITIVE)
    header: list[npt.NDArray[np.int64] | int] = [
        int_groups + frac_groups,
        int_groups - 1,
        sign,
        scale,
    ]
    return [(">i2", part) for part in [*header, *digits]]


_FIXED: dict[int, Callable[[str, pa.Array], list[Field]]] = {
    pa.int16().id: _integer(">i2"),
    pa.int32().id: _integer(">i4"),
    pa.int64().id: _integer(">i8"),
    pa.bool_().id: _boolean,
    pa.date32().id: _date,
    pa.time32("ms").id: _time,
    pa.time64("us").id: _time,
}
