"""``python -m totes``: the command line over the same code the Lambdas run.

Each subcommand names the module function that does the work; modules are imported only
when their command runs, so ``--help`` is fast and a broken optional part cannot break another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import TypeVar

from totes.errors import TotesError
from totes.settings import (
    CHUNK_ROWS,
    DEFAULT_WAREHOUSE_SCHEMA,
    MAX_BATCH_ROWS,
    bounded_int,
    schema_name,
)

# command path -> "module:function"; each function takes the parsed args and returns an exit code.
COMMANDS = {
    ("source", "create"): "totes_tools.source.commands:create",
    ("source", "simulate"): "totes_tools.source.commands:simulate",
    ("warehouse", "migrate"): "totes_tools.warehouse.commands:migrate",
    ("warehouse", "grant-loader"): "totes_tools.warehouse.commands:grant_loader",
    ("warehouse", "verify"): "totes_tools.warehouse.verify:command",
    ("warehouse", "rebuild"): "totes_tools.warehouse.rebuild:command",
    ("failures", "list"): "totes_tools.failures:list_command",
    ("failures", "drop"): "totes_tools.failures:drop_command",
    ("local-aws",): "totes_tools.local.commands:local_aws",
    ("run",): "totes_tools.local.commands:run",
    ("replay",): "totes_tools.replay:command",
    ("demo",): "totes_tools.local.demo:main",
    ("bench",): "totes_tools.local.bench:main",
    ("iceberg-bench",): "totes_tools.local.iceberg_bench:main",
    ("sam-local", "serve"): "totes_tools.local.sam_commands:serve",
    ("sam-local", "events"): "totes_tools.local.sam_commands:events",
    ("sam-local", "layers"): "totes_tools.local.sam_commands:layers",
    ("sam-local", "check"): "totes_tools.local.sam_commands:check",
    ("dashboard",): "totes_tools.ops.dashboard:command",
}

T = TypeVar("T")


def option(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a settings parser: the Lambda settings and the command line refuse
    the same values ("nan", "inf", negative, absurd) with the same words."""

    def convert(raw: str) -> T:
        try:
            return parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


