"""The test infrastructure is real: a PostgreSQL server that answers SQL, isolated databases,
and a moto S3 whose bucket notifications honour the template's filters."""

import json

from totes_tools.local.aws import client, receive_s3_events


def test_embedded_server_answers_sql(source_db, pg_connect):
    con = pg_connect(source_db)
    [[version]] = con.run("SHOW server_version_num")
    assert int(version) >= 150000
    assert con.run("SELECT 1 + 1") == [[2]]


def test_two_databases_do_not_see_each_other(fresh_db, pg_connect):
    a, b = fresh_db("a"), fresh_db("b")
    assert a.dbname != b.dbname
    con_a = pg_connect(a)
    con_a.run("CREATE TABLE only_in_a (x int)")
    con_a.run("INSERT INTO only_in_a VALUES (1)")
    con_b = pg_connect(b)
    assert con_b.run("SELECT to_regclass('only_in_a')") == [[None]]


def test_each_test_gets_an_empty_database_first(source_db, pg_connect):
    con = pg_connect(source_db)
    con.run("CREATE TABLE leak_probe (x int)")
    count = con.run("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    assert count == [[1]]


def test_each_test_gets_an_empty_database_second(source_db, pg_connect):
    con = pg_connect(source_db)
    assert con.run("SELECT to_regclass('leak_probe')") == [[None]]


def test_bucket_notification_reaches_queue_only_for_matching_keys(stack, aws):
    s3 = client("s3")
    for key in ("raw/sales_order/b1/part-0000.parquet", "manifests/b1.txt", "other/b1.json"):
        s3.put_object(Bucket=stack.raw_bucket, Key=key, Body=b"x")
    s3.put_object(Bucket=stack.raw_bucket, Key="manifests/b 1.json", Body=b"{}")

    events = receive_s3_events(aws, stack.transform_queue)

    keys = [rec["s3"]["object"]["key"] for body, _ in events for rec in body["Records"]]
    assert len(keys) == 1
    from urllib.parse import unquote_plus

    assert unquote_plus(keys[0]) == "manifests/b 1.json"
    assert receive_s3_events(aws, stack.load_queue) == []


def test_secrets_hold_the_database_credentials(stack, source_db):
    sm = client("secretsmanager")
    secret = json.loads(sm.get_secret_value(SecretId=stack.source_secret)["SecretString"])
    assert secret["dbname"] == source_db.dbname
    assert set(secret) >= {"host", "port", "username", "password", "dbname"}
