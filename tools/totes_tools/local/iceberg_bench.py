"""``python -m totes iceberg-bench``: what the Iceberg target costs and leaves behind.

A generated totesys of ``--scale`` sales orders goes through the local chain with the Iceberg
target on: the backfill (the initial load, in bounded batches), then ``--cycles`` incremental
cycles after simulator activity. Measured:

- the Iceberg commit per batch: wall time in the chain (the handler against the emulator's S3
  and Glue, so request overheads are the emulator's), rows, rows per second; and the largest
  batch committed again in a child process into a fresh catalog on local disk, for its own
  wall time and peak RSS (what the function's memory must hold);
- the Iceberg seconds per batch of every incremental cycle: without maintenance between
  cycles (the default) they grow with the commits a table has gathered since its last
  maintenance (more manifests and small files to plan and read); ``--maintain-every K`` runs
  maintenance after every K cycles, as its schedule would;
- per table after the backfill and after the incremental cycles, each before and after one
  maintenance run: data files (count, bytes, smallest/median/largest), all objects under the
  table (metadata, manifests, manifest lists, orphans) and snapshots. Maintenance runs as if
  three days had passed (``--maintenance-age-hours``), so expiry and orphan removal act as
  they would in production.

Results are printed and written as JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess  # nosec B404 - runs only this module, as its own child
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from totes.db import DbCredentials, connect
from totes.observability import logger
from totes_tools.local.aws import StackNames, aws_environment, client, moto_server
from totes_tools.local.chain import CycleReport, LocalChain

STEPS_PER_CYCLE = 25
CHILD = "--child"


def _quiet() -> None:
    if not os.environ.get("POWERTOOLS_LOG_LEVEL"):
        logger.setLevel("ERROR")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


def _durations(report: CycleReport) -> list[float]:
    stage = report.stages.get("iceberg")
    return [m.value for m in stage.metrics if m.name == "IcebergDurationSeconds"] if stage else []


def _load_durations(report: CycleReport) -> list[float]:
    """The warehouse load's seconds per batch in the same cycle (the other target, for scale)."""
    stage = report.stages.get("load")
    return [m.value for m in stage.metrics if m.name == "LoadDurationSeconds"] if stage else []


def table_files(chain: LocalChain) -> dict[str, dict[str, Any]]:
    """Per table: its live data files (count, bytes, sizes), every object under its location
    and its snapshots."""
    from totes.iceberg.catalog import open_catalog
    from totes.iceberg.tables import all_tables

    settings = chain.iceberg.settings(chain.names)
    catalog = open_catalog(settings)
    s3 = client("s3", chain.endpoint_url)
    paginator = s3.get_paginator("list_objects_v2")
    out = {}
    for name in all_tables():
        table = catalog.load_table((settings.database, name))
        sizes = sorted(
            task.file.file_size_in_bytes for task in table.scan().plan_files()
        ) if table.current_snapshot() else []  # fmt: skip
        prefix = f"warehouse/{settings.database}/{name}/"
        objects = [
            o["Size"]
            for page in paginator.paginate(Bucket=chain.iceberg.bucket, Prefix=prefix)
            for o in page.get("Contents", ())
        ]
        out[name] = {
            "data_files": len(sizes),
            "data_bytes": sum(sizes),
            "smallest": sizes[0] if sizes else 0,
            "median": int(statistics.median(sizes)) if sizes else 0,
            "largest": sizes[-1] if sizes else 0,
            "objects": len(objects),
            "object_bytes": sum(objects),
            "snapshots": len(table.snapshots()),
        }
    return out


def maintain_now(chain: LocalChain, age_hours: int) -> dict[str, Any]:
    from totes.iceberg.catalog import open_catalog
    from totes.iceberg.maintenance import maintain

    settings = chain.iceberg.settings(chain.names)
    started = time.monotonic()
    reports = maintain(
        open_catalog(settings), settings, now=datetime.now(UTC) + timedelta(hours=age_hours)
    )
    return {
        "seconds": round(time.monotonic() - started, 2),
        "files_compacted": sum(r.files_compacted for r in reports),
        "files_written": sum(r.files_written for r in reports),
        "snapshots_expired": sum(r.snapshots_expired for r in reports),
        "files_removed": sum(r.files_removed for r in reports),
        "bytes_removed": sum(r.bytes_removed for r in reports),
    }


def _largest_batch(chain: LocalChain) -> tuple[str, int]:
    sizes = {
        key: sum(chain.processed.get_manifest(key).row_counts.values())
        for key in chain.processed.manifest_keys()
    }
    key = max(sizes, key=lambda k: sizes[k])
    return key, sizes[key]


