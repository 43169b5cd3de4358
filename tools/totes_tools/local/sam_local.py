"""The local chain with every handler invocation run as ``sam local invoke`` of the built
template, in Docker, offline (``python -m totes run --invoker sam-local``).

:class:`~totes_tools.local.chain.LocalChain` keeps doing what it does in-process: the stack in
the emulator, S3 -> SQS routing, the retry rule, the failure queue and the report. Only its
three handler callables change (its ``handlers=`` injection): each one writes the event to a
file and runs ``sam local invoke <Function> -e <event> --env-vars <file>``. What containers
need that the in-process chain does not, :class:`SamLocal` provides for the run's duration:

- **Addresses containers can reach.** A container sits on Docker's bridge network: the host's
  loopback and unix sockets are out of its reach. Each local address the run was given (the
  AWS endpoint; a loopback or unix-socket database) gets a TCP forwarder bound on the bridge's
  gateway, and containers are given that address: ``AWS_ENDPOINT_URL`` in ``--env-vars``, and
  the two database secrets in the emulator hold the *container view* (gateway host and port,
  ``sslmode=disable``: the server is local, so it was never reached over TLS in-process
  either). Any other address is given as it is.
- **The layers, without AWS.** The two managed layers are built from
  ``requirements/runtime.txt`` (what they ship) for the daemon's architecture, the ADBC layer
  (ingest's only) by its own ``layers/adbc/Makefile`` from its hash-pinned lock for the daemon's
  architecture (the deployed AdbcLayer is that build for arm64), and the totes layer is copied
  from the build; all four are seeded into a SAM layer cache under the names SAM gives ARN
  layers and passed as ARN parameter overrides (each function gets the ones its ``Layers``
  name). SAM then downloads nothing, and
  because no layer is "defined in the template" it reuses its invoke image between invokes
  instead of rebuilding it each time. The names carry content hashes: new code or new pins
  give a new image once.
- **No real credentials in containers.** SAM copies its own session's credentials into every
  container: it runs with the emulator's dummy credentials and a clean environment (no
  profile, no config files), and its account-id lookup (STS) is answered by the emulator
  instead of timing out against AWS.

SAM exits 0 when a handler raises; the failure is in the payload (``errorType``,
``errorMessage``), which is turned into an exception here so the chain retries it and sends it
to the failure queue exactly as it does for an in-process exception.

Relies on SAM CLI internals (pinned in requirements/sam.txt): the layer cache names, the invoke
image tag and the rebuild rule. ``tests/template/test_sam_local_assumptions.py`` checks them
against the installed SAM CLI, so an upgrade that changes them fails loudly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import ipaddress
import itertools
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import socketserver
import subprocess  # nosec B404 - runs docker and the SAM CLI, argument lists only
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from totes.db import DbCredentials
from totes.errors import TotesError
from totes.observability import logger
from totes_tools.local.aws import LOCAL_ENV, REGION, StackNames, client
from totes_tools.repository import repository_root

if TYPE_CHECKING:
    from totes_tools.local.chain import Handler, LocalChain

STAGES = ("ingest", "transform", "load")
FUNCTIONS = {"ingest": "IngestFunction", "transform": "TransformFunction", "load": "LoadFunction"}
PYTHON_VERSION = "3.13"
# The account in the local layer ARNs: any 12 digits do, SAM only hashes the ARN.
LOCAL_ACCOUNT = "000000000000"
LAYER_PARAMETERS = {
    "pandas": "PandasLayerArn",
    "powertools": "PowertoolsLayerArn",
    "totes": "TotesLayerArn",
    "adbc": "AdbcLayerArn",
}
# The ADBC layer's folder (its Makefile builds it, for sam build and for local runs alike).
ADBC_LAYER_DIR = Path("layers") / "adbc"
ADBC_MACHINES = {"arm64": "aarch64", "x86_64": "x86_64"}
# requirements/runtime.txt: what the Lambda runtime itself provides (not in a layer), and
# what the Powertools layer ships; every other pin is the AWS SDK for pandas layer's.
RUNTIME_PROVIDED = frozenset({"boto3"})
POWERTOOLS_LAYER = frozenset({"aws-lambda-powertools"})
# Variables SAM sets in every container itself (the chain sets them in-process).
SAM_PROVIDED = frozenset({"AWS_LAMBDA_FUNCTION_NAME"})
# What awslambdaric's poll thread prints when SAM stops the emulator after END/REPORT.
RIE_TEARDOWN = "Failed to get next invocation"
# Beyond the function's own timeout: SAM start-up, a first image build, container teardown.
INVOKE_MARGIN_SECONDS = 180
DOCKER_TIMEOUT_SECONDS = 20
# Local layer builds and SAM invoke images kept per kind (most recently used first).
KEEP_BUILDS = 3
# The parts of the user's environment SAM CLI and the Docker client need; nothing AWS_*.
SAM_ENV_KEEP = (
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "XDG_RUNTIME_DIR",
    "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
)  # fmt: skip


class SamLocalError(TotesError):
    """The sam-local path cannot run here (Docker, SAM CLI, image, template); nothing ran."""


class InvokeFailed(Exception):
    """``sam local invoke`` itself failed (non-zero exit, no payload, a timeout)."""


class HandlerFailed(Exception):
    """A handler raised inside its container: Lambda's error payload as an exception whose
    class name is the payload's ``errorType`` (so failures read as they do in-process)."""

    stack_trace: list[str]


