"""Fact merges: one path for every batch, and the steps the park shares.

A fact row is one version of a source row (natural id, ``last_updated``), stored once: a version
not stored yet is inserted, so the original and every changed version stay. A version delivered
again by a later capture (a greater ``capture_seq``) rewrites the stored one in place: its
content may differ without a new stamp (an ``ON UPDATE CASCADE`` keeps ``last_updated``), and
even with equal content the later capture records that the key was alive then, which decides
whether a deletion of the key is newer (``deletes``). An equal or older capture changes nothing,
so batches converge in any order.

The fact tables' foreign keys are not enforced by PostgreSQL (migration 0006: ``NOT ENFORCED``
on >= 18, dropped below), so the load guarantees them: after the dimension merges, inside the
batch's transaction and under the load lock, one set-based statement per fact table checks the
distinct values the staged rows reference against each dimension's key (O(batch): the staged
rows are read, the dimensions only probed). A dangling reference fails the batch naming table,
column and up to five ids. Then the versions are written with every index maintained. No DDL,
no lock stronger than ROW EXCLUSIVE on any star table, so BI readers never wait on a load.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Mapping, Sequence

from pg8000.native import Connection

from totes.errors import LoadFailed
from totes.identifiers import quote, quote_all
from totes.star.model import CAPTURE_SEQ, STAR_TABLES_BY_NAME, StarTable
from totes.warehouse.results import TableResult
from totes.warehouse.staging import LOADED_BATCH, loaded_columns, staging_name

# Keys set aside by transform, per dimension table (the manifest's ``extra["set_aside"]``).
SetAside = Mapping[str, Sequence[int]]


def version_columns(table: StarTable) -> list[str]:
    return [table.key, "last_updated_date", "last_updated_time"]


def batch_rows(table: StarTable) -> str:
    """The batch's staged rows of ``table`` as a merge source: the loaded columns, then the
    batch's ``capture_seq`` (``:seq``) and batch id (``:batch``)."""
    return (
        f"(SELECT s.*, CAST(:seq AS bigint) AS {quote(CAPTURE_SEQ)},"  # noqa: S608  # nosec B608
        f" CAST(:batch AS varchar) AS {quote(LOADED_BATCH)}"
        f" FROM {quote(staging_name(table))} s)"
    )


# The version anti-join (and the rewrite's join) probe the version key's index once per staged
# row when the fact table takes more than this many times the staged table's pages; otherwise
# the planner's hash join reads the whole fact table in every batch, an O(table) cost per batch
# that makes a backfill of k batches O(n * k). Measured: docs/load.md "One load path".
PROBE_ABOVE_BATCHES = 2


def merge_fact(
    con: Connection,
    batch: str,
    seq: int,
    table: StarTable,
    staged: int,
    rewrite: bool = True,
    merged: Collection[str] = (),
) -> TableResult:
    """The staged facts' references checked set-based (naming missing ids), then their versions
    written with every index maintained. ``rewrite=False``: no stored version can be of an
    older capture (``ledger.older_capture_loaded``), so the rewrite is skipped. ``merged``:
    the dimensions whose staged rows this transaction has merged (``check_staged_references``)."""
    check_staged_references(con, batch, table, merged)
    with _index_probes(con, _much_larger_than_batch(con, table)):
        inserted, updated = merge_versions(
            con, table, batch_rows(table), rewrite=rewrite, batch=batch, seq=seq
        )
    return TableResult(staged, inserted, updated)


def _much_larger_than_batch(con: Connection, table: StarTable) -> bool:
    """Whether the fact table's storage exceeds ``PROBE_ABOVE_BATCHES`` times the staged
    rows'. By size on disk (no scan, no statistics): ``reltuples`` lags a backfill, because
    autovacuum analyses a table up to a minute after a batch grew it, so a row estimate would
    leave most of a backfill's batches on the hash join."""
    [[larger]] = con.run(
        "SELECT pg_relation_size(CAST(:fact AS regclass))"
        " > CAST(:k AS float8) * pg_relation_size(CAST(:stage AS regclass))",
        fact=table.name,
        stage=staging_name(table),
        k=PROBE_ABOVE_BATCHES,
    )
    return bool(larger)


