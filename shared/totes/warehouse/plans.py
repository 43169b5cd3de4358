"""Join plans whose cost follows the batch, not the table.

A merge joins a batch's staged rows with a stored table by its key (the facts' version key, a
dimension's primary key). Left alone, the planner hash-joins the whole stored table in every
batch, an O(table) cost per batch that makes a backfill of k batches O(n * k). When the stored
table is much larger than the staged rows, the merge's joins run as nested loops instead: one
probe of the stored table's key index per staged row. Measured: docs/load.md "One load path"
(the facts) and "Alternatives measured (5)" (the dimensions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pg8000.native import Connection

from totes.star.model import StarTable
from totes.warehouse.staging import staging_name


def much_larger_than_batch(con: Connection, table: StarTable, times: float) -> bool:
    """Whether ``table``'s storage exceeds ``times`` the storage of its staged rows. By size
    on disk (no scan, no statistics): ``reltuples`` lags a backfill, because autovacuum
    analyses a table up to a minute after a batch grew it, so a row estimate would leave most
    of a backfill's batches on the hash join."""
    [[larger]] = con.run(
        "SELECT pg_relation_size(CAST(:stored AS regclass))"
        " > CAST(:k AS float8) * pg_relation_size(CAST(:stage AS regclass))",
        stored=table.name,
        stage=staging_name(table),
        k=times,
    )
    return bool(larger)


@contextlib.contextmanager
def index_probes(con: Connection, wanted: bool) -> Iterator[None]:
    """Inside the block (one statement or two) the planner may join only by nested loops, i.e.
    by probing the stored table's key index once per staged row; the settings the transaction
    had are restored after it (``set_config(..., true)``: transaction-local).

    When a statement in the block fails, its error is raised as it is: the failure aborted the
    transaction, whose rollback restores the settings, and a restore sent into the aborted
    transaction would fail ("current transaction is aborted") and hide the cause. So the
    restore after an exception is attempted and its own failure ignored."""
    if not wanted:
        yield
        return
    [saved] = con.run(
        "SELECT current_setting('enable_hashjoin'), current_setting('enable_mergejoin'),"
        " set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)"
    )

    def restore() -> None:
        con.run(
            "SELECT set_config('enable_hashjoin', :h, true),"
            " set_config('enable_mergejoin', :m, true)",
            h=saved[0],
            m=saved[1],
        )

    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            restore()
        raise
    restore()
