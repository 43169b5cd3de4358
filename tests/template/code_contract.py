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


# ------------------------------------------------------------------ what the code can reach


@dataclass
class _Index:
    functions: dict[str, dict[str, list[ast.AST]]]  # module -> name -> defs (not methods)
    methods: dict[str, list[tuple[str, ast.AST]]]  # name -> (module, def) of every class
    imports: dict[str, dict[str, tuple[str, str | None]]]  # module -> local name -> target


def _index(function: str) -> _Index:
    index = _Index({}, {}, {})
    for src in sources(function):
        funcs: dict[str, list[ast.AST]] = {}
        imports: dict[str, tuple[str, str | None]] = {}
        for node in ast.walk(src.tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        index.methods.setdefault(item.name, []).append((src.module, item))
        methods = {id(d) for defs in index.methods.values() for _, d in defs}
        for node in ast.walk(src.tree):
            is_def = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            if is_def and id(node) not in methods:
                funcs.setdefault(node.name, []).append(node)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    imports[alias.asname or alias.name.split(".")[0]] = (alias.name, None)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    target = (sub, None) if _source(SHARED, sub) else (node.module, alias.name)
                    imports[alias.asname or alias.name] = target
        index.functions[src.module] = funcs
        index.imports[src.module] = imports
    return index


def _resolve(index: _Index, module: str, node: ast.AST) -> list[tuple[str, ast.AST]]:
    """The definitions a body may run: its own module's functions (inner ones included) by
    name, a totes module's function through its import (``from m import f``, ``m.f``), and any
    class's method of an attribute's name (``obj.put_bytes``: the receiver's type is not
    known, so every method of that name; the one over-approximation)."""
    out: list[tuple[str, ast.AST]] = []
    imports = index.imports[module]
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            out += [(module, d) for d in index.functions[module].get(sub.id, ())]
            target = imports.get(sub.id)
            if target and target[1] and target[0] in index.functions:
                out += [(target[0], d) for d in index.functions[target[0]].get(target[1], ())]
        elif isinstance(sub, ast.Attribute):
            out += index.methods.get(sub.attr, [])
            if isinstance(sub.value, ast.Name) and sub.value.id in imports:
                owner = imports[sub.value.id]
                target = owner[0] if owner[1] is None else f"{owner[0]}.{owner[1]}"
                out += [(target, d) for d in index.functions.get(target, {}).get(sub.attr, ())]
    return out


@cache
def reachable(function: str) -> tuple[ast.AST, ...]:
    """The code the handler can run: from the handler and the import-time code of every
    module (decorators, module-level clients), through the calls and references it makes."""
    index = _index(function)
    seen: dict[int, ast.AST] = {}
    pending: list[tuple[str, ast.AST]] = []
    for src in sources(function):
        pending += [(src.module, n) for n in _import_time_statements(src.tree.body)]
        for node in ast.walk(src.tree):  # decorators run at import
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                pending += [(src.module, d) for d in node.decorator_list]
    pending += [("app", d) for d in index.functions["app"]["handler"]]
    while pending:
        module, node = pending.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        pending += _resolve(index, module, node)
    return tuple(seen.values())


def called_methods(function: str) -> set[str]:
    """Attribute calls (``x.put_object(...)``) in what the handler can reach."""
    out = set()
    for node in reachable(function):
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
                out.add(sub.func.attr)
    return out


def string_arguments(function: str, callee: str) -> set[str]:
    """The string literals passed first to ``callee(...)`` or ``x.callee(...)``."""
    out = set()
    for node in reachable(function):
        for sub in ast.walk(node):
            if not isinstance(sub, ast.Call) or not sub.args:
                continue
            name = (
                sub.func.attr
                if isinstance(sub.func, ast.Attribute)
                else getattr(sub.func, "id", None)
            )
            first = sub.args[0]
            if name == callee and isinstance(first, ast.Constant) and isinstance(first.value, str):
                out.add(first.value)
    return out


def referenced(function: str) -> set[str]:
    """Every name and attribute the reachable code mentions."""
    out = set()
    for node in reachable(function):
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                out.add(sub.id)
            elif isinstance(sub, ast.Attribute):
                out.add(sub.attr)
    return out


# ------------------------------------------------------------------ the AWS actions it calls

# boto3 S3 client methods and the IAM actions they need (CopyObject reads its source and
# writes its target; a paginator is named by the operation it pages).
S3_METHOD_ACTIONS = {
    "get_object": {"s3:GetObject"},
    "head_object": {"s3:GetObject"},
    "download_file": {"s3:GetObject"},
    "download_fileobj": {"s3:GetObject"},
    "put_object": {"s3:PutObject"},
    "upload_file": {"s3:PutObject"},
    "upload_fileobj": {"s3:PutObject"},
    "copy_object": {"s3:GetObject", "s3:PutObject"},
    "delete_object": {"s3:DeleteObject"},
    "delete_objects": {"s3:DeleteObject"},
    "list_objects": {"s3:ListBucket"},
    "list_objects_v2": {"s3:ListBucket"},
}
# Powertools utilities and the actions they call: the idempotency layer reads, creates
# (conditionally), updates and deletes its records; Parameters reads secrets.
IDEMPOTENCY_ACTIONS = {f"dynamodb:{a}Item" for a in ("Get", "Put", "Update", "Delete")}
SECRET_ACTIONS = {"secretsmanager:GetSecretValue"}
# pyiceberg's GlueCatalog (0.12): the Glue calls behind the catalog methods the code calls
# (pyiceberg/catalog/glue.py). create_table and commit_table also ask GetDatabase whether
# the database is an S3 Tables one; every table commit (a transaction, a schema update,
# snapshot expiry) reads the table and updates it with its VersionId.
GLUE_METHOD_ACTIONS = {
    "load_namespace_properties": {"glue:GetDatabase"},
    "create_namespace": {"glue:CreateDatabase"},
    "load_table": {"glue:GetTable"},
    "refresh": {"glue:GetTable"},
    "table_exists": {"glue:GetTable"},
    "create_table": {"glue:GetDatabase", "glue:CreateTable"},
    "create_table_if_not_exists": {"glue:GetDatabase", "glue:CreateTable", "glue:GetTable"},
    "list_tables": {"glue:GetTables"},
    "drop_table": {"glue:DeleteTable"},
}
GLUE_COMMITS = {"transaction", "commit_transaction", "update_schema", "expire_snapshots"}
GLUE_COMMIT_ACTIONS = {"glue:GetDatabase", "glue:GetTable", "glue:UpdateTable"}
# pyiceberg's PyArrowFileIO on S3: reads and writes table files; every new metadata file is
# first checked not to exist (HeadObject: a 404 needs ListBucket); maintenance lists a
# table's location (get_file_info of a selector) and deletes orphans (delete_file).
ICEBERG_IO_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}
# The code tells a missing object (404) from a fault by these codes; S3 answers 404 only to a
# principal that may list the bucket (otherwise 403 AccessDenied).
MISSING_OBJECT_CODES = {"NoSuchKey", "404", "NotFound"}


