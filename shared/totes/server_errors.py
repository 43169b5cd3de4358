"""A PostgreSQL error as text fit for logs and exceptions: the table, column, key column(s)
and constraint it names, never a row value (issue 14, M5). PostgreSQL's DETAIL ("Failing row
contains (...)", "Key (id)=(42) already exists."), its context and the primary message of a
class that may quote a value are left out. Both drivers' errors: pg8000's carry the server's
fields; ADBC's (libpq's) carry one text embedding the message, DETAIL and query, and the
SQLSTATE apart. Used by load (``merge``, the stage's schema check) and ingest's readers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# SQLSTATE classes whose primary message names objects only (table, column, constraint, type,
# role), never a value: connection (08), integrity constraint violations (23), transaction
# state (25), rollbacks such as deadlocks (40), syntax or access rules (42), resources (53),
# program limits (54), object state such as locks (55) and operator intervention such as
# timeouts (57). The rest, data exceptions (22) above all, may quote the offending value
# ('invalid input syntax for type integer: "..."'), so only their condition name is kept.
_MESSAGE_NAMES_ONLY = frozenset({"08", "23", "25", "40", "42", "53", "54", "55", "57"})
_CONDITIONS = {
    "22001": "value too long for its column",
    "22003": "numeric value out of range",
    "22007": "invalid datetime format",
    "22008": "datetime field overflow",
    "22012": "division by zero",
    "22021": "character not in repertoire",
    "22P02": "invalid text representation",
}
# The key columns of a unique, exclusion or foreign-key violation's DETAIL, without the
# values that follow: 'Key (staff_id)=(42) already exists.' gives "staff_id".
_DETAIL_KEY = re.compile(r"^Key \((?P<columns>.+?)\)=\(")
# The relation and column of a binary COPY's context line ('COPY dim_staff, line 3, column
# email_address'): a data exception raised while a value is received (22021 for a NUL or bad
# UTF-8, 22008 for a time or date out of range) sets no table or column field, so without it
# the error names neither. Only the whole line of the binary format, which never shows data:
# a text COPY's context quotes the value ('column x: "..."') and does not match.
_BINARY_COPY_CONTEXT = re.compile(r"COPY (?P<table>\w+), line \d+, column (?P<column>\w+)")


# ADBC's text of a server error: the primary message after "ERROR:", then "DETAIL:" on a line
# of its own ('... Failed to execute query ...: ERROR:  duplicate key ...\nDETAIL:  Key ...').
_ADBC_MESSAGE = re.compile(r"ERROR:\s+(?P<message>[^\n]*)")
_ADBC_DETAIL = re.compile(r"^DETAIL:\s+(?P<detail>[^\n]*)", re.MULTILINE)


def fields_of(exc: BaseException) -> dict[str, str] | None:
    """The server's error fields of a pg8000 ``DatabaseError`` (its args hold them) or of an
    ADBC error (``sqlstate``, and message and DETAIL read from its text); None for an error
    that did not come from the server."""
    if exc.args and isinstance(exc.args[0], dict):
        return {str(k): str(v) for k, v in exc.args[0].items()}
    code = getattr(exc, "sqlstate", None)
    if not isinstance(code, str) or len(code) != 5:
        return None
    text = str(exc)
    message, detail = _ADBC_MESSAGE.search(text), _ADBC_DETAIL.search(text)
    info = {"C": code}
    if message:
        info["M"] = message["message"].strip()
    if detail:
        info["D"] = detail["detail"]
    return info


def describe(info: Mapping[str, str]) -> str:
    """What PostgreSQL refused, from its error fields, naming table, column, key column(s)
    and constraint, never a row value: its DETAIL and context are left out (but a binary
    COPY's context, which names relation, line and column only, gives the table and column a
    data exception lacks), as is the message of a class that may quote a value."""
    code = str(info.get("C", "?"))
    if code[:2] in _MESSAGE_NAMES_ONLY:
        parts = [str(info.get("M", "error"))]
    else:
        parts = [_CONDITIONS.get(code, f"error of SQLSTATE class {code[:2]}")]
    fields = {name: str(info[name]) for name in ("t", "c", "n", "d") if info.get(name)}
    copying = _BINARY_COPY_CONTEXT.fullmatch(str(info.get("W", "")).split("\n", 1)[0])
    if copying and "c" not in fields:
        fields.setdefault("t", copying["table"])
        fields["c"] = copying["column"]
    for label, field in (("table", "t"), ("column", "c"), ("constraint", "n"), ("type", "d")):
        if field in fields:
            parts.append(f"{label} {fields[field]}")
    key = _DETAIL_KEY.match(str(info.get("D", "")))
    if key:
        parts.append(f"key ({key['columns']})")
    return f"{'; '.join(parts)} [SQLSTATE {code}]"


def describe_error(exc: BaseException) -> str:
    """``describe`` of a server error; an error without the server's fields by its kind only
    (its text may be anything)."""
    info = fields_of(exc)
    if not info:
        return f"{type(exc).__name__} without PostgreSQL's error fields"
    return describe(info)