def handler_error(payload: Mapping[str, Any]) -> HandlerFailed:
    error_type = str(payload.get("errorType") or "Error")
    cls = type(error_type, (HandlerFailed,), {"__module__": __name__})
    exc = cls(str(payload.get("errorMessage", "")))
    exc.stack_trace = [str(line) for line in payload.get("stackTrace") or ()]
    return exc


def is_error_payload(payload: object) -> bool:
    """Lambda's shape for an unhandled error; our handlers never return these keys."""
    return isinstance(payload, dict) and "errorType" in payload and "errorMessage" in payload


# -- SAM CLI's naming (internals; tests/template/test_sam_local_assumptions.py) -----------------


def layer_cache_name(arn: str) -> str:
    """The directory SAM CLI caches an ARN layer in: ``<name>-<version>-<sha256(arn)[:10]>``
    (``samcli.lib.providers.provider.LayerVersion._compute_layer_name``)."""
    _, name, version = arn.rsplit(":", 2)
    return f"{name}-{version}-{hashlib.sha256(arn.encode()).hexdigest()[:10]}"


def invoke_image(architecture: str, layer_arns: list[str]) -> str:
    """The image SAM CLI builds (and reuses by this name) for a python3.13 function with these
    ARN layers in this order (``LambdaImage._generate_docker_image_version``)."""
    names = "-".join(layer_cache_name(arn) for arn in layer_arns)
    digest = hashlib.sha256(names.encode()).hexdigest()[:25]
    return f"samcli/lambda-python:{PYTHON_VERSION}-{architecture}-{digest}"


def base_image(architecture: str) -> str:
    """The Lambda base image SAM CLI derives its invoke images from."""
    return f"public.ecr.aws/lambda/python:{PYTHON_VERSION}-{architecture}"


def local_layer_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{LOCAL_ACCOUNT}:layer:{name}:1"


# -- Docker -----------------------------------------------------------------------------------