def aws_actions(function: str) -> set[str]:
    """Every IAM action the function's code can need: its boto3 S3 calls, the Powertools
    utilities it uses, pyiceberg's Glue catalog and file IO, and ``s3:ListBucket`` when it
    tells a missing object from a fault. A boto3 client of another service fails here, so
    that a new one is mapped (and granted) deliberately."""
    methods = called_methods(function)
    names = referenced(function)
    clients = string_arguments(function, "client") | string_arguments(function, "resource")
    assert clients <= {"s3"}, f"{function}: map the actions of clients {clients - {'s3'}}"
    actions: set[str] = set()
    for method in methods & S3_METHOD_ACTIONS.keys():
        actions |= S3_METHOD_ACTIONS[method]
    for operation in string_arguments(function, "get_paginator"):
        actions |= S3_METHOD_ACTIONS[operation]
    if names & {"idempotency_store", "DynamoDBPersistenceLayer"}:
        actions |= IDEMPOTENCY_ACTIONS
    if names & {"secrets", "SecretsProvider"}:
        actions |= SECRET_ACTIONS
    if "GlueCatalog" in names:
        for method in methods & GLUE_METHOD_ACTIONS.keys():
            actions |= GLUE_METHOD_ACTIONS[method]
        if methods & GLUE_COMMITS:
            actions |= GLUE_COMMIT_ACTIONS
        actions |= ICEBERG_IO_ACTIONS
        if "delete_file" in methods:
            actions.add("s3:DeleteObject")
    if missing_object_handled(function):
        actions.add("s3:ListBucket")
    return actions


