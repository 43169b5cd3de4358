"""ingest -> transform -> load through ``sam local invoke`` in Docker, as a user runs it:
``python -m totes run --invoker sam-local`` against a ``local-aws`` endpoint on loopback and
databases on the embedded PostgreSQL's unix socket (or the loopback server of
``TOTES_TEST_DATABASE_URL``), which the invoker makes reachable from the containers. The
warehouse must equal SQL over the source, the same reference as the in-process end-to-end
tests (``e2e_reference``), after a first cycle and after simulated changes; the first cycle
must print what the in-process run prints for the same source.

Ingest runs with the ADBC driver there (its readers fall back to pg8000 only when
``adbc_driver_postgresql`` is not importable): the invoke image SAM built for ingest must hold
the local ADBC layer, import it from ``/opt/python`` beside the pandas layer's pyarrow, and
query the source with it from inside a container.

The deploy's migration step (``MigrateFunction``, the ``WarehouseMigration`` custom
resource: CloudFormation invokes it, the chain never does) runs the same way, one ``sam local
invoke`` per custom-resource event, answering a local stand-in for CloudFormation's
``ResponseURL``; without its layers it cannot even import, which only a run in the Lambda
runtime shows.

Runs when Docker answers, the SAM CLI is installed (``make build``) and the Lambda base image
is present (pulled, or the stand-in from ``tools/lambda_image/build.sh``); otherwise skipped
with the reason. ``TOTES_REQUIRE_DOCKER=1`` (CI) turns that skip into a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from e2e_reference import expected_warehouse, source_state, warehouse_problems
from local_processes import PYTHONPATH, local_aws

from totes.warehouse.migrations import available
from totes.warehouse.roles import effective_privileges, expected_privileges, fact_sequences
from totes_tools.local.aws import aws_environment, client
from totes_tools.local.sam_local import (
    Forwarder,
    SamLocal,
    SamLocalError,
    base_image,
    docker_host,
    find_sam,
    require_image,
)
from totes_tools.source.generator import generate
from totes_tools.source.simulator import Simulator

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

REQUIRE_DOCKER_ENV = "TOTES_REQUIRE_DOCKER"
SCALE = 300


@pytest.fixture(scope="module")
def sam_local_ready() -> None:
    """Docker answers, SAM CLI and the base image are there; else skip (or fail in CI)."""
    try:
        host = docker_host()
        find_sam(REPO)
        require_image(base_image(host.architecture))
    except SamLocalError as exc:
        if os.environ.get(REQUIRE_DOCKER_ENV) == "1":
            pytest.fail(f"{REQUIRE_DOCKER_ENV}=1 but sam local invoke cannot run here: {exc}")
        pytest.skip(f"sam local invoke cannot run here: {exc}")


def totes(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    for key in ("AWS_ENDPOINT_URL", "RAW_BUCKET", "PROCESSED_BUCKET"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "totes", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )


def run(source, warehouse, *extra: str) -> subprocess.CompletedProcess:
    done = totes(
        "run",
        "--source-url",
        source.to_url(),
        "--warehouse-url",
        warehouse.to_url(),
        *extra,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def without_timings(report: str) -> str:
    """A run's report without what differs between two runs of the same cycle."""
    report = re.sub(r"\d+\.\d+ s", "S s", report)
    report = re.sub(r"warehouse freshness: .*", "warehouse freshness: F", report)
    # A run against a given emulator (--endpoint-url) keeps its metrics for the dashboard and
    # says where; a run on its own private emulator has none to keep.
    return re.sub(r"(?m)^metrics: .*\n", "", report)


def containers_left() -> list[str]:
    done = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", "label=sam.cli.container.type=lambda"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.split()


def test_the_chain_in_docker_loads_what_sql_over_the_source_gives_and_prints_the_same_report(
    sam_local_ready, source_db, fresh_db, pg_connect
):
    source = pg_connect(source_db)
    generate(source, SCALE, seed=11)
    before = source_state(source)
    warehouse, in_process_warehouse = fresh_db("wh"), fresh_db("wh")
    containers_before = set(containers_left())

    with local_aws() as endpoint:
        first = run(source_db, warehouse, "--invoker", "sam-local", "--endpoint-url", endpoint)

        assert warehouse_problems(source, pg_connect(warehouse), expected_warehouse(before)) == []
        in_process = run(source_db, in_process_warehouse)  # its own private emulator
        assert without_timings(first.stdout) == without_timings(in_process.stdout)
        assert "python -m totes dashboard draws them" in first.stdout
        assert "fact_sales_order" in first.stdout

        simulator = Simulator(source, seed=7)
        for _ in range(40):
            simulator.step()
        after = source_state(source)
        assert {"fact_sales_order", "fact_payment"} <= {t for t in after if after[t] != before[t]}

        second = run(source_db, warehouse, "--invoker", "sam-local", "--endpoint-url", endpoint)

    ingest = next(line for line in second.stdout.splitlines() if line.startswith("  ingest"))
    assert " 1 batch(es)" in ingest, second.stdout
    assert (
        warehouse_problems(source, pg_connect(warehouse), expected_warehouse(before, after)) == []
    )
    assert set(containers_left()) <= containers_before  # sam removed every container it made
    count = source.run("SELECT count(*) FROM sales_order")[0][0]
    assert ingest_image_queries_with_adbc(source_db, "SELECT count(*) AS n FROM sales_order") == {
        "driver": "/opt/python/adbc_driver_postgresql/__init__.py",
        "pyarrow": "/opt/python/pyarrow/__init__.py",
        "rows": [{"n": count}],
    }


