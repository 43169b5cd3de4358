"""Data-quality gates a raw batch passes before it is remodelled.

Two kinds of bad input, two answers:

- Damage to the batch as a whole: a file that cannot be read, or whose row count or schema
  fingerprint disagrees with the manifest (the lake lost or changed something); a model column
  that is missing or has another type (schema drift). Nothing in such a batch can be trusted,
  so ``gate`` raises ``BatchRejected`` with a reason an operator can act on (which check, table,
  column, file); the stage quarantines the batch whole, to be replayed once repaired.
- A row the star schema cannot represent faithfully: a column the star carries holds a value
  the raw lake could not (the side column ``_unrepresentable`` keeps its text), is NULL where
  the star needs a value, or holds a text date that is not a real ``YYYY-MM-DD`` date; or the
  row points at a row it needs that the batch does not hold. That row is set aside alone,
  never coerced to a sentinel, and the rest of the batch flows on. A dimension row that embeds
  a set-aside parent (staff and its department, a counterparty and its legal address) cannot
  be built either and is set aside with it. A dimension key is set aside whole (every version
  of it in the batch), so the star never takes an older state for the latest. Facts that point
  at a set-aside dimension key still flow: ``Gated.set_aside`` names those keys so load can
  park the facts until the dimension row arrives.

Which columns the star carries and which of them need a value is the source model's
declaration (``Column.carried``, ``Table.required_columns``), not a list kept here. Not fatal,
only reported: extra columns and tables the model does not know (both ignored). The gates are
pure: they look at the manifest and the tables read from it, nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from totes.arrow_values import FALSE, bools, ints
from totes.errors import BatchRejected
from totes.lake import Manifest, ManifestFile, empty_table, schema_fingerprint
from totes.observability import logger
from totes.source.model import (
    DELETED_KEYS,
    DELETED_KEYS_SCHEMA,
    TABLES,
    TABLES_BY_NAME,
    UNREPRESENTABLE,
    ForeignKey,
    Table,
)
from totes.star.dates import unparseable_text_dates

# The source's text dates (declared by the model), cast to DATE by the remodelling.
TEXT_DATE_COLUMNS: dict[str, tuple[str, ...]] = {
    t.name: t.text_date_columns for t in TABLES if t.text_date_columns
}

# Why a row is set aside (``RowProblem.check``).
UNREPRESENTABLE_VALUE = "unrepresentable_value"
UNREADABLE_SIDE_COLUMN = "unreadable_side_column"
NULL_IN_REQUIRED_COLUMN = "null_in_required_column"
BAD_TEXT_DATE = "bad_text_date"
PARENT_SET_ASIDE = "parent_set_aside"
DANGLING_REFERENCE = "dangling_reference"
KEY_SET_ASIDE = "key_set_aside"


@dataclass(frozen=True)
class Problem:
    """Damage to a whole file or table of the batch, as it appears in the quarantine reason."""

    check: str
    table: str
    message: str
    column: str | None = None
    key: str | None = None  # the file's object key, for file-level checks
    rows: int | None = None  # how many rows the damage covers

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class RowProblem:
    """One reason one source row is set aside. ``reason`` never holds the value: it is logged,
    the value (which may be personal data) only goes to the quarantine record."""

    table: str
    key: int | None  # the row's source key (None when the key itself is NULL)
    column: str
    check: str
    reason: str
    value: str | None  # the original text (None: NULL, or nothing to show)


@dataclass(frozen=True)
class Gated:
    """What passes the gates: the rows the star can be built from, the deletions, and every
    row set aside with its problems."""

    source: dict[str, pa.Table]  # source table -> good rows (model columns, checked schema)
    deleted: pa.Table  # the raw ``deleted_keys`` rows (table, key), possibly none
    problems: tuple[RowProblem, ...] = ()
    set_aside_rows: dict[str, int] = field(default_factory=dict)  # source table -> rows
    set_aside_keys: dict[str, list[int]] = field(default_factory=dict)  # source table -> keys

    @property
    def set_aside(self) -> dict[str, list[int]]:
        """The dimension star keys whose rows were set aside, ``{star_table: [keys]}``: load
        parks the facts that point at them until the dimension row arrives."""
        out: dict[str, list[int]] = {}
        for name, keys in self.set_aside_keys.items():
            model = TABLES_BY_NAME[name]
            if keys and model.star_table is not None and not model.is_fact_source:
                out[model.star_table] = keys
        return out

    @property
    def rows_set_aside(self) -> int:
        return sum(self.set_aside_rows.values())


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


def _column_problems(name: str, expected: pa.Schema, table: pa.Table) -> list[Problem]:
    """A column of ``expected`` that ``table`` lacks or holds as another type."""
    problems = []
    for wanted in expected:
        if wanted.name not in table.column_names:
            problems.append(
                Problem(
                    "missing_column",
                    name,
                    f"required column {wanted.name} ({wanted.type}) is missing",
                    column=wanted.name,
                    rows=table.num_rows,
                )
            )
        elif table.schema.field(wanted.name).type != wanted.type:
            problems.append(
                Problem(
                    "column_type",
                    name,
                    f"column {wanted.name} is {table.schema.field(wanted.name).type}, "
                    f"expected {wanted.type}",
                    column=wanted.name,
                    rows=table.num_rows,
                )
            )
    return problems


def conform_columns(model: Table, table: pa.Table) -> tuple[pa.Table, list[Problem]]:
    """The model's columns of ``table`` plus the ``_unrepresentable`` side column (all NULL in
    a file written before ingest kept one), extra columns reported and dropped; or the
    problems of a missing column or one of another type."""
    side = pa.field(UNREPRESENTABLE, pa.string())
    expected = pa.schema([pa.field(c.name, c.arrow_type) for c in model.columns])
    present = [side] if UNREPRESENTABLE in table.column_names else []
    problems = _column_problems(model.name, pa.schema([*expected, *present]), table)
    known = {*model.column_names, UNREPRESENTABLE}
    extra = [name for name in table.column_names if name not in known]
    if extra:
        logger.warning(
            "data quality: unknown source columns ignored",
            extra={"table": model.name, "columns": extra},
        )
    if problems:
        return table, problems
    if not present:
        table = table.append_column(side, pa.nulls(table.num_rows, pa.string()))
    # Nullability is checked on values (set_aside_rows), not on each file's schema flags.
    return table.select([*model.column_names, UNREPRESENTABLE]).cast(expected.append(side)), []


def _indices(mask: pa.ChunkedArray | pa.Array) -> list[int]:
    array = mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask
    indices: list[int] = pc.indices_nonzero(pc.fill_null(array, FALSE)).to_pylist()
    return indices


def _side_values(text: str) -> dict[str, str] | None:
    """The ``{column: original text}`` object of the side column, None when it is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def value_problems(model: Table, table: pa.Table) -> list[tuple[int, RowProblem]]:
    """(row index, problem) for every value the star cannot take: a carried column that the
    lake could not hold, a NULL where the star needs a value, a text date that is not one.
    ``table`` holds the model's columns and the side column (``conform_columns``). Only the
    offending rows are visited one by one."""
    keys = table[model.key]
    found: list[tuple[int, RowProblem]] = []

    def problem(row: int, column: str, check: str, reason: str, value: str | None) -> None:
        found.append((row, RowProblem(model.name, keys[row].as_py(), column, check, reason, value)))

    side = table[UNREPRESENTABLE]
    unrepresentable: set[tuple[int, str]] = set()
    carried = {c.name: c for c in model.carried_columns}
    for row in _indices(pc.is_valid(side)):
        text = side[row].as_py()
        values = _side_values(text)
        if values is None:
            reason = f"{UNREPRESENTABLE} is not a JSON object of column texts"
            problem(row, UNREPRESENTABLE, UNREADABLE_SIDE_COLUMN, reason, text)
            continue
        for name, original in values.items():
            if name in carried:
                unrepresentable.add((row, name))
                reason = f"{name} holds a value the lake's {carried[name].arrow_type} cannot hold"
                problem(row, name, UNREPRESENTABLE_VALUE, reason, original)
    for column in model.required_columns:
        for row in _indices(pc.is_null(table[column.name])):
            if (row, column.name) not in unrepresentable:
                reason = f"{column.name} is NULL where the star needs a value"
                problem(row, column.name, NULL_IN_REQUIRED_COLUMN, reason, None)
    for name in model.text_date_columns:
        values = table[name]
        for row in _indices(unparseable_text_dates(values)):
            reason = f"{name} is not a YYYY-MM-DD date"
            problem(row, name, BAD_TEXT_DATE, reason, values[row].as_py())
    return found


