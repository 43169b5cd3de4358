"""Dates and times of the star schema: splitting source timestamps, parsing the source's text
dates, and the calendar rows of dim_date.

The conventions are fixed by ``warehouse.md`` and relied on by BI queries: ISO day of week
(1 = Monday .. 7 = Sunday), English names without padding, quarters 1..4, and times that keep
the source's milliseconds. Names come from fixed tuples, not ``strftime``, so the output does
not depend on the machine's locale.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from totes.arrow_values import FALSE, ints, strings

DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

# A calendar day never changes, so every dim_date row carries the same (earliest) version.
DATE_SOURCE_VERSION = datetime(1970, 1, 1)
_DATE_SOURCE_VERSION = ints([0], pa.timestamp("ms"))[0]  # DATE_SOURCE_VERSION, the epoch

TEXT_DATE_FORMAT = "%Y-%m-%d"
# The first day of year 1: PostgreSQL has no year 0 (1 BC comes before 1 AD).
# (Built from buffers, as every Arrow value here: docs/transform.md "Cost per batch".)
_FIRST_DAY = ints(
    [int((datetime(1, 1, 1) - datetime(1970, 1, 1)).total_seconds())], pa.timestamp("s")
)[0]
# Names looked up by ISO day of week (1..7) and month (1..12): index 0 is never taken.
_DAY_NAMES = strings(("", *DAY_NAMES))
_MONTH_NAMES = strings(("", *MONTH_NAMES))


def date_part(stamps: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """The calendar date of each source timestamp (no zone: the source clock's own date)."""
    return pc.cast(stamps, pa.date32())


def time_part(stamps: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """The time of day of each timestamp, to the millisecond (TIME(3) in the warehouse)."""
    return pc.cast(pc.cast(stamps, pa.timestamp("ms")), pa.time32("ms"))


def parse_text_date(text: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """The source's ``YYYY-MM-DD`` text dates as dates. Values must be valid (the quality gates
    set aside the rows with any that are not, see ``unparseable_text_dates``).

    Parsed once per distinct text and looked up per row, as the gate checks them: a column
    of dates holds a few thousand distinct values, and ``strptime`` of every row was a fifth
    of a 300k-order batch's remodelling (docs/transform.md "Cost per batch")."""
    distinct = pc.unique(text)
    days = pc.cast(pc.strptime(distinct, format=TEXT_DATE_FORMAT, unit="s"), pa.date32())
    return pc.take(days, pc.index_in(text, value_set=distinct))


def unparseable_text_dates(text: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A mask of the non-null values that are not real ``YYYY-MM-DD`` dates. Parsing alone is
    lenient ("2024-02-30" becomes March 1st), so a value must also print back unchanged; and
    Arrow takes year 0 ("0000-01-01"), which has no date in PostgreSQL (nor in Python): a row
    carrying one failed its whole batch at the load instead of being set aside.

    Checked once per distinct text, then looked up per row: Arrow's ``strftime`` costs about a
    microsecond a value, a column of dates holds a few thousand distinct ones, and checking
    every row took a third of a 300k-order transform (docs/transform.md)."""
    distinct = pc.unique(text)
    parsed = pc.strptime(distinct, format=TEXT_DATE_FORMAT, unit="s", error_is_null=True)
    printed = pc.strftime(parsed, format=TEXT_DATE_FORMAT)
    real = pc.and_(
        pc.fill_null(pc.equal(printed, distinct), FALSE),
        pc.fill_null(pc.greater_equal(parsed, _FIRST_DAY), FALSE),
    )
    bad = pc.filter(distinct, pc.and_(pc.is_valid(distinct), pc.invert(real)))
    return pc.is_in(text, value_set=bad)


def calendar(*date_columns: pa.ChunkedArray | pa.Array) -> pa.Table:
    """One dim_date row per distinct non-null date found in any of the columns, in date order."""
    chunks = [
        chunk
        for column in date_columns
        for chunk in (column.chunks if isinstance(column, pa.ChunkedArray) else [column])
    ]
    days = pc.unique(pa.chunked_array(chunks, pa.date32()).combine_chunks().drop_null())
    days = pc.take(days, pc.sort_indices(days))
    day_of_week = pc.day_of_week(days, count_from_zero=False, week_start=1)
    month = pc.month(days)
    return pa.table(
        {
            "date_id": days,
            "year": pc.year(days),
            "month": month,
            "day": pc.day(days),
            "day_of_week": day_of_week,
            "day_name": pc.take(_DAY_NAMES, day_of_week),
            "month_name": pc.take(_MONTH_NAMES, month),
            "quarter": pc.quarter(days),
            "source_version": pa.repeat(_DATE_SOURCE_VERSION, len(days)),
        }
    )