@contextlib.contextmanager
def _index_probes(con: Connection, wanted: bool) -> Iterator[None]:
    """Inside the block (one statement or two) the planner may join only by nested loops, i.e.
    by probing the fact table's version index once per staged row; the settings the
    transaction had are restored after it (``set_config(..., true)``: transaction-local)."""
    if not wanted:
        yield
        return
    [saved] = con.run(
        "SELECT current_setting('enable_hashjoin'), current_setting('enable_mergejoin'),"
        " set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)"
    )
    try:
        yield
    finally:
        con.run(
            "SELECT set_config('enable_hashjoin', :h, true),"
            " set_config('enable_mergejoin', :m, true)",
            h=saved[0],
            m=saved[1],
        )


def check_staged_references(
    con: Connection, batch: str, table: StarTable, merged: Collection[str] = ()
) -> None:
    """Every reference of the staged facts must exist in its dimension (which this batch may
    just have filled). One statement and one pass over the staged rows: ``GROUPING SETS``, one
    set per referencing column, hashes the distinct values of every column at once; then, per
    referenced dimension, the values of its columns (the four date columns of a sales order are
    one set) are probed against the dimension's primary key. Only when one is missing do the
    per-column anti-joins run, to name the column and the ids in the error.

    ``merged`` names the dimensions whose staged rows this transaction has already merged:
    every key staged for such a dimension is in it (an upsert or insert-where-missing keeps
    every key, a NULL key fails the merge, the load never deletes a dimension row), so a value
    found among the batch's staged keys (one hash of the staged table) needs no probe of the
    whole dimension's index; only the rest is probed. A backfill's payments reference the
    transactions of their own batch: the `transaction_id` probe, one index lookup and heap
    fetch per payment, was most of the check (docs/load.md "Alternatives measured (3)").

    Measured against one pass per dimension (docs/load.md "Alternatives measured (2)"): a
    300k-order backfill as one batch, the whole load 8.51 -> 7.95 s of server CPU."""
    if not table.references:
        return
    stage = quote(staging_name(table))
    by_dimension: dict[str, list[str]] = {}
    for column, dim_name in table.references:
        by_dimension.setdefault(dim_name, []).append(column)
    columns = [column for column, _ in table.references]
    sets = ", ".join(f"({quote(c)})" for c in columns)
    ctes = [
        f"v AS MATERIALIZED (SELECT {quote_all(columns)} FROM {stage}"  # noqa: S608  # nosec B608
        f" GROUP BY GROUPING SETS ({sets}))"
    ]
    probes = []
    for i, (dim_name, referencing) in enumerate(by_dimension.items()):
        dim = STAR_TABLES_BY_NAME[dim_name]
        # A row of one column's grouping set has every other column NULL, so the COALESCE of
        # a dimension's columns is the value of whichever of them the row groups.
        value = f"COALESCE({', '.join(f'v.{quote(c)}' for c in referencing)})"
        values = f"(SELECT {value} AS id FROM v WHERE {value} IS NOT NULL)"  # noqa: S608  # nosec B608
        if dim_name in merged:
            # Materialised, so computed whole by one hash anti-join against the staged keys;
            # inside the EXISTS below the planner would pick a fast-start nested loop.
            values = f"r{i}"
            ctes.append(
                f"r{i} AS MATERIALIZED (SELECT {value} AS id FROM v"  # noqa: S608  # nosec B608
                f" WHERE {value} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM"
                f" {quote(staging_name(dim))} b WHERE b.{quote(dim.key)} = {value}))"
            )
        probes.append(
            f"EXISTS (SELECT 1 FROM {values} AS r WHERE NOT EXISTS"  # noqa: S608  # nosec B608
            f" (SELECT 1 FROM {quote(dim.name)} d WHERE d.{quote(dim.key)} = r.id))"
        )
    [missing] = con.run(f"WITH {', '.join(ctes)} SELECT {', '.join(probes)}")
    if not any(missing):
        return
    check_references(con, batch, table)  # raises naming the column and the ids
    dims = [d for d, m in zip(by_dimension, missing, strict=True) if m]
    raise LoadFailed(  # unreachable unless the two checks disagree: still name what failed
        f"batch {batch}: table {table.name}: references {dims} row(s) that are neither in"
        " the warehouse nor in the batch"
    )


