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


# A warehouse row that personal data fills: a migration that fails on it must name the
# migration, table and column, never these values.
STAFF = {
    "first_name": "Quokkaleak",
    "last_name": "Zanzibarsson-7f3a",
    "department_name": "Leakage-Dept-7f3a",
    "location": "Leakington-on-Sea",
    "email_address": "quokka.zanzibarsson@leak.example",
}
# Migrations that fail on the rows a warehouse already holds, as a schema change can: a data
# exception (whose message quotes the value) and a duplicate key (whose DETAIL does).
FAILING = {
    "data-exception": (
        "ALTER TABLE dim_staff ALTER COLUMN last_name TYPE integer"
        " USING CAST(last_name AS integer)",
        "22P02",
    ),
    "duplicate-key": (
        "CREATE UNIQUE INDEX dim_staff_email_address_key ON dim_staff (email_address)",
        "23505",
    ),
}


@pytest.mark.parametrize("case", list(FAILING))
def test_a_migration_failing_on_a_row_names_it_but_no_value_in_logs_or_the_answer(
    owner_secret, warehouse_db, answers, monkeypatch, capsys, caplog, log_lines, case
):
    from totes.warehouse import migrations

    handler()(cfn_event("Create"), Context())
    assert answers[0][1]["Status"] == "SUCCESS"
    con = connect(warehouse_db)
    try:
        for staff_id in (738291, 738292):  # the same e-mail twice: a duplicate for a unique key
            con.run(
                "INSERT INTO dim_staff (staff_id, first_name, last_name, department_name,"
                " location, email_address, source_version, oldest_version, loaded_batch_id)"
                " VALUES (:id, :first_name, :last_name, :department_name, :location,"
                " :email_address, '2031-07-19 13:47:29.123', '2031-07-19 13:47:29.123', 'b')",
                id=staff_id,
                **STAFF,
            )
    finally:
        con.close()
    sql, code = FAILING[case]
    shipped = available()
    failing = migrations.Migration(shipped[-1].version + 1, "fails_on_a_row", sql)
    monkeypatch.setattr(migrations, "available", lambda: [*shipped, failing])

    handler()(cfn_event("Update", "WarehouseMigration-warehouse"), Context())

    answer = answers[1][1]
    assert answer["Status"] == "FAILED"
    assert "migration failed" in log_lines.getvalue()  # the failure was logged: searched below
    out = capsys.readouterr()
    haystack = "\n".join([log_lines.getvalue(), caplog.text, out.out, out.err, json.dumps(answers)])
    leaked = [value for value in STAFF.values() if value in haystack]
    assert leaked == []
    assert failing.label in answer["Reason"]
    assert f"SQLSTATE {code}" in answer["Reason"]


# Server errors a step may meet outside a migration, each quoting the value: in its DETAIL, in
# its message, or as the context of an error raised while handling it (a ROLLBACK on a broken
# connection, say).
OUTSIDE = {
    "duplicate-key": "INSERT INTO seen VALUES (:e), (:e)",
    "data-exception": "SELECT CAST(:e AS integer)",
    "duplicate-key-while-handling": "INSERT INTO seen VALUES (:e), (:e)",
}


@pytest.mark.parametrize("case", list(OUTSIDE))
def test_a_server_error_outside_a_migration_is_logged_and_answered_without_its_values(
    owner_secret, warehouse_db, answers, capsys, caplog, log_lines, case
):
    """A server error the step meets outside a migration (the lock, the grants) reaches the
    handler as pg8000 raised it, or as another error's context: the answer's reason names
    it by SQLSTATE and the log carries that reason, not the error's text or traceback."""
    email = STAFF["email_address"]

    def step(settings):
        con = connect(warehouse_db)
        try:
            con.run("CREATE TEMP TABLE seen (email VARCHAR PRIMARY KEY)")
            con.run(OUTSIDE[case], e=email)
        except Exception:
            if case.endswith("-while-handling"):
                raise RuntimeError("rollback failed")  # noqa: B904  # the server error its context
            raise
        finally:
            con.close()
        return {}

    event = migrate_warehouse.CloudFormationCustomResourceEvent(cfn_event("Create"))
    answer = migrate_warehouse.handle(event, step=step, put=lambda url, body: None)

    assert answer["Status"] == "FAILED"
    assert "migration failed" in log_lines.getvalue()
    out = capsys.readouterr()
    haystack = "\n".join([log_lines.getvalue(), caplog.text, out.out, out.err, json.dumps(answer)])
    assert email not in haystack
    if not case.endswith("-while-handling"):
        assert "[SQLSTATE " in answer["Reason"], answer["Reason"]
