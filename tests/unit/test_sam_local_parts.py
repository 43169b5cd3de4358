"""The sam-local invoker's pure parts: reading ``sam local invoke``'s output (payload, error
payload, SAM's own failures, the function timeout), relaying what containers print, the
local layer sets, SAM's naming, the template's declared variables, SAM's environment and
the forwarders. No Docker, no SAM CLI (tests/integration/test_sam_local_invoker.py drives the
invoker with a stand-in sam; tests/e2e/test_sam_local.py runs the real thing)."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from pathlib import Path

import pytest

from totes.observability import logger
from totes_tools.local import sam_local
from totes_tools.local.sam_local import (
    Forwarder,
    HandlerFailed,
    InvokeFailed,
    declared_variables,
    invoke_image,
    is_loopback,
    layer_cache_name,
    managed_layer_requirements,
    relay,
    result_of,
    runtime_pins,
    sam_environment,
)

REPO = Path(__file__).resolve().parents[2]

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


def test_a_payload_is_the_handlers_return_value():
    assert result_of("IngestFunction", 0, '{"batches": ["b1"]}\n', "") == {"batches": ["b1"]}


def test_an_error_payload_raises_an_exception_named_by_its_error_type():
    payload = {
        "errorMessage": "An error occurred (NoSuchKey) when calling the GetObject operation",
        "errorType": "NoSuchKey",
        "requestId": "r",
        "stackTrace": ['  File "/var/task/app.py", line 1\n'],
    }
    with pytest.raises(HandlerFailed) as caught:
        result_of("TransformFunction", 0, json.dumps(payload), "")
    # As the in-process chain reports an exception: "<type>: <message>"
    assert f"{type(caught.value).__name__}: {caught.value}" == (
        "NoSuchKey: An error occurred (NoSuchKey) when calling the GetObject operation"
    )
    assert caught.value.stack_trace == payload["stackTrace"]


def test_sam_failing_itself_raises_with_its_error_line():
    err = "Invoking app.handler (python3.13)\nError: Docker is not reachable\n"
    with pytest.raises(InvokeFailed, match="exited with 1: Error: Docker is not reachable"):
        result_of("LoadFunction", 1, "", err)


def test_no_payload_or_a_non_json_payload_is_a_failure():
    with pytest.raises(InvokeFailed, match="returned no payload"):
        result_of("LoadFunction", 0, "", "START\nEND\n")
    with pytest.raises(InvokeFailed, match="not JSON"):
        result_of("LoadFunction", 0, "oops", "")


def test_the_function_timeout_reads_as_lambdas():
    """SAM enforces the Timeout, then exits 0 with nothing on stdout (checked with SAM 1.170)."""
    err = (
        "Function 'LoadFunction' timed out after 900 seconds\n"
        "No response from invoke container for LoadFunction\n"
    )
    with pytest.raises(InvokeFailed, match=r"^Task timed out after 900\.00 seconds$"):
        result_of("LoadFunction", 0, "", err)


@pytest.fixture
def log_level():
    before = logger.log_level
    yield logger.setLevel
    logger.setLevel(before)


def test_relay_keeps_metrics_and_records_at_this_processs_level_and_drops_sam_and_rie_lines(
    capsys, log_level
):
    log_level("ERROR")
    info = json.dumps({"level": "INFO", "message": "batch transformed"})
    error = json.dumps({"level": "ERROR", "message": "load failed"})
    relay(
        "\n".join(
            [
                "Invoking app.handler (python3.13)",
                "Mounting /x as /var/task:ro,delegated, inside runtime container",
                "SAM_CONTAINER_ID: 0123456789abcdef",
                EMF,
                info,
                error,
                "END RequestId: r",
                "[ERROR] [1795988851379] LAMBDA_RUNTIME Failed to get next invocation."
                " No Response from endpoint",
            ]
        )
    )
    assert capsys.readouterr().out.splitlines() == [EMF, error]
    log_level("INFO")
    relay(info)
    assert capsys.readouterr().out.splitlines() == [info]


def test_the_managed_layers_are_made_of_the_runtime_pins_except_what_the_runtime_provides():
    pins = runtime_pins(REPO / "requirements" / "runtime.txt")
    layers = managed_layer_requirements(pins)
    names = {kind: {line.split("==")[0] for line in lines} for kind, lines in layers.items()}
    assert names == {
        "pandas": {"numpy", "pandas", "pg8000", "pyarrow", "scramp"},
        "powertools": {"aws-lambda-powertools"},
    }
    assert all("==" in line for lines in layers.values() for line in lines)
    assert "boto3" in pins  # provided by the runtime image, so in neither layer


def test_sams_layer_cache_name_and_image_tag_are_derived_from_the_arns():
    """The formulas; tests/template/test_sam_local_assumptions.py checks them against the
    installed SAM CLI."""
    arn = "arn:aws:lambda:eu-west-2:000000000000:layer:totes-local-totes-abc:1"
    digest = hashlib.sha256(arn.encode()).hexdigest()[:10]
    assert layer_cache_name(arn) == f"totes-local-totes-abc-1-{digest}"
    tag = invoke_image("x86_64", [arn])
    assert tag.startswith("samcli/lambda-python:3.13-x86_64-")
    assert len(tag.rsplit("-", 1)[1]) == 25


def test_every_function_declares_the_emulator_endpoint_and_its_own_variables():
    declared = declared_variables(REPO / "template.yaml")
    # MigrateFunction is the deploy's step (a custom resource), never invoked by sam-local; the
    # Iceberg target's function (IcebergTarget=ENABLED) declares its variables too, though
    # `sam local invoke` is not wired for it (docs/iceberg.md, "Local runs")
    assert set(declared) == {
        "IngestFunction",
        "TransformFunction",
        "LoadFunction",
        "MigrateFunction",
        "IcebergFunction",
    }
    assert "WAREHOUSE_SECRET_ID" not in declared["MigrateFunction"]  # the owner's secret only
    assert all("AWS_ENDPOINT_URL" in names for names in declared.values())
    assert {"PROCESSED_BUCKET", "ICEBERG_WAREHOUSE", "ICEBERG_DATABASE"} <= declared[
        "IcebergFunction"
    ]
    assert "WAREHOUSE_SECRET_ID" not in declared["IcebergFunction"]
    assert {"RAW_BUCKET", "SOURCE_SECRET_ID"} <= declared["IngestFunction"]
    assert "WAREHOUSE_SECRET_ID" not in declared["IngestFunction"]
    assert {"PROCESSED_BUCKET", "WAREHOUSE_SECRET_ID"} <= declared["LoadFunction"]


def test_sam_runs_with_dummy_credentials_and_no_profile_whatever_the_shell_holds(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREALKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "real-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "real-token")
    monkeypatch.setenv("AWS_PROFILE", "prod")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5055")
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    env = sam_environment("http://127.0.0.1:5055")
    assert env["AWS_ACCESS_KEY_ID"] == "testing"
    assert env["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert "AWS_SESSION_TOKEN" not in env
    assert "AWS_PROFILE" not in env
    assert "AWS_ENDPOINT_URL" not in env  # SAM would fill a declared variable from its shell
    assert env["AWS_ENDPOINT_URL_STS"] == "http://127.0.0.1:5055"
    assert env["AWS_CONFIG_FILE"] == env["AWS_SHARED_CREDENTIALS_FILE"] == "/dev/null"
    assert env["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    assert env["SAM_CLI_TELEMETRY"] == "0"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("172.17.0.1", False),
        ("db.example", False),
        (None, False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def _echo_server(sock: socket.socket) -> threading.Thread:
    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        out = b""
        while data := conn.recv(4096):
            out += data
    return out


def test_a_forwarder_pipes_tcp_and_unix_socket_connections_both_ways(tmp_path):
    tcp = socket.create_server(("127.0.0.1", 0))
    unix_path = str(tmp_path / ".s.PGSQL.5432")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen()
    for server in (tcp, unix):
        _echo_server(server)
    forwarders = [
        Forwarder("127.0.0.1", ("127.0.0.1", tcp.getsockname()[1])),
        Forwarder("127.0.0.1", unix_path),
    ]
    try:
        big = b"x" * 300_000
        for forwarder in forwarders:
            assert _round_trip(forwarder.port, b"hello") == b"HELLO"
            assert _round_trip(forwarder.port, big) == big.upper()
    finally:
        for forwarder in forwarders:
            forwarder.close()
        tcp.close()
        unix.close()
    with pytest.raises(OSError):
        _round_trip(forwarders[0].port, b"closed")


def test_no_docker_command_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sam_local.shutil, "which", lambda name: None)
    with pytest.raises(sam_local.SamLocalError, match="no `docker` command"):
        sam_local.docker_host()


def test_a_docker_daemon_that_does_not_answer_is_a_clear_error(monkeypatch, tmp_path):
    fake = tmp_path / "docker"
    fake.write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
        " Is the docker daemon running?' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sam_local.shutil, "which", lambda name: str(fake))
    with pytest.raises(sam_local.SamLocalError) as caught:
        sam_local.docker_host()
    assert str(caught.value).startswith("Docker does not answer (`docker info`: Cannot connect")
    assert "start the Docker daemon" in str(caught.value)


def test_the_managed_layers_ssm_parameters_for_an_architecture_follow_the_template():
    assert sam_local.managed_layer_parameters(REPO / "template.yaml", "x86_64") == {
        "pandas": "/aws/service/aws-sdk-pandas/3.16.1/py3.13/x86_64/layer-arn",
        "powertools": "/aws/service/powertools/python/x86_64/python3.13/3.37.0",
    }


def test_the_real_managed_layers_fetched_once_are_used_from_the_cache_then_forgotten(
    tmp_path, monkeypatch
):
    """``sam-local layers --from-aws`` with stubbed AWS: SSM names the ARNs, Lambda gives a
    download location, the zip lands in SAM's cache under the ARN's name; later runs use
    those ARNs (no pip build), ``--local`` goes back to local builds."""
    import zipfile

    import boto3
    from botocore.stub import Stubber

    arns = {
        "pandas": "arn:aws:lambda:eu-west-2:336392948345:layer:AWSSDKPandas-Python313:5",
        "powertools": "arn:aws:lambda:eu-west-2:017000801446:layer:"
        "AWSLambdaPowertoolsPythonV3-python313-x86_64:27",
    }
    ssm = boto3.client(
        "ssm", region_name="eu-west-2", aws_access_key_id="a", aws_secret_access_key="b"
    )
    lam = boto3.client(
        "lambda", region_name="eu-west-2", aws_access_key_id="a", aws_secret_access_key="b"
    )
    ssm_stub, lambda_stub = Stubber(ssm), Stubber(lam)
    for kind, parameter in sam_local.managed_layer_parameters(
        REPO / "template.yaml", "x86_64"
    ).items():
        ssm_stub.add_response(
            "get_parameter", {"Parameter": {"Value": arns[kind]}}, {"Name": parameter}
        )
        layer, version = arns[kind].rsplit(":", 1)
        lambda_stub.add_response(
            "get_layer_version",
            {"Content": {"Location": f"https://example.invalid/{kind}.zip"}},
            {"LayerName": layer, "VersionNumber": int(version)},
        )

    class Session:
        region_name = "eu-west-2"

        def client(self, name, region_name=None):
            return {"ssm": ssm, "lambda": lam}[name]

    def download(url, path):
        kind = url.rsplit("/", 1)[1].removesuffix(".zip")
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(f"python/{kind}_marker.py", "")

    monkeypatch.setattr(sam_local, "_download", download)
    store = sam_local.LayerStore(tmp_path, "x86_64")
    with ssm_stub, lambda_stub:
        assert store.fetch_aws_layers(REPO / "template.yaml", Session()) == arns
    for kind, arn in arns.items():
        assert (store.cache / layer_cache_name(arn) / "python" / f"{kind}_marker.py").is_file()
    assert store.aws_layers() == arns

    built = tmp_path / "TotesLayer"
    (built / "python" / "totes").mkdir(parents=True)
    (built / "python" / "totes" / "__init__.py").write_text("")
    adbc_builds = []
    monkeypatch.setattr(
        store, "_make_adbc", lambda target, folder: adbc_builds.append(folder) or target.mkdir()
    )
    layers = store.prepare(REPO, built)  # no pip: both managed layers are the fetched ones
    assert adbc_builds == [REPO / "layers" / "adbc"]  # ingest's own layer is always local
    assert {k: layers.arns[k] for k in arns} == arns
    assert layers.arns["totes"].startswith(
        "arn:aws:lambda:eu-west-2:000000000000:layer:totes-local-totes-"
    )

    store.forget_aws_layers()
    assert store.aws_layers() == {}


def test_each_function_gets_the_layers_its_template_entry_names_in_that_order():
    """SAM names a function's invoke image after its layers in order, so the images recorded
    for pruning follow the template: ingest has the ADBC layer last, the others do not."""
    shared = ["pandas", "powertools", "totes"]
    layers = sam_local.function_layers(REPO / "template.yaml")
    assert {f: layers[f] for f in sam_local.FUNCTIONS.values()} == {
        "IngestFunction": [*shared, "adbc"],
        "TransformFunction": shared,
        "LoadFunction": shared,
    }
    assert layers["IcebergFunction"] == ["pandas", "totes"]
    arns = {k: sam_local.local_layer_arn(f"totes-local-{k}-0") for k in sam_local.LAYER_PARAMETERS}
    local = sam_local.LocalLayers(arns, REPO)
    assert local.overrides["AdbcLayerArn"] == arns["adbc"]
    assert local.ordered(layers["IngestFunction"]) == [arns[k] for k in (*shared, "adbc")]


def test_the_local_adbc_layer_is_its_makefiles_build_for_the_daemons_architecture(
    tmp_path, monkeypatch
):
    """The local ADBC layer is made by the same Makefile sam build runs for AdbcLayer, for the
    daemon's architecture, once per lock, Makefile and architecture (then reused)."""
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        target = Path(next(a for a in command if a.startswith("ARTIFACTS_DIR=")).split("=", 1)[1])
        (target / "python" / "adbc_driver_postgresql").mkdir(parents=True)
        return sam_local.subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(sam_local.subprocess, "run", run)
    monkeypatch.setattr(
        sam_local.LayerStore, "aws_layers", lambda self: {"pandas": "p", "powertools": "q"}
    )
    built = tmp_path / "TotesLayer"
    (built / "python" / "totes").mkdir(parents=True)
    names = {}
    for architecture in ("x86_64", "arm64", "x86_64"):
        store = sam_local.LayerStore(tmp_path / "state", architecture)
        arn = store.prepare(REPO, built).arns["adbc"]
        names.setdefault(architecture, set()).add(arn)
        assert (store.cache / layer_cache_name(arn) / "python" / "adbc_driver_postgresql").is_dir()
    assert [len(v) for v in names.values()] == [1, 1]
    assert names["x86_64"] != names["arm64"]
    assert len(calls) == 2  # the second x86_64 run reused its build
    for command, machine in zip(calls, ("x86_64", "aarch64"), strict=True):
        assert command[1:5] == [
            "--no-print-directory",
            "-C",
            str(REPO / "layers" / "adbc"),
            "build-AdbcLayer",
        ]
        assert f"PLATFORM={machine}" in command
