"""Hard deletes: which keys left the source since the last capture.

A deleted row leaves no row version behind, so ``xmin`` cannot show it. Instead the lake keeps
the key set P of every source table as of the last complete capture (a sorted int32 Parquet
object under ``state/keys/``, a few KB for a million serial keys). Every key of the current
snapshot is either in P or belongs to a new row version (a row not visible to the last capture
was written after it), so with C the keys this run copied (new rows and the unchanged rows the
closure pulled in, which are in P), the number of deleted keys is exactly
``|P| + |C \\ P| - live rows``: a count, no key transfer. Only when that is not zero (or after an
interrupted run) are keys read: a count per bucket of 4,096 keys over the primary key, then
the keys of the buckets whose count differs, ``D = P \\ current``. A key that comes back is a
new row version again and travels as one; load unmarks it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pg8000.native import Connection

from totes.errors import DamagedKeySet
from totes.extract.capture import KeySet
from totes.extract.plan import TableCounts
from totes.identifiers import quote
from totes.lake import STATE_PREFIX, UNREADABLE_PARQUET, Lake
from totes.source.model import DELETED_KEYS as DELETED_KEYS
from totes.source.model import DELETED_KEYS_SCHEMA, TABLES_BY_NAME

KEYSET_PREFIX = f"{STATE_PREFIX}keys"
KEY_SCHEMA = pa.schema([pa.field("key", pa.int32(), nullable=False)])
# The raw table that carries a batch's deletions (declared by the model: transform reads it).
DELETED_SCHEMA = DELETED_KEYS_SCHEMA


def keyset_key(table: str, batch_id: str) -> str:
    return f"{KEYSET_PREFIX}/{table}/{batch_id}.parquet"


def write_keys(lake: Lake, key: str, keys: np.ndarray) -> None:
    """Sorted keys, delta-encoded: consecutive serial keys cost a few bits each. Each page
    carries its CRC-32, as every lake file does (``lake.table_to_parquet_bytes``): without it
    3,459 of 4,557 single-bit flips of a 5,000-key file read back as other keys (s26)."""
    table = pa.table({"key": pa.array(keys, pa.int32())}, schema=KEY_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        use_dictionary=False,
        column_encoding={"key": "DELTA_BINARY_PACKED"},
        compression="zstd",
        write_page_checksum=True,
    )
    lake.put_bytes(key, sink.getvalue(), "application/vnd.apache.parquet")


def read_keys(lake: Lake, table: str, keyset: KeySet) -> np.ndarray:
    """The key set ``keyset`` of ``table``, checked to be what its state recorded: one int32
    column, ``keyset.rows`` keys, sorted and distinct (an O(n) pass; it also catches damage to
    a file written before pages carried checksums). Anything else raises ``DamagedKeySet``:
    a wrong key would mark a live row deleted, a lost one would hide a deletion."""

    def damaged(what: str) -> DamagedKeySet:
        return DamagedKeySet(f"key set of {table} at {keyset.key} is damaged: {what}")

    try:
        stored = lake.get_table(keyset.key)
    except UNREADABLE_PARQUET as exc:
        raise damaged(f"unreadable Parquet ({type(exc).__name__})") from None
    if not stored.schema.equals(KEY_SCHEMA):
        raise damaged("not one int32 column named key")
    if stored.num_rows != keyset.rows:
        raise damaged(f"{stored.num_rows} keys where its state recorded {keyset.rows}")
    keys: np.ndarray = stored.column("key").to_numpy().astype(np.int32, copy=False)
    if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        raise damaged("keys not sorted and distinct")
    return keys


def _keys_from_copy(con: Connection, sql: str) -> np.ndarray:
    sink = io.BytesIO()
    con.run(sql, stream=sink)
    if not sink.tell():
        return np.empty(0, np.int32)
    sink.seek(0)
    keys = pacsv.read_csv(
        sink,
        read_options=pacsv.ReadOptions(column_names=["key"]),
        convert_options=pacsv.ConvertOptions(column_types={"key": pa.int32()}),
    ).column("key")
    return np.sort(keys.to_numpy())


# Keys per bucket when locating deletions: a bucket whose count differs is read back whole.
BUCKET_BITS = 12


def current_keys(con: Connection, table: str, expected: np.ndarray) -> np.ndarray:
    """Every key of ``table`` in the run's snapshot, given the keys it would hold without
    deletions (``expected``, sorted): one count per bucket of 4,096 keys (a scan of the primary
    key), then only the buckets whose count differs are read back."""
    model = TABLES_BY_NAME[table]
    key = quote(model.key)
    rows = con.run(
        f"SELECT {key} >> {BUCKET_BITS} AS b, count(*) FROM {quote(model.name)} GROUP BY 1"  # noqa: S608  # nosec B608
    )
    actual = {int(b): int(n) for b, n in rows}
    buckets, counts = np.unique(expected >> BUCKET_BITS, return_counts=True)
    wanted = dict(zip(buckets.tolist(), counts.tolist(), strict=True))
    differ = sorted(b for b in set(actual) | set(wanted) if actual.get(b) != wanted.get(b))
    if not differ:
        return expected
    con.run(
        "SELECT set_config('totes.buckets', :b, true)",
        b="{" + ",".join(str(b) for b in differ) + "}",
    )
    fetched = _keys_from_copy(
        con,
        f"COPY (SELECT s.{key} FROM {quote(model.name)} s"  # noqa: S608  # nosec B608
        f" JOIN unnest(CAST((SELECT current_setting('totes.buckets')) AS integer[])) b"
        f" ON s.{key} BETWEEN b << {BUCKET_BITS} AND (b << {BUCKET_BITS}) + {2**BUCKET_BITS - 1})"
        " TO STDOUT",
    )
    keep = expected[~np.isin(expected >> BUCKET_BITS, np.array(differ, dtype=np.int64))]
    return np.sort(np.concatenate([keep, fetched]))


def distinct_sorted(arrays: list[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """The distinct non-null keys, sorted: a sort, then the first of every run of equals.

    Not ``np.unique``: on numpy 2.4 (the runtime's) it took 0.47 s for a million distinct int32
    keys against 0.018 s for this, and a first capture at 1M orders holds 4.4M keys: 1.2 to
    2 s of the run, all of it before the last batch's manifest (docs/ingest.md)."""
    chunks = [c for a in arrays for c in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])]
    if not chunks:
        return np.empty(0, np.int32)
    keys = np.sort(pa.concat_arrays(chunks).cast(pa.int32()).drop_null().to_numpy())
    if not len(keys):
        return keys
    first = np.empty(len(keys), bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    distinct: np.ndarray = keys[first]
    return distinct


def isin_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Which of ``values`` are in ``sorted_keys`` (binary search: no hash set of the big side)."""
    if not len(sorted_keys):
        return np.zeros(len(values), bool)
    at = np.searchsorted(sorted_keys, values)
    found: np.ndarray = sorted_keys[np.minimum(at, len(sorted_keys) - 1)] == values
    return found


def union_sorted(known: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """The sorted union of two sorted arrays of distinct keys, by insertion (O(n + m log n)):
    ``np.union1d`` hashes or sorts all n + m keys again, which took most of an incremental
    run's client time with a million keys per table (the key set P is large, the new keys
    few)."""
    extra = extra[~isin_sorted(extra, known)]
    if not len(extra):
        return known
    merged: np.ndarray = np.insert(known, np.searchsorted(known, extra), extra)
    return merged


@dataclass
class Reconciled:
    """The outcome for the run: deleted keys per table, the new key sets (table -> KeySet),
    and the key set objects to write (object key -> sorted keys)."""

    deleted: dict[str, np.ndarray] = field(default_factory=dict)
    keysets: dict[str, KeySet] = field(default_factory=dict)
    writes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def deleted_rows(self) -> dict[str, int]:
        return {t: len(k) for t, k in sorted(self.deleted.items()) if len(k)}

    def deleted_table(self) -> pa.Table:
        """The batch's ``deleted_keys`` rows, in table then key order."""
        tables = [t for t, k in sorted(self.deleted.items()) if len(k)]
        names = [t for t in tables for _ in range(len(self.deleted[t]))]
        keys = np.concatenate([self.deleted[t] for t in tables]) if tables else np.empty(0)
        return pa.table(
            {"table": pa.array(names, pa.string()), "key": pa.array(keys, pa.int32())},
            schema=DELETED_SCHEMA,
        )


