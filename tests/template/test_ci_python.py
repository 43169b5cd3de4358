"""The CI run tests on the Lambda runtime's Python: ``.ci/python`` picks pyenv's newest 3.13.N
when the machine has one, else the default python3, and says which; ``make venv PYTHON=...``
builds .venv with the interpreter named and recreates one of another version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sam_template import REPO_ROOT

PICK = REPO_ROOT / ".ci" / "python"


def fake_pyenv(tmp_path: Path, versions: list[str]) -> dict[str, str]:
    """A PATH whose ``pyenv`` has these versions, each a working interpreter."""
    root = tmp_path / "pyenv"
    for version in versions:
        bin_dir = root / "versions" / version / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "python3.13").symlink_to(sys.executable)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "pyenv").write_text(f'#!/bin/sh\n[ "$1" = root ] && echo {root}\n')
    (tools / "pyenv").chmod(0o755)
    return {**os.environ, "PATH": f"{tools}:/usr/bin:/bin"}


def pick(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(PICK)], capture_output=True, text=True, env=env, check=True)


def test_the_ci_runs_on_pyenvs_newest_python_3_13(tmp_path):
    env = fake_pyenv(tmp_path, ["3.11.7", "3.12.1", "3.13.2", "3.13.10", "3.13.1t", "3.14.0"])
    chosen = pick(env)
    assert chosen.stdout.strip() == f"{tmp_path}/pyenv/versions/3.13.10/bin/python3.13"
    assert "Python 3.13 from pyenv" in chosen.stderr


@pytest.mark.parametrize("versions", [None, ["3.11.7", "3.12.1"]], ids=["no-pyenv", "no-3.13"])
def test_without_a_3_13_the_ci_says_it_runs_on_the_default_python3(tmp_path, versions):
    env = fake_pyenv(tmp_path, versions) if versions else {**os.environ, "PATH": "/usr/bin:/bin"}
    chosen = pick(env)
    assert chosen.stdout.strip() == "python3"
    assert "no Python 3.13 under pyenv" in chosen.stderr


def make_venv_plan(python: str) -> str:
    """What ``make venv PYTHON=python`` would do (-B: as if .venv were out of date)."""
    outer_make = {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}  # when the suite runs under make test
    env = {k: v for k, v in os.environ.items() if k not in outer_make}
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "venv", f"PYTHON={python}"],
        capture_output=True, text=True, cwd=REPO_ROOT, check=True, env=env,
    ).stdout  # fmt: skip


def test_make_venv_recreates_a_venv_of_another_python_version(tmp_path):
    other = tmp_path / "python3.99"
    other.write_text("#!/bin/sh\necho 3.99.0\n")  # answers the version question only
    other.chmod(0o755)
    plan = make_venv_plan(str(other)).splitlines()
    assert plan[:2] == ["rm -rf .venv", f"test -x .venv/bin/python || {other} -m venv .venv"]


def test_make_venv_keeps_a_venv_of_the_same_python_version():
    if not (REPO_ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv to keep")
    venv_python = str(REPO_ROOT / ".venv" / "bin" / "python")
    same = subprocess.run(
        [venv_python, "-c", "import sys; print(sys._base_executable)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert "rm -rf .venv" not in make_venv_plan(same)
