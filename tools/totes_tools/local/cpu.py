"""CPU time of the PostgreSQL server and of this client, for benchmarks (Linux ``/proc``).

A benchmark on a shared machine sees wall times move by up to 2x between rounds; CPU time moves
far less, and telling the server's from the client's shows where the work is. The server's CPU
is the postmaster's with its reaped children (exited backends, parallel and autovacuum workers)
plus every live child's, so work done by any session (a reader, autovacuum) is counted. Local
tooling only: it needs the server's processes to be visible in ``/proc`` (a remote server gives
None).
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

from pg8000.native import Connection

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def postmaster_pid(con: Connection) -> int | None:
    """The postmaster of ``con``'s server (its backend's parent), or None when its processes are
    not visible from here."""
    [[backend]] = con.run("SELECT pg_backend_pid()")
    fields = _stat(int(backend))
    return int(fields[1]) if fields is not None else None


def server_cpu(postmaster: int | None) -> float | None:
    """CPU seconds the whole server has used so far (None: not measurable)."""
    if postmaster is None:
        return None
    own = _stat(postmaster)
    if own is None:
        return None
    ticks = sum(int(x) for x in own[11:15])  # utime, stime, cutime, cstime
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == postmaster:
                ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICKS


def client_cpu() -> float:
    """CPU seconds of this process (every thread) and of its reaped children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Meter:
    """Wall seconds, client CPU and server CPU over a block (``as_dict``)."""

    def __init__(self, postmaster: int | None):
        self.postmaster = postmaster
        self.seconds = self.client = self.own = 0.0
        self.server: float | None = None

    def __enter__(self) -> Meter:
        self._wall = time.perf_counter()
        self._client = client_cpu()
        self._own = time.process_time()
        self._server = server_cpu(self.postmaster)
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.client = client_cpu() - self._client
        self.own = time.process_time() - self._own
        time.sleep(0.05)  # let exited backends be reaped into the postmaster's totals
        after = server_cpu(self.postmaster)
        started = self._server
        self.server = after - started if after is not None and started is not None else None

    def as_dict(self, rows: int | None = None) -> dict:
        out: dict = {
            "seconds": round(self.seconds, 3),
            "server_cpu_s": round(self.server, 2) if self.server is not None else None,
            "client_cpu_s": round(self.client, 2),
            # of client_cpu_s, this process's own threads' (a local S3 emulator's, if it runs here)
            "own_cpu_s": round(self.own, 2),
        }
        if rows is not None:
            out["rows"] = rows
            out["rows_per_s"] = round(rows / self.seconds) if self.seconds > 0 else 0
        return out
