"""``make demo``: the whole chain on this machine with nothing configured.

An embedded PostgreSQL holds a generated totesys and an empty warehouse; an in-process moto
server stands in for AWS. The chain runs the initial load, then a few rounds of live business
activity (the simulator) each followed by an incremental cycle, then quiet cycles (nothing
changes: the freshness heartbeat), and asks the star schema the questions a BI dashboard would
of both targets: the PostgreSQL warehouse, and the Iceberg tables the optional second target
keeps (DuckDB over pyiceberg's Arrow scans, as Athena would over the Glue catalog), showing
that they agree. It draws the template's CloudWatch dashboards (the pipeline's and the Iceberg
target's) from the metrics the run emitted (``.totes/demo/dashboard.png`` and ``.html``).
Everything it started is stopped and deleted when it ends, on success, on error or on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from totes.db import DbCredentials, connect
from totes.iceberg.settings import IcebergSettings
from totes.observability import logger
from totes.star.model import STAR_TABLES
from totes_tools.local.aws import StackNames, aws_environment, moto_server
from totes_tools.local.chain import CycleReport, LocalChain
from totes_tools.local.iceberg import read_tables
from totes_tools.local.postgres import embedded_postgres
from totes_tools.ops import cloudwatch, dashboard, metricstore

STEPS_PER_ROUND = 25
QUIET_ROUNDS = 2

# Facts keep every version of an order; BI questions about orders read the latest one.
QUESTIONS = {
    "Revenue by month and currency (latest 6 months)": """
        WITH s AS (SELECT DISTINCT ON (sales_order_id) * FROM fact_sales_order
                   ORDER BY sales_order_id, last_updated_date DESC, last_updated_time DESC),
        by_month AS (
            SELECT d.year, d.month, d.month_name, c.currency_code,
                   sum(s.units_sold * s.unit_price) AS revenue, count(*) AS orders
            FROM s JOIN dim_date d ON d.date_id = s.created_date
                   JOIN dim_currency c ON c.currency_id = s.currency_id
            GROUP BY d.year, d.month, d.month_name, c.currency_code)
        SELECT year, month_name, currency_code, revenue, orders FROM by_month
        WHERE (year, month) IN (SELECT DISTINCT year, month FROM by_month
                                ORDER BY year DESC, month DESC LIMIT 6)
        ORDER BY year DESC, month DESC, currency_code""",
    "Top 5 designs by units sold": """
        WITH s AS (SELECT DISTINCT ON (sales_order_id) * FROM fact_sales_order
                   ORDER BY sales_order_id, last_updated_date DESC, last_updated_time DESC)
        SELECT d.design_name, sum(s.units_sold) AS units, count(*) AS orders
        FROM s JOIN dim_design d ON d.design_id = s.design_id
        GROUP BY d.design_name ORDER BY units DESC, d.design_name LIMIT 5""",
    "Sales by counterparty country (top 8, all currencies)": """
        WITH s AS (SELECT DISTINCT ON (sales_order_id) * FROM fact_sales_order
                   ORDER BY sales_order_id, last_updated_date DESC, last_updated_time DESC)
        SELECT cp.counterparty_legal_country AS country, count(*) AS orders,
               sum(s.units_sold) AS units
        FROM s JOIN dim_counterparty cp ON cp.counterparty_id = s.counterparty_id
        GROUP BY cp.counterparty_legal_country ORDER BY units DESC, country LIMIT 8""",
    "Payments: paid vs unpaid (latest version of each)": """
        WITH p AS (SELECT DISTINCT ON (payment_id) * FROM fact_payment
                   ORDER BY payment_id, last_updated_date DESC, last_updated_time DESC)
        SELECT t.payment_type_name, p.paid, count(*) AS payments
        FROM p JOIN dim_payment_type t ON t.payment_type_id = p.payment_type_id
        GROUP BY t.payment_type_name, p.paid ORDER BY 1, 2""",
}


def _say(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)


def _cycle_line(report: CycleReport) -> str:
    rows = {s: sum(r.rows.values()) for s, r in report.stages.items()}
    load = report.stages["load"]
    new, changed = (
        int(sum(load.metric_total(name).values()))
        for name in ("LoadRowsInserted", "LoadRowsUpdated")
    )
    fresh = report.freshness_seconds
    iceberg = report.stages.get("iceberg")
    if iceberg is not None:
        iceberg_part = f", Iceberg {len(iceberg.batches)} batch(es) in {iceberg.seconds:.1f} s"
    else:
        iceberg_part = ""
    heartbeat = [
        p.value
        for p in report.datapoints
        if p.name == "IcebergFreshnessSeconds" and p.dimensions == {"service": "ingest"}
    ]
    return (
        f"ingest {rows['ingest']:,} rows in {len(report.stages['ingest'].batches)} batch(es),"
        f" transform {rows['transform']:,}, load {rows['load']:,} ({new:,} new rows,"
        f" {changed:,} dimension rows updated){iceberg_part}; {report.seconds:.1f} s"
        + (f"; warehouse freshness {fresh:.1f} s" if fresh is not None else "")
        + (
            f"; Iceberg tables' freshness (ingest heartbeat) {heartbeat[-1]:.1f} s"
            if heartbeat
            else ""
        )
    )


def _table(rows: list, headers: list[str]) -> str:
    cells = [headers, *[[_fmt(v, h) for v, h in zip(row, headers, strict=True)] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("    " + line for line in lines)


def _fmt(value, header: str = "") -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and header != "year":
        return f"{value:,}"
    if hasattr(value, "quantize"):  # Decimal money
        return f"{value:,.2f}"
    return str(value)


def warehouse_answers(warehouse: DbCredentials) -> dict[str, tuple[list[str], list]]:
    """Each BI question's (column names, rows), asked of the PostgreSQL warehouse."""
    con = connect(warehouse, application_name="totes-demo-bi")
    out = {}
    try:
        for question, sql in QUESTIONS.items():
            rows = con.run(sql)
            out[question] = ([c["name"] for c in con.columns], [list(r) for r in rows])
    finally:
        con.close()
    return out


