"""The Iceberg stage's doorway: the EventBridge event it is given names the processed manifest
(S3's spelling of the eTag or the emulator's), anything else is ignored; its settings fail the
cold start naming a missing or malformed variable."""

from __future__ import annotations

import pytest

from totes.errors import ConfigurationError
from totes.iceberg.settings import IcebergSettings
from totes.stages.iceberg_batch import manifest_ref
from totes.stages.trigger import ObjectRef

ENV = {
    "PROCESSED_BUCKET": "processed",
    "IDEMPOTENCY_TABLE": "idempotency",
    "ICEBERG_WAREHOUSE": "s3://iceberg/warehouse/",
    "ICEBERG_DATABASE": "stack_star",
}


def object_created(key: str, **obj) -> dict:
    """An S3 "Object Created" event as EventBridge delivers it."""
    return {
        "version": "0",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "detail": {"bucket": {"name": "processed"}, "object": {"key": key, **obj}},
    }


def test_the_event_names_the_processed_manifest_with_its_etag_in_either_spelling():
    aws = object_created("manifests/c0000000000000000007-000.json", etag="abc", size=10)
    emulator = object_created("manifests%2Fc0000000000000000007-000.json", eTag='"abc"')

    expected = ObjectRef("processed", "manifests/c0000000000000000007-000.json", "abc")
    assert manifest_ref(aws) == manifest_ref(emulator) == expected


@pytest.mark.parametrize(
    "key", ["processed/dim_date/c0000000000000000007-000/part-0000.parquet", "manifests/x.txt"]
)
def test_an_object_that_is_no_manifest_is_ignored(key):
    assert manifest_ref(object_created(key)) is None


def test_settings_have_defaults_and_a_missing_or_malformed_variable_is_named():
    settings = IcebergSettings.from_env(ENV)

    assert (settings.warehouse, settings.catalog_uri, settings.keep_snapshots) == (
        "s3://iceberg/warehouse",
        "",
        10,
    )
    with pytest.raises(ConfigurationError, match="ICEBERG_DATABASE"):
        IcebergSettings.from_env({k: v for k, v in ENV.items() if k != "ICEBERG_DATABASE"})
    with pytest.raises(ConfigurationError, match="ICEBERG_WAREHOUSE='bucket/prefix'"):
        IcebergSettings.from_env({**ENV, "ICEBERG_WAREHOUSE": "bucket/prefix"})
    with pytest.raises(ConfigurationError, match="ICEBERG_ORPHAN_AGE_HOURS"):
        IcebergSettings.from_env({**ENV, "ICEBERG_ORPHAN_AGE_HOURS": "0"})
