"""A first capture's facts COPYed straight into the fact tables (``warehouse.backfill``): the
warehouse ends exactly as the staged merge leaves it, whatever the batches carry."""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from totes.errors import LoadFailed
from totes.star.model import CAPTURE_SEQ, DELETED_KEYS, SOURCE_DELETED_AT, STAR_TABLES
from totes.star.model import STAR_TABLES_BY_NAME as BY_NAME
from totes.warehouse import backfill
from totes.warehouse.merge import load_batch
from totes.warehouse.migrations import migrate
from totes_tools.warehouse.checksums import content_columns
from totes_tools.warehouse.synthetic import (
    deleted_keys,
    dimensions,
    processed_manifest,
    sales_orders,
    star_batch,
    with_calendar,
)

CAPTURED = datetime(2025, 1, 1)
FACT_NAMES = [t.name for t in STAR_TABLES if t.kind == "fact"]


def load(con, batch_id: str, tables: dict[str, pa.Table], seq: int, set_aside=None):
    manifest = processed_manifest(
        batch_id,
        tables,
        hi=CAPTURED + timedelta(minutes=seq),
        capture_seq=seq,
        set_aside=set_aside,
    )
    return load_batch(con, manifest, tables)


def state(con) -> dict[str, list]:
    """Every star table's content, capture and deletion mark (no surrogate ids, no batch ids:
    those follow arrival order), in a fixed order."""
    out = {}
    for table in STAR_TABLES:
        cols = content_columns(table) + ([CAPTURE_SEQ, SOURCE_DELETED_AT] if table.tracked else [])
        order = ", ".join(str(i + 1) for i in range(len(cols)))
        out[table.name] = con.run(f"SELECT {', '.join(cols)} FROM {table.name} ORDER BY {order}")  # noqa: S608
    return out


def later(facts: pa.Table, days: int) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                **row,
                "last_updated_date": row["last_updated_date"] + timedelta(days=days),
                "source_version": row["source_version"] + timedelta(days=days),
            }
            for row in facts.to_pylist()
        ],
        schema=facts.schema,
    )


def stamped(rows: pa.Table, days: int) -> pa.Table:
    """Dimension ``rows`` as a later version (``source_version`` ``days`` later)."""
    return pa.Table.from_pylist(
        [
            {**r, "source_version": r["source_version"] + timedelta(days=days)}
            for r in rows.to_pylist()
        ],
        schema=rows.schema,
    )


def keyed(rows: pa.Table, first: int) -> pa.Table:
    """Dimension ``rows`` under new keys from ``first`` on."""
    return with_keys(rows, list(range(first, first + rows.num_rows)))


def with_keys(rows: pa.Table, keys: list[int]) -> pa.Table:
    """Dimension ``rows`` (as many as ``keys``) under those keys."""
    key = BY_NAME[next(n for n, t in BY_NAME.items() if t.arrow_schema.equals(rows.schema))].key
    index = rows.schema.get_field_index(key)
    field = rows.schema.field(index)
    return rows.set_column(index, field, pa.array(keys, field.type))


