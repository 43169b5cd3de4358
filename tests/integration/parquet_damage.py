"""Parquet files damaged the way a lake object can be and still parse as Parquet."""

from __future__ import annotations


def damage_a_column_name(body: bytes, column: str) -> bytes:
    """The Parquet file with one byte of ``column``'s name in its footer's schema made invalid
    UTF-8: the file still parses as Parquet, but pyarrow decoding the name raises
    ``UnicodeDecodeError`` (a ``ValueError``, neither an ``ArrowException`` nor an ``OSError``).
    Of 20,000 raw parts with one random byte damaged, 79 failed this way (s26 fuzzing,
    pyarrow 22)."""
    footer_length = int.from_bytes(body[-8:-4], "little")
    at = body.index(column.encode(), len(body) - 8 - footer_length)
    return body[: at + 1] + b"\xff" + body[at + 2 :]


def damage_a_value(body: bytes, value: str) -> bytes:
    """The Parquet file with the first stored copy of ``value`` (text is dictionary encoded,
    and a snappy page keeps a literal as it is) changed in its last character (one bit): the
    row count, the schema and the footer stay as they were."""
    at = body.index(value.encode()) + len(value) - 1
    return body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]
