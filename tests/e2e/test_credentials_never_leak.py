"""No credential ever leaves Secrets Manager: a full local run, including its failure paths,
writes the database passwords into no log line, metric, event, manifest, lake object,
idempotency record, failure record, ledger row or error message.

Each database belongs to a role whose password is a distinctive string that no other output
could contain by chance. A server that checks passwords (TOTES_TEST_DATABASE_URL) checks these;
the embedded one trusts its unix socket, but the passwords are still what the secrets hold and
what every stage reads, which is what could leak.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import replace

import boto3
import pytest
from ops_support import failure_records

from totes.db import connect
from totes.identifiers import quote
from totes_tools.source.generator import generate

SOURCE_PASSWORD = "src-Pa55-7f3c91e0-never-logged"
WAREHOUSE_PASSWORD = "wh-Pa55-b2d84a17-never-logged"


def everything_stored(chain) -> str:
    """Every object in both buckets, every idempotency record and every warehouse ledger row."""
    s3 = chain.s3
    texts = []
    for lake in (chain.raw, chain.processed):
        for key in lake.keys(""):
            body = s3.get_object(Bucket=lake.bucket, Key=key)["Body"].read()
            texts.append(f"{key}\n{body.decode('latin-1')}")
    dynamo = boto3.client("dynamodb", endpoint_url=chain.endpoint_url)
    items = dynamo.scan(TableName=chain.names.idempotency_table)["Items"]
    texts.append(json.dumps(items, default=str))
    con = connect(chain.warehouse)
    try:
        texts.append(repr(con.run("SELECT * FROM etl_batch_ledger")))
    finally:
        con.close()
    return "\n".join(texts)


@pytest.fixture
def owned_with_password(pg_cluster):
    """Give a fresh database to a new login role with the given password; both are dropped
    after the test (the database first, so the role owns nothing left)."""
    made = []

    def make(creds, password: str):
        role = f"leak_{uuid.uuid4().hex[:12]}"
        admin = connect(pg_cluster.admin)
        try:
            # Utility statements take no parameters; role and password are this test's own.
            admin.run(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            admin.run(f"ALTER DATABASE {quote(creds.dbname)} OWNER TO {quote(role)}")
        finally:
            admin.close()
        made.append((creds, role))
        return replace(creds, user=role, password=password)

    yield make
    for creds, role in made:
        pg_cluster.drop_database(creds)
        admin = connect(pg_cluster.admin)
        try:
            admin.run(f"DROP ROLE IF EXISTS {role}")
        finally:
            admin.close()


def test_no_password_appears_in_any_output_of_a_full_run_with_failures(
    make_chain, fresh_db, pg_cluster, owned_with_password, capsys, caplog, log_lines
):
    caplog.set_level(logging.INFO)
    source = owned_with_password(fresh_db("leak_src"), SOURCE_PASSWORD)
    warehouse = owned_with_password(fresh_db("leak_wh"), WAREHOUSE_PASSWORD)
    con = connect(source)
    generate(con, 30, seed=5)
    con.close()
    chain = make_chain(source, warehouse)
    sm = boto3.client("secretsmanager", endpoint_url=chain.endpoint_url)
    secrets = [
        json.loads(sm.get_secret_value(SecretId=name)["SecretString"])["password"]
        for name in (chain.names.source_secret, chain.names.warehouse_secret)
    ]
    assert secrets == [SOURCE_PASSWORD, WAREHOUSE_PASSWORD]  # the stages do read them

    with pg_cluster.refusing_connections(warehouse):
        load_down = chain.run_cycle()
    records = failure_records(chain)
    with pg_cluster.refusing_connections(source):
        source_down = chain.run_cycle()  # redrives the loads, then fails to ingest

    batches = load_down.stages["ingest"].batches
    assert {(f.stage, f.batch_id) for f in load_down.failures} == {("load", b) for b in batches}
    assert [f.stage for f in source_down.failures] == ["ingest"]
    assert (source_down.replayed, source_down.stages["load"].batches) == (len(batches), batches)
    out = capsys.readouterr()
    logs = log_lines.getvalue()
    reports = [r.format() for r in (load_down, source_down)]
    errors = [str(f) for r in (load_down, source_down) for f in r.failures]
    # The failure paths were exercised and reported, so their messages are in the haystack.
    assert "not currently accepting connections" in logs
    assert "not currently accepting connections" in records
    assert '"ingest failed"' in logs
    outputs = [logs, caplog.text, out.out, out.err, records, everything_stored(chain)]
    haystack = "\n".join([*outputs, *reports, *errors])
    leaks = [pw for pw in (SOURCE_PASSWORD, WAREHOUSE_PASSWORD) if pw in haystack]
    assert leaks == []
