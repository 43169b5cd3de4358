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

The bare COPY floor of the whole chain (``floor``), medians of ``--floor-rounds``: every source
row out once (``COPY (SELECT cols) TO STDOUT``, CSV, all tables, one snapshot, pg8000, as
ingest reads) plus every warehouse row of the initial load in once (Arrow-written CSV, as load
stages it, ``COPY FROM STDIN`` into empty unindexed copies of the star tables). Against it:
the whole initial chain, ingest's rate against COPY TO's, and the initial batches loaded again
one by one and as one batch (``load.load_batch``, the load's public entry point, into fresh
warehouses: the backfill's cost against one batch's). Cycles: the initial load, a small
incremental cycle (``--small-steps`` simulator steps, about 100 changed rows; its end-to-end
seconds are the three stages' own), two cycles of ``SIMULATOR_STEPS`` steps (rows ingested per
cycle stay flat: no overlap is read again) and a quiet one. Every stage reports its peak RSS,
its client CPU and, when the server's processes are visible (``/proc``), the server's CPU.

The initial load is measured twice over (``pipelined_comparison``): stage after stage, as
above (the stages' sum), and pipelined as AWS runs it (``pipeline.run_pipelined``: the three
stages at once in their own processes, transform and load invoked per manifest as it lands),
each from the same source through a stack of its own into a fresh warehouse whose checksums
must equal the first sequential run's; per run each stage's busy seconds and their overlap;
``--max-batch-rows`` sets the chain's batch size, ``--batch-sweep`` adds other sizes (both
modes each) and ``--pipeline-rounds`` repeats them, the two modes alternating, for medians.
Here the stages share the machine's cores with both databases and the emulator; on AWS each
Lambda has its own CPUs, so the pipelined overlap measured here is a lower bound.

Results are printed as a table and written as JSON with the ratios.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from totes.db import DbCredentials, connect
from totes.identifiers import quote, quote_all
from totes.lake import Lake
from totes.observability import logger
from totes.source.model import TABLES
from totes.star.model import FACT_SALES_ORDER, SOURCE_VERSION, STAR_TABLES_BY_NAME
from totes.warehouse import staging
from totes.warehouse.binary_copy import copy_stream
from totes_tools.local import cpu, pipeline
from totes_tools.local.aws import StackNames, aws_environment, moto_server
from totes_tools.local.bench_extract import RssSampler, _copy_rate, _fetch_rate
from totes_tools.local.chain import FUNCTION_MEMORY_MB, LocalChain
from totes_tools.ops import cost
from totes_tools.warehouse.bench import _raw_copy
from totes_tools.warehouse.csv_copy import csv_chunks

CHILD_ENV = pipeline.CHILD_ENV
STAGES = pipeline.STAGES
CYCLES = ("initial", "incremental_small", "incremental", "incremental_2", "quiet")
SIMULATOR_STEPS = 200
# Simulator steps of the small incremental cycle: about 100 changed rows.
SMALL_STEPS = 10
FLOOR_ROUNDS = 3
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
    """The child's side: run one stage of the chain over what is queued (or, pipelined,
    follow its queue until its upstream is done: ``pipeline.run_pipelined``), report as
    JSON."""
    _quiet()
    config = json.loads(os.environ[CHILD_ENV])
    endpoint = config["endpoint"]
    follow = config.get("follow")
    with aws_environment(endpoint):
        chain = LocalChain(
            endpoint,
            StackNames(**config.get("names", {})),
            DbCredentials.from_url(config["source"]),
            DbCredentials.from_url(config["warehouse"]),
            env=config.get("env"),
        )
        chain.handler(stage)  # imports (a cold start) are not the stage's work
        if follow:
            Path(follow["ready"]).touch()
            upstream_done = Path(follow["upstream_done"])
        with RssSampler() as rss:
            started, cpu_started = time.perf_counter(), cpu.client_cpu()
            if stage == "ingest":
                report = chain.ingest()
            elif follow:
                shared = follow.get("shared_with")
                report = chain.follow(
                    stage, upstream_done.exists, shared_with=Path(shared) if shared else None
                )
            else:
                report = chain.drain(stages=(stage,))
            seconds = time.perf_counter() - started
            client_cpu = cpu.client_cpu() - cpu_started
    stage_report = report.stages[stage]
    rows = sum(stage_report.rows.values())
    print(
        json.dumps(
            {
                "stage": stage,
                "invocations": stage_report.invocations,
                "handler_seconds": round(stage_report.seconds, 3),
                "batches": len(stage_report.batches),
                "batch_ids": stage_report.batches,
                "rows": rows,
                "rows_by_table": stage_report.rows,
                "seconds": round(seconds, 3),
                "rows_per_s": _rate(rows, seconds),
                "rss_before_mb": round(rss.baseline, 1),
                "peak_rss_mb": round(rss.peak, 1),
                "client_cpu_s": round(client_cpu, 2),
                "spans": [[round(a, 3), round(b, 3)] for a, b in stage_report.spans],
                "deliveries": [
                    [batch, landed and round(landed, 3), round(a, 3), round(b, 3)]
                    for batch, landed, a, b in stage_report.deliveries
                ],
                "failures": [str(f) for f in report.failures],
            }
        )
    )
    return 0 if report.ok else 1


