"""Content checksums of the warehouse: what "the same warehouse" means when comparing loads
done in different orders or repeated. Surrogate record ids and ``loaded_batch_id`` depend on
arrival order, so they are left out; every other column, lineage included, counts."""

from __future__ import annotations

from totes.identifiers import quote, quote_all
from totes.star.model import STAR_TABLES, StarTable


def content_columns(table: StarTable) -> list[str]:
    if table.name == "dim_date":
        return table.column_names
    return [*table.column_names, *table.lineage]


def table_checksums(con) -> dict[str, tuple[int, str]]:
    """Star table name -> (row count, md5 of its rows in sorted order)."""
    out = {}
    for table in STAR_TABLES:
        cols = quote_all(content_columns(table))
        [[count, digest]] = con.run(
            f"SELECT count(*), md5(coalesce(string_agg(r, E'\\n' ORDER BY r), ''))"  # noqa: S608  # nosec B608
            f" FROM (SELECT ROW({cols})::text AS r FROM {quote(table.name)}) AS rows"
        )
        out[table.name] = (count, digest)
    return out