def history() -> list[tuple[str, int, dict[str, pa.Table]]]:
    """Capture 5 as three batches: the first plain, the second carrying a version the first
    stored (a fact the overlap delivered twice), the third a version twice within itself;
    then capture 6 (later versions and a deletion) and a late batch of capture 4 whose
    versions are partly stored already."""
    full = star_batch(sales=60, purchases=30, payments_=45, seed=11)
    dims = {n: t for n, t in full.items() if not n.startswith("fact_")}

    def part(lo: int, hi: int) -> dict[str, pa.Table]:
        return {
            **dims,
            **{n: full[n].slice(lo * full[n].num_rows // 3, (hi - lo) * full[n].num_rows // 3)
               for n in FACT_NAMES},
        }  # fmt: skip

    p0, p1, p2 = part(0, 1), part(1, 2), part(2, 3)
    p1["fact_sales_order"] = pa.concat_tables([p1["fact_sales_order"], p0["fact_sales_order"][:1]])
    p2["fact_payment"] = pa.concat_tables([p2["fact_payment"], p2["fact_payment"][-1:]])
    # Transactions: p1 changes three stored ones and brings two new; the late batch brings a new
    # one twice (two stamps), so its COPY meets the key twice and falls back.
    transactions = dims["dim_transaction"]
    p1["dim_transaction"] = pa.concat_tables(
        [transactions[3:], stamped(transactions[:3], 1), keyed(transactions[:2], 900_001)]
    )
    c6 = with_calendar({**dims, "fact_payment": later(p0["fact_payment"][:5], 2)})
    c6[DELETED_KEYS] = deleted_keys(fact_sales_order=[1, 2])
    purchases = p0["fact_purchase_order"]
    late = with_calendar(
        {**dims, "fact_purchase_order": pa.concat_tables([purchases[:3], later(purchases[3:6], 1)])}
    )
    twice = keyed(transactions[:1], 999_999)
    late["dim_transaction"] = pa.concat_tables([transactions, twice, stamped(twice, 1)])
    return [
        ("c5-000", 5, p0),
        ("c5-001", 5, p1),
        ("c5-002", 5, p2),
        ("c6-000", 6, c6),
        ("c4-000", 4, late),
    ]


@pytest.mark.parametrize("dimension_rows", [backfill.DIMENSION_ROWS, 1])
def test_a_backfill_copied_straight_in_ends_as_the_staged_merge_leaves_it(
    fresh_db, pg_connect, monkeypatch, dimension_rows
):
    """At the default threshold these dimensions are too small to split; at 1 every tracked
    dimension is: the capture's first batch copies all its rows, later ones copy the new keys
    and merge the stored ones, and a new key twice falls back to the merge."""
    monkeypatch.setattr(backfill, "DIMENSION_ROWS", dimension_rows)
    copied = record_copies(monkeypatch)
    split: list[tuple[str, int | None, int]] = []
    real_split = backfill.copy_new_keys

    def recording_split(con, batch, seq, table, rows):
        result, left = real_split(con, batch, seq, table, rows)
        if table.name == "dim_transaction":
            split.append((batch, None if result is None else result.inserted, left.num_rows))
        return result, left

    monkeypatch.setattr(backfill, "copy_new_keys", recording_split)

    def run(con):
        results = [load(con, batch, tables, seq) for batch, seq, tables in history()]
        return [r.tables for r in results], state(con)

    outcomes = copied_and_staged(monkeypatch, fresh_db, pg_connect, run)
    (results_copied, state_copied), (results_staged, state_staged) = outcomes
    assert results_copied == results_staged  # every count: inserted, updated, marked, ...
    assert state_copied == state_staged
    # The batches of capture 5 were copied, except the tables whose COPY met a stored or a
    # repeated version, which went the staged way; capture 6 merged (an older capture is
    # loaded), and the late capture 4 batch met stored versions.
    transactions = state_copied["dim_transaction"]
    assert len(transactions) == 45 + 2 + 1
    if dimension_rows == 1:
        # (batch, new keys copied or None after a fallback, rows left to merge)
        assert split == [
            ("c5-000", 45, 0),
            ("c5-001", 2, 45),
            ("c5-002", 0, 45),
            ("c4-000", None, 47),
        ]
    else:
        assert split == []
    facts = [c for c in copied if c[1].startswith("fact_")]
    assert facts == [
        ("c5-000", "fact_sales_order", True),
        ("c5-000", "fact_purchase_order", True),
        ("c5-000", "fact_payment", True),
        ("c5-001", "fact_sales_order", False),
        ("c5-001", "fact_purchase_order", True),
        ("c5-001", "fact_payment", True),
        ("c5-002", "fact_sales_order", True),
        ("c5-002", "fact_purchase_order", True),
        ("c5-002", "fact_payment", False),
        ("c4-000", "fact_purchase_order", False),
    ]
    sales = state_copied["fact_sales_order"]
    assert len(sales) == 60
    assert sum(1 for r in sales if r[-1] is not None) == 2  # orders 1 and 2 deleted
    assert len(state_copied["fact_payment"]) == 45 + 5
    assert len(state_copied["fact_purchase_order"]) == 30 + 3


@pytest.mark.parametrize(
    ("rewrite", "set_aside", "tombstoned", "expected"),
    [
        (False, {}, set(), True),
        (True, {}, set(), False),  # an older capture is loaded: stored versions may be rewritten
        (False, {"dim_design": [3]}, set(), False),  # the park takes rows out of the stage
        (False, {"dim_payment_type": [1]}, set(), True),  # a dimension sales orders do not use
        (False, {}, {"fact_sales_order"}, False),  # the marks join the staged keys
        (False, {}, {"fact_payment"}, True),
    ],
)
def test_only_a_first_captures_facts_with_nothing_parked_or_deleted_are_copied(
    rewrite, set_aside, tombstoned, expected
):
    sales = BY_NAME["fact_sales_order"]
    assert backfill.copyable(sales, 1, rewrite, set_aside, tombstoned) is expected


def copied_and_staged(monkeypatch, fresh_db, pg_connect, run) -> list:
    """``run(con)`` on a fresh migrated warehouse twice: with a first capture's tables COPYed
    straight in where they may be, then with every table staged and merged."""
    outcomes = []
    for staged_only in (False, True):
        with monkeypatch.context() as patch:
            if staged_only:
                patch.setattr(backfill, "copyable", lambda *args: False)
            con = pg_connect(fresh_db("wh"))
            migrate(con)
            outcomes.append(run(con))
    return outcomes


def record_copies(monkeypatch) -> list[tuple[str, str, bool]]:
    """(batch, table, whether its COPY straight in held) of every ``copy_versions`` call."""
    copied: list[tuple[str, str, bool]] = []
    real = backfill.copy_versions

    def recording(con, batch, seq, table, rows):
        result = real(con, batch, seq, table, rows)
        copied.append((batch, table.name, result is not None))
        return result

    monkeypatch.setattr(backfill, "copy_versions", recording)
    return copied


def test_a_dimension_is_copied_from_its_threshold_and_the_calendar_never():
    design, calendar = BY_NAME["dim_design"], BY_NAME["dim_date"]
    rows = backfill.DIMENSION_ROWS
    assert backfill.copyable(design, rows, False, {}, set())
    assert not backfill.copyable(design, rows - 1, False, {}, set())
    assert not backfill.copyable(design, rows, True, {}, set())
    assert not backfill.copyable(design, rows, False, {}, {"dim_design"})
    assert not backfill.copyable(calendar, 10 * rows, False, {}, set())


def nulled(rows: pa.Table, index: int, column: str) -> pa.Table:
    """``rows`` with ``column`` of row ``index`` NULL (where the warehouse needs a value)."""
    changed = rows.to_pylist()
    changed[index][column] = None
    return pa.Table.from_pylist(changed, schema=nullable(rows.schema))


def nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema])


