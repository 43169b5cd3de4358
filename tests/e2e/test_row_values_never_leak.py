"""No row value of a batch the warehouse refuses reaches a log line, metric, exception or
failure-queue record (issue 14, M5): the error names the table, column, key column and
constraint, and PostgreSQL's DETAIL ("Failing row contains (...)", names and e-mails
included) stays out.

A processed batch carries one row that breaks a warehouse constraint; the local chain's load
stage tries it three times, as Lambda's async retries would, then records it on the failure
queue. Every output is then searched for each distinctive value of that row.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import date, datetime

import pyarrow as pa
import pytest
from ops_support import failure_records

from totes.errors import LoadFailed
from totes_tools.local.chain import context_for
from totes_tools.warehouse.synthetic import deleted_keys, put_processed_batch, star_batch

BATCH = "20240301T000000000000-000"

STAFF = {
    "staff_id": 738291,
    "first_name": "Quokkaleak",
    "last_name": "Zanzibarsson",
    "department_name": None,  # NOT NULL in the warehouse
    "location": "Leakington-on-Sea",
    "email_address": "quokka.zanzibarsson@leak.example",
    "source_version": datetime(2031, 7, 19, 13, 47, 29, 123000),
    "oldest_version": datetime(2031, 7, 19, 13, 47, 29, 123000),
}
CALENDAR_DAY = {
    "date_id": date(2087, 3, 14),
    "year": 2087,
    "month": 3,
    "day": 14,
    "day_of_week": 11,  # CHECK (day_of_week BETWEEN 1 AND 7)
    "day_name": "Quokkaday",
    "month_name": "Leakuary",
    "quarter": 1,
    "source_version": datetime(2031, 7, 19, 13, 47, 29, 123000),
}
CASES = {
    "personal-data-not-null": ("dim_staff", STAFF, ["column department_name", "23502"]),
    "check-constraint": (
        "dim_date",
        CALENDAR_DAY,
        ["constraint dim_date_day_of_week_check", "23514"],
    ),
}


def distinctive(row: dict) -> list[str]:
    """The row's values as they could be written anywhere (str, ISO dates), leaving out the
    ones too short to be told apart from other numbers (a day of the month, a quarter)."""
    out = set()
    for value in row.values():
        if value is None:
            continue
        texts = {str(value)}
        if isinstance(value, date):
            texts |= {value.isoformat(), value.strftime("%Y-%m-%d")}
        out |= {t for t in texts if len(t) >= 4}
    return sorted(out)


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_row_leaves_no_value_in_logs_metrics_exceptions_or_failure_records(
    make_chain, fresh_db, capsys, caplog, log_lines, case
):
    caplog.set_level(logging.INFO)
    table, row, named = CASES[case]
    chain = make_chain(fresh_db("src"))
    tables = star_batch()
    # Nullability is not part of a file's fingerprint: the warehouse enforces NOT NULL.
    nullable = pa.schema([f.with_nullable(True) for f in tables[table].schema])
    tables[table] = pa.Table.from_pylist([*tables[table].to_pylist(), row], schema=nullable)
    put_processed_batch(chain.processed, BATCH, tables)

    report = chain.drain(stages=("load",))
    records = failure_records(chain)
    # The handler once more, directly, for the exception object and its whole traceback.
    event = json.loads(records.splitlines()[0])["requestPayload"]
    with pytest.raises(LoadFailed) as raised:
        chain.handler("load")(event, context_for("load"))

    [failure] = report.failures
    assert (failure.stage, failure.batch_id, failure.attempts) == ("load", BATCH, 3)
    message = str(raised.value)
    assert message.startswith(f"batch {BATCH}: merging {table} failed: ")
    assert all(name in message for name in [f"table {table}", *named]), message
    assert "Failing row" not in records
    out = capsys.readouterr()
    metrics = [repr(m) for m in report.stages["load"].metrics]
    haystack = "\n".join([
        log_lines.getvalue(), caplog.text, out.out, out.err, records, report.format(),
        str(failure), message, "".join(traceback.format_exception(raised.value)), *metrics,
    ])  # fmt: skip
    assert "SQLSTATE" in records  # the failure paths ran, and their text is in the haystack
    assert [value for value in distinctive(row) if value in haystack] == []


def test_a_deletion_of_a_table_no_star_has_leaves_its_name_in_no_output(
    make_chain, fresh_db, capsys, caplog, log_lines
):
    """The refusal of a ``deleted_keys`` file naming tables the star does not have counts those
    names (values of the file's rows) and quotes none of them."""
    caplog.set_level(logging.INFO)
    chain = make_chain(fresh_db("src"))
    leaked = "quokka.zanzibarsson@leak.example"
    tables = {**star_batch(), "deleted_keys": deleted_keys(**{leaked: [738291], "dim_date": [1]})}
    put_processed_batch(chain.processed, BATCH, tables, capture_seq=None)

    report = chain.drain(stages=("load",))
    records = failure_records(chain)

    [failure] = report.failures
    assert failure.error == (
        f"LoadFailed: batch {BATCH}: table deleted_keys deletes keys of ['dim_date'] and of 1"
        " name(s) no star table has or NULL keys; only keys of ['dim_counterparty',"
        " 'dim_currency', 'dim_design', 'dim_location', 'dim_payment_type', 'dim_staff',"
        " 'dim_transaction', 'fact_payment', 'fact_purchase_order', 'fact_sales_order'] can be"
        " deleted"
    )
    out = capsys.readouterr()
    haystack = "\n".join([
        log_lines.getvalue(), caplog.text, out.out, out.err, records, report.format(),
        *(repr(m) for m in report.stages["load"].metrics),
    ])  # fmt: skip
    assert "deleted_keys deletes keys of" in records
    assert leaked not in haystack
    assert "738291" not in haystack