# Every numeric option of the command line, from the one rule the Lambda settings use
# (``totes.settings.bounded_int``): a whole number in range, so "nan", "inf", "-5", "0.5",
# "1e12" and absurd sizes are refused by argparse, naming the option, before anything runs.
BATCH_ROWS_OPTION = option(MAX_BATCH_ROWS)
CHUNK_ROWS_OPTION = option(CHUNK_ROWS)
SCALE_OPTION = option(bounded_int(1, 10_000_000))  # sales orders the generator writes
SEED_OPTION = option(bounded_int(0, 2**32 - 1))  # numpy seeds are non-negative
STEPS_OPTION = option(bounded_int(1, 1_000_000))  # simulator steps, each one commit
PORT_OPTION = option(bounded_int(1, 65_535))
ROUNDS_OPTION = option(bounded_int(1, 1_000))  # demo rounds of activity and a cycle
RANGE_KEYS_OPTION = option(bounded_int(1, 2**31))  # keys per digest range of verify
SHOW_OPTION = option(bounded_int(0, 1_000_000))  # keys printed per table and kind
WORKERS_OPTION = option(bounded_int(1, 16))  # processes of one stage (its concurrency)
SCHEMA_OPTION = option(schema_name)  # the warehouse schema, as the load's WAREHOUSE_SCHEMA


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m totes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    source = sub.add_parser("source", help="the totesys source database").add_subparsers(
        dest="action", required=True
    )
    create = source.add_parser("create", help="create the schema and load a snapshot or generate")
    create.add_argument("--url", required=True, help="postgresql://... of an empty database")
    what = create.add_mutually_exclusive_group(required=True)
    what.add_argument("--snapshot", metavar="DIR", help="directory with one Parquet per table")
    what.add_argument(
        "--scale", type=SCALE_OPTION, metavar="N", help="generate about N sales orders"
    )
    create.add_argument("--seed", type=SEED_OPTION, default=42)
    simulate = source.add_parser("simulate", help="advance the database like the live business")
    simulate.add_argument("--url", required=True)
    simulate.add_argument("--steps", type=STEPS_OPTION, required=True)
    simulate.add_argument("--seed", type=SEED_OPTION, default=None)

    warehouse = sub.add_parser("warehouse", help="the star-schema warehouse").add_subparsers(
        dest="action", required=True
    )
    migrate = warehouse.add_parser(
        "migrate", help="apply the schema migrations as the warehouse owner (idempotent)"
    )
    migrate.add_argument("--url", required=True, help="the OWNER's connection URL")
    migrate.add_argument("--schema", type=SCHEMA_OPTION, default=DEFAULT_WAREHOUSE_SCHEMA)
    grant = warehouse.add_parser(
        "grant-loader",
        help="give a role exactly the load's privileges (no DDL); run as the owner, idempotent",
    )
    grant.add_argument("--url", required=True, help="the OWNER's connection URL")
    grant.add_argument("--role", required=True, help="the loader role (it must exist)")
    grant.add_argument("--schema", type=SCHEMA_OPTION, default=DEFAULT_WAREHOUSE_SCHEMA)
    verify = warehouse.add_parser(
        "verify", help="compare every warehouse table with the source; exit 1 on a difference"
    )
    verify.add_argument("--source-url", required=True)
    verify.add_argument("--warehouse-url", required=True)
    verify.add_argument(
        "--range-keys",
        type=RANGE_KEYS_OPTION,
        default=32_768,
        metavar="N",
        help="keys per digest range (default 32768); only differing ranges are read row by row",
    )
    verify.add_argument(
        "--show",
        type=SHOW_OPTION,
        default=20,
        metavar="N",
        help="keys printed per table and kind of difference (default 20)",
    )
    verify.add_argument(
        "--schema",
        type=SCHEMA_OPTION,
        default=DEFAULT_WAREHOUSE_SCHEMA,
        help="the warehouse schema (the load's WAREHOUSE_SCHEMA; default public)",
    )
    rebuild = warehouse.add_parser(
        "rebuild", help="load every processed batch of the lake into an empty warehouse"
    )
    rebuild.add_argument("--warehouse-url", required=True, help="a new, empty database")
    rebuild.add_argument(
        "--endpoint-url", default=None, help="a running `totes local-aws` (default: AWS)"
    )
    rebuild.add_argument(
        "--bucket",
        default=None,
        help="the processed bucket (default: $PROCESSED_BUCKET, or the local one)",
    )
    rebuild.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted rebuild (batches in the ledger are skipped)",
    )
    rebuild.add_argument(
        "--schema",
        type=SCHEMA_OPTION,
        default=DEFAULT_WAREHOUSE_SCHEMA,
        help="the schema to build in (it must exist; the load's WAREHOUSE_SCHEMA; default public)",
    )

    failures = sub.add_parser(
        "failures", help="the failure queue: events whose retries were exhausted"
    ).add_subparsers(dest="action", required=True)
    for name, what in (("list", "list the records"), ("drop", "delete records")):
        cmd = failures.add_parser(name, help=what)
        cmd.add_argument(
            "--endpoint-url", default=None, help="a running `totes local-aws` (default: AWS)"
        )
        cmd.add_argument(
            "--queue-url",
            default=None,
            help="the failure queue (the stack's FailureQueueUrl output; default:"
            " $FAILURE_QUEUE_URL, or the local one)",
        )
        if name == "drop":
            which = cmd.add_mutually_exclusive_group(required=True)
            which.add_argument("--batch", metavar="BATCH_ID", help="drop this batch's records")
            which.add_argument(
                "--gone",
                action="store_true",
                help="drop every record whose manifest (or a file it lists) no longer exists",
            )
            cmd.add_argument(
                "--force",
                action="store_true",
                help="with --batch: drop it even if its data still exists (the batch is then"
                " never loaded; without --force such a record is kept, exit 1)",
            )

    local_aws = sub.add_parser("local-aws", help="run the local AWS emulation in the foreground")
    local_aws.add_argument("--port", type=PORT_OPTION, default=None)

    run = sub.add_parser("run", help="one cycle of the deployed chain, run locally")
    run.add_argument(
        "--invoker",
        choices=("in-process", "sam-local"),
        default="in-process",
        help="call each handler in this process (default) or through `sam local invoke` in"
        " Docker, offline (needs Docker, the Lambda base image and `make build`'s .venv-sam)",
    )
    run.add_argument("--source-url", required=True)
    run.add_argument("--warehouse-url", required=True)
    run.add_argument("--endpoint-url", default=None, help="a running `totes local-aws`")
    run.add_argument(
        "--max-batch-rows",
        type=BATCH_ROWS_OPTION,
        default=None,
        help="rows per bounded batch (INGEST_MAX_BATCH_ROWS; default 500000)",
    )
    run.add_argument(
        "--chunk-rows",
        type=CHUNK_ROWS_OPTION,
        default=None,
        help="rows per Parquet part (INGEST_CHUNK_ROWS; default 100000)",
    )
    run.add_argument(
        "--iceberg",
        action="store_true",
        help="also commit each batch into the Iceberg tables (the optional second target;"
        " Glue and S3 in the emulator), as IcebergTarget=ENABLED does on AWS",
    )

    replay = sub.add_parser(
        "replay", help="re-run a raw batch (e.g. quarantined, then repaired) through the chain"
    )
    replay.add_argument("--batch", required=True, metavar="BATCH_ID", help="the raw batch id")
    replay.add_argument(
        "--endpoint-url", default=None, help="a running `totes local-aws` (default: AWS)"
    )
    replay.add_argument(
        "--bucket", default=None, help="the raw bucket (default: $RAW_BUCKET, or the local one)"
    )
    replay.add_argument(
        "--recount",
        action="store_true",
        help="describe the files again (rows, schema) when the repair changed them",
    )

    demo = sub.add_parser("demo", help="the whole chain on an embedded PostgreSQL, with answers")
    demo.add_argument("--scale", type=SCALE_OPTION, default=20_000)
    demo.add_argument("--rounds", type=ROUNDS_OPTION, default=3)

    dashboard = sub.add_parser(
        "dashboard", help="draw the template's dashboard from the metrics of local runs"
    )
    dashboard.add_argument(
        "--metrics",
        default=None,
        metavar="FILE",
        help="metrics (JSON lines) a local run recorded (default: .totes/metrics.jsonl)",
    )
    dashboard.add_argument(
        "--out", default=None, metavar="DIR", help="where to write dashboard.png and .html"
    )
    dashboard.add_argument("--run", default=None, help="only this run's metrics")

    iceberg_bench = sub.add_parser(
        "iceberg-bench",
        help="the Iceberg target: commit time per batch, files before and after"
        " maintenance, after a backfill and after incremental cycles",
    )
    iceberg_bench.add_argument("--scale", type=SCALE_OPTION, default=300_000)
    iceberg_bench.add_argument("--cycles", type=ROUNDS_OPTION, default=100)
    iceberg_bench.add_argument("--maintenance-age-hours", type=ROUNDS_OPTION, default=73)
    iceberg_bench.add_argument(
        "--maintain-every",
        type=ROUNDS_OPTION,
        default=None,
        metavar="K",
        help="run maintenance after every K incremental cycles (default: only at the end)",
    )
    iceberg_bench.add_argument("--output", default="iceberg-bench.json")

    bench = sub.add_parser("bench", help="throughput and memory per stage, with baselines")
    bench.add_argument("--scale", type=SCALE_OPTION, default=1_000_000)
    bench.add_argument("--output", default="bench-results.json")
    bench.add_argument("--source-url", default=None)
    bench.add_argument("--warehouse-url", default=None)
    bench.add_argument(
        "--floor-rounds", type=ROUNDS_OPTION, default=3, help="rounds of the COPY floor (median)"
    )
    bench.add_argument(
        "--small-steps",
        type=STEPS_OPTION,
        default=10,
        help="simulator steps of the small incremental cycle (about 100 changed rows)",
    )
    bench.add_argument(
        "--max-batch-rows",
        type=BATCH_ROWS_OPTION,
        default=None,
        help="rows per bounded batch of the chain (INGEST_MAX_BATCH_ROWS; default 500000)",
    )
    bench.add_argument(
        "--batch-sweep",
        type=BATCH_ROWS_OPTION,
        action="append",
        default=None,
        metavar="N",
        help="also load the initial backfill sequentially and pipelined with batches of at"
        " most N rows (repeat for several sizes)",
    )
    bench.add_argument(
        "--pipeline-rounds",
        type=ROUNDS_OPTION,
        default=1,
        help="rounds of the sequential/pipelined comparison (alternating; medians)",
    )
    bench.add_argument(
        "--load-workers",
        type=WORKERS_OPTION,
        default=None,
        help="load's processes in the pipelined runs (its reserved concurrency; default"
        " pipeline.LOAD_WORKERS, 2)",
    )

    sam_local = sub.add_parser(
        "sam-local", help="sam local invoke by hand (serve, events), and make sam-local's check"
    ).add_subparsers(dest="action", required=True)
    serve = sam_local.add_parser(
        "serve",
        help="keep the local stack reachable from containers until Ctrl-C; write env-vars,"
        " a SAM config and events to --out and print the sam local invoke commands",
    )
    serve.add_argument("--source-url", required=True)
    serve.add_argument("--warehouse-url", required=True)
    serve.add_argument(
        "--endpoint-url", default=None, help="a running `totes local-aws` (default: its own)"
    )
    serve.add_argument("--port", type=PORT_OPTION, default=None, help="port of its own emulator")
    serve.add_argument("--out", default=".aws-sam/local/invoke", metavar="DIR")
    events = sam_local.add_parser(
        "events",
        help="write ingest.json, and transform.json/load.json naming the newest manifests",
    )
    events.add_argument("--endpoint-url", required=True)
    events.add_argument("--out", default=".aws-sam/local/invoke", metavar="DIR")
    layers = sam_local.add_parser(
        "layers",
        help="use the real AWS managed layers (--from-aws, needs your AWS credentials once)"
        " or local builds from requirements/runtime.txt (--local, the default)",
    )
    which = layers.add_mutually_exclusive_group()
    which.add_argument("--from-aws", action="store_true")
    which.add_argument("--local", action="store_true")
    layers.add_argument("--region", default=None, help="for the SSM lookup (default: yours)")
    check = sam_local.add_parser(
        "check", help="one cycle of a generated source via sam-local and in-process; compare"
    )
    check.add_argument("--scale", type=SCALE_OPTION, default=2000)
    check.add_argument("--seed", type=SEED_OPTION, default=42)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = (args.command, args.action) if hasattr(args, "action") else (args.command,)
    module_name, func_name = COMMANDS[path].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    from botocore.exceptions import BotoCoreError, ClientError
    from pg8000.exceptions import DatabaseError, InterfaceError

    from totes.server_errors import describe_error

    try:
        return int(func(args) or 0)
    except TotesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Exit 1 is a result the commands give (verify: a difference; rebuild: a batch failed;
    # failures drop: no such record), so an error of the lake, the queue or a database must
    # not end as an uncaught exception's 1. AWS errors name the endpoint, bucket or queue and
    # the operation; a server error is described without its text (it may quote a row value).
    except (BotoCoreError, ClientError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except DatabaseError as exc:
        print(f"error: the database refused: {describe_error(exc)}", file=sys.stderr)
        return 2
    except InterfaceError as exc:
        print(f"error: the database connection failed ({type(exc).__name__})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
