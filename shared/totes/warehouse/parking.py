"""Parked facts: fact rows whose dimension row transform set aside wait in the park instead of
failing their batch, and move into the fact table once their references resolve.

Transform sets a dimension row aside when the star cannot represent it (the manifest's
``extra["set_aside"]``: keys per dimension table), so a fact of the same batch may reference a
row that is in neither the batch nor the warehouse. Such facts go to ``etl_parked_<fact>``
(the staged columns, the batch and its capture) and every load, after its dimension merges,
moves the parked rows whose references all resolve into the fact table, with the same version
semantics as any batch (``facts.merge_versions``). Any other missing reference still fails the
batch, naming table, column and ids.
"""

from __future__ import annotations

from pg8000.native import Connection

from totes.identifiers import quote, quote_all
from totes.star.model import CAPTURE_SEQ, FACTS, STAR_TABLES_BY_NAME, StarTable
from totes.warehouse.facts import merge_versions, version_columns
from totes.warehouse.references import SetAside, check_references
from totes.warehouse.staging import LOADED_BATCH, loaded_columns, staging_name

PARK_PREFIX = "etl_parked_"
PARKED_BATCH = "batch_id"


def park_name(table: StarTable) -> str:
    return f"{PARK_PREFIX}{table.name}"


def release_name(table: StarTable) -> str:
    """The temporary table of the rows a load released from the park (until commit)."""
    return f"release_{table.name}"


def park(con: Connection, batch: str, seq: int, table: StarTable, set_aside: SetAside) -> int:
    """Move the batch's staged facts that reference a set-aside dimension row missing from the
    warehouse out of the staging table into the park; returns how many. Their other references
    must resolve, or the batch fails naming them."""
    refs = [(column, dim) for column, dim in table.references if set_aside.get(dim)]
    if not refs:
        return 0
    params: dict[str, object] = {}
    dangling = []
    for column, dim_name in refs:
        dim = STAR_TABLES_BY_NAME[dim_name]
        name = f"keys_{dim_name}"
        params[name] = sorted(set(set_aside[dim_name]))
        col = quote(column)
        dangling.append(
            f"(s.{col} = ANY(CAST(:{name} AS int[])) AND NOT EXISTS"  # noqa: S608  # nosec B608
            f" (SELECT 1 FROM {quote(dim.name)} d WHERE d.{quote(dim.key)} = s.{col}))"
        )
    stage = quote(staging_name(table))
    parking = quote(f"parking_{table.name}")
    con.run(f"CREATE TEMP TABLE {parking} ON COMMIT DROP AS TABLE {stage} WITH NO DATA")
    con.run(
        f"WITH moved AS (DELETE FROM {stage} s WHERE {' OR '.join(dangling)} RETURNING s.*)"  # noqa: S608  # nosec B608
        f" INSERT INTO {parking} SELECT * FROM moved",
        **params,
    )
    parked = int(con.row_count)
    if not parked:
        return 0
    check_references(con, batch, table, relation=parking, exempt=set_aside)
    cols = quote_all(loaded_columns(table))
    version = quote_all(version_columns(table))
    con.run(
        f"INSERT INTO {quote(park_name(table))}"  # noqa: S608  # nosec B608
        f" ({cols}, {quote(PARKED_BATCH)}, {quote(CAPTURE_SEQ)})"
        f" SELECT DISTINCT ON ({version}) {cols}, CAST(:batch AS varchar), CAST(:seq AS bigint)"
        f" FROM {parking} ORDER BY {version} ON CONFLICT DO NOTHING",
        batch=batch,
        seq=seq,
    )
    return parked


def waiting(con: Connection) -> list[StarTable]:
    """The fact tables whose park holds rows (one statement)."""
    probes = ", ".join(
        f"EXISTS (SELECT 1 FROM {quote(park_name(t))})"  # noqa: S608  # nosec B608
        for t in FACTS
    )
    [found] = con.run(f"SELECT {probes}")
    return [t for t, any_rows in zip(FACTS, found, strict=True) if any_rows]


def release(con: Connection, table: StarTable) -> int:
    """Move the parked rows whose references all resolve into the fact table (each with the
    capture and batch it came from); returns how many left the park. They stay readable in
    ``release_name(table)`` until commit."""
    parked = quote(park_name(table))
    resolve = " AND ".join(
        f"EXISTS (SELECT 1 FROM {quote(dim.name)} d"  # noqa: S608  # nosec B608
        f" WHERE d.{quote(dim.key)} = p.{quote(column)})"
        for column, dim in ((c, STAR_TABLES_BY_NAME[d]) for c, d in table.references)
    )
    cols = quote_all(loaded_columns(table))
    released = quote(release_name(table))
    con.run(
        f"CREATE TEMP TABLE {released} ON COMMIT DROP AS"  # noqa: S608  # nosec B608
        f" SELECT {cols}, {quote(CAPTURE_SEQ)}, {quote(PARKED_BATCH)} AS {quote(LOADED_BATCH)}"
        f" FROM {parked} WITH NO DATA"
    )
    con.run(
        f"WITH moved AS (DELETE FROM {parked} p WHERE {resolve} RETURNING p.*)"  # noqa: S608  # nosec B608
        f" INSERT INTO {released} SELECT {cols}, {quote(CAPTURE_SEQ)}, {quote(PARKED_BATCH)}"
        f" FROM moved"
    )
    moved = int(con.row_count)
    if moved:
        merge_versions(con, table, released)
    return moved
