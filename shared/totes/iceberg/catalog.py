"""The catalog and its tables: AWS Glue on AWS (and against the local emulator), pyiceberg's
SQL catalog on a SQLite file for tests that need real optimistic concurrency (the emulator's
Glue ignores ``VersionId``). Tables are created by the loader when missing, in the stack's
warehouse location, with the schemas and properties of ``tables``; a table missing a column
the code now writes gains it (additive schema evolution: an optional column, added last; the
loader matches columns by name), any other difference is refused."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.glue import GlueCatalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
)
from pyiceberg.schema import Schema
from pyiceberg.table import Table

from totes.errors import SchemaDrift
from totes.iceberg.settings import IcebergSettings
from totes.iceberg.tables import TABLE_PROPERTIES, all_tables


def file_io_properties(endpoint_url: str | None = None) -> dict[str, str]:
    """How pyiceberg's S3 file IO (pyarrow) reaches the warehouse: the function's region and,
    locally, the emulator's endpoint. Credentials come from the environment (the Lambda role)."""
    properties = {}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        properties["s3.region"] = region
        properties["client.region"] = region
    endpoint = endpoint_url if endpoint_url is not None else os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        properties["s3.endpoint"] = endpoint
        properties["glue.endpoint"] = endpoint
    return properties


def open_catalog(settings: IcebergSettings, endpoint_url: str | None = None) -> Catalog:
    properties: dict[str, Any] = file_io_properties(endpoint_url)
    if settings.catalog_uri:
        return SqlCatalog(
            "totes", uri=settings.catalog_uri, warehouse=settings.warehouse, **properties
        )
    return GlueCatalog("totes", **properties)


def table_location(settings: IcebergSettings, name: str) -> str:
    return f"{settings.warehouse}/{settings.database}/{name}"


def ensure_tables(catalog: Catalog, settings: IcebergSettings) -> dict[str, Table]:
    """Every table of ``tables.all_tables``, created if missing, evolved if it lacks a column."""
    namespace = settings.database
    try:
        catalog.load_namespace_properties(namespace)
    except NoSuchNamespaceError:
        # On AWS the stack creates the database; locally the loader does.
        with contextlib.suppress(NamespaceAlreadyExistsError):
            catalog.create_namespace(namespace)
    out = {}
    for name, schema in all_tables().items():
        try:  # loaded first: creating writes a metadata file even when the table exists
            table = catalog.load_table((namespace, name))
        except NoSuchTableError:
            table = catalog.create_table_if_not_exists(
                (namespace, name),
                schema,
                location=table_location(settings, name),
                properties=TABLE_PROPERTIES,
            )
        out[name] = _evolve(table, schema)
    return out


def _evolve(table: Table, expected: Schema) -> Table:
    stored = {f.name: f for f in table.schema().fields}
    missing = [f.name for f in expected.fields if f.name not in stored]
    for field in expected.fields:
        have = stored.get(field.name)
        if have is not None and have.field_type != field.field_type:
            raise SchemaDrift(
                f"Iceberg table {'.'.join(table.name())}: column {field.name} is"
                f" {have.field_type}, the loader writes {field.field_type}"
            )
    for field in expected.fields:
        if field.name in missing and field.required:
            raise SchemaDrift(
                f"Iceberg table {'.'.join(table.name())}: column {field.name} is missing and"
                " required: Iceberg (format v2) has no default for the rows the table holds,"
                " so it cannot be added; rebuild the table or make the column optional"
            )
    if not missing:
        return table
    with table.update_schema() as update:
        update.union_by_name(expected)
    return table.refresh()