ISOLATED_ROUNDS = 3


def isolated_commit(chain: LocalChain, manifest_key: str) -> dict[str, Any]:
    """The batch committed again by a child process into a fresh SQL catalog on local disk,
    ``ISOLATED_ROUNDS`` times (a fresh child and catalog each): the medians of its wall time
    and CPU time (user + system) and its peak RSS are the Iceberg stage's own. The machine is
    shared, so the CPU time is the steadier figure."""
    spec = {
        "endpoint": chain.endpoint_url,
        "bucket": chain.names.processed_bucket,
        "key": manifest_key,
    }
    rounds = []
    for _ in range(ISOLATED_ROUNDS):
        done = subprocess.run(  # noqa: S603  # nosec B603 - this module, with our own arguments
            [sys.executable, "-m", "totes_tools.local.iceberg_bench", CHILD, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
            env={**os.environ},
        )
        if done.returncode:
            raise RuntimeError(f"the isolated commit failed: {done.stderr[-2000:]}")
        rounds.append(json.loads(done.stdout.strip().splitlines()[-1]))
    seconds = statistics.median(r["seconds"] for r in rounds)
    return {
        "rows": rounds[0]["rows"],
        "commits": rounds[0]["commits"],
        "rounds": rounds,
        "seconds_median": round(seconds, 2),
        "cpu_seconds_median": round(statistics.median(r["cpu_seconds"] for r in rounds), 2),
        "rows_per_second_median": round(rounds[0]["rows"] / seconds),
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rounds),
    }


def _cpu() -> float:
    """CPU seconds (user + system) of this process: the chain's handlers and the emulator,
    which runs in a thread of it (PostgreSQL's own processes are not counted)."""
    times = os.times()
    return times.user + times.system


