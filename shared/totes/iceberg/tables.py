"""The Iceberg tables: one per star table (same names, same columns), and three of the loader's
own beside them (the tombstones of deleted keys, the parks of facts waiting for a set-aside
dimension row, the batch ledger). Pure: schemas, properties and the conversion of a processed
batch's Arrow tables into rows of these schemas.

Differences from the PostgreSQL warehouse, each for a reason:

- ``created_time`` / ``last_updated_time`` are text ``HH:MM:SS.mmm``: Iceberg's ``time`` type has
  no Athena type (Athena cannot read a table holding one), and the fixed-width text keeps the
  millisecond precision, orders like the time and casts with ``CAST(x AS time(3))``.
- Facts have no ``*_record_id``: Iceberg has no sequences; the version key (natural id,
  ``last_updated_date``, ``last_updated_time``) identifies a fact row, as it does in the
  warehouse (its unique version key).
- The lineage is the warehouse's: ``source_version`` (and ``oldest_version`` on the joined
  dimensions), ``capture_seq``, ``loaded_batch_id`` and ``source_deleted_at`` on every table but
  the calendar, so both targets can be compared column by column.
"""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BooleanType,
    DateType,
    DecimalType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
)

from totes.errors import LoadFailed
from totes.star.model import (
    CAPTURE_SEQ,
    FACTS,
    SOURCE_DELETED_AT,
    STAR_TABLES,
    StarTable,
)
from totes.warehouse.staging import LOADED_BATCH

TOMBSTONES = "etl_deleted_keys"
LEDGER = "etl_batch_ledger"
PARK_PREFIX = "etl_parked_"

_ICEBERG_TYPES: dict[str, IcebergType] = {
    "DATE": DateType(),
    "TIME": StringType(),
    "INT": IntegerType(),
    "VARCHAR": StringType(),
    "NUMERIC(10,2)": DecimalType(10, 2),
    "BOOLEAN": BooleanType(),
    "TIMESTAMP": TimestampType(),
}

# Every table: format v2; no commit retry inside pyiceberg (it would re-apply the rows merged
# against the old state on top of the new one; the loader re-reads and re-merges instead,
# ``commit``); manifests merged so a table read after thousands of small commits plans from a
# few manifests; old metadata files deleted after commit, the last 20 kept; zstd Parquet.
TABLE_PROPERTIES = {
    "format-version": "2",
    "commit.retry.num-retries": "0",
    "commit.manifest-merge.enabled": "true",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    "write.parquet.compression-codec": "zstd",
    "write.parquet.row-group-limit": "131072",
}


def version_columns(table: StarTable) -> list[str]:
    """The columns that identify one stored row: a dimension's key, a fact's version."""
    if table.kind == "fact":
        return [table.key, "last_updated_date", "last_updated_time"]
    return [table.key]


def _fields(table: StarTable) -> list[NestedField]:
    ids = itertools.count(1)
    fields = [
        NestedField(next(ids), c.name, _ICEBERG_TYPES[c.sql_type], required=not c.nullable)
        for c in table.columns
    ]
    if not table.tracked:  # the calendar: a pure function of the date, no lineage
        return fields
    fields += [NestedField(next(ids), s, TimestampType(), required=True) for s in table.lineage]
    fields += [
        NestedField(next(ids), CAPTURE_SEQ, LongType(), required=True),
        NestedField(next(ids), LOADED_BATCH, StringType(), required=True),
        NestedField(next(ids), SOURCE_DELETED_AT, TimestampType(), required=False),
    ]
    return fields


def star_schema(table: StarTable) -> Schema:
    """The Iceberg schema of a star table; its identifier fields are the warehouse's unique
    key (a dimension's key, a fact's version)."""
    fields = _fields(table)
    ids = {f.name: f.field_id for f in fields}
    return Schema(*fields, identifier_field_ids=[ids[c] for c in version_columns(table)])


def park_name(table: StarTable) -> str:
    return f"{PARK_PREFIX}{table.name}"


