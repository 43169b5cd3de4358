"""``make bench-dlt``: our whole initial chain against dlt on the same source, same run.

``python -m totes_tools.local.bench_dlt --scale 300000 --dlt-python .venv-dlt/bin/python``

One embedded PostgreSQL holds a generated totesys (seed 42, as ``make bench``). Per round, in
rotated order (so drift of a shared machine hits every variant alike):

- ``ours``: the initial chain exactly as ``make bench`` runs it (ingest, transform, load, each
  in its own process, one after the other) against an emptied S3 emulator and a fresh migrated
  warehouse;
- ``ours_pipelined``: the same chain with the three processes at once, transform and load
  invoked per manifest as it lands (as S3 notifications drive them on AWS; ``make bench``'s
  pipelined run). Its seconds count from launching the first process (the downstream stages'
  start-up included, as dlt's is) to the last one's exit;
- ``dlt_<format>``: ``dlt_run.py`` in dlt's own environment: ``sql_database`` with the pyarrow
  backend copying the source tables as they are into a fresh database, with
  ``loader_file_format`` <format> (``parquet`` loads through the ADBC PostgreSQL driver).

Per run: wall seconds (child start-up included, for both), client CPU (this process and its
reaped children) and the whole server's CPU (``/proc``); then the medians per variant and the
ratios ours / dlt. dlt does less (no star schema, history, keys or indexes, no S3 hops): the
ratio says what a user sees, not that the work is the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import subprocess  # nosec B404 - runs dlt's own interpreter on our script, fixed arguments
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote as url_quote

from totes.db import DbCredentials, connect
from totes.source.model import TABLES
from totes_tools.local import cpu, pipeline

DLT_RUN = Path(__file__).with_name("dlt_run.py")
OURS = "ours"
OURS_PIPELINED = "ours_pipelined"
STAGES = ("ingest", "transform", "load")
DLT_PHASES = ("extract", "normalize", "load")


# -- pure parts (unit-tested) ------------------------------------------------------------------


def rotated(variants: Sequence[str], round_index: int) -> list[str]:
    """The variants in the order round ``round_index`` runs them (each first once in turn)."""
    k = round_index % len(variants)
    return [*variants[k:], *variants[:k]]


def summarize(records: list[dict]) -> dict:
    """Medians per variant (seconds, server and client CPU, and the stages or dlt phases) and
    the ratio of ours to every dlt variant (wall and server CPU)."""
    variants = list(dict.fromkeys(r["variant"] for r in records))
    out: dict = {"variants": {}, "ratios": {}}
    for variant in variants:
        runs = [r for r in records if r["variant"] == variant]
        row: dict = {"rounds": len(runs)}
        for key in ("seconds", "server_cpu_s", "client_cpu_s", "own_cpu_s"):
            values = [r[key] for r in runs if r.get(key) is not None]
            row[key] = round(statistics.median(values), 2) if values else None
        parts = STAGES if variant.startswith(OURS) else DLT_PHASES
        row["parts"] = {
            p: round(statistics.median(r["parts"][p] for r in runs), 2)
            for p in parts
            if all(p in r["parts"] for r in runs)
        }
        row["rows"] = runs[0]["rows"]
        out["variants"][variant] = row
    for mine, ours in out["variants"].items():
        if not mine.startswith(OURS):
            continue
        for variant, row in out["variants"].items():
            if variant.startswith(OURS):
                continue
            out["ratios"][f"{mine}_vs_{variant}"] = {
                key: (
                    round(ours[key] / row[key], 2) if ours[key] is not None and row[key] else None
                )
                for key in ("seconds", "server_cpu_s", "client_cpu_s")
            }
    return out


def format_report(summary: dict) -> list[str]:
    """The summary as printed lines."""

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = [
        f"  {'variant':<14}{'rounds':>7}{'rows':>12}{'seconds':>10}{'server CPU s':>14}"
        f"{'client CPU s':>14}{'of it here':>12}  parts (median s)"
    ]
    for variant, row in summary["variants"].items():
        parts = ", ".join(f"{p} {s:.2f}" for p, s in row["parts"].items())
        lines.append(
            f"  {variant:<14}{row['rounds']:>7}{row['rows']:>12,}{num(row['seconds']):>10}"
            f"{num(row['server_cpu_s']):>14}{num(row['client_cpu_s']):>14}"
            f"{num(row.get('own_cpu_s')):>12}  {parts}"
        )
    lines.append(
        "  (client CPU: the bench's own process and its children; \"of it here\": the bench's own"
        " process, where the S3 emulator that our chain's stages read and write runs: work AWS"
        " S3 does, not our stages)"
    )
    for name, ratio in summary["ratios"].items():
        lines.append(
            f"  {name}: {num(ratio['seconds'])} (wall), {num(ratio['server_cpu_s'])} (server CPU),"
            f" {num(ratio['client_cpu_s'])} (client CPU)"
        )
    return lines


def sqlalchemy_url(creds: DbCredentials) -> str:
    """The source for dlt's ``sql_database`` (SQLAlchemy + psycopg2)."""
    return _url("postgresql+psycopg2", creds)


def dlt_destination_url(creds: DbCredentials) -> str:
    """The destination for dlt's postgres destination (it wants a password, even unused)."""
    return _url("postgresql", creds)


