"""Fact references: every value a committed fact references exists in its dimension.

The fact tables' foreign keys are not enforced by PostgreSQL (migration 0006: ``NOT ENFORCED``
on >= 18, dropped below), so the load guarantees them, inside the batch's transaction, under
the load lock and after the dimension merges: a dangling reference fails the batch naming
table, column and up to five ids.

Most references point at rows of the batch itself (a backfill's payments at its own
transactions, every fact at its own dates, staff, currencies...). A dimension this transaction
has merged holds every key its batch rows carry (the merges keep every key, a NULL key fails
the merge, the load never deletes a dimension row), so those values need no look-up: which
referenced values are among the batch's own keys is an Arrow set operation on the client
(``unresolved``, in C++, a few milliseconds per 100,000 rows). Only the rest goes to the
warehouse, as one array per dimension, probed in its primary key (O(values), not O(table)).
It was a ``GROUPING SETS`` pass over the staged facts and a hash anti-join against the staged
keys on the server: 0.7 s of a 300k-order backfill's 4.8 s of server CPU (docs/load.md
"Alternatives measured (4)").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from pg8000.native import Connection

from totes.arrow_values import ints, strings
from totes.errors import LoadFailed
from totes.identifiers import quote
from totes.star.model import STAR_TABLES_BY_NAME, StarTable
from totes.warehouse.staging import stage, staging_name

# Keys set aside by transform, per dimension table (the manifest's ``extra["set_aside"]``).
SetAside = Mapping[str, Sequence[int]]


def by_dimension(table: StarTable) -> dict[str, list[str]]:
    """The referencing columns of ``table`` grouped by the dimension they reference (a sales
    order's four date columns are one group)."""
    groups: dict[str, list[str]] = {}
    for column, dim_name in table.references:
        groups.setdefault(dim_name, []).append(column)
    return groups


def unresolved(
    table: StarTable,
    rows: pa.Table,
    merged: Mapping[str, pa.Table],
    exempt: SetAside | None = None,
) -> dict[str, pa.Array]:
    """Per referenced dimension, the distinct non-NULL values ``rows`` (of fact ``table``)
    reference that the batch does not vouch for: not among the keys of that dimension's own
    batch rows when it is in ``merged`` (dimension name -> the batch's rows of it, merged by
    this transaction), and not a key transform set aside (``exempt``: the park holds the rows
    that point at a set-aside key the warehouse lacks). Dimensions with none are left out."""
    out: dict[str, pa.Array] = {}
    for dim_name, columns in by_dimension(table).items():
        parts = [pc.unique(rows.column(c)) for c in columns]
        values = pc.unique(pa.concat_arrays(parts)).drop_null()
        dim = STAR_TABLES_BY_NAME[dim_name]
        if dim_name in merged and len(values):
            keys = merged[dim_name].column(dim.key)
            values = values.filter(pc.invert(pc.is_in(values, value_set=keys)))
        aside = (exempt or {}).get(dim_name)
        if aside and len(values) and pa.types.is_integer(values.type):  # no calendar keys
            # Compared as int64, so a set-aside key out of the column's range cannot fail a cast.
            spared = ints(aside, pa.int64())
            values = values.filter(pc.invert(pc.is_in(values.cast(pa.int64()), value_set=spared)))
        if len(values):
            out[dim_name] = values
    return out


_COMMA = strings([","])


def int_array_text(values: pa.Array) -> str:
    """Integers as the text of a PostgreSQL array, ``{1,2,3}``, joined in Arrow (C++): 10x
    faster than ``",".join(map(str, values.to_pylist()))`` (4.6 against 48 ms for 158k keys),
    and one text parameter where pg8000 encoding a list cost 5x that again. No NULLs (the
    callers drop them): one NULL made the whole join NULL, i.e. ``{}``, a probe of nothing."""
    if values.null_count:
        raise ValueError(f"{values.null_count} NULL(s) among the integers of an int[] text")
    texts = values.cast(pa.string())
    offsets = ints([0, len(texts)])
    # The separator as an array (one per list): a Python "," goes through ``pa.scalar``,
    # which imports pandas.
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, texts), _COMMA)
    return "{" + str(joined[0].as_py() or "") + "}"


def int_array_values(text: str | None, type_: pa.DataType) -> pa.Array:
    """The integers of a PostgreSQL ``int[]``'s text (``{1,2,3}``; None or ``{}``: none),
    split and cast in Arrow: one row of text instead of a row per key, which pg8000 parses
    one by one (0.28 s of client CPU for the 1M backfill's stored designs)."""
    inner = (text or "{}")[1:-1]
    if not inner:
        return ints([], pa.int64()).cast(type_)
    parts = pc.split_pattern(strings([inner]), ",").flatten()
    return parts.cast(type_)


def check_staged_references(
    con: Connection,
    batch: str,
    table: StarTable,
    rows: pa.Table,
    merged: Mapping[str, pa.Table],
    exempt: SetAside | None = None,
    staged: bool = True,
) -> None:
    """Every reference of the batch's staged facts (``rows``, the Arrow table staged for
    ``table``) must exist in its dimension, which this batch may just have filled. The values
    ``unresolved`` leaves are probed in their dimensions by one statement; only when one is
    missing does ``check_references`` run over the staged rows, to name the column and ids.

    ``rows`` may still hold rows the park took out of the staging table: only those pointing
    at an ``exempt`` key the warehouse lacks, whose values ``unresolved`` leaves out.
    ``staged=False``: the rows are not staged (``backfill``); they are, to name what is
    missing."""
    left = unresolved(table, rows, merged, exempt)
    if not left:
        return
    probes = []
    params: dict[str, str] = {}
    for i, (dim_name, values) in enumerate(left.items()):
        dim = STAR_TABLES_BY_NAME[dim_name]
        # Dates as days since 1970, so every value's text is an integer's.
        if pa.types.is_date32(values.type):
            numbers, probe = values.cast(pa.int32()), "DATE '1970-01-01' + r.id"
        else:
            numbers, probe = values, "r.id"
        params[f"v{i}"] = int_array_text(numbers)
        probes.append(
            f"EXISTS (SELECT 1 FROM unnest(CAST(CAST(:v{i} AS text) AS int[])) AS r(id)"  # noqa: S608  # nosec B608
            f" WHERE NOT EXISTS (SELECT 1 FROM {quote(dim.name)} d"
            f" WHERE d.{quote(dim.key)} = {probe}))"
        )
    [missing] = con.run(f"SELECT {', '.join(probes)}", **params)
    if not any(missing):
        return
    if not staged:
        stage(con, table, rows)
    check_references(con, batch, table)  # raises naming the column and the ids
    dims = [d for d, m in zip(left, missing, strict=True) if m]
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
