"""Dimension merges: an upsert that moves each row only forward in the source's commit order,
so batches applied in any order converge to the same warehouse."""

from __future__ import annotations

from pg8000.native import Connection

from totes.identifiers import quote, quote_all
from totes.star.model import CAPTURE_SEQ, StarTable
from totes.warehouse.results import TableResult
from totes.warehouse.staging import LOADED_BATCH, loaded_columns, staging_name


def merge_dimension(
    con: Connection, batch: str, seq: int, table: StarTable, staged: int
) -> TableResult:
    """Upsert the newest staged row per key, replacing a stored row only when the incoming
    ``(capture_seq, source_version[, oldest_version])`` is greater as a row. ``capture_seq``
    (the batch's capture, in commit order) decides: a version stamped in the future and then
    corrected with an older stamp ends as the correction. The stamps order only rows of equal
    capture, i.e. those of batches from before capture by commit order (all 0); for the joined
    dimensions the newest stamp alone can tie between two different snapshots, so the oldest
    breaks the tie. ``source_deleted_at`` is left to the deletion marks (``deletes``)."""
    cols = loaded_columns(table)
    names = quote_all(cols)
    written = [*cols[1:], CAPTURE_SEQ, LOADED_BATCH]
    updates = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in written)
    key = quote(table.key)
    newest_first = ", ".join(f"{quote(stamp)} DESC" for stamp in table.lineage)
    order = (CAPTURE_SEQ, *table.lineage)
    stored = quote_all(order, alias="target")
    incoming = quote_all(order, alias="EXCLUDED")
    [[inserted, updated]] = con.run(
        f"WITH merged AS ("  # noqa: S608  # nosec B608
        f" INSERT INTO {quote(table.name)} AS target"
        f" ({names}, {quote(CAPTURE_SEQ)}, {quote(LOADED_BATCH)})"
        f" SELECT DISTINCT ON ({key}) {names}, CAST(:seq AS bigint), CAST(:batch AS varchar)"
        f" FROM {quote(staging_name(table))} ORDER BY {key}, {newest_first}"
        f" ON CONFLICT ({key}) DO UPDATE SET {updates}"
        f" WHERE ROW({stored}) < ROW({incoming})"
        f" RETURNING (xmax = 0) AS inserted)"
        f" SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)"
        f" FROM merged",
        batch=batch,
        seq=seq,
    )
    return TableResult(staged, inserted, updated)
