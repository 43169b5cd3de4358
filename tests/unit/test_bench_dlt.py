"""``make bench-dlt``'s pure parts: the rotation of variants, the medians and ratios, the report
and the URLs dlt is given (running dlt needs its own environment: not in the suite)."""

from __future__ import annotations

import pytest

from totes.db import DbCredentials
from totes_tools.local.bench_dlt import (
    dlt_destination_url,
    format_report,
    rotated,
    sqlalchemy_url,
    summarize,
)


def run(variant: str, seconds: float, server: float | None, client: float, parts: dict) -> dict:
    return {
        "variant": variant,
        "seconds": seconds,
        "server_cpu_s": server,
        "client_cpu_s": client,
        "rows": 100,
        "parts": parts,
    }


OURS = {"ingest": 1.0, "transform": 2.0, "load": 3.0}
DLT = {"extract": 1.0, "normalize": 0.1, "load": 0.5}


def test_each_variant_runs_first_once_in_turn():
    variants = ["ours", "dlt_parquet", "dlt_csv"]
    assert [rotated(variants, r)[0] for r in range(3)] == variants
    assert rotated(variants, 4) == ["dlt_parquet", "dlt_csv", "ours"]


def test_medians_per_variant_and_ratios_of_ours_to_each_dlt_variant():
    records = [
        run("ours", 30.0, 12.0, 9.0, OURS),
        run("dlt_parquet", 10.0, 2.0, 8.0, DLT),
        run("ours", 50.0, 14.0, 11.0, {**OURS, "load": 5.0}),
        run("dlt_parquet", 12.0, 2.0, 6.0, DLT),
        run("ours", 40.0, 13.0, 10.0, OURS),
        run("dlt_parquet", 99.0, 4.0, 7.0, {**DLT, "extract": 9.0}),
    ]

    summary = summarize(records)

    ours, dlt = summary["variants"]["ours"], summary["variants"]["dlt_parquet"]
    assert (ours["seconds"], ours["server_cpu_s"], ours["client_cpu_s"]) == (40.0, 13.0, 10.0)
    assert (dlt["seconds"], dlt["server_cpu_s"], dlt["client_cpu_s"]) == (12.0, 2.0, 7.0)
    assert ours["parts"] == {"ingest": 1.0, "transform": 2.0, "load": 3.0}
    assert dlt["parts"]["extract"] == 1.0
    assert ours["rounds"] == dlt["rounds"] == 3
    assert summary["ratios"] == {
        "ours_vs_dlt_parquet": {"seconds": 3.33, "server_cpu_s": 6.5, "client_cpu_s": 1.43}
    }


def test_the_cpu_of_the_benchs_own_process_is_shown_apart():
    """Our stages read and write S3 through an emulator in the bench's process: its CPU is in
    our client CPU, and shown on its own ("of it here")."""
    records = [
        {**run("ours", 40.0, 13.0, 10.0, OURS), "own_cpu_s": 3.0},
        {**run("ours", 44.0, 13.0, 12.0, OURS), "own_cpu_s": 4.0},
        {**run("dlt_parquet", 10, 2, 8, DLT), "own_cpu_s": 0.1},
    ]

    summary = summarize(records)
    lines = format_report(summary)

    assert summary["variants"]["ours"]["own_cpu_s"] == 3.5
    assert lines[1].split()[4:7] == ["13.00", "11.00", "3.50"]
    assert lines[2].split()[4:7] == ["2.00", "8.00", "0.10"]
    assert "S3 emulator" in lines[3]


def test_a_server_cpu_not_measured_gives_no_ratio_instead_of_a_wrong_one():
    summary = summarize([run("ours", 4.0, None, 1.0, OURS), run("dlt_csv", 2.0, 1.0, 1.0, DLT)])

    assert summary["variants"]["ours"]["server_cpu_s"] is None
    assert summary["ratios"]["ours_vs_dlt_csv"] == {
        "seconds": 2.0,
        "server_cpu_s": None,
        "client_cpu_s": 1.0,
    }
    assert "- (server CPU)" in format_report(summary)[-1]


def test_the_report_has_a_line_per_variant_and_per_ratio():
    summary = summarize([run("ours", 40.0, 13.0, 10.0, OURS), run("dlt_parquet", 10, 2, 8, DLT)])

    lines = format_report(summary)

    assert len(lines) == 5
    assert lines[1].split()[:4] == ["ours", "1", "100", "40.00"]
    assert "ingest 1.00, transform 2.00, load 3.00" in lines[1]
    assert lines[4] == ("  ours_vs_dlt_parquet: 4.00 (wall), 6.50 (server CPU), 1.25 (client CPU)")


@pytest.mark.parametrize(
    ("creds", "source", "destination"),
    [
        (
            DbCredentials("postgres", "src", unix_socket_dir="/tmp/pg", port=5433),
            "postgresql+psycopg2://postgres:unused@localhost/src?host=/tmp/pg&port=5433",
            "postgresql://postgres:unused@localhost/src?host=/tmp/pg&port=5433",
        ),
        (
            DbCredentials("u", "db", host="h", port=5432, password="p@ss"),
            "postgresql+psycopg2://u:p%40ss@h:5432/db",
            "postgresql://u:p%40ss@h:5432/db",
        ),
    ],
)
def test_dlt_gets_the_same_database_as_urls_it_accepts(creds, source, destination):
    assert sqlalchemy_url(creds) == source
    assert dlt_destination_url(creds) == destination


def test_each_of_our_variants_gets_a_ratio_to_each_dlt_variant_and_none_to_the_other():
    records = [
        run("ours", 30.0, 12.0, 9.0, OURS),
        run("ours_pipelined", 24.0, 12.0, 9.0, OURS),
        run("dlt_parquet", 12.0, 3.0, 6.0, DLT),
    ]

    summary = summarize(records)

    assert summary["variants"]["ours_pipelined"]["parts"] == OURS
    assert summary["ratios"] == {
        "ours_vs_dlt_parquet": {"seconds": 2.5, "server_cpu_s": 4.0, "client_cpu_s": 1.5},
        "ours_pipelined_vs_dlt_parquet": {"seconds": 2.0, "server_cpu_s": 4.0, "client_cpu_s": 1.5},
    }
