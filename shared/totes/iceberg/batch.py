"""One processed batch into the Iceberg tables, table by table, in an order that keeps readers
safe and the batch exactly once.

Iceberg commits one table at a time (pyiceberg has no multi-table transaction, and neither has
Glue), so a batch becomes visible table by table, in this order:

1. the ledger is read: a batch it holds is acknowledged without writing anything;
2. the tombstones of the keys the batch deletes (every later mark reads them);
3. the dimensions and the calendar (so no fact ever points at a dimension row readers cannot
   see yet);
4. each fact table (the batch's versions, plus the parked rows that now resolve), then its
   park (the batch's rows that wait for a set-aside dimension row, minus the rows the fact
   table now holds);
5. the tombstones read again: if a deletion landed meanwhile, the marks of the keys the batch
   wrote are recomputed (``_mark_again_while_deletions_land``);
6. the ledger row, last: a batch in the ledger is complete in every table.

Each table's commit is atomic and carries the batch id (``commit``), so a delivery after a
crash anywhere in between skips the tables already done and completes the rest (the star
tables are planned again all the same: rows the batch parked may resolve, and deletions may
land, before the retry; what the batch committed merges unchanged). The merge is a function
of each table's own rows plus the tombstones and dimension keys committed before it, so
completing later, or after other batches, gives the same tables (order-free).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import EqualTo
from pyiceberg.table import Table

from totes.errors import LoadFailed
from totes.iceberg.commit import (
    MAX_ATTEMPTS,
    Outcome,
    Writer,
    committed_batches,
    predicate,
    read_all,
    read_keys,
)
from totes.iceberg.merge import (
    Change,
    group_starts,
    merge,
    resolved,
    split_parked,
    superseded,
)
from totes.iceberg.tables import (
    LEDGER,
    LEDGER_SCHEMA,
    TOMBSTONES,
    TOMBSTONES_SCHEMA,
    deletion_rows,
    park_name,
    star_rows,
    star_schema,
    version_columns,
)
from totes.lake import Manifest
from totes.manifest_checks import Capture
from totes.star.model import (
    CAPTURE_SEQ,
    DELETED_KEYS,
    DIMENSIONS,
    FACTS,
    STAR_TABLES,
    STAR_TABLES_BY_NAME,
    StarTable,
)
from totes.warehouse.merge import _capture, _deletions
from totes.warehouse.staging import LOADED_BATCH


@dataclass
class TableCounts:
    inserted: int = 0
    updated: int = 0
    marked: int = 0
    unmarked: int = 0
    parked: int = 0
    released: int = 0
    deleted_keys: int = 0

    def add(self, change: Change | None) -> None:
        if change is not None:
            self.inserted += change.inserted
            self.updated += change.updated
            self.marked += change.marked
            self.unmarked += change.unmarked


@dataclass
class BatchResult:
    batch_id: str
    loaded: bool
    tables: dict[str, TableCounts] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    commits: int = 0
    conflicts: int = 0

    def row_counts(self) -> dict[str, dict[str, int]]:
        return {name: dict(vars(counts)) for name, counts in self.tables.items()}


def ledger_holds(table: Table, batch: str) -> bool:
    """Whether the ledger has the batch's row (its snapshot summaries first, then its rows,
    which outlive snapshot expiry)."""
    if table.current_snapshot() is None:
        return False
    if batch in committed_batches(table):
        return True
    found = table.scan(
        row_filter=predicate(EqualTo, "batch_id", batch), selected_fields=("batch_id",)
    )
    return bool(found.to_arrow().num_rows)


def apply_batch(
    catalog: Catalog,
    namespace: str,
    manifest: Manifest,
    tables: dict[str, pa.Table],
    *,
    writer: Writer | None = None,
) -> BatchResult:
    """Commit the processed batch ``manifest`` names (``tables``: star table name -> processed
    rows, and optionally ``deleted_keys``) into the Iceberg tables of ``namespace``."""
    batch = manifest.batch_id
    unknown = sorted(set(tables) - set(STAR_TABLES_BY_NAME) - {DELETED_KEYS})
    if unknown:
        raise LoadFailed(f"batch {batch}: unknown star table(s) {unknown}")
    capture = _capture(batch, manifest)
    deleted = _deletions(batch, tables.get(DELETED_KEYS))
    if deleted.num_rows and (capture.hi_utc is None or not capture.seq):
        raise LoadFailed(
            f"batch {batch}: deletes keys but its manifest carries no hi_utc or capture_seq"
            " (a deletion is ordered by its capture)"
        )
    writer = writer or Writer(catalog, namespace, batch, capture.seq)
    result = BatchResult(batch, loaded=False)
    if ledger_holds(writer.table(LEDGER), batch):
        return result
    result.loaded = True
    rows = {
        t.name: star_rows(t, tables[t.name], batch, capture.seq)
        for t in STAR_TABLES
        if t.name in tables
    }
    deleted_keys = {
        name: deleted.filter(pc.equal(deleted.column("star_table"), name)).column("key")
        for name in pc.unique(deleted.column("star_table")).to_pylist()
    }
    counts = result.tables

    def outcome(done: Outcome, table: str) -> None:
        result.outcomes.append(done)
        counts.setdefault(table, TableCounts()).add(done.change)

    if deleted.num_rows:
        done = writer.apply(TOMBSTONES, _plan_tombstones(deleted, capture))
        result.outcomes.append(done)
        for name, keys in deleted_keys.items():
            counts.setdefault(name, TableCounts()).deleted_keys = len(pc.unique(keys))
    seen = _snapshot_id(writer.table(TOMBSTONES))
    tombstones = _tombstones_by_table(writer.table(TOMBSTONES))
    marked: list[tuple[StarTable, pa.Table | None, pa.Array]] = []  # what to mark again

    for dim in DIMENSIONS:
        keys = _keys(rows.get(dim.name), dim, deleted_keys.get(dim.name))
        if keys is None:
            continue
        plan = _plan_star(dim, rows.get(dim.name), keys, tombstones.get(dim.name))
        # Planned again even when the table holds the batch: a retry recomputes the marks
        # with the tombstones as they are now (what the batch committed merges unchanged).
        outcome(writer.apply(dim.name, plan, again=True), dim.name)
        if dim.tracked:
            marked.append((dim, rows.get(dim.name), keys))

    for fact in FACTS:
        parked_now = read_all(writer.table(park_name(fact)), star_schema(fact).as_arrow())
        incoming = rows.get(fact.name)
        deletions = deleted_keys.get(fact.name)
        if incoming is None and deletions is None and not parked_now.num_rows:
            continue
        referenced = [t for t in (incoming, parked_now) if t is not None and t.num_rows]
        dimension_keys = _present_keys(writer, rows, fact, referenced)
        to_park = star_schema(fact).as_arrow().empty_table()
        if incoming is not None:
            incoming, to_park = split_parked(
                batch, incoming, fact, dimension_keys, capture.set_aside
            )
        released = parked_now.filter(pa.array(resolved(parked_now, fact, dimension_keys)))
        merged = _concat([t for t in (incoming, released) if t is not None])
        keys = _keys(merged, fact, deletions)
        fact_counts = counts.setdefault(fact.name, TableCounts())
        if keys is not None:
            plan = _plan_star(fact, merged, keys, tombstones.get(fact.name))
            # Planned again even when the table holds the batch: after a crash between this
            # commit and the park's, a batch bringing a set-aside row may land before the
            # retry, and the rows this batch had parked then resolve and are parked no more.
            # They must reach the facts now; what the batch committed merges as unchanged.
            done = writer.apply(fact.name, plan, again=True)
            marked.append((fact, merged, keys))
            outcome(done, fact.name)
            if done.status == "committed":
                fact_counts.released += released.num_rows
        park = writer.apply(park_name(fact), _plan_park(writer, fact, to_park))
        result.outcomes.append(park)
        fact_counts.parked += to_park.num_rows

    _mark_again_while_deletions_land(writer, seen, marked, outcome)
    writer.apply(LEDGER, _plan_ledger(manifest, capture, result))
    result.commits, result.conflicts = writer.commits, writer.conflicts
    return result


def _snapshot_id(table: Table) -> int | None:
    snapshot = table.current_snapshot()
    return None if snapshot is None else snapshot.snapshot_id


def _mark_again_while_deletions_land(
    writer: Writer,
    seen: int | None,
    marked: list[tuple[StarTable, pa.Table | None, pa.Array]],
    outcome: Any,
) -> None:
    """Recompute the marks of the keys this batch wrote while the tombstones changed since
    they were read (snapshot ``seen``). A concurrent batch deleting one of those keys commits
    its tombstone, then reads the key's rows to mark them; if it read them before this batch
    committed them, it marked nothing and committed nothing to that table, so no conflict
    made this batch plan again with its tombstone. Reading the tombstones after committing
    closes that gap: either this read sees the tombstone, or the other batch's read came after
    this batch's commit and marked the rows. Repeated until the tombstones stand still."""
    for _ in range(MAX_ATTEMPTS):
        now = writer.refresh(TOMBSTONES)
        if _snapshot_id(now) == seen:
            return
        seen = _snapshot_id(now)
        tombstones = _tombstones_by_table(now)
        for table, incoming, keys in marked:
            plan = _plan_star(table, incoming, keys, tombstones.get(table.name))
            outcome(writer.apply(table.name, plan, again=True), table.name)
    raise LoadFailed(
        f"batch {writer.batch}: Iceberg table {TOMBSTONES} changed {MAX_ATTEMPTS} times in a"
        " row while the batch marked its keys; a retry completes it"
    )


