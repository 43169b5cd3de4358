"""The deploy's owner step: the stack's WarehouseMigration custom resource.

CloudFormation sends Create (first deploy) and Update (every deploy that changes the code
layer, the schema or the loader role) to this function before the load's event source goes
live (template.yaml: the load's S3 invoke permission DependsOn WarehouseMigration). It
connects with the OWNER's secret (``WAREHOUSE_OWNER_SECRET_ID``, never the loader's), applies
the pending migrations and, when ``WAREHOUSE_LOADER_ROLE`` is set, gives that role exactly the
loader's privileges again (a migration may add a table). Delete does nothing: the warehouse
outlives the stack.

Whatever happens, CloudFormation gets an answer (the pre-signed ``ResponseURL``): without one
a stack waits an hour. A failure answers FAILED with a reason naming the migration or the
refusal (operator-safe: a server error's code and message, never a row's values or a
credential), so the deploy stops and rolls back before any new function is invoked.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.data_classes import CloudFormationCustomResourceEvent
from pg8000.exceptions import DatabaseError

from totes.db import close, connect, credentials_from_secret_store, set_socket_timeout
from totes.errors import TotesError
from totes.observability import logger
from totes.server_errors import describe_error, fields_of
from totes.settings import MigrateSettings
from totes.stages import runtime
from totes.warehouse.migrations import migrate
from totes.warehouse.roles import grant_loader

# Migrations may rewrite large tables; statements may run up to just under the function's
# timeout (900 s), and the answer must still go out before it.
SOCKET_TIMEOUT_SECONDS = 840.0
RESPONSE_TIMEOUT_SECONDS = 30.0
MAX_REASON = 1000  # a response body is at most 4 KiB

Put = Callable[[str, bytes], None]


def migrate_and_grant(settings: MigrateSettings) -> dict[str, str]:
    """Migrate as the owner, then re-grant the loader role; what was done, for the stack."""
    creds = credentials_from_secret_store(settings.owner_secret_id, runtime.secrets())
    con = connect(creds, application_name="totes-migrate")
    try:
        set_socket_timeout(con, SOCKET_TIMEOUT_SECONDS)
        applied = migrate(con, settings.warehouse_schema)
        if settings.loader_role:
            grant_loader(con, settings.loader_role, settings.warehouse_schema)
    finally:
        close(con)
    logger.info(
        "warehouse migrated by the deploy",
        extra={"applied": applied, "loader_role": settings.loader_role},
    )
    return {"Applied": ",".join(applied) or "none", "LoaderRole": settings.loader_role or ""}


def reason_for(exc: BaseException) -> str:
    """Why the step failed, fit for the stack's events: our errors' own messages, a server
    error's SQLSTATE and the objects it names (``server_errors``), otherwise only the
    exception's class."""
    if isinstance(exc, TotesError):
        text = str(exc)
    elif isinstance(exc, DatabaseError):  # its message or DETAIL may quote a row's value
        text = f"database error: {describe_error(exc)}"
    else:
        text = type(exc).__name__
    return text[:MAX_REASON]


def _prints_server_text(exc: BaseException) -> bool:
    """Whether a traceback of ``exc`` would print a server error whole (its own text, or
    that of an exception it was raised from or while handling): pg8000's holds the message
    and DETAIL, which may quote a row's values, so such a failure is logged by ``reason_for``
    alone."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if fields_of(current) is not None:
            return True
        seen.add(id(current))
        context = None if current.__suppress_context__ else current.__context__
        current = current.__cause__ or context
    return False


def put_https(url: str, body: bytes) -> None:
    """PUT the answer to CloudFormation's pre-signed S3 URL (https only).

    One exception: a local run (``AWS_ENDPOINT_URL`` set, the AWS emulator's endpoint; the
    template sets it only from ``LocalEndpointUrl``, never in a deployment) may answer its
    local stand-in for CloudFormation over plain http. A Lambda container cannot be made to
    trust a test's own certificate (SAM passes only the template's variables: no
    ``SSL_CERT_FILE``), so without this ``tests/e2e/test_sam_local.py`` could not receive the
    answer of the function running in the Lambda runtime. No other scheme, ever."""
    local = bool(os.environ.get("AWS_ENDPOINT_URL"))
    if not (url.startswith("https://") or (local and url.startswith("http://"))):
        raise ValueError("the ResponseURL is not an https URL")
    request = urllib.request.Request(  # noqa: S310  # scheme checked above (http only locally)
        url, data=body, method="PUT", headers={"Content-Type": ""}
    )
    with urllib.request.urlopen(request, timeout=RESPONSE_TIMEOUT_SECONDS) as reply:  # noqa: S310  # nosec B310
        reply.read()


def handle(
    event: CloudFormationCustomResourceEvent,
    *,
    step: Callable[[MigrateSettings], dict[str, str]] | None = None,
    put: Put | None = None,
) -> dict[str, Any]:
    """Run the step for Create and Update, nothing for Delete; always answer CloudFormation."""
    physical = event.get("PhysicalResourceId") or f"{event.logical_resource_id}-warehouse"
    status, reason, data = "SUCCESS", "", {}
    try:
        if event.request_type in ("Create", "Update"):
            data = (step or migrate_and_grant)(runtime.settings(MigrateSettings))
            reason = f"migrations applied: {data.get('Applied', 'none')}"
        else:
            reason = "the warehouse outlives the stack: nothing dropped"
    except Exception as exc:
        status, reason, data = "FAILED", reason_for(exc), {}
        logger.error(
            "warehouse migration failed; the deploy stops here",
            extra={"reason": reason, "kind": type(exc).__name__},
            exc_info=not _prints_server_text(exc),
        )
    answer = {
        "Status": status,
        "Reason": reason,
        "PhysicalResourceId": physical,
        "StackId": event.stack_id,
        "RequestId": event.request_id,
        "LogicalResourceId": event.logical_resource_id,
        "NoEcho": False,
        "Data": data,
    }
    (put or put_https)(event.response_url, json.dumps(answer).encode())
    return answer