def _child(spec: dict[str, Any]) -> None:
    import resource

    from totes.iceberg.batch import apply_batch
    from totes.iceberg.catalog import ensure_tables, open_catalog
    from totes.iceberg.settings import IcebergSettings
    from totes.lake import Lake
    from totes.stages.load_batch import read_batch

    _quiet()
    s3 = client("s3", spec["endpoint"])
    lake = Lake(s3, spec["bucket"])
    manifest = lake.get_manifest(spec["key"])
    tables = read_batch(lake, manifest)
    with tempfile.TemporaryDirectory() as scratch:
        settings = IcebergSettings(
            "p", "i", f"file://{scratch}/warehouse", "star", f"sqlite:///{scratch}/catalog.db"
        )
        catalog = open_catalog(settings, endpoint_url="")
        ensure_tables(catalog, settings)
        started, cpu = time.monotonic(), _cpu()
        result = apply_batch(catalog, "star", manifest, tables)
        seconds, cpu = time.monotonic() - started, _cpu() - cpu
    rows = sum(t.num_rows for t in tables.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux
    print(
        json.dumps(
            {
                "rows": rows,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "rows_per_second": round(rows / seconds),
                "commits": result.commits,
                "peak_rss_mb": peak,
            }
        )
    )


def main(args) -> int:
    from totes_tools.local.postgres import embedded_postgres
    from totes_tools.source.generator import generate
    from totes_tools.source.simulator import Simulator

    _quiet()
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {text}", flush=True)

    results: dict[str, Any] = {
        "scale": args.scale,
        "cycles": args.cycles,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_at_start": os.getloadavg(),
    }
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(embedded_postgres())
        endpoint = stack.enter_context(moto_server())
        stack.enter_context(aws_environment(endpoint))
        source: DbCredentials = cluster.create_database("totesys")
        warehouse = cluster.create_database("warehouse")
        con = stack.enter_context(contextlib.closing(connect(source)))
        counts = generate(con, args.scale, seed=42)
        say(f"generated totesys: {sum(counts.values()):,} rows")
        chain = LocalChain(endpoint, StackNames(), source, warehouse, iceberg=True)
        chain.prepare()

        wall, cpu = time.monotonic(), _cpu()
        backfill = chain.run_cycle()
        wall, cpu = time.monotonic() - wall, _cpu() - cpu
        if not backfill.ok:
            raise SystemExit(backfill.format())
        durations = _durations(backfill)
        rows = {
            key: sum(chain.processed.get_manifest(key).row_counts.values())
            for key in chain.processed.manifest_keys()
        }
        results["backfill"] = {
            "batches": len(durations),
            "rows": sum(rows.values()),
            "iceberg_seconds_per_batch": [round(d, 2) for d in durations],
            "rows_per_batch": list(rows.values()),
            "iceberg_rows_per_second": round(sum(rows.values()) / sum(durations)),
            "load_seconds": round(backfill.stages["load"].seconds, 2),
            "load_seconds_per_batch_median": round(
                statistics.median(_load_durations(backfill) or [0.0]), 2
            ),
            "cycle_wall_seconds": round(wall, 1),
            "cycle_process_cpu_seconds": round(cpu, 1),
            "load_average_after": os.getloadavg(),
        }
        say(f"backfill: {results['backfill']}")
        results["after_backfill"] = {"before_maintenance": table_files(chain)}
        results["after_backfill"]["maintenance"] = maintain_now(chain, args.maintenance_age_hours)
        results["after_backfill"]["after_maintenance"] = table_files(chain)
        say(f"maintenance after the backfill: {results['after_backfill']['maintenance']}")

        key, size = _largest_batch(chain)
        results["isolated_commit_of_the_largest_batch"] = isolated_commit(chain, key)
        alone = results["isolated_commit_of_the_largest_batch"]
        say(f"largest batch ({size:,} rows) alone: {alone}")

        simulator = Simulator(con, seed=7)
        per_cycle, rows_per_cycle, load_per_cycle = [], [], []
        by_cycle: list[float] = []  # the Iceberg seconds per batch of each cycle
        scheduled: list[dict[str, Any]] = []  # maintenance runs between cycles
        wall, cpu = time.monotonic(), _cpu()
        for n in range(1, args.cycles + 1):
            for _ in range(STEPS_PER_CYCLE):
                simulator.step()
            report = chain.run_cycle()
            if not report.ok:
                raise SystemExit(report.format())
            per_cycle.extend(_durations(report))
            load_per_cycle.extend(_load_durations(report))
            by_cycle.append(round(statistics.median(_durations(report) or [0.0]), 2))
            if args.maintain_every and n % args.maintain_every == 0 and n < args.cycles:
                # the maintenance schedule fires between two runs (as every K ingest runs)
                scheduled.append(maintain_now(chain, 0))  # now: expiry keeps its 72 h
            rows_per_cycle.append(sum(report.stages["transform"].rows.values()))
            if n % 10 == 0:
                say(f"cycle {n}: Iceberg {statistics.median(per_cycle):.2f} s per batch (median)")
        results["incremental"] = {
            "batches": len(per_cycle),
            "rows_per_batch_median": statistics.median(rows_per_cycle),
            "iceberg_seconds_median": round(statistics.median(per_cycle), 2),
            "iceberg_seconds_p90": round(
                min(max(per_cycle), statistics.quantiles(per_cycle, n=10)[-1]), 2
            ),
            "iceberg_seconds_max": round(max(per_cycle), 2),
            "iceberg_seconds_by_cycle": by_cycle,
            "iceberg_seconds_first_10_median": round(statistics.median(by_cycle[:10]), 2),
            "iceberg_seconds_last_10_median": round(statistics.median(by_cycle[-10:]), 2),
            "maintain_every": args.maintain_every,
            "maintenance_between_cycles": scheduled,
            "load_seconds_median": round(statistics.median(load_per_cycle), 2),
            "wall_seconds": round(time.monotonic() - wall, 1),
            "process_cpu_seconds": round(_cpu() - cpu, 1),
            "load_average_after": os.getloadavg(),
        }
        results["after_incremental"] = {"before_maintenance": table_files(chain)}
        results["after_incremental"]["maintenance"] = maintain_now(
            chain, args.maintenance_age_hours
        )
        results["after_incremental"]["after_maintenance"] = table_files(chain)
        done = results["after_incremental"]["maintenance"]
        say(f"maintenance after {args.cycles} cycles: {done}")
    results["seconds"] = round(time.monotonic() - started, 1)
    Path(args.output).write_text(json.dumps(results, indent=1))
    print(_summary(results), flush=True)
    return 0


def _summary(results: dict[str, Any]) -> str:
    lines = []
    for phase in ("after_backfill", "after_incremental"):
        lines.append(f"{phase.replace('_', ' ')}: data files / bytes / objects / snapshots")
        before, after = (results[phase][k] for k in ("before_maintenance", "after_maintenance"))
        for name in before:
            b, a = before[name], after[name]
            lines.append(
                f"  {name:<31} {b['data_files']:>5} -> {a['data_files']:<5}"
                f" {b['data_bytes']:>11,} -> {a['data_bytes']:<11,}"
                f" {b['objects']:>5} -> {a['objects']:<5} {b['snapshots']:>4} -> {a['snapshots']}"
            )
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == CHILD:
    _child(json.loads(sys.argv[2]))
