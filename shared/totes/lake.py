"""The lake: object keys, batch manifests and Parquet I/O, shared by every stage.

Keys are pure functions of the batch id, so a re-run of the same batch overwrites objects
with equal content instead of adding new ones. A manifest is written last and is the only
object that triggers the next stage, so no stage ever sees half a batch.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.client import BaseClient

MANIFEST_PREFIX = "manifests/"
MANIFEST_SUFFIX = ".json"
RAW_PREFIX = "raw"
PROCESSED_PREFIX = "processed"
QUARANTINE_PREFIX = "quarantine"
MANIFEST_VERSION = 1


def batch_id_for(seq: int, part: int = 0) -> str:
    """Sortable and deterministic: the capture sequence of the run (``c`` + 19 digits, so it
    sorts after every legacy window id), plus a part number when one run is split into several
    bounded batches."""
    return f"c{seq:019d}-{part:03d}"


# A batch id: a capture sequence and part, or (batches written before capture by commit
# order) the window's upper bound on the source clock and part.
BATCH_ID = re.compile(r"^(c[0-9]{19}|[0-9]{8}T[0-9]{12})-[0-9]{3}$")
# The lake's state pointer: the newest manifest and its capture state, written after it, so
# finding the state costs one request however old the lake (listing is the fallback).
STATE_PREFIX = "state/"
STATE_KEY = f"{STATE_PREFIX}latest.json"
# In the processed bucket: the newest batch the warehouse ledger holds and its capture time,
# written by load after each batch; ingest reads it on every run (the freshness heartbeat).
LOADED_KEY = f"{STATE_PREFIX}loaded.json"
# In the Iceberg bucket (the optional target, issue 17): the same marker for the Iceberg tables,
# written by the Iceberg function after each batch; ingest reads it too when the target is on.
ICEBERG_COMMITTED_KEY = f"{STATE_PREFIX}iceberg-committed.json"


def data_key(prefix: str, table: str, batch_id: str, part: int = 0) -> str:
    return f"{prefix}/{table}/{batch_id}/part-{part:04d}.parquet"


def manifest_key(batch_id: str) -> str:
    return f"{MANIFEST_PREFIX}{batch_id}{MANIFEST_SUFFIX}"


def batch_id_from_manifest_key(key: str) -> str:
    if not (key.startswith(MANIFEST_PREFIX) and key.endswith(MANIFEST_SUFFIX)):
        raise ValueError(f"not a manifest key: {key!r}")
    return key[len(MANIFEST_PREFIX) : -len(MANIFEST_SUFFIX)]


def schema_fingerprint(schema: pa.Schema) -> str:
    """Names and Arrow types, in order; metadata ignored. Equal schemas, equal fingerprints."""
    text = ";".join(f"{f.name}:{f.type}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ManifestFile:
    table: str
    key: str
    rows: int
    fingerprint: str
    bytes: int = 0


@dataclass(frozen=True)
class Manifest:
    """One committed batch. ``window_lo``/``window_hi`` are source-clock ISO timestamps;
    ``window_lo`` is None for a first run that takes everything."""

    batch_id: str
    stage: str  # "raw" or "processed"
    window_lo: str | None
    window_hi: str
    files: tuple[ManifestFile, ...]
    source_batch_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["files"] = [asdict(f) for f in self.files]
        return json.dumps(data, indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        data = json.loads(text)
        data["files"] = tuple(ManifestFile(**f) for f in data.get("files", ()))
        return cls(**data)

    def files_for(self, table: str) -> list[ManifestFile]:
        return [f for f in self.files if f.table == table]

    @property
    def tables(self) -> list[str]:
        return sorted({f.table for f in self.files})

    @property
    def row_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.files:
            counts[f.table] = counts.get(f.table, 0) + f.rows
        return counts


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` without rows. ``Schema.empty_table()`` goes through pyarrow's
    pandas shim, importing pandas (0.15-0.2 s) in a process that never needed it: a cold
    load or transform stage paid it on every batch without deletions (docs/load.md
    "Per-batch overhead")."""
    return pa.Table.from_batches([], schema=schema)


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth a Parquet dictionary: text and dates (codes, names, dates as text in
    the raw parts, a fact's dates), which repeat. Integer keys, stamps and decimals are nearly
    all distinct: their dictionaries were most of the encoding time (2 to 3x the plain
    encoding's for ingest's fact tables; writing a 300k batch's star took 0.140 s of CPU with
    them, 0.048 s without, docs/transform.md "Cost per batch") and made the files larger."""
    return [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_date(f.type)]


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    """Snappy Parquet, dictionary-encoding only ``dictionary_columns``, each page with its
    CRC-32 (``parquet_bytes_to_table`` verifies it). How a file is encoded does not change what
    it reads back as (same schema, same values).

    Why checksums: the manifest's row count and schema fingerprint say nothing about values,
    and a snappy page stores most bytes as they are, so a damaged page read back as other
    values and flowed on (s26: 37% of 20,000 single-bit flips of a raw part; one bit turned
    29 design names "Wooden" into "Woodeo"). With them, none did. A few bytes a page."""
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression="snappy",
        use_dictionary=dictionary_columns(table.schema),
        write_page_checksum=True,
    )
    return sink.getvalue()


# What reading damaged bytes as Parquet raises: Arrow's errors and I/O errors, and
# ``UnicodeDecodeError`` (a ``ValueError``, not an ``ArrowException``), which pyarrow raises
# when a footer names a column in invalid UTF-8 (s26: 79 of 20,000 raw parts with one random
# byte damaged). A stage that catches fewer than these lets a damaged file escape as a bare
# exception instead of naming it (transform's quarantine, load's ``LoadFailed``).
UNREADABLE_PARQUET: tuple[type[Exception], ...] = (pa.ArrowException, OSError, ValueError)


def parquet_bytes_to_table(data: bytes) -> pa.Table:
    """One Parquet file as a table. ``ParquetFile.read`` rather than ``pq.read_table``: the
    latter goes through the dataset API, whose first use in a process imports
    ``pyarrow.dataset`` (0.2-0.4 s, paid by the first batch a cold function reads) and which
    costs ~1.5 ms more per file afterwards; the table is the same (schema and metadata).

    Pages written with a checksum are verified (a mismatch raises ``OSError``, one of
    ``UNREADABLE_PARQUET``); a file written before the lake had them reads as before."""
    return pq.ParquetFile(io.BytesIO(data), page_checksum_verification=True).read()


class Lake:
    """One bucket of the lake, through a boto3 S3 client (moto locally, S3 on AWS)."""

    def __init__(self, s3_client: BaseClient, bucket: str):
        self.s3 = s3_client
        self.bucket = bucket

    def put_bytes(self, key: str, body: bytes, content_type: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    def get_bytes(self, key: str) -> bytes:
        body: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def put_table(self, key: str, table: pa.Table) -> int:
        body = table_to_parquet_bytes(table)
        self.put_bytes(key, body, "application/vnd.apache.parquet")
        return len(body)

    def get_table(self, key: str) -> pa.Table:
        return parquet_bytes_to_table(self.get_bytes(key))

    def put_manifest(self, manifest: Manifest) -> str:
        key = manifest_key(manifest.batch_id)
        self.put_bytes(key, manifest.to_json().encode(), "application/json")
        return key

    def get_manifest(self, key: str) -> Manifest:
        return Manifest.from_json(self.get_bytes(key))

    def manifest_keys(self, start_after: str = "") -> list[str]:
        """Every manifest key in batch-id (so chronological) order."""
        keys: list[str] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        kwargs = {"Bucket": self.bucket, "Prefix": MANIFEST_PREFIX}
        if start_after:
            kwargs["StartAfter"] = start_after
        for page in paginator.paginate(**kwargs):
            keys.extend(
                o["Key"] for o in page.get("Contents", ()) if o["Key"].endswith(MANIFEST_SUFFIX)
            )
        return sorted(keys)

    def latest_manifest(self) -> Manifest | None:
        """The newest manifest: the one the state pointer names, else the last key listed."""
        pointer = self.get_state()
        if pointer and pointer.get("manifest_key"):
            return self.get_manifest(str(pointer["manifest_key"]))
        keys = self.manifest_keys()
        return self.get_manifest(keys[-1]) if keys else None

    def put_state(self, manifest_key: str, capture: dict[str, Any]) -> None:
        body = {"manifest_key": manifest_key, "capture": capture}
        self.put_bytes(STATE_KEY, json.dumps(body, sort_keys=True).encode(), "application/json")

    def get_state(self) -> dict[str, Any] | None:
        """The state pointer, None when there is none; ``ValueError`` when it is damaged."""
        try:
            body = self.get_bytes(STATE_KEY)
        except self.s3.exceptions.NoSuchKey:
            return None
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError(f"{STATE_KEY} is not a JSON object")
        return data

    def keys(self, prefix: str) -> list[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        return sorted(
            o["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for o in page.get("Contents", ())
        )

    def renew(self, key: str) -> None:
        """Copy a Parquet object onto itself, so its current version counts as written now."""
        self.s3.copy_object(
            Bucket=self.bucket,
            Key=key,
            CopySource={"Bucket": self.bucket, "Key": key},
            MetadataDirective="REPLACE",
            ContentType="application/vnd.apache.parquet",
        )

    def copy(self, key: str, new_key: str) -> None:
        self.s3.copy_object(
            Bucket=self.bucket, Key=new_key, CopySource={"Bucket": self.bucket, "Key": key}
        )
