"""Errors are structured: on Python 3.13 (the Lambda runtime) the fault scenario prints only
JSON lines. Dropped pg8000 connections used to leave "Exception ignored ... BrokenPipeError"
on stderr when garbage-collected (``totes.db.close`` and ``connect`` now close their socket
files at once; ``totes.observability`` logs anything else unraisable as JSON).

The scenario runs in a subprocess on pyenv's CPython 3.13 (skipped, saying so, when there is
none), in a virtual environment built once from the pinned requirements into a cache directory
keyed by them (the project itself is put on ``PYTHONPATH``, so every checkout tests its own
code). On a 3.13 test run the current interpreter is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCENARIO = Path(__file__).with_name("fault_scenario.py")
PY313_ENV = "TOTES_PY313"


def _pyenv_313() -> Path | None:
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    found = sorted(Path(root).glob("versions/3.13.*/bin/python3.13"))
    return found[-1] if found else None


def python313() -> str:
    if sys.version_info[:2] == (3, 13):
        return sys.executable
    if os.environ.get(PY313_ENV):
        return os.environ[PY313_ENV]
    interpreter = _pyenv_313()
    if interpreter is None:
        pytest.skip("no CPython 3.13 (pyenv versions 3.13.*) on this machine")
    pins = b"".join((REPO / "requirements" / f).read_bytes() for f in
                    ("runtime.txt", "dev.txt", "lock.txt"))  # fmt: skip
    key = hashlib.sha256(pins + str(interpreter).encode()).hexdigest()[:12]
    venv = Path.home() / ".cache" / "totes" / f"py313-{key}"
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        steps = [
            [str(interpreter), "-m", "venv", "--clear", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", "-r", "requirements/dev.txt",
             "-c", "requirements/lock.txt"],
        ]  # fmt: skip
        for step in steps:
            done = subprocess.run(step, cwd=REPO, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                pytest.skip(f"could not build a 3.13 environment: {done.stderr[-500:]}")
        (venv / ".ready").touch()
    return str(python)


def test_the_fault_scenario_on_python_313_prints_only_json_lines():
    python = python313()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO / "tools")]),
        "TOTES_REPO_ROOT": str(REPO),
        "PYTHONWARNINGS": "default",  # every warning shown once, as a user would see it
    }
    env.pop("POWERTOOLS_LOG_LEVEL", None)

    done = subprocess.run(
        [python, str(SCENARIO)], capture_output=True, text=True, env=env, timeout=900, cwd=REPO
    )

    assert done.returncode == 0, done.stderr[-3000:]
    lines = [(name, line) for name, text in (("stdout", done.stdout), ("stderr", done.stderr))
             for line in text.splitlines() if line.strip()]  # fmt: skip
    not_json = []
    for name, line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(f"{name}: {line}")
    assert not_json == []
    records = [json.loads(line) for _, line in lines]
    (outcome,) = [r["fault_scenario"] for r in records if "fault_scenario" in r]
    assert outcome == {
        "source_down": ["ingest"],
        "warehouse_down": ["load"],
        "redriven": outcome["redriven"],
        "killed_load_ok": True,
        "final_ok": True,
    }
    assert outcome["redriven"] >= 1
    assert any(r.get("message") == "handler failed" for r in records)  # the faults were logged
    # and closed, not only silenced: nothing reached the unraisable hook
    assert [r for r in records if r.get("message") == "exception ignored"] == []
