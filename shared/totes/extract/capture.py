"""What changed since the last capture, told by PostgreSQL's own commit bookkeeping.

A run reads one ``REPEATABLE READ`` snapshot; ``pg_current_snapshot()`` names it (``xmin``,
``xmax`` and the transactions in progress, ``xip``, as 64-bit ids). A row version's ``xmin``
system column is the transaction that wrote it, so "written by a transaction the previous
snapshot could not see" is a test on commit order, not on ``last_updated``: rows of long
transactions, rows stamped in the future or under another time zone, and rows a cascade
changed without a new stamp are all caught, in the first cycle after they commit.

Relative to a base snapshot S, a visible row is new when its ``xmin`` X satisfies ``X >= T``
with ``T = min({P in S.xip completed by now} + {S.xmax})``. Why nothing is missed: a visible
row was written by a committed transaction. One at or past ``S.xmax`` began after S. One in
``S.xip`` was running at S and has committed since, so it is one of the P and ``T <= X``. Any
other id below ``S.xmax`` either had completed at S (its rows were captured then), or is a
subtransaction (``pg_snapshot`` lists no subtransaction ids) whose parent P, an older id, was in
``S.xip`` and has committed since, so ``T <= P < X``. A transaction still open keeps T where it
was; when it commits, T drops to it for one run (rows committed meanwhile are read again; the
warehouse stores a version once).

The ``xmin`` column is 32 bits. Per row the test is ``age(xmin) <= age(T)``: ``age()`` measures
from one reference inside a transaction, so the comparison is exact while the distance from T
to now is below 2**31. Further apart (a pipeline paused for months on a busy cluster), or when
the source's ids went backwards (a restored or replaced database), the run captures every row,
which is always correct. Frozen rows keep their raw ``xmin``; at worst one is read again.

COPY takes no parameters, so the test travels as transaction-local settings that constant SQL
reads back (``publish``); identifiers come only from the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pg8000.native import Connection

from totes.identifiers import quote

XID_RANGE = 2**32
# age() of a frozen or bootstrap id, the largest int4: "age(xmin) <= AGE_ALL" takes every row.
AGE_ALL = 2**31 - 1
# Exact while now - T stays below 2**31; keep a margin for ids assigned during the run.
MAX_DISTANCE = 2**31 - 2**24

_SINCE_AGE = "(SELECT CAST(current_setting('totes.since_age') AS integer))"
_RESUME = "(SELECT CAST(current_setting('totes.resume') AS boolean))"
_RESUME_AGE = "(SELECT CAST(current_setting('totes.resume_age') AS integer))"
_RESUME_FROM = "(SELECT CAST(current_setting('totes.resume_from') AS timestamp))"
_PIECE_LO = "(SELECT CAST(current_setting('totes.piece_lo') AS timestamp))"
_PIECE_HI = "(SELECT CAST(NULLIF(current_setting('totes.piece_hi'), '') AS timestamp))"


@dataclass(frozen=True)
class Snapshot:
    """A ``pg_snapshot``: 64-bit ``xmin``, ``xmax`` and the ids in progress (``xip``)."""

    xmin: int
    xmax: int
    xip: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """From PostgreSQL's text form ``xmin:xmax:xip,xip``."""
        lo, hi, running = text.split(":")
        return cls(int(lo), int(hi), tuple(int(x) for x in running.split(",") if x))

    @property
    def text(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(str(x) for x in self.xip)}"

    def completed(self, xid: int) -> bool:
        """Whether transaction ``xid`` had ended (committed or aborted) at this snapshot."""
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)


@dataclass(frozen=True)
class Resume:
    """An interrupted run: rows new since ``base`` (None: every row) stamped at or after
    ``stamp_from`` were not all captured yet."""

    base: Snapshot | None
    stamp_from: str  # ISO last_updated of the first piece not written

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base.text if self.base else None, "stamp_from": self.stamp_from}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Resume:
        base = data.get("base")
        return cls(Snapshot.parse(base) if base else None, str(data["stamp_from"]))


