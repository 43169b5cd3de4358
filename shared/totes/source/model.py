"""The totesys schema as data: every table, column, type, key and reference, exactly as
``totesys-source.md`` describes the real database.

Everything that touches the source (DDL, loader, generator, extraction SQL, raw Arrow
schemas, schema checks, quality gates) is derived from these definitions; SQL identifiers only
ever come from here. The model also owns the domain rules the other modules used to keep by
hand: each table's role (a fact source, whose rows become warehouse facts, or a dimension
source), its text-date columns, which ``information_schema`` types each model type accepts,
which parent row a dimension embeds, which columns the star schema carries (and so which need
a value there), and which star table holds each table's keys. Supporting a new source table
starts here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

ENUMS: dict[str, tuple[str, ...]] = {
    "PaymentTypeName": ("SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND"),
    "TransactionType": ("SALE", "PURCHASE"),
}

# A table's role: its rows become warehouse facts (selected by the window alone, never pulled
# in by a reference), or they feed dimensions (pulled in whenever a selected row needs them).
FACT_SOURCE = "fact source"
DIMENSION_SOURCE = "dimension source"
ROLES = (FACT_SOURCE, DIMENSION_SOURCE)


@dataclass(frozen=True)
class SqlType:
    """What one model type is in the raw lake, and what the source may report it as."""

    arrow: pa.DataType
    information_schema: frozenset[str]  # accepted information_schema.columns.data_type values
    # SQL over ``{c}`` that is true when a source value fits the raw lake type (None: every
    # value does). PostgreSQL holds timestamps the lake and the star cannot ('infinity',
    # years past 9999 or BC) and numerics past numeric(10,2) when a column's type is widened.
    representable: str | None = None


# A value outside these is set aside with its row, never coerced. A timestamp holds whole
# milliseconds (the lake's timestamp[ms]): a column widened past timestamp(3) may hold
# microseconds, which Arrow's parse and cast refuse, failing the whole run (found by review).
# Compared with its own rounding to milliseconds, after the range checks (an AND is evaluated
# in order in a select list: 'infinity' is never cast). On a timestamp(3) column the cast is
# no cast at all (same type modifier), one comparison more per stamp and evaluation. Measured
# on the four large tables' selection at 1M orders (4.25M rows, scratch bench, alternating):
# server CPU 2.53 -> 2.67 s, paired median +0.115 s (~27 ns a row); a CASE for the order cost
# more (2.60 as AND against 2.66 as CASE in a three-way run).
_TIMESTAMP_RANGE = (
    "{c} IS NULL OR ({c} >= CAST('0001-01-01' AS timestamp)"
    " AND {c} < CAST('10000-01-01' AS timestamp) AND {c} = CAST({c} AS timestamp(3)))"
)
_MONEY_RANGE = "{c} IS NULL OR (abs({c}) < 100000000 AND {c} = round({c}, 2))"
# The raw lake's side column: for a row holding values the lake type cannot, a JSON object of
# those columns and their original text (the typed column is NULL in that row).
UNREPRESENTABLE = "_unrepresentable"
# The raw table that carries a batch's deletions: the source table and the key deleted.
DELETED_KEYS = "deleted_keys"
DELETED_KEYS_SCHEMA = pa.schema(
    [pa.field("table", pa.string(), nullable=False), pa.field("key", pa.int32(), nullable=False)]
)


_TEXT = frozenset({"text", "character varying"})
_ENUM = frozenset({"USER-DEFINED"}) | _TEXT
# Model type -> raw lake type and accepted source types. Enums become strings, text dates stay
# text.
SQL_TYPES: dict[str, SqlType] = {
    "serial": SqlType(pa.int32(), frozenset({"integer"})),
    "integer": SqlType(pa.int32(), frozenset({"integer"})),
    "text": SqlType(pa.string(), _TEXT),
    "varchar(3)": SqlType(pa.string(), _TEXT | {"character"}),
    "numeric(10,2)": SqlType(pa.decimal128(10, 2), frozenset({"numeric"}), _MONEY_RANGE),
    "boolean": SqlType(pa.bool_(), frozenset({"boolean"})),
    "timestamp(3)": SqlType(
        pa.timestamp("ms"), frozenset({"timestamp without time zone"}), _TIMESTAMP_RANGE
    ),
    '"PaymentTypeName"': SqlType(pa.string(), _ENUM),
    '"TransactionType"': SqlType(pa.string(), _ENUM),
}


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    not_null: bool = True
    default: str | None = None
    text_date: bool = False  # a YYYY-MM-DD date kept as text (cast to DATE by the remodelling)
    # The star schema carries it (False: payment's account numbers, a department's manager, a
    # counterparty's contacts, a dimension source's created_at). A carried NOT NULL column is
    # one the star needs a value in; a column not carried may hold anything, NULL included.
    carried: bool = True

    @property
    def required(self) -> bool:
        """The star needs a value here: a row with NULL in it cannot be remodelled."""
        return self.carried and self.not_null

    @property
    def arrow_type(self) -> pa.DataType:
        return SQL_TYPES[self.sql_type].arrow

    @property
    def accepted_types(self) -> frozenset[str]:
        """The ``information_schema`` data types the source may report for this column."""
        return SQL_TYPES[self.sql_type].information_schema

    @property
    def representable(self) -> str | None:
        """SQL over ``{c}``: the value fits the raw lake type (None: always)."""
        return SQL_TYPES[self.sql_type].representable

    @property
    def enum(self) -> str | None:
        return self.sql_type.strip('"') if self.sql_type.startswith('"') else None


@dataclass(frozen=True)
class ForeignKey:
    column: str
    table: str
    on_delete: str = "RESTRICT"
    on_update: str = "CASCADE"

    @property
    def ref_column(self) -> str:
        return f"{self.table}_id"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    foreign_keys: tuple[ForeignKey, ...] = ()
    unique: tuple[str, ...] = ()
    role: str = DIMENSION_SOURCE
    # The foreign key column of the parent whose columns this table's dimension embeds
    # (dim_staff carries its department's name and location): a changed parent changes it.
    embeds: str | None = None
    # The star table keyed by this table's key (address -> dim_location), None when the table
    # has none of its own (department lives on inside dim_staff): where a deleted or set-aside
    # key of this table lands.
    star_table: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"table {self.name}: role must be one of {ROLES}")
        if self.embeds is not None and self.embeds not in {f.column for f in self.foreign_keys}:
            raise ValueError(f"table {self.name}: embeds {self.embeds}, not a foreign key")
        for fk in self.foreign_keys:
            if not self.column(fk.column).carried:
                raise ValueError(f"table {self.name}: reference {fk.column} must be carried")

    @property
    def key(self) -> str:
        return f"{self.name}_id"

    @property
    def is_fact_source(self) -> bool:
        return self.role == FACT_SOURCE

    @property
    def text_date_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.text_date)

    @property
    def embedded_parent(self) -> ForeignKey | None:
        """The reference to the parent row this table's dimension embeds, if any."""
        return next((f for f in self.foreign_keys if f.column == self.embeds), None)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def carried_columns(self) -> tuple[Column, ...]:
        """The columns the star schema is built from."""
        return tuple(c for c in self.columns if c.carried)

    @property
    def required_columns(self) -> tuple[Column, ...]:
        """The columns the star needs a value in (carried and NOT NULL in the model)."""
        return tuple(c for c in self.columns if c.required)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=not c.not_null) for c in self.columns]
        )

    @property
    def checked_schema(self) -> pa.Schema:
        """The rows that passed the quality gates: the model's columns, NOT NULL only where the
        star needs a value (a column it does not carry may be NULL, e.g. after DROP NOT NULL)."""
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=not c.required) for c in self.columns]
        )

    @property
    def lake_schema(self) -> pa.Schema:
        """The raw lake's schema: the model's columns, all nullable (a value the lake cannot
        hold is NULL there), and the ``_unrepresentable`` side column keeping its text."""
        fields = [pa.field(c.name, c.arrow_type) for c in self.columns]
        return pa.schema([*fields, pa.field(UNREPRESENTABLE, pa.string())])


