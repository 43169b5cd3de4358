"""The chain's stages as child processes, one after another (``run_stages``) or all at once
as AWS runs them (``run_pipelined``), for ``make bench``.

On AWS nothing waits for a stage to finish before the next starts: ingest writes batch 1's
raw manifest, S3 notifies, and transform of batch 1 runs while ingest writes batch 2; load of
batch 1 starts when its processed manifest lands. ``run_pipelined`` does the same locally:
transform and load run in their own processes from the start, each handing every S3 event to
its handler as soon as it lands on its queue (``LocalChain.follow``: one invocation per
manifest, in whatever order the queue gives), while ingest runs in a third. A stage knows its
upstream is finished when the parent, having seen the upstream process exit, creates a file
(moto queues a notification inside the PutObject that causes it, so by then every event the
upstream caused is queued).

What the figures mean on this machine: the three stages, the source database, the warehouse
database and the emulator share its cores (2 here), so overlap is bounded by CPU and a
pipelined stage runs slower than alone. On AWS each Lambda has its own CPUs and the source
and warehouse are separate servers, so the overlap measured here is a lower bound of what
AWS gets. One process stands for transform's reserved concurrency (it keeps up with ingest
here); load gets ``load_workers`` processes sharing its queue one event at a time, standing
for load's reserved concurrency (``WarehouseConnectionBudget``, 3 by default): a first
capture's batches COPY their facts before the load lock, so their loads overlap.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess  # nosec B404 - runs only our own module, as its own children
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from totes.db import DbCredentials
from totes_tools.local import cpu
from totes_tools.local.aws import StackNames

CHILD_ENV = "TOTES_BENCH_CHILD"
CHILD_MODULE = "totes_tools.local.bench"
STAGES = ("ingest", "transform", "load")
UPSTREAM = {"transform": "ingest", "load": "transform"}
# How long a following stage may take to start (imports, its cold start) before the run
# gives up on it.
READY_TIMEOUT_SECONDS = 120.0
# Load's processes in a pipelined run: its reserved concurrency (WarehouseConnectionBudget,
# 3 on AWS by default), 2 on this 2-core machine, where a third load only adds contention
# (docs/load.md "Backfill loads that overlap").
LOAD_WORKERS = 2
POLL_SECONDS = 0.05

_stack_seq = itertools.count()


def stack_names(tag: str) -> StackNames:
    """Resource names of a further stack in the same emulator (a run of its own, from the
    same source into its own warehouse)."""
    return StackNames.tagged(tag, f"{os.getpid()}-{next(_stack_seq)}")


def child_config(
    endpoint: str,
    source: DbCredentials,
    warehouse: DbCredentials,
    names: StackNames | None = None,
    env: Mapping[str, str] | None = None,
) -> dict:
    """What a stage's child process needs to build the same ``LocalChain`` as its parent."""
    return {
        "endpoint": endpoint,
        "source": source.to_url(),
        "warehouse": warehouse.to_url(),
        "names": dataclasses.asdict(names or StackNames()),
        "env": dict(env or {}),
    }


def _command(stage: str) -> list[str]:
    return [sys.executable, "-m", CHILD_MODULE, "--child", stage]


def _report(stage: str, stdout: str, stderr: str, returncode: int) -> dict:
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines:
        raise SystemExit(f"bench: the {stage} stage failed:\n{stdout}\n{stderr}")
    return json.loads(lines[-1])


def _server_delta(postmaster: int | None, started: float | None) -> float | None:
    now = cpu.server_cpu(postmaster)
    return round(now - started, 2) if now is not None and started is not None else None


def run_stages(config: dict, postmaster: int | None = None) -> dict:
    """Ingest, then transform, then load, each in its own process over what the one before
    left queued; their JSON reports, each with the server's CPU over the stage
    (``postmaster``: the server's, when visible)."""
    env = {**os.environ, CHILD_ENV: json.dumps(config)}
    out = {}
    for stage in STAGES:
        started = time.perf_counter()
        server_started = cpu.server_cpu(postmaster)
        done = subprocess.run(  # noqa: S603  # nosec B603 - our own module, fixed arguments
            _command(stage), env=env, capture_output=True, text=True, check=False
        )
        out[stage] = {
            **_report(stage, done.stdout, done.stderr, done.returncode),
            "process_seconds": round(time.perf_counter() - started, 2),
            "server_cpu_s": _server_delta(postmaster, server_started),
        }
    return out


