"""The remodelling: one raw batch (totesys tables) in, the star-schema rows of that batch out.

Pure and vectorised: Arrow tables in, Arrow tables out, no I/O, no clock, no per-row Python.
One function per warehouse table, each answering "how is this table built" in one place.

Every output row carries ``source_version``: facts their own ``last_updated`` (a fact row is
one version of a source row), dimensions the newest ``last_updated`` of the source rows they
were built from (so a counterparty whose address changed gets a newer version than before);
the two joined dimensions also carry ``oldest_version``, the older stamp, as a tie-breaker.
Load uses it to keep facts unique per version and to move dimensions only forward.

A batch is self-contained (the quality gates check it, and set aside the rows the star cannot
take, with the dimension rows that embed them), so joins are inner joins inside the batch.
Within a batch a dimension keeps only the newest version of each key; a fact keeps every
distinct version. Output rows are sorted by key (and version), so the result does not
depend on the order of the input rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from totes.arrow_values import TRUE, bools, strings
from totes.lake import empty_table
from totes.observability import logger
from totes.source.model import DELETED_KEYS_SCHEMA, TABLES, TABLES_BY_NAME
from totes.star import model as star
from totes.star.currencies import currency_name_table
from totes.star.dates import calendar, date_part, parse_text_date, time_part

Source = Mapping[str, pa.Table]

LAST_UPDATED = "last_updated"


def raw_table(source: Source, name: str) -> pa.Table:
    """The batch's rows of one source table as the quality gates pass them (empty if the batch
    has none): the model's columns, NOT NULL where the star needs a value; columns beyond the
    model's are dropped."""
    schema = TABLES_BY_NAME[name].checked_schema
    table = source.get(name)
    if table is None:
        return empty_table(schema)
    return table.select(schema.names).cast(schema)


def _first_of_each_run(table: pa.Table, keys: list[str]) -> pa.Table:
    """Rows of an already sorted table whose ``keys`` differ from the previous row's."""
    if table.num_rows == 0:
        return table
    columns = [table[key].combine_chunks() for key in keys]
    change = functools.reduce(pc.or_, [pc.not_equal(c[1:], c[:-1]) for c in columns])
    mask = pa.concat_arrays([bools([True]), pc.fill_null(change, TRUE)])
    return table.filter(mask)


def latest_versions(table: pa.Table, key: str) -> pa.Table:
    """The newest version of each key, sorted by key."""
    ordered = table.sort_by([(key, "ascending"), (LAST_UPDATED, "descending")])
    return _first_of_each_run(ordered, [key])


def distinct_versions(table: pa.Table, key: str) -> pa.Table:
    """Every distinct (key, last_updated) version once, sorted by key then version."""
    ordered = table.sort_by([(key, "ascending"), (LAST_UPDATED, "ascending")])
    return _first_of_each_run(ordered, [key, LAST_UPDATED])


def conform(columns: dict[str, pa.ChunkedArray | pa.Array], target: star.StarTable) -> pa.Table:
    """The columns as exactly the processed-lake schema of ``target`` (names, order, types)."""
    schema = target.arrow_schema
    return pa.table({name: columns[name] for name in schema.names}).cast(schema)


def _stamps(table: pa.Table) -> dict[str, pa.ChunkedArray]:
    return {
        "created_date": date_part(table["created_at"]),
        "created_time": time_part(table["created_at"]),
        "last_updated_date": date_part(table[LAST_UPDATED]),
        "last_updated_time": time_part(table[LAST_UPDATED]),
    }


def _prefixed(table: pa.Table, prefix: str) -> pa.Table:
    return table.rename_columns([f"{prefix}{name}" for name in table.column_names])


def _joined(left: pa.Table, right: pa.Table, left_key: str, right_key: str) -> pa.Table:
    """Each left row with the right row its key names, in the left's order; a left row whose
    key the right lacks is dropped (an inner join). Right keys are unique (newest versions),
    right columns prefixed ``r_``. A lookup (``index_in``, ``take``) rather than
    ``Table.join``, whose first use in a process imports Arrow's query engine (``acero``,
    ``pyarrow.dataset``: 7 ms) and pandas (0.13 s of CPU), docs/transform.md "Cost per batch"."""
    at = pc.index_in(left[left_key], value_set=right[right_key], skip_nulls=True)
    found = pc.is_valid(at)
    left = left.filter(found)
    right = _prefixed(right, "r_").take(pc.drop_null(at))
    return pa.Table.from_arrays(
        [*left.columns, *right.columns], names=[*left.column_names, *right.column_names]
    )