def _docker(*args: str, timeout: float = DOCKER_TIMEOUT_SECONDS) -> subprocess.CompletedProcess:
    exe = shutil.which("docker")
    if not exe:
        raise SamLocalError(
            "no `docker` command on PATH: install Docker (Debian/Ubuntu: apt-get install"
            " docker.io; macOS/Windows: Docker Desktop)"
        )
    return subprocess.run(  # noqa: S603 # nosec B603 - fixed argument list
        [exe, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclasses.dataclass(frozen=True)
class DockerHost:
    """The Docker daemon as the invoker uses it."""

    architecture: str  # the daemon's, as Lambda names it: x86_64 | arm64
    container_host: str  # how a container reaches this machine
    bind_host: str  # where forwarders listen so containers reach them
    desktop: bool


def lambda_architecture(machine: str) -> str:
    machine = machine.lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "arm64"
    raise SamLocalError(f"unsupported architecture {machine!r}: Lambda has x86_64 and arm64")


def docker_host(timeout: float = DOCKER_TIMEOUT_SECONDS) -> DockerHost:
    """Ask the daemon (bounded); a clear error when none answers."""
    hint = (
        "start the Docker daemon (Linux: `sudo systemctl start docker`, or `sudo dockerd &`;"
        " macOS/Windows: start Docker Desktop) and retry"
    )
    try:
        result = _docker("info", "--format", "{{json .}}", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SamLocalError(
            f"Docker does not answer (`docker info` took over {timeout:.0f} s): {hint}"
        ) from None
    info: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        info = json.loads(result.stdout or "{}") or {}
    if result.returncode != 0 or info.get("ServerErrors") or not info.get("ServerVersion"):
        detail = " ".join(info.get("ServerErrors") or []) or _tail(result.stderr, 1)
        raise SamLocalError(f"Docker does not answer (`docker info`: {detail}): {hint}")
    architecture = lambda_architecture(str(info.get("Architecture") or platform.machine()))
    if "docker desktop" in str(info.get("OperatingSystem", "")).lower():
        # Docker Desktop routes host.docker.internal to this machine's loopback.
        return DockerHost(architecture, "host.docker.internal", "127.0.0.1", desktop=True)
    gateway = bridge_gateway()
    return DockerHost(architecture, gateway, gateway, desktop=False)


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge (``docker0``), where every container
    started by SAM is attached."""
    result = _docker("network", "inspect", "bridge", "--format", "{{json .IPAM.Config}}")
    if result.returncode != 0:
        raise SamLocalError(f"cannot inspect Docker's bridge network: {result.stderr.strip()}")
    for entry in json.loads(result.stdout or "[]") or []:
        if entry.get("Gateway"):
            gateway = str(entry["Gateway"]).split("/")[0]
            if ipaddress.ip_address(gateway).version == 4:
                return gateway
        if entry.get("Subnet"):
            network = ipaddress.ip_network(entry["Subnet"], strict=False)
            if network.version == 4:
                return str(next(network.hosts()))
    raise SamLocalError("Docker's bridge network has no IPv4 gateway")


def require_image(image: str) -> None:
    if _docker("image", "inspect", "--format", "{{.Id}}", image).returncode != 0:
        raise SamLocalError(
            f"the Lambda base image {image} is not on this machine. With internet:"
            f" `docker pull {image}`; without (e.g. CI): `tools/lambda_image/build.sh` builds a"
            " local stand-in of that name (a test aid, see tools/lambda_image/README.md)"
        )


# -- forwarders -------------------------------------------------------------------------------


class Forwarder:
    """A TCP listener (``bind_host``, ephemeral port) piping each connection to a TCP
    ``(host, port)`` or a unix socket path, in daemon threads of this process."""

    def __init__(self, bind_host: str, target: tuple[str, int] | str):
        self.target = target
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        forwarder = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                forwarder._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False

        self._server = Server((bind_host, 0), Handler)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()

    def _connect(self) -> socket.socket:
        if isinstance(self.target, str):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            return upstream
        return socket.create_connection(self.target, timeout=10)

    def _serve(self, downstream: socket.socket) -> None:
        try:
            upstream = self._connect()
        except OSError as exc:
            logger.warning("forwarder cannot reach its target", extra={"error": str(exc)})
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((upstream, downstream))
        back = threading.Thread(target=_pipe, args=(upstream, downstream), daemon=True)
        back.start()
        _pipe(downstream, upstream)
        back.join()
        with self._lock:
            self._open.difference_update((upstream, downstream))
        upstream.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- local layers -----------------------------------------------------------------------------


def runtime_pins(path: Path) -> dict[str, str]:
    """``requirements/runtime.txt`` as {normalised name: "name==version"}."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0]
        pins[re.sub(r"[-_.]+", "-", name).lower()] = line
    return pins


def managed_layer_requirements(pins: Mapping[str, str]) -> dict[str, list[str]]:
    """What each managed layer ships, from the runtime pins."""
    powertools = [pins[n] for n in sorted(POWERTOOLS_LAYER) if n in pins]
    pandas = [
        line for n, line in sorted(pins.items()) if n not in POWERTOOLS_LAYER | RUNTIME_PROVIDED
    ]
    if not powertools or not pandas:
        raise SamLocalError("requirements/runtime.txt lacks the managed layers' pins")
    return {"pandas": pandas, "powertools": powertools}


def tree_digest(root: Path) -> str:
    """A content hash of a directory tree (names and bytes; caches left out)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or path.suffix == ".pyc" or not path.is_file():
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class LocalLayers:
    """The layers as ARN parameter overrides, seeded in ``cache_dir`` for SAM."""

    arns: dict[str, str]  # kind (pandas, powertools, totes, adbc) -> ARN
    cache_dir: Path

    @property
    def overrides(self) -> dict[str, str]:
        return {LAYER_PARAMETERS[kind]: arn for kind, arn in self.arns.items()}

    def ordered(self, kinds: list[str]) -> list[str]:
        """The ARNs of a function's layers, in its ``Layers`` order (``function_layers``)."""
        return [self.arns[kind] for kind in kinds]


class LayerStore:
    """Local layer builds under ``<root>/layers/<kind>-<hash>/python`` and SAM's layer cache
    ``<root>/layer-cache/<SAM name>`` linking to them."""

    def __init__(self, root: Path, architecture: str):
        self.root = root
        self.architecture = architecture
        self.layers = root / "layers"
        self.cache = root / "layer-cache"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def prepare(self, repo: Path, built_layer: Path) -> LocalLayers:
        with self.locked():
            pins = runtime_pins(repo / "requirements" / "runtime.txt")
            lock = repo / "requirements" / "lock.txt"
            arns = self.aws_layers()
            if arns:
                print(
                    "sam-local: using the AWS managed layers fetched by"
                    " `python -m totes sam-local layers --from-aws`",
                    file=sys.stderr,
                    flush=True,
                )
            for kind, requirements in managed_layer_requirements(pins).items():
                if kind in arns:
                    continue
                key = json.dumps(
                    [requirements, lock.read_text(), self.architecture, PYTHON_VERSION]
                )
                name = f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
                self._ensure(name, lambda t, k=kind, r=requirements: self._pip(t, k, r, lock))
                arns[kind] = self._seed(name)
            name = f"totes-{tree_digest(built_layer)[:12]}"
            self._ensure(name, lambda target: shutil.copytree(built_layer, target))
            arns["totes"] = self._seed(name)
            adbc = repo / ADBC_LAYER_DIR
            key = json.dumps(
                [
                    (adbc / "requirements.lock").read_text(),
                    (adbc / "Makefile").read_text(),
                    self.architecture,
                    PYTHON_VERSION,
                ]
            )
            name = f"adbc-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
            self._ensure(name, lambda target: self._make_adbc(target, adbc))
            arns["adbc"] = self._seed(name)
            self._prune()
            return LocalLayers(arns, self.cache)

    def _ensure(self, name: str, build) -> None:
        target = self.layers / name
        if not target.is_dir():
            self.layers.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.layers))
            try:
                build(scratch / "layer")
                (scratch / "layer").rename(target)  # whole, or not at all
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        os.utime(target)  # most recently used

    def _pip(self, target: Path, kind: str, requirements: list[str], lock: Path) -> None:
        machine = "aarch64" if self.architecture == "arm64" else "x86_64"
        print(
            f"sam-local: building the local {kind} layer"
            f" ({', '.join(requirements)}) for {self.architecture} (once)",
            file=sys.stderr,
            flush=True,
        )
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-compile", "--only-binary=:all:", "--implementation", "cp",
            "--python-version", PYTHON_VERSION,
            # wheels for glibc 2.28 or older (Lambda's Amazon Linux 2023 has 2.34); pip does
            # not widen a manylinux_2_x platform to older ones, so both are named
            "--platform", f"manylinux_2_28_{machine}", "--platform", f"manylinux2014_{machine}",
            "--target", str(target / "python"), "-c", str(lock), *requirements,
        ]  # fmt: skip
        _build(command, "building a local layer failed (pip, needs PyPI or its cache once)")

    def _make_adbc(self, target: Path, folder: Path) -> None:
        """The ADBC layer by the Makefile sam build runs for AdbcLayer, for this architecture
        (the same hash-pinned lock: it pins every platform's wheels)."""
        make = shutil.which("make")
        if not make:
            raise SamLocalError("building the local ADBC layer needs `make` (apt-get install make)")
        print(
            f"sam-local: building the local adbc layer ({folder / 'requirements.lock'})"
            f" for {self.architecture} (once)",
            file=sys.stderr,
            flush=True,
        )
        command = [
            make, "--no-print-directory", "-C", str(folder), "build-AdbcLayer",
            f"ARTIFACTS_DIR={target}", f"PLATFORM={ADBC_MACHINES[self.architecture]}",
            f"PYTHON={sys.executable}",
        ]  # fmt: skip
        _build(
            command,
            "building the local ADBC layer failed (make, pip: needs PyPI or its cache once)",
        )

    def _seed(self, name: str, arn: str | None = None) -> str:
        """Link ``layers/<name>`` into SAM's cache under the name SAM looks ``arn`` up by
        (a local ARN made from ``name`` by default)."""
        arn = arn or local_layer_arn(f"totes-local-{name}")
        self.cache.mkdir(parents=True, exist_ok=True)
        link = self.cache / layer_cache_name(arn)
        if not (link.is_symlink() and link.resolve() == (self.layers / name).resolve()):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(self.layers / name, target_is_directory=True)
        return arn

    def _prune(self) -> None:
        """Keep the most recently used builds of each kind; drop older ones, their cache
        links and the SAM invoke images built with them (only images of our own names)."""
        by_kind: dict[str, list[Path]] = {}
        for path in self.layers.glob("*-*"):
            if path.is_dir() and not path.name.startswith((".", "aws-")):
                by_kind.setdefault(path.name.split("-")[0], []).append(path)
        dropped = []
        for paths in by_kind.values():
            paths.sort(key=lambda p: p.stat().st_mtime, reverse=True)
            for old in paths[KEEP_BUILDS:]:
                dropped.append(local_layer_arn(f"totes-local-{old.name}"))
                shutil.rmtree(old, ignore_errors=True)
        for arn in dropped:
            with contextlib.suppress(FileNotFoundError):
                (self.cache / layer_cache_name(arn)).unlink()
        if dropped:
            self._remove_images_with(set(dropped))

    def _remove_images_with(self, dropped: set[str]) -> None:
        record = self.root / "images.json"
        try:
            images = json.loads(record.read_text())
        except (OSError, ValueError):
            return
        keep = {}
        for image, arns in images.items():
            if dropped & set(arns):
                _docker("image", "rm", image)
            else:
                keep[image] = arns
        record.write_text(json.dumps(keep, indent=1))

    # -- the real managed layers (optional; fetched once with the user's AWS credentials) --

    @property
    def aws_record(self) -> Path:
        return self.root / "aws-layers.json"

    def aws_layers(self) -> dict[str, str]:
        """The real managed layers' ARNs for this architecture, if fetched and still cached."""
        try:
            record = json.loads(self.aws_record.read_text()).get(self.architecture, {})
        except (OSError, ValueError):
            return {}
        ok = all((self.cache / layer_cache_name(arn)).is_dir() for arn in record.values())
        return dict(record) if ok and set(record) == {"pandas", "powertools"} else {}

    def fetch_aws_layers(self, template: Path, session) -> dict[str, str]:
        """Resolve the template's two managed layers for this architecture through their public
        SSM parameters and download them (``lambda:GetLayerVersion``) with ``session``'s
        credentials, into the cache under SAM's names: later invokes find them there and need
        no credentials. Only this process uses the credentials; no container sees them."""
        import zipfile

        ssm = session.client("ssm", region_name=session.region_name or REGION)
        arns = {}
        with self.locked():
            for kind, parameter in managed_layer_parameters(template, self.architecture).items():
                arn = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
                layer, version = arn.rsplit(":", 1)
                name = f"aws-{kind}-{hashlib.sha256(arn.encode()).hexdigest()[:12]}"

                def download(target: Path, layer: str = layer, version: str = version) -> None:
                    print(f"sam-local: fetching {layer}:{version}", file=sys.stderr, flush=True)
                    lam = session.client("lambda", region_name=layer.split(":")[3])
                    content = lam.get_layer_version(LayerName=layer, VersionNumber=int(version))
                    location = content["Content"]["Location"]
                    archive = target.parent / "layer.zip"
                    _download(location, archive)
                    with zipfile.ZipFile(archive) as z:
                        for member in z.namelist():
                            if member.startswith("/") or ".." in Path(member).parts:
                                raise SamLocalError(f"unsafe path {member!r} in layer {layer}")
                        z.extractall(target)

                self._ensure(name, download)
                arns[kind] = self._seed(name, arn)
            try:
                record = json.loads(self.aws_record.read_text())
            except (OSError, ValueError):
                record = {}
            record[self.architecture] = arns
            self.aws_record.write_text(json.dumps(record, indent=1))
        return arns

    def forget_aws_layers(self) -> None:
        with self.locked():
            self.aws_record.unlink(missing_ok=True)

    def record_image(self, arns: list[str]) -> None:
        """Remember the invoke image SAM builds for a function with these layers, in its order
        (ours to prune later)."""
        with self.locked():
            record = self.root / "images.json"
            try:
                images = json.loads(record.read_text())
            except (OSError, ValueError):
                images = {}
            images[invoke_image(self.architecture, arns)] = arns
            record.write_text(json.dumps(images, indent=1))


