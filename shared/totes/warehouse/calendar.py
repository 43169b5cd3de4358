"""The calendar (``dim_date``): a day's row never changes, so it is inserted where missing."""

from __future__ import annotations

from pg8000.native import Connection

from totes.identifiers import quote, quote_all
from totes.star.model import StarTable
from totes.warehouse.results import TableResult
from totes.warehouse.staging import staging_name


def merge_calendar(con: Connection, table: StarTable, staged: int) -> TableResult:
    names = quote_all(table.column_names)
    key = quote(table.key)
    [[inserted]] = con.run(
        f"WITH merged AS ("  # noqa: S608  # nosec B608
        f" INSERT INTO {quote(table.name)} ({names})"
        f" SELECT DISTINCT ON ({key}) {names} FROM {quote(staging_name(table))}"
        f" ORDER BY {key}"
        f" ON CONFLICT ({key}) DO NOTHING RETURNING 1)"
        f" SELECT count(*) FROM merged"
    )
    return TableResult(staged, inserted)
