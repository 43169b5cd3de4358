"""The runtime state of a stage, owned in one place: settings read once, clients built once.

A Lambda container keeps module state between invocations, so each stage reads its settings
from the environment once (a missing or malformed variable fails the cold start, naming it)
and builds its clients once (S3, the idempotency table; Powertools caches the secrets it
reads). Clients are built on first use, not at import, so they see the endpoint of the
environment they run in (moto locally).

``reset`` forgets all of it, as a new container would: the local chain calls it before each
invocation round, since one local process may drive several stacks or emulators in turn.
"""

from __future__ import annotations

import functools
from typing import TypeVar, cast

import boto3
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from botocore.client import BaseClient

from totes.iceberg.settings import IcebergSettings
from totes.settings import IngestSettings, LoadSettings, MigrateSettings, TransformSettings

SettingsT = TypeVar(
    "SettingsT", IngestSettings, TransformSettings, LoadSettings, MigrateSettings, IcebergSettings
)

_settings: dict[type, object] = {}


def settings(kind: type[SettingsT]) -> SettingsT:
    """The stage's settings, read from the environment on first use in this container."""
    if kind not in _settings:
        _settings[kind] = kind.from_env()
    return cast(SettingsT, _settings[kind])


def session() -> boto3.session.Session:
    """boto3's default session (the one ``boto3.client`` uses), shared by every client."""
    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None  # nosec B101 - set just above
    return boto3.DEFAULT_SESSION


@functools.cache
def s3() -> BaseClient:
    return session().client("s3")


@functools.cache
def idempotency_store(table_name: str) -> DynamoDBPersistenceLayer:
    return DynamoDBPersistenceLayer(table_name=table_name, boto3_session=session())


@functools.cache
def secrets() -> parameters.SecretsProvider:
    """Secrets Manager through Powertools Parameters (its own cache, per container)."""
    return parameters.SecretsProvider(boto3_session=session())


def reset() -> None:
    """A cold start: forget the settings, clients and cached secrets of this process."""
    _settings.clear()
    secrets.cache_clear()
    s3.cache_clear()
    idempotency_store.cache_clear()
    parameters.clear_caches()  # type: ignore[no-untyped-call]  # Powertools leaves it unannotated
