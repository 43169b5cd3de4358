"""PostgreSQL connections for every stage and tool: from a URL (CLI, tests) or from a Secrets
Manager secret (Lambda), with TLS verified for any host that is not loopback or a socket.

``sslmode`` works as in libpq where both have it: an explicit ``disable``, ``require`` or
``verify-full`` applies to every TCP host, loopback included (an SSM or SSH port forward to RDS
is loopback); only when none is given does loopback mean plaintext and any other host
``verify-full``. Unix sockets never use TLS (PostgreSQL offers none there).

Credentials read from Secrets Manager re-read their secret once when the server refuses them,
so a rotated password (single user, or alternating users after the cache outlived a rotation)
costs one refused login instead of every call until the cache expires.

Errors name the database and host but never the password.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import pg8000
import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from totes.errors import AuthenticationFailed, ConfigurationError, DatabaseUnavailable
from totes.identifiers import quote as quote_identifier
from totes.observability import logger

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

SSL_MODES = ("verify-full", "require", "disable")
CERTS_DIR = Path(__file__).resolve().parent / "certs"
RDS_BUNDLE = "rds-global-bundle.pem"
RDS_HOST_SUFFIX = ".rds.amazonaws.com"
AUTH_FAILURES = frozenset({"28P01", "28000"})
T = TypeVar("T")


@dataclass(frozen=True)
class DbCredentials:
    """Where and as whom to connect. ``repr`` hides the password.

    ``sslmode`` None means "not given" (see the module docstring); ``refresh``, when set,
    reads these credentials again from where they came from, bypassing any cache.
    """

    user: str
    dbname: str
    host: str | None = None
    port: int = 5432
    password: str | None = field(default=None, repr=False)
    unix_socket_dir: str | None = None
    sslmode: str | None = None
    sslrootcert: str | None = None
    refresh: Callable[[], DbCredentials] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_url(cls, url: str) -> DbCredentials:
        """``postgresql://user:pw@host:port/db`` or ``postgresql://user@/db?host=/socket/dir``."""
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(
                f"database URL must start with postgresql://, got scheme {parts.scheme!r}"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        dbname = unquote(parts.path.lstrip("/"))
        if not dbname:
            raise ConfigurationError("database URL names no database (postgresql://.../DBNAME)")
        try:
            port = parts.port or int(query.get("port", 5432))
        except ValueError as exc:
            raise ConfigurationError(f"database URL has a malformed port: {exc}") from None
        socket_dir = query.get("host") if query.get("host", "").startswith("/") else None
        host = parts.hostname or (None if socket_dir else query.get("host"))
        if not host and not socket_dir:
            raise ConfigurationError("database URL names neither a host nor a socket directory")
        sslmode = query.get("sslmode")
        if sslmode is not None and sslmode not in SSL_MODES:
            raise ConfigurationError(f"sslmode must be one of {SSL_MODES}, got {sslmode!r}")
        return cls(
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password) if parts.password else None,
            host=host,
            port=port,
            dbname=dbname,
            unix_socket_dir=socket_dir,
            sslmode=sslmode,
            sslrootcert=query.get("sslrootcert"),
        )

    @classmethod
    def from_secret(cls, secret: str | dict[str, Any]) -> DbCredentials:
        """The JSON shape RDS secrets use: host, port, username/user, password, dbname."""
        data = json.loads(secret) if isinstance(secret, str) else dict(secret)
        missing = [k for k in ("host", "dbname") if not data.get(k)]
        if not (data.get("user") or data.get("username")):
            missing.append("user")
        if missing:
            raise ConfigurationError(f"database secret lacks key(s): {', '.join(missing)}")
        host = str(data["host"])
        socket_dir = host if host.startswith("/") else None
        sslmode = data.get("sslmode")
        if sslmode is not None and sslmode not in SSL_MODES:
            raise ConfigurationError(f"secret sslmode must be one of {SSL_MODES}, got {sslmode!r}")
        return cls(
            user=str(data.get("user") or data.get("username")),
            password=data.get("password"),
            host=None if socket_dir else host,
            port=int(data.get("port", 5432)),
            dbname=str(data["dbname"]),
            unix_socket_dir=socket_dir,
            sslmode=sslmode,
            sslrootcert=data.get("sslrootcert"),
        )

    def to_secret(self) -> str:
        """The secret JSON for these credentials (what local runs store in Secrets Manager)."""
        data = {
            "host": self.unix_socket_dir or self.host,
            "port": self.port,
            "username": self.user,
            "password": self.password or "",
            "dbname": self.dbname,
        }
        if self.sslmode is not None:
            data["sslmode"] = self.sslmode
        if self.sslrootcert:
            data["sslrootcert"] = self.sslrootcert
        return json.dumps(data)

    def with_dbname(self, dbname: str) -> DbCredentials:
        return replace(self, dbname=dbname, refresh=None)

    def to_url(self) -> str:
        """A URL naming every field, password percent-encoded (for local tools; never logged):
        ``from_url(creds.to_url()) == creds``."""
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        query: dict[str, str] = {}
        if self.unix_socket_dir:
            location = ""
            query.update(host=self.unix_socket_dir, port=str(self.port))
        else:
            location = f"{self.host}:{self.port}"
        if self.sslmode is not None:
            query["sslmode"] = self.sslmode
        if self.sslrootcert:
            query["sslrootcert"] = self.sslrootcert
        suffix = "?" + urlencode(query, safe="/", quote_via=quote) if query else ""
        return f"postgresql://{auth}@{location}/{quote(self.dbname, safe='')}{suffix}"

    @property
    def where(self) -> str:
        """Where this database is, for messages (no credentials)."""
        location = self.unix_socket_dir or f"{self.host}:{self.port}"
        return f"database {self.dbname!r} at {location}"

    @property
    def is_local(self) -> bool:
        if self.unix_socket_dir:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host or "").is_loopback
        except ValueError:
            return False

    def ca_arguments(self) -> dict[str, str]:
        """Which CAs verify the server. ``sslrootcert`` may be PEM text (fits a secret), an
        absolute path, or a file name in ``totes/certs/`` (shipped in the layer); an RDS host
        with none named uses ``certs/rds-global-bundle.pem`` when present (``make rds-ca``),
        since the Lambda runtime's system store does not hold the RDS CAs."""
        root = self.sslrootcert
        if root is None and (self.host or "").endswith(RDS_HOST_SUFFIX):
            bundled = CERTS_DIR / RDS_BUNDLE
            return {"cafile": str(bundled)} if bundled.is_file() else {}
        if root is None:
            return {}
        if root.lstrip().startswith("-----BEGIN"):
            return {"cadata": root}
        path = Path(root) if os.path.isabs(root) else CERTS_DIR / root
        if not path.is_file():
            raise ConfigurationError(f"sslrootcert {root!r} is not a file (looked at {path})")
        return {"cafile": str(path)}

    @property
    def tls_mode(self) -> str:
        """The sslmode in force: the explicit one on any TCP host, else ``disable`` on loopback
        and ``verify-full`` elsewhere; always ``disable`` on a unix socket."""
        if self.unix_socket_dir:
            return "disable"
        if self.sslmode is not None:
            return self.sslmode
        return "disable" if self.is_local else "verify-full"

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS for every remote host (and a loopback one that asks for it), verified unless the
        configuration relaxes it explicitly.

        Certificate checks are the same on every Python: 3.13 (the Lambda runtime) made
        ``VERIFY_X509_STRICT`` and ``VERIFY_X509_PARTIAL_CHAIN`` defaults of
        ``create_default_context`` and 3.11 has neither, so both are set here. Strict RFC 5280
        checks stay on for the system store and the bundled RDS CAs; they are lifted only for
        CAs the configuration names itself (``sslrootcert``), as libpq does, so a private CA
        made by PostgreSQL's own recipe (no keyUsage extension) verifies. The chain up to that
        CA, the validity dates and the host name are checked either way (docs/deploy.md).
        """
        mode = self.tls_mode
        if mode == "disable":
            if self.sslmode == "disable" and not self.is_local:
                logger.warning("TLS disabled by explicit sslmode=disable", extra={"db": self.where})
            return None
        cas = self.ca_arguments()
        context = ssl.create_default_context(cafile=cas.get("cafile"), cadata=cas.get("cadata"))
        context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
        if self.sslrootcert is not None:
            context.verify_flags &= ~ssl.VERIFY_X509_STRICT
        if mode == "require":
            logger.warning(
                "TLS certificate verification relaxed by explicit sslmode=require",
                extra={"db": self.where},
            )
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def connect(
    creds: DbCredentials,
    *,
    application_name: str = "totes",
    timeout: float = 10.0,
    search_path: str | None = None,
) -> pg8000.native.Connection:
    """A ``pg8000.native.Connection``; failures become ``DatabaseUnavailable`` naming the target.

    ``search_path`` names the one schema unqualified names resolve in, sent in the start-up
    message (it overrides any ``ALTER ROLE ... SET search_path``), with ``pg_temp`` after it:
    a session's temporary tables never shadow the schema's tables (see
    :func:`search_path_setting`).

    When the server refuses the credentials and they can be read again (``creds.refresh``,
    set for secrets), they are read again once, bypassing the cache; if the secret changed
    meanwhile (a rotation), the connection is tried once more with the new one.
    """
    return with_rotation(creds, lambda c: _connect_once(c, application_name, timeout, search_path))


def with_rotation(creds: DbCredentials, attempt: Callable[[DbCredentials], T]) -> T:
    """``attempt(creds)``; when it raises ``AuthenticationFailed`` and the credentials can be
    read again (``creds.refresh``), read them again once and, if the secret changed (a
    rotation), attempt once more with the new ones. Shared by every driver's connect."""
    try:
        return attempt(creds)
    except AuthenticationFailed:
        if creds.refresh is None:
            raise
        fresh = creds.refresh()
        if fresh == creds:
            raise  # the secret still says what the server refused: not a rotation
    logger.warning(
        "database refused the cached credentials; the secret has changed (rotated), retrying",
        extra={"db": creds.where, "user": creds.user, "new_user": fresh.user},
    )
    return attempt(replace(fresh, refresh=None))