# -- the template -----------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (``!Ref``, ``!Sub``...) read as plain values."""


_CfnLoader.add_multi_constructor(
    "!",
    lambda loader, suffix, node: (
        loader.construct_scalar(node)
        if isinstance(node, yaml.ScalarNode)
        else loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)
    ),
)


def declared_variables(template: Path) -> dict[str, set[str]]:
    """The environment variables the template declares per function (Globals included): the
    only ones ``sam local invoke --env-vars`` passes on."""
    data = yaml.load(template.read_text(), Loader=_CfnLoader)  # noqa: S506 # nosec B506 - SafeLoader subclass
    common = set(
        ((data.get("Globals") or {}).get("Function") or {}).get("Environment", {}).get("Variables")
        or {}
    )
    out = {}
    for name, resource in (data.get("Resources") or {}).items():
        if resource.get("Type") == "AWS::Serverless::Function":
            props = resource.get("Properties") or {}
            own = ((props.get("Environment") or {}).get("Variables")) or {}
            out[name] = common | set(own)
    return out


def function_layers(template: Path) -> dict[str, list[str]]:
    """Each function's layers as kinds of ``LAYER_PARAMETERS``, in its ``Layers`` order: an
    entry is of the kind whose ARN parameter it names (``!Ref`` or the local branch of an
    ``!If``). SAM names a function's invoke image after its layers in this order."""
    by_parameter = {parameter: kind for kind, parameter in LAYER_PARAMETERS.items()}
    data = yaml.load(template.read_text(), Loader=_CfnLoader)  # noqa: S506 # nosec B506 - SafeLoader subclass

    def kind_of(entry: object) -> str:
        named = set(by_parameter) & set(re.findall(r"[A-Za-z0-9]+", json.dumps(entry)))
        if len(named) != 1:
            raise SamLocalError(f"a function layer names no single layer parameter: {entry!r}")
        return by_parameter[named.pop()]

    out = {}
    for name, resource in (data.get("Resources") or {}).items():
        if resource.get("Type") == "AWS::Serverless::Function":
            layers = (resource.get("Properties") or {}).get("Layers") or []
            out[name] = [kind_of(entry) for entry in layers]
    return out


