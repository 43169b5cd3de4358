"""Exceptions that carry a message fit for an operator: they name what is wrong (database,
table, file, column, batch) and never carry a credential."""

from typing import Any


class TotesError(Exception):
    """Base class: anything the CLI prints as a one-line error and exits non-zero on."""


class ConfigurationError(TotesError):
    """A setting is missing or malformed (raised at cold start, naming the variable)."""


class DatabaseUnavailable(TotesError):
    """The database cannot be reached or refuses our credentials."""


class AuthenticationFailed(DatabaseUnavailable):
    """The server refused the user or password (SQLSTATE 28P01 or 28000)."""


class ReaderFailed(TotesError):
    """One of a run's large-table readers (``extract.readers``) failed: names the table and
    the driver; the run writes nothing more and its resume state stays where it was."""


class DamagedKeySet(TotesError):
    """A stored key set (``extract.keysets``) does not read back as the sorted distinct keys
    its state recorded: names the table, the object and what is wrong, never a key. The run
    stops before writing anything: read as it is, a damaged key set would mark live rows
    deleted or miss deletions, silently."""


class SchemaDrift(TotesError):
    """A table or column the pipeline relies on is missing or has another type."""


class MigrationFailed(TotesError):
    """A schema migration was refused by the warehouse (rolled back with the rest of its run):
    names the migration and what PostgreSQL refused, by table, column and SQLSTATE only (the
    rows a migration rewrites hold personal data, which a server error's message or DETAIL
    may quote)."""


class SchemaBehind(SchemaDrift):
    """The warehouse lacks migrations the code ships. The load refuses instead of migrating
    (it holds no DDL rights); ``missing`` names them (``NNNN_name``), for logs and alarms."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = list(missing)


class BatchRejected(TotesError):
    """A batch failed a data-quality gate; ``reason`` is the JSON-able quarantine record."""

    def __init__(self, message: str, reason: dict[str, Any] | None = None):
        super().__init__(message)
        self.reason: dict[str, Any] = reason or {"error": message}


class LoadFailed(TotesError):
    """A batch could not be merged; nothing of it is visible. Names batch, table and cause."""


class LoadedButUnreported(TotesError):
    """A batch was merged and committed, then reporting it (metrics, logs) failed: nothing is
    rolled back, and a retry is acknowledged by the warehouse ledger."""
