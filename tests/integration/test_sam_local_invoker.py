"""The sam-local invoker driven by LocalChain, with a stand-in ``sam`` executable instead of
SAM CLI and Docker: what each ``sam local invoke`` is given (function, event, env-vars,
options, environment), how its answers become results, metrics and failures under the
chain's retry rule and failure queue, and the database secrets containers read.
tests/e2e/test_sam_local.py runs the real SAM CLI in Docker."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from totes.db import DbCredentials
from totes.observability import logger
from totes_tools.local.aws import client
from totes_tools.local.chain import CycleReport, LocalChain
from totes_tools.local.sam_local import (
    LAYER_PARAMETERS,
    DockerHost,
    LayerStore,
    LocalLayers,
    SamLocal,
    SamLocalError,
    declared_variables,
    function_layers,
    local_layer_arn,
)

REPO = Path(__file__).resolve().parents[2]


# A stand-in for `sam local invoke`: records its argv, environment, event and env-vars file,
# reaches the emulator through the address containers are given, then answers per function.
FAKE_SAM = """\
#!{python}
import json, os, sys, urllib.request
argv = sys.argv[1:]
def opt(name):
    return argv[argv.index(name) + 1]
function = argv[2]
env_vars = json.load(open(opt("--env-vars")))[function]
with urllib.request.urlopen(env_vars["AWS_ENDPOINT_URL"] + "/moto-api/", timeout=10) as r:
    reached = r.status
with open({log!r}, "a") as log:
    log.write(json.dumps({{"argv": argv, "env": dict(os.environ), "env_vars": env_vars,
                          "event": json.load(open(opt("--event"))), "reached": reached}}) + "\\n")
print("Invoking app.handler (python3.13)", file=sys.stderr)
print("SAM_CONTAINER_ID: 0123456789abcdef0123", file=sys.stderr)
if function == "IngestFunction":
    print({emf!r}, file=sys.stderr)
    print(json.dumps({{"level": "INFO", "message": "ingest ran"}}), file=sys.stderr)
    print(json.dumps({{"level": "ERROR", "message": "ingest complains"}}), file=sys.stderr)
    print("[ERROR] LAMBDA_RUNTIME Failed to get next invocation. No Response", file=sys.stderr)
    print(json.dumps({{"batches": [], "rows": {{}}}}))
elif function == "TransformFunction":
    print(json.dumps({{"errorMessage": "The specified key does not exist.",
                      "errorType": "NoSuchKey", "stackTrace": ["  File x"]}}))
else:
    print("Error: Docker went away", file=sys.stderr)
    sys.exit(1)