ADBC_QUERY = """
import json, sys
import pyarrow, adbc_driver_postgresql, adbc_driver_postgresql.dbapi as dbapi
with dbapi.connect(sys.argv[1]) as conn, conn.cursor() as cur:
    cur.execute(sys.argv[2])
    rows = cur.fetch_arrow_table().to_pylist()
print(json.dumps({"driver": adbc_driver_postgresql.__file__, "pyarrow": pyarrow.__file__,
                  "rows": rows}))
"""


def ingest_image_queries_with_adbc(creds, sql: str) -> dict:
    """``sql``'s rows, read by ADBC in the image SAM built for ingest (the one with the local
    ADBC layer, recorded by the invoker) on the Lambda path /opt/python, through a forwarder
    from Docker's bridge to the source (as the invoker gives containers the databases)."""
    images = json.loads((REPO / ".aws-sam" / "local" / "images.json").read_text())
    with_adbc = [i for i, arns in images.items() if any("totes-local-adbc-" in a for a in arns)]
    created = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Created}} {{index .RepoTags 0}}",
         *with_adbc],
        capture_output=True, text=True, check=False,
    ).stdout.split("\n")  # fmt: skip
    newest = max(line for line in created if line.strip()).split()[-1]  # this run's ingest image
    host = docker_host()
    if creds.unix_socket_dir:
        target: tuple[str, int] | str = f"{creds.unix_socket_dir}/.s.PGSQL.{creds.port}"
    else:
        target = (creds.host, creds.port)
    forwarder = Forwarder(host.bind_host, target)
    try:
        url = dataclasses.replace(
            creds,
            host=host.container_host,
            port=forwarder.port,
            unix_socket_dir=None,
            sslmode="disable",
        ).to_url()
        done = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "/var/lang/bin/python3.13",
             "--env", "PYTHONPATH=/opt/python", newest, "-c", ADBC_QUERY, url, sql],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        forwarder.close()
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- the deploy's migration step (MigrateFunction, the WarehouseMigration custom resource) ---

MIGRATE = "MigrateFunction"
MIGRATE_TIMEOUT_SECONDS = 900  # template.yaml: MigrateFunction's Timeout
STACK_ID = "arn:aws:cloudformation:eu-west-2:000000000000:stack/totes-local/1"


class CloudFormationStandIn:
    """What CloudFormation does with a custom resource's answer, locally: an HTTP server on
    the address containers reach this machine at (Docker's bridge gateway, where the
    invoker's forwarders listen too; Docker Desktop: loopback, reached as
    host.docker.internal) that keeps every PUT to a ``ResponseURL`` it handed out."""

    def __init__(self, host) -> None:
        answers: list[tuple[str, dict]] = []
        self.answers = answers

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answers.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((host.bind_host, 0), Handler)
        self._base = f"http://{host.container_host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def response_url(self, request_id: str) -> str:
        return f"{self._base}/cloudformation-response/{request_id}?X-Amz-Signature=local"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def cfn_event(request_type: str, response_url: str, request_id: str, physical: str | None):
    event = {
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:eu-west-2:000000000000:function:totes-local-migrate",
        "ResponseURL": response_url,
        "StackId": STACK_ID,
        "RequestId": request_id,
        "LogicalResourceId": "WarehouseMigration",
        "ResourceType": "Custom::WarehouseMigration",
        "ResourceProperties": {"Code": "layer:1", "Schema": "public"},
    }
    if physical:
        event["PhysicalResourceId"] = physical
    return event