def _joined_versions(rows: pa.Table) -> dict[str, pa.ChunkedArray]:
    """A joined dimension's lineage: the newest and the oldest ``last_updated`` of its two
    source rows (the pair that tells two snapshots of a joined row apart, see the model)."""
    stamps = (rows[LAST_UPDATED], rows["r_last_updated"])
    return {
        star.SOURCE_VERSION: pc.max_element_wise(*stamps),
        star.OLDEST_VERSION: pc.min_element_wise(*stamps),
    }


# -- dimensions ----------------------------------------------------------------------------


def dim_staff(source: Source) -> pa.Table:
    """staff JOIN department: a staff member's department name and location."""
    staff = latest_versions(raw_table(source, "staff"), "staff_id")
    department = latest_versions(raw_table(source, "department"), "department_id")
    rows = _joined(staff, department, "department_id", "department_id")
    return conform(
        {
            "staff_id": rows["staff_id"],
            "first_name": rows["first_name"],
            "last_name": rows["last_name"],
            "department_name": rows["r_department_name"],
            "location": rows["r_location"],
            "email_address": rows["email_address"],
            **_joined_versions(rows),
        },
        star.DIM_STAFF,
    ).sort_by("staff_id")


def dim_location(source: Source) -> pa.Table:
    """address, keyed as location_id."""
    address = latest_versions(raw_table(source, "address"), "address_id")
    columns = {name: address[name] for name in star.DIM_LOCATION.column_names[1:]}
    return conform(
        {"location_id": address["address_id"], **columns, "source_version": address[LAST_UPDATED]},
        star.DIM_LOCATION,
    )


def dim_currency(source: Source) -> pa.Table:
    """currency plus its ISO 4217 English name; an unknown code gets NULL and a warning."""
    currency = latest_versions(raw_table(source, "currency"), "currency_id")
    names = currency_name_table()
    at = pc.index_in(
        pc.utf8_upper(currency["currency_code"]), value_set=names["currency_code"], skip_nulls=True
    )
    rows = currency.append_column("currency_name", pc.take(names["currency_name"], at))
    # Named by key, never by value (a widened code column could hold any text, of any size).
    unknown = rows.filter(pc.is_null(rows["currency_name"]))["currency_id"]
    if len(unknown):
        logger.warning(
            "data quality: currency code not in ISO 4217, currency_name left NULL",
            extra={
                "table": "currency",
                "column": "currency_code",
                "currency_ids": sorted(unknown.to_pylist()),
            },
        )
    return conform(
        {
            "currency_id": rows["currency_id"],
            "currency_code": rows["currency_code"],
            "currency_name": rows["currency_name"],
            "source_version": rows[LAST_UPDATED],
        },
        star.DIM_CURRENCY,
    )


def dim_design(source: Source) -> pa.Table:
    """design, as is."""
    design = latest_versions(raw_table(source, "design"), "design_id")
    return conform({**_columns(design), "source_version": design[LAST_UPDATED]}, star.DIM_DESIGN)


def dim_counterparty(source: Source) -> pa.Table:
    """counterparty JOIN address ON legal_address_id: the legal name with its legal address."""
    counterparty = latest_versions(raw_table(source, "counterparty"), "counterparty_id")
    address = latest_versions(raw_table(source, "address"), "address_id")
    rows = _joined(counterparty, address, "legal_address_id", "address_id")
    legal = "counterparty_legal_"
    return conform(
        {
            "counterparty_id": rows["counterparty_id"],
            "counterparty_legal_name": rows["counterparty_legal_name"],
            **{
                f"{legal}{name}": rows[f"r_{name}"]
                for name in ("address_line_1", "address_line_2", "district", "city")
            },
            f"{legal}postal_code": rows["r_postal_code"],
            f"{legal}country": rows["r_country"],
            f"{legal}phone_number": rows["r_phone"],
            **_joined_versions(rows),
        },
        star.DIM_COUNTERPARTY,
    ).sort_by("counterparty_id")


def dim_transaction(source: Source) -> pa.Table:
    """transaction, as is (its order ids stay plain integers: no warehouse key)."""
    transaction = latest_versions(raw_table(source, "transaction"), "transaction_id")
    return conform(
        {**_columns(transaction), "source_version": transaction[LAST_UPDATED]},
        star.DIM_TRANSACTION,
    )


def dim_payment_type(source: Source) -> pa.Table:
    """payment_type, as is."""
    payment_type = latest_versions(raw_table(source, "payment_type"), "payment_type_id")
    return conform(
        {**_columns(payment_type), "source_version": payment_type[LAST_UPDATED]},
        star.DIM_PAYMENT_TYPE,
    )


def _columns(table: pa.Table) -> dict[str, pa.ChunkedArray]:
    return {name: table[name] for name in table.column_names}


# -- facts ---------------------------------------------------------------------------------