def run_pipelined(
    config: dict, postmaster: int | None = None, load_workers: int = LOAD_WORKERS
) -> dict:
    """The three stages at once, as S3 notifications drive them on AWS (module docstring),
    load in ``load_workers`` processes. Transform and load start first and warm up (imports,
    cold start), then the clock starts with ingest; it stops when the last stage's process
    has exited. Returns each stage's JSON report (with its invocations' wall-clock spans; the
    load workers' reports combined), the wall time, the server's CPU over the run and the
    overlap (:func:`overlap`)."""
    with tempfile.TemporaryDirectory(prefix="totes-pipeline-") as tmp:
        signals = Path(tmp)
        procs: dict[str, subprocess.Popen] = {}
        files: dict[str, tuple] = {}

        def spawn(stage: str, name: str | None = None) -> None:
            name = name or stage
            follow = None
            shared = stage == "load" and load_workers > 1  # its processes share its queue
            if stage in UPSTREAM:
                follow = {
                    "upstream_done": str(signals / f"{UPSTREAM[stage]}.done"),
                    "ready": str(signals / f"{name}.ready"),
                    "shared_with": str(signals / "load.receive") if shared else None,
                }
            env = {**os.environ, CHILD_ENV: json.dumps({**config, "follow": follow})}
            files[name] = (
                (signals / f"{name}.out").open("w+"),
                (signals / f"{name}.err").open("w+"),
            )
            procs[name] = subprocess.Popen(  # noqa: S603  # nosec B603 - our own module
                _command(stage), env=env, stdout=files[name][0], stderr=files[name][1]
            )

        workers = [load_worker(i) for i in range(load_workers)]
        try:
            for worker in workers:
                spawn("load", worker)
            spawn("transform")
            _wait_ready(signals, procs, files)
            started = time.perf_counter()
            server_started = cpu.server_cpu(postmaster)
            spawn("ingest")
            ended = _wait_in_order(signals, procs)
            wall = time.perf_counter() - started
            server = _server_delta(postmaster, server_started)
            each = {
                name: {
                    **_report(name, *_output(files[name]), procs[name].returncode),
                    "exited_after_s": round(ended[name] - started, 2),
                }
                for name in procs
            }
            reports = {
                "ingest": each["ingest"],
                "transform": each["transform"],
                "load": combined([each[w] for w in workers]),
            }
        finally:
            for proc in procs.values():
                if proc.poll() is None:  # a stage left waiting after another failed
                    proc.kill()
                    proc.wait()
            for out, err in files.values():
                out.close()
                err.close()
    return {
        "stages": reports,
        "wall_seconds": round(wall, 2),
        "server_cpu_s": server,
        **overlap({stage: r["spans"] for stage, r in reports.items()}),
    }


def load_worker(index: int) -> str:
    """The name of load's ``index``-th process (its signal and output files)."""
    return "load" if index == 0 else f"load-{index + 1}"


def combined(reports: list[dict]) -> dict:
    """One stage's report from its processes' (concurrent invocations of one function):
    counts and CPU summed, spans and batches listed together, the largest RSS, the last
    exit."""
    if len(reports) == 1:
        return reports[0]
    rows_by_table: Counter[str] = Counter()
    for report in reports:
        rows_by_table.update(report["rows_by_table"])  # keeps a table's zero
    seconds = max(r["seconds"] for r in reports)
    rows = sum(r["rows"] for r in reports)
    return {
        "stage": reports[0]["stage"],
        "processes": len(reports),
        "invocations": sum(r["invocations"] for r in reports),
        "handler_seconds": round(sum(r["handler_seconds"] for r in reports), 3),
        "batches": sum(r["batches"] for r in reports),
        "batch_ids": [b for r in reports for b in r["batch_ids"]],
        "rows": rows,
        "rows_by_table": dict(rows_by_table),
        "seconds": seconds,
        "rows_per_s": round(rows / seconds) if seconds > 0 else 0.0,
        "rss_before_mb": max(r["rss_before_mb"] for r in reports),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in reports),
        "client_cpu_s": round(sum(r["client_cpu_s"] for r in reports), 2),
        "spans": sorted(s for r in reports for s in r["spans"]),
        "deliveries": sorted((d for r in reports for d in r["deliveries"]), key=lambda d: d[2]),
        "failures": [f for r in reports for f in r["failures"]],
        "exited_after_s": max(r["exited_after_s"] for r in reports),
    }


