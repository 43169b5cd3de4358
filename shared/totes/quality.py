"""Data-quality gates a raw batch passes before it is remodelled.

A batch that fails is not transformed at all: bad input is quarantined with a reason an
operator can act on (which check, table, column, how many rows, example rows), never silently
dropped or half-loaded. The gates are pure: they look at the manifest and the tables read from
it, and either hand back the batch's source tables (model columns only) or raise
``BatchRejected``.

What is fatal and what is not:
- a file that cannot be read, or whose row count or schema fingerprint disagrees with the
  manifest (the lake lost or changed something);
- a model column that is missing or has another type (schema drift), a NULL in a NOT NULL
  column, a text date that is not ``YYYY-MM-DD``;
- a NOT NULL reference that does not resolve inside the batch (ingest guarantees that a batch
  carries every row its rows point at; a broken promise would break the warehouse's keys).
Not fatal, only reported: extra columns the model does not know, and tables the model does not
know (both ignored).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from totes.errors import BatchRejected
from totes.lake import Manifest, ManifestFile, schema_fingerprint
from totes.observability import logger
from totes.source.model import TABLES, TABLES_BY_NAME, Table
from totes.star.dates import unparseable_text_dates

EXAMPLE_ROWS = 5

# The source's text dates (declared by the model), cast to DATE by the remodelling.
TEXT_DATE_COLUMNS: dict[str, tuple[str, ...]] = {
    t.name: t.text_date_columns for t in TABLES if t.text_date_columns
}


@dataclass(frozen=True)
class Problem:
    """One failed check, as it appears in the quarantine reason."""

    check: str
    table: str
    message: str
    column: str | None = None
    key: str | None = None  # the file's object key, for file-level checks
    rows: int | None = None  # how many rows fail the check
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}


def _examples(
    table: pa.Table, mask: pa.ChunkedArray | pa.Array, columns: list[str]
) -> list[dict[str, Any]]:
    """The first few offending rows, JSON-safe (dates, decimals and times as strings)."""
    rows = table.filter(mask).select(columns).slice(0, EXAMPLE_ROWS).to_pylist()
    safe: list[dict[str, Any]] = json.loads(json.dumps(rows, default=str))
    return safe


def check_file(entry: ManifestFile, table: pa.Table) -> list[Problem]:
    """The file holds what the manifest says: its row count and its schema fingerprint."""
    problems = []
    if table.num_rows != entry.rows:
        problems.append(
            Problem(
                "manifest_rows",
                entry.table,
                f"file has {table.num_rows} rows, manifest says {entry.rows}",
                key=entry.key,
                rows=table.num_rows,
            )
        )
    fingerprint = schema_fingerprint(table.schema)
    if fingerprint != entry.fingerprint:
        problems.append(
            Problem(
                "manifest_fingerprint",
                entry.table,
                f"file schema fingerprint {fingerprint} differs from the manifest's "
                f"{entry.fingerprint}: {table.schema.to_string(show_schema_metadata=False)}",
                key=entry.key,
            )
        )
    return problems


def conform_columns(model: Table, table: pa.Table) -> tuple[pa.Table, list[Problem]]:
    """The model's columns of ``table`` (extra columns reported and dropped), or the problems
    of a missing column or one of another type."""
    problems = []
    for column in model.columns:
        if column.name not in table.column_names:
            problems.append(
                Problem(
                    "missing_column",
                    model.name,
                    f"required column {column.name} ({column.arrow_type}) is missing",
                    column=column.name,
                    rows=table.num_rows,
                )
            )
        elif table.schema.field(column.name).type != column.arrow_type:
            problems.append(
                Problem(
                    "column_type",
                    model.name,
                    f"column {column.name} is {table.schema.field(column.name).type}, "
                    f"expected {column.arrow_type}",
                    column=column.name,
                    rows=table.num_rows,
                )
            )
    extra = [name for name in table.column_names if name not in model.column_names]
    if extra:
        logger.warning(
            "data quality: unknown source columns ignored",
            extra={"table": model.name, "columns": extra},
        )
    if problems:
        return table, problems
    # Nullability is checked on values (check_values), not on each file's schema flags.
    loose = pa.schema([pa.field(c.name, c.arrow_type) for c in model.columns])
    return table.select(model.column_names).cast(loose), []


def check_values(model: Table, table: pa.Table) -> list[Problem]:
    """No NULL in a NOT NULL column; every text date is a real ``YYYY-MM-DD`` date."""
    problems = []
    key = model.key
    for column in model.columns:
        if column.not_null and table[column.name].null_count:
            mask = pc.is_null(table[column.name])
            problems.append(
                Problem(
                    "null_in_required_column",
                    model.name,
                    f"NULL in NOT NULL column {column.name}",
                    column=column.name,
                    rows=table[column.name].null_count,
                    examples=_examples(table, mask, [key, column.name]),
                )
            )
    for name in TEXT_DATE_COLUMNS.get(model.name, ()):
        mask = unparseable_text_dates(table[name])
        bad = pc.sum(mask).as_py() or 0
        if bad:
            problems.append(
                Problem(
                    "bad_text_date",
                    model.name,
                    f"{name} is not a YYYY-MM-DD date",
                    column=name,
                    rows=bad,
                    examples=_examples(table, mask, [key, name]),
                )
            )
    return problems


def check_references(source: Mapping[str, pa.Table]) -> list[Problem]:
    """Every NOT NULL reference of the batch resolves to a row of the same batch.

    Nullable references (a transaction's order ids) are informational in the star schema and
    may point outside the batch.
    """
    problems = []
    for model in TABLES:
        table = source.get(model.name)
        if table is None or table.num_rows == 0:
            continue
        for fk in model.foreign_keys:
            if not model.column(fk.column).not_null:
                continue
            target = source.get(fk.table)
            keys = target[fk.ref_column] if target is not None else pa.array([], pa.int32())
            mask = pc.invert(pc.is_in(table[fk.column], value_set=pa.chunked_array([keys])))
            dangling = pc.sum(mask).as_py() or 0
            if dangling:
                problems.append(
                    Problem(
                        "dangling_reference",
                        model.name,
                        f"{model.name}.{fk.column} points at {fk.table} rows that are not in "
                        "the batch",
                        column=fk.column,
                        rows=dangling,
                        examples=_examples(table, mask, [model.key, fk.column]),
                    )
                )
    return problems


def gate(
    manifest: Manifest, files: Mapping[ManifestFile, pa.Table | Exception]
) -> dict[str, pa.Table]:
    """The batch's source tables (model columns, files of a table concatenated), or
    ``BatchRejected`` whose ``reason`` lists every problem found.

    ``files`` maps each manifest entry to the table read from it, or to the exception that
    reading it raised (missing object, corrupt Parquet).
    """
    problems: list[Problem] = []
    parts: dict[str, list[pa.Table]] = {}
    for entry in manifest.files:
        if entry.table not in TABLES_BY_NAME:
            logger.warning(
                "data quality: unknown source table ignored", extra={"table": entry.table}
            )
            continue
        read = files[entry]
        if isinstance(read, Exception):
            problems.append(
                Problem(
                    "unreadable_file",
                    entry.table,
                    f"cannot read the file: {type(read).__name__}: {read}",
                    key=entry.key,
                    rows=entry.rows,
                )
            )
            continue
        problems.extend(check_file(entry, read))
        parts.setdefault(entry.table, []).append(read)

    source: dict[str, pa.Table] = {}
    for name, tables in parts.items():
        model = TABLES_BY_NAME[name]
        conformed = [conform_columns(model, t) for t in tables]
        column_problems = {(p.check, p.column): p for _, found in conformed for p in found}
        if column_problems:
            problems.extend(column_problems.values())  # one per column, not one per file
            continue
        table = pa.concat_tables([t for t, _ in conformed])
        value_problems = check_values(model, table)
        problems.extend(value_problems)
        if not value_problems:
            source[name] = table.cast(model.arrow_schema)

    if not problems:
        problems = check_references(source)
    if problems:
        raise BatchRejected(
            f"batch {manifest.batch_id} failed {len(problems)} data-quality check(s): "
            + "; ".join(f"{p.check} {p.table}.{p.column or '*'}" for p in problems[:5]),
            {
                "batch_id": manifest.batch_id,
                "problems": [p.to_dict() for p in problems],
                "rejected_rows": sum(manifest.row_counts.values()),
            },
        )
    return source