def refusals() -> list[tuple[str, int, dict[str, pa.Table]]]:
    """Rows the staged merge never writes, with a NULL in a NOT NULL column: capture 5's
    second batch carries a sales order version its first stored (the overlap), its units
    NULL; a new transaction twice, the older row's type NULL (the newer one wins)."""
    full = star_batch(sales=20, purchases=6, payments_=9, seed=12)
    second = dict(full)
    sales = full["fact_sales_order"]
    second["fact_sales_order"] = pa.concat_tables(
        [nulled(sales[:1], 0, "units_sold"), later(sales[1:4], 1).cast(nullable(sales.schema))]
    )
    transactions = full["dim_transaction"]
    twice = keyed(transactions[:1], 900_001)
    second["dim_transaction"] = pa.concat_tables(
        [
            t.cast(nullable(transactions.schema))
            for t in (transactions, nulled(twice, 0, "transaction_type"), stamped(twice, 1))
        ]
    )
    return [("c5-000", 5, full), ("c5-001", 5, second)]


@pytest.mark.parametrize("dimension_rows", [backfill.DIMENSION_ROWS, 1])
def test_a_row_the_merge_would_not_write_is_not_refused_when_copied(
    fresh_db, pg_connect, monkeypatch, dimension_rows
):
    """A NULL in a NOT NULL column of a row the staged merge skips (a version already stored;
    a key's older row behind a newer one) fails no batch there (docs/load.md "Alternatives
    measured (5)"): the COPY, which writes every row, must not fail the batch on it either.
    A NULL in a row the merge writes (a new version) fails its batch on either path, with
    the same message (table and column, no row value), leaving nothing of it."""
    monkeypatch.setattr(backfill, "DIMENSION_ROWS", dimension_rows)
    sales = star_batch(sales=20, purchases=6, payments_=9, seed=12)["fact_sales_order"]
    new_version = with_calendar({"fact_sales_order": nulled(later(sales[4:6], 1), 1, "units_sold")})

    def run(con):
        results = [load(con, batch, tables, seq) for batch, seq, tables in refusals()]
        with pytest.raises(LoadFailed) as refused:
            load(con, "c5-002", new_version, 5)
        batches = con.run("SELECT batch_id FROM etl_batch_ledger ORDER BY 1")
        return [r.tables for r in results], state(con), str(refused.value), batches

    outcomes = copied_and_staged(monkeypatch, fresh_db, pg_connect, run)
    assert outcomes[0] == outcomes[1]
    message = outcomes[0][2]
    assert message.startswith("batch c5-002: merging fact_sales_order failed: null value")
    assert "column units_sold [SQLSTATE 23502]" in message
    assert "Failing row" not in message
    assert outcomes[0][3] == [["c5-000"], ["c5-001"]]