@dataclass(frozen=True)
class KeySet:
    """Where a table's key set (``extract.keysets``) is stored, how many keys it holds and
    when its object was last written (UTC ISO; None in states from before it was recorded):
    superseded key sets expire by lifecycle, so ingest rewrites the ones a state still needs
    before they get that old (``keysets.refresh``)."""

    key: str
    rows: int
    written_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "rows": self.rows, "written_at": self.written_at}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeySet:
        written = data.get("written_at")
        return cls(str(data["key"]), int(data["rows"]), str(written) if written else None)


@dataclass(frozen=True)
class CaptureState:
    """What the lake has captured: every row version committed before ``snapshot`` (except,
    after an interrupted run, the rows ``resume`` names), the key set of every source table at
    the last complete capture, the sequence number of the batch that recorded it, and when
    (UTC, for the lag between captures)."""

    snapshot: Snapshot
    seq: int
    keysets: dict[str, KeySet] = field(default_factory=dict)
    resume: Resume | None = None
    captured_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot.text,
            "seq": self.seq,
            "keysets": {t: k.to_json() for t, k in sorted(self.keysets.items())},
            "resume": self.resume.to_json() if self.resume else None,
            "captured_at": self.captured_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaptureState:
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) on a malformed state."""
        snapshot = Snapshot.parse(str(data["snapshot"]))
        seq = int(data["seq"])
        keysets = data.get("keysets") or {}
        if not isinstance(keysets, dict) or seq < 0 or snapshot.xmin > snapshot.xmax:
            raise ValueError("malformed capture state")
        resume = data.get("resume")
        captured_at = data.get("captured_at")
        return cls(
            snapshot,
            seq,
            {str(t): KeySet.from_json(k) for t, k in keysets.items()},
            Resume.from_json(resume) if resume else None,
            str(captured_at) if captured_at else None,
        )


def next_seq(previous: CaptureState | None, current: Snapshot) -> int:
    """A batch sequence that only grows: one past the previous batch's, and never below the
    source's transaction counter, so even a state read from an older manifest (the newest was
    lost) gives a number no earlier batch has used. Dimensions move forward on it."""
    return max((previous.seq + 1) if previous else 1, current.xmax)


def threshold(base: Snapshot, current: Snapshot) -> int:
    """T: rows written by transaction ids at or above it may be new since ``base``."""
    done = [p for p in base.xip if current.completed(p)]
    return min([*done, base.xmax])


@dataclass(frozen=True)
class Since:
    """One "new since" test, in the 32-bit terms the SQL uses: ``age(xmin) <= age``.
    ``everything`` takes every row."""

    age: int
    # T itself (64-bit), so another session can measure the same age from its own reference
    # (``rebased``); None for ``EVERYTHING``.
    threshold: int | None = None

    @property
    def everything(self) -> bool:
        return self.age >= AGE_ALL


EVERYTHING = Since(AGE_ALL)


def since(con: Connection, base: Snapshot | None, current: Snapshot) -> tuple[Since, str | None]:
    """The test for rows new since ``base`` at ``current``, and why it takes every row when it
    has to (None when it does not)."""
    if base is None:
        return EVERYTHING, "first capture"
    if base.xmin > current.xmax:
        return EVERYTHING, "the source's transaction ids went backwards (restored or replaced?)"
    t = threshold(base, current)
    if current.xmax - t >= MAX_DISTANCE:
        return EVERYTHING, "more than 2**31 transactions since the last capture"
    return _age_since(con, t), None


def _age_since(con: Connection, t: int) -> Since:
    [[age]] = con.run("SELECT age(CAST(:t AS xid))", t=str(t % XID_RANGE))
    return Since(int(age), t)


def rebased(con: Connection, selection: Selection) -> Selection:
    """``selection`` for another session reading the same snapshot (``extract.readers``).
    ``age()`` counts from a reference that is fixed per transaction but differs between
    sessions (the next transaction id when the transaction first asks), so ages computed by
    the run's session would drop, in a session that asks later, the rows of the transactions
    that began in between: each age is measured again here from its threshold."""

    def again(since: Since) -> Since:
        return since if since.threshold is None else _age_since(con, since.threshold)

    resume = again(selection.resume) if selection.resume is not None else None
    return Selection(again(selection.primary), resume, selection.resume_from)


def read_snapshot(con: Connection) -> tuple[Snapshot, datetime, datetime]:
    """The run's snapshot, its start as a UTC instant, and the source's local clock then."""
    [[text, now, local]] = con.run(
        "SELECT CAST(pg_current_snapshot() AS text), now(), localtimestamp"
    )
    return Snapshot.parse(text), now.astimezone(UTC), local


@dataclass(frozen=True)
class Selection:
    """What this run reads: rows new since the state (``primary``), plus, after an
    interrupted run, the rows new since its base stamped at or after ``resume_from``."""

    primary: Since
    resume: Since | None = None
    resume_from: str | None = None

    @property
    def everything(self) -> bool:
        return self.primary.everything or bool(
            self.resume and self.resume.everything and self.resume_from is None
        )


def publish(con: Connection, selection: Selection) -> None:
    """Publish the selection (and an unbounded piece) to this transaction's constant SQL."""
    resume = selection.resume or Since(0)
    con.run(
        "SELECT set_config('totes.since_age', :since_age, true),"
        " set_config('totes.resume', :resume, true),"
        " set_config('totes.resume_age', :resume_age, true),"
        " set_config('totes.resume_from', :resume_from, true)",
        since_age=str(selection.primary.age),
        resume="on" if selection.resume else "off",
        resume_age=str(resume.age),
        resume_from=selection.resume_from or "-infinity",
    )
    publish_piece(con, None, None)