def _url(scheme: str, creds: DbCredentials) -> str:
    auth = url_quote(creds.user, safe="") + ":" + url_quote(creds.password or "unused", safe="")
    if creds.unix_socket_dir:
        return (
            f"{scheme}://{auth}@localhost/{creds.dbname}"
            f"?host={creds.unix_socket_dir}&port={creds.port}"
        )
    return f"{scheme}://{auth}@{creds.host}:{creds.port}/{creds.dbname}"


# -- the runs ----------------------------------------------------------------------------------


def run_ours(
    cluster,
    endpoint: str,
    source: DbCredentials,
    postmaster: int | None,
    pipelined: bool = False,
    load_workers: int = pipeline.LOAD_WORKERS,
) -> dict:
    from totes_tools.local.aws import StackNames
    from totes_tools.local.bench import run_stages
    from totes_tools.local.chain import LocalChain

    warehouse = cluster.create_database("bench_ours")
    try:
        # moto's state is process-wide: every run starts from an empty emulator.
        reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")  # noqa: S310
        urllib.request.urlopen(reset).close()  # noqa: S310  # nosec B310 - our local emulator
        LocalChain(endpoint, StackNames(), source, warehouse).prepare()  # not timed
        with cpu.Meter(postmaster) as meter:
            if pipelined:
                config = pipeline.child_config(endpoint, source, warehouse)
                stages = pipeline.run_pipelined(config, postmaster, load_workers)["stages"]
            else:
                stages = run_stages(endpoint, source, warehouse, postmaster)
    finally:
        cluster.drop_database(warehouse)
    # A pipelined stage's process waits for its upstream: its busy time is its handlers'.
    part = "handler_seconds" if pipelined else "seconds"
    return {
        **meter.as_dict(stages["load"]["rows"]),
        "parts": {s: stages[s][part] for s in STAGES},
        "peak_rss_mb": {s: stages[s]["peak_rss_mb"] for s in STAGES},
    }


def run_dlt(
    cluster, source: DbCredentials, postmaster: int | None, file_format: str, python: str
) -> dict:
    target = cluster.create_database("bench_dlt")
    try:
        with tempfile.TemporaryDirectory(prefix="totes-dlt-") as work, cpu.Meter(postmaster) as m:
            done = subprocess.run(  # noqa: S603  # nosec B603 - fixed script, our arguments
                [
                    python,
                    str(DLT_RUN),
                    sqlalchemy_url(source),
                    dlt_destination_url(target),
                    work,
                    file_format,
                    *(t.name for t in TABLES),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
    finally:
        cluster.drop_database(target)
    if done.returncode:
        raise SystemExit(f"bench-dlt: dlt failed:\n{done.stdout}\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {**m.as_dict(report["rows"]), "parts": report["phases"], "dlt": report}


def main(argv: list[str] | None = None) -> int:
    from totes.observability import logger
    from totes_tools.local.aws import aws_environment, moto_server
    from totes_tools.local.postgres import embedded_postgres
    from totes_tools.source.generator import generate

    parser = argparse.ArgumentParser(prog="python -m totes_tools.local.bench_dlt")
    parser.add_argument("--scale", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", default="parquet", help="dlt loader file formats, a,b")
    parser.add_argument("--dlt-python", required=True, help="python of dlt's own environment")
    parser.add_argument("--output", default="bench-dlt-results.json")
    parser.add_argument(
        "--load-workers",
        type=int,
        default=pipeline.LOAD_WORKERS,
        help="load's processes in ours pipelined",
    )
    args = parser.parse_args(argv)
    logger.setLevel("ERROR")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the S3 emulator's request log
    variants = [OURS, OURS_PIPELINED, *(f"dlt_{f}" for f in args.formats.split(","))]
    records: list[dict] = []
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(embedded_postgres())
        source = cluster.create_database("bench_totesys")
        endpoint = stack.enter_context(moto_server())
        stack.enter_context(aws_environment(endpoint))
        con = stack.enter_context(contextlib.closing(connect(source, timeout=3600)))
        postmaster = cpu.postmaster_pid(con)
        print(f"generating a totesys of {args.scale:,} sales orders ...", flush=True)
        counts = generate(con, args.scale, seed=42)
        for round_index in range(args.rounds):
            for variant in rotated(variants, round_index):
                started = time.perf_counter()
                if variant.startswith(OURS):
                    pipelined = variant == OURS_PIPELINED
                    record = run_ours(
                        cluster, endpoint, source, postmaster, pipelined, args.load_workers
                    )
                else:
                    record = run_dlt(
                        cluster, source, postmaster, variant.removeprefix("dlt_"), args.dlt_python
                    )
                record.update(variant=variant, round=round_index)
                records.append(record)
                print(
                    f"  round {round_index + 1} {variant}: {record['seconds']:.1f} s"
                    f" ({time.perf_counter() - started:.1f} s with set-up)",
                    flush=True,
                )
    summary = summarize(records)
    print(f"\nscale {args.scale:,} sales orders; source {sum(counts.values()):,} rows; medians:")
    print("\n".join(format_report(summary)))
    results = {"scale": args.scale, "source_rows": counts, "runs": records, "summary": summary}
    Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