ORDERS = {
    # A later capture first: every version and key capture 5 brings is stored by capture 6.
    "later-capture-first": ["c6-000", "c5-002", "c5-001", "c5-000", "c4-000", "c5-000"],
    # One capture's batches out of order, then redelivered after a later capture's batch.
    "shuffled-and-redelivered": ["c5-001", "c5-002", "c5-000", "c6-000", "c5-001", "c4-000"],
    "reversed": ["c4-000", "c6-000", "c5-002", "c5-001", "c5-000"],
}


@pytest.mark.parametrize("dimension_rows", [backfill.DIMENSION_ROWS, 1])
def test_a_backfill_in_any_order_ends_as_the_staged_merge_leaves_it(
    fresh_db, pg_connect, monkeypatch, dimension_rows
):
    """The history's batches in other orders, some delivered twice: in each order the copy
    path's results and warehouse equal the staged path's, and every order ends in the same
    warehouse (batches converge in any order)."""
    monkeypatch.setattr(backfill, "DIMENSION_ROWS", dimension_rows)
    batches = {batch: (seq, tables) for batch, seq, tables in history()}
    states = []
    for order in ORDERS.values():

        def run(con, order=order):
            results = [load(con, b, batches[b][1], batches[b][0]) for b in order]
            return [(r.loaded, r.tables) for r in results], state(con)

        outcomes = copied_and_staged(monkeypatch, fresh_db, pg_connect, run)
        assert outcomes[0] == outcomes[1]
        states.append(outcomes[0][1])
    assert all(s == states[0] for s in states)