def publish_piece(con: Connection, lo: str | None, hi: str | None) -> None:
    """Restrict what ``changed`` means to rows stamped in ``[lo, hi)`` (None: unbounded; a
    NULL stamp counts as the latest)."""
    con.run(
        "SELECT set_config('totes.piece_lo', :lo, true), set_config('totes.piece_hi', :hi, true)",
        lo=lo or "-infinity",
        hi=hi or "",
    )


def stamp(alias: str) -> str:
    """SQL: the row's ``last_updated``, a NULL (after a dropped NOT NULL) as the latest."""
    return f"COALESCE({alias}.{quote('last_updated')}, CAST('infinity' AS timestamp))"


def is_new(alias: str) -> str:
    """SQL: the row version in ``alias`` is new for the published selection (any stamp)."""
    xmin = f"{alias}.xmin"
    primary = f"age({xmin}) <= {_SINCE_AGE}"
    resumed = f"({_RESUME} AND age({xmin}) <= {_RESUME_AGE} AND {stamp(alias)} >= {_RESUME_FROM})"
    return f"({primary} OR {resumed})"


def changed(alias: str) -> str:
    """SQL: the row is new for the published selection and stamped inside the published
    piece: what one batch of the run carries as changed."""
    within = f"{stamp(alias)} >= {_PIECE_LO} AND ({stamp(alias)} < {_PIECE_HI}) IS NOT FALSE"
    return f"({is_new(alias)} AND {within})"


def selection_for(
    con: Connection, state: CaptureState | None, current: Snapshot
) -> tuple[Selection, str | None]:
    """What this run must read given the lake's state, and why it reads everything (if so)."""
    primary, reason = since(con, state.snapshot if state else None, current)
    if state is None or state.resume is None or primary.everything:
        return Selection(primary), reason
    resumed, _ = since(con, state.resume.base, current)
    return Selection(primary, resumed, state.resume.stamp_from), None