"""

EMF = json.dumps(
    {
        "_aws": {
            "Timestamp": 1,
            "CloudWatchMetrics": [
                {
                    "Namespace": "TerrificTotes",
                    "Dimensions": [["service"]],
                    "Metrics": [{"Name": "IngestBytes", "Unit": "Bytes"}],
                }
            ],
        },
        "service": "ingest",
        "IngestBytes": [42.0],
    }
)


class StandInSamLocal(SamLocal):
    """SamLocal with the Docker, SAM CLI and build steps replaced: a fixed daemon view, the
    stand-in sam, the source template and dummy layers. Forwarders are the real ones."""

    def __init__(self, *args, fake_sam: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.fake_sam = fake_sam

    def _preflight(self) -> None:
        self.docker = DockerHost("x86_64", "127.0.0.1", "127.0.0.1", desktop=False)
        self.sam = self.fake_sam

    def _build(self) -> None:
        self.template = REPO / "template.yaml"
        self.declared = declared_variables(self.template)
        self.function_layers = function_layers(self.template)
        self.store = LayerStore(self.state, "x86_64")
        arns = {k: local_layer_arn(f"totes-local-{k}-0") for k in LAYER_PARAMETERS}
        self.layers = LocalLayers(arns, self.state / "layer-cache")


@pytest.fixture
def invoker(aws, tmp_path, new_stack_names, monkeypatch):
    """A chain whose handlers are the stand-in sam; yields (chain, invoker, calls())."""
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "sam"
    fake.write_text(FAKE_SAM.format(python=sys.executable, log=str(log), emf=EMF))
    fake.chmod(0o755)
    # Real credentials in this process's shell must never reach sam (nor its containers).
    # (A profile is covered by tests/unit/test_sam_local_parts.py: boto3 here would look it up.)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREALLOOKINGKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "real-session-token")
    socket_source = DbCredentials(user="u", dbname="src", unix_socket_dir=str(tmp_path), port=5432)
    loopback_warehouse = DbCredentials(user="w", dbname="wh", host="127.0.0.1", password="pw")
    names = new_stack_names("samlocal")
    with StandInSamLocal(
        aws, socket_source, loopback_warehouse, state_dir=tmp_path / "state", fake_sam=fake
    ) as sam:
        chain = LocalChain(aws, names, socket_source, loopback_warehouse, handlers=sam.handlers)
        sam.bind(chain)
        chain.prepare(migrate=False)

        def calls() -> list[dict]:
            return [json.loads(line) for line in log.read_text().splitlines()]

        yield chain, sam, calls


def test_ingest_is_one_sam_local_invoke_with_the_chains_event_env_and_the_local_options(
    invoker, capsys
):
    chain, sam, calls = invoker
    before = logger.log_level
    logger.setLevel("ERROR")
    try:
        report = chain.ingest()
    finally:
        logger.setLevel(before)

    assert report.ok, report.format()
    [call] = calls()
    argv = call["argv"]
    assert argv[:3] == ["local", "invoke", "IngestFunction"]
    assert "--skip-pull-image" in argv
    assert argv[argv.index("--template-file") + 1] == str(REPO / "template.yaml")
    overrides = argv[argv.index("--parameter-overrides") + 1 :]
    assert overrides == [
        "Architecture=x86_64",
        *(
            f"{param}={local_layer_arn(f'totes-local-{kind}-0')}"
            for kind, param in (
                ("pandas", "PandasLayerArn"),
                ("powertools", "PowertoolsLayerArn"),
                ("totes", "TotesLayerArn"),
                ("adbc", "AdbcLayerArn"),
            )
        ),
    ]
    assert call["event"]["source"] == "aws.scheduler"
    # The function's environment: what the chain gives it, with the emulator reached through
    # a forwarder (a container cannot reach this machine's loopback), and nothing undeclared.
    assert call["env_vars"] == {
        "RAW_BUCKET": chain.names.raw_bucket,
        "SOURCE_SECRET_ID": chain.names.source_secret,
        "POWERTOOLS_SERVICE_NAME": "ingest",
        "AWS_ENDPOINT_URL": sam.container_endpoint,
        "PROCESSED_BUCKET": chain.names.processed_bucket,  # the loaded marker (issue 15)
    }
    assert sam.container_endpoint != chain.endpoint_url
    assert call["reached"] == 200
    # sam's own environment: dummy credentials, no session token or profile, STS on the emulator
    env = call["env"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("testing", "testing")
    assert "AWS_SESSION_TOKEN" not in env
    assert env["AWS_ENDPOINT_URL_STS"] == chain.endpoint_url
    # The metrics the handler emitted reach the report; its ERROR record is shown, its INFO
    # record (below this process's level), SAM's lines and the runtime's teardown line are not.
    stage = report.stages["ingest"]
    assert stage.invocations == 1
    assert stage.metric_total("IngestBytes") == {"": 42.0}
    out = capsys.readouterr().out
    assert "ingest complains" in out
    assert "ingest ran" not in out
    assert "Invoking" not in out
    assert "Failed to get next invocation" not in out


def test_the_secrets_hold_the_databases_as_given_again_after_the_run(
    aws, tmp_path, new_stack_names
):
    fake = tmp_path / "sam"
    fake.write_text("#!/bin/sh\nexit 0\n")
    db = DbCredentials(user="u", dbname="d", host="127.0.0.1")
    chain = None
    with StandInSamLocal(aws, db, db, state_dir=tmp_path / "s", fake_sam=fake) as sam:
        chain = LocalChain(aws, new_stack_names("samlocal"), db, db, handlers=sam.handlers)
        sam.bind(chain)
        chain.prepare(migrate=False)
        sam.publish_secrets(chain.names)
    sm = client("secretsmanager", aws)
    stored = sm.get_secret_value(SecretId=chain.names.source_secret)["SecretString"]
    assert stored == db.to_secret()


def test_containers_read_the_database_secrets_as_they_reach_the_databases(invoker):
    chain, _, _ = invoker
    chain.ingest()
    sm = client("secretsmanager", chain.endpoint_url)
    for secret_id, given in (
        (chain.names.source_secret, chain.source),
        (chain.names.warehouse_secret, chain.warehouse),
    ):
        stored = json.loads(sm.get_secret_value(SecretId=secret_id)["SecretString"])
        assert stored["host"] == "127.0.0.1"  # the daemon's container host
        assert stored["port"] != given.port  # a forwarder's port
        assert stored["sslmode"] == "disable"
        assert (stored["username"], stored["dbname"]) == (given.user, given.dbname)
    # chain.prepare() writes the host view again; the next invoke restores the container view
    chain.prepare(migrate=False)
    chain.ingest()
    stored = json.loads(sm.get_secret_value(SecretId=chain.names.source_secret)["SecretString"])
    assert stored["host"] == "127.0.0.1"
    assert stored["sslmode"] == "disable"


def test_a_handler_error_is_retried_by_the_chains_rule_then_goes_to_the_failure_queue(invoker):
    chain, _, calls = invoker
    event = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "s3": {
                    "bucket": {"name": chain.names.raw_bucket},
                    "object": {"key": "manifests/20990101T000000000000-000.json"},
                },
            }
        ]
    }
    # The manifest exists (a redrive of data that is gone is reported, not invoked); the stand-in
    # sam answers every invoke with the handler's error payload.
    chain.raw.put_bytes(event["Records"][0]["s3"]["object"]["key"], b"{}", "application/json")
    chain.sqs.send_message(
        QueueUrl=chain._queue_url(chain.names.failure_queue),
        MessageBody=json.dumps({"requestPayload": event}),
    )
    report = chain.replay_failures(CycleReport())

    assert [c["argv"][2] for c in calls()] == ["TransformFunction"] * 3
    [failure] = report.failures
    assert (failure.stage, failure.attempts) == ("transform", 3)
    assert failure.error == "NoSuchKey: The specified key does not exist."
    # a redrive that fails again leaves the record as it was (issue 15: its age says since
    # when), no second one
    [record] = chain.failures()
    assert record == {"requestPayload": event}


def test_sam_failing_itself_is_a_failed_attempt_too(invoker):
    chain, _, calls = invoker
    report = CycleReport()
    chain._invoke("load", {"Records": []}, "b1", report)
    assert len(calls()) == 3
    [failure] = report.failures
    assert failure.error == (
        "InvokeFailed: sam local invoke LoadFunction exited with 1: Error: Docker went away"
    )


def test_a_variable_no_function_declares_is_refused_before_anything_runs(invoker):
    chain, sam, _ = invoker
    other = LocalChain(
        chain.endpoint_url,
        chain.names,
        chain.source,
        chain.warehouse,
        env={"TOTES_NOT_IN_THE_TEMPLATE": "1"},
    )
    with pytest.raises(SamLocalError, match="TOTES_NOT_IN_THE_TEMPLATE: not declared"):
        sam.bind(other)


def test_leaving_stops_the_forwarders_and_removes_the_scratch_files(aws, tmp_path):
    fake = tmp_path / "sam"
    fake.write_text("#!/bin/sh\nexit 0\n")
    db = DbCredentials(user="u", dbname="d", host="127.0.0.1")
    with StandInSamLocal(aws, db, db, state_dir=tmp_path / "s", fake_sam=fake) as sam:
        workdir = sam.workdir
        ports = [f.port for f in sam._forwarders]
        assert workdir.is_dir()
        assert len(ports) == 3  # the emulator and the two databases
    assert not workdir.exists()
    assert sam._forwarders == []
    for port in ports:
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
