"""Backfill: a first capture's rows COPYed straight into the star tables.

A batch's rows normally reach a star table twice: COPY into a staging table, then a merge
(``facts.merge_versions``: an ``INSERT ... SELECT`` of the versions not stored yet;
``dimensions.merge_dimension``). While no older capture is in the ledger
(``ledger.older_capture_loaded``: every batch of a backfill) no stored version can need
rewriting, so a fact table's rows can be COPYed straight into it, with every index maintained
as an insert does: one copy of the rows instead of two, no anti-join, no sort. Measured
(docs/load.md "Alternatives measured (4)"): 425k payments 1.38 -> 0.96 s of server CPU, 300k
sales orders 1.10 -> 0.81 s.

A large dimension (``dim_transaction``) is split first: the keys of its rows the warehouse
holds are found by probing its primary key (only keys between the smallest and the largest
stored one can be stored, and only those are probed), those rows are staged and merged as usual
(a backfill batch carries a few hundred transactions an earlier batch stored: its payments
reference them), and the rest, new keys, are COPYed straight in.

A version already stored (a batch of the same capture that carried it too, or a later capture
loaded first) or repeated within the batch makes the COPY hit the version key; the COPY ran in
a savepoint, so it is rolled back alone and the batch merges that table the staged way, which
skips stored versions: the outcome is the staged path's in every case, only the cost differs.
So does any other constraint the COPY meets (a NULL in a NOT NULL column): the COPY checks
every row, the merge only the rows it writes, so a row it skips (a stored version, a key's
older row) must not fail the batch; a row it writes fails it there, naming table and column.

Only where nothing else needs the staged rows: no dimension a fact references has keys set
aside (the park takes rows out of the staging table), and the table has no tombstone and none
in this batch (the deletion marks join the touched keys from the staging table).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pg8000.exceptions import DatabaseError
from pg8000.native import Connection

from totes.arrow_values import ints, strings
from totes.identifiers import quote, quote_all
from totes.star.model import CAPTURE_SEQ, StarTable
from totes.warehouse.binary_copy import copy_stream
from totes.warehouse.references import SetAside, int_array_text, int_array_values
from totes.warehouse.results import TableResult
from totes.warehouse.staging import LOADED_BATCH, loaded_columns

# SQLSTATE class 23, integrity constraint violations: the version key (23505), NOT NULL (23502).
INTEGRITY_VIOLATION = "23"
SAVEPOINT = "backfill_copy"
# A dimension is split and copied from this many rows: below it, the probe, the COPY and the
# merge of the stored keys' rows cost more statements than the one merge they replace.
DIMENSION_ROWS = 10_000


def copyable(
    table: StarTable,
    rows: int,
    rewrite: bool,
    set_aside: SetAside,
    tombstoned: Collection[str],
) -> bool:
    """Whether ``table``'s ``rows`` of this batch may be COPYed straight in: no older capture
    loaded (``rewrite`` False) and no tombstone of the table's keys (``tombstoned``: tables with
    one stored or in the batch); a fact with no set-aside keys among the dimensions it
    references, a dimension of at least ``DIMENSION_ROWS`` rows. Never the calendar."""
    if not table.tracked or rewrite or table.name in tombstoned:
        return False
    if table.kind == "fact":
        return not any(set_aside.get(dim) for _, dim in table.references)
    return rows >= DIMENSION_ROWS


def copy_new_keys(
    con: Connection, batch: str, seq: int, table: StarTable, rows: pa.Table
) -> tuple[TableResult | None, pa.Table]:
    """A dimension's rows whose key the warehouse lacks COPYed straight in (``copy_versions``);
    returns that result and the rows left to stage and merge: those of stored keys, or every
    row when the COPY met a key twice (``None``: nothing of it written)."""
    stored = stored_keys(con, table, rows)
    old = pc.is_in(rows.column(table.key), value_set=stored)
    new, left = rows.filter(pc.invert(old)), rows.filter(old)
    if not new.num_rows:
        return TableResult(0, 0), left
    copied = copy_versions(con, batch, seq, table, new)
    return (copied, left) if copied is not None else (None, rows)


def stored_keys(con: Connection, table: StarTable, rows: pa.Table) -> pa.Array:
    """The distinct keys of ``rows`` that ``table`` holds. Only a key between the smallest and
    the largest stored key can be stored (two ends of the primary key's index), and only those
    are probed, one index probe each (sent as the text of one ``int[]`` parameter): a backfill
    batch's new keys lie mostly above every stored one (the 1M backfill probed 1.4M
    transactions for 1.09 s of server CPU; docs/load.md "Alternatives measured (6)")."""
    keys = pc.unique(rows.column(table.key)).drop_null()
    key = quote(table.key)
    [[lo, hi]] = con.run(f"SELECT min({key}), max({key}) FROM {quote(table.name)}")  # noqa: S608  # nosec B608
    if lo is None:
        return keys.slice(0, 0)
    # The ends as Arrow scalars from buffers: a Python int goes through ``pa.scalar``, which
    # imports pandas (0.15-0.2 s of a cold load).
    ends = ints([lo, hi], pa.int64())
    inside = keys.filter(pc.and_(pc.greater_equal(keys, ends[0]), pc.less_equal(keys, ends[1])))
    if not len(inside):
        return inside
    [[found]] = con.run(
        "SELECT CAST(array_agg(k) AS text)"  # noqa: S608  # nosec B608
        f" FROM unnest(CAST(CAST(:keys AS text) AS int[])) AS k"
        f" WHERE EXISTS (SELECT 1 FROM {quote(table.name)} d WHERE d.{key} = k)",
        keys=int_array_text(inside),
    )
    return int_array_values(found, keys.type)


def copy_versions(
    con: Connection, batch: str, seq: int, table: StarTable, rows: pa.Table
) -> TableResult | None:
    """COPY ``rows`` (the batch's, in the model's columns) into ``table`` with the batch's
    capture and id, inside a savepoint. ``None`` when a version (a dimension's key) was
    already stored or repeated, or a row broke another constraint (the savepoint rolled back,
    nothing of it written): merge that table the staged way, which refuses only a row it
    writes."""
    full = with_capture(rows, seq, batch)
    columns = quote_all([*loaded_columns(table), CAPTURE_SEQ, LOADED_BATCH])
    con.run(f"SAVEPOINT {SAVEPOINT}")
    try:
        con.run(
            f"COPY {quote(table.name)} ({columns}) FROM STDIN WITH (FORMAT binary)",
            stream=copy_stream(full),
        )
    except DatabaseError as exc:
        info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        if not str(info.get("C", "")).startswith(INTEGRITY_VIOLATION):
            raise
        # Released too: left open, the rest of the transaction (the load lock among it, when
        # this COPY ran before it: ``merge``) would run inside it.
        con.run(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        con.run(f"RELEASE SAVEPOINT {SAVEPOINT}")
        return None
    con.run(f"RELEASE SAVEPOINT {SAVEPOINT}")
    return TableResult(rows.num_rows, rows.num_rows, 0)


def with_capture(rows: pa.Table, seq: int, batch: str) -> pa.Table:
    """``rows`` with the batch's ``capture_seq`` and ``loaded_batch_id`` on every row, built
    from buffers (``totes.arrow_values``): ``pa.array`` goes through Arrow's pandas shim, which
    imports pandas (0.66 s of a cold load stage, measured with py-spy in the bench)."""
    n = rows.num_rows
    seqs = ints(np.full(n, seq, np.int64), pa.int64())
    indices = ints(np.zeros(n, np.int32))
    batches = pa.DictionaryArray.from_arrays(indices, strings([batch])).cast(pa.string())
    return rows.append_column(CAPTURE_SEQ, seqs).append_column(LOADED_BATCH, batches)
