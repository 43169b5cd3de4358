"""What load says about an error PostgreSQL raised (``merge._describe``): the table, column,
key column(s) and constraint, never a value of the row (issue 14, M5). Real server errors,
one per kind of refusal the warehouse can raise; each carries a distinctive value that must
not survive."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
from pg8000.exceptions import DatabaseError

from totes.warehouse.binary_copy import copy_stream
from totes.warehouse.merge import _describe

SECRET = "quokka.zanzibarsson@leak.example"


@pytest.fixture
def con(warehouse_db, pg_connect):
    con = pg_connect(warehouse_db)
    con.run("CREATE TABLE person (id int PRIMARY KEY, email text NOT NULL UNIQUE, born date)")
    con.run("CREATE TABLE visit (person_id int REFERENCES person, at date)")
    con.run("INSERT INTO person VALUES (738291, :e, '1970-01-01')", e=SECRET)
    return con


def refusal(con, sql: str, **params) -> DatabaseError:
    with pytest.raises(DatabaseError) as raised:
        con.run(sql, **params)
    return raised.value


@pytest.mark.parametrize(
    ("sql", "described"),
    [
        (
            "INSERT INTO person VALUES (1, :secret, NULL)",
            'duplicate key value violates unique constraint "person_email_key"; table person;'
            " constraint person_email_key; key (email) [SQLSTATE 23505]",
        ),
        (
            "INSERT INTO person VALUES (2, NULL, CAST(:secret AS text)::date)",
            "invalid datetime format [SQLSTATE 22007]",
        ),
        (
            "INSERT INTO person (id, email) VALUES (CAST(:secret AS text)::int, 'x')",
            "invalid text representation [SQLSTATE 22P02]",
        ),
    ],
    ids=["unique", "bad-date", "bad-integer"],
)
def test_a_refusal_names_table_key_and_constraint_but_no_value(con, sql, described):
    exc = refusal(con, sql, secret=SECRET)
    assert SECRET in str(exc.args[0])  # PostgreSQL's own fields carry the value
    assert _describe(exc) == described


def test_a_foreign_key_refusal_names_the_key_column_not_the_missing_value(con):
    exc = refusal(con, "INSERT INTO visit VALUES (9876543, '2031-07-19')")
    assert "9876543" in str(exc.args[0])
    assert _describe(exc) == (
        'insert or update on table "visit" violates foreign key constraint'
        ' "visit_person_id_fkey"; table visit; constraint visit_person_id_fkey;'
        " key (person_id) [SQLSTATE 23503]"
    )


def test_a_not_null_refusal_names_the_column_without_the_failing_row(con):
    exc = refusal(con, "INSERT INTO person VALUES (5, NULL, '2031-07-19')")
    assert "Failing row contains (5, null, 2031-07-19)" in str(exc.args[0])
    assert _describe(exc) == (
        'null value in column "email" of relation "person" violates not-null constraint;'
        " table person; column email [SQLSTATE 23502]"
    )


def test_an_error_without_postgresqls_fields_is_named_by_its_kind_only():
    assert _describe(DatabaseError(SECRET)) == "DatabaseError without PostgreSQL's error fields"


def test_a_value_refused_inside_a_binary_copy_is_named_by_the_copys_table_and_column(con):
    """A data exception raised while a binary COPY receives a value (a date past PostgreSQL's
    range, a NUL in text) carries no table or column field: the COPY's context line names
    them, and in the binary format it never quotes the value."""
    rows = pa.table(
        {
            "id": pa.array([1], pa.int32()),
            "email": pa.array([SECRET.upper()], pa.string()),
            # days since 1970 past PostgreSQL's last date (5874897-12-31), within int32
            "born": pa.array([2_147_400_000], pa.int32()).cast(pa.date32()),
        }
    )
    exc = refusal(con, "COPY person FROM STDIN WITH (FORMAT binary)", stream=copy_stream(rows))
    assert exc.args[0]["W"] == "COPY person, line 1, column born"
    assert _describe(exc) == "datetime field overflow; table person; column born [SQLSTATE 22008]"


def test_a_text_copys_context_which_quotes_the_value_is_left_out(con):
    copy = io.BytesIO(f"3\tx@example\t{SECRET}\n".encode())
    exc = refusal(con, "COPY person FROM STDIN", stream=copy)
    assert SECRET in exc.args[0]["W"]  # 'COPY person, line 1, column born: "..."'
    assert _describe(exc) == "invalid datetime format [SQLSTATE 22007]"


def test_the_schema_checks_refusal_is_described_the_same_way(con):
    """The load stage's other server message (reading the schema version) goes through the
    same description: a data exception's message may quote a value."""
    from totes.stages.load_batch import _server_message

    exc = refusal(
        con, "INSERT INTO person (id, email) VALUES (CAST(:s AS text)::int, 'x')", s=SECRET
    )
    assert _server_message(exc) == "invalid text representation [SQLSTATE 22P02]"


def test_an_adbc_error_is_described_from_its_text_without_its_detail_or_query(con, warehouse_db):
    """libpq's text (as ADBC raises it) embeds the message, DETAIL ("Failing row contains",
    "Key (id)=(...)") and the query; only the message of a class naming objects is kept."""
    from totes.extract import adbc
    from totes.server_errors import describe_error

    session = adbc.connect(warehouse_db, "test")
    described = []
    try:
        for sql, shown in (
            ("INSERT INTO person VALUES (738291, :s, NULL)", "Key (id)=(738291)"),
            ("INSERT INTO person VALUES (6, NULL, CAST(:s AS date))", "2031-07-19"),
            ("SELECT CAST(CAST(:s AS text) AS int)", SECRET),
        ):
            value = "2031-07-19" if "date" in sql else SECRET.upper() if "738291" in sql else SECRET
            with pytest.raises(Exception) as raised:
                session.run(sql, s=value)
            assert shown in str(raised.value)  # libpq's text carries it
            described.append(describe_error(raised.value))
    finally:
        session.close()
    assert described == [
        'duplicate key value violates unique constraint "person_pkey"; key (id) [SQLSTATE 23505]',
        'null value in column "email" of relation "person" violates not-null constraint'
        " [SQLSTATE 23502]",
        "invalid text representation [SQLSTATE 22P02]",
    ]