def missing_object_handled(function: str) -> bool:
    """Whether the reachable code compares an S3 error with a missing object's codes."""
    for node in reachable(function):
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and sub.value in MISSING_OBJECT_CODES:
                return True
            if isinstance(sub, ast.Attribute) and sub.attr == "NoSuchKey":
                return True
    return False


# ------------------------------------------------------------------ metrics and variables


def emitted_metrics(function: str, catalogue: set[str]) -> set[str]:
    """The catalogue metrics the function's reachable code names in a function body
    (``emit("X", ...)``, ``timed("X")``, a loop over names passed to ``emit``, a name handed to
    a helper that emits it), plus Powertools' ``ColdStart`` when the handler asks for it
    (``capture_cold_start_metric=True``). Module-level code (the catalogue itself) does not
    count."""
    out = set()
    for node in reachable(function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out |= {
                sub.value
                for sub in ast.walk(node)
                if isinstance(sub, ast.Constant) and sub.value in catalogue
            }
    handler = sources(function)[0].tree
    for sub in ast.walk(handler):
        if (
            isinstance(sub, ast.keyword)
            and sub.arg == "capture_cold_start_metric"
            and isinstance(sub.value, ast.Constant)
            and sub.value.value is True
        ):
            out.add("ColdStart")
    return out


def _call_name(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def _settings_classes(function: str) -> set[str]:
    """The settings classes the function's code reads (``runtime.settings(Kind)``)."""
    return {
        sub.args[0].id
        for node in reachable(function)
        for sub in ast.walk(node)
        if isinstance(sub, ast.Call)
        and _call_name(sub) == "settings"
        and sub.args
        and isinstance(sub.args[0], ast.Name)
    }


def _string_constants(function: str) -> dict[str, str]:
    """Module-level ``NAME = "text"`` of the function's code (e.g. ``SERVICE_ENV``)."""
    out = {}
    for src in sources(function):
        for stmt in src.tree.body:
            if (
                isinstance(stmt, ast.Assign)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ):
                out |= {t.id: stmt.value.value for t in stmt.targets if isinstance(t, ast.Name)}
    return out


def _environ_read(sub: ast.AST, constants: dict[str, str]) -> str | None:
    """The variable ``os.environ.get(X)``, ``os.getenv(X)`` or ``os.environ[X]`` reads."""
    arg = None
    if isinstance(sub, ast.Call) and sub.args:
        func = sub.func
        environ_get = (
            isinstance(func, ast.Attribute)
            and func.attr == "get"
            and isinstance(func.value, ast.Attribute)
            and func.value.attr == "environ"
        )
        if environ_get or _call_name(sub) == "getenv":
            arg = sub.args[0]
    elif (
        isinstance(sub, ast.Subscript)
        and isinstance(sub.value, ast.Attribute)
        and sub.value.attr == "environ"
    ):
        arg = sub.slice
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.Name):
        return constants.get(arg.id)
    return None


def environment_reads(function: str) -> dict[str, bool]:
    """Every variable the function's code reads, and whether it must be set (``True``: a
    ``_read`` without a default, which fails the cold start when missing): the ``from_env``
    of the settings classes it reads, and ``os.environ``/``os.getenv`` in the rest of the
    reachable code and at import."""
    kinds = _settings_classes(function)
    constants = _string_constants(function)
    reads: dict[str, bool] = {}
    for src in sources(function):
        for cls in ast.walk(src.tree):
            if not (isinstance(cls, ast.ClassDef) and cls.name in kinds):
                continue
            for sub in ast.walk(cls):
                if isinstance(sub, ast.Call) and _call_name(sub) == "_read":
                    name = sub.args[1]
                    assert isinstance(name, ast.Constant), ast.dump(sub)
                    required = len(sub.args) == 3 and not sub.keywords
                    reads[name.value] = reads.get(name.value, False) or required
    bodies = [
        n
        for n in reachable(function)
        if not (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "from_env")
    ]
    for src in sources(function):
        bodies += _import_time_statements(src.tree.body)
    for node in bodies:
        for sub in ast.walk(node):
            name = _environ_read(sub, constants)
            if name is not None:
                reads.setdefault(name, False)
    return reads