def check_references(
    con: Connection,
    batch: str,
    table: StarTable,
    relation: str | None = None,
    exempt: SetAside | None = None,
) -> None:
    """Every reference of the staged facts (or of ``relation``) must exist in its dimension
    (which this batch may just have filled): one anti-join per referencing column, failing
    with the missing ids. References to the ``exempt`` keys of a dimension are not checked.
    The park's check (a few rows), and the diagnosis when ``check_staged_references`` found a
    missing row."""
    source = relation or quote(staging_name(table))
    for column, dim_name in table.references:
        dim = STAR_TABLES_BY_NAME[dim_name]
        col = quote(column)
        keys = list((exempt or {}).get(dim_name, ()))
        spared = f" AND NOT s.{col} = ANY(CAST(:keys AS int[]))" if keys else ""
        # The examples by LIMIT, not an array slice: pg8000 reads ":5" as a placeholder.
        [[missing, examples]] = con.run(
            f"WITH missing AS (SELECT DISTINCT s.{col}::text AS id"  # noqa: S608  # nosec B608
            f" FROM {source} s"
            f" WHERE s.{col} IS NOT NULL{spared} AND NOT EXISTS"
            f" (SELECT 1 FROM {quote(dim.name)} d WHERE d.{quote(dim.key)} = s.{col}))"
            f" SELECT (SELECT count(*) FROM missing),"
            f" (SELECT array_agg(id ORDER BY id) FROM"
            f" (SELECT id FROM missing ORDER BY id LIMIT 5) AS first)",
            **({"keys": keys} if keys else {}),
        )
        if missing:
            raise LoadFailed(
                f"batch {batch}: table {table.name}: {column} references {missing}"
                f" {dim_name} row(s) that are neither in the warehouse nor in the batch,"
                f" e.g. {examples}"
            )


def merge_versions(
    con: Connection, table: StarTable, source: str, rewrite: bool = True, **params: object
) -> tuple[int, int]:
    """Write the versions of ``source`` (a relation of the loaded columns, ``capture_seq`` and
    ``loaded_batch_id``; ``params`` fill its placeholders) into the fact table: a stored version
    whose capture is older is rewritten in place, a version not stored yet is inserted, each
    once (the latest capture of a version repeated in ``source`` wins). Returns (inserted,
    updated).

    New versions go in by an anti-join against the version key rather than ``ON CONFLICT DO
    NOTHING``: no speculative insertion per row (measured about twice as fast, three times on
    redelivery). Safe because loads are serialised by the advisory lock; the version key still
    refuses a duplicate if anything else wrote one.

    ``rewrite=False`` skips the rewrite (the caller knows no stored version is of an older
    capture): in a backfill it probed the version key once per staged row for nothing, about
    8% of the load's server CPU (docs/load.md "Alternatives measured (2)")."""
    cols = loaded_columns(table)
    version = version_columns(table)
    matches = " AND ".join(f"f.{quote(c)} = i.{quote(c)}" for c in version)
    latest = f"{quote_all(version)}, {quote(CAPTURE_SEQ)} DESC"
    written = [c for c in cols if c not in version] + [CAPTURE_SEQ, LOADED_BATCH]
    updated = 0
    if rewrite:
        con.run(
            f"UPDATE {quote(table.name)} f"  # noqa: S608  # nosec B608
            f" SET ({quote_all(written)}) = ({quote_all(written, alias='i')})"
            f" FROM (SELECT DISTINCT ON ({quote_all(version)}) * FROM {source} AS s"
            f" ORDER BY {latest}) AS i"
            f" WHERE {matches} AND f.{quote(CAPTURE_SEQ)} < i.{quote(CAPTURE_SEQ)}",
            **params,
        )
        updated = int(con.row_count)
    names = quote_all([*cols, CAPTURE_SEQ, LOADED_BATCH])
    con.run(
        f"INSERT INTO {quote(table.name)} ({names})"  # noqa: S608  # nosec B608
        f" SELECT DISTINCT ON ({quote_all(version)}) {names} FROM {source} AS i"
        f" WHERE NOT EXISTS (SELECT 1 FROM {quote(table.name)} f WHERE {matches})"
        f" ORDER BY {latest}",
        **params,
    )
    return int(con.row_count), updated