def search_path_setting(schema: str) -> str:
    """The ``search_path`` value for ``schema``: the schema (quoted), then ``pg_temp``.

    ``pg_catalog`` is searched first implicitly. ``pg_temp`` named last means a temporary
    table is found only under a name the schema does not hold (the load's ``stage_*``
    tables), so nothing a session creates can stand in for a warehouse table."""
    return f"{quote_identifier(schema)}, pg_temp"


def _connect_once(
    creds: DbCredentials, application_name: str, timeout: float, search_path: str | None = None
) -> pg8000.native.Connection:
    kwargs: dict[str, Any] = {
        "user": creds.user,
        "password": creds.password,
        "database": creds.dbname,
        "application_name": application_name,
        "timeout": timeout,
    }
    if search_path is not None:
        kwargs["startup_params"] = {"search_path": search_path_setting(search_path)}
    if creds.unix_socket_dir:
        kwargs["unix_sock"] = os.path.join(creds.unix_socket_dir, f".s.PGSQL.{creds.port}")
        # No TLS on a Unix socket; pg8000 would otherwise build a default SSL context (the
        # system's CA store, ~25 ms of CPU) and ask the server for TLS on every connection.
        kwargs["ssl_context"] = False
    else:
        # pg8000 reads ssl_context=None as "try TLS unverified, else plaintext", so no TLS
        # (loopback, or an explicit sslmode=disable) must be said with False.
        kwargs.update(host=creds.host, port=creds.port, ssl_context=creds.ssl_context() or False)
    try:
        con = pg8000.native.Connection(**kwargs)
    except InterfaceError as exc:
        _release_sockets(exc)
        refused = _refusal(exc)
        if refused is None:
            raise DatabaseUnavailable(f"cannot reach {creds.where}: {_clean(exc, creds)}") from None
        raise _refused(refused, creds) from None
    except DatabaseError as exc:
        _release_sockets(exc)
        raise _refused(exc, creds) from None
    except OSError as exc:
        _release_sockets(exc)
        raise DatabaseUnavailable(f"cannot reach {creds.where}: {exc.strerror or exc}") from None
    try:
        set_no_delay(con)
    except BaseException:
        close(con)
        raise
    return con


