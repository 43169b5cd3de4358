"""The consistent view a run reads from, and the check that the source is the schema we know.

Everything an ingest run reads happens inside one ``REPEATABLE READ READ ONLY`` transaction,
so every statement sees the same snapshot of the source.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from pg8000.native import Connection

from totes.db import close
from totes.errors import SchemaDrift
from totes.source.model import TABLES


@contextlib.contextmanager
def snapshot(con: Connection) -> Iterator[None]:
    """One read-only repeatable-read transaction: every statement inside sees one snapshot."""
    con.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        con.run("SET LOCAL DateStyle = 'ISO, YMD'")
        yield
    except BaseException:
        _abandon(con)
        raise
    con.run("ROLLBACK")


def export(con: Connection) -> str:
    """The id of this transaction's snapshot, for other sessions to read the same view
    (``imported``); valid until this transaction ends."""
    [[snapshot_id]] = con.run("SELECT pg_export_snapshot()")
    return str(snapshot_id)


# What pg_export_snapshot returns (hex words and dashes); SET TRANSACTION SNAPSHOT takes no
# bind parameter, so the id is checked against this before it is written into the statement.
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f]+(-[0-9A-Fa-f]+)+")


@contextlib.contextmanager
def imported(con: Connection, snapshot_id: str) -> Iterator[None]:
    """:func:`snapshot` on another session, seeing exactly the exported snapshot
    ``snapshot_id`` (while the exporting transaction is open): parallel readers of one run."""
    if not _SNAPSHOT_ID.fullmatch(snapshot_id):
        raise ValueError("not a snapshot id")
    con.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        con.run(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
        con.run("SET LOCAL DateStyle = 'ISO, YMD'")
        yield
    except BaseException:
        _abandon(con)
        raise
    con.run("ROLLBACK")


@contextlib.contextmanager
def shared_sessions(
    con: Connection, connect: Callable[[], Connection], n: int
) -> Iterator[list[Connection]]:
    """``n`` more sessions (``connect``) reading the snapshot of ``con``'s transaction
    (``export``, ``imported``), opened at the same time (on AWS each is a TLS handshake) and
    closed on exit; none when ``n`` is 0."""
    if n <= 0:
        yield []
        return
    snapshot_id = export(con)
    with contextlib.ExitStack() as stack:

        def opened() -> Connection:
            session = connect()
            stack.callback(close, session)
            return session

        with ThreadPoolExecutor(n, thread_name_prefix="totes-snapshot") as pool:
            sessions = [f.result() for f in [pool.submit(opened) for _ in range(n)]]
        for session in sessions:
            stack.enter_context(imported(session, snapshot_id))
        yield sessions


def _abandon(con: Connection) -> None:
    """Roll back after a failure, quietly: a failure raised while pg8000 received a COPY (the
    sink refused a value) leaves the connection mid-protocol, and the ROLLBACK's own error
    (pg8000's "'Context' object has no attribute 'stream_write'") would replace the cause.
    The caller discards the connection after such a failure."""
    with contextlib.suppress(Exception):
        con.run("ROLLBACK")


def check_schema(con: Connection) -> None:
    """Raise ``SchemaDrift`` naming every missing table, missing column or changed type.

    Extra source columns are ignored: extraction names its columns explicitly. Which source
    types each model type accepts is the model's (``Column.accepted_types``).
    """
    rows = con.run(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ANY(:names)",
        names=[t.name for t in TABLES],
    )
    found: dict[str, dict[str, str]] = {}
    for table_name, column_name, data_type in rows:
        found.setdefault(table_name, {})[column_name] = data_type
    problems = []
    for table in TABLES:
        columns = found.get(table.name)
        if columns is None:
            problems.append(f"table {table.name!r} is missing")
            continue
        for col in table.columns:
            actual = columns.get(col.name)
            if actual is None:
                problems.append(f"column {table.name}.{col.name} is missing")
            elif actual not in col.accepted_types:
                problems.append(
                    f"column {table.name}.{col.name} has type {actual}, expected {col.sql_type}"
                )
    if problems:
        raise SchemaDrift("source schema drift: " + "; ".join(problems))
