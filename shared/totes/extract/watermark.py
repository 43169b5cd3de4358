"""The watermark: which window of ``last_updated`` a run reads, and whether anything is new.

The window is ``[lo, hi)`` on ``last_updated``. ``hi`` is the source's own clock
(``localtimestamp``: the same zone semantics as its ``timestamp without time zone`` columns)
minus a safety lag, truncated to the columns' millisecond precision; ``lo`` is the previous
batch's ``hi`` minus an overlap. The lag covers transactions still in flight; the overlap
re-reads a stretch of the past so rows committed late with an early stamp are still seen.
Versions read twice are deduplicated downstream by (id, last_updated).

The previous ``hi`` and the fingerprint of the overlap region come from the newest raw
manifest (the lake is the state); everything else here reads the run's snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pg8000.native import Connection

from totes.identifiers import quote
from totes.lake import Manifest
from totes.source.model import TABLES

# The published window, read back by the constant SQL of this transaction (see set_window).
_LO = "(SELECT current_setting('totes.window_lo')::timestamp)"
_HI = "(SELECT current_setting('totes.window_hi')::timestamp)"


@dataclass(frozen=True)
class Window:
    """``[lo, hi)`` on ``last_updated``, source clock; ``lo`` None takes everything before hi."""

    lo: datetime | None
    hi: datetime

    @property
    def lo_iso(self) -> str | None:
        return iso(self.lo) if self.lo is not None else None

    @property
    def hi_iso(self) -> str:
        return iso(self.hi)


@dataclass(frozen=True)
class Clock:
    """The source clock read at the start of the snapshot."""

    now: datetime  # localtimestamp (source zone, no zone attached)
    hi: datetime  # now - lag, truncated to milliseconds


def iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds")


def read_clock(con: Connection, lag_seconds: float) -> Clock:
    """The source clock now and ``hi`` = now - lag at millisecond precision."""
    now, hi = con.run(
        "SELECT localtimestamp, "
        "date_trunc('milliseconds', localtimestamp - make_interval(secs => CAST(:lag AS float8)))",
        lag=float(lag_seconds),
    )[0]
    return Clock(now=now, hi=hi)


def to_utc(con: Connection, value: datetime) -> datetime:
    """The instant a source-clock timestamp names, as an aware UTC datetime (the source's
    TimeZone setting, daylight saving included, decides the offset)."""
    instant: datetime = con.run(
        "SELECT CAST(:ts AS timestamp) AT TIME ZONE current_setting('TimeZone')", ts=iso(value)
    )[0][0]
    return instant.astimezone(UTC)


def window_after(previous: Manifest | None, hi: datetime, overlap_seconds: float) -> Window:
    """The window of this run: everything before ``hi`` on a first run, else from the previous
    batch's ``hi`` minus the overlap (never past ``hi``)."""
    if previous is None:
        return Window(None, hi)
    lo = datetime.fromisoformat(previous.window_hi) - timedelta(seconds=overlap_seconds)
    return Window(min(lo, hi), hi)


def set_window(con: Connection, window: Window) -> None:
    """Publish the window to the constant selection SQL of this transaction."""
    con.run(
        "SELECT set_config('totes.window_lo', :lo, true), set_config('totes.window_hi', :hi, true)",
        lo=window.lo_iso or "-infinity",
        hi=window.hi_iso,
    )


def changed(alias: str) -> str:
    """SQL: the row ``alias`` is stamped inside the published window."""
    stamp = f"{alias}.{quote('last_updated')}"
    return f"{stamp} >= {_LO} AND {stamp} < {_HI}"


def _changed_stamps_sql() -> str:
    return "\nUNION ALL ".join(
        f"SELECT s.{quote('last_updated')} AS stamp FROM {quote(t.name)} s WHERE {changed('s')}"  # noqa: S608  # nosec B608
        for t in TABLES
    )


