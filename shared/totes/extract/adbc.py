"""The large-table readers' second driver: ADBC PostgreSQL (``adbc-driver-postgresql``).

Why: a reader's time at scale is client CPU, and most of it was pg8000's Python loop over one
CopyData message per row, then parsing the CSV into Arrow. ADBC reads the same selection with
libpq and binary COPY in C, straight into Arrow record batches, and releases the GIL while it
does (docs/ingest.md "ADBC for the readers": measured side by side, and the decision).

Only the readers use it: they already run on sessions of their own, so the run's own session
and every small path (the count, the pieces, the small tables' ``copy_batch``, the key paths)
stay on pg8000, which the managed layer ships. ADBC ships in our own layer; where it cannot be
imported (a deployment or image without that layer) the readers use pg8000, chosen once per
run (``choose``) and logged under the ``reader_driver`` key.

A :class:`Session` speaks the one call the snapshot and selection helpers make of a pg8000
connection, ``run(sql, **params)``, on an ADBC connection in autocommit mode (so ``BEGIN`` /
``SET TRANSACTION SNAPSHOT`` / ``ROLLBACK`` go to the server exactly as pg8000 sends them),
and adds :meth:`Session.stream`: the record batches of one SELECT, read as the caller takes
them (bounded memory, never a whole table), cancelled on the server if the caller stops.
:func:`conform` casts each batch to the raw lake schema the CSV path produces, by position.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pyarrow as pa
import pyarrow.compute as pc

from totes.db import AUTH_FAILURES, DbCredentials, with_rotation
from totes.errors import AuthenticationFailed, ConfigurationError, DatabaseUnavailable
from totes.settings import READER_DRIVERS

ADBC, PG8000 = DRIVERS = READER_DRIVERS  # the settings' names: INGEST_READER_DRIVER values
_MODULE = "adbc_driver_postgresql.dbapi"
# libpq's connect_timeout, in whole seconds (pg8000's connect timeout is 10 s too).
CONNECT_TIMEOUT_SECONDS = 10
# The size of the record batches ADBC reads a SELECT into (its statement option, in bytes),
# derived from the run's chunk size (``INGEST_CHUNK_ROWS``, the operator's memory knob):
# BATCH_BYTES_PER_ROW per chunk row, within [MIN_BATCH_BYTES, BATCH_BYTES]. The default 100,000
# rows get the driver's own default, 16 MiB (measured fastest; docs/ingest.md); each reader
# holds a few batches (queued parts, the one being cast), so smaller chunks mean less memory.
BATCH_BYTES = 16 * 2**20
MIN_BATCH_BYTES = 2**20
BATCH_BYTES_PER_ROW = 168
_BATCH_BYTES_OPTION = "adbc.postgresql.batch_size_hint_bytes"


def batch_bytes(chunk_rows: int) -> int:
    """The record batch size for chunks of ``chunk_rows`` rows (see ``BATCH_BYTES``)."""
    return max(MIN_BATCH_BYTES, min(BATCH_BYTES, chunk_rows * BATCH_BYTES_PER_ROW))


# `:name` parameters of the statements the readers run (never inside `::`, which they avoid).
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.cache
def preload() -> threading.Thread:
    """Start importing the driver on a thread of its own, once per process. In a fresh process
    the import takes 0.15 to 0.25 s (mostly ``pyarrow.dataset``, which the driver manager
    imports), so a run starts it first and its first statements at the source, which wait on
    the server, hide it; ``available`` waits for it."""
    thread = threading.Thread(target=_import_quietly, name="adbc-import", daemon=True)
    thread.start()
    return thread


def _import_quietly() -> None:
    with contextlib.suppress(ImportError):
        importlib.import_module(_MODULE)


def available() -> bool:
    """Whether the ADBC PostgreSQL driver can be imported here (our ADBC layer is attached)."""
    preload().join()
    try:
        importlib.import_module(_MODULE)
    except ImportError:
        return False
    return True


def choose(requested: str | None) -> str:
    """The readers' driver for a run: ``requested`` (``INGEST_READER_DRIVER``) when set,
    else ADBC when it can be imported, else pg8000. Asking for ADBC where it cannot be imported
    is a configuration error, not a quiet fallback."""
    if requested is None:
        return ADBC if available() else PG8000
    if requested not in DRIVERS:
        raise ConfigurationError(f"reader driver must be one of {DRIVERS}, got {requested!r}")
    if requested == ADBC and not available():
        raise ConfigurationError(
            "INGEST_READER_DRIVER=adbc but adbc_driver_postgresql cannot be imported"
            " (is the ADBC layer attached?)"
        )
    return requested


def _ca_file(creds: DbCredentials) -> str:
    """``sslrootcert`` for libpq: the CA file ``creds`` names (``DbCredentials.ca_arguments``),
    PEM text from a secret written once to a private file (libpq reads only files), or
    ``system`` (the system store, which libpq then requires with verify-full)."""
    cas = creds.ca_arguments()
    if "cafile" in cas:
        return cas["cafile"]
    if "cadata" in cas:
        pem = cas["cadata"].encode()
        path = os.path.join(
            tempfile.gettempdir(), f"totes-ca-{hashlib.sha256(pem).hexdigest()[:16]}.pem"
        )
        if not os.path.exists(path):
            fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".pem")
            with os.fdopen(fd, "wb") as out:  # mkstemp: mode 0600
                out.write(pem)
            os.replace(partial, path)
        return path
    return "system"


def libpq_uri(creds: DbCredentials, application_name: str) -> str:
    """The libpq URI of ``creds`` with the TLS ``totes.db`` applies to pg8000 (``tls_mode``):
    none on a socket or where disabled, encryption without verification for ``require``, else
    ``verify-full`` against the CAs the credentials name (or the system store). User, password
    and database are percent-encoded. It holds the password: never log it."""
    auth = quote(creds.user, safe="")
    if creds.password:
        auth += ":" + quote(creds.password, safe="")
    query: dict[str, str] = {
        "application_name": application_name,
        "connect_timeout": str(CONNECT_TIMEOUT_SECONDS),
    }
    if creds.unix_socket_dir:
        location = ""
        query.update(host=creds.unix_socket_dir, port=str(creds.port))
    else:
        location = f"{quote(creds.host or '', safe='.:[]')}:{creds.port}"
        mode = creds.tls_mode
        query["sslmode"] = mode
        if mode == "verify-full":
            query["sslrootcert"] = _ca_file(creds)
    suffix = urlencode(query, safe="/", quote_via=quote)
    return f"postgresql://{auth}@{location}/{quote(creds.dbname, safe='')}?{suffix}"


def _message(exc: BaseException, creds: DbCredentials) -> str:
    """The driver's text with the password masked as written and as ``libpq_uri`` encodes
    it: libpq quotes the whole URI when it cannot parse it (a malformed host, say)."""
    text = str(exc).strip()
    if creds.password:
        for form in (quote(creds.password, safe=""), creds.password):
            text = text.replace(form, "***")
    return text


# libpq's words for SQLSTATE 28P01 / 28000 at login, which ADBC 1.13 reports without the code.
_LOGIN_REFUSALS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    'role "',  # role "x" does not exist
)


def _refused_login(exc: BaseException) -> bool:
    if getattr(exc, "sqlstate", None) in AUTH_FAILURES:
        return True
    text = str(exc)
    return "FATAL" in text and any(words in text for words in _LOGIN_REFUSALS)


def connect(creds: DbCredentials, application_name: str) -> Session:
    """A reader's ADBC session (autocommit: transactions are the caller's statements).
    Failures become ``DatabaseUnavailable`` / ``AuthenticationFailed`` naming the database,
    never the password; a refused login re-reads rotated credentials once, as pg8000's."""
    dbapi = importlib.import_module(_MODULE)

    def attempt(c: DbCredentials) -> Session:
        try:
            return Session(dbapi.connect(libpq_uri(c, application_name), autocommit=True))
        except Exception as exc:
            if _refused_login(exc):
                raise AuthenticationFailed(
                    f"authentication failed for user {c.user!r} on {c.where}"
                ) from None
            raise DatabaseUnavailable(f"cannot reach {c.where}: {_message(exc, c)}") from None

    return with_rotation(creds, attempt)


