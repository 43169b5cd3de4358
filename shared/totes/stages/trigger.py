"""The manifest trigger that transform and load share: decode the S3 event's records into
object references and run the stage once per (bucket, key, eTag) under Powertools
idempotency, so a redelivered event does no work twice."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

from totes.lake import MANIFEST_PREFIX, MANIFEST_SUFFIX
from totes.observability import logger

IDEMPOTENCY_TTL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str
    etag: str


def manifest_refs(event: S3Event) -> list[ObjectRef]:
    """The manifest objects an S3 event names; keys URL-decoded (S3 and moto encode them)."""
    refs = []
    for record in event.records:
        key = unquote_plus(record.s3.get_object.key)
        if not (key.startswith(MANIFEST_PREFIX) and key.endswith(MANIFEST_SUFFIX)):
            logger.warning("ignoring a non-manifest object", extra={"key": key})
            continue
        refs.append(ObjectRef(record.s3.bucket.name, key, record.s3.get_object.etag.strip('"')))
    return refs


@functools.cache
def _persistence(table_name: str) -> DynamoDBPersistenceLayer:
    # Built on first use, not at import: the client must see the (possibly local) endpoint.
    return DynamoDBPersistenceLayer(table_name=table_name)


def run_once(
    stage: Callable[[ObjectRef], dict], ref: ObjectRef, table_name: str, context=None
) -> dict:
    """Run ``stage(ref)`` at most once per (bucket, key, eTag) while the record lives.

    The record is keyed on the reference only; the stage's own ledger (load) or deterministic
    keys (transform) keep the result right after the record expires.
    """
    config = IdempotencyConfig(
        event_key_jmespath="[bucket, key, etag]",
        expires_after_seconds=IDEMPOTENCY_TTL_SECONDS,
        raise_on_no_idempotency_key=True,
    )
    if context is not None:
        config.register_lambda_context(context)

    @idempotent_function(
        data_keyword_argument="ref", persistence_store=_persistence(table_name), config=config
    )
    def once(ref: dict) -> dict:
        return stage(ObjectRef(**ref))

    return once(ref=asdict(ref))
