"""``python -m totes sam-local ...``: ``sam local invoke`` by hand, and the check behind
``make sam-local``.

- ``serve`` holds open what ``run --invoker sam-local`` sets up for one run (the stack in the
  emulator with the container-view secrets, the forwarders, the build and the local layers)
  until Ctrl-C, writes an ``--env-vars`` file, a SAM config file with the other options and
  the events, and prints the ``sam local invoke`` command for each function.
- ``events`` (re)writes the three events: the scheduler event for ingest, and S3 put events
  naming the newest manifest of the raw and the processed bucket (key, size, eTag), which is
  what transform and load need after each invoke of the stage before.
- ``check`` (``make sam-local``): one cycle of a generated source through
  ``run --invoker sam-local`` and the same cycle in-process, each as its own ``python -m totes
  run`` process; the two warehouses must hold the same content.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import subprocess  # nosec B404 - runs `python -m totes run`, argument lists only
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote_plus

from totes.db import DbCredentials, connect
from totes.errors import TotesError
from totes.lake import MANIFEST_PREFIX, MANIFEST_SUFFIX
from totes.observability import logger
from totes_tools.local.aws import LOCAL_ENV, REGION, StackNames, aws_environment, client
from totes_tools.local.sam_local import FUNCTIONS, SamLocal
from totes_tools.repository import sam_dir


def newest_manifest(s3, bucket: str) -> dict | None:
    """The most recently written manifest object of ``bucket`` (key, size, eTag), or None."""
    newest = None
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=MANIFEST_PREFIX):
        for obj in page.get("Contents", ()):
            if obj["Key"].endswith(MANIFEST_SUFFIX) and (
                newest is None
                or (obj["LastModified"], obj["Key"]) > (newest["LastModified"], newest["Key"])
            ):
                newest = obj
    return newest


def s3_put_event(stage: str, bucket: str, obj: dict) -> dict:
    """``sam/events/<stage>_s3_put.json`` (the documented example) naming a real object."""
    event = json.loads((sam_dir() / "events" / f"{stage}_s3_put.json").read_text())
    record = event["Records"][0]
    record["awsRegion"] = REGION
    record["eventTime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    record["s3"]["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
    record["s3"]["object"].update(
        key=quote_plus(obj["Key"], safe="/"),  # S3 events carry keys URL-encoded
        size=int(obj["Size"]),
        eTag=str(obj["ETag"]).strip('"'),
    )
    return event


def write_events(endpoint_url: str, names: StackNames, out: Path) -> dict[str, Path | None]:
    """ingest.json, transform.json and load.json in ``out``; a stage whose trigger bucket holds
    no manifest yet gets none (its old file is removed, so it is never stale)."""
    from totes_tools.local.chain import schedule_event

    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | None] = {}
    path = out / "ingest.json"
    path.write_text(json.dumps(schedule_event(), indent=2) + "\n")
    written["ingest"] = path
    s3 = client("s3", endpoint_url)
    for stage, bucket in (("transform", names.raw_bucket), ("load", names.processed_bucket)):
        path = out / f"{stage}.json"
        try:
            obj = newest_manifest(s3, bucket)
        except s3.exceptions.NoSuchBucket:
            obj = None
        if obj is None:
            path.unlink(missing_ok=True)
            written[stage] = None
            continue
        path.write_text(json.dumps(s3_put_event(stage, bucket, obj), indent=2) + "\n")
        written[stage] = path
    return written


def samconfig(options: dict[str, object]) -> str:
    """A SAM CLI config file giving ``sam local invoke`` these options by default."""
    lines = ["version = 0.1", "", "[default.local_invoke.parameters]"]
    for option, value in options.items():
        key = option.replace("-", "_")
        if isinstance(value, list):
            value = " ".join(value)
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def sam_env_prefix(sam: SamLocal) -> str:
    """The environment to run sam with by hand (as the invoker does): the emulator's dummy
    credentials, no profile or credential files, STS on the emulator."""
    keep = {k: sam.sam_env[k] for k in (*LOCAL_ENV, "AWS_ENDPOINT_URL_STS", "SAM_CLI_TELEMETRY")}
    keep.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    unset = " ".join(f"-u {k}" for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"))
    return f"env {unset} " + " ".join(f"{k}={shlex.quote(v)}" for k, v in keep.items())


def events(args) -> int:
    """``python -m totes sam-local events``: the three events for the local stack."""
    names = StackNames()
    with aws_environment(args.endpoint_url):
        written = write_events(args.endpoint_url, names, Path(args.out))
    for stage, path in written.items():
        if path is None:
            bucket = names.raw_bucket if stage == "transform" else names.processed_bucket
            print(f"{stage:<9} no event: {bucket} holds no manifest yet")
        else:
            print(f"{stage:<9} {path}")
    return 0


def serve(args) -> int:
    """``python -m totes sam-local serve``: the local stack kept reachable from containers
    until Ctrl-C, with what ``sam local invoke`` needs written to ``--out``."""
    from totes_tools.local.aws import moto_server
    from totes_tools.local.chain import LocalChain, check_source, check_warehouse

    if not os.environ.get("POWERTOOLS_LOG_LEVEL"):
        logger.setLevel("ERROR")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the emulator's request log
    source = DbCredentials.from_url(args.source_url)
    warehouse = DbCredentials.from_url(args.warehouse_url)
    check_source(source)
    check_warehouse(warehouse)
    out = Path(args.out).resolve()
    with contextlib.ExitStack() as stack:
        endpoint = args.endpoint_url or stack.enter_context(moto_server(args.port))
        stack.enter_context(aws_environment(endpoint))
        sam = stack.enter_context(SamLocal(endpoint, source, warehouse))
        chain = LocalChain(endpoint, StackNames(), source, warehouse, handlers=sam.handlers)
        sam.bind(chain)
        chain.prepare()
        sam.publish_secrets(chain.names)
        out.mkdir(parents=True, exist_ok=True)
        options = sam.options()
        env_file = out / "env.json"
        env_file.write_text(Path(str(options["env-vars"])).read_text())
        options["env-vars"] = str(env_file)
        config = out / "samconfig.toml"
        config.write_text(samconfig(options))
        written = write_events(endpoint, chain.names, out)
        prefix = sam_env_prefix(sam)
        print(f"local AWS endpoint: {endpoint} (containers: {sam.container_endpoint})")
        print(f"wrote {env_file}, {config} and the events in {out}")
        print("run one function by hand (another terminal, in this checkout):")
        for stage, function in FUNCTIONS.items():
            event = written[stage] or out / f"{stage}.json"
            print(
                f"  {prefix} \\\n    {sam.sam} local invoke {function}"
                f" --config-file {config} -e {event}"
            )
        print(
            "after ingest (or transform), refresh transform.json and load.json (newest manifests):"
            f"\n  python -m totes sam-local events --endpoint-url {endpoint} --out {out}"
        )
        print("serving until Ctrl-C", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
        print("stopping", flush=True)
    return 0


def layers(args) -> int:
    """``python -m totes sam-local layers``: which managed layers sam-local runs use, and the
    switch between local builds from requirements/runtime.txt (default, no credentials) and
    the real AWS managed layers (fetched once with your AWS credentials)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from totes_tools.local.sam_local import LayerStore, docker_host
    from totes_tools.repository import repository_root

    repo = repository_root()
    store = LayerStore(repo / ".aws-sam" / "local", docker_host().architecture)
    if args.from_aws:
        import boto3

        try:
            store.fetch_aws_layers(repo / "template.yaml", boto3.Session(region_name=args.region))
        except (BotoCoreError, ClientError) as exc:
            raise TotesError(
                f"fetching the managed layers needs AWS credentials allowed ssm:GetParameter and"
                f" lambda:GetLayerVersion ({type(exc).__name__}: {exc})"
            ) from None
    elif args.local:
        store.forget_aws_layers()
    fetched = store.aws_layers()
    if fetched:
        print(f"sam-local runs use the AWS managed layers ({store.architecture}):")
        for kind, arn in fetched.items():
            print(f"  {kind:<10} {arn}")
    else:
        print(
            f"sam-local runs use local builds of the managed layers ({store.architecture}) from"
            " requirements/runtime.txt"
        )
    return 0


