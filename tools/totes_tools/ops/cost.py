"""What a run costs in Lambda: measured duration times configured memory at the published
arm64 price per GB-second, plus the price per request.

Prices: AWS Lambda, arm64, on-demand, the first pricing tier (first 7.5 billion GB-seconds a
month), as published on https://aws.amazon.com/lambda/pricing/ for US East (N. Virginia) and
Europe (London) alike (the London stack, ``eu-west-2``, pays the same): $0.0000133334 per
GB-second and $0.20 per million requests. Taken on 2026-11-29 (the official page renders its
rates client-side; the figures were read from transcriptions of it that agree). The free tier
(400,000 GB-seconds and one million requests a month per account) is not deducted, nor are
S3, SQS, DynamoDB, CloudWatch or data transfer: this is the functions' own compute.

Durations are those ``make bench`` measured with warm handlers (imports excluded: a cold start
adds about 1 s of billed initialisation once per container, not per run). Memory is the
template's ``MemorySize`` (``totes_tools.local.chain.FUNCTION_MEMORY_MB``, checked against it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ARM64_USD_PER_GB_SECOND = 0.0000133334
USD_PER_REQUEST = 0.20 / 1_000_000
PRICE_REGION = "US East (N. Virginia) = Europe (London), arm64, first tier"
PRICE_TAKEN = "2026-11-29"
PRICE_SOURCE = "https://aws.amazon.com/lambda/pricing/"
# The default schedule, rate(5 minutes), over a 30-day month.
SCHEDULE_SECONDS = 300
RUNS_PER_MONTH = 30 * 24 * 3600 // SCHEDULE_SECONDS  # 8,640


def stage_cost(seconds: float, memory_mb: int, requests: int) -> dict[str, float]:
    """One stage's cost for one run: its GB-seconds and dollars (compute + requests)."""
    gb_seconds = seconds * memory_mb / 1024
    usd = gb_seconds * ARM64_USD_PER_GB_SECOND + requests * USD_PER_REQUEST
    return {
        "seconds": round(seconds, 3),
        "memory_mb": memory_mb,
        "requests": requests,
        "gb_seconds": round(gb_seconds, 3),
        "usd_per_run": usd,
        "usd_per_month": usd * RUNS_PER_MONTH,
    }


def run_cost(stages: Mapping[str, Mapping[str, Any]], memory: Mapping[str, int]) -> dict:
    """Per stage and in total, for one run measured by the bench (``seconds`` and
    ``invocations`` per stage), and per month if every run at the default schedule were
    like it."""
    out = {
        stage: stage_cost(r["seconds"], memory[stage], int(r.get("invocations", 0)))
        for stage, r in stages.items()
    }
    total = sum(c["usd_per_run"] for c in out.values())
    return {
        "stages": out,
        "usd_per_run": total,
        "usd_per_month": total * RUNS_PER_MONTH,
        "runs_per_month": RUNS_PER_MONTH,
    }


def price_note() -> str:
    return (
        f"arm64 ${ARM64_USD_PER_GB_SECOND:.10f} per GB-s and"
        f" ${USD_PER_REQUEST * 1e6:.2f} per million requests ({PRICE_REGION};"
        f" {PRICE_SOURCE}, taken {PRICE_TAKEN}); a month is"
        f" {RUNS_PER_MONTH:,} runs at rate(5 minutes); free tier not deducted"
    )


def format_table(label: str, cost: Mapping[str, Any]) -> list[str]:
    lines = [
        f"  {label}: ${cost['usd_per_run']:.7f} per run, ${cost['usd_per_month']:.2f} per month",
        f"    {'stage':<10}{'invocations':>12}{'seconds':>9}{'MB':>6}{'GB-s':>9}"
        f"{'$ per run':>13}{'$ per month':>13}",
    ]
    for stage, c in cost["stages"].items():
        lines.append(
            f"    {stage:<10}{c['requests']:>12}{c['seconds']:>9.3f}{c['memory_mb']:>6}"
            f"{c['gb_seconds']:>9.3f}{c['usd_per_run']:>13.7f}{c['usd_per_month']:>13.4f}"
        )
    return lines
