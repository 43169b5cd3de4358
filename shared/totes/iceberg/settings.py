"""The Iceberg target's settings, read once from the environment (``totes.settings`` rules: a
missing or malformed variable fails the cold start, naming it)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from totes.settings import _read, bounded_int


def _location(raw: str) -> str:
    if "://" not in raw:
        raise ValueError("must be a URI such as s3://bucket/prefix")
    return raw.rstrip("/")


@dataclass(frozen=True)
class IcebergSettings:
    """``ICEBERG_WAREHOUSE``: where the tables' files live (``s3://bucket/prefix``; locally also
    ``file://``). ``ICEBERG_DATABASE``: the Glue database (the namespace). ``ICEBERG_CATALOG_URI``:
    empty for the AWS Glue Data Catalog, or a SQLAlchemy URL for pyiceberg's SQL catalog (local
    runs and tests). The rest tune maintenance: snapshots older than the retention are expired
    (the newest ``ICEBERG_KEEP_SNAPSHOTS`` always stay), unreferenced files older than
    ``ICEBERG_ORPHAN_AGE_HOURS`` are deleted (longer than any commit takes, so a file a running
    commit wrote is never one of them), and data files below a quarter of
    ``ICEBERG_TARGET_FILE_MB`` are compacted towards that size."""

    processed_bucket: str
    idempotency_table: str
    warehouse: str
    database: str
    catalog_uri: str = ""
    snapshot_retention_hours: int = 72
    keep_snapshots: int = 10
    orphan_age_hours: int = 24
    target_file_mb: int = 128

    @property
    def bucket(self) -> str | None:
        """The bucket of an ``s3://`` warehouse (it also holds the committed marker); None for
        a local ``file://`` one."""
        scheme, _, rest = self.warehouse.partition("://")
        return rest.split("/", 1)[0] if scheme == "s3" else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IcebergSettings:
        env = os.environ if env is None else env
        return cls(
            processed_bucket=_read(env, "PROCESSED_BUCKET", str),
            idempotency_table=_read(env, "IDEMPOTENCY_TABLE", str),
            warehouse=_read(env, "ICEBERG_WAREHOUSE", _location),
            database=_read(env, "ICEBERG_DATABASE", str),
            catalog_uri=_read(env, "ICEBERG_CATALOG_URI", str, ""),
            snapshot_retention_hours=_read(
                env, "ICEBERG_SNAPSHOT_RETENTION_HOURS", bounded_int(1, 24 * 3650), 72
            ),
            keep_snapshots=_read(env, "ICEBERG_KEEP_SNAPSHOTS", bounded_int(1, 10_000), 10),
            orphan_age_hours=_read(env, "ICEBERG_ORPHAN_AGE_HOURS", bounded_int(1, 24 * 365), 24),
            target_file_mb=_read(env, "ICEBERG_TARGET_FILE_MB", bounded_int(1, 4096), 128),
        )
