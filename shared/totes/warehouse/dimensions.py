"""Dimension merges: an upsert that moves each row only forward, so batches applied in any
order converge to the same warehouse."""

from __future__ import annotations

from pg8000.native import Connection

from totes.identifiers import quote, quote_all
from totes.star.model import StarTable
from totes.warehouse.results import TableResult
from totes.warehouse.staging import LOADED_BATCH, loaded_columns, staging_name


def merge_dimension(con: Connection, batch: str, table: StarTable, staged: int) -> TableResult:
    """Upsert the newest staged row per key, replacing a stored row only when the incoming
    lineage is greater as a row: ``(source_version, oldest_version)`` for the joined
    dimensions, whose newest stamp alone can tie between two different snapshots."""
    cols = loaded_columns(table)
    names = quote_all(cols)
    updates = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in [*cols[1:], LOADED_BATCH])
    key = quote(table.key)
    newest_first = ", ".join(f"{quote(stamp)} DESC" for stamp in table.lineage)
    stored = quote_all(table.lineage, alias="target")
    incoming = quote_all(table.lineage, alias="EXCLUDED")
    [[inserted, updated]] = con.run(
        f"WITH merged AS ("  # noqa: S608  # nosec B608
        f" INSERT INTO {quote(table.name)} AS target ({names}, {quote(LOADED_BATCH)})"
        f" SELECT DISTINCT ON ({key}) {names}, CAST(:batch AS varchar)"
        f" FROM {quote(staging_name(table))} ORDER BY {key}, {newest_first}"
        f" ON CONFLICT ({key}) DO UPDATE SET {updates}"
        f" WHERE ROW({stored}) < ROW({incoming})"
        f" RETURNING (xmax = 0) AS inserted)"
        f" SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)"
        f" FROM merged",
        batch=batch,
    )
    return TableResult(staged, inserted, updated)