def reference_problems(
    model: Table,
    table: pa.Table,
    good_keys: Mapping[str, pa.ChunkedArray | pa.Array],
    set_aside_keys: Mapping[str, list[int]],
) -> list[tuple[int, RowProblem]]:
    """(row index, problem) for every NOT NULL reference the batch cannot satisfy: the row it
    points at is not in the batch (ingest promises it is), or it is a set-aside parent that
    this table's dimension embeds. A reference to any other set-aside row is no problem here:
    the row flows and load waits for the one it points at."""
    keys = table[model.key]
    found: list[tuple[int, RowProblem]] = []
    for fk in model.foreign_keys:
        if not model.column(fk.column).not_null:
            continue  # informational in the star (a transaction's order ids)
        values = table[fk.column]
        present = pc.is_in(values, value_set=good_keys.get(fk.table, ints([])))
        missing = _indices(pc.and_(pc.is_valid(values), pc.invert(present)))
        aside = set(set_aside_keys.get(fk.table, ())) if missing else set()
        for row in missing:
            check, reason = _reference_reason(model, fk, values[row].as_py() in aside)
            if check is None:
                continue
            value = str(values[row].as_py())
            key = keys[row].as_py()
            found.append((row, RowProblem(model.name, key, fk.column, check, reason, value)))
    return found