class Session:
    """An ADBC connection that runs the readers' statements as pg8000.native would
    (``run(sql, **params)``, ``:name`` parameters bound as values) and streams a SELECT's rows
    as Arrow record batches (``stream``)."""

    def __init__(self, connection: Any):
        self._connection = connection
        self._cursor = connection.cursor()

    def run(self, sql: str, **params: Any) -> list[list[Any]] | None:
        """Execute ``sql``; its rows when it returns any. Every ``:name`` must be a keyword
        and every keyword used: they become ``$n`` parameters, never text in the statement."""
        names: list[str] = []

        def placeholder(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in params:
                raise ValueError(f"statement parameter :{name} has no value")
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        text = _PARAM.sub(placeholder, sql)
        unused = set(params) - set(names)
        if unused:
            raise ValueError(f"parameters not in the statement: {sorted(unused)}")
        values = tuple(params[n] for n in names)
        self._cursor.execute(text, values if values else None)
        if self._cursor.description is None:
            return None
        return [list(row) for row in self._cursor.fetchall()]

    @contextlib.contextmanager
    def stream(self, sql: str, batch_size: int = BATCH_BYTES) -> Iterator[pa.RecordBatchReader]:
        """The record batches of SELECT ``sql`` (binary COPY under the hood) of about
        ``batch_size`` bytes each, read as they are taken. If the caller stops early or fails,
        the statement is cancelled on the server and the reader closed, so the session can
        roll back at once instead of draining the rest."""
        cursor = self._connection.cursor()
        try:
            cursor.adbc_statement.set_options(**{_BATCH_BYTES_OPTION: str(batch_size)})
            cursor.execute(sql)
            reader = cursor.fetch_record_batch()
            try:
                yield reader
            except BaseException:
                with contextlib.suppress(Exception):
                    self._connection.adbc_cancel()
                raise
            finally:
                with contextlib.suppress(Exception):
                    reader.close()
        finally:
            with contextlib.suppress(Exception):
                cursor.close()

    def close(self) -> None:
        """Close the cursor, then the connection (ADBC refuses the other order); quietly if the
        session is broken (the server went away, the backend was killed)."""
        with contextlib.suppress(Exception):
            self._cursor.close()
        with contextlib.suppress(Exception):
            self._connection.close()


def conform(batch: pa.RecordBatch, schema: pa.Schema, table: str) -> pa.Table:
    """``batch`` as a table of exactly ``schema``, column by column by position (the
    selection's expressions come back named ``case``): numerics arrive as PostgreSQL's text
    (an opaque extension over strings) and timestamps in microseconds, and are cast, safely,
    to the lake's types; a value that does not fit fails naming the column, as the CSV parse
    does, never with the value itself."""
    if batch.num_columns != len(schema):
        raise ValueError(
            f"{table}: the reader's selection returned {batch.num_columns} columns,"
            f" the raw lake has {len(schema)}"
        )
    columns = []
    for field, column in zip(schema, batch.columns, strict=True):
        if isinstance(column.type, pa.BaseExtensionType):
            column = column.storage
        if not column.type.equals(field.type):
            try:
                column = pc.cast(column, field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise ValueError(
                    f"{table}.{field.name}: a source value does not fit the raw lake type"
                    f" {field.type}"
                ) from None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)