def close(con: pg8000.native.Connection) -> None:
    """Close ``con``, quietly if it is broken (the server went away, the backend was killed).

    pg8000's ``close`` writes a Terminate message into its buffered socket file and flushes
    it; on a dead peer the flush fails and the file is dropped with the message still in its
    buffer, so when it is garbage-collected the flush is tried again and Python 3.13 prints
    "Exception ignored ... BrokenPipeError" to stderr: a plain-text line among JSON logs. Here
    the file is closed at once instead (its pending bytes dropped with the error)."""
    buffered = getattr(con, "_sock", None)
    try:
        con.close()
    except Exception:
        if isinstance(buffered, io.IOBase):
            with contextlib.suppress(Exception):
                buffered.close()


def _release_sockets(exc: BaseException) -> None:
    """After a failed connect: close the buffered socket files pg8000's frames still hold
    (kept alive by the exception's traceback), for the reason :func:`close` gives."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("pg8000"):
                for value in list(tb.tb_frame.f_locals.values()):
                    for file in (value, getattr(value, "_sock", None)):
                        if isinstance(file, io.IOBase):
                            with contextlib.suppress(Exception):
                                file.close()
            tb = tb.tb_next
        error = error.__context__


def _refused(exc: DatabaseError, creds: DbCredentials) -> DatabaseUnavailable:
    """The server answered and said no: name an authentication failure as such."""
    code = exc.args[0].get("C") if exc.args and isinstance(exc.args[0], dict) else None
    if code in AUTH_FAILURES:
        return AuthenticationFailed(
            f"authentication failed for user {creds.user!r} on {creds.where}"
        )
    return DatabaseUnavailable(f"cannot connect to {creds.where}: {_clean(exc, creds)}")


def _refusal(exc: BaseException) -> DatabaseError | None:
    """The server's refusal hidden behind a "network error": when the server rejects the
    start-up (wrong password) and closes at once, pg8000's polite Terminate hits the closed
    socket and that error replaces the server's; the refusal is still in the chain."""
    seen = exc.__context__
    while seen is not None:
        if isinstance(seen, DatabaseError):
            return seen
        seen = seen.__context__
    return None