def _concat(parts: list[pa.Table]) -> pa.Table | None:
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return None
    return pa.concat_tables([p.cast(parts[0].schema) for p in parts])


def _keys(
    rows: pa.Table | None, table: StarTable, deletions: pa.ChunkedArray | None
) -> pa.Array | None:
    """The keys of ``table`` the batch touches: its rows' and its deletions'."""
    parts = []
    if rows is not None and rows.num_rows:
        parts.append(rows.column(table.key).combine_chunks())
    if deletions is not None and len(deletions):
        parts.append(deletions.combine_chunks().cast(parts[0].type if parts else pa.int32()))
    if not parts:
        return None
    return pc.unique(pa.concat_arrays(parts))


def _plan_star(
    table: StarTable, incoming: pa.Table | None, keys: pa.Array, tombstones: pa.Table | None
) -> Any:
    schema = star_schema(table).as_arrow()
    newest_first = [CAPTURE_SEQ, *table.lineage] if table.kind == "dimension" else [CAPTURE_SEQ]
    if not table.tracked:
        newest_first = []

    def plan(stored_table: Table) -> Change | None:
        stored = read_keys(stored_table, table.key, keys, schema)
        return merge(
            stored,
            incoming if incoming is not None else schema.empty_table(),
            group=version_columns(table),
            newest_first=newest_first,
            rewrite_by=[table.key],
            tombstones=tombstones if table.tracked else None,
        )

    return plan


