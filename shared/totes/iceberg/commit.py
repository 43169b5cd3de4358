"""One table's commit of one batch: at most once, atomic, and safe beside concurrent writers.

- **At most once.** Every snapshot a batch commits carries the batch id (and its capture) in
  its summary (``totes.batch-id``, ``totes.capture-seq``). A table whose history holds a
  snapshot of the batch is left alone, so a delivery that completes a batch an earlier one
  left half-done writes only the tables still missing it. Past snapshot expiry the merge
  itself is the guard: a batch applied again finds nothing newer to write and commits nothing.
- **Atomic.** A table's change (rows rewritten, rows appended) is one pyiceberg transaction,
  one catalog commit: data files are written first, and nothing is visible until the catalog
  swaps the table's metadata pointer. A crash before that leaves the table as it was (the
  written files are orphans that maintenance removes).
- **Concurrent writers.** The catalog accepts a commit only on top of the snapshot it was
  planned on (Glue's ``VersionId``; the SQL catalog's conditional update). A commit that lost
  the race (``CommitFailedException``) is planned again from the new state and retried with
  exponential backoff and jitter; pyiceberg's own retry is off (``tables.TABLE_PROPERTIES``)
  because it would replay rows merged against the old state.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    In,
    LessThanOrEqual,
    Or,
)
from pyiceberg.table import Table

from totes.errors import LoadFailed
from totes.iceberg.merge import Change

BATCH_PROPERTY = "totes.batch-id"
CAPTURE_PROPERTY = "totes.capture-seq"
MAX_ATTEMPTS = 8
BACKOFF_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 5.0
# Up to this many keys a read filters by their values, so pyiceberg skips the data files whose
# bounds hold none of them (its metrics evaluator gives up on longer IN lists); beyond, by the
# keys' range, the values then sifted in Arrow.
IN_LIST_LIMIT = 200


def before_commit(table: str) -> None:
    """Called after a commit's data files are written and before the catalog commit: nothing in
    production; tests replace it to crash exactly there."""


Plan = Callable[[Table], Change | None]


@dataclass(frozen=True)
class Outcome:
    """What happened to one table: ``committed``, ``unchanged`` (the batch changes nothing in
    it) or ``already`` (a snapshot of the batch is in its history)."""

    table: str
    status: str
    change: Change | None = None
    attempts: int = 1


def committed_batches(table: Table) -> set[str]:
    """The batch ids in the summaries of the table's (unexpired) snapshots."""
    out = set()
    for snapshot in table.snapshots():
        batch = snapshot.summary.get(BATCH_PROPERTY) if snapshot.summary else None
        if batch:
            out.add(batch)
    return out