def warehouse_state(con) -> dict[str, object]:
    """What the migration step makes of a warehouse: its tables and the migrations recorded
    in ``schema_migrations`` (as ``NNNN_name``)."""
    tables = con.run("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    recorded = []
    if ["schema_migrations"] in tables:
        rows = con.run("SELECT version, name FROM schema_migrations ORDER BY version")
        recorded = [f"{version:04d}_{name}" for version, name in rows]
    return {"tables": sorted(t for [t] in tables), "migrations": recorded}


def test_the_deploys_migration_step_in_docker_migrates_grants_and_always_answers_cloudformation(
    sam_local_ready, source_db, warehouse_db, new_role, pg_connect
):
    """MigrateFunction run by ``sam local invoke`` in the Lambda runtime container, with the
    template's layers, as CloudFormation runs it for the WarehouseMigration custom resource:
    its answer PUT to the event's ResponseURL (a local stand-in) for Create, Update and
    Delete, and FAILED with an operator-safe reason, not a hang, when the owner's database
    cannot be reached or the owner's secret does not exist. The function cannot even import
    without its layers: then no answer arrives and the invoke fails (the mutation this test
    was checked against)."""
    loader = new_role(warehouse_db)
    warehouse = pg_connect(warehouse_db)
    containers_before = set(containers_left())
    owner_secret = f"totes-local-warehouse-owner-{uuid.uuid4().hex[:8]}"
    lost_secret = f"{owner_secret}-unreachable"
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(local_aws())
        stack.enter_context(aws_environment(endpoint))  # this process's clients: the emulator
        sam = stack.enter_context(SamLocal(endpoint, source_db, warehouse_db, repo=REPO))
        cloudformation = CloudFormationStandIn(sam.docker)
        stack.callback(cloudformation.close)
        # The owner's secret as containers read it (the invoker's forwarder to the warehouse),
        # and one naming a port on the same address where nothing listens, with a password
        # that must never appear in an answer.
        unreachable = socket.socket()
        stack.callback(unreachable.close)
        unreachable.bind((sam.docker.bind_host, 0))  # bound, never listening: refused
        password = f"never-in-a-reason-{uuid.uuid4().hex}"
        lost = dataclasses.replace(
            sam.container_warehouse, port=unreachable.getsockname()[1], password=password
        )
        sm = client("secretsmanager", endpoint)
        sm.create_secret(Name=owner_secret, SecretString=sam.container_warehouse.to_secret())
        sm.create_secret(Name=lost_secret, SecretString=lost.to_secret())

        def invoke(request_type: str, secret: str, physical: str | None = None) -> dict:
            request_id = str(uuid.uuid4())
            event = cfn_event(
                request_type, cloudformation.response_url(request_id), request_id, physical
            )
            returned = sam.invoke_function(
                MIGRATE,
                event,
                {
                    "WAREHOUSE_OWNER_SECRET_ID": secret,
                    "WAREHOUSE_SCHEMA": "public",
                    "WAREHOUSE_LOADER_ROLE": loader.user,
                    "POWERTOOLS_SERVICE_NAME": "migrate",
                },
                MIGRATE_TIMEOUT_SECONDS,
            )
            # Exactly one answer, PUT to this request's ResponseURL.
            path = f"/cloudformation-response/{request_id}?X-Amz-Signature=local"
            [answer] = [a for p, a in cloudformation.answers if p == path]
            assert returned == answer  # the handler returns what it PUT
            assert {k: answer[k] for k in ("RequestId", "StackId", "LogicalResourceId")} == {
                "RequestId": request_id,
                "StackId": STACK_ID,
                "LogicalResourceId": "WarehouseMigration",
            }
            assert answer["PhysicalResourceId"] == (physical or "WarehouseMigration-warehouse")
            return answer

        # The owner's database unreachable: FAILED, naming where, never the secret's password.
        failed = invoke("Create", lost_secret)
        assert failed["Status"] == "FAILED"
        assert failed["Reason"].startswith(f"cannot reach {lost.where}"), failed["Reason"]
        assert password not in json.dumps(failed)
        assert failed["Data"] == {}
        assert warehouse_state(warehouse) == {"tables": [], "migrations": []}

        # The owner's secret wrong (no such secret): FAILED, naming the secret id it read.
        missing = invoke("Update", f"{owner_secret}-none", "WarehouseMigration-warehouse")
        assert missing["Status"] == "FAILED"
        assert missing["Reason"].startswith(f"cannot read database secret '{owner_secret}-none'")
        assert warehouse_state(warehouse) == {"tables": [], "migrations": []}

        labels = [m.label for m in available()]
        created = invoke("Create", owner_secret)
        assert created["Status"] == "SUCCESS", created["Reason"]
        assert created["Data"] == {"Applied": ",".join(labels), "LoaderRole": loader.user}
        migrated = warehouse_state(warehouse)
        assert migrated["migrations"] == labels
        held = effective_privileges(warehouse, loader.user, "public")
        assert held == expected_privileges(fact_sequences(warehouse, "public"), "public")

        updated = invoke("Update", owner_secret, created["PhysicalResourceId"])
        assert updated["Status"] == "SUCCESS", updated["Reason"]
        assert updated["Data"] == {"Applied": "none", "LoaderRole": loader.user}

        # Delete drops nothing and does not even connect: it answers SUCCESS with the owner's
        # database unreachable, and the warehouse is as it was.
        for secret in (owner_secret, lost_secret):
            deleted = invoke("Delete", secret, created["PhysicalResourceId"])
            assert deleted["Status"] == "SUCCESS", deleted["Reason"]
            assert deleted["Reason"] == "the warehouse outlives the stack: nothing dropped"
        assert warehouse_state(warehouse) == migrated
        assert effective_privileges(warehouse, loader.user, "public") == held

    assert len(cloudformation.answers) == 6
    assert set(containers_left()) <= containers_before  # sam removed every container it made
