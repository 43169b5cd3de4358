"""Rebuilding the warehouse from the processed lake, without touching the source.

The processed bucket holds every batch the chain ever loaded: ``manifests/<batch_id>.json``
and ``processed/<star table>/<batch_id>/part-*.parquet``. Loads are order-free (dimensions
follow commit order, facts are versions, deletions are tombstones) and exactly-once (the
batch ledger), so loading every processed manifest into an empty warehouse gives the warehouse
the chain built: the same rows, marks, parks and lineage, whatever the order.

``rebuild`` does exactly that with the load Lambda's own code: the migrations, then per
manifest, in batch-id order, the load stage's refusals (``manifest_checks``: a manifest the
load refused, e.g. a forged one waiting on the failure queue, is refused here too), its reading
of a batch (``read_batch``: each file checked against its manifest and the star model) and
``totes.warehouse.merge.load_batch`` (one transaction per batch, the ledger first). A batch
already in the ledger is skipped, so an interrupted rebuild continues where it stopped
(``--resume``). A batch that fails (a damaged file) is named and the others still load; the
exit status is then 1.

It needs the processed lake kept whole: no lifecycle rule may expire current objects under
``processed/`` or ``manifests/`` of the processed bucket (docs/deploy.md).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from botocore.exceptions import ClientError
from pg8000.native import Connection

from totes import manifest_checks
from totes.db import DbCredentials, connect, set_socket_timeout
from totes.errors import ConfigurationError, LoadFailed, TotesError
from totes.lake import Lake, batch_id_from_manifest_key
from totes.observability import logger
from totes.settings import DEFAULT_WAREHOUSE_SCHEMA
from totes.stages.load_batch import read_batch
from totes.star.model import STAR_TABLES
from totes.warehouse.ledger import LEDGER
from totes.warehouse.merge import load_batch
from totes.warehouse.migrations import migrate

# A batch's statements may run long (a backfill): bound socket waits by an hour, not the
# connect timeout.
STATEMENT_SECONDS = 3600.0
PROGRESS_SECONDS = 5.0
COUNTS = ("inserted", "updated", "parked", "released", "marked", "unmarked")


@dataclass
class RebuildSummary:
    manifests: int = 0
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the ledger
    failed: list[tuple[str, str]] = field(default_factory=list)  # (batch, why)
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, counts: dict[str, dict[str, int]]) -> None:
        for table, numbers in counts.items():
            mine = self.rows.setdefault(table, dict.fromkeys(COUNTS, 0))
            for name in COUNTS:
                mine[name] += int(numbers.get(name, 0))

    def format(self) -> str:
        lines = [
            f"{len(self.loaded)} batch(es) loaded, {len(self.skipped)} already in the ledger,"
            f" {len(self.failed)} failed, of {self.manifests} processed manifest(s);"
            f" {self.seconds:.1f} s"
        ]
        if self.rows:
            lines.append("  " + f"{'table':<22}" + "".join(f"{n:>10}" for n in COUNTS))
            for table in (t.name for t in STAR_TABLES if t.name in self.rows):
                numbers = self.rows[table]
                lines.append(f"  {table:<22}" + "".join(f"{numbers[n]:>10}" for n in COUNTS))
        lines.extend(f"  FAILED: batch {batch}: {why}" for batch, why in self.failed)
        return "\n".join(lines)


def holds_data(con: Connection) -> int:
    """Batches in the ledger, or 1 when the ledger is empty but a star table has rows."""
    [[batches]] = con.run(f"SELECT count(*) FROM {LEDGER}")  # noqa: S608  # nosec B608
    if batches:
        return int(batches)
    probes = " OR ".join(f"EXISTS (SELECT 1 FROM {t.name})" for t in STAR_TABLES)  # noqa: S608  # nosec B608
    [[any_rows]] = con.run(f"SELECT {probes}")
    return 1 if any_rows else 0


def rebuild(
    con: Connection,
    lake: Lake,
    *,
    resume: bool = False,
    schema: str = DEFAULT_WAREHOUSE_SCHEMA,
    progress: Callable[[str], None] = print,
) -> RebuildSummary:
    """Migrate the warehouse behind ``con`` (in ``schema``, which its ``search_path`` must
    name) and load every processed manifest of ``lake`` not
    yet in its ledger, in batch-id order; ``TotesError`` for a warehouse that already holds
    data (unless ``resume``)."""
    started = time.monotonic()
    keys = lake.manifest_keys()
    _refuse_a_raw_lake(lake, keys)
    migrate(con, schema)
    held = holds_data(con)
    if held and not resume:
        raise TotesError(
            "the warehouse already holds data (its ledger lists loaded batches, or a star table"
            " has rows): rebuild into a new, empty database; --resume continues an interrupted"
            " rebuild there"
        )
    in_ledger = {str(b) for [b] in con.run(f"SELECT batch_id FROM {LEDGER}")}  # noqa: S608  # nosec B608
    summary = RebuildSummary(manifests=len(keys))
    progress(
        f"{len(keys)} processed manifest(s) in s3://{lake.bucket}, {len(in_ledger)} in the ledger"
    )
    shown = time.monotonic()
    for n, key in enumerate(keys, 1):
        batch_id = batch_id_from_manifest_key(key)
        if batch_id in in_ledger:
            summary.skipped.append(batch_id)
            continue
        try:
            result = _load_one(con, lake, key, batch_id)
        except LoadFailed as exc:
            summary.failed.append((batch_id, str(exc)))
            progress(f"  [{n}/{len(keys)}] batch {batch_id} FAILED: {exc}")
            continue
        if result is None:
            summary.skipped.append(batch_id)
        else:
            summary.loaded.append(batch_id)
            summary.add(result)
        if time.monotonic() - shown >= PROGRESS_SECONDS or n == len(keys):
            shown = time.monotonic()
            progress(
                f"  [{n}/{len(keys)}] batch {batch_id}: {len(summary.loaded)} loaded,"
                f" {time.monotonic() - started:.0f} s"
            )
    summary.seconds = time.monotonic() - started
    return summary


def _refuse_a_raw_lake(lake: Lake, keys: list[str]) -> None:
    """The raw bucket holds ``manifests/<batch>.json`` too: a rebuild pointed at it is a wrong
    ``--bucket`` (refused before the database is touched), not every batch damaged."""
    if not keys:
        return
    try:
        stage = lake.get_manifest(keys[0]).stage
    except (ClientError, ValueError, TypeError, AttributeError):
        return  # that batch's own load names what is wrong with it
    if stage == "raw":
        raise TotesError(
            f"s3://{lake.bucket}/manifests/ holds raw manifests, not processed ones:"
            " is --bucket the processed bucket (the stack's ProcessedBucketName output)?"
        )


def _load_one(
    con: Connection, lake: Lake, key: str, batch_id: str
) -> dict[str, dict[str, int]] | None:
    """One processed batch through the load stage's code; its row counts, or None when the
    ledger already held it. ``LoadFailed`` names what is wrong with the batch."""
    try:
        manifest = lake.get_manifest(key)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise LoadFailed(f"batch {batch_id}: cannot read {key} ({code})") from None
    except (ValueError, TypeError) as exc:
        raise LoadFailed(f"batch {batch_id}: unreadable manifest: {exc}") from None
    # The load stage's own refusals (``_load``), so that a manifest the chain's load refused
    # (it waits on the failure queue) never reaches a rebuilt warehouse either.
    refused = manifest_checks.problems(manifest, key, "processed", datetime.now(UTC))
    if refused:
        raise LoadFailed(f"batch {batch_id}: {key}: {'; '.join(refused)}")
    result = load_batch(con, manifest, read_batch(lake, manifest))
    return result.row_counts() if result.loaded else None


def _processed_bucket(args) -> str:
    bucket = args.bucket or os.environ.get("PROCESSED_BUCKET")
    if bucket:
        return bucket
    if args.endpoint_url:
        from totes_tools.local.aws import StackNames

        return StackNames().processed_bucket  # the bucket `python -m totes run` uses locally
    raise ConfigurationError(
        "which processed bucket? pass --bucket (the stack's ProcessedBucketName output) or set"
        " PROCESSED_BUCKET"
    )


def command(args) -> int:
    """``python -m totes warehouse rebuild``: against the emulator (``--endpoint-url``) or AWS
    (boto3's default credentials and region). The load code's INFO logs are quiet unless
    ``POWERTOOLS_LOG_LEVEL`` asks for them (the level is restored afterwards: the command may
    run inside another process, e.g. a test)."""
    level = logger.log_level
    if not os.environ.get("POWERTOOLS_LOG_LEVEL"):
        logger.setLevel("ERROR")
    try:
        return _command(args)
    finally:
        logger.setLevel(level)


def _command(args) -> int:
    import boto3

    bucket = _processed_bucket(args)
    if args.endpoint_url:
        from totes_tools.local.aws import LOCAL_ENV, client, environment

        with environment(LOCAL_ENV):  # the emulator's dummy credentials
            s3 = client("s3", args.endpoint_url)
    else:
        s3 = boto3.client("s3")
    creds = DbCredentials.from_url(args.warehouse_url)
    con = connect(creds, application_name="totes-rebuild", search_path=args.schema)
    set_socket_timeout(con, STATEMENT_SECONDS)
    try:
        where = creds.where + (
            "" if args.schema == DEFAULT_WAREHOUSE_SCHEMA else f" (schema {args.schema})"
        )
        print(f"rebuilding {where} from the processed lake s3://{bucket}", flush=True)
        try:
            summary = rebuild(
                con,
                Lake(s3, bucket),
                resume=args.resume,
                schema=args.schema,
                progress=lambda s: print(s, flush=True),
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise TotesError(f"cannot list s3://{bucket}/manifests/ ({code})") from None
    finally:
        con.close()
    print(summary.format(), flush=True)
    for batch, why in summary.failed:
        print(f"error: batch {batch} not loaded: {why}", file=sys.stderr)
    if summary.failed:
        print(
            "error: fix or restore those batches' processed files, then run again with --resume",
            file=sys.stderr,
        )
    return 1 if summary.failed else 0
