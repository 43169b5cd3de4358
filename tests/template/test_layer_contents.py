"""The layer is the runtime and nothing else: it holds exactly the modules the three handlers
import (plus the ``python -m totes`` shim), and the tooling cannot be imported from it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from import_closure import import_closure, modules_under
from sam_template import REPO_ROOT

HANDLERS = sorted((REPO_ROOT / "functions").glob("*/app.py"))
# What the handlers' settings need at import (the cold-start check), with harmless values.
FUNCTION_ENV = {
    "RAW_BUCKET": "raw",
    "PROCESSED_BUCKET": "processed",
    "IDEMPOTENCY_TABLE": "idempotency",
    "SOURCE_SECRET_ID": "source",
    "WAREHOUSE_SECRET_ID": "warehouse",
    "ICEBERG_WAREHOUSE": "s3://iceberg/warehouse",
    "ICEBERG_DATABASE": "star",
    "AWS_DEFAULT_REGION": "eu-west-2",
}


def runtime_modules() -> set[str]:
    return import_closure(HANDLERS, REPO_ROOT / "shared", "totes") | {"totes.__main__"}


def layer_python(sam_build: Path) -> Path:
    return sam_build / "TotesLayer" / "python"


def test_the_runtime_is_a_small_closed_set_without_the_tooling():
    runtime = runtime_modules()

    assert {"totes.stages.ingest_batch", "totes.warehouse.merge", "totes.extract.closure"} <= (
        runtime
    )
    assert not any(m.startswith(("totes_tools", "totes.local")) for m in runtime)
    assert runtime == modules_under(REPO_ROOT / "shared")  # nothing in shared/ is unused


def test_the_layer_holds_exactly_the_runtime_modules(sam_build):
    layer = layer_python(sam_build)

    assert sorted(p.name for p in layer.iterdir()) == ["totes"]
    assert modules_under(layer) == runtime_modules()


def _run_on_layer_only(sam_build: Path, code: str) -> subprocess.CompletedProcess:
    """Python with the layer and the third-party packages only: ``-S`` skips site, so the
    project's editable install (a .pth hook in site-packages) is not there, as in Lambda."""
    site_packages = sysconfig.get_paths()["purelib"]
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.pathsep.join([str(layer_python(sam_build)), site_packages]),
        **FUNCTION_ENV,
    }
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=sam_build,
        timeout=120,
        check=False,
    )


def test_from_the_layer_every_runtime_module_and_handler_imports_and_the_tooling_does_not(
    sam_build,
):
    modules = sorted(runtime_modules() - {"totes.__main__"})
    handlers = [
        str(sam_build / f"{p.parent.name.capitalize()}Function" / "app.py") for p in HANDLERS
    ]
    code = f"""
import importlib, importlib.util, runpy
for name in {modules!r}:
    assert importlib.import_module(name).__file__.startswith({str(layer_python(sam_build))!r})
for path in {handlers!r}:
    spec = importlib.util.spec_from_file_location("app", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
try:
    import totes_tools
except ModuleNotFoundError as exc:
    print("no tooling:", exc.name)
try:
    runpy.run_module("totes", run_name="__main__")
except SystemExit as exc:
    print("python -m totes:", exc.code)
"""
    done = _run_on_layer_only(sam_build, code)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "no tooling: totes_tools",
        "python -m totes: python -m totes needs the tooling package totes_tools (tools/ in a"
        " checkout, installed by `pip install -e .`); the runtime package alone has no command"
        " line",
    ]
