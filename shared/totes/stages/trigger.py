"""The manifest trigger that transform and load share: decode the S3 event's records into
object references, refuse manifests from any other bucket than the stage's own, and run the
stage once per (bucket, key, eTag) under Powertools idempotency, so a redelivered event does
no work twice."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.typing import LambdaContext

from totes.lake import MANIFEST_PREFIX, MANIFEST_SUFFIX
from totes.observability import logger
from totes.stages import runtime

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


def handle_manifests(
    event: S3Event,
    context: LambdaContext | None,
    *,
    bucket: str,
    idempotency_table: str,
    work: Callable[[ObjectRef], dict[str, Any]],
) -> dict[str, Any]:
    """The handler's work for transform and load: ``work(ref)`` for each manifest the event
    names in the stage's own ``bucket``, at most once per (bucket, key, eTag); a manifest from
    any other bucket is logged and answered as ignored."""

    def stage(ref: ObjectRef) -> dict[str, Any]:
        if ref.bucket != bucket:
            logger.warning("manifest from an unexpected bucket", extra={"bucket": ref.bucket})
            return {"status": "ignored", "bucket": ref.bucket, "key": ref.key}
        return work(ref)

    results = [run_once(stage, ref, idempotency_table, context) for ref in manifest_refs(event)]
    return {"results": results}


def run_once(
    stage: Callable[[ObjectRef], dict[str, Any]],
    ref: ObjectRef,
    table_name: str,
    context: LambdaContext | None = None,
) -> dict[str, Any]:
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

    def once(ref: dict[str, str]) -> dict[str, Any]:
        return stage(ObjectRef(**ref))

    guarded = idempotent_function(
        data_keyword_argument="ref",
        persistence_store=runtime.idempotency_store(table_name),
        config=config,
    )(once)
    result: dict[str, Any] = guarded(ref=asdict(ref))
    return result