def _table(
    name: str,
    *cols: Column,
    fks: tuple[ForeignKey, ...] = (),
    unique: tuple[str, ...] = (),
    role: str = DIMENSION_SOURCE,
    embeds: str | None = None,
    star: str | None = None,
) -> Table:
    # A fact keeps when each version was created; a dimension keeps its latest values only.
    stamps = (
        Column(
            "created_at",
            "timestamp(3)",
            default="CURRENT_TIMESTAMP",
            carried=role == FACT_SOURCE,
        ),
        Column("last_updated", "timestamp(3)"),
    )
    columns = (Column(f"{name}_id", "serial"), *cols, *stamps)
    return Table(name, columns, fks, tuple(unique), role=role, embeds=embeds, star_table=star)


def _c(name: str, sql_type: str = "text", nullable: bool = False, carried: bool = True) -> Column:
    return Column(name, sql_type, not_null=not nullable, carried=carried)


def _date(name: str) -> Column:
    """A text column holding a ``YYYY-MM-DD`` date (the source keeps these as text)."""
    return Column(name, "text", text_date=True)


ADDRESS = _table(
    "address",
    _c("address_line_1"),
    _c("address_line_2", nullable=True),
    _c("district", nullable=True),
    _c("city"),
    _c("postal_code"),
    _c("country"),
    _c("phone"),
    star="dim_location",
)
COUNTERPARTY = _table(
    "counterparty",
    _c("counterparty_legal_name"),
    _c("legal_address_id", "integer"),
    _c("commercial_contact", nullable=True, carried=False),
    _c("delivery_contact", nullable=True, carried=False),
    fks=(ForeignKey("legal_address_id", "address"),),
    embeds="legal_address_id",
    star="dim_counterparty",
)
CURRENCY = _table("currency", _c("currency_code", "varchar(3)"), star="dim_currency")
DEPARTMENT = _table(
    "department",
    _c("department_name"),
    _c("location", nullable=True),
    _c("manager", nullable=True, carried=False),
)
DESIGN = _table(
    "design", _c("design_name"), _c("file_location"), _c("file_name"), star="dim_design"
)
STAFF = _table(
    "staff",
    _c("first_name"),
    _c("last_name"),
    _c("department_id", "integer"),
    _c("email_address"),
    fks=(ForeignKey("department_id", "department"),),
    embeds="department_id",
    star="dim_staff",
)
PAYMENT_TYPE = _table(
    "payment_type", _c("payment_type_name", '"PaymentTypeName"'), star="dim_payment_type"
)
SALES_ORDER = _table(
    "sales_order",
    _c("design_id", "integer"),
    _c("staff_id", "integer"),
    _c("counterparty_id", "integer"),
    _c("units_sold", "integer"),
    _c("unit_price", "numeric(10,2)"),
    _c("currency_id", "integer"),
    _date("agreed_delivery_date"),
    _date("agreed_payment_date"),
    _c("agreed_delivery_location_id", "integer"),
    fks=(
        ForeignKey("design_id", "design"),
        ForeignKey("staff_id", "staff"),
        ForeignKey("counterparty_id", "counterparty"),
        ForeignKey("currency_id", "currency"),
        ForeignKey("agreed_delivery_location_id", "address"),
    ),
    role=FACT_SOURCE,
    star="fact_sales_order",
)
PURCHASE_ORDER = _table(
    "purchase_order",
    _c("staff_id", "integer"),
    _c("counterparty_id", "integer"),
    _c("item_code"),
    _c("item_quantity", "integer"),
    _c("item_unit_price", "numeric(10,2)"),
    _c("currency_id", "integer"),
    _date("agreed_delivery_date"),
    _date("agreed_payment_date"),
    _c("agreed_delivery_location_id", "integer"),
    fks=(
        ForeignKey("staff_id", "staff"),
        ForeignKey("counterparty_id", "counterparty"),
        ForeignKey("currency_id", "currency"),
        ForeignKey("agreed_delivery_location_id", "address"),
    ),
    role=FACT_SOURCE,
    star="fact_purchase_order",
)
TRANSACTION = _table(
    "transaction",
    _c("transaction_type", '"TransactionType"'),
    _c("sales_order_id", "integer", nullable=True),
    _c("purchase_order_id", "integer", nullable=True),
    fks=(
        ForeignKey("sales_order_id", "sales_order", on_delete="SET NULL"),
        ForeignKey("purchase_order_id", "purchase_order", on_delete="SET NULL"),
    ),
    unique=("sales_order_id", "purchase_order_id"),
    star="dim_transaction",
)
PAYMENT = _table(
    "payment",
    _c("transaction_id", "integer"),
    _c("counterparty_id", "integer"),
    _c("payment_amount", "numeric(10,2)"),
    _c("currency_id", "integer"),
    _c("payment_type_id", "integer"),
    _c("paid", "boolean"),
    _date("payment_date"),
    _c("company_ac_number", "integer", carried=False),
    _c("counterparty_ac_number", "integer", carried=False),
    fks=(
        ForeignKey("transaction_id", "transaction"),
        ForeignKey("counterparty_id", "counterparty"),
        ForeignKey("currency_id", "currency"),
        ForeignKey("payment_type_id", "payment_type"),
    ),
    unique=("transaction_id",),
    role=FACT_SOURCE,
    star="fact_payment",
)

# Dependency order: every table after the tables it references.
TABLES: tuple[Table, ...] = (
    ADDRESS,
    COUNTERPARTY,
    CURRENCY,
    DEPARTMENT,
    DESIGN,
    STAFF,
    PAYMENT_TYPE,
    SALES_ORDER,
    PURCHASE_ORDER,
    TRANSACTION,
    PAYMENT,
)
TABLES_BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}