def iceberg_answers(settings: IcebergSettings) -> dict[str, tuple[list[str], list]]:
    """The same questions, in the same SQL, asked of the Iceberg tables: each table read
    through the catalog (pyiceberg's Arrow scan) and queried by DuckDB."""
    import duckdb

    tables = read_tables(settings, [t.name for t in STAR_TABLES])
    con = duckdb.connect()
    try:
        for name, data in tables.items():
            con.register(name, data)
        out = {}
        for question, sql in QUESTIONS.items():
            result = con.execute(sql)
            headers = [d[0] for d in result.description]
            out[question] = (headers, [list(r) for r in result.fetchall()])
        return out
    finally:
        con.close()


def answers(warehouse: DbCredentials) -> str:
    """The BI questions, asked of the star schema only."""
    return "\n\n".join(
        f"  {question}\n{_table(rows, headers)}"
        for question, (headers, rows) in warehouse_answers(warehouse).items()
    )


def agreement(warehouse: DbCredentials, settings: IcebergSettings) -> tuple[str, bool]:
    """Whether the Iceberg tables give every answer the warehouse gives, question by question."""
    ours, theirs = warehouse_answers(warehouse), iceberg_answers(settings)
    lines, agree = [], True
    for question, (_, rows) in ours.items():
        same = rows == theirs[question][1]
        agree &= same
        verdict = f"the same {len(rows)} row(s)" if same else "DIFFERENT rows"
        lines.append(f"    {question}: {verdict}")
        if not same:
            lines.append(f"{_table(theirs[question][1], theirs[question][0])}")
    return "\n".join(lines), agree


def _fail(report: CycleReport) -> None:
    if not report.ok:
        raise SystemExit("demo: the chain failed:\n" + "\n".join(map(str, report.failures)))


