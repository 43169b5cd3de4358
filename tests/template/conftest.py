"""Fixtures over the SAM template: as written, expanded to CloudFormation, and built."""

import os
import subprocess
from pathlib import Path

import pytest
from sam_template import REPO_ROOT, TEMPLATE, expand, load_template, need_sam


@pytest.fixture(scope="session")
def template() -> dict:
    return load_template()


@pytest.fixture(scope="session")
def expanded(template) -> dict:
    return expand(template)


@pytest.fixture(scope="session")
def sam_build(tmp_path_factory) -> Path:
    """The output of the same ``sam build`` as ``make build``, made once per session in a
    scratch directory (so it is never a stale ``.aws-sam`` from before a change)."""
    sam = need_sam()
    scratch = tmp_path_factory.mktemp("sam")
    build_dir = scratch / "build"
    result = subprocess.run(
        [
            str(sam),
            "build",
            "--template-file",
            str(TEMPLATE),
            "--build-dir",
            str(build_dir),
            "--cache-dir",
            str(scratch / "cache"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return build_dir
