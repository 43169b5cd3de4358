"""The Migrate Lambda (the stack's WarehouseMigration custom resource, the deploy's owner
step): Create and Update migrate with the OWNER's secret and re-grant the loader role, Delete
drops nothing, and CloudFormation always gets an answer, FAILED with a reason when the step
fails (a stack without one waits an hour)."""

from __future__ import annotations

import http.server
import importlib.util
import json
import threading
import uuid
from pathlib import Path

import boto3
import pytest

from totes.db import connect
from totes.stages import migrate_warehouse, runtime
from totes.warehouse.migrations import available
from totes.warehouse.roles import effective_privileges, expected_privileges, fact_sequences

APP = Path(__file__).resolve().parents[2] / "functions" / "migrate" / "app.py"
RESPONSE_URL = "https://cloudformation-custom-resource-response-euwest2.s3.amazonaws.com/x"


class Context:
    function_name = "migrate"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:eu-west-2:123456789012:function:migrate"
    aws_request_id = "req"


def cfn_event(request_type: str, physical: str | None = None) -> dict:
    event = {
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:eu-west-2:123456789012:function:migrate",
        "ResponseURL": RESPONSE_URL,
        "StackId": "arn:aws:cloudformation:eu-west-2:123456789012:stack/totes/1",
        "RequestId": str(uuid.uuid4()),
        "LogicalResourceId": "WarehouseMigration",
        "ResourceType": "Custom::WarehouseMigration",
        "ResourceProperties": {"Code": "layer:1"},
    }
    if physical:
        event["PhysicalResourceId"] = physical
    return event


@pytest.fixture
def answers(monkeypatch) -> list[tuple[str, dict]]:
    """CloudFormation's answers, captured instead of PUT to S3."""
    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        migrate_warehouse, "put_https", lambda url, body: sent.append((url, json.loads(body)))
    )
    return sent


@pytest.fixture
def owner_secret(aws, warehouse_db, monkeypatch) -> str:
    name = f"owner-{uuid.uuid4().hex[:8]}"
    boto3.client("secretsmanager").create_secret(Name=name, SecretString=warehouse_db.to_secret())
    monkeypatch.setenv("WAREHOUSE_OWNER_SECRET_ID", name)
    monkeypatch.delenv("WAREHOUSE_SCHEMA", raising=False)
    runtime.reset()
    yield name
    runtime.reset()


def handler():
    spec = importlib.util.spec_from_file_location(f"migrate_app_{uuid.uuid4().hex}", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


def test_create_migrates_as_the_owner_grants_the_loader_and_answers_success(
    owner_secret, warehouse_db, new_role, answers, monkeypatch
):
    loader = new_role(warehouse_db)
    monkeypatch.setenv("WAREHOUSE_LOADER_ROLE", loader.user)

    handler()(cfn_event("Create"), Context())

    [(url, answer)] = answers
    assert url == RESPONSE_URL
    labels = [m.label for m in available()]
    assert answer["Status"] == "SUCCESS"
    assert answer["Reason"] == f"migrations applied: {','.join(labels)}"
    assert answer["PhysicalResourceId"] == "WarehouseMigration-warehouse"
    assert answer["Data"] == {"Applied": ",".join(labels), "LoaderRole": loader.user}
    con = connect(warehouse_db)
    try:
        held = effective_privileges(con, loader.user, "public")
        assert held == expected_privileges(fact_sequences(con, "public"), "public")
    finally:
        con.close()

    handler()(cfn_event("Update", "WarehouseMigration-warehouse"), Context())
    assert answers[1][1]["Status"] == "SUCCESS"
    assert answers[1][1]["Data"]["Applied"] == "none"
    assert answers[1][1]["PhysicalResourceId"] == "WarehouseMigration-warehouse"


def test_delete_drops_nothing_and_answers_success(owner_secret, warehouse_db, answers):
    handler()(cfn_event("Delete", "WarehouseMigration-warehouse"), Context())
    [(_, answer)] = answers
    assert answer["Status"] == "SUCCESS"
    con = connect(warehouse_db)
    try:
        assert con.run("SELECT to_regclass('schema_migrations')") == [[None]]
    finally:
        con.close()


def test_a_failing_step_answers_failed_naming_why(owner_secret, warehouse_db, answers, monkeypatch):
    monkeypatch.setenv("WAREHOUSE_LOADER_ROLE", "no_such_loader")

    handler()(cfn_event("Create"), Context())

    [(_, answer)] = answers
    assert answer["Status"] == "FAILED"
    assert answer["Reason"] == (
        "role 'no_such_loader' does not exist: create it first (docs/deploy.md)"
    )


def test_a_missing_owner_secret_variable_still_answers(aws, answers, monkeypatch):
    monkeypatch.delenv("WAREHOUSE_OWNER_SECRET_ID", raising=False)
    runtime.reset()
    handler()(cfn_event("Create"), Context())
    [(_, answer)] = answers
    assert answer["Status"] == "FAILED"
    assert answer["Reason"] == (
        "environment variable WAREHOUSE_OWNER_SECRET_ID is required but not set"
    )


def test_the_answer_goes_only_to_an_https_url(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # deployed: never set
    with pytest.raises(ValueError, match="not an https URL"):
        migrate_warehouse.put_https("http://example.com/x", b"{}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")  # a local run
    for url in ("file:///etc/passwd", "ftp://example.com/x", "HTTP://example.com/x"):
        with pytest.raises(ValueError, match="not an https URL"):
            migrate_warehouse.put_https(url, b"{}")


def test_a_local_run_answers_its_local_stand_in_for_cloudformation_over_http(monkeypatch):
    """With the emulator's endpoint set (a local run, never a deployment), the answer may go
    to plain http: how tests/e2e/test_sam_local.py receives it from the Lambda container."""
    received: list[tuple[str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
        url = f"http://127.0.0.1:{server.server_address[1]}/answer?X-Amz-Signature=s"
        migrate_warehouse.put_https(url, b'{"Status": "SUCCESS"}')
    finally:
        server.shutdown()
        server.server_close()
    assert received == [("/answer?X-Amz-Signature=s", b'{"Status": "SUCCESS"}')]