def _download(url: str, path: Path) -> None:
    if not url.startswith("https://"):
        raise SamLocalError(f"unexpected download location {url[:60]!r}")
    import urllib.request

    with urllib.request.urlopen(url, timeout=300) as response, path.open("wb") as out:  # noqa: S310 # nosec B310 - https only, checked above
        shutil.copyfileobj(response, out)


def managed_layer_parameters(template: Path, architecture: str) -> dict[str, str]:
    """The public SSM parameters naming the managed layers for ``architecture``: the template's
    defaults (arm64) with the architecture's path segment swapped."""
    params = yaml.load(template.read_text(), Loader=_CfnLoader)["Parameters"]  # noqa: S506 # nosec B506
    out = {}
    for kind in ("pandas", "powertools"):
        default = str(params[LAYER_PARAMETERS[kind]]["Default"])
        out[kind] = default.replace("/arm64/", f"/{architecture}/")
    return out


def find_sam(repo: Path) -> Path:
    pinned = repo / ".venv-sam" / "bin" / "sam"
    if pinned.exists():
        return pinned
    found = shutil.which("sam")
    if found:
        return Path(found)
    raise SamLocalError("no SAM CLI: `make sam-venv` installs the pinned one into .venv-sam")


def sam_environment(sts_endpoint: str) -> dict[str, str]:
    """SAM CLI's own environment: what it and the Docker client need, the emulator's dummy
    credentials (SAM copies its session's credentials into every container), no profile or
    config files, and STS answered by the emulator (SAM looks up the account id per invoke)."""
    env = {k: os.environ[k] for k in SAM_ENV_KEEP if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("SAM_CLI_")})
    env.update(LOCAL_ENV)
    env.update(
        AWS_ENDPOINT_URL_STS=sts_endpoint,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        SAM_CLI_TELEMETRY="0",
    )
    return env


