"""``python -m totes run`` as a user runs it, in a subprocess: one cycle of the chain against
the user's databases, a persistent watermark with ``--endpoint-url``, and bad input that is
refused with a clear message and a non-zero exit before the lake or the warehouse changes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from local_processes import PYTHONPATH, local_aws

from totes.db import DbCredentials, connect
from totes_tools.local.aws import StackNames
from totes_tools.source.ddl import create_schema
from totes_tools.source.generator import generate
from totes_tools.source.simulator import Simulator

REPO = Path(__file__).resolve().parents[2]
# The checkout's two packages first, so the subprocess runs this tree's code.


def totes_run(source: str, warehouse: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    for key in ("AWS_ENDPOINT_URL", "RAW_BUCKET", "PROCESSED_BUCKET"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "totes", "run", "--source-url", source, "--warehouse-url", warehouse,
         *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with local_aws() as url:
        yield url


def tables_of(creds: DbCredentials) -> list[str]:
    con = connect(creds)
    try:
        return sorted(
            r[0]
            for r in con.run(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            )
        )
    finally:
        con.close()


def lake_objects(endpoint: str) -> dict[str, list[str]]:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="eu-west-2",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # the emulator's dummy credentials
    )
    names = StackNames()
    out = {}
    for bucket in (names.raw_bucket, names.processed_bucket):
        try:
            out[bucket] = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", ())]
        except s3.exceptions.NoSuchBucket:
            out[bucket] = []
    return out


@pytest.fixture
def small_source(source_db, pg_connect) -> DbCredentials:
    generate(pg_connect(source_db), 60, seed=5)
    return source_db


def test_one_run_loads_the_source_and_prints_a_summary_per_stage(small_source, warehouse_db):
    done = totes_run(small_source.to_url(), warehouse_db.to_url())

    assert done.returncode == 0, done.stderr
    for stage in ("ingest", "transform", "load"):
        assert f"  {stage:<9} 1 batch(es)" in done.stdout
    assert "fact_sales_order" in done.stdout
    assert "warehouse freshness" in done.stdout
    con = connect(warehouse_db)
    try:
        assert con.run("SELECT count(*) FROM fact_sales_order")[0][0] == 60
    finally:
        con.close()


def test_a_row_the_star_cannot_take_is_set_aside_and_reported_the_rest_loads(
    small_source, warehouse_db, pg_connect
):
    pg_connect(small_source).run(
        "UPDATE sales_order SET agreed_delivery_date = 'not-a-date' WHERE sales_order_id = 2"
    )

    done = totes_run(small_source.to_url(), warehouse_db.to_url())

    assert done.returncode == 0, done.stderr
    transform_line = next(line for line in done.stdout.splitlines() if "  transform" in line)
    assert transform_line.startswith("  transform 1 batch(es), 1 rows set aside, ")
    assert "not-a-date" not in done.stdout + done.stderr
    con = connect(warehouse_db)
    try:
        assert con.run("SELECT count(*), count(*) FILTER (WHERE sales_order_id = 2)"
                       " FROM fact_sales_order")[0] == [59, 0]  # fmt: skip
    finally:
        con.close()


@pytest.mark.slow
def test_with_an_endpoint_the_watermark_persists_and_the_next_run_takes_only_new_rows(
    small_source, warehouse_db, pg_connect
):
    with local_aws() as endpoint:
        first = totes_run(small_source.to_url(), warehouse_db.to_url(), "--endpoint-url", endpoint)
        assert first.returncode == 0, first.stderr
        Simulator(pg_connect(small_source), seed=3).step()
        second = totes_run(small_source.to_url(), warehouse_db.to_url(), "--endpoint-url", endpoint)

    assert second.returncode == 0, second.stderr
    ingest_line = next(line for line in second.stdout.splitlines() if "  ingest" in line)
    rows = int(ingest_line.split(",")[-1].split()[0])
    assert 0 < rows < 100, second.stdout


@pytest.fixture
def password_role(pg_cluster, source_db):
    """A role that must authenticate with a password (the embedded server trusts everyone
    else); skipped where we cannot edit the server's pg_hba.conf."""
    admin = connect(pg_cluster.admin)
    hba = Path(admin.run("SHOW hba_file")[0][0])
    if not (hba.is_file() and os.access(hba, os.W_OK)):
        admin.close()
        pytest.skip("cannot configure password authentication on this server")
    role = f"totes_pw_{uuid.uuid4().hex[:8]}"
    admin.run(f"CREATE ROLE {role} LOGIN PASSWORD 'right-password'")
    original = hba.read_text()
    hba.write_text(f"local all {role} password\nhost all {role} 127.0.0.1/32 password\n" + original)
    admin.run("SELECT pg_reload_conf()")
    try:
        yield DbCredentials(**{**source_db.__dict__, "user": role, "password": "right-password"})
    finally:
        hba.write_text(original)
        admin.run("SELECT pg_reload_conf()")
        admin.run(f"DROP ROLE {role}")
        admin.close()