def parking() -> list[tuple[str, int, dict[str, pa.Table], dict | None]]:
    """Design ``d`` set aside by capture 6 (its later versions of six orders, those of ``d``
    parked) and by capture 5's first batch (the same orders, those of ``d`` parked); capture
    5's second batch brings design ``d``, the parked orders' versions again and new orders,
    with nothing set aside: its orders are COPYed straight in and both parks released."""
    full = star_batch(sales=12, purchases=4, payments_=6, seed=13)
    sales = full["fact_sales_order"]
    d = sales["design_id"][0].as_py()
    designs = full["dim_design"]
    without = {**full, "dim_design": designs.filter(pc.not_equal(designs["design_id"], d))}
    of_d = sales[:6].filter(pc.equal(sales[:6]["design_id"], d))
    aside = {"dim_design": [d]}
    return [
        ("c6-000", 6, with_calendar({**without, "fact_sales_order": later(sales[:6], 1)}), aside),
        ("c5-000", 5, {**without, "fact_sales_order": sales[:6]}, aside),
        ("c5-001", 5, {**full, "fact_sales_order": pa.concat_tables([of_d, sales[6:]])}, None),
    ]


def test_parked_facts_released_by_a_copied_batch_end_as_the_staged_merge_leaves_them(
    fresh_db, pg_connect, monkeypatch
):
    copied = record_copies(monkeypatch)

    def run(con):
        results = [load(con, b, t, seq, set_aside=a) for b, seq, t, a in parking()]
        parked = con.run("SELECT count(*) FROM etl_parked_fact_sales_order")
        ledger = con.run("SELECT batch_id, row_counts FROM etl_batch_ledger ORDER BY 1")
        return [r.tables for r in results], state(con), parked, ledger

    outcomes = copied_and_staged(monkeypatch, fresh_db, pg_connect, run)
    assert outcomes[0] == outcomes[1]
    assert ("c5-001", "fact_sales_order", True) in copied
    results, warehouse, parked, _ = outcomes[0]
    assert parked == [[0]]
    released = results[2]["fact_sales_order"].released
    assert released == 2 * results[0]["fact_sales_order"].parked > 0
    # Capture 6's versions of the six orders, and capture 5's: nothing lost or doubled.
    assert len(warehouse["fact_sales_order"]) == 12 + 6


SET_ASIDE_DESIGN = 900_050


def restricted_history() -> list[tuple[str, int, dict[str, pa.Table], dict | None]]:
    """``history`` (first-capture batches copied straight in, the dimension split, fallbacks
    in a savepoint, a later capture's deletions, a late older capture) then a batch whose fact
    waits in the park for a set-aside design and the batch that releases it."""
    batches: list[tuple[str, int, dict[str, pa.Table], dict | None]] = [
        (batch, seq, tables, None) for batch, seq, tables in history()
    ]
    dims = dimensions(staff=1, locations=1, designs=1, counterparties=1)
    orders = sales_orders(2, dims, seed=5).slice(0, 1)
    orders = pa.Table.from_pylist(
        [
            {**r, "sales_order_id": 700_001, "design_id": SET_ASIDE_DESIGN}
            for r in orders.to_pylist()
        ],
        schema=orders.schema,
    )
    design = pa.Table.from_pylist(
        [{**r, "design_id": SET_ASIDE_DESIGN} for r in dims["dim_design"].to_pylist()],
        schema=dims["dim_design"].schema,
    )
    batches.append(("p7-000", 7, with_calendar({**dims, "fact_sales_order": orders}),
                    {"dim_design": [SET_ASIDE_DESIGN]}))  # fmt: skip
    batches.append(("f8-000", 8, {"dim_design": design}, None))
    return batches


