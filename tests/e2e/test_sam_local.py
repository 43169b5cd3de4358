"""ingest -> transform -> load through ``sam local invoke`` in Docker, as a user runs it:
``python -m totes run --invoker sam-local`` against a ``local-aws`` endpoint on loopback and
databases on the embedded PostgreSQL's unix socket (or the loopback server of
``TOTES_TEST_DATABASE_URL``), which the invoker makes reachable from the containers. The
warehouse must equal SQL over the source, the same reference as the in-process end-to-end
tests (``e2e_reference``), after a first cycle and after simulated changes; the first cycle
must print what the in-process run prints for the same source.

Ingest runs with the ADBC driver there (its readers fall back to pg8000 only when
``adbc_driver_postgresql`` is not importable): the invoke image SAM built for ingest must hold
the local ADBC layer, import it from ``/opt/python`` beside the pandas layer's pyarrow, and
query the source with it from inside a container.

Runs when Docker answers, the SAM CLI is installed (``make build``) and the Lambda base image
is present (pulled, or the stand-in from ``tools/lambda_image/build.sh``); otherwise skipped
with the reason. ``TOTES_REQUIRE_DOCKER=1`` (CI) turns that skip into a failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_reference import expected_warehouse, source_state, warehouse_problems
from local_processes import PYTHONPATH, local_aws

from totes_tools.local.sam_local import (
    Forwarder,
    SamLocalError,
    base_image,
    docker_host,
    find_sam,
    require_image,
)
from totes_tools.source.generator import generate
from totes_tools.source.simulator import Simulator

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

REQUIRE_DOCKER_ENV = "TOTES_REQUIRE_DOCKER"
SCALE = 300


@pytest.fixture(scope="module")
def sam_local_ready() -> None:
    """Docker answers, SAM CLI and the base image are there; else skip (or fail in CI)."""
    try:
        host = docker_host()
        find_sam(REPO)
        require_image(base_image(host.architecture))
    except SamLocalError as exc:
        if os.environ.get(REQUIRE_DOCKER_ENV) == "1":
            pytest.fail(f"{REQUIRE_DOCKER_ENV}=1 but sam local invoke cannot run here: {exc}")
        pytest.skip(f"sam local invoke cannot run here: {exc}")


def totes(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    for key in ("AWS_ENDPOINT_URL", "RAW_BUCKET", "PROCESSED_BUCKET"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "totes", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )


def run(source, warehouse, *extra: str) -> subprocess.CompletedProcess:
    done = totes(
        "run",
        "--source-url",
        source.to_url(),
        "--warehouse-url",
        warehouse.to_url(),
        *extra,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def without_timings(report: str) -> str:
    """A run's report without what differs between two runs of the same cycle."""
    report = re.sub(r"\d+\.\d+ s", "S s", report)
    report = re.sub(r"warehouse freshness: .*", "warehouse freshness: F", report)
    # A run against a given emulator (--endpoint-url) keeps its metrics for the dashboard and
    # says where; a run on its own private emulator has none to keep.
    return re.sub(r"(?m)^metrics: .*\n", "", report)


def containers_left() -> list[str]:
    done = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", "label=sam.cli.container.type=lambda"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.split()


def test_the_chain_in_docker_loads_what_sql_over_the_source_gives_and_prints_the_same_report(
    sam_local_ready, source_db, fresh_db, pg_connect
):
    source = pg_connect(source_db)
    generate(source, SCALE, seed=11)
    before = source_state(source)
    warehouse, in_process_warehouse = fresh_db("wh"), fresh_db("wh")
    containers_before = set(containers_left())

    with local_aws() as endpoint:
        first = run(source_db, warehouse, "--invoker", "sam-local", "--endpoint-url", endpoint)

        assert warehouse_problems(source, pg_connect(warehouse), expected_warehouse(before)) == []
        in_process = run(source_db, in_process_warehouse)  # its own private emulator
        assert without_timings(first.stdout) == without_timings(in_process.stdout)
        assert "python -m totes dashboard draws them" in first.stdout
        assert "fact_sales_order" in first.stdout

        simulator = Simulator(source, seed=7)
        for _ in range(40):
            simulator.step()
        after = source_state(source)
        assert {"fact_sales_order", "fact_payment"} <= {t for t in after if after[t] != before[t]}

        second = run(source_db, warehouse, "--invoker", "sam-local", "--endpoint-url", endpoint)

    ingest = next(line for line in second.stdout.splitlines() if line.startswith("  ingest"))
    assert " 1 batch(es)" in ingest, second.stdout
    assert (
        warehouse_problems(source, pg_connect(warehouse), expected_warehouse(before, after)) == []
    )
    assert set(containers_left()) <= containers_before  # sam removed every container it made
    count = source.run("SELECT count(*) FROM sales_order")[0][0]
    assert ingest_image_queries_with_adbc(source_db, "SELECT count(*) AS n FROM sales_order") == {
        "driver": "/opt/python/adbc_driver_postgresql/__init__.py",
        "pyarrow": "/opt/python/pyarrow/__init__.py",
        "rows": [{"n": count}],
    }


ADBC_QUERY = """
import json, sys
import pyarrow, adbc_driver_postgresql, adbc_driver_postgresql.dbapi as dbapi
with dbapi.connect(sys.argv[1]) as conn, conn.cursor() as cur:
    cur.execute(sys.argv[2])
    rows = cur.fetch_arrow_table().to_pylist()
print(json.dumps({"driver": adbc_driver_postgresql.__file__, "pyarrow": pyarrow.__file__,
                  "rows": rows}))
"""


def ingest_image_queries_with_adbc(creds, sql: str) -> dict:
    """``sql``'s rows, read by ADBC in the image SAM built for ingest (the one with the local
    ADBC layer, recorded by the invoker) on the Lambda path /opt/python, through a forwarder
    from Docker's bridge to the source (as the invoker gives containers the databases)."""
    images = json.loads((REPO / ".aws-sam" / "local" / "images.json").read_text())
    with_adbc = [i for i, arns in images.items() if any("totes-local-adbc-" in a for a in arns)]
    created = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Created}} {{index .RepoTags 0}}",
         *with_adbc],
        capture_output=True, text=True, check=False,
    ).stdout.split("\n")  # fmt: skip
    newest = max(line for line in created if line.strip()).split()[-1]  # this run's ingest image
    host = docker_host()
    if creds.unix_socket_dir:
        target: tuple[str, int] | str = f"{creds.unix_socket_dir}/.s.PGSQL.{creds.port}"
    else:
        target = (creds.host, creds.port)
    forwarder = Forwarder(host.bind_host, target)
    try:
        url = dataclasses.replace(
            creds,
            host=host.container_host,
            port=forwarder.port,
            unix_socket_dir=None,
            sslmode="disable",
        ).to_url()
        done = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "/var/lang/bin/python3.13",
             "--env", "PYTHONPATH=/opt/python", newest, "-c", ADBC_QUERY, url, sql],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        forwarder.close()
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
