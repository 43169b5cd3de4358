"""``make bench``: throughput and memory of each stage of the real chain, with the naive
baselines measured in the same run on the same data.

A generated totesys of ``--scale`` sales orders (embedded PostgreSQL unless both URLs are
given, naming empty databases) goes through the chain twice: the initial load, then one
incremental cycle after simulator activity. Each stage runs in its own child process (the
handler exactly as the chain invokes it, against the same emulator), so its wall time and
peak RSS are its own; the emulator, which stands in for S3 and would not count against a
Lambda's memory, lives in this parent process.

Baselines, on the largest source and fact tables:
- extraction: ``SELECT *`` fetched whole through pg8000, and a bare ``COPY ... TO STDOUT``
  into a null sink (the floor no extractor can beat);
- load: one autocommitted ``INSERT`` per row on a sample (the rate extrapolated to the whole
  load), and a bare ``COPY ... FROM STDIN`` into an unindexed table (the floor).

Results are printed as a table and written as JSON with the ratios.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess  # nosec B404 - runs only this module, as its own children
import sys
import time
from pathlib import Path

import pyarrow as pa

from totes.db import DbCredentials, connect
from totes.identifiers import quote
from totes.observability import logger
from totes.star.model import FACT_SALES_ORDER, SOURCE_VERSION
from totes_tools.local.aws import StackNames, aws_environment, moto_server
from totes_tools.local.bench_extract import RssSampler, _copy_rate, _fetch_rate
from totes_tools.local.chain import FUNCTION_MEMORY_MB, LocalChain
from totes_tools.ops import cost
from totes_tools.warehouse.bench import _raw_copy

CHILD_ENV = "TOTES_BENCH_CHILD"
STAGES = ("ingest", "transform", "load")
SIMULATOR_STEPS = 200
ROW_BY_ROW_SAMPLE = 2_000
EXTRACT_TABLE = "sales_order"


def _quiet() -> None:
    if not os.environ.get("POWERTOOLS_LOG_LEVEL"):
        logger.setLevel("ERROR")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


def _rate(rows: int, seconds: float) -> float:
    return round(rows / seconds) if seconds > 0 else 0.0


# -- one stage in a child process --------------------------------------------------------------


def run_child(stage: str) -> int:
    """The child's side: run one stage of the chain over what is queued, report as JSON."""
    _quiet()
    config = json.loads(os.environ[CHILD_ENV])
    endpoint = config["endpoint"]
    with aws_environment(endpoint):
        chain = LocalChain(
            endpoint,
            StackNames(),
            DbCredentials.from_url(config["source"]),
            DbCredentials.from_url(config["warehouse"]),
        )
        chain.handler(stage)  # imports (a cold start) are not the stage's work
        with RssSampler() as rss:
            started = time.perf_counter()
            report = chain.ingest() if stage == "ingest" else chain.drain(stages=(stage,))
            seconds = time.perf_counter() - started
    stage_report = report.stages[stage]
    rows = sum(stage_report.rows.values())
    print(
        json.dumps(
            {
                "stage": stage,
                "invocations": stage_report.invocations,
                "handler_seconds": round(stage_report.seconds, 3),
                "batches": len(stage_report.batches),
                "rows": rows,
                "rows_by_table": stage_report.rows,
                "seconds": round(seconds, 3),
                "rows_per_s": _rate(rows, seconds),
                "rss_before_mb": round(rss.baseline, 1),
                "peak_rss_mb": round(rss.peak, 1),
                "failures": [str(f) for f in report.failures],
            }
        )
    )
    return 0 if report.ok else 1