def connect_url(url: str, **kwargs: Any) -> pg8000.native.Connection:
    return connect(DbCredentials.from_url(url), **kwargs)


def set_no_delay(con: pg8000.native.Connection) -> None:
    """Send every message at once on a TCP connection (``TCP_NODELAY``; TLS or not).

    pg8000 flushes a ``COPY ... FROM STDIN``'s last CopyData and then its CopyDone + Sync as
    separate small writes and never disables Nagle's algorithm, so the second write waits for
    the server's delayed ACK of the first: about 40 ms per COPY over TCP (measured 44 ms for one
    row, 0.2 ms with TCP_NODELAY), eleven times per load batch. libpq sets it itself; pg8000 1.31
    has no option, so it is set on the private ``_usock`` (an SSL socket passes ``setsockopt``
    to its TCP socket). A Unix socket has no Nagle and is left alone.
    ``tests/integration/test_db_socket.py`` checks it on real TCP connections."""
    sock = _socket(con)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _socket(con: pg8000.native.Connection) -> socket.socket:
    """pg8000's private socket of ``con``; an upgrade that renames or drops it fails loudly."""
    sock = getattr(con, "_usock", None)
    if not isinstance(sock, socket.socket):
        raise RuntimeError(
            f"pg8000 {pg8000.__version__}: the connection has no socket at _usock any more;"
            " totes.db needs another way to reach it (statement timeout, TCP_NODELAY)"
        )
    return sock


def set_socket_timeout(con: pg8000.native.Connection, seconds: float) -> None:
    """Bound every later socket wait of ``con`` by ``seconds``.

    pg8000's ``timeout`` bounds every socket wait, not just connecting, and pg8000 1.31 has no
    public way to change it afterwards, so this sets it on the connection's socket, the
    private ``_usock``. An upgrade that renames or drops it must fail here, loudly, not leave
    statements silently bound by the connect timeout; ``tests/integration/test_db_timeout.py``
    checks on a real connection that the new timeout is the one that applies.
    """
    _socket(con).settimeout(seconds)


def credentials_from_secret_store(
    secret_id: str, provider: SecretsProvider, *, force_fetch: bool = False
) -> DbCredentials:
    """Read database credentials from Secrets Manager through a Powertools Parameters provider
    (the stage's, ``runtime.secrets``; cached for 5 minutes); their ``refresh`` reads the
    secret again past the cache (and re-caches it), which ``connect`` does once when the
    server refuses them."""
    from aws_lambda_powertools.utilities import parameters

    try:
        value = provider.get(secret_id, max_age=300, force_fetch=force_fetch)
    except parameters.exceptions.GetParameterError as exc:
        raise ConfigurationError(f"cannot read database secret {secret_id!r}: {exc}") from None
    if not isinstance(value, str):
        raise ConfigurationError(f"database secret {secret_id!r} holds no SecretString")
    creds = DbCredentials.from_secret(value)
    refresh = partial(credentials_from_secret_store, secret_id, provider, force_fetch=True)
    return replace(creds, refresh=refresh)


def _clean(exc: Exception, creds: DbCredentials) -> str:
    text = str(exc.args[0].get("M", exc) if exc.args and isinstance(exc.args[0], dict) else exc)
    if creds.password:
        text = text.replace(creds.password, "***")
    return text