def _plan_tombstones(deleted: pa.Table, capture: Capture) -> Any:
    if capture.hi_utc is None:  # the caller checks it; not an assert (gone under python -O)
        raise ValueError("deletions without the capture's hi_utc stamp")
    at = datetime.fromisoformat(capture.hi_utc).astimezone(UTC).replace(tzinfo=None)
    incoming = deletion_rows(deleted, capture.seq, pa.scalar(at, pa.timestamp("us")))
    schema = TOMBSTONES_SCHEMA.as_arrow()

    def plan(stored_table: Table) -> Change | None:
        stored = read_all(stored_table, schema)
        return merge(
            stored,
            incoming,
            group=["star_table", "key"],
            newest_first=[CAPTURE_SEQ],
            rewrite_by=["star_table", "key"],
        )

    return plan


def _tombstones_by_table(table: Table) -> dict[str, pa.Table]:
    stored = read_all(table, TOMBSTONES_SCHEMA.as_arrow())
    return {
        name: stored.filter(pc.equal(stored.column("star_table"), name)).select(
            ["key", CAPTURE_SEQ, "deleted_at"]
        )
        for name in pc.unique(stored.column("star_table")).to_pylist()
    }


def _present_keys(
    writer: Writer, rows: dict[str, pa.Table], fact: StarTable, tables: list[pa.Table]
) -> dict[str, pa.Array]:
    """Per dimension the fact references, which of the keys ``tables`` reference exist: the
    batch's own rows first (a self-contained batch holds every row its facts reference, and
    they are committed by now), then the stored rows of the rest, looked up by key; a table
    is read only for keys its batch lacks (set-aside rows, parked facts)."""
    wanted: dict[str, list[pa.Array]] = {}
    for column, dim_name in fact.references:
        wanted.setdefault(dim_name, []).extend(t.column(column).combine_chunks() for t in tables)
    out = {}
    for name, parts in wanted.items():
        dim = STAR_TABLES_BY_NAME[name]
        values = pc.unique(pa.concat_arrays(parts)) if parts else pa.array([], pa.int32())
        own = rows[name].column(dim.key) if name in rows else pa.chunked_array([], values.type)
        known = values.filter(pc.is_in(values, value_set=own.combine_chunks()))
        missing = values.filter(pc.invert(pc.is_in(values, value_set=known)))
        if len(missing):
            stored = read_keys(writer.table(name), dim.key, missing, star_schema(dim).as_arrow())
            known = pa.concat_arrays([known, stored.column(dim.key).combine_chunks()])
        out[name] = known
    return out