def run_stages(endpoint: str, source: DbCredentials, warehouse: DbCredentials) -> dict:
    """Ingest, then transform, then load, each in its own process; their JSON reports."""
    env = {
        **os.environ,
        CHILD_ENV: json.dumps(
            {"endpoint": endpoint, "source": source.to_url(), "warehouse": warehouse.to_url()}
        ),
    }
    out = {}
    for stage in STAGES:
        started = time.perf_counter()
        done = subprocess.run(  # noqa: S603  # nosec B603 - our own module, fixed arguments
            [sys.executable, "-m", "totes_tools.local.bench", "--child", stage],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise SystemExit(f"bench: the {stage} stage failed:\n{done.stdout}\n{done.stderr}")
        out[stage] = {**json.loads(lines[-1]), "process_seconds": time.perf_counter() - started}
        out[stage]["process_seconds"] = round(out[stage]["process_seconds"], 2)
    return out


# -- baselines ---------------------------------------------------------------------------------


class _NullSink:
    def __init__(self):
        self.bytes = 0

    def write(self, data) -> int:
        self.bytes += len(data)
        return len(data)


def extraction_baselines(source: DbCredentials) -> dict:
    con = connect(source, application_name="totes-bench-baseline", timeout=3600)
    try:
        sink = _NullSink()
        started = time.perf_counter()
        con.run(f"COPY {quote(EXTRACT_TABLE)} TO STDOUT", stream=sink)
        seconds = time.perf_counter() - started
        [[rows]] = con.run(f"SELECT count(*) FROM {quote(EXTRACT_TABLE)}")  # noqa: S608  # nosec B608
        copy_out = {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": _rate(rows, seconds)}
        copy_arrow = _copy_rate(con, EXTRACT_TABLE, 100_000)
        with RssSampler() as rss:
            fetchall = _fetch_rate(con, EXTRACT_TABLE)
        fetchall["rss_growth_mb"] = round(rss.peak - rss.baseline, 1)
    finally:
        con.close()
    return {
        "table": EXTRACT_TABLE,
        "copy_to_stdout_floor": copy_out,
        "copy_to_arrow": copy_arrow,
        "select_fetchall": fetchall,
    }


def _processed_facts(chain: LocalChain) -> pa.Table:
    parts = []
    for key in chain.processed.manifest_keys():
        for entry in chain.processed.get_manifest(key).files_for(FACT_SALES_ORDER.name):
            parts.append(chain.processed.get_table(entry.key))
    return pa.concat_tables(parts)


def load_baselines(chain: LocalChain, load_rows: int) -> dict:
    facts = _processed_facts(chain)
    con = connect(chain.warehouse, application_name="totes-bench-baseline", timeout=3600)
    try:
        copy_seconds = _raw_copy(con, facts)
        sample = facts.slice(0, min(ROW_BY_ROW_SAMPLE, facts.num_rows))
        row_seconds = _row_by_row(con, sample)
    finally:
        con.close()
    row_rate = _rate(sample.num_rows, row_seconds)
    return {
        "table": FACT_SALES_ORDER.name,
        "copy_from_stdin_floor": {
            "rows": facts.num_rows,
            "seconds": round(copy_seconds, 3),
            "rows_per_s": _rate(facts.num_rows, copy_seconds),
        },
        "row_by_row_insert": {
            "sample_rows": sample.num_rows,
            "seconds": round(row_seconds, 3),
            "rows_per_s": row_rate,
            "extrapolated_seconds_for_load": round(load_rows / row_rate, 1) if row_rate else None,
        },
    }


def _row_by_row(con, sample: pa.Table) -> float:
    """A naive loader: one autocommitted INSERT per row into a copy of the fact table with
    its keys and indexes (no foreign keys, so the baseline is, if anything, flattered)."""
    names = [*FACT_SALES_ORDER.column_names, SOURCE_VERSION]
    con.run("DROP TABLE IF EXISTS bench_row_by_row")
    con.run("CREATE TABLE bench_row_by_row (LIKE fact_sales_order INCLUDING ALL)")
    sql = (
        f"INSERT INTO bench_row_by_row ({', '.join(names)}, loaded_batch_id)"  # noqa: S608  # nosec B608
        f" VALUES ({', '.join(':' + n for n in names)}, 'bench')"
    )
    rows = sample.select(names).to_pylist()
    started = time.perf_counter()
    for row in rows:  # the baseline being measured: deliberately one statement per row
        con.run(sql, **row)
    seconds = time.perf_counter() - started
    con.run("DROP TABLE bench_row_by_row")
    return seconds


# -- the whole benchmark -----------------------------------------------------------------------


def _ratios(initial: dict, extraction: dict, load: dict) -> dict:
    ingest, loaded = initial["ingest"]["rows_per_s"], initial["load"]["rows_per_s"]

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None

    return {
        "ingest_vs_select_fetchall": ratio(ingest, extraction["select_fetchall"]["rows_per_s"]),
        "ingest_vs_copy_floor": ratio(ingest, extraction["copy_to_stdout_floor"]["rows_per_s"]),
        "load_vs_row_by_row_insert": ratio(loaded, load["row_by_row_insert"]["rows_per_s"]),
        "load_vs_copy_floor": ratio(loaded, load["copy_from_stdin_floor"]["rows_per_s"]),
    }


def _print(results: dict) -> None:
    print(f"\nscale {results['scale']:,} sales orders; source {results['source_rows']:,} rows;"
          f" generated in {results['generate_seconds']} s")  # fmt: skip
    header = (
        f"  {'cycle':<12}{'stage':<10}{'batches':>8}{'rows':>12}{'seconds':>10}{'rows/s':>11}"
        f"{'peak RSS MB':>13}"
    )
    print(header)
    for cycle in ("initial", "incremental", "quiet"):
        for stage, r in results[cycle].items():
            print(
                f"  {cycle:<12}{stage:<10}{r['batches']:>8}{r['rows']:>12,}{r['seconds']:>10.2f}"
                f"{r['rows_per_s']:>11,}{r['peak_rss_mb']:>13.0f}"
            )
    print(f"  initial cycle wall time (3 processes): {results['initial_wall_seconds']} s")
    e, b = results["baselines"]["extraction"], results["baselines"]["load"]
    print(f"\n  baselines on {e['table']} ({e['select_fetchall']['rows']:,} rows) and "
          f"{b['table']}:")  # fmt: skip
    for label, r in (
        ("SELECT * fetchall", e["select_fetchall"]),
        ("COPY TO STDOUT floor", e["copy_to_stdout_floor"]),
        ("COPY -> Arrow", e["copy_to_arrow"]),
        ("row-by-row INSERT", b["row_by_row_insert"]),
        ("COPY FROM STDIN floor", b["copy_from_stdin_floor"]),
    ):
        print(f"  {label:<24}{r['rows_per_s']:>11,} rows/s")
    print(
        f"  row-by-row INSERT would take"
        f" {b['row_by_row_insert']['extrapolated_seconds_for_load']} s for the initial load"
        f" (the chain's load took {results['initial']['load']['seconds']} s)"
    )
    print("\n  ratios: " + ", ".join(f"{k} {v}" for k, v in results["ratios"].items()))
    lambda_cost = results["lambda_cost"]
    print(f"\nLambda cost per run and per month ({lambda_cost['price']}):")
    for label, key in (
        ("quiet source (nothing changed)", "quiet"),
        (f"the bench's changes ({SIMULATOR_STEPS} simulator steps)", "incremental"),
    ):
        print("\n".join(cost.format_table(label, lambda_cost[key])))


def _billed(stages: dict) -> dict:
    """Per stage, the billed work of one run: the handlers' own time over their invocations."""
    return {
        stage: {"seconds": r["handler_seconds"], "invocations": r["invocations"]}
        for stage, r in stages.items()
    }


def main(args) -> int:
    """``python -m totes bench``: see the module docstring."""
    from totes_tools.source.generator import generate
    from totes_tools.source.simulator import Simulator

    _quiet()
    with contextlib.ExitStack() as stack:
        if args.source_url and args.warehouse_url:
            source = DbCredentials.from_url(args.source_url)
            warehouse = DbCredentials.from_url(args.warehouse_url)
        else:
            from totes_tools.local.postgres import embedded_postgres

            cluster = stack.enter_context(embedded_postgres())
            source = cluster.create_database("bench_totesys")
            warehouse = cluster.create_database("bench_warehouse")
        endpoint = stack.enter_context(moto_server())
        stack.enter_context(aws_environment(endpoint))

        print(f"generating a totesys of {args.scale:,} sales orders ...", flush=True)
        con = stack.enter_context(contextlib.closing(connect(source, timeout=3600)))
        started = time.perf_counter()
        counts = generate(con, args.scale, seed=42)
        generate_seconds = round(time.perf_counter() - started, 1)

        chain = LocalChain(endpoint, StackNames(), source, warehouse)
        chain.prepare()
        print("initial load: ingest, transform, load (one process each) ...", flush=True)
        started = time.perf_counter()
        initial = run_stages(endpoint, source, warehouse)
        initial_wall = round(time.perf_counter() - started, 1)

        simulator = Simulator(con, seed=1)
        for _ in range(SIMULATOR_STEPS):
            simulator.step()
        print(f"incremental cycle after {SIMULATOR_STEPS} simulator steps ...", flush=True)
        incremental = run_stages(endpoint, source, warehouse)
        print("a quiet cycle (nothing changed at the source) ...", flush=True)
        quiet = run_stages(endpoint, source, warehouse)

        print("baselines ...", flush=True)
        extraction = extraction_baselines(source)
        load = load_baselines(chain, initial["load"]["rows"])

    results = {
        "scale": args.scale,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "source_rows": sum(counts.values()),
        "source_rows_by_table": counts,
        "generate_seconds": generate_seconds,
        "initial": initial,
        "initial_wall_seconds": initial_wall,
        "incremental": incremental,
        "quiet": quiet,
        "baselines": {"extraction": extraction, "load": load},
    }
    results["ratios"] = _ratios(initial, extraction, load)
    results["lambda_cost"] = {
        "price": cost.price_note(),
        "quiet": cost.run_cost(_billed(quiet), FUNCTION_MEMORY_MB),
        "incremental": cost.run_cost(_billed(incremental), FUNCTION_MEMORY_MB),
    }
    _print(results)
    Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(run_child(sys.argv[2]))
    sys.exit("usage: python -m totes bench (this module's own entry is for its child processes)")
