"""Processed (star-schema) batches made up in code: consistent dimensions and any number of
fact rows, built column-wise with numpy and Arrow. Tests of the load stage and the load
benchmark use them, so neither depends on the ingest and transform stages.

Every batch is self-contained (invariant 4): each id a fact row references is in the batch's
dimensions, and every date a fact carries is in its ``dim_date``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from totes.lake import PROCESSED_PREFIX, Lake, Manifest, ManifestFile, data_key
from totes.star.model import (
    DELETED_KEYS_SCHEMA,
    OLDEST_VERSION,
    SOURCE_VERSION,
    STAR_TABLES_BY_NAME,
)

EPOCH = datetime(2024, 1, 1, 9, 0, 0)
_DAY_NAMES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTH_NAMES = [
    "January", "February", "March", "April", "May", "June", "July",
    "August", "September", "October", "November", "December",
]  # fmt: skip


def deleted_keys(**keys: list[int]) -> pa.Table:
    """A processed ``deleted_keys`` table: star table name -> keys deleted at the source."""
    rows = [(name, key) for name, ks in keys.items() for key in ks]
    return pa.table(
        {"star_table": [r[0] for r in rows], "key": [r[1] for r in rows]},
        schema=DELETED_KEYS_SCHEMA,
    )


def star_table(name: str, columns: dict) -> pa.Table:
    """A table of star table ``name`` in exactly its processed-lake schema."""
    return pa.table(columns, schema=STAR_TABLES_BY_NAME[name].arrow_schema)


def calendar(dates: pa.Array, version: datetime = EPOCH) -> pa.Table:
    """``dim_date`` rows for the distinct non-null ``dates`` (a date32 array)."""
    days = pc.unique(pc.drop_null(pa.array(dates, pa.date32())))
    days = days.take(pc.sort_indices(days))
    weekday = pc.add(pc.day_of_week(days), 1)  # Arrow: Monday = 0
    month = pc.month(days)
    return star_table(
        "dim_date",
        {
            "date_id": days,
            "year": pc.cast(pc.year(days), pa.int32()),
            "month": pc.cast(month, pa.int32()),
            "day": pc.cast(pc.day(days), pa.int32()),
            "day_of_week": pc.cast(weekday, pa.int32()),
            "day_name": pa.array(np.array(_DAY_NAMES)[np.asarray(weekday) - 1]),
            "month_name": pa.array(np.array(_MONTH_NAMES)[np.asarray(month) - 1]),
            "quarter": pc.cast(pc.quarter(days), pa.int32()),
            SOURCE_VERSION: pa.array([version] * len(days), pa.timestamp("ms")),
        },
    )


def _versions(n: int, version: datetime) -> pa.Array:
    return pa.array(np.full(n, np.datetime64(version, "ms")), pa.timestamp("ms"))


def _ids(n: int) -> np.ndarray:
    return np.arange(1, n + 1, dtype=np.int32)


def _labels(prefix: str, ids: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(ids), pa.string()), "")


def dimensions(
    *, staff: int = 20, locations: int = 30, designs: int = 50, counterparties: int = 20,
    transactions: int = 0, version: datetime = EPOCH,
) -> dict[str, pa.Table]:  # fmt: skip
    """Every dimension except ``dim_date``, ids 1..n, all at source version ``version``."""
    s, lo, de, cp, tr = (_ids(n) for n in (staff, locations, designs, counterparties, transactions))
    nulls = pa.nulls
    return {
        "dim_staff": star_table("dim_staff", {
            "staff_id": s, "first_name": _labels("First", s), "last_name": _labels("Last", s),
            "department_name": _labels("Dept", s % 8 + 1), "location": _labels("Site", s % 3),
            "email_address": _labels("staff@", s), SOURCE_VERSION: _versions(len(s), version),
            OLDEST_VERSION: _versions(len(s), version),
        }),
        "dim_location": star_table("dim_location", {
            "location_id": lo, "address_line_1": _labels("Street ", lo),
            "address_line_2": nulls(len(lo), pa.string()), "district": _labels("District ", lo),
            "city": _labels("City ", lo), "postal_code": _labels("PC", lo),
            "country": _labels("Country ", lo % 5), "phone": _labels("0100 ", lo),
            SOURCE_VERSION: _versions(len(lo), version),
        }),
        "dim_currency": star_table("dim_currency", {
            "currency_id": [1, 2, 3], "currency_code": ["GBP", "USD", "EUR"],
            "currency_name": ["Pound Sterling", "US Dollar", "Euro"],
            SOURCE_VERSION: _versions(3, version),
        }),
        "dim_design": star_table("dim_design", {
            "design_id": de, "design_name": _labels("Design ", de),
            "file_location": _labels("/designs/", de % 4), "file_name": _labels("d", de),
            SOURCE_VERSION: _versions(len(de), version),
        }),
        "dim_counterparty": star_table("dim_counterparty", {
            "counterparty_id": cp, "counterparty_legal_name": _labels("Party ", cp),
            "counterparty_legal_address_line_1": _labels("Street ", cp),
            "counterparty_legal_address_line_2": nulls(len(cp), pa.string()),
            "counterparty_legal_district": nulls(len(cp), pa.string()),
            "counterparty_legal_city": _labels("City ", cp),
            "counterparty_legal_postal_code": _labels("PC", cp),
            "counterparty_legal_country": _labels("Country ", cp % 5),
            "counterparty_legal_phone_number": _labels("0200 ", cp),
            SOURCE_VERSION: _versions(len(cp), version),
            OLDEST_VERSION: _versions(len(cp), version),
        }),
        "dim_payment_type": star_table("dim_payment_type", {
            "payment_type_id": [1, 2, 3, 4],
            "payment_type_name": [
                "SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND",
            ],
            SOURCE_VERSION: _versions(4, version),
        }),
        "dim_transaction": star_table("dim_transaction", {
            "transaction_id": tr,
            "transaction_type": pa.array(np.where(tr % 2 == 1, "SALE", "PURCHASE")),
            "sales_order_id": pa.array(np.where(tr % 2 == 1, tr, 0), mask=tr % 2 == 0),
            "purchase_order_id": pa.array(np.where(tr % 2 == 0, tr, 0), mask=tr % 2 == 1),
            SOURCE_VERSION: _versions(len(tr), version),
        }),
    }  # fmt: skip


def _stamps(ms: np.ndarray) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(date, time of day, timestamp) columns for ``ms`` milliseconds after ``EPOCH``."""
    epoch_ms = np.datetime64(EPOCH, "ms").astype(np.int64)
    stamp = epoch_ms + ms.astype(np.int64)
    day = (stamp // 86_400_000).astype(np.int32)
    of_day = (stamp % 86_400_000).astype(np.int32)
    return (
        pa.array(day).cast(pa.date32()),
        pa.array(of_day).cast(pa.time32("ms")),
        pa.array(stamp).cast(pa.timestamp("ms")),
    )


def _facts(name: str, n: int, seed: int, first_id: int, updated_ms: int, columns) -> pa.Table:
    """Shared shape of every fact: ids, created/last-updated stamps, then ``columns(rng)``."""
    rng = np.random.default_rng(seed)
    created = rng.integers(0, 200 * 86_400_000, n)
    c_day, c_time, _ = _stamps(created)
    u_day, u_time, u_ts = _stamps(created + updated_ms)
    table = STAR_TABLES_BY_NAME[name]
    return star_table(name, {
        table.key: np.arange(first_id, first_id + n, dtype=np.int32),
        "created_date": c_day, "created_time": c_time,
        "last_updated_date": u_day, "last_updated_time": u_time,
        **columns(rng, c_day), SOURCE_VERSION: u_ts,
    })  # fmt: skip


def _pick(rng, dims: dict[str, pa.Table], table: str, n: int) -> np.ndarray:
    return rng.choice(np.asarray(dims[table][STAR_TABLES_BY_NAME[table].key]), n)


def _money(rng, n: int) -> pa.Array:
    return pa.array(rng.integers(1, 4_000_000, n) / 100).cast(pa.decimal128(10, 2))


def _later(day: pa.Array, rng) -> pa.Array:
    offset = pa.array(rng.integers(1, 30, len(day)).astype(np.int32))
    return pc.cast(pc.add(pc.cast(day, pa.int32()), offset), pa.date32())


def sales_orders(
    n: int, dims: dict[str, pa.Table], *, seed: int = 0, first_id: int = 1, updated_ms: int = 0
) -> pa.Table:
    """``n`` fact_sales_order rows referencing ``dims``; ``updated_ms`` after creation."""

    def columns(rng, day):
        return {
            "sales_staff_id": _pick(rng, dims, "dim_staff", n),
            "counterparty_id": _pick(rng, dims, "dim_counterparty", n),
            "units_sold": rng.integers(1, 100_000, n).astype(np.int32),
            "unit_price": _money(rng, n), "currency_id": _pick(rng, dims, "dim_currency", n),
            "design_id": _pick(rng, dims, "dim_design", n),
            "agreed_payment_date": _later(day, rng), "agreed_delivery_date": _later(day, rng),
            "agreed_delivery_location_id": _pick(rng, dims, "dim_location", n),
        }  # fmt: skip

    return _facts("fact_sales_order", n, seed, first_id, updated_ms, columns)


def purchase_orders(
    n: int, dims: dict[str, pa.Table], *, seed: int = 0, first_id: int = 1, updated_ms: int = 0
) -> pa.Table:
    def columns(rng, day):
        return {
            "staff_id": _pick(rng, dims, "dim_staff", n),
            "counterparty_id": _pick(rng, dims, "dim_counterparty", n),
            "item_code": _labels("ITEM", rng.integers(1, 500, n)),
            "item_quantity": rng.integers(1, 1000, n).astype(np.int32),
            "item_unit_price": _money(rng, n), "currency_id": _pick(rng, dims, "dim_currency", n),
            "agreed_delivery_date": _later(day, rng), "agreed_payment_date": _later(day, rng),
            "agreed_delivery_location_id": _pick(rng, dims, "dim_location", n),
        }  # fmt: skip

    return _facts("fact_purchase_order", n, seed, first_id, updated_ms, columns)


def payments(
    n: int, dims: dict[str, pa.Table], *, seed: int = 0, first_id: int = 1, updated_ms: int = 0,
    paid: bool = False,
) -> pa.Table:  # fmt: skip
    """``n`` fact_payment rows; payment i settles transaction i (the dims must hold it)."""

    def columns(rng, day):
        return {
            "transaction_id": np.arange(first_id, first_id + n, dtype=np.int32),
            "counterparty_id": _pick(rng, dims, "dim_counterparty", n),
            "payment_amount": _money(rng, n), "currency_id": _pick(rng, dims, "dim_currency", n),
            "payment_type_id": _pick(rng, dims, "dim_payment_type", n),
            "paid": pa.array(np.full(n, paid)), "payment_date": _later(day, rng),
        }  # fmt: skip

    return _facts("fact_payment", n, seed, first_id, updated_ms, columns)


def with_calendar(tables: dict[str, pa.Table], version: datetime = EPOCH) -> dict[str, pa.Table]:
    """``tables`` plus the ``dim_date`` rows every date column of their facts needs."""
    dates = [
        tables[name][column].combine_chunks()
        for name, table in STAR_TABLES_BY_NAME.items()
        if table.kind == "fact" and name in tables
        for column, dim in table.references
        if dim == "dim_date"
    ]
    if not dates:
        return dict(tables)
    return {**tables, "dim_date": calendar(pa.concat_arrays(dates), version)}


def star_batch(
    sales: int = 0, purchases: int = 0, payments_: int = 0, *, seed: int = 0,
    version: datetime = EPOCH,
) -> dict[str, pa.Table]:  # fmt: skip
    """A self-contained batch of all eleven tables (fact tables may be empty)."""
    dims = dimensions(transactions=max(payments_, 1), version=version)
    return with_calendar({
        **dims,
        "fact_sales_order": sales_orders(sales, dims, seed=seed),
        "fact_purchase_order": purchase_orders(purchases, dims, seed=seed + 1),
        "fact_payment": payments(payments_, dims, seed=seed + 2),
    }, version)  # fmt: skip


def processed_manifest(
    batch_id: str, tables: dict[str, pa.Table], *, hi: datetime | None = None,
    sizes: dict[str, int] | None = None, capture_seq: int | None = None,
    set_aside: dict[str, list[int]] | None = None,
) -> Manifest:  # fmt: skip
    """The processed manifest transform would write for ``tables`` (``capture_seq`` None: a
    batch from before capture by commit order, which carries none)."""
    from totes.lake import schema_fingerprint

    hi = hi or EPOCH + timedelta(days=365)
    files = tuple(
        ManifestFile(
            table=name, key=data_key(PROCESSED_PREFIX, name, batch_id), rows=table.num_rows,
            fingerprint=schema_fingerprint(table.schema), bytes=(sizes or {}).get(name, 0),
        )
        for name, table in sorted(tables.items())
    )  # fmt: skip
    return Manifest(
        batch_id=batch_id, stage="processed", window_lo=None, window_hi=hi.isoformat(),
        files=files, source_batch_id=batch_id,
        extra={
            "hi_utc": hi.replace(tzinfo=UTC).isoformat(), "source_tables": [],
            **({} if capture_seq is None else {"capture_seq": capture_seq}),
            **({} if set_aside is None else {"set_aside": set_aside}),
        },
    )  # fmt: skip


def put_processed_batch(lake: Lake, batch_id: str, tables: dict[str, pa.Table], **kw) -> str:
    """Write the batch's files then its manifest (last) to a processed bucket; returns the
    manifest key."""
    sizes = {
        name: lake.put_table(data_key(PROCESSED_PREFIX, name, batch_id), table)
        for name, table in tables.items()
    }
    return lake.put_manifest(processed_manifest(batch_id, tables, sizes=sizes, **kw))
