"""What the Lambdas import: the modules of a package reachable from the handlers, found by
reading the source (every ``import``, function-local ones included), not by running it."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path


def _imported_names(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _source(root: Path, module: str) -> Path | None:
    path = root.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def import_closure(entry_points: Iterable[Path], root: Path, package: str) -> set[str]:
    """Every module of ``package`` (sources under ``root``) that ``entry_points`` import,
    directly or through each other, parent packages included."""
    pending = [name for path in entry_points for name in _imported_names(path, "__entry__")]
    found: set[str] = set()
    while pending:
        name = pending.pop()
        if name != package and not name.startswith(package + "."):
            continue
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            path = _source(root, module)
            if path is not None and module not in found:
                found.add(module)
                pending.extend(_imported_names(path, module))
    return found


def modules_under(root: Path) -> set[str]:
    """Every Python module in the directory tree ``root`` (a layer's ``python/``), dotted."""
    out = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        out.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out
