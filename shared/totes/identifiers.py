"""SQL identifiers: the one way a name enters SQL text, in every module and tool.

Identifiers come only from the code's own definitions (the source and star models, names the
code builds itself), never from input; values always travel as parameters. Every identifier
is double-quoted, a double quote inside it doubled, so a keyword (``transaction``) or a
mixed-case name (the enum types ``"PaymentTypeName"``) means exactly itself.
"""

from __future__ import annotations

from collections.abc import Iterable


def quote(identifier: str) -> str:
    """``identifier`` as a quoted SQL identifier."""
    return '"' + identifier.replace('"', '""') + '"'


def quote_all(identifiers: Iterable[str], alias: str | None = None) -> str:
    """A comma-separated list of quoted identifiers, each qualified by ``alias`` if given."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + quote(name) for name in identifiers)
