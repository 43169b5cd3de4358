"""Hard deletes: which keys left the source since the last capture.

A deleted row leaves no row version behind, so ``xmin`` cannot show it. Instead the lake keeps
the key set P of every source table as of the last complete capture (a sorted int32 Parquet
object under ``state/keys/``, a few KB for a million serial keys). Every key of the current
snapshot is either in P or belongs to a new row version (a row not visible to the last capture
was written after it), so with C the keys this run copied (new rows and the unchanged rows the
closure pulled in, which are in P), the number of deleted keys is exactly
``|P| + |C \\ P| - live rows``: a count, no key transfer. Only when that is not zero (or after an
interrupted run) are all keys read, ``D = P \\ current``. A key that comes back is a new row
version again and travels as one; load unmarks it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pg8000.native import Connection

from totes.extract.capture import KeySet
from totes.extract.plan import TableCounts
from totes.identifiers import quote
from totes.lake import STATE_PREFIX, Lake
from totes.source.model import TABLES_BY_NAME

KEYSET_PREFIX = f"{STATE_PREFIX}keys"
KEY_SCHEMA = pa.schema([pa.field("key", pa.int32(), nullable=False)])
# The raw table that carries a batch's deletions: source table and key.
DELETED_KEYS = "deleted_keys"
DELETED_SCHEMA = pa.schema(
    [pa.field("table", pa.string(), nullable=False), pa.field("key", pa.int32(), nullable=False)]
)


def keyset_key(table: str, batch_id: str) -> str:
    return f"{KEYSET_PREFIX}/{table}/{batch_id}.parquet"


def write_keys(lake: Lake, key: str, keys: pa.Array) -> None:
    """Sorted keys, delta-encoded: consecutive serial keys cost a few bits each."""
    table = pa.table({"key": keys}, schema=KEY_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        use_dictionary=False,
        column_encoding={"key": "DELTA_BINARY_PACKED"},
        compression="zstd",
    )
    lake.put_bytes(key, sink.getvalue(), "application/vnd.apache.parquet")


def read_keys(lake: Lake, key: str) -> pa.Array:
    return lake.get_table(key).column("key").combine_chunks()


def fetch_all_keys(con: Connection, table: str) -> pa.Array:
    """Every key of ``table`` in the run's snapshot, sorted (only when something was deleted)."""
    model = TABLES_BY_NAME[table]
    sink = io.BytesIO()
    con.run(
        f"COPY (SELECT {quote(model.key)} FROM {quote(model.name)}) TO STDOUT",  # noqa: S608  # nosec B608
        stream=sink,
    )
    sink.seek(0)
    keys = pacsv.read_csv(
        sink,
        read_options=pacsv.ReadOptions(column_names=["key"]),
        convert_options=pacsv.ConvertOptions(column_types={"key": pa.int32()}),
    ).column("key")
    return keys.take(pc.sort_indices(keys)).combine_chunks()


def distinct_sorted(arrays: list[pa.Array | pa.ChunkedArray]) -> pa.Array:
    chunks = [c for a in arrays for c in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])]
    if not chunks:
        return pa.array([], pa.int32())
    keys = pc.unique(pa.concat_arrays(chunks).cast(pa.int32())).drop_null()
    return keys.take(pc.sort_indices(keys))


@dataclass
class Reconciled:
    """The outcome for the run: deleted keys per table, the new key sets (table -> KeySet),
    and the key set objects to write (object key -> sorted keys)."""

    deleted: dict[str, pa.Array] = field(default_factory=dict)
    keysets: dict[str, KeySet] = field(default_factory=dict)
    writes: dict[str, pa.Array] = field(default_factory=dict)

    @property
    def deleted_rows(self) -> dict[str, int]:
        return {t: len(k) for t, k in sorted(self.deleted.items()) if len(k)}

    def deleted_table(self) -> pa.Table:
        """The batch's ``deleted_keys`` rows, in table then key order."""
        tables = [t for t, k in sorted(self.deleted.items()) if len(k)]
        return pa.table(
            {
                "table": pa.array(
                    [t for t in tables for _ in range(len(self.deleted[t]))], pa.string()
                ),
                "key": pa.concat_arrays([self.deleted[t] for t in tables])
                if tables
                else pa.array([], pa.int32()),
            },
            schema=DELETED_SCHEMA,
        )


def deleted_count(previous: KeySet | None, known: pa.Array | None, copied: pa.Array, live: int):
    """|D| from counts alone, or None when it cannot be told that way."""
    if previous is None or known is None:
        return None
    new = pc.sum(pc.invert(pc.is_in(copied, value_set=known))).as_py() or 0
    return previous.rows + new - live


def reconcile(
    con: Connection,
    lake: Lake,
    previous: Mapping[str, KeySet],
    copied: Mapping[str, pa.Array],
    counts: Mapping[str, TableCounts],
    batch_id: str,
    *,
    complete: bool,
    exact: bool,
) -> Reconciled:
    """Deleted keys and new key sets for every table.

    ``copied``: the distinct sorted keys the run copied per table; ``complete``: the run copied
    every row (a first or full capture), so the copied keys are the key set; ``exact``: the
    run read everything new since the state the key sets belong to (False after an
    interrupted run), so the count identity holds.
    """
    out = Reconciled()
    for table, tally in counts.items():
        keys = copied.get(table, pa.array([], pa.int32()))
        before = previous.get(table)
        if complete and len(keys) == tally.live:
            current = keys
            known = read_keys(lake, before.key) if before else None
        else:
            known = read_keys(lake, before.key) if before else None
            missing = deleted_count(before, known, keys, tally.live) if exact else None
            if missing == 0 and known is not None:
                new = keys.filter(pc.invert(pc.is_in(keys, value_set=known)))
                if not len(new):
                    out.keysets[table] = before  # type: ignore[assignment]
                    continue
                merged = pa.concat_arrays([known, new])
                current = merged.take(pc.sort_indices(merged))
            else:
                current = fetch_all_keys(con, table)
        if known is not None:
            gone = known.filter(pc.invert(pc.is_in(known, value_set=current)))
            if len(gone):
                out.deleted[table] = gone
        unchanged = before is not None and known is not None and before.rows == len(current)
        if unchanged and pc.all(pc.equal(known, current)).as_py():
            out.keysets[table] = before  # type: ignore[assignment]
            continue
        key = keyset_key(table, batch_id)
        out.writes[key] = current
        out.keysets[table] = KeySet(key, len(current))
    return out