# The latest deletion of each key (the greatest capture), never removed (warehouse.deletes).
TOMBSTONES_SCHEMA = Schema(
    NestedField(1, "star_table", StringType(), required=True),
    NestedField(2, "key", IntegerType(), required=True),
    NestedField(3, CAPTURE_SEQ, LongType(), required=True),
    NestedField(4, "deleted_at", TimestampType(), required=True),
    identifier_field_ids=[1, 2],
)

# One row per committed batch, written after every other table of the batch.
LEDGER_SCHEMA = Schema(
    NestedField(1, "batch_id", StringType(), required=True),
    NestedField(2, "source_batch_id", StringType(), required=False),
    NestedField(3, CAPTURE_SEQ, LongType(), required=True),
    NestedField(4, "hi_utc", StringType(), required=False),
    NestedField(5, "committed_at", TimestampType(), required=True),
    NestedField(6, "row_counts", StringType(), required=True),
    identifier_field_ids=[1],
)


def all_tables() -> dict[str, Schema]:
    """Every table the loader writes, by name, in the order a batch commits them: the
    tombstones first (marks read them), the dimensions before the facts (no fact may point at
    a dimension row readers cannot see yet), each fact before its park, the ledger last."""
    out = {TOMBSTONES: TOMBSTONES_SCHEMA}
    out.update({t.name: star_schema(t) for t in STAR_TABLES if t.kind == "dimension"})
    for fact in FACTS:
        out[fact.name] = star_schema(fact)
        out[park_name(fact)] = star_schema(fact)
    out[LEDGER] = LEDGER_SCHEMA
    return out


# -- processed rows into table rows -------------------------------------------------------------


def _time_text(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """``time32[ms]`` as ``HH:MM:SS.mmm`` (NULL stays NULL)."""
    ms = pc.cast(column, pa.int32())

    def part(divisor: int, modulo: int, width: int) -> pa.Array:
        value = pc.divide(ms, divisor)
        if modulo:
            value = pc.subtract(value, pc.multiply(pc.divide(value, modulo), modulo))
        return pc.utf8_lpad(pc.cast(value, pa.string()), width=width, padding="0")

    hms = pc.binary_join_element_wise(
        part(3_600_000, 0, 2), part(60_000, 60, 2), part(1_000, 60, 2), ":"
    )
    return pc.binary_join_element_wise(hms, part(1, 1_000, 3), ".")


def star_rows(table: StarTable, data: pa.Table, batch: str, seq: int) -> pa.Table:
    """A processed table of the batch as rows of the Iceberg table: times as text, stamps in
    microseconds, the batch's ``capture_seq`` and id, no deletion mark yet. A NULL where the
    star requires a value fails the batch naming table and column (never a value), as the
    warehouse's NOT NULL does."""
    target = star_schema(table).as_arrow()
    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    for column in table.columns:
        values = data.column(column.name)
        if not column.nullable and values.null_count:
            raise LoadFailed(
                f"batch {batch}: table {table.name}: column {column.name} is NULL in"
                f" {values.null_count} row(s); the star requires a value"
            )
        columns[column.name] = _time_text(values) if column.sql_type == "TIME" else values
    n = data.num_rows
    if table.tracked:
        for stamp in table.lineage:
            columns[stamp] = data.column(stamp)
        columns[CAPTURE_SEQ] = pa.array([seq] * n, pa.int64())
        columns[LOADED_BATCH] = pa.array([batch] * n, pa.string())
        columns[SOURCE_DELETED_AT] = pa.nulls(n, pa.timestamp("us"))
    built = pa.table([columns[f.name] for f in target], names=target.names)
    return built.cast(target)


def deletion_rows(data: pa.Table, seq: int, deleted_at: pa.Scalar) -> pa.Table:
    """The batch's ``deleted_keys`` as tombstones of its capture (distinct keys)."""
    distinct = data.select(["star_table", "key"]).group_by(["star_table", "key"]).aggregate([])
    n = distinct.num_rows
    built = pa.table(
        {
            "star_table": distinct.column("star_table"),
            "key": distinct.column("key"),
            CAPTURE_SEQ: pa.array([seq] * n, pa.int64()),
            "deleted_at": pa.array([deleted_at.as_py()] * n, pa.timestamp("us")),
        }
    )
    return built.cast(TOMBSTONES_SCHEMA.as_arrow())
