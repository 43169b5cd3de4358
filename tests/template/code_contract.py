"""What each function's code needs from AWS, read from the source (never by running it), so
the template tests can compare it with what the template gives that function.

The whole test suite runs on moto, which enforces no IAM, and never reaches Lambda's import
of a handler on its layers or CloudWatch: a module no layer ships, an API call the role does
not allow, a metric the alarms watch but the function never emits, or a variable read under
another name than the template sets, passes every local test and fails (or stays silent)
only on AWS. These helpers find, per function (its handler and the ``totes`` modules it
imports, ``import_closure``): the third-party modules imported at cold start, the AWS API
actions the code can call, the catalogue metrics it emits and the variables it reads.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from import_closure import _source, import_closure
from sam_template import REPO_ROOT

SHARED = REPO_ROOT / "shared"
FUNCTIONS = REPO_ROOT / "functions"

# The template's function resources and their code directories.
FUNCTION_DIRS = {
    "IngestFunction": "ingest",
    "TransformFunction": "transform",
    "LoadFunction": "load",
    "MigrateFunction": "migrate",
    "IcebergFunction": "iceberg",
}


@dataclass(frozen=True)
class Source:
    module: str
    path: Path
    tree: ast.Module


@cache
def sources(function: str) -> tuple[Source, ...]:
    """The handler of ``function`` (a FUNCTION_DIRS key) and every totes module it imports."""
    handler = FUNCTIONS / FUNCTION_DIRS[function] / "app.py"
    out = [Source("app", handler, ast.parse(handler.read_text(), str(handler)))]
    for module in sorted(import_closure([handler], SHARED, "totes")):
        path = _source(SHARED, module)
        assert path is not None, module
        out.append(Source(module, path, ast.parse(path.read_text(), str(path))))
    return tuple(out)


# ------------------------------------------------------------------ imports at cold start


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {k.id for k in kinds if isinstance(k, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _import_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements a module runs when imported: not function bodies, not ``if
    TYPE_CHECKING:`` blocks, not ``try: import x / except ImportError`` (an optional module)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.orelse)
        elif isinstance(node, ast.Try):
            if not _catches_import_error(node):
                yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.finalbody)
        else:
            yield node


def cold_start_imports(function: str) -> set[str]:
    """Top-level names of the modules outside the standard library (``totes`` included) that the
    function's code imports when Lambda loads its handler: each must be in a layer of the
    function, its own package or the runtime, or the function fails with
    Runtime.ImportModuleError before its handler runs."""
    found = set()
    for src in sources(function):
        for node in _import_time_statements(src.tree.body):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "__future__":
                    found.add(top)
    return found