def fact_sales_order(source: Source) -> pa.Table:
    """Every version of every sales order in the batch (staff_id becomes sales_staff_id)."""
    order = distinct_versions(raw_table(source, "sales_order"), "sales_order_id")
    return conform(
        {
            **_columns(order),
            **_stamps(order),
            "sales_staff_id": order["staff_id"],
            "agreed_payment_date": parse_text_date(order["agreed_payment_date"]),
            "agreed_delivery_date": parse_text_date(order["agreed_delivery_date"]),
            "source_version": order[LAST_UPDATED],
        },
        star.FACT_SALES_ORDER,
    )


def fact_purchase_order(source: Source) -> pa.Table:
    """Every version of every purchase order in the batch."""
    order = distinct_versions(raw_table(source, "purchase_order"), "purchase_order_id")
    return conform(
        {
            **_columns(order),
            **_stamps(order),
            "agreed_payment_date": parse_text_date(order["agreed_payment_date"]),
            "agreed_delivery_date": parse_text_date(order["agreed_delivery_date"]),
            "source_version": order[LAST_UPDATED],
        },
        star.FACT_PURCHASE_ORDER,
    )


def fact_payment(source: Source) -> pa.Table:
    """Every version of every payment in the batch (account numbers are not carried)."""
    payment = distinct_versions(raw_table(source, "payment"), "payment_id")
    return conform(
        {
            **_columns(payment),
            **_stamps(payment),
            "payment_date": parse_text_date(payment["payment_date"]),
            "source_version": payment[LAST_UPDATED],
        },
        star.FACT_PAYMENT,
    )


def dim_date(facts: Mapping[str, pa.Table]) -> pa.Table:
    """A calendar row for every date that any fact row of the batch references."""
    columns = [
        table[column]
        for name, table in facts.items()
        for column, target in star.STAR_TABLES_BY_NAME[name].references
        if target == star.DIM_DATE.name
    ]
    return conform(_columns(calendar(*columns)), star.DIM_DATE)


DIMENSION_BUILDERS: dict[str, Callable[[Source], pa.Table]] = {
    "dim_staff": dim_staff,
    "dim_location": dim_location,
    "dim_currency": dim_currency,
    "dim_design": dim_design,
    "dim_counterparty": dim_counterparty,
    "dim_transaction": dim_transaction,
    "dim_payment_type": dim_payment_type,
}
FACT_BUILDERS: dict[str, Callable[[Source], pa.Table]] = {
    "fact_sales_order": fact_sales_order,
    "fact_purchase_order": fact_purchase_order,
    "fact_payment": fact_payment,
}


# Source table -> the star table its keys land in (declared by the model; department has none).
STAR_TABLE_OF: dict[str, str] = {t.name: t.star_table for t in TABLES if t.star_table}


def deleted_keys(deleted: pa.Table) -> pa.Table:
    """The batch's deletions as star keys: raw ``deleted_keys`` (source table, key) in, the
    processed ``deleted_keys`` (star_table, key) out, each once, sorted. A source table without
    a star table of its own (department) has nothing to mark; a table the model does not know
    is counted and ignored: ingest writes model names only, so another name comes from a
    damaged or forged file and is a value of its rows, which may be anything (never logged,
    as load counts the names no star table has)."""
    deleted = deleted.select(DELETED_KEYS_SCHEMA.names)
    mapping = pa.table(
        {"table": strings(list(STAR_TABLE_OF)), "star_table": strings(list(STAR_TABLE_OF.values()))}
    )
    known = strings(sorted(TABLES_BY_NAME))
    tables = deleted["table"]
    strangers = tables.filter(pc.invert(pc.is_in(tables, value_set=known)))
    if len(strangers):
        logger.warning(
            "data quality: deleted keys of unknown source tables ignored",
            extra={"unknown_tables": len(pc.unique(strangers)), "rows": len(strangers)},
        )
    at = pc.index_in(tables, value_set=mapping["table"], skip_nulls=True)
    out = pa.table(
        {
            "star_table": pc.take(mapping["star_table"], pc.drop_null(at)),
            "key": deleted["key"].filter(pc.is_valid(at)),
        }
    )
    ordered = out.cast(star.DELETED_KEYS_SCHEMA).sort_by(
        [("star_table", "ascending"), ("key", "ascending")]
    )
    return _first_of_each_run(ordered, ["star_table", "key"])


def build_star(source: Source) -> dict[str, pa.Table]:
    """Every star table the batch yields rows for, in ``STAR_TABLES`` order (dimensions first).

    A table with no rows in this batch is omitted rather than written empty, so the processed
    manifest lists exactly the tables that carry rows.
    """
    facts = {name: build(source) for name, build in FACT_BUILDERS.items()}
    built = {name: build(source) for name, build in DIMENSION_BUILDERS.items()}
    built.update(facts)
    built[star.DIM_DATE.name] = dim_date(facts)
    return {t.name: built[t.name] for t in star.STAR_TABLES if built[t.name].num_rows > 0}