def run_stages(
    endpoint: str,
    source: DbCredentials,
    warehouse: DbCredentials,
    postmaster: int | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Ingest, then transform, then load, each in its own process; their JSON reports, each
    with the server's CPU over the stage (``postmaster``: the server's, when visible)."""
    return pipeline.run_stages(
        pipeline.child_config(endpoint, source, warehouse, env=env), postmaster
    )


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


# -- the bare COPY floor of the whole chain -------------------------------------------------


class _NullRaw(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return len(data)


def _median_of(rounds: list[dict]) -> dict:
    out = {k: statistics.median(r[k] for r in rounds) for k in ("seconds", "client_cpu_s")}
    servers = [r["server_cpu_s"] for r in rounds if r["server_cpu_s"] is not None]
    out["server_cpu_s"] = round(statistics.median(servers), 2) if servers else None
    out["rows"] = rounds[0]["rows"]
    out["rows_per_s"] = round(out["rows"] / out["seconds"]) if out["seconds"] else 0
    out["rounds"] = len(rounds)
    return out


def copy_to_floor(source: DbCredentials, postmaster: int | None, rounds: int) -> dict:
    """Every source row out once, as ingest reads (one snapshot, CSV, pg8000, a null sink)."""
    con = connect(source, application_name="totes-bench-floor", timeout=3600)
    try:
        [[rows]] = con.run(
            "SELECT " + " + ".join(f"(SELECT count(*) FROM {quote(t.name)})" for t in TABLES)  # noqa: S608  # nosec B608
        )
        measured = []
        for _ in range(rounds):
            with cpu.Meter(postmaster) as meter:
                con.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                for table in TABLES:
                    sink = io.BufferedWriter(_NullRaw(), buffer_size=2**20)
                    con.run(
                        f"COPY (SELECT {quote_all(table.column_names)} FROM {quote(table.name)})"  # noqa: S608  # nosec B608
                        " TO STDOUT WITH (FORMAT csv)",
                        stream=sink,
                    )
                    sink.flush()
                con.run("ROLLBACK")
            measured.append(meter.as_dict(int(rows)))
    finally:
        con.close()
    return _median_of(measured)


def _processed_batches(lake: Lake, keys: list[str]) -> list[tuple]:
    from totes.stages.load_batch import read_batch

    return [(m, read_batch(lake, m)) for m in (lake.get_manifest(k) for k in keys)]


def _bare_table(name: str) -> str:
    return f"bench_bare_{name}"


def copy_from_floor(
    warehouse: DbCredentials,
    postmaster: int | None,
    batches: list[tuple],
    rounds: int,
    binary: bool = False,
) -> dict:
    """Every warehouse row of the initial load in once into empty unindexed copies of the star
    tables (no keys, no constraints): as Arrow-written CSV (how load staged before the binary
    format; the floor every earlier run's ratios used, ``csv_copy``), or with ``binary`` in
    PostgreSQL's binary format as load stages now (``binary_copy``), the lower floor."""
    fmt, chunks = ("binary", copy_stream) if binary else ("csv", csv_chunks)
    tables: dict[str, list] = {}
    for _, batch in batches:
        for name, table in batch.items():
            if name in STAR_TABLES_BY_NAME:
                tables.setdefault(name, []).append(table)
    rows = sum(t.num_rows for parts in tables.values() for t in parts)
    con = connect(warehouse, application_name="totes-bench-floor", timeout=3600)
    try:
        for name in tables:
            star = STAR_TABLES_BY_NAME[name]
            defs = ", ".join(
                f"{quote(c.name)} {staging.PG_TYPE.get(c.sql_type, c.sql_type)}"
                for c in star.columns
            )
            stamps = ", ".join(f"{quote(s)} TIMESTAMP(3)" for s in star.lineage)
            con.run(f"DROP TABLE IF EXISTS {quote(_bare_table(name))}")
            con.run(f"CREATE TABLE {quote(_bare_table(name))} ({defs}, {stamps})")
        measured = []
        for _ in range(rounds):
            con.run("TRUNCATE " + ", ".join(quote(_bare_table(n)) for n in tables))
            with cpu.Meter(postmaster) as meter:
                for name, parts in tables.items():
                    star = STAR_TABLES_BY_NAME[name]
                    for part in parts:
                        con.run(
                            f"COPY {quote(_bare_table(name))}"
                            f" ({quote_all(staging.loaded_columns(star))})"
                            f" FROM STDIN WITH (FORMAT {fmt})",
                            stream=chunks(part.select(staging.loaded_columns(star))),
                        )
            measured.append(meter.as_dict(rows))
        for name in tables:
            con.run(f"DROP TABLE {quote(_bare_table(name))}")
    finally:
        con.close()
    return _median_of(measured)


def load_replay(
    fresh_warehouse: Callable[[], DbCredentials], postmaster: int | None, batches: list[tuple]
) -> dict:
    """The initial batches loaded again through the load's public entry point
    (``merge.load_batch``) into a fresh warehouse, one by one as the chain loads them, and
    as one batch (their tables concatenated) into another: what the backfill's batching costs.
    The batches are read before the clock starts (no S3 in either)."""
    import dataclasses

    import pyarrow as pa

    from totes.warehouse.merge import load_batch
    from totes.warehouse.migrations import migrate

    names = sorted({n for _, t in batches for n in t})
    combined = {n: pa.concat_tables([t[n] for _, t in batches if n in t]) for n in names}
    first, last = batches[0][0], batches[-1][0]
    one = dataclasses.replace(last, window_lo=first.window_lo)
    rows = sum(t.num_rows for t in combined.values())
    out = {}
    for label, work in (("batches", batches), ("one_batch", [(one, combined)])):
        con = connect(fresh_warehouse(), application_name="totes-bench-replay", timeout=3600)
        try:
            migrate(con)
            with cpu.Meter(postmaster) as meter:
                for manifest, tables in work:
                    load_batch(con, manifest, tables)
        finally:
            con.close()
        out[label] = {**meter.as_dict(rows), "batches": len(work)}
    return out


# -- the initial load pipelined, as on AWS -------------------------------------------------


MACHINE_NOTE = (
    "this machine: {cpus} cores shared by the source and warehouse PostgreSQL, the emulator"
    " and the three stages; on AWS each Lambda has its own CPUs and the source and the"
    " warehouse are separate servers, so the overlap measured here is a lower bound"
)


def _batch_env(max_batch_rows: int | None) -> dict[str, str]:
    return {"INGEST_MAX_BATCH_ROWS": str(max_batch_rows)} if max_batch_rows else {}


def _every_batch_once(stages: dict) -> bool:
    """Every batch ingest wrote was transformed exactly once, and every batch transform
    published was loaded exactly once (a batch with nothing to load publishes nothing)."""
    ingested, transformed, loaded = (sorted(stages[s]["batch_ids"]) for s in STAGES)
    return (
        ingested == transformed
        and len(set(loaded)) == len(loaded)
        and set(loaded) <= set(transformed)
    )


def _run_record(
    mode: str, max_batch_rows: int | None, run: dict, checksums: dict, reference: dict
) -> dict:
    stages = run["stages"]
    return {
        "mode": mode,
        "max_batch_rows": max_batch_rows,
        "batches": stages["ingest"]["batches"],
        "wall_s": run["wall_seconds"],
        # sequential: the stages' own seconds (pipelined stages also wait for their upstream)
        "stages_s": (
            round(sum(stages[s]["seconds"] for s in STAGES), 2) if mode == "sequential" else None
        ),
        "span_s": run["span_s"],
        # sequential runs: the same batches pipelined without the stages sharing CPUs
        "projected_pipelined_s": pipeline.projected(stages) if mode == "sequential" else None,
        "busy_s": run["busy_s"],
        "overlap_s": run["overlap_s"],
        "started_after_s": run.get("started_after_s", {}),
        "tail_after_ingest_s": run.get("tail_after_ingest_s"),
        "server_cpu_s": run["server_cpu_s"],
        "client_cpu_s": round(sum(stages[s]["client_cpu_s"] for s in STAGES), 2),
        "peak_rss_mb": {s: stages[s]["peak_rss_mb"] for s in STAGES},
        "load_order": stages["load"]["batch_ids"],
        "every_batch_once": _every_batch_once(stages),
        "same_warehouse": checksums == reference,
    }


def _sequential_run(config: dict, postmaster: int | None) -> dict:
    started = time.perf_counter()
    stages = pipeline.run_stages(config, postmaster)
    servers = [stages[s]["server_cpu_s"] for s in STAGES]
    return {
        "stages": stages,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "server_cpu_s": None if None in servers else round(sum(servers), 2),
        **pipeline.overlap({s: stages[s]["spans"] for s in STAGES}),
    }


def _discard(chain: LocalChain) -> None:
    """Empty a finished run's buckets: the emulator holds every object in this process."""
    for bucket in (chain.names.raw_bucket, chain.names.processed_bucket):
        pages = chain.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                chain.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def fresh_run(
    mode: str,
    endpoint: str,
    source: DbCredentials,
    warehouses: tuple[Callable[[], DbCredentials], Callable[[DbCredentials], None]],
    postmaster: int | None,
    max_batch_rows: int | None,
    reference: dict,
    load_workers: int = pipeline.LOAD_WORKERS,
) -> dict:
    """The initial load of ``source`` again, sequential or pipelined (load in
    ``load_workers`` processes), through a stack and a warehouse of its own (made, then
    dropped), checked against the reference warehouse's checksums."""
    create, drop = warehouses
    names = pipeline.stack_names("bench")
    warehouse = create()
    try:
        env = _batch_env(max_batch_rows)
        chain = LocalChain(endpoint, names, source, warehouse, env=env)
        chain.prepare()
        config = pipeline.child_config(endpoint, source, warehouse, names, env)
        if mode == "pipelined":
            run = pipeline.run_pipelined(config, postmaster, load_workers)
        else:
            run = _sequential_run(config, postmaster)
        checksums = _checksums(warehouse)
        _discard(chain)
    finally:
        drop(warehouse)
    return _run_record(mode, max_batch_rows, run, checksums, reference)


def pipelined_comparison(
    endpoint: str,
    source: DbCredentials,
    warehouses: tuple[Callable[[], DbCredentials], Callable[[DbCredentials], None]],
    postmaster: int | None,
    reference: dict,
    main: dict,
    sizes: list[int | None],
    rounds: int,
    load_workers: int = pipeline.LOAD_WORKERS,
) -> dict:
    """The initial load sequential and pipelined at each batch size (``sizes[0]``: the
    chain's own, whose first sequential run is ``main``), ``rounds`` times, the order of
    the two alternating; every run from the same source into a fresh warehouse, compared
    with the reference's checksums. Medians per batch size and mode."""
    runs = []
    for r in range(rounds):
        for i, size in enumerate(sizes):
            order = ("sequential", "pipelined") if (r + i) % 2 == 0 else ("pipelined", "sequential")
            for mode in order:
                if r == 0 and i == 0 and mode == "sequential":
                    runs.append(main)
                    continue
                print(
                    f"  the initial load again, {mode}, max batch rows {size or 'default'} ...",
                    flush=True,
                )
                runs.append(
                    fresh_run(
                        mode,
                        endpoint,
                        source,
                        warehouses,
                        postmaster,
                        size,
                        reference,
                        load_workers,
                    )
                )
    summary = []
    for size in sizes:
        for mode in ("sequential", "pipelined"):
            mine = [r for r in runs if r["max_batch_rows"] == size and r["mode"] == mode]
            summary.append(
                {
                    "mode": mode,
                    "max_batch_rows": size,
                    "batches": mine[0]["batches"],
                    "rounds": len(mine),
                    **{
                        k: _median([r[k] for r in mine])
                        for k in (
                            "wall_s",
                            "stages_s",
                            "span_s",
                            "projected_pipelined_s",
                            "overlap_s",
                            "server_cpu_s",
                        )
                    },
                    "busy_s": {s: _median([r["busy_s"].get(s) for r in mine]) for s in STAGES},
                    "every_batch_once": all(r["every_batch_once"] for r in mine),
                    "same_warehouse": all(r["same_warehouse"] for r in mine),
                }
            )
    return {"runs": runs, "summary": summary, "load_workers": load_workers}


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


# -- the whole benchmark -----------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _ratios(initial: dict, extraction: dict, load: dict) -> dict:
    ingest, loaded = initial["ingest"]["rows_per_s"], initial["load"]["rows_per_s"]

    return {
        "ingest_vs_select_fetchall": ratio(ingest, extraction["select_fetchall"]["rows_per_s"]),
        "ingest_vs_copy_floor": ratio(ingest, extraction["copy_to_stdout_floor"]["rows_per_s"]),
        "load_vs_row_by_row_insert": ratio(loaded, load["row_by_row_insert"]["rows_per_s"]),
        "load_vs_copy_floor": ratio(loaded, load["copy_from_stdin_floor"]["rows_per_s"]),
    }


def floor_ratios(results: dict) -> dict:
    """The chain against its bare COPY floor (issue 16's goals), from a results document."""
    floor, initial = results["floor"], results["initial"]
    floor_seconds = floor["copy_to"]["seconds"] + floor["copy_from"]["seconds"]
    binary = floor.get("copy_from_binary")
    binary_floor = round(floor["copy_to"]["seconds"] + binary["seconds"], 3) if binary else None
    stage_sum = sum(r["seconds"] for r in initial.values())
    replay = floor.get("load_replay")
    small = results["incremental_small"]
    piped = _summary(results, "pipelined")
    sequential = _summary(results, "sequential")
    return {
        "floor_seconds": round(floor_seconds, 3),
        "chain_wall_vs_floor": ratio(results["initial_wall_seconds"], floor_seconds),
        "chain_stages_vs_floor": ratio(stage_sum, floor_seconds),
        "chain_pipelined_wall_vs_floor": ratio(piped.get("wall_s"), floor_seconds),
        "chain_pipelined_span_vs_floor": ratio(piped.get("span_s"), floor_seconds),
        "chain_pipelined_projected_vs_floor": ratio(
            sequential.get("projected_pipelined_s"), floor_seconds
        ),
        # the same against the lower floor of a binary COPY FROM (as load stages now)
        "binary_floor_seconds": binary_floor,
        "chain_pipelined_wall_vs_binary_floor": ratio(piped.get("wall_s"), binary_floor),
        "pipelined_vs_sequential_wall": ratio(piped.get("wall_s"), sequential.get("wall_s")),
        # every batch size and mode measured: median wall / floor
        "initial_wall_vs_floor_by_batch_rows": [
            {
                "max_batch_rows": r["max_batch_rows"],
                "batches": r["batches"],
                "mode": r["mode"],
                "wall_vs_floor": ratio(r["wall_s"], floor_seconds),
            }
            for r in (results.get("pipelined") or {}).get("summary", [])
        ],
        "ingest_rate_vs_copy_to_rate": ratio(
            initial["ingest"]["rows_per_s"], floor["copy_to"]["rows_per_s"]
        ),
        "load_rate_vs_copy_from_rate": ratio(
            initial["load"]["rows_per_s"], floor["copy_from"]["rows_per_s"]
        ),
        "load_batches_vs_one_batch": (
            ratio(replay["batches"]["seconds"], replay["one_batch"]["seconds"]) if replay else None
        ),
        "load_batches_vs_one_batch_server_cpu": (
            ratio(replay["batches"]["server_cpu_s"], replay["one_batch"]["server_cpu_s"])
            if replay
            else None
        ),
        "incremental_small_seconds": round(sum(r["seconds"] for r in small.values()), 2),
        "incremental_small_handler_seconds": round(
            sum(r["handler_seconds"] for r in small.values()), 2
        ),
        "peak_rss_mb": {
            stage: max(results[c][stage]["peak_rss_mb"] for c in CYCLES) for stage in STAGES
        },
    }


def _summary(results: dict, mode: str) -> dict:
    """The median run of ``mode`` at the chain's own batch size (empty when not measured)."""
    comparison = results.get("pipelined")
    if not comparison:
        return {}
    size = comparison["summary"][0]["max_batch_rows"]
    return next(
        (r for r in comparison["summary"] if r["mode"] == mode and r["max_batch_rows"] == size),
        {},
    )


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_floor(results: dict) -> None:
    floor, ratios = results["floor"], results["floor_ratios"]
    print(f"\n  bare COPY floor (median of {floor['copy_to']['rounds']} rounds):")
    for label, r in (
        ("COPY TO, every source row", floor["copy_to"]),
        ("COPY FROM, warehouse rows", floor["copy_from"]),
        *(
            [("COPY FROM binary, same rows", floor["copy_from_binary"])]
            if floor.get("copy_from_binary")
            else []
        ),
    ):
        print(
            f"  {label:<28}{r['rows']:>12,} rows{r['seconds']:>9.2f} s{r['rows_per_s']:>11,} rows/s"
            f"   server CPU {_cpu(r['server_cpu_s'])} s, client CPU {_cpu(r['client_cpu_s'])} s"
        )
    replay = floor.get("load_replay")
    if replay:
        for label, r in (
            (f"load {replay['batches']['batches']} batches", replay["batches"]),
            ("load as one batch", replay["one_batch"]),
        ):
            print(
                f"  {label:<28}{r['rows']:>12,} rows{r['seconds']:>9.2f} s{r['rows_per_s']:>11,}"
                f" rows/s   server CPU {_cpu(r['server_cpu_s'])} s,"
                f" client CPU {_cpu(r['client_cpu_s'])} s"
            )
    print(
        f"  whole initial chain / floor: {ratios['chain_wall_vs_floor']} (wall, 3 processes),"
        f" {ratios['chain_stages_vs_floor']} (the stages' own seconds)"
    )
    if ratios.get("chain_pipelined_wall_vs_floor") is not None:
        print(
            f"  whole initial chain pipelined (as on AWS) / floor:"
            f" {ratios['chain_pipelined_wall_vs_floor']} (wall),"
            f" {ratios['chain_pipelined_span_vs_floor']} (first invocation's start to the last"
            f" one's end); pipelined / sequential wall: {ratios['pipelined_vs_sequential_wall']}"
        )
        print(
            f"  the same pipelined without the stages sharing CPUs (projected from the"
            f" sequential run's per-batch times) / floor:"
            f" {ratios['chain_pipelined_projected_vs_floor']}"
        )
        if ratios.get("chain_pipelined_wall_vs_binary_floor") is not None:
            print(
                "  the same pipelined / the lower floor with a binary COPY FROM (as load stages"
                f" now): {ratios['chain_pipelined_wall_vs_binary_floor']} (wall)"
            )
    print(f"  ingest rate / COPY TO rate: {ratios['ingest_rate_vs_copy_to_rate']}")
    print(f"  load rate / COPY FROM rate: {ratios['load_rate_vs_copy_from_rate']}")
    print(
        f"  load of the backfill's batches / the same rows as one batch:"
        f" {ratios['load_batches_vs_one_batch']} (wall),"
        f" {ratios['load_batches_vs_one_batch_server_cpu']} (server CPU)"
    )
    print(
        f"  incremental cycle, {results['incremental_small']['ingest']['rows']:,} rows ingested:"
        f" {ratios['incremental_small_seconds']} s end to end (the three stages' own seconds;"
        f" {ratios['incremental_small_handler_seconds']} s in the handlers)"
    )
    print(
        "  rows ingested per cycle of the same activity: "
        + ", ".join(f"{results[c]['ingest']['rows']:,}" for c in ("incremental", "incremental_2"))
        + " (flat: nothing is read again)"
    )
    print(
        "  peak RSS per stage (MB): "
        + ", ".join(f"{k} {v:.0f}" for k, v in ratios["peak_rss_mb"].items())
    )


def _print_pipelined(results: dict) -> None:
    comparison = results.get("pipelined")
    if not comparison:
        print("\n  the pipelined initial load needs the embedded PostgreSQL (fresh warehouses):"
              " not measured")  # fmt: skip
        return
    print(
        "\n  initial load, sequential (stage after stage) vs pipelined (transform and load"
        " invoked per manifest as it lands, as S3 notifications drive them on AWS; load in"
        f" {comparison.get('load_workers', 1)} processes, its reserved concurrency), medians:"
    )
    print(
        f"  {'max batch rows':>14}{'batches':>8}  {'mode':<11}{'wall s':>8}{'span s':>8}"
        f"{'ingest':>8}{'transf.':>8}{'load':>8}{'overlap s':>10}{'server CPU s':>13}"
        f"{'rounds':>7}{'wall/floor':>11}{'projected s':>12}  same warehouse, every batch once"
    )
    floor_seconds = results["floor_ratios"]["floor_seconds"]
    for r in comparison["summary"]:
        busy = r["busy_s"]
        print(
            f"  {r['max_batch_rows'] or 'default':>14}{r['batches']:>8}  {r['mode']:<11}"
            f"{r['wall_s']:>8.2f}{r['span_s']:>8.2f}{busy['ingest']:>8.2f}"
            f"{busy['transform']:>8.2f}{busy['load']:>8.2f}{r['overlap_s']:>10.2f}"
            f"{_cpu(r['server_cpu_s']):>13}{r['rounds']:>7}"
            f"{ratio(r['wall_s'], floor_seconds) or '-':>11}"
            f"{_cpu(r['projected_pipelined_s']):>12}"
            f"  {r['same_warehouse']}, {r['every_batch_once']}"
        )
    print(
        "  (wall: processes, the pipelined run's downstream stages started and warm first;"
        " span: first invocation's start to the last one's end; ingest/transf./load: each"
        " stage's busy seconds in its handlers (summed over load's processes); overlap: busy"
        " seconds during which another stage or load process was busy too; projected: the"
        " sequential run's batches replayed as a pipeline"
        " whose stages do not share CPUs, from their own per-batch times)"
    )
    print("  " + MACHINE_NOTE.format(cpus=results["machine"]["cpus"]))


def _print(results: dict) -> None:
    print(f"\nscale {results['scale']:,} sales orders; source {results['source_rows']:,} rows;"
          f" generated in {results['generate_seconds']} s")  # fmt: skip
    header = (
        f"  {'cycle':<18}{'stage':<10}{'batches':>8}{'rows':>12}{'seconds':>10}{'rows/s':>11}"
        f"{'peak RSS MB':>13}{'server CPU s':>14}{'client CPU s':>14}"
    )
    print(header)
    for cycle in CYCLES:
        for stage, r in results[cycle].items():
            print(
                f"  {cycle:<18}{stage:<10}{r['batches']:>8}{r['rows']:>12,}{r['seconds']:>10.2f}"
                f"{r['rows_per_s']:>11,}{r['peak_rss_mb']:>13.0f}"
                f"{_cpu(r.get('server_cpu_s')):>14}{_cpu(r.get('client_cpu_s')):>14}"
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
    _print_pipelined(results)
    _print_floor(results)
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


def _checksums(warehouse: DbCredentials) -> dict:
    from totes_tools.warehouse.checksums import table_checksums

    with contextlib.closing(connect(warehouse, timeout=3600)) as con:
        return table_checksums(con)


def _main_record(initial: dict, wall: float, max_batch_rows: int | None) -> dict:
    """The chain's own initial load (sequential) as a run of the comparison; its warehouse
    is the reference."""
    servers = [initial[s]["server_cpu_s"] for s in STAGES]
    run = {
        "stages": initial,
        "wall_seconds": wall,
        "server_cpu_s": None if None in servers else round(sum(servers), 2),
        **pipeline.overlap({s: initial[s]["spans"] for s in STAGES}),
    }
    return _run_record("sequential", max_batch_rows, run, {}, {})


def main(args) -> int:
    """``python -m totes bench``: see the module docstring."""
    from totes_tools.source.generator import generate
    from totes_tools.source.simulator import Simulator

    _quiet()
    floor_rounds = getattr(args, "floor_rounds", FLOOR_ROUNDS)
    small_steps = getattr(args, "small_steps", SMALL_STEPS)
    max_batch_rows = getattr(args, "max_batch_rows", None)
    sizes = [max_batch_rows, *(getattr(args, "batch_sweep", None) or [])]
    pipeline_rounds = getattr(args, "pipeline_rounds", 1)
    load_workers = getattr(args, "load_workers", None) or pipeline.LOAD_WORKERS
    env = _batch_env(max_batch_rows)
    with contextlib.ExitStack() as stack:
        fresh_warehouse: Callable[[], DbCredentials] | None = None
        warehouses = None
        if args.source_url and args.warehouse_url:
            source = DbCredentials.from_url(args.source_url)
            warehouse = DbCredentials.from_url(args.warehouse_url)
        else:
            from totes_tools.local.postgres import embedded_postgres

            cluster = stack.enter_context(embedded_postgres())
            source = cluster.create_database("bench_totesys")
            warehouse = cluster.create_database("bench_warehouse")
            fresh_warehouse = functools.partial(cluster.create_database, "bench_replay")
            warehouses = (
                functools.partial(cluster.create_database, "bench_run"),
                cluster.drop_database,
            )
        endpoint = stack.enter_context(moto_server())
        stack.enter_context(aws_environment(endpoint))

        print(f"generating a totesys of {args.scale:,} sales orders ...", flush=True)
        con = stack.enter_context(contextlib.closing(connect(source, timeout=3600)))
        postmaster = cpu.postmaster_pid(con)
        started = time.perf_counter()
        counts = generate(con, args.scale, seed=42)
        generate_seconds = round(time.perf_counter() - started, 1)

        chain = LocalChain(endpoint, StackNames(), source, warehouse, env=env)
        chain.prepare()
        print("initial load: ingest, transform, load (one process each) ...", flush=True)
        started = time.perf_counter()
        initial = run_stages(endpoint, source, warehouse, postmaster, env)
        initial_wall = round(time.perf_counter() - started, 1)
        initial_batches = chain.processed.manifest_keys()
        comparison = None
        if warehouses is not None:
            print("the initial load pipelined, as on AWS ...", flush=True)
            comparison = pipelined_comparison(
                endpoint,
                source,
                warehouses,
                postmaster,
                _checksums(warehouse),
                _main_record(initial, initial_wall, max_batch_rows),
                sizes,
                pipeline_rounds,
                load_workers,
            )

        simulator = Simulator(con, seed=1)
        cycles = {}
        for cycle, steps in (
            ("incremental_small", small_steps),
            ("incremental", SIMULATOR_STEPS),
            ("incremental_2", SIMULATOR_STEPS),
        ):
            for _ in range(steps):
                simulator.step()
            print(f"incremental cycle after {steps} simulator steps ...", flush=True)
            cycles[cycle] = run_stages(endpoint, source, warehouse, postmaster, env)
        print("a quiet cycle (nothing changed at the source) ...", flush=True)
        quiet = run_stages(endpoint, source, warehouse, postmaster, env)

        print("baselines ...", flush=True)
        extraction = extraction_baselines(source)
        load = load_baselines(chain, initial["load"]["rows"])
        print("the bare COPY floor and the backfill loaded again ...", flush=True)
        batches = _processed_batches(chain.processed, initial_batches)
        floor = {
            "copy_to": copy_to_floor(source, postmaster, floor_rounds),
            "copy_from": copy_from_floor(warehouse, postmaster, batches, floor_rounds),
            "copy_from_binary": copy_from_floor(
                warehouse, postmaster, batches, floor_rounds, binary=True
            ),
            "load_replay": (
                load_replay(fresh_warehouse, postmaster, batches) if fresh_warehouse else None
            ),
        }
        del batches

    results = {
        "scale": args.scale,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "source_rows": sum(counts.values()),
        "source_rows_by_table": counts,
        "generate_seconds": generate_seconds,
        "initial": initial,
        "initial_wall_seconds": initial_wall,
        "max_batch_rows": max_batch_rows,
        "pipelined": comparison,
        "machine_note": MACHINE_NOTE.format(cpus=os.cpu_count()),
        **cycles,
        "quiet": quiet,
        "baselines": {"extraction": extraction, "load": load},
        "floor": floor,
    }
    results["ratios"] = _ratios(initial, extraction, load)
    results["floor_ratios"] = floor_ratios(results)
    results["lambda_cost"] = {
        "price": cost.price_note(),
        "quiet": cost.run_cost(_billed(quiet), FUNCTION_MEMORY_MB),
        "incremental": cost.run_cost(_billed(cycles["incremental"]), FUNCTION_MEMORY_MB),
    }
    _print(results)
    Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(run_child(sys.argv[2]))
    sys.exit("usage: python -m totes bench (this module's own entry is for its child processes)")