@pytest.mark.parametrize("probes", [False, True])
def test_a_restricted_loader_takes_every_load_path_and_ends_as_the_owner(
    fresh_db, pg_connect, new_role, pg_cluster, monkeypatch, probes
):
    """Issue 16: the loader (SELECT, INSERT, UPDATE on the star tables, the park's queue,
    TEMP; no DDL) runs every path a backfill and the batches after it take, each forced on
    at this small scale: the facts' COPY straight in, the dimension split at a threshold of 1
    (the stored-keys probe, a COPY of new keys, a key twice rolled back to its savepoint),
    the staged tables' ANALYZE, the index probes' transaction-local planner settings (or the
    hash joins), deletions, the park and its release; in a schema of its own, reached through
    the connection's ``search_path``. Its warehouse and every count equal the owner's."""
    from totes.db import connect
    from totes.identifiers import quote
    from totes.warehouse import dimensions as dimension_merges
    from totes.warehouse import facts, staging
    from totes.warehouse.roles import grant_loader

    monkeypatch.setattr(backfill, "DIMENSION_ROWS", 1)
    monkeypatch.setattr(staging, "ANALYZE_ROWS", 1)
    threshold = -1 if probes else 10**12
    monkeypatch.setattr(facts, "PROBE_ABOVE_BATCHES", threshold)
    monkeypatch.setattr(dimension_merges, "PROBE_ABOVE_BATCHES", threshold)
    split: list[bool] = []
    real_split = backfill.copy_new_keys

    def recording_split(con, batch, seq, table, rows):
        result, left = real_split(con, batch, seq, table, rows)
        split.append(result is not None and result.inserted > 0)
        return result, left

    monkeypatch.setattr(backfill, "copy_new_keys", recording_split)
    schema = "totes_wh"
    outcomes = []
    for restricted in (False, True):
        db = fresh_db("wh")
        owner = new_role(db, "owner")
        admin = pg_connect(pg_cluster.admin.with_dbname(db.dbname))
        admin.run(f"CREATE SCHEMA {quote(schema)} AUTHORIZATION {quote(owner.user)}")
        owner_con = connect(owner, search_path=schema)
        migrate(owner_con, schema)
        loading = owner_con
        if restricted:
            loader = new_role(db, "loader")
            grant_loader(owner_con, loader.user, schema)
            loading = connect(loader, search_path=schema)
        results = [
            load(loading, batch, tables, seq, set_aside)
            for batch, seq, tables, set_aside in restricted_history()
        ]
        outcomes.append(([r.tables for r in results], state(owner_con)))
        for con in {id(c): c for c in (loading, owner_con)}.values():
            con.close()
    (owner_results, owner_state), (loader_results, loader_state) = outcomes
    assert loader_results == owner_results
    assert loader_state == owner_state
    assert any(split)  # the split copied new keys straight in
    assert owner_results[-2]["fact_sales_order"].parked == 1  # its design was set aside
    assert owner_results[-1]["fact_sales_order"].released == 1  # and arrived


def test_only_keys_between_the_smallest_and_largest_stored_key_are_probed(
    fresh_db, pg_connect, monkeypatch
):
    """A key below the smallest stored key or above the largest cannot be stored, so it costs
    no probe: a backfill batch's new transactions mostly lie above every stored one (0.84 s
    of a 1M backfill's load went to probing them). Stored keys anywhere in the range, and new
    ones between them, are still probed and told apart."""
    con = pg_connect(fresh_db("wh"))
    migrate(con)
    table = BY_NAME["dim_transaction"]
    transactions = dimensions(transactions=5)["dim_transaction"]
    probed: list[str] = []
    real_run = con.run

    def recording(sql, **params):
        if "unnest" in sql:
            probed.append(params["keys"])
        return real_run(sql, **params)

    monkeypatch.setattr(con, "run", recording)
    empty = backfill.stored_keys(con, table, with_keys(transactions[:2], [7, 8]))
    assert (empty.to_pylist(), probed) == ([], [])  # nothing stored: nothing to probe

    con.run("BEGIN")
    stored = with_keys(transactions[:3], [10, 12, 20])
    assert backfill.copy_versions(con, "c1-000", 1, table, stored)
    batch = with_keys(transactions, [5, 10, 15, 20, 25])
    assert sorted(backfill.stored_keys(con, table, batch).to_pylist()) == [10, 20]
    assert probed == ["{10,15,20}"]
    probed.clear()
    above = backfill.stored_keys(con, table, with_keys(transactions[:2], [21, 30]))
    assert (above.to_pylist(), probed) == ([], [])
    con.run("ROLLBACK")