# -- make sam-local ---------------------------------------------------------------------------


def _run_cycle(source: str, warehouse: str, invoker: str) -> tuple[int, float, str]:
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL",)}
    result = subprocess.run(  # noqa: S603 # nosec B603 - fixed argument list
        [sys.executable, "-m", "totes", "run", "--invoker", invoker,
         "--source-url", source, "--warehouse-url", warehouse],
        capture_output=True, text=True, env=env, check=False, timeout=3600,
    )  # fmt: skip
    print(f"--- python -m totes run --invoker {invoker}: exit {result.returncode}")
    print(result.stdout.rstrip())
    if result.stderr.strip():
        print(result.stderr.rstrip(), file=sys.stderr)
    return result.returncode, time.monotonic() - started, result.stdout


def check(args) -> int:
    """``make sam-local``: a generated source through one cycle of ``--invoker sam-local``
    and one in-process; the warehouses must hold the same rows (content checksums)."""
    from totes_tools.local.postgres import embedded_postgres
    from totes_tools.local.sam_local import docker_host
    from totes_tools.source.generator import generate
    from totes_tools.warehouse.checksums import table_checksums

    if not os.environ.get("POWERTOOLS_LOG_LEVEL"):
        logger.setLevel("ERROR")
    docker_host()  # a clear error before anything starts when Docker does not answer
    with embedded_postgres() as cluster:
        source = cluster.create_database("src")
        con = connect(source)
        try:
            generate(con, args.scale, seed=args.seed)
        finally:
            con.close()
        warehouses = {
            "sam-local": cluster.create_database("wh"),
            "in-process": cluster.create_database("wh"),
        }
        outcome = {}
        for invoker, warehouse in warehouses.items():
            outcome[invoker] = _run_cycle(source.to_url(), warehouse.to_url(), invoker)
        sums = {}
        for invoker, warehouse in warehouses.items():
            con = connect(warehouse)
            try:
                sums[invoker] = table_checksums(con)
            finally:
                con.close()
    print("--- check")
    failed = [i for i, (code, _, _) in outcome.items() if code != 0]
    rows = sum(count for count, _ in sums["sam-local"].values())
    for invoker, (_, seconds, _) in outcome.items():
        print(f"{invoker:<11} {seconds:6.1f} s wall (process start to exit)")
    if failed:
        raise TotesError(f"the cycle failed with --invoker {', '.join(failed)}")
    if not rows:
        raise TotesError("the sam-local warehouse is empty")
    differ = sorted(t for t in sums["sam-local"] if sums["sam-local"][t] != sums["in-process"][t])
    if differ:
        raise TotesError(f"the warehouses differ in {', '.join(differ)}")
    print(
        f"OK: the sam-local warehouse ({rows} rows in {len(sums['sam-local'])} tables)"
        " equals the in-process one"
    )
    return 0
