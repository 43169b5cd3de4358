"""Each Lambda handler reads its settings when its module is imported, so a function deployed
with a missing or malformed environment variable fails its cold start with the variable's
name, before any event is taken (and before any data is touched)."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import pytest

from totes.errors import ConfigurationError
from totes.settings import IngestSettings, LoadSettings, TransformSettings
from totes.stages import runtime

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"
SETTINGS = {"ingest": IngestSettings, "transform": TransformSettings, "load": LoadSettings}
# What each function's environment in template.yaml must provide.
REQUIRED = {
    "ingest": ["RAW_BUCKET", "SOURCE_SECRET_ID"],
    "transform": ["RAW_BUCKET", "PROCESSED_BUCKET", "IDEMPOTENCY_TABLE"],
    "load": ["PROCESSED_BUCKET", "IDEMPOTENCY_TABLE", "WAREHOUSE_SECRET_ID"],
}
ALL_VARIABLES = sorted(
    {name for names in REQUIRED.values() for name in names} | {"WAREHOUSE_SCHEMA"}
)


@pytest.fixture
def cold(monkeypatch):
    """No function variables set and no settings cached, before and after the test."""
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    runtime.reset()
    yield monkeypatch
    runtime.reset()


def import_handler(stage: str):
    path = FUNCTIONS / stage / "app.py"
    spec = importlib.util.spec_from_file_location(f"{stage}_app_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("stage", "missing"), [(s, name) for s, names in REQUIRED.items() for name in names]
)
def test_a_handler_imported_without_a_required_variable_fails_naming_it(cold, stage, missing):
    for name in REQUIRED[stage]:
        if name != missing:
            cold.setenv(name, f"some-{name.lower()}")

    with pytest.raises(ConfigurationError) as raised:
        import_handler(stage)

    assert str(raised.value) == f"environment variable {missing} is required but not set"


def test_a_handler_imported_with_a_malformed_variable_fails_naming_it(cold):
    for name in REQUIRED["ingest"]:
        cold.setenv(name, "x")
    cold.setenv("INGEST_MAX_BATCH_ROWS", "0")

    with pytest.raises(ConfigurationError, match="INGEST_MAX_BATCH_ROWS='0' is malformed"):
        import_handler("ingest")


@pytest.mark.parametrize("schema", ["Public", "wh-1", "wh;drop", "a" * 64])
def test_load_imported_with_a_malformed_warehouse_schema_fails_naming_it(cold, schema):
    """The schema enters the load's search_path (quoted); a name operators could not have
    created unquoted is refused at the cold start, by name."""
    for name in REQUIRED["load"]:
        cold.setenv(name, "x")
    cold.setenv("WAREHOUSE_SCHEMA", schema)

    with pytest.raises(ConfigurationError, match=f"WAREHOUSE_SCHEMA={schema!r} is malformed"):
        import_handler("load")


def test_load_uses_the_public_schema_unless_told(cold):
    for name in REQUIRED["load"]:
        cold.setenv(name, "x")
    import_handler("load")
    assert runtime.settings(LoadSettings).warehouse_schema == "public"
    runtime.reset()
    cold.setenv("WAREHOUSE_SCHEMA", "totes_wh")
    assert runtime.settings(LoadSettings).warehouse_schema == "totes_wh"


@pytest.mark.parametrize("stage", sorted(REQUIRED))
def test_a_handler_imported_with_its_variables_reads_them_once(cold, stage):
    for name in REQUIRED[stage]:
        cold.setenv(name, f"some-{name.lower()}")

    module = import_handler(stage)

    assert callable(module.handler)
    read = runtime.settings(SETTINGS[stage])
    cold.setenv(REQUIRED[stage][0], "changed-after-the-cold-start")
    assert runtime.settings(SETTINGS[stage]) is read


@pytest.mark.parametrize(("raw", "readers"), [(None, 4), ("0", 0), ("16", 16), ("17", None)])
def test_ingest_readers_default_to_four_and_take_zero_to_sixteen(raw, readers):
    env = {"RAW_BUCKET": "raw", "SOURCE_SECRET_ID": "secret"}
    if raw is not None:
        env["INGEST_READERS"] = raw

    if readers is None:
        with pytest.raises(ConfigurationError, match="INGEST_READERS='17' is malformed"):
            IngestSettings.from_env(env)
    else:
        assert IngestSettings.from_env(env).readers == readers


def test_a_cold_start_builds_every_client_from_one_boto3_session(monkeypatch):
    """S3, the idempotency table and the secrets provider share boto3's default session, so
    botocore's endpoint data is parsed once per container, not once per client (Powertools
    builds a session of its own for each unless given one: 151 -> 87 ms measured)."""
    import boto3

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    made = []
    real = boto3.session.Session

    def counted(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(boto3.session, "Session", counted)
    monkeypatch.setattr(boto3, "Session", counted)
    runtime.reset()
    try:
        runtime.s3()
        runtime.idempotency_store("totes-idempotency")
        runtime.secrets()
    finally:
        runtime.reset()
    assert len(made) == 1