def main(args) -> int:
    """Run the demo; ``args.scale`` sales orders, ``args.rounds`` incremental rounds."""
    from totes_tools.source.generator import generate
    from totes_tools.source.simulator import Simulator

    if not os.environ.get("POWERTOOLS_LOG_LEVEL"):
        logger.setLevel("ERROR")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the emulator's request log
    started = time.monotonic()
    _say(started, "starting an embedded PostgreSQL and a local AWS emulator")
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(embedded_postgres())
        endpoint = stack.enter_context(moto_server())
        stack.enter_context(aws_environment(endpoint))
        source = cluster.create_database("totesys")
        warehouse = cluster.create_database("warehouse")

        con = stack.enter_context(contextlib.closing(connect(source)))
        counts = generate(con, args.scale, seed=42)
        _say(
            started,
            f"generated totesys: {sum(counts.values()):,} rows"
            f" ({counts['sales_order']:,} sales orders, {counts['payment']:,} payments)",
        )

        metrics_path = metricstore.state_dir() / "demo" / "metrics.jsonl"
        metrics_path.unlink(missing_ok=True)
        chain = LocalChain(
            endpoint, StackNames(), source, warehouse, metrics_path=metrics_path, iceberg=True
        )
        chain.prepare()
        _say(
            started,
            "local stack ready (buckets, queues, secrets, the Iceberg target's bucket, Glue"
            " database and rule); warehouse migrated",
        )
        report = chain.run_cycle()
        _fail(report)
        _say(started, "initial load: " + _cycle_line(report))

        simulator = Simulator(con, seed=7)
        for n in range(1, args.rounds + 1):
            written: dict[str, int] = {}
            steps = [simulator.step() for _ in range(STEPS_PER_ROUND)]
            if n == 1:  # 200 orders sharing one timestamp: ties no batch may split or lose
                steps.append(simulator.tie_burst(200))
            for step in steps:
                for kind in ("inserted", "updated"):
                    for table, ids in step[kind].items():
                        written[table] = written.get(table, 0) + len(ids)
            activity = ", ".join(f"{t} {k}" for t, k in sorted(written.items()))
            _say(started, f"round {n}: the business wrote {activity}")
            report = chain.run_cycle()
            _fail(report)
            _say(started, f"round {n}: " + _cycle_line(report))

        for n in range(1, QUIET_ROUNDS + 1):  # the heartbeat: fresh while nothing changes
            maintenance_run = None
            if n == QUIET_ROUNDS:
                # The target's schedule fires once, within a scheduled run as on AWS, where
                # ingest runs every 5 minutes whatever else does. Drawn as a cycle of its own,
                # it was a 5-minute run without ingest: a heartbeat period with no report,
                # which ended the demo with both freshness alarms in ALARM.
                maintenance = maintenance_run = chain.maintain_iceberg()
                _fail(maintenance)
            # The maintenance's metrics are recorded with this cycle's (no end_cycle of its own).
            report = chain.run_cycle(maintenance_run)
            _fail(report)
            _say(started, f"quiet round {n} (no activity): " + _cycle_line(report))
        done = maintenance.stages["iceberg"]
        totals = {
            name: int(sum(done.metric_total(metric).values()))
            for name, metric in (
                ("files compacted", "IcebergFilesCompacted"),
                ("snapshots expired", "IcebergSnapshotsExpired"),
                ("files removed", "IcebergFilesRemoved"),
            )
        }
        _say(
            started,
            "Iceberg maintenance (its schedule): "
            + ", ".join(f"{v} {k}" for k, v in totals.items())
            + f"; {done.seconds:.1f} s",
        )

        print("\nWhat the warehouse can answer now:\n", flush=True)
        print(answers(warehouse), flush=True)
        print(
            "\nThe same questions asked of the Iceberg tables (Glue catalog in the emulator,"
            " DuckDB over pyiceberg's Arrow scans):\n",
            flush=True,
        )
        verdicts, agree = agreement(warehouse, chain.iceberg.settings(chain.names))
        print(verdicts, flush=True)
        print("  Both targets agree." if agree else "  The targets DISAGREE.", flush=True)
        print()
        png, page, drawn = dashboard.write(
            cloudwatch.load_template(),
            dashboard.names_from_record(chain.local_names()),
            chain.datapoints,
            metrics_path.parent,
        )
        states = [e for p in drawn if p.kind == "alarm" for e in p.alarms]
        alarming = [e.alarm for e in states if e.in_alarm]
        _say(
            started,
            f"the stack's CloudWatch dashboard drawn from this run's {len(chain.datapoints)}"
            f" datapoints ({len(states)} alarms, in alarm: {', '.join(alarming) or 'none'}):"
            f"\n    {png}\n    {page}",
        )
        if not agree:
            raise SystemExit("demo: the Iceberg tables answer differently from the warehouse")
        _say(started, "done; stopping PostgreSQL and the emulator and deleting their data")
    _say(started, "nothing left running")
    return 0
