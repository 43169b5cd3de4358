"""The totesys schema as data: every table, column, type, key and reference, exactly as
``totesys-source.md`` describes the real database.

Everything that touches the source (DDL, loader, generator, extraction SQL, raw Arrow
schemas) is derived from these definitions; SQL identifiers only ever come from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

ENUMS: dict[str, tuple[str, ...]] = {
    "PaymentTypeName": ("SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND"),
    "TransactionType": ("SALE", "PURCHASE"),
}

# SQL type -> Arrow type of the raw lake. Enums become strings, text dates stay text.
_ARROW = {
    "serial": pa.int32(),
    "integer": pa.int32(),
    "text": pa.string(),
    "varchar(3)": pa.string(),
    "numeric(10,2)": pa.decimal128(10, 2),
    "boolean": pa.bool_(),
    "timestamp(3)": pa.timestamp("ms"),
    '"PaymentTypeName"': pa.string(),
    '"TransactionType"': pa.string(),
}


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    not_null: bool = True
    default: str | None = None

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW[self.sql_type]

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

    @property
    def key(self) -> str:
        return f"{self.name}_id"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=not c.not_null) for c in self.columns]
        )


def _table(name: str, *cols: Column, fks: tuple[ForeignKey, ...] = (), unique=()) -> Table:
    stamps = (
        Column("created_at", "timestamp(3)", default="CURRENT_TIMESTAMP"),
        Column("last_updated", "timestamp(3)"),
    )
    return Table(name, (Column(f"{name}_id", "serial"), *cols, *stamps), fks, tuple(unique))


def _c(name: str, sql_type: str = "text", nullable: bool = False) -> Column:
    return Column(name, sql_type, not_null=not nullable)


ADDRESS = _table(
    "address",
    _c("address_line_1"),
    _c("address_line_2", nullable=True),
    _c("district", nullable=True),
    _c("city"),
    _c("postal_code"),
    _c("country"),
    _c("phone"),
)
COUNTERPARTY = _table(
    "counterparty",
    _c("counterparty_legal_name"),
    _c("legal_address_id", "integer"),
    _c("commercial_contact", nullable=True),
    _c("delivery_contact", nullable=True),
    fks=(ForeignKey("legal_address_id", "address"),),
)
CURRENCY = _table("currency", _c("currency_code", "varchar(3)"))
DEPARTMENT = _table(
    "department",
    _c("department_name"),
    _c("location", nullable=True),
    _c("manager", nullable=True),
)
DESIGN = _table("design", _c("design_name"), _c("file_location"), _c("file_name"))
STAFF = _table(
    "staff",
    _c("first_name"),
    _c("last_name"),
    _c("department_id", "integer"),
    _c("email_address"),
    fks=(ForeignKey("department_id", "department"),),
)
PAYMENT_TYPE = _table("payment_type", _c("payment_type_name", '"PaymentTypeName"'))
SALES_ORDER = _table(
    "sales_order",
    _c("design_id", "integer"),
    _c("staff_id", "integer"),
    _c("counterparty_id", "integer"),
    _c("units_sold", "integer"),
    _c("unit_price", "numeric(10,2)"),
    _c("currency_id", "integer"),
    _c("agreed_delivery_date"),
    _c("agreed_payment_date"),
    _c("agreed_delivery_location_id", "integer"),
    fks=(
        ForeignKey("design_id", "design"),
        ForeignKey("staff_id", "staff"),
        ForeignKey("counterparty_id", "counterparty"),
        ForeignKey("currency_id", "currency"),
        ForeignKey("agreed_delivery_location_id", "address"),
    ),
)
PURCHASE_ORDER = _table(
    "purchase_order",
    _c("staff_id", "integer"),
    _c("counterparty_id", "integer"),
    _c("item_code"),
    _c("item_quantity", "integer"),
    _c("item_unit_price", "numeric(10,2)"),
    _c("currency_id", "integer"),
    _c("agreed_delivery_date"),
    _c("agreed_payment_date"),
    _c("agreed_delivery_location_id", "integer"),
    fks=(
        ForeignKey("staff_id", "staff"),
        ForeignKey("counterparty_id", "counterparty"),
        ForeignKey("currency_id", "currency"),
        ForeignKey("agreed_delivery_location_id", "address"),
    ),
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
)
PAYMENT = _table(
    "payment",
    _c("transaction_id", "integer"),
    _c("counterparty_id", "integer"),
    _c("payment_amount", "numeric(10,2)"),
    _c("currency_id", "integer"),
    _c("payment_type_id", "integer"),
    _c("paid", "boolean"),
    _c("payment_date"),
    _c("company_ac_number", "integer"),
    _c("counterparty_ac_number", "integer"),
    fks=(
        ForeignKey("transaction_id", "transaction"),
        ForeignKey("counterparty_id", "counterparty"),
        ForeignKey("currency_id", "currency"),
        ForeignKey("payment_type_id", "payment_type"),
    ),
    unique=("transaction_id",),
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