class Writer:
    """Commits one batch's changes table by table (``apply``), keeping each table as last seen."""

    def __init__(
        self,
        catalog: Catalog,
        namespace: str,
        batch: str,
        seq: int,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.catalog = catalog
        self.namespace = namespace
        self.batch = batch
        self.seq = seq
        self.sleep = sleep
        self.conflicts = 0
        self.commits = 0
        self._tables: dict[str, Table] = {}

    def table(self, name: str) -> Table:
        if name not in self._tables:
            self._tables[name] = self.catalog.load_table((self.namespace, name))
        return self._tables[name]

    def refresh(self, name: str) -> Table:
        self._tables.pop(name, None)
        return self.table(name)

    def apply(self, name: str, plan: Plan, *, again: bool = False) -> Outcome:
        """Commit what ``plan`` computes from the table's current state, unless the table
        already holds this batch (``again``: plan it all the same, for a table whose share of
        the batch can grow after its commit; the merge finds nothing to change in the rows
        the batch committed, so only what is left is committed); on a concurrent commit, plan
        again on the new state."""
        properties = {BATCH_PROPERTY: self.batch, CAPTURE_PROPERTY: str(self.seq)}
        for attempt in range(1, MAX_ATTEMPTS + 1):
            table = self.table(name)
            if not again and self.batch in committed_batches(table):
                return Outcome(name, "already", attempts=attempt)
            change = plan(table)
            if change is None or change.empty:
                return Outcome(name, "unchanged", change, attempts=attempt)
            transaction = table.transaction()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pyiceberg warns of deletes matching nothing
                if change.replace_all:
                    transaction.delete(AlwaysTrue(), snapshot_properties=properties)
                elif change.rewrite is not None:
                    rewritten = rewrite_filter(change.rewrite)
                    transaction.delete(rewritten, snapshot_properties=properties)
                if change.append.num_rows:
                    transaction.append(
                        by_name(change.append, table.schema().as_arrow()),
                        snapshot_properties=properties,
                    )
            before_commit(name)
            try:
                self._tables[name] = transaction.commit_transaction()
            except CommitFailedException:
                self.conflicts += 1
                self.refresh(name)
                wait = min(BACKOFF_CAP_SECONDS, BACKOFF_SECONDS * 2 ** (attempt - 1))
                self.sleep(wait * random.uniform(0.5, 1.0))  # noqa: S311  # nosec B311 - jitter
                continue
            self.commits += 1
            return Outcome(name, "committed", change, attempts=attempt)
        raise LoadFailed(
            f"batch {self.batch}: Iceberg table {name}: {MAX_ATTEMPTS} commits in a row lost to"
            " concurrent writers; nothing of this table was committed"
        )


def by_name(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` in ``schema``, columns matched by name: a table evolved by a later code version
    has the columns it gained last, while the code's schemas keep them in place (pyarrow's
    cast matches by position)."""
    return rows.select(schema.names).cast(schema)


def predicate(kind: type[BooleanExpression], *args: Any) -> BooleanExpression:
    """``kind(*args)``: pyiceberg's predicates take (term, literal) positionally at run time,
    while their pydantic fields hide that signature from mypy."""
    return cast(BooleanExpression, cast(Any, kind)(*args))


def rewrite_filter(keys: pa.Table) -> BooleanExpression:
    """The rows of the given keys (one key column, or a table column then a key column)."""
    names = keys.column_names
    if len(names) == 1:
        return key_filter(names[0], keys.column(0))
    first, second = names
    clauses: list[BooleanExpression] = []
    for value in pc.unique(keys.column(first)).to_pylist():
        chosen = keys.filter(pc.equal(keys.column(first), value)).column(second)
        clauses.append(And(predicate(EqualTo, first, value), key_filter(second, chosen)))
    return clauses[0] if len(clauses) == 1 else Or(*clauses)


def key_filter(column: str, keys: pa.Array | pa.ChunkedArray) -> BooleanExpression:
    """``column IN keys`` within the keys' range (the range lets pyiceberg skip files by their
    bounds even when the list is long)."""
    values = sorted(pc.unique(keys).to_pylist())
    if len(values) == 1:
        return predicate(EqualTo, column, values[0])
    return And(between(column, values[0], values[-1]), predicate(In, column, values))


def between(column: str, low: Any, high: Any) -> BooleanExpression:
    return And(predicate(GreaterThanOrEqual, column, low), predicate(LessThanOrEqual, column, high))


def read_keys(
    table: Table, column: str, keys: pa.Array | pa.ChunkedArray, schema: pa.Schema
) -> pa.Table:
    """Every stored row whose ``column`` is one of ``keys``, in ``schema``."""
    if table.current_snapshot() is None or not len(keys):
        return schema.empty_table()
    values = pc.unique(keys)
    if len(values) <= IN_LIST_LIMIT:
        data = table.scan(row_filter=key_filter(column, values)).to_arrow()
    else:
        low, high = pc.min_max(values).values()
        data = table.scan(row_filter=between(column, low.as_py(), high.as_py())).to_arrow()
        data = data.filter(pc.is_in(data.column(column), value_set=values))
    return by_name(data, schema)


def read_all(table: Table, schema: pa.Schema, columns: tuple[str, ...] = ()) -> pa.Table:
    """Every stored row (of ``columns``, if given)."""
    if table.current_snapshot() is None:
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns else empty
    scan = table.scan(selected_fields=columns) if columns else table.scan()
    data = scan.to_arrow()
    if columns:
        return by_name(data, pa.schema([schema.field(c) for c in columns]))
    return by_name(data, schema)
