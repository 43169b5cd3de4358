"""The warehouse star schema as data: the contract between transform (which writes these
columns to the processed lake) and load (which merges them into PostgreSQL).

Column names and meanings are fixed by ``warehouse.md``. Every processed table also carries
``source_version``: the source ``last_updated`` it was built from (for a joined dimension, the
newest of the joined rows), which load uses to keep facts unique per version and to move
dimensions only forward. A dimension joined from two source rows also carries
``oldest_version``, the older of their ``last_updated``: two snapshots of the pair can tie on
the newest stamp while differing in content (a row changed by a transaction that committed
late), and the pair (newest, oldest) breaks that tie. Both stamps only grow across consistent
snapshots, so (newest, oldest) grows lexicographically, and equal pairs mean equal source rows.
Fact surrogate keys (``*_record_id``) are assigned by the warehouse and are not part of the
processed files.

Beside the star tables a processed batch may carry ``deleted_keys``: the star keys whose source
rows were deleted (``star_table``, ``key``), and its manifest's ``extra["set_aside"]`` names the
dimension keys whose rows the batch set aside (``{star_table: [keys]}``), so load can park the
facts that point at them instead of failing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

SOURCE_VERSION = "source_version"
OLDEST_VERSION = "oldest_version"
# The warehouse's own lineage, after the processed columns of every table but the calendar
# (``StarTable.tracked``) and not in the processed files: ``capture_seq``, the capture (commit
# order) of the batch that last wrote the row, from the processed manifest; and
# ``source_deleted_at``, when the pipeline saw the key gone from the source (NULL while it
# lives). (name, SQL type).
CAPTURE_SEQ = "capture_seq"
SOURCE_DELETED_AT = "source_deleted_at"
WAREHOUSE_LINEAGE: tuple[tuple[str, str], ...] = (
    (CAPTURE_SEQ, "BIGINT"),
    (SOURCE_DELETED_AT, "TIMESTAMP"),
)

_ARROW = {
    "DATE": pa.date32(),
    "TIME": pa.time32("ms"),
    "INT": pa.int32(),
    "VARCHAR": pa.string(),
    "NUMERIC(10,2)": pa.decimal128(10, 2),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMP": pa.timestamp("ms"),
}


@dataclass(frozen=True)
class StarColumn:
    name: str
    sql_type: str
    nullable: bool = True

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW[self.sql_type]


@dataclass(frozen=True)
class StarTable:
    name: str
    kind: str  # "dimension" or "fact"
    columns: tuple[StarColumn, ...]
    key: str  # dimension primary key, or the fact's natural id
    record_id: str | None = None  # fact surrogate key (SERIAL, assigned by the warehouse)
    references: tuple[tuple[str, str], ...] = ()  # (column, dimension table)
    # Version stamps after the columns, compared in this order to move a dimension forward.
    lineage: tuple[str, ...] = (SOURCE_VERSION,)
    # Whether the table tracks its source keys (capture_seq, source_deleted_at, deletions):
    # every table but the calendar.
    tracked: bool = True

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def arrow_schema(self) -> pa.Schema:
        fields = [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns]
        stamps = [pa.field(name, pa.timestamp("ms"), nullable=False) for name in self.lineage]
        return pa.schema([*fields, *stamps])


def _cols(spec: str) -> tuple[StarColumn, ...]:
    """``"a INT!, b VARCHAR"``: a trailing ``!`` marks NOT NULL."""
    out = []
    for part in re.split(r",(?![^()]*\))", spec):
        name, sql_type = part.split(maxsplit=1)
        out.append(StarColumn(name, sql_type.rstrip("!"), nullable=not sql_type.endswith("!")))
    return tuple(out)


DIM_DATE = StarTable(
    "dim_date",
    "dimension",
    _cols(
        "date_id DATE!, year INT!, month INT!, day INT!, day_of_week INT!, day_name VARCHAR!,"
        " month_name VARCHAR!, quarter INT!"
    ),
    key="date_id",
    tracked=False,
)
DIM_STAFF = StarTable(
    "dim_staff",
    "dimension",
    _cols(
        "staff_id INT!, first_name VARCHAR!, last_name VARCHAR!, department_name VARCHAR!,"
        " location VARCHAR, email_address VARCHAR!"
    ),
    key="staff_id",
    lineage=(SOURCE_VERSION, OLDEST_VERSION),
)
DIM_LOCATION = StarTable(
    "dim_location",
    "dimension",
    _cols(
        "location_id INT!, address_line_1 VARCHAR!, address_line_2 VARCHAR, district VARCHAR,"
        " city VARCHAR!, postal_code VARCHAR!, country VARCHAR!, phone VARCHAR!"
    ),
    key="location_id",
)
DIM_CURRENCY = StarTable(
    "dim_currency",
    "dimension",
    _cols("currency_id INT!, currency_code VARCHAR!, currency_name VARCHAR"),
    key="currency_id",
)
DIM_DESIGN = StarTable(
    "dim_design",
    "dimension",
    _cols("design_id INT!, design_name VARCHAR!, file_location VARCHAR!, file_name VARCHAR!"),
    key="design_id",
)
DIM_COUNTERPARTY = StarTable(
    "dim_counterparty",
    "dimension",
    _cols(
        "counterparty_id INT!, counterparty_legal_name VARCHAR!,"
        " counterparty_legal_address_line_1 VARCHAR!, counterparty_legal_address_line_2 VARCHAR,"
        " counterparty_legal_district VARCHAR, counterparty_legal_city VARCHAR!,"
        " counterparty_legal_postal_code VARCHAR!, counterparty_legal_country VARCHAR!,"
        " counterparty_legal_phone_number VARCHAR!"
    ),
    key="counterparty_id",
    lineage=(SOURCE_VERSION, OLDEST_VERSION),
)
DIM_TRANSACTION = StarTable(
    "dim_transaction",
    "dimension",
    _cols(
        "transaction_id INT!, transaction_type VARCHAR!, sales_order_id INT, purchase_order_id INT"
    ),
    key="transaction_id",
)
DIM_PAYMENT_TYPE = StarTable(
    "dim_payment_type",
    "dimension",
    _cols("payment_type_id INT!, payment_type_name VARCHAR!"),
    key="payment_type_id",
)

_STAMPS = "created_date DATE!, created_time TIME!, last_updated_date DATE!, last_updated_time TIME!"

FACT_SALES_ORDER = StarTable(
    "fact_sales_order",
    "fact",
    _cols(
        f"sales_order_id INT!, {_STAMPS}, sales_staff_id INT!, counterparty_id INT!,"
        " units_sold INT!, unit_price NUMERIC(10,2)!, currency_id INT!, design_id INT!,"
        " agreed_payment_date DATE!, agreed_delivery_date DATE!, agreed_delivery_location_id INT!"
    ),
    key="sales_order_id",
    record_id="sales_record_id",
    references=(
        ("created_date", "dim_date"),
        ("last_updated_date", "dim_date"),
        ("agreed_payment_date", "dim_date"),
        ("agreed_delivery_date", "dim_date"),
        ("sales_staff_id", "dim_staff"),
        ("counterparty_id", "dim_counterparty"),
        ("currency_id", "dim_currency"),
        ("design_id", "dim_design"),
        ("agreed_delivery_location_id", "dim_location"),
    ),
)
FACT_PURCHASE_ORDER = StarTable(
    "fact_purchase_order",
    "fact",
    _cols(
        f"purchase_order_id INT!, {_STAMPS}, staff_id INT!, counterparty_id INT!,"
        " item_code VARCHAR!, item_quantity INT!, item_unit_price NUMERIC(10,2)!, currency_id INT!,"
        " agreed_delivery_date DATE!, agreed_payment_date DATE!, agreed_delivery_location_id INT!"
    ),
    key="purchase_order_id",
    record_id="purchase_record_id",
    references=(
        ("created_date", "dim_date"),
        ("last_updated_date", "dim_date"),
        ("agreed_delivery_date", "dim_date"),
        ("agreed_payment_date", "dim_date"),
        ("staff_id", "dim_staff"),
        ("counterparty_id", "dim_counterparty"),
        ("currency_id", "dim_currency"),
        ("agreed_delivery_location_id", "dim_location"),
    ),
)
FACT_PAYMENT = StarTable(
    "fact_payment",
    "fact",
    _cols(
        f"payment_id INT!, {_STAMPS}, transaction_id INT!, counterparty_id INT!,"
        " payment_amount NUMERIC(10,2)!, currency_id INT!, payment_type_id INT!, paid BOOLEAN!,"
        " payment_date DATE!"
    ),
    key="payment_id",
    record_id="payment_record_id",
    references=(
        ("created_date", "dim_date"),
        ("last_updated_date", "dim_date"),
        ("payment_date", "dim_date"),
        ("transaction_id", "dim_transaction"),
        ("counterparty_id", "dim_counterparty"),
        ("currency_id", "dim_currency"),
        ("payment_type_id", "dim_payment_type"),
    ),
)

DIMENSIONS: tuple[StarTable, ...] = (
    DIM_DATE,
    DIM_STAFF,
    DIM_LOCATION,
    DIM_CURRENCY,
    DIM_DESIGN,
    DIM_COUNTERPARTY,
    DIM_TRANSACTION,
    DIM_PAYMENT_TYPE,
)
FACTS: tuple[StarTable, ...] = (FACT_SALES_ORDER, FACT_PURCHASE_ORDER, FACT_PAYMENT)
STAR_TABLES: tuple[StarTable, ...] = DIMENSIONS + FACTS
STAR_TABLES_BY_NAME: dict[str, StarTable] = {t.name: t for t in STAR_TABLES}

# The processed table of a batch's deletions: which star table, which key (the source key, as
# every star key of a source table is). Not a star table: load marks, never inserts, these.
DELETED_KEYS = "deleted_keys"
DELETED_KEYS_SCHEMA = pa.schema(
    [
        pa.field("star_table", pa.string(), nullable=False),
        pa.field("key", pa.int32(), nullable=False),
    ]
)
# The processed manifest's ``extra`` key naming the dimension keys set aside by the batch.
SET_ASIDE = "set_aside"
