"""docs/invariants.md names the tests that guard each invariant and the code each mutation
changed. A renamed test or a moved function would leave it pointing at nothing, silently:
every name it cites must exist. The README and the other documents cite tests too (looser:
bare file names, ``::test_prefix_*``); their citations must exist as well."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "invariants.md"
# A test file (``unit/test_x.py``, optionally ``tests/``-prefixed) or a ``::name`` after one.
TEST_TOKEN = re.compile(r"(?:tests/)?((?:unit|integration|e2e|template)/test_\w+\.py)|::(\w+)")
# The "where" column of the mutation table: code named relative to the totes package.
WHERE = re.compile(r"^\|[^|]*\|[^|]*\| `([\w.]+)` \|", re.MULTILINE)


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def cited_tests(text: str) -> list[tuple[str, str | None]]:
    """(file, test name or None) for each citation, in order; ``::name`` belongs to the file
    named last before it (``file::a, ::b``)."""
    cited: list[tuple[str, str | None]] = []
    current = None
    for file, name in TEST_TOKEN.findall(text):
        if file:
            current = file
            cited.append((file, None))
        elif current:
            cited.append((current, name))
    return cited


def test_every_test_the_document_cites_exists():
    text = DOC.read_text()
    cited = cited_tests(text)
    missing = []
    for file, name in cited:
        path = REPO / "tests" / file
        if not path.is_file():
            missing.append(file)
        elif name is not None and name not in _test_names(path):
            missing.append(f"{file}::{name}")

    assert len(cited) > 50  # the parser still finds the citations
    assert missing == []


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module("totes." + ".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attr in parts[split:]:
            target = getattr(target, attr)
        return target
    raise ModuleNotFoundError(dotted)


def test_every_place_the_mutation_table_names_exists_in_the_runtime_package():
    places = WHERE.findall(DOC.read_text())
    missing = []
    for place in places:
        try:
            _resolve(place)
        except (ModuleNotFoundError, AttributeError):
            missing.append(place)

    assert len(places) > 25
    assert missing == []


# The other documents (README, docs/*.md) cite tests more loosely: a bare ``test_x.py`` (found
# by its name anywhere under tests/), ``::test_prefix_*`` for a family of tests, and ``::``
# inside ARNs. Only ``::test_...`` names are citations there.
LOOSE_TOKEN = re.compile(
    r"(?:tests/)?((?:unit|integration|e2e|template)/test_\w+\.py)"
    r"|(?<![/\w])(test_\w+\.py)"
    r"|::(test_\w+)(\*?)"
)
OTHER_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def loosely_cited_tests(text: str, files: dict[str, Path]) -> list[tuple[str, str | None, bool]]:
    """(file, test name or None, whether the name is a prefix) for each citation, in order;
    a ``::name`` belongs to the file named last before it."""
    cited: list[tuple[str, str | None, bool]] = []
    current = None
    for file, bare, name, star in LOOSE_TOKEN.findall(text):
        if file or bare:
            current = file or (f"{files[bare].parent.name}/{bare}" if bare in files else bare)
            cited.append((current, None, False))
        elif current:
            cited.append((current, name, bool(star)))
    return cited


def test_every_test_the_readme_and_the_other_documents_cite_exists():
    files = {p.name: p for p in (REPO / "tests").rglob("test_*.py")}
    missing, count = [], 0
    for doc in OTHER_DOCS:
        if doc == DOC:
            continue
        for file, name, prefix in loosely_cited_tests(doc.read_text(), files):
            count += 1
            path = REPO / "tests" / file
            where = f"{doc.name}: {file}"
            if not path.is_file():
                missing.append(where)
            elif name is not None:
                names = _test_names(path)
                found = any(n.startswith(name) for n in names) if prefix else name in names
                if not found:
                    missing.append(f"{where}::{name}{'*' if prefix else ''}")

    assert count > 100  # the parser still finds the citations
    assert missing == []