def has_changes(con: Connection, window: Window) -> bool:
    """Whether any row of any table is stamped in ``window``."""
    set_window(con, window)
    return bool(con.run(f"SELECT EXISTS ({_changed_stamps_sql()})")[0][0])


def plan_windows(con: Connection, window: Window, max_batch_rows: int) -> list[tuple[Window, int]]:
    """Split ``window`` into consecutive windows of about ``max_batch_rows`` changed rows each,
    cut only between distinct ``last_updated`` values (so ties never straddle two batches).

    A piece holds fewer than ``max_batch_rows`` rows plus those sharing its last timestamp;
    a single timestamp holding more rows than the bound becomes one larger piece. The cut is
    a pure function of the data, so the same snapshot always gives the same plan. Returns
    (window, changed rows) pairs; an empty list when nothing changed.
    """
    set_window(con, window)
    rows = con.run(
        "WITH stamps AS (SELECT stamp, count(*) AS n FROM ("  # noqa: S608  # nosec B608
        + _changed_stamps_sql()
        + ") changed GROUP BY stamp), "
        "running AS (SELECT stamp, n, "
        "CAST(sum(n) OVER (ORDER BY stamp ROWS UNBOUNDED PRECEDING) AS bigint) - n AS before "
        "FROM stamps) "
        "SELECT min(stamp), CAST(sum(n) AS bigint) FROM running "
        "GROUP BY before / CAST(:bound AS bigint) ORDER BY 1",
        bound=int(max_batch_rows),
    )
    if not rows:  # every table empty: nothing to plan
        return []
    starts = [window.lo] + [r[0] for r in rows[1:]]
    ends = [r[0] for r in rows[1:]] + [window.hi]
    return [(Window(lo, hi), n) for lo, hi, (_, n) in zip(starts, ends, rows, strict=True)]


def region_fingerprint(con: Connection, window: Window) -> str:
    """A fingerprint of every row version stamped in ``window``: the count, and the sum of a
    64-bit hash of each version's (table, ctid, xmin). Any commit landing there since, late or
    not, changes it; a plain sum of xmins could cancel out (two updates whose old xmins sit
    symmetrically around the new one), a sum of hashes cannot in practice."""
    set_window(con, window)
    parts = "\nUNION ALL ".join(
        f"SELECT count(*) AS n, COALESCE(sum(CAST(hashtextextended("  # noqa: S608  # nosec B608
        f"CAST(s.ctid AS text) || ':' || CAST(s.xmin AS text), {seed}) AS numeric)), 0) AS x "
        f"FROM {quote(t.name)} s WHERE {changed('s')}"
        for seed, t in enumerate(TABLES)
    )
    n, x = con.run(f"SELECT CAST(sum(n) AS bigint), CAST(sum(x) AS numeric) FROM ({parts}) f")[0]  # noqa: S608  # nosec B608
    return f"{n}:{x}"


def tail_fingerprint(con: Connection, window: Window, overlap_seconds: float) -> str:
    """The fingerprint of the overlap region at the end of ``window``, which the next run
    re-reads: stored in the newest manifest, it lets ``nothing_new`` see a late commit."""
    tail = Window(window.hi - timedelta(seconds=overlap_seconds), window.hi)
    return region_fingerprint(con, tail)


def nothing_new(con: Connection, previous: Manifest | None, window: Window) -> bool:
    """True when no row version landed in the window since the previous batch was cut.

    Rows stamped before the previous ``hi`` are re-read on purpose (the overlap); they count as
    new only if the region's fingerprint changed, i.e. something committed there late.
    """
    if previous is None:
        return False
    previous_hi = datetime.fromisoformat(previous.window_hi)
    if previous_hi >= window.hi:
        return True
    if has_changes(con, Window(previous_hi, window.hi)):
        return False
    remembered = previous.extra.get("tail_fingerprint")
    region = Window(window.lo, previous_hi)
    return remembered is not None and remembered == region_fingerprint(con, region)
