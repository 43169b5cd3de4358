"""The merge of one batch into one Iceberg table, as pure Arrow: the stored rows of the keys a
batch touches and the batch's rows in, the change to commit out.

The rules are the warehouse's (``totes.warehouse``), so both targets hold the same rows:

- a row group (a dimension's key, a fact's version, a tombstone's key) keeps the row that is
  newest by ``capture_seq`` then the dimension's stamps (``source_version``, ``oldest_version``);
  a tie keeps the stored row, so a redelivered batch changes nothing and batches converge in
  any order (``dimensions``, ``facts.merge_versions``, ``deletes.record_deletions``);
- the calendar only gains days (``calendar``);
- a key with a tombstone is marked deleted (``source_deleted_at`` = the tombstone's time on
  every row of the key) exactly when its tombstone is newer than the key's latest content (the
  greatest ``capture_seq`` over its rows), else unmarked (``deletes.recompute_marks``), for the
  keys the batch touched.

Iceberg rewrites whole data files to change a row, so a change is expressed per key: every row
of a key with a changed stored row is deleted and written again (``rewrite``), while new rows
of keys whose stored rows stand are only appended, the common case for facts (new versions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from totes.errors import LoadFailed
from totes.star.model import CAPTURE_SEQ, SOURCE_DELETED_AT, StarTable

_ORIGIN = "__origin"  # 0: stored, 1: incoming


@dataclass(frozen=True)
class Change:
    """One table's commit: delete every stored row whose ``rewrite_by`` columns match a row of
    ``rewrite`` (or every row, ``replace_all``), then append ``append``. Counts are rows."""

    append: pa.Table
    rewrite: pa.Table | None = None
    replace_all: bool = False
    inserted: int = 0
    updated: int = 0
    marked: int = 0
    unmarked: int = 0

    @property
    def empty(self) -> bool:
        return not self.append.num_rows and not self.replace_all and not self.rewritten_keys

    @property
    def rewritten_keys(self) -> int:
        return 0 if self.rewrite is None else self.rewrite.num_rows


def group_starts(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """Indexes where a new group begins in ``table`` sorted by ``columns``."""
    n = table.num_rows
    begins = np.zeros(n, dtype=bool)
    if n:
        begins[0] = True
    for name in columns:
        column = table.column(name)
        if n > 1:
            differs = pc.not_equal(column.slice(1), column.slice(0, n - 1))
            begins[1:] |= np.asarray(differs.to_numpy(zero_copy_only=False), dtype=bool)
    return np.flatnonzero(begins)


def _group_ids(n: int, starts: np.ndarray) -> np.ndarray:
    ids = np.zeros(n, dtype=np.int64)
    ids[starts[1:]] = 1
    return np.cumsum(ids)


def merge(
    stored: pa.Table,
    incoming: pa.Table,
    *,
    group: Sequence[str],
    newest_first: Sequence[str],
    rewrite_by: Sequence[str],
    tombstones: pa.Table | None = None,
) -> Change:
    """Merge ``incoming`` into ``stored`` (both in the table's Arrow schema; ``stored`` holds
    every stored row of the ``rewrite_by`` keys ``incoming`` touches, and at most one per
    ``group``). Per group the first row by ``newest_first`` (descending) wins, the stored row
    on a tie. With ``tombstones`` (the table's: ``key``, ``capture_seq``, ``deleted_at``) the
    deletion marks of every key present are recomputed."""
    schema = stored.schema
    both = pa.concat_tables(
        [
            stored.append_column(_ORIGIN, pa.array(np.zeros(stored.num_rows, np.int8))),
            incoming.cast(schema).append_column(
                _ORIGIN, pa.array(np.ones(incoming.num_rows, np.int8))
            ),
        ]
    )
    order = [(c, "ascending") for c in group]
    order += [(c, "descending") for c in newest_first]
    order.append((_ORIGIN, "ascending"))
    both = both.sort_by(order).combine_chunks()
    n = both.num_rows
    starts = group_starts(both, group)
    ids = _group_ids(n, starts)
    origin = both.column(_ORIGIN).to_numpy()
    stored_at = np.full(len(starts), -1, dtype=np.int64)
    is_stored = np.flatnonzero(origin == 0)
    stored_at[ids[is_stored]] = is_stored
    had_stored = stored_at >= 0
    from_incoming = origin[starts] == 1
    winners = both.take(pa.array(starts)).drop_columns([_ORIGIN])

    tracked = SOURCE_DELETED_AT in schema.names
    if tracked:
        # A row replaced by newer content keeps the stored mark until the marks are recomputed.
        marks = both.column(SOURCE_DELETED_AT).take(pa.array(np.where(had_stored, stored_at, 0)))
        before = pc.if_else(pa.array(had_stored), marks, pa.nulls(len(starts), marks.type))
        after = before
        if tombstones is not None and tombstones.num_rows and winners.num_rows:
            after = _recompute_marks(winners, rewrite_by, before, tombstones)
        winners = winners.set_column(
            schema.get_field_index(SOURCE_DELETED_AT), SOURCE_DELETED_AT, after
        )
        mark_changed = np.asarray(
            pc.fill_null(
                pc.or_kleene(
                    pc.not_equal(before, after), pc.not_equal(pc.is_null(before), pc.is_null(after))
                ),
                False,
            ).to_numpy(zero_copy_only=False),
            dtype=bool,
        )
        now_marked = np.asarray(pc.is_valid(after).to_numpy(zero_copy_only=False), dtype=bool)
    else:
        mark_changed = np.zeros(len(starts), dtype=bool)
        now_marked = mark_changed

    changed = from_incoming | mark_changed
    stored_changed = changed & had_stored
    rewrite = winners.filter(pa.array(stored_changed)).select(list(rewrite_by))
    if rewrite.num_rows:
        rewrite = rewrite.group_by(list(rewrite_by)).aggregate([])
        in_rewrite = _rows_in(winners, rewrite, rewrite_by)
    else:
        in_rewrite = np.zeros(len(starts), dtype=bool)
    append = winners.filter(pa.array(in_rewrite | (changed & ~had_stored)))
    return Change(
        append=append,
        rewrite=rewrite if rewrite.num_rows else None,
        inserted=int((from_incoming & ~had_stored).sum()),
        updated=int((from_incoming & had_stored).sum()),
        marked=int((mark_changed & now_marked).sum()),
        unmarked=int((mark_changed & ~now_marked).sum()),
    )


def _rows_in(rows: pa.Table, keys: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """Which rows of ``rows`` match a row of ``keys`` on ``columns``."""
    if len(columns) == 1:
        (name,) = columns
        found = pc.is_in(rows.column(name), value_set=keys.column(name))
        return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)
    marker = "__matched"
    probe = rows.select(list(columns)).append_column(
        "__row", pa.array(np.arange(rows.num_rows, dtype=np.int64))
    )
    matched = probe.join(
        keys.append_column(marker, pa.array(np.ones(keys.num_rows, np.int8))),
        keys=list(columns),
        join_type="inner",
    )
    out = np.zeros(rows.num_rows, dtype=bool)
    out[matched.column("__row").to_numpy()] = True
    return out


def _recompute_marks(
    winners: pa.Table, rewrite_by: Sequence[str], before: pa.Array, tombstones: pa.Table
) -> pa.Array:
    """The marks of ``winners`` (sorted by key): for each key with a tombstone, the
    tombstone's time if it is newer than the key's greatest ``capture_seq``, else NULL; keys
    without one keep ``before``."""
    (key,) = rewrite_by
    keys = winners.column(key)
    key_starts = group_starts(winners, [key])
    key_ids = _group_ids(winners.num_rows, key_starts)
    capture = winners.column(CAPTURE_SEQ).to_numpy()
    newest = np.maximum.reduceat(capture, key_starts)
    first_keys = keys.take(pa.array(key_starts))
    found = pc.index_in(first_keys, value_set=tombstones.column("key"))
    has = np.asarray(pc.is_valid(found).to_numpy(zero_copy_only=False), dtype=bool)
    where = pc.fill_null(found, 0)
    tomb_seq = tombstones.column(CAPTURE_SEQ).take(where).to_numpy()
    tomb_at = tombstones.column("deleted_at").take(where)
    deleted = has & (tomb_seq > newest)
    per_key = pc.if_else(pa.array(deleted), tomb_at, pa.nulls(len(key_starts), tomb_at.type))
    recomputed = per_key.take(pa.array(key_ids))
    return pc.if_else(pa.array(has[key_ids]), recomputed, before)


# -- what a fact batch may reference ------------------------------------------------------------


def missing_references(
    rows: pa.Table, table: StarTable, dimension_keys: dict[str, pa.Array]
) -> dict[str, np.ndarray]:
    """Per reference column of the fact ``table``: which rows point at a key absent from its
    dimension (``dimension_keys``: the stored keys of each dimension)."""
    out = {}
    for column, dim in table.references:
        present = pc.is_in(rows.column(column), value_set=dimension_keys[dim])
        out[column] = ~np.asarray(present.to_numpy(zero_copy_only=False), dtype=bool)
    return out


def split_parked(
    batch: str,
    rows: pa.Table,
    table: StarTable,
    dimension_keys: dict[str, pa.Array],
    set_aside: dict[str, list[int]],
) -> tuple[pa.Table, pa.Table]:
    """The batch's fact rows split into those to merge and those to park: a row pointing at a
    dimension row transform set aside that no table holds waits in the park. Any other missing
    reference, of a parked row too, fails the batch naming table, column and ids
    (``references.check_references``)."""
    missing = missing_references(rows, table, dimension_keys)
    park = np.zeros(rows.num_rows, dtype=bool)
    waits: dict[str, np.ndarray] = {}
    for column, dim in table.references:
        aside = set_aside.get(dim)
        waits[column] = np.zeros(rows.num_rows, dtype=bool)
        if aside:
            spared = pc.is_in(rows.column(column), value_set=pa.array(aside, pa.int32()))
            waits[column] = missing[column] & np.asarray(
                spared.to_numpy(zero_copy_only=False), bool
            )
            park |= waits[column]
    # As the warehouse checks the parked rows too (``parking.park``): a reference that is
    # missing and not set aside fails the batch, whether or not another one parks the row.
    for column, dim in table.references:
        unresolved = missing[column] & ~waits[column]
        if unresolved.any():
            ids = pc.unique(rows.column(column).filter(pa.array(unresolved)))
            examples = sorted(str(v) for v in ids.to_pylist())[:5]
            raise LoadFailed(
                f"batch {batch}: table {table.name}: {column} references {len(ids)} {dim}"
                f" row(s) that are neither in the Iceberg tables nor in the batch, e.g. {examples}"
            )
    return rows.filter(pa.array(~park)), rows.filter(pa.array(park))


def resolved(rows: pa.Table, table: StarTable, dimension_keys: dict[str, pa.Array]) -> np.ndarray:
    """Which parked rows now find every dimension row they reference."""
    missing = missing_references(rows, table, dimension_keys)
    ok = np.ones(rows.num_rows, dtype=bool)
    for flags in missing.values():
        ok &= ~flags
    return ok


def superseded(park: pa.Table, facts: pa.Table, table: StarTable) -> np.ndarray:
    """Which parked rows the fact table already holds as well or better: the same version with
    an equal or greater ``capture_seq`` (they were released, or arrived again directly)."""
    version = [table.key, "last_updated_date", "last_updated_time"]
    if not park.num_rows or not facts.num_rows:
        return np.zeros(park.num_rows, dtype=bool)
    probe = park.select(version).append_column(
        "__row", pa.array(np.arange(park.num_rows, dtype=np.int64))
    )
    probe = probe.append_column("__seq", park.column(CAPTURE_SEQ))
    stored = facts.select([*version, CAPTURE_SEQ]).rename_columns([*version, "__stored_seq"])
    joined = probe.join(stored, keys=version, join_type="inner")
    done = pc.greater_equal(joined.column("__stored_seq"), joined.column("__seq"))
    out = np.zeros(park.num_rows, dtype=bool)
    rows_done = joined.column("__row").filter(done).to_numpy()
    out[rows_done] = True
    return out
