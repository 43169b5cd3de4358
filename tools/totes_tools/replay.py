"""Replaying a raw batch: the operator's way back after a batch was quarantined.

Transform quarantines a batch that fails its quality gates by copying it under
``quarantine/<batch_id>/`` (with ``reason.json``); the raw manifest and files stay where they
are, because ingest reads its watermark from the newest raw manifest. Once the operator has
repaired the data in place (``raw/<table>/<batch_id>/part-NNNN.parquet``), the batch must run
again, but re-putting the identical manifest would not do it: same bytes, same eTag, and the
Powertools idempotency record for (bucket, key, eTag) makes transform skip it for 24 hours.

So a replay re-publishes the raw manifest at the same key with a ``replay`` marker in
``extra`` (a count and a time): the bytes differ, S3 sends a new notification with a new
eTag, and transform runs the batch afresh. The batch id, the window, the data keys and the
ingest state (``window_hi``, ``tail_fingerprint``) are unchanged, so the watermark does not
move. When the repair changed what a file holds (rows dropped or added, columns fixed),
``recount`` describes each file again from the object as it now is; otherwise the manifest's
file entries stay the contract the repaired files are checked against.

Replaying a batch that is already in the warehouse is harmless: transform rewrites the same
processed files, and load's batch ledger acknowledges the batch without writing.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from datetime import UTC, datetime

import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from totes.errors import ConfigurationError, TotesError
from totes.lake import QUARANTINE_PREFIX, Lake, Manifest, ManifestFile, manifest_key
from totes.lake import schema_fingerprint as fingerprint_of

REPLAY_KEY = "replay"


def describe_again(lake: Lake, entry: ManifestFile) -> ManifestFile:
    """The manifest entry for the object as it is now: rows, schema fingerprint, bytes."""
    body = lake.get_bytes(entry.key)
    try:
        metadata = pq.read_metadata(io.BytesIO(body))
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a non-Parquet body
        raise TotesError(
            f"{entry.key} is still not a readable Parquet file ({type(exc).__name__}: {exc});"
            " repair it before replaying"
        ) from None
    schema = metadata.schema.to_arrow_schema()
    return dataclasses.replace(
        entry, rows=metadata.num_rows, fingerprint=fingerprint_of(schema), bytes=len(body)
    )


def replay(
    lake: Lake, batch_id: str, *, recount: bool = False, now: datetime | None = None
) -> Manifest:
    """Re-publish the raw manifest of ``batch_id`` with a new replay marker; return it.

    Raises ``TotesError`` naming what to fix when the batch has no manifest, the manifest
    is not readable, or (with ``recount``) a file is missing or still not Parquet.
    """
    key = manifest_key(batch_id)
    try:
        manifest = lake.get_manifest(key)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise TotesError(
            f"batch {batch_id}: cannot read s3://{lake.bucket}/{key} ({code});"
            f" a quarantined copy, if any, is under {QUARANTINE_PREFIX}/{batch_id}/"
        ) from None
    except (ValueError, TypeError) as exc:
        raise TotesError(
            f"batch {batch_id}: s3://{lake.bucket}/{key} is not a readable manifest ({exc});"
            f" repair it (the quarantined copy is under {QUARANTINE_PREFIX}/{batch_id}/)"
            " and replay again"
        ) from None
    if manifest.batch_id != batch_id or manifest.stage != "raw":
        raise TotesError(
            f"batch {batch_id}: {key} holds a {manifest.stage!r} manifest of batch"
            f" {manifest.batch_id!r}; is --bucket the raw bucket?"
        )
    files = manifest.files
    if recount:
        try:
            files = tuple(describe_again(lake, entry) for entry in manifest.files)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise TotesError(f"batch {batch_id}: a data file cannot be read ({code})") from None
    previous = (manifest.extra or {}).get(REPLAY_KEY) or {}
    marker = {
        "count": int(previous.get("count", 0)) + 1,
        "at": (now or datetime.now(UTC)).isoformat(),
        "recounted": recount,
    }
    replayed = dataclasses.replace(
        manifest, files=files, extra={**(manifest.extra or {}), REPLAY_KEY: marker}
    )
    lake.put_manifest(replayed)
    return replayed


def _raw_bucket(args) -> str:
    bucket = args.bucket or os.environ.get("RAW_BUCKET")
    if bucket:
        return bucket
    if args.endpoint_url:
        from totes_tools.local.aws import StackNames

        return StackNames().raw_bucket  # the bucket `python -m totes run` uses locally
    raise ConfigurationError(
        "which raw bucket? pass --bucket (the stack's RawBucketName output) or set RAW_BUCKET"
    )


def command(args) -> int:
    """``python -m totes replay --batch ID``: against AWS (boto3's default credentials and
    region) or, with ``--endpoint-url``, a running ``python -m totes local-aws``."""
    import boto3

    bucket = _raw_bucket(args)
    if args.endpoint_url:
        from totes_tools.local.aws import LOCAL_ENV, client, environment

        with environment(LOCAL_ENV):  # the emulator's dummy credentials
            return _replay_and_report(client("s3", args.endpoint_url), bucket, args)
    return _replay_and_report(boto3.client("s3"), bucket, args)


def _replay_and_report(s3_client, bucket: str, args) -> int:
    lake = Lake(s3_client, bucket)
    manifest = replay(lake, args.batch, recount=args.recount)
    marker = manifest.extra[REPLAY_KEY]
    reason = f"{QUARANTINE_PREFIX}/{args.batch}/reason.json"
    quarantined = bool(lake.keys(reason))
    print(
        f"replayed batch {manifest.batch_id} (replay #{marker['count']}):"
        f" re-published s3://{bucket}/{manifest_key(manifest.batch_id)}"
        + (" with files recounted" if args.recount else ""),
        flush=True,
    )
    for table, rows in sorted(manifest.row_counts.items()):
        print(f"  {table:<22} {rows:>10}", flush=True)
    if quarantined:
        print(f"  (it was quarantined: s3://{bucket}/{reason} explains why)", flush=True)
    if args.endpoint_url:
        print(
            "  the transform notification is queued; the next `python -m totes run` takes it",
            file=sys.stderr,
            flush=True,
        )
    return 0