def _output(files: tuple) -> tuple[str, str]:
    out, err = files
    out.flush()
    err.flush()
    out.seek(0)
    err.seek(0)
    return out.read(), err.read()


def _wait_ready(signals: Path, procs: dict[str, subprocess.Popen], files: dict) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    for stage, proc in procs.items():
        while not (signals / f"{stage}.ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                out, err = _output(files[stage])
                raise SystemExit(f"bench: the {stage} stage did not start:\n{out}\n{err}")
            time.sleep(POLL_SECONDS)


def _wait_in_order(signals: Path, procs: dict[str, subprocess.Popen]) -> dict[str, float]:
    """Wait for every stage to exit; when one has, tell the stage after it that nothing more
    will come (a failed stage too, so its followers end; its failure is reported after)."""
    ended: dict[str, float] = {}
    while len(ended) < len(procs):
        for stage, proc in procs.items():
            if stage not in ended and proc.poll() is not None:
                ended[stage] = time.perf_counter()
                (signals / f"{stage}.done").touch()
        time.sleep(POLL_SECONDS)
    return ended


def _union(spans: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def overlap(spans: Mapping[str, list[tuple[float, float]]]) -> dict:
    """From each stage's invocation spans (wall clock): each stage's busy seconds, the span
    from the first invocation's start to the last one's end, the seconds in which at least
    one stage was busy, and the overlap: busy seconds that ran while another stage was also
    busy (the sum of busy seconds minus their union; 0 when the stages run one after another).
    ``tail_after_ingest_s``: what the pipeline did after ingest's last invocation ended."""
    every = [tuple(s) for stage in spans.values() for s in stage]
    if not every:
        return {"busy_s": {}, "span_s": 0.0, "any_busy_s": 0.0, "overlap_s": 0.0}
    busy = {stage: sum(e - s for s, e in stage_spans) for stage, stage_spans in spans.items()}
    first, last = min(s for s, _ in every), max(e for _, e in every)
    union = _union(every)  # type: ignore[arg-type]
    ingest_end = max((e for _, e in spans.get("ingest", [])), default=first)
    starts = {stage: min((s for s, _ in v), default=None) for stage, v in spans.items()}
    return {
        "busy_s": {stage: round(v, 2) for stage, v in busy.items()},
        "span_s": round(last - first, 2),
        "any_busy_s": round(union, 2),
        "overlap_s": round(sum(busy.values()) - union, 2),
        "started_after_s": {
            stage: round(s - first, 2) for stage, s in starts.items() if s is not None
        },
        "tail_after_ingest_s": round(last - ingest_end, 2),
    }


def projected(stages: Mapping[str, dict]) -> float | None:
    """The seconds a pipelined run would take if its stages did not share CPUs (on AWS each
    Lambda has its own), replayed from a sequential run's own per-batch times: each raw
    manifest lands when it landed there (its notification's SentTimestamp, during ingest);
    one transform at a time takes it once it has landed and the previous one has ended, for
    as long as it took there, and its processed manifest lands when it ends; one load at a
    time likewise. From ingest's start to the last invocation's end. The databases' work is
    inside those times, measured with the machine to each stage alone, so this projects away
    the contention between the stages, not the databases' own limits. None without the
    timeline (no ingest, or an event without its landing time)."""
    if not stages["ingest"]["spans"]:
        return None
    origin, ingest_end = stages["ingest"]["spans"][0][0], stages["ingest"]["spans"][-1][1]
    ready: dict[str, float] = {}
    free = origin
    for batch, landed, started, ended in sorted(
        stages["transform"]["deliveries"], key=lambda d: d[1] or 0.0
    ):
        if landed is None:
            return None
        free = max(landed, free) + (ended - started)
        ready[batch] = free
    end = max(ingest_end, free)
    free = origin
    for batch, _, started, ended in sorted(
        stages["load"]["deliveries"], key=lambda d: ready.get(d[0], float("inf"))
    ):
        if batch not in ready:
            return None
        free = max(ready[batch], free) + (ended - started)
        end = max(end, free)
    return round(end - origin, 2)
