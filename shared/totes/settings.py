"""Settings read once from the environment into frozen objects.

A missing or malformed variable fails at cold start with its name, not deep inside a batch.
Each stage reads only what it needs, so a function's environment in the template stays minimal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from totes.errors import ConfigurationError

T = TypeVar("T")

_MISSING = object()


def _read(
    env: Mapping[str, str], name: str, cast: Callable[[str], T], default: object = _MISSING
) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is _MISSING:
            raise ConfigurationError(f"environment variable {name} is required but not set")
        return default  # type: ignore[return-value]
    try:
        return cast(raw)
    except ValueError as exc:
        raise ConfigurationError(
            f"environment variable {name}={raw!r} is malformed: {exc}"
        ) from exc


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """A parser for a whole number in ``[low, high]``: "nan", "inf", "1e12", fractions and
    absurd sizes are refused with the range, so a bad setting fails at once, by name."""

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"must be a whole number from {low:,} to {high:,}") from None
        if not low <= value <= high:
            raise ValueError(f"must be a whole number from {low:,} to {high:,}")
        return value

    return parse


# Rows per bounded batch and per Parquet part: at least one, at most what one Lambda can hold.
MAX_BATCH_ROWS = bounded_int(1, 50_000_000)
CHUNK_ROWS = bounded_int(1, 5_000_000)
# Days the raw lake keeps manifests, data and superseded key sets (the lifecycle rules'
# expiry): ingest rewrites a key set its state still needs once it is half that old.
RETENTION_DAYS = bounded_int(2, 36_500)
# Sessions a multi-batch run may open besides its own, one per large table it reads once.
READERS = bounded_int(0, 16)


# The drivers a run's readers may use (``extract.adbc.DRIVERS``; unset: ADBC if importable).
READER_DRIVERS = ("adbc", "pg8000")


def reader_driver(raw: str) -> str:
    value = raw.strip()
    if value not in READER_DRIVERS:
        raise ValueError(f"must be one of {', '.join(READER_DRIVERS)} (unset: adbc if installed)")
    return value


# A warehouse schema as operators create it (``CREATE SCHEMA name``, unquoted): lowercase
# letters, digits and underscores. It still enters SQL only quoted (``totes.identifiers``).
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
DEFAULT_WAREHOUSE_SCHEMA = "public"


def schema_name(raw: str) -> str:
    """A warehouse schema name, or ValueError saying what one looks like."""
    name = raw.strip()
    if not _SCHEMA_NAME.match(name):
        raise ValueError("must be a schema name: lowercase letters, digits, _ (at most 63)")
    return name


@dataclass(frozen=True)
class IngestSettings:
    raw_bucket: str
    source_secret_id: str
    max_batch_rows: int = 500_000
    chunk_rows: int = 100_000
    # Where load's loaded marker is read from (the freshness heartbeat); None: not measured.
    processed_bucket: str | None = None
    raw_retention_days: int = 30
    # With the optional Iceberg target: where its committed marker is read from; None: off.
    iceberg_bucket: str | None = None
    # Tables a run of several batches reads once each on a session of its own (0: every
    # batch selects its rows of every table again, on the run's one session).
    readers: int = 4
    # The readers' driver: "adbc" or "pg8000"; None: ADBC when it can be imported (our ADBC
    # layer is attached), else pg8000 (``extract.adbc.choose``).
    reader_driver: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IngestSettings:
        env = os.environ if env is None else env
        return cls(
            raw_bucket=_read(env, "RAW_BUCKET", str),
            source_secret_id=_read(env, "SOURCE_SECRET_ID", str),
            max_batch_rows=_read(env, "INGEST_MAX_BATCH_ROWS", MAX_BATCH_ROWS, 500_000),
            chunk_rows=_read(env, "INGEST_CHUNK_ROWS", CHUNK_ROWS, 100_000),
            processed_bucket=_read(env, "PROCESSED_BUCKET", str, None),
            raw_retention_days=_read(env, "RAW_RETENTION_DAYS", RETENTION_DAYS, 30),
            iceberg_bucket=_read(env, "ICEBERG_BUCKET", str, None) or None,
            readers=_read(env, "INGEST_READERS", READERS, 4),
            reader_driver=_read(env, "INGEST_READER_DRIVER", reader_driver, None),
        )


@dataclass(frozen=True)
class TransformSettings:
    raw_bucket: str
    processed_bucket: str
    idempotency_table: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TransformSettings:
        env = os.environ if env is None else env
        return cls(
            raw_bucket=_read(env, "RAW_BUCKET", str),
            processed_bucket=_read(env, "PROCESSED_BUCKET", str),
            idempotency_table=_read(env, "IDEMPOTENCY_TABLE", str),
        )


@dataclass(frozen=True)
class LoadSettings:
    processed_bucket: str
    idempotency_table: str
    warehouse_secret_id: str
    # The schema holding the star, the ledger and schema_migrations: every load connection
    # resolves unqualified names there only (``search_path``, set at connect).
    warehouse_schema: str = DEFAULT_WAREHOUSE_SCHEMA

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoadSettings:
        env = os.environ if env is None else env
        return cls(
            processed_bucket=_read(env, "PROCESSED_BUCKET", str),
            idempotency_table=_read(env, "IDEMPOTENCY_TABLE", str),
            warehouse_secret_id=_read(env, "WAREHOUSE_SECRET_ID", str),
            warehouse_schema=_read(env, "WAREHOUSE_SCHEMA", schema_name, DEFAULT_WAREHOUSE_SCHEMA),
        )


@dataclass(frozen=True)
class MigrateSettings:
    """The deploy step's migration function (a CloudFormation custom resource): the OWNER's
    secret (never the loader's), the schema, and the loader role it grants to."""

    owner_secret_id: str
    warehouse_schema: str = DEFAULT_WAREHOUSE_SCHEMA
    loader_role: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MigrateSettings:
        env = os.environ if env is None else env
        return cls(
            owner_secret_id=_read(env, "WAREHOUSE_OWNER_SECRET_ID", str),
            warehouse_schema=_read(env, "WAREHOUSE_SCHEMA", schema_name, DEFAULT_WAREHOUSE_SCHEMA),
            loader_role=_read(env, "WAREHOUSE_LOADER_ROLE", str, None),
        )