def sam_build(sam: Path, repo: Path, build_dir: Path, env: Mapping[str, str]) -> Path:
    """``sam build`` of the checkout into ``build_dir`` (copies, plus the Makefiles of the
    Iceberg function and the ADBC layer: pinned wheels from pip's cache after the first run;
    a few seconds), so the containers run exactly the code of this checkout."""
    result = subprocess.run(  # noqa: S603 # nosec B603 - fixed argument list
        [str(sam), "build", "--template-file", str(repo / "template.yaml"),
         "--build-dir", str(build_dir)],
        cwd=repo, env=dict(env), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise SamLocalError(f"sam build failed: {_tail(result.stderr or result.stdout)}")
    return build_dir / "template.yaml"


def _build(command: list[str], failure: str) -> None:
    """Run a layer build command; on failure raise ``failure`` with the end of its output."""
    result = subprocess.run(  # noqa: S603 # nosec B603 - fixed argument list
        command, capture_output=True, text=True, check=False, timeout=1800
    )
    if result.returncode != 0:
        raise SamLocalError(f"{failure}: {_tail(result.stderr or result.stdout)}")


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "(no output)"


# -- the invoker ------------------------------------------------------------------------------


class SamLocal(contextlib.AbstractContextManager):
    """Everything ``sam local invoke`` needs for one run, set up on entry and gone on exit
    (forwarders stopped, scratch files removed); ``handlers`` go to ``LocalChain(handlers=)``
    and ``bind(chain)`` must follow the chain's creation.

    ``endpoint_url`` is the emulator as this process reaches it; ``source`` and ``warehouse``
    the databases as given to the run.
    """

    def __init__(
        self,
        endpoint_url: str,
        source: DbCredentials,
        warehouse: DbCredentials,
        *,
        repo: Path | None = None,
        state_dir: Path | None = None,
    ):
        self.endpoint_url = endpoint_url
        self.source = source
        self.warehouse = warehouse
        self.repo = repo or repository_root()
        self.state = state_dir or self.repo / ".aws-sam" / "local"
        self._stack = contextlib.ExitStack()
        self._seq = itertools.count(1)
        self._forwarders: list[Forwarder] = []
        self.chain: LocalChain | None = None

    # -- set-up ------------------------------------------------------------------------------

    def __enter__(self) -> SamLocal:
        if threading.current_thread() is threading.main_thread():
            # SIGTERM as Ctrl-C: the running sam is stopped, its container removed and the
            # forwarders closed on the way out, instead of leaving them behind.
            previous = signal.signal(signal.SIGTERM, _interrupt)
            self._stack.callback(signal.signal, signal.SIGTERM, previous)
        try:
            self._setup()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _setup(self) -> None:
        started = time.monotonic()
        self._preflight()
        self.sam_env = sam_environment(self.endpoint_url)
        self._build()
        self.workdir = Path(tempfile.mkdtemp(prefix="totes-sam-local-"))
        self._stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        self._stack.callback(self._close_forwarders)
        self.container_endpoint = self.reachable_url(self.endpoint_url)
        self.container_source = self.reachable_db(self.source)
        self.container_warehouse = self.reachable_db(self.warehouse)
        logger.debug(
            "sam-local ready",
            extra={"seconds": round(time.monotonic() - started, 2), "layers": self.layers.arns},
        )

    def _preflight(self) -> None:
        """Docker answers, the SAM CLI is there, the base image is present: checked before
        anything is built or touched."""
        self.docker = docker_host()
        self.sam = find_sam(self.repo)
        require_image(base_image(self.docker.architecture))

    def _build(self) -> None:
        """The checkout built into the invoker's own build directory, and its local layers."""
        self.template = sam_build(self.sam, self.repo, self.state / "build", self.sam_env)
        self.declared = declared_variables(self.template)
        self.function_layers = function_layers(self.template)
        missing = [f for f in FUNCTIONS.values() if f not in self.declared]
        if missing or not all("AWS_ENDPOINT_URL" in v for v in self.declared.values()):
            raise SamLocalError(
                "the built template lacks the functions or their AWS_ENDPOINT_URL declaration"
                f" ({', '.join(missing) or 'AWS_ENDPOINT_URL'}): is template.yaml current?"
            )
        self.store = LayerStore(self.state, self.docker.architecture)
        self.layers = self.store.prepare(self.repo, self.template.parent / "TotesLayer")

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _forward(self, target: tuple[str, int] | str) -> Forwarder:
        try:
            forwarder = Forwarder(self.docker.bind_host, target)
        except OSError as exc:
            raise SamLocalError(
                f"cannot listen on {self.docker.bind_host} (Docker's bridge) for containers: {exc}"
            ) from None
        self._forwarders.append(forwarder)
        return forwarder

    def _close_forwarders(self) -> None:
        while self._forwarders:
            self._forwarders.pop().close()

    def reachable_url(self, url: str) -> str:
        """``url`` as containers reach it: a loopback host is forwarded from the bridge."""
        parts = urlsplit(url)
        if not is_loopback(parts.hostname):
            return url
        port = parts.port or (443 if parts.scheme == "https" else 80)
        forwarder = self._forward((parts.hostname or "127.0.0.1", port))
        return urlunsplit(parts._replace(netloc=f"{self.docker.container_host}:{forwarder.port}"))

    def reachable_db(self, creds: DbCredentials) -> DbCredentials:
        """The credentials as containers use them: a local server (unix socket or loopback) is
        forwarded from the bridge and reached without TLS, as this process reaches it."""
        if creds.unix_socket_dir:
            target: tuple[str, int] | str = f"{creds.unix_socket_dir}/.s.PGSQL.{creds.port}"
        elif creds.is_local:
            target = (creds.host or "127.0.0.1", creds.port)
        else:
            return creds
        forwarder = self._forward(target)
        return dataclasses.replace(
            creds,
            host=self.docker.container_host,
            port=forwarder.port,
            unix_socket_dir=None,
            sslmode="disable",
        )

    # -- the chain ---------------------------------------------------------------------------

    @property
    def handlers(self) -> dict[str, Handler]:
        return {stage: functools.partial(self._handle, stage) for stage in STAGES}

    def _handle(self, stage: str, event: dict, context: object) -> object:
        return self.invoke(stage, event)

    def bind(self, chain: LocalChain) -> None:
        """Take the chain's stack names and function environment, written as the
        ``--env-vars`` file; refuse a variable that no function of the template declares
        (SAM would drop it silently)."""
        self.chain = chain
        # On the way out, the secrets hold the databases as given again (the host's view, as
        # chain.prepare() writes them): the forwarders named in the container view are gone.
        self._stack.callback(self._restore_secrets, chain)
        self.env_file = self.workdir / "env.json"
        self.env_file.write_text(json.dumps(self.function_variables(chain), indent=2))

    def function_variables(self, chain: LocalChain) -> dict[str, dict[str, str]]:
        """``--env-vars`` in its per-function form: what the chain gives each handler
        in-process, with the emulator as containers reach it. A function gets only what the
        template declares for it (what it reads: tests/template checks that)."""
        everywhere = set().union(*self.declared.values())
        out = {}
        for stage, function in FUNCTIONS.items():
            values = {k: v for k, v in chain.function_env(stage).items() if k not in SAM_PROVIDED}
            values["AWS_ENDPOINT_URL"] = self.container_endpoint
            dropped = sorted(set(values) - everywhere)
            if dropped:
                raise SamLocalError(
                    f"{', '.join(dropped)}: not declared for any function in template.yaml, so"
                    " `sam local invoke` would drop it; declare it there or run in-process"
                )
            out[function] = {k: v for k, v in values.items() if k in self.declared[function]}
        return out

    def options(self, env_file: Path | None = None) -> dict[str, object]:
        """``sam local invoke``'s options besides the function and the event (the chain's
        ``--env-vars`` file unless another is given)."""
        overrides = {"Architecture": self.docker.architecture, **self.layers.overrides}
        return {
            "template-file": str(self.template),
            "env-vars": str(env_file or self.env_file),
            "skip-pull-image": True,
            "layer-cache-basedir": str(self.layers.cache_dir),
            "region": REGION,
            "parameter-overrides": [f"{k}={v}" for k, v in overrides.items()],
        }

    def publish_secrets(self, names: StackNames) -> None:
        """The database secrets as containers read them (only rewritten when they differ, so
        ``chain.prepare()`` may run at any time in between)."""
        self._put_secrets(names, self.container_source, self.container_warehouse)

    def _restore_secrets(self, chain: LocalChain) -> None:
        with contextlib.suppress(Exception):  # the emulator may be gone already
            self._put_secrets(chain.names, chain.source, chain.warehouse)

    def _put_secrets(
        self, names: StackNames, source: DbCredentials, warehouse: DbCredentials
    ) -> None:
        sm = client("secretsmanager", self.endpoint_url)
        for secret_id, creds in (
            (names.source_secret, source),
            (names.warehouse_secret, warehouse),
        ):
            value = creds.to_secret()
            try:
                current = sm.get_secret_value(SecretId=secret_id)["SecretString"]
            except sm.exceptions.ResourceNotFoundException:
                sm.create_secret(Name=secret_id, SecretString=value)
                continue
            if current != value:
                sm.put_secret_value(SecretId=secret_id, SecretString=value)

    # -- one invocation ----------------------------------------------------------------------

    def command(self, stage: str, event_path: Path, env_file: Path | None = None) -> list[str]:
        return self.function_command(FUNCTIONS[stage], event_path, env_file)

    def function_command(
        self, function: str, event_path: Path, env_file: Path | None = None
    ) -> list[str]:
        command = [str(self.sam), "local", "invoke", function, "--event", str(event_path)]
        for option, value in self.options(env_file).items():
            if value is True:
                command.append(f"--{option}")
            elif isinstance(value, list):
                command.extend([f"--{option}", *value])
            else:
                command.extend([f"--{option}", str(value)])
        return command

    def invoke(self, stage: str, event: dict) -> object:
        """One ``sam local invoke``: the handler's result, or an exception when it failed."""
        if self.chain is None:
            raise SamLocalError("SamLocal.bind(chain) was not called")
        self.publish_secrets(self.chain.names)
        event_path = self.workdir / f"{next(self._seq):04d}-{stage}.json"
        event_path.write_text(json.dumps(event))
        from totes_tools.local.chain import FUNCTION_TIMEOUT_SECONDS

        timeout = FUNCTION_TIMEOUT_SECONDS[stage] + INVOKE_MARGIN_SECONDS
        return self._invoke(FUNCTIONS[stage], self.command(stage, event_path), timeout)

    def invoke_function(
        self, function: str, event: dict, variables: Mapping[str, str], timeout: float
    ) -> object:
        """One ``sam local invoke`` of a function the chain does not invoke (the deploy's
        ``MigrateFunction``: CloudFormation invokes it), with ``variables`` and the emulator as
        containers reach it for its environment. As for the chain, a variable the template
        does not declare for the function is refused (SAM would drop it silently); ``timeout``
        is the function's own (the template's ``Timeout``), SAM's margin is added."""
        if function not in self.declared:
            raise SamLocalError(f"{function}: no such function in the built template")
        values = {**variables, "AWS_ENDPOINT_URL": self.container_endpoint}
        undeclared = sorted(set(values) - self.declared[function])
        if undeclared:
            raise SamLocalError(
                f"{', '.join(undeclared)}: not declared for {function} in template.yaml, so"
                " `sam local invoke` would drop it"
            )
        seq = next(self._seq)
        env_file = self.workdir / f"{seq:04d}-{function}-env.json"
        env_file.write_text(json.dumps({function: values}, indent=2))
        event_path = self.workdir / f"{seq:04d}-{function}.json"
        event_path.write_text(json.dumps(event))
        command = self.function_command(function, event_path, env_file)
        return self._invoke(function, command, timeout + INVOKE_MARGIN_SECONDS)

    def _invoke(self, function: str, command: list[str], timeout: float) -> object:
        started = time.monotonic()
        out, err, returncode = self._run(command, timeout)
        self.store.record_image(self.layers.ordered(self.function_layers[function]))
        logger.debug(
            "sam local invoke",
            extra={"function": function, "seconds": round(time.monotonic() - started, 2)},
        )
        relay(err)
        return result_of(function, returncode, out, err)

    def _run(self, command: list[str], timeout: float) -> tuple[str, str, int]:
        proc = subprocess.Popen(  # noqa: S603 # nosec B603 - fixed argument list
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.sam_env,
            cwd=self.workdir,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            remove_container(err)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise InvokeFailed(
                    f"sam local invoke did not finish within {timeout:.0f} s (stopped)"
                ) from None
            raise
        return out, err, proc.returncode


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def remove_container(sam_stderr: str) -> None:
    """Remove the container SAM named, if it is still there (after sam itself was stopped)."""
    for match in re.finditer(r"SAM_CONTAINER_ID: ([0-9a-f]{12,64})", sam_stderr):
        _docker("rm", "--force", match[1])


def relay(sam_stderr: str) -> None:
    """What the container printed, as the in-process handler would have printed it: EMF
    metric lines always (the chain collects them), log records at the level this process logs
    at; SAM's own lines and the emulator's teardown line only to the debug log."""
    level = logger.log_level
    for line in sam_stderr.splitlines():
        text = line.strip()
        blob = None
        if text.startswith("{"):
            with contextlib.suppress(ValueError):
                blob = json.loads(text)
        if isinstance(blob, dict):
            record_level = blob.get("level")
            is_record = isinstance(record_level, str) and "_aws" not in blob
            if not is_record or logging.getLevelName(str(record_level).upper()) >= level:
                print(text)
        elif text and RIE_TEARDOWN not in text:
            logger.debug("sam", extra={"line": text})


def result_of(function: str, returncode: int, out: str, err: str) -> object:
    """The handler's return value from ``sam local invoke``'s stdout; a failure raises."""
    if returncode != 0:
        said = [line for line in err.splitlines() if line.startswith("Error:")]
        raise InvokeFailed(
            f"sam local invoke {function} exited with {returncode}: "
            + (said[-1] if said else _tail(err))
        )
    text = out.strip()
    timed_out = re.search(r"timed out after (\d+(?:\.\d+)?) seconds", err)
    if timed_out and not text:
        # SAM enforces the function's Timeout, then exits 0 with no payload.
        raise InvokeFailed(f"Task timed out after {float(timed_out[1]):.2f} seconds")
    if not text:
        raise InvokeFailed(f"sam local invoke {function} returned no payload: {_tail(err)}")
    try:
        payload = json.loads(text)
    except ValueError:
        try:
            payload = json.loads(text.splitlines()[-1])
        except ValueError:
            raise InvokeFailed(
                f"sam local invoke {function} returned a payload that is not JSON: {text[:200]}"
            ) from None
    if is_error_payload(payload):
        raise handler_error(payload)
    return payload
