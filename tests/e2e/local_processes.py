"""The local stand-ins the end-to-end tests start as processes of their own."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from totes_tools.local.aws import free_port

REPO = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(str(REPO / d) for d in ("shared", "tools"))


@contextlib.contextmanager
def local_aws() -> Iterator[str]:
    """``python -m totes local-aws`` in its own process on loopback (moto keeps its state per
    process, so an in-process server would share buckets with every other test); yields its
    endpoint."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "totes", "local-aws", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("local AWS endpoint: "), line
        yield line.split(": ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
