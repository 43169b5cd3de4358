"""``python -m totes source create|simulate`` through ``totes_tools.cli.main``: success paths print
what was built, and every operator mistake exits 2 with a one-line message naming it."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq

from totes.db import connect
from totes_tools.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_from_the_snapshot_loads_it_and_reports_the_rows(capsys, source_db, snapshot_dir):
    code, out, err = run(
        capsys, "source", "create", "--url", source_db.to_url(), "--snapshot", str(snapshot_dir)
    )
    assert (code, err) == (0, "")
    assert "48,066 rows" in out
    assert "sales_order" in out


def test_create_by_scale_generates_then_simulate_advances_it(capsys, source_db):
    url = source_db.to_url()
    code, out, _ = run(capsys, "source", "create", "--url", url, "--scale", "200", "--seed", "3")
    assert code == 0
    assert "generated scale 200 seed 3" in out
    code, out, err = run(capsys, "source", "simulate", "--url", url, "--steps", "3", "--seed", "1")
    assert (code, err) == (0, "")
    assert out.startswith("simulated 3 step(s)")
    con = connect(source_db)
    try:
        assert con.run("SELECT count(*) > 200 FROM sales_order") == [[True]]
    finally:
        con.close()


def test_create_into_a_non_empty_database_is_refused(capsys, source_db):
    url = source_db.to_url()
    assert run(capsys, "source", "create", "--url", url, "--scale", "50")[0] == 0
    code, _, err = run(capsys, "source", "create", "--url", url, "--scale", "50")
    assert code == 2
    assert f"error: {source_db.where} is not empty (11 table(s):" in err


def test_a_malformed_url_is_named(capsys):
    code, _, err = run(capsys, "source", "create", "--url", "mysql://u:secret@h/db", "--scale", "5")
    assert (code, err) == (
        2,
        "error: database URL must start with postgresql://, got scheme 'mysql'\n",
    )


def test_an_unreachable_server_is_named_without_the_password(capsys):
    url = "postgresql://u:hunter2@127.0.0.1:1/nowhere"
    code, _, err = run(capsys, "source", "simulate", "--url", url, "--steps", "1")
    assert code == 2
    assert err.startswith("error: cannot reach database 'nowhere' at 127.0.0.1:1")
    assert "hunter2" not in err


def test_a_snapshot_file_that_does_not_match_names_file_and_column(
    capsys, source_db, snapshot_dir, tmp_path
):
    broken = tmp_path / "snap"
    shutil.copytree(snapshot_dir, broken)
    path = broken / "counterparty.parquet"
    path.chmod(0o644)
    pq.write_table(pq.read_table(path).drop_columns(["legal_address_id"]), path)
    code, _, err = run(
        capsys, "source", "create", "--url", source_db.to_url(), "--snapshot", str(broken)
    )
    assert (code, err) == (
        2,
        "error: snapshot file counterparty.parquet: column 'legal_address_id' is missing "
        "(table counterparty)\n",
    )


def test_simulating_a_database_without_the_schema_says_to_create_it(capsys, source_db):
    code, _, err = run(capsys, "source", "simulate", "--url", source_db.to_url(), "--steps", "1")
    assert code == 2
    assert "has no totesys schema; run `python -m totes source create` first" in err