def _broken(kind: str, source_db: DbCredentials, pg_connect, request) -> tuple[str, str]:
    """(source URL, expected message) for each kind of bad source."""
    if kind == "wrong URL":
        return (
            "postgresql://postgres@127.0.0.1:9/nowhere?sslmode=disable",
            "cannot reach database 'nowhere' at 127.0.0.1:9",
        )
    if kind == "not a PostgreSQL URL":
        return "mysql://root@127.0.0.1/totesys", "database URL must start with postgresql://"
    if kind == "wrong password":
        creds = request.getfixturevalue("password_role")
        connect(creds).close()  # the right password works
        wrong = DbCredentials(**{**creds.__dict__, "password": "wrong-password"})
        return wrong.to_url(), f"authentication failed for user {creds.user!r}"
    con = pg_connect(source_db)
    if kind == "empty database":
        return source_db.to_url(), "holds none of the totesys tables"
    create_schema(con)
    if kind == "empty tables":
        return source_db.to_url(), "is empty: every totesys table has no rows"
    if kind == "missing a table":
        con.run('DROP TABLE "payment"')
        return source_db.to_url(), "lacks table(s): payment"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "wrong URL",
        "not a PostgreSQL URL",
        "wrong password",
        "empty database",
        "empty tables",
        "missing a table",
    ],
)
def test_a_bad_source_is_refused_clearly_and_changes_neither_lake_nor_warehouse(
    kind, source_db, warehouse_db, endpoint, pg_connect, request
):
    url, message = _broken(kind, source_db, pg_connect, request)
    lake_before, warehouse_before = lake_objects(endpoint), tables_of(warehouse_db)

    done = totes_run(url, warehouse_db.to_url(), "--endpoint-url", endpoint)

    assert done.returncode != 0
    assert message in done.stderr
    assert done.stderr.startswith("error: ")
    assert "wrong-password" not in done.stderr + done.stdout
    assert lake_objects(endpoint) == lake_before
    assert tables_of(warehouse_db) == warehouse_before == []


def test_a_bad_warehouse_is_refused_before_anything_is_ingested(small_source, endpoint):
    lake_before = lake_objects(endpoint)

    done = totes_run(
        small_source.to_url(),
        "postgresql://postgres@127.0.0.1:9/dw?sslmode=disable",
        "--endpoint-url",
        endpoint,
    )

    assert done.returncode != 0
    assert "cannot reach database 'dw' at 127.0.0.1:9" in done.stderr
    assert lake_objects(endpoint) == lake_before


@pytest.mark.slow
def test_an_unreachable_local_aws_endpoint_is_refused_clearly(small_source, warehouse_db):
    done = totes_run(
        small_source.to_url(), warehouse_db.to_url(), "--endpoint-url", "http://127.0.0.1:9"
    )

    assert done.returncode != 0
    assert "cannot reach the local AWS endpoint http://127.0.0.1:9" in done.stderr
    assert tables_of(warehouse_db) == []