def _plan_park(writer: Writer, fact: StarTable, to_park: pa.Table) -> Any:
    """The park after this batch: what it held plus the batch's rows to park (once per version
    and parking batch), less every row the fact table now holds as well or better. Parks are
    small, so a changed park is written whole."""
    schema = star_schema(fact).as_arrow()
    version = [*version_columns(fact), LOADED_BATCH]

    def plan(park_table: Table) -> Change | None:
        held = read_all(park_table, schema)
        candidates = _concat([held, to_park.cast(schema)])
        if candidates is None:
            return None
        order = [(c, "ascending") for c in version]
        candidates = candidates.sort_by(order)
        starts = group_starts(candidates, version)
        candidates = candidates.take(pa.array(starts))
        facts = read_keys(writer.table(fact.name), fact.key, candidates.column(fact.key), schema)
        keep = candidates.filter(pa.array(~superseded(candidates, facts, fact)))
        if _same_rows(keep, held, version):
            return None
        return Change(append=keep, replace_all=True)

    return plan


def _same_rows(a: pa.Table, b: pa.Table, columns: list[str]) -> bool:
    if a.num_rows != b.num_rows:
        return False
    key = [(c, "ascending") for c in columns]
    return bool(a.sort_by(key).select(columns).equals(b.sort_by(key).select(columns)))


def _plan_ledger(manifest: Manifest, capture: Capture, result: BatchResult) -> Any:
    def plan(ledger: Table) -> Change | None:
        row = {
            "batch_id": manifest.batch_id,
            "source_batch_id": manifest.source_batch_id,
            CAPTURE_SEQ: capture.seq,
            "hi_utc": capture.hi_utc,
            "committed_at": datetime.now(UTC).replace(tzinfo=None),
            "row_counts": json.dumps(result.row_counts(), sort_keys=True),
        }
        return Change(append=pa.Table.from_pylist([row], schema=LEDGER_SCHEMA.as_arrow()))

    return plan
