"""``warehouse verify`` and ``warehouse rebuild`` refuse what they cannot work on with one line
naming it (exit 2), before reading or writing anything; verify never writes."""

from __future__ import annotations

from totes.observability import logger
from totes.warehouse.migrations import migrate
from totes_tools import cli
from totes_tools.source.generator import generate


def totes(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    return code, capsys.readouterr().err.strip()


def test_verify_refuses_a_database_that_is_not_a_migrated_warehouse(
    source_db, warehouse_db, pg_connect, capsys
):
    generate(pg_connect(source_db), 20, seed=1)
    wh = pg_connect(warehouse_db)
    args = ("warehouse", "verify", "--source-url", source_db.to_url(),
            "--warehouse-url", warehouse_db.to_url())  # fmt: skip

    code, err = totes(capsys, *args)
    assert (code, err) == (
        2,
        f"error: {warehouse_db.where} has no schema_migrations table: is it the warehouse?",
    )

    wh.run("CREATE TABLE schema_migrations (version INT PRIMARY KEY, name VARCHAR)")
    wh.run("INSERT INTO schema_migrations VALUES (1, 'star_schema')")
    code, err = totes(capsys, *args)
    assert code == 2
    assert err.startswith(f"error: the warehouse at {warehouse_db.where} lacks migration(s) 0002_")
    assert wh.run("SELECT count(*) FROM schema_migrations") == [[1]]  # verify never writes


def test_verify_names_a_source_without_the_totesys_schema(source_db, warehouse_db, pg_connect,
                                                          capsys):  # fmt: skip
    migrate(pg_connect(warehouse_db))

    code, err = totes(capsys, "warehouse", "verify", "--source-url", source_db.to_url(),
                      "--warehouse-url", warehouse_db.to_url())  # fmt: skip

    assert code == 2
    assert err.startswith(f"error: source {source_db.where}: source schema drift: table ")


def test_rebuild_without_a_bucket_names_what_to_pass(warehouse_db, capsys, monkeypatch):
    monkeypatch.delenv("PROCESSED_BUCKET", raising=False)
    monkeypatch.delenv("POWERTOOLS_LOG_LEVEL", raising=False)
    level = logger.log_level

    code, err = totes(capsys, "warehouse", "rebuild", "--warehouse-url", warehouse_db.to_url())

    assert logger.log_level == level  # quieted for the command only, not for its process

    assert (code, err) == (
        2,
        "error: which processed bucket? pass --bucket (the stack's ProcessedBucketName output)"
        " or set PROCESSED_BUCKET",
    )


UNREACHABLE = "http://127.0.0.1:1"  # nothing listens on port 1


def test_an_unreachable_lake_or_queue_is_exit_2_not_the_1_of_a_result(warehouse_db, capsys):
    """Exit 1 is a result a script acts on (rebuild: a batch failed, fix and --resume; failures
    drop --batch: no record of that batch; verify: a difference). An endpoint that does not
    answer is an error: exit 2 with one line naming it, as every refusal of the command line."""
    for args in (
        ("warehouse", "rebuild", "--warehouse-url", warehouse_db.to_url(),
         "--endpoint-url", UNREACHABLE, "--bucket", "processed"),
        ("failures", "drop", "--batch", "c0000000000000000001-000", "--endpoint-url",
         UNREACHABLE),
        ("failures", "list", "--endpoint-url", UNREACHABLE),
        ("replay", "--batch", "c0000000000000000001-000", "--endpoint-url", UNREACHABLE),
    ):  # fmt: skip
        code, err = totes(capsys, *args)
        assert code == 2, args
        unreachable = f'Could not connect to the endpoint URL: "{UNREACHABLE}/'
        assert err.startswith(f"error: EndpointConnectionError: {unreachable}"), err
        assert "Traceback" not in err