def reconcile(
    con: Connection,
    lake: Lake,
    previous: Mapping[str, KeySet],
    copied: Mapping[str, np.ndarray],
    counts: Mapping[str, TableCounts],
    batch_id: str,
    *,
    complete: bool,
    exact: bool,
    written_at: str | None = None,
) -> Reconciled:
    """Deleted keys and new key sets for every table.

    ``copied``: the distinct sorted keys the run copied per table; ``complete``: the run copied
    every row (a first or full capture), so the copied keys are the key set; ``exact``: the
    run read everything new since the state the key sets belong to (False after an
    interrupted run), so the count identity holds; ``written_at``: when the key sets this
    run writes count as written (the run's capture time).
    """
    out = Reconciled()
    for table, tally in counts.items():
        keys = copied.get(table, np.empty(0, np.int32))
        before = previous.get(table)
        if before is not None and exact and not len(keys) and before.rows == tally.live:
            out.keysets[table] = before  # nothing new, nothing gone: nothing to read
            continue
        known = read_keys(lake, table, before) if before is not None else None
        if complete and len(keys) == tally.live:
            current = keys
        elif known is None:
            current = _keys_from_copy(
                con,
                f"COPY (SELECT {quote(TABLES_BY_NAME[table].key)}"  # noqa: S608  # nosec B608
                f" FROM {quote(table)}) TO STDOUT",
            )
        else:
            new = keys[~isin_sorted(keys, known)]
            if exact and before is not None and before.rows + len(new) == tally.live:
                if not len(new):
                    out.keysets[table] = before
                    continue
                current = union_sorted(known, new)
            else:
                current = current_keys(con, table, union_sorted(known, new))
        if known is not None:
            gone = known[~isin_sorted(known, current)]
            if len(gone):
                out.deleted[table] = gone
            if before is not None and len(known) == len(current) and np.array_equal(known, current):
                out.keysets[table] = before
                continue
        key = keyset_key(table, batch_id)
        out.writes[key] = current
        out.keysets[table] = KeySet(key, len(current), written_at)
    return out


def refresh(
    lake: Lake, keysets: Mapping[str, KeySet], now: datetime, retention_days: int
) -> dict[str, KeySet]:
    """The key sets a state is about to reference, each known to be younger than half the
    raw lake's retention (``now`` is aware): a key set written by this run gets ``now``; one
    older than that (or of unknown age) is copied onto itself, which renews the object (S3
    lifecycle counts a current version's age from its last write), before the lifecycle rule
    on ``state/keys/`` could expire it. A key set stays in use as long as its table does not
    change, so without this a quiet table would lose it. Costs one copy per table every
    ``retention_days / 2``."""
    limit = timedelta(days=retention_days / 2)
    out: dict[str, KeySet] = {}
    for table, keyset in keysets.items():
        written = datetime.fromisoformat(keyset.written_at) if keyset.written_at else None
        if written is not None and written.tzinfo is None:
            written = written.replace(tzinfo=UTC)
        if written is not None and now - written < limit:
            out[table] = keyset
            continue
        lake.renew(keyset.key)
        out[table] = replace(keyset, written_at=now.isoformat())
    return out