def _reference_reason(model: Table, fk: ForeignKey, aside: bool) -> tuple[str | None, str]:
    if not aside:
        return DANGLING_REFERENCE, f"{fk.column} points at a {fk.table} row not in the batch"
    if fk.column == model.embeds:
        return PARENT_SET_ASIDE, f"the {fk.table} row it embeds ({fk.column}) was set aside"
    return None, ""


def set_aside_rows(
    model: Table,
    table: pa.Table,
    good_keys: Mapping[str, pa.ChunkedArray | pa.Array],
    set_aside_keys: Mapping[str, list[int]],
) -> tuple[pa.Table, list[RowProblem], list[int]]:
    """The rows of one source table that the star can take (model columns, checked schema),
    the problems of the rows set aside, and the keys set aside. ``good_keys`` and
    ``set_aside_keys`` hold the answers for the tables it references (dependency order)."""
    found = value_problems(model, table)
    found += reference_problems(model, table, good_keys, set_aside_keys)
    if not found:  # the usual case: no mask, no filter (a copy of every column)
        return table.select(model.column_names).cast(model.checked_schema), [], []
    flags = np.zeros(table.num_rows, dtype=bool)
    flags[[row for row, _ in found]] = True
    bad = bools(flags)
    keys = table[model.key]
    if not model.is_fact_source:
        # A dimension key goes aside whole: no older version of it stands in for the latest.
        aside = pc.unique(keys.filter(bad)).drop_null()
        same_key = pc.and_(pc.is_in(keys, value_set=aside), pc.invert(bad))
        reason = "another version of this key in the batch was set aside"
        for row in _indices(same_key):
            key = keys[row].as_py()
            found.append((row, RowProblem(model.name, key, model.key, KEY_SET_ASIDE, reason, None)))
        bad = pc.or_(bad, same_key)
    position = {name: i for i, name in enumerate([*model.column_names, UNREPRESENTABLE])}

    def order(item: tuple[int, RowProblem]) -> tuple[bool, int, int, int, str]:
        row, p = item
        return (p.key is None, p.key or 0, row, position[p.column], p.check)

    problems = [p for _, p in sorted(found, key=order)]
    good = table.filter(pc.invert(bad)).select(model.column_names).cast(model.checked_schema)
    aside_keys: list[int] = sorted(pc.unique(keys.filter(bad)).drop_null().to_pylist())
    return good, problems, aside_keys


def gate(manifest: Manifest, files: Mapping[ManifestFile, pa.Table | Exception]) -> Gated:
    """The batch's rows the star can be built from (model columns, files of a table
    concatenated), its deletions and its rows set aside; or ``BatchRejected`` whose ``reason``
    lists every problem found when a file or table of the batch is damaged.

    ``files`` maps each manifest entry to the table read from it, or to the exception that
    reading it raised (missing object, corrupt Parquet).
    """
    problems: list[Problem] = []
    parts: dict[str, list[pa.Table]] = {}
    for entry in manifest.files:
        if entry.table not in TABLES_BY_NAME and entry.table != DELETED_KEYS:
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

    tables: dict[str, pa.Table] = {}
    for name, found in parts.items():
        if name == DELETED_KEYS:
            column_problems = {
                (p.check, p.column): p
                for t in found
                for p in _column_problems(name, DELETED_KEYS_SCHEMA, t)
            }
            conformed = [t.select(DELETED_KEYS_SCHEMA.names) for t in found]
        else:
            pairs = [conform_columns(TABLES_BY_NAME[name], t) for t in found]
            column_problems = {(p.check, p.column): p for _, ps in pairs for p in ps}
            conformed = [t for t, _ in pairs]
        if column_problems:
            problems.extend(column_problems.values())  # one per column, not one per file
        else:
            tables[name] = pa.concat_tables(conformed)
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

    source: dict[str, pa.Table] = {}
    good_keys: dict[str, pa.ChunkedArray | pa.Array] = {}
    aside_keys: dict[str, list[int]] = {}
    aside_rows: dict[str, int] = {}
    row_problems: list[RowProblem] = []
    for model in TABLES:  # dependency order: a parent's answer is known before its children
        table = tables.get(model.name)
        if table is None:
            continue
        good, found, keys = set_aside_rows(model, table, good_keys, aside_keys)
        source[model.name] = good
        # Not made unique: ``is_in`` takes repeated values, and ``unique`` of a large table's
        # keys cost more than every lookup into them (docs/transform.md "Cost per batch").
        good_keys[model.name] = good[model.key]
        if table.num_rows > good.num_rows:
            aside_rows[model.name] = table.num_rows - good.num_rows
            aside_keys[model.name] = keys
        row_problems.extend(found)
    deleted = tables.get(DELETED_KEYS)
    if deleted is None:
        deleted = empty_table(DELETED_KEYS_SCHEMA)
    deleted = deleted.filter(pc.and_(pc.is_valid(deleted["table"]), pc.is_valid(deleted["key"])))
    return Gated(
        source,
        deleted.cast(DELETED_KEYS_SCHEMA),
        tuple(row_problems),
        aside_rows,
        aside_keys,
    )
