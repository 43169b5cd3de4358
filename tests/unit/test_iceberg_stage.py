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


@pytest.mark.parametrize("forgery", ["hi_utc_now", "other_batch", "no_files"])
def test_a_forged_processed_manifest_is_refused_before_a_file_is_read_or_a_table_touched(
    monkeypatch, forgery
):
    """The checks load makes (issue 14, manifest_checks) guard the Iceberg target too: the same
    manifests feed both. A refused batch is timed like any failure."""
    import json

    from test_manifest_checks import processed_manifest

    from totes import observability
    from totes.errors import LoadFailed
    from totes.lake import Lake, Manifest, manifest_key
    from totes.stages import iceberg_batch

    data = processed_manifest()
    key = manifest_key(data["batch_id"])
    if forgery == "hi_utc_now":
        data["extra"]["hi_utc"] = "now"
    elif forgery == "other_batch":
        key = manifest_key("c0000000000000000001-000")
    else:
        data["files"] = []
    manifest = Manifest.from_json(json.dumps(data))
    monkeypatch.setattr(Lake, "get_manifest", lambda lake, k: manifest)

    def untouchable(*args, **kwargs):
        raise AssertionError("read or committed a refused batch")

    monkeypatch.setattr(iceberg_batch, "read_batch", untouchable)
    monkeypatch.setattr(iceberg_batch, "apply_batch", untouchable)
    emitted = []
    monkeypatch.setattr(observability, "emit", lambda name, value, **d: emitted.append(name))

    with pytest.raises(LoadFailed, match=key.replace(".", r"\.")):
        iceberg_batch.load(key, IcebergSettings.from_env(ENV), object(), object())
    assert emitted == ["IcebergDurationSeconds"]
