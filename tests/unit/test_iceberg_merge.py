"""The Iceberg merge (pure Arrow) keeps the warehouse's rules: dimensions move only forward in
commit order, a fact version is stored once (a later capture rewrites it), the calendar only
gains days, deleted keys are marked while their tombstone is the newest thing about them, and
any order of the same batches gives the same table."""

from __future__ import annotations

import datetime as dt
import itertools

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from totes.errors import LoadFailed
from totes.iceberg.merge import Change, merge, split_parked, superseded
from totes.iceberg.tables import TOMBSTONES_SCHEMA, star_rows, star_schema, version_columns
from totes.star.model import CAPTURE_SEQ, STAR_TABLES_BY_NAME, StarTable

STAFF = STAR_TABLES_BY_NAME["dim_staff"]
DESIGN = STAR_TABLES_BY_NAME["dim_design"]
SALES = STAR_TABLES_BY_NAME["fact_sales_order"]
T0 = dt.datetime(2024, 11, 1, 9, 0)


def design_rows(*rows: tuple[int, str, dt.datetime], batch: str = "b", seq: int = 1) -> pa.Table:
    data = pa.table(
        {
            "design_id": pa.array([r[0] for r in rows], pa.int32()),
            "design_name": [r[1] for r in rows],
            "file_location": ["/d"] * len(rows),
            "file_name": ["d.json"] * len(rows),
            "source_version": pa.array([r[2] for r in rows], pa.timestamp("ms")),
        },
        schema=DESIGN.arrow_schema,
    )
    return star_rows(DESIGN, data, batch, seq)


def sales_rows(*rows: tuple[int, dt.datetime, int], batch: str = "b", seq: int = 1) -> pa.Table:
    """(order id, last_updated, units_sold) per row."""
    n = len(rows)
    stamps = [r[1] for r in rows]
    data = pa.table(
        {
            "sales_order_id": pa.array([r[0] for r in rows], pa.int32()),
            "created_date": pa.array([T0.date()] * n, pa.date32()),
            "created_time": pa.array([T0.time()] * n, pa.time32("ms")),
            "last_updated_date": pa.array([s.date() for s in stamps], pa.date32()),
            "last_updated_time": pa.array([s.time() for s in stamps], pa.time32("ms")),
            "sales_staff_id": pa.array([1] * n, pa.int32()),
            "counterparty_id": pa.array([1] * n, pa.int32()),
            "units_sold": pa.array([r[2] for r in rows], pa.int32()),
            "unit_price": pa.array([None] * n, pa.decimal128(10, 2)).fill_null(0),
            "currency_id": pa.array([1] * n, pa.int32()),
            "design_id": pa.array([1] * n, pa.int32()),
            "agreed_payment_date": pa.array([T0.date()] * n, pa.date32()),
            "agreed_delivery_date": pa.array([T0.date()] * n, pa.date32()),
            "agreed_delivery_location_id": pa.array([1] * n, pa.int32()),
            "source_version": pa.array(stamps, pa.timestamp("ms")),
        },
        schema=SALES.arrow_schema,
    )
    return star_rows(SALES, data, batch, seq)


def tombstones(*rows: tuple[str, int, int, dt.datetime]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"star_table": t, "key": k, CAPTURE_SEQ: s, "deleted_at": at} for t, k, s, at in rows],
        schema=TOMBSTONES_SCHEMA.as_arrow(),
    )


def of_table(stones: pa.Table, table: StarTable) -> pa.Table:
    return stones.filter(pc.equal(stones.column("star_table"), table.name)).select(
        ["key", CAPTURE_SEQ, "deleted_at"]
    )


def apply(stored: pa.Table, change: Change, key: str) -> pa.Table:
    """What the commit does to the table: the rewritten keys' rows out, the appended rows in."""
    kept = stored
    if change.rewrite is not None:
        kept = stored.filter(pc.invert(pc.is_in(stored.column(key), change.rewrite.column(key))))
    return pa.concat_tables([kept, change.append.cast(stored.schema)])


def merge_star(
    table: StarTable, stored: pa.Table, incoming: pa.Table, stones: pa.Table | None = None
) -> Change:
    lineage = [CAPTURE_SEQ, *table.lineage] if table.kind == "dimension" else [CAPTURE_SEQ]
    return merge(
        stored,
        incoming,
        group=version_columns(table),
        newest_first=lineage,
        rewrite_by=[table.key],
        tombstones=None if stones is None else of_table(stones, table),
    )


def rows_of(data: pa.Table) -> list[dict]:
    return sorted(data.to_pylist(), key=lambda r: sorted((k, str(v)) for k, v in r.items()))


EMPTY_DESIGN = star_schema(DESIGN).as_arrow().empty_table()
EMPTY_SALES = star_schema(SALES).as_arrow().empty_table()


def test_a_dimension_row_moves_only_forward_in_commit_order_a_tie_keeps_the_stored_row():
    stored = design_rows((1, "Old", T0), seq=5, batch="b5")

    older = merge_star(DESIGN, stored, design_rows((1, "Older", T0), seq=3))
    tie = merge_star(DESIGN, stored, design_rows((1, "Same capture", T0), seq=5))
    newer = merge_star(DESIGN, stored, design_rows((1, "New", T0), seq=7, batch="b7"))

    assert (older.empty, tie.empty) == (True, True)
    assert (newer.updated, newer.inserted) == (1, 0)
    assert newer.rewrite.column("design_id").to_pylist() == [1]
    assert newer.append.select(["design_name", CAPTURE_SEQ, "loaded_batch_id"]).to_pylist() == [
        {"design_name": "New", CAPTURE_SEQ: 7, "loaded_batch_id": "b7"}
    ]


def test_a_stamp_in_the_future_is_overtaken_by_the_later_capture_of_its_correction():
    future = design_rows((1, "Typo", T0 + dt.timedelta(days=3650)), seq=1)
    corrected = merge_star(DESIGN, future, design_rows((1, "Fixed", T0), seq=2))

    assert corrected.append.column("design_name").to_pylist() == ["Fixed"]


def test_within_one_batch_the_newest_stamp_of_a_key_wins():
    change = merge_star(
        DESIGN,
        EMPTY_DESIGN,
        design_rows((1, "First", T0), (1, "Second", T0 + dt.timedelta(seconds=1))),
    )

    assert change.append.column("design_name").to_pylist() == ["Second"]


def test_a_new_fact_version_is_appended_and_nothing_stored_is_rewritten():
    stored = sales_rows((1, T0, 10), (2, T0, 20), seq=1)

    change = merge_star(SALES, stored, sales_rows((1, T0 + dt.timedelta(hours=1), 11), seq=2))

    assert change.rewrite is None
    assert (change.inserted, change.updated) == (1, 0)
    assert change.append.column("units_sold").to_pylist() == [11]


def test_a_fact_version_delivered_again_by_a_later_capture_rewrites_its_key():
    stored = sales_rows((1, T0, 10), (1, T0 + dt.timedelta(hours=1), 11), seq=1)

    again = merge_star(SALES, stored, sales_rows((1, T0, 99), seq=1))  # the same capture
    later = merge_star(SALES, stored, sales_rows((1, T0, 99), seq=2))

    assert again.empty
    assert (later.updated, later.inserted) == (1, 0)
    assert later.rewrite.column("sales_order_id").to_pylist() == [1]
    assert sorted(later.append.column("units_sold").to_pylist()) == [11, 99]  # every version


def test_a_deleted_key_is_marked_on_every_version_and_unmarked_when_it_comes_back():
    at = dt.datetime(2024, 11, 2, 12, 0)
    stored = sales_rows((1, T0, 10), (1, T0 + dt.timedelta(hours=1), 11), seq=3)
    stones = tombstones(("fact_sales_order", 1, 4, at))

    deleted = merge_star(SALES, stored, EMPTY_SALES, stones)
    marked = apply(stored, deleted, "sales_order_id")
    back = merge_star(SALES, marked, sales_rows((1, T0 + dt.timedelta(hours=2), 12), seq=5), stones)
    stale = merge_star(SALES, stored, EMPTY_SALES, tombstones(("fact_sales_order", 1, 2, at)))

    assert (deleted.marked, deleted.unmarked) == (2, 0)
    assert set(marked.column("source_deleted_at").to_pylist()) == {at}
    assert (back.marked, back.unmarked, back.inserted) == (0, 2, 1)
    assert set(back.append.column("source_deleted_at").to_pylist()) == {None}
    assert stale.empty  # a deletion older than the key's content marks nothing


def test_a_version_arriving_for_a_key_deleted_meanwhile_is_stored_and_marked():
    at = dt.datetime(2024, 11, 2, 12, 0)
    stones = tombstones(("dim_design", 9, 6, at))

    change = merge_star(DESIGN, EMPTY_DESIGN, design_rows((9, "Late", T0), seq=4), stones)

    assert change.append.column("source_deleted_at").to_pylist() == [at]


def test_a_fact_pointing_at_a_set_aside_dimension_row_nobody_holds_is_parked():
    rows = sales_rows((1, T0, 10), (2, T0, 20), seq=1)
    rows = rows.set_column(
        rows.schema.get_field_index("agreed_delivery_location_id"),
        "agreed_delivery_location_id",
        pa.array([1, 15], pa.int32()),
    )
    keys = {dim: pa.array([1], pa.int32()) for _, dim in SALES.references}
    keys["dim_date"] = pa.array([T0.date()], pa.date32())

    merged, parked = split_parked("b", rows, SALES, keys, {"dim_location": [15]})

    assert merged.column("sales_order_id").to_pylist() == [1]
    assert parked.column("sales_order_id").to_pylist() == [2]
    assert superseded(parked, rows, SALES).tolist() == [True]


# -- any order of the same batches, the same table ---------------------------------------------

KEYS = st.integers(1, 4)
MINUTES = st.integers(0, 5)


@st.composite
def batches(draw) -> list[dict]:
    """Batches in capture order: each carries some design rows and sales versions (stamps that
    may go backwards: the source's clock is not trusted) and maybe deletes some keys."""
    out = []
    for seq in range(1, draw(st.integers(2, 5)) + 1):
        designs = draw(st.lists(st.tuples(KEYS, MINUTES), max_size=3))
        sales = draw(st.lists(st.tuples(KEYS, MINUTES), max_size=3))
        deleted = draw(st.lists(KEYS, max_size=2))
        out.append({"seq": seq, "designs": designs, "sales": sales, "deleted": deleted})
    return out


def _run(order: list[dict]) -> tuple[list[dict], list[dict]]:
    designs, sales = EMPTY_DESIGN, EMPTY_SALES
    stones = TOMBSTONES_SCHEMA.as_arrow().empty_table()
    for batch in order:
        seq, name = batch["seq"], f"b{batch['seq']}"
        at = T0 + dt.timedelta(days=seq)
        if batch["deleted"]:
            new = tombstones(
                *[
                    (t, k, seq, at)
                    for t in ("dim_design", "fact_sales_order")
                    for k in batch["deleted"]
                ]
            )
            change = merge(
                stones, new, group=["star_table", "key"], newest_first=[CAPTURE_SEQ],
                rewrite_by=["star_table", "key"],
            )  # fmt: skip
            kept = stones
            if change.rewrite is not None:
                pairs = set(zip(*change.rewrite.to_pydict().values(), strict=True))
                kept = stones.filter(
                    pa.array(
                        [
                            p not in pairs
                            for p in zip(
                                stones["star_table"].to_pylist(),
                                stones["key"].to_pylist(),
                                strict=True,
                            )
                        ]
                    )
                )
            stones = pa.concat_tables([kept, change.append.cast(stones.schema)])
        incoming = design_rows(
            *[(k, f"{name}-{k}-{m}", T0 + dt.timedelta(minutes=m)) for k, m in batch["designs"]],
            batch=name, seq=seq,
        )  # fmt: skip
        touched = pa.concat_arrays(
            [pa.array(batch["deleted"], pa.int32()), incoming.column("design_id").combine_chunks()]
        )
        stored = designs.filter(pc.is_in(designs.column("design_id"), touched))
        designs = apply(designs, merge_star(DESIGN, stored, incoming, stones), "design_id")
        facts = sales_rows(
            *[(k, T0 + dt.timedelta(minutes=m), seq * 10 + m) for k, m in batch["sales"]],
            batch=name, seq=seq,
        )  # fmt: skip
        touched = pa.concat_arrays(
            [
                pa.array(batch["deleted"], pa.int32()),
                facts.column("sales_order_id").combine_chunks(),
            ]
        )
        stored = sales.filter(pc.is_in(sales.column("sales_order_id"), touched))
        sales = apply(sales, merge_star(SALES, stored, facts, stones), "sales_order_id")
    return rows_of(designs), rows_of(sales)


@settings(max_examples=60, deadline=None)
@given(batches(), st.randoms(use_true_random=False))
def test_any_order_of_the_same_batches_gives_the_same_tables(in_capture_order, rng):
    shuffled = list(in_capture_order)
    rng.shuffle(shuffled)

    assert _run(shuffled) == _run(in_capture_order)


def test_each_order_of_three_batches_gives_the_same_tables():
    three = [
        {"seq": 1, "designs": [(1, 0), (2, 5)], "sales": [(1, 0), (2, 1)], "deleted": []},
        {"seq": 2, "designs": [(1, 3)], "sales": [(1, 0), (1, 4)], "deleted": [2]},
        {"seq": 3, "designs": [(2, 0)], "sales": [(2, 2)], "deleted": [1]},
    ]
    results = {str(_run(list(order))) for order in itertools.permutations(three)}

    assert len(results) == 1


def test_a_parked_fact_whose_other_reference_is_missing_fails_the_batch_as_in_the_warehouse():
    """The warehouse parks a row for its set-aside reference, then checks the parked rows'
    other references (``parking.park``: ``check_references(..., exempt=set_aside)``): one
    missing and not set aside fails the batch naming table, column and ids. The Iceberg target
    must fail it too, not park the row until a row nobody set aside arrives."""
    rows = sales_rows((1, T0, 10), seq=1)
    for column, value in (("agreed_delivery_location_id", 15), ("design_id", 77)):
        rows = rows.set_column(
            rows.schema.get_field_index(column), column, pa.array([value], pa.int32())
        )
    keys = {dim: pa.array([1], pa.int32()) for _, dim in SALES.references}
    keys["dim_date"] = pa.array([T0.date()], pa.date32())

    with pytest.raises(
        LoadFailed, match=r"batch b: table fact_sales_order: design_id references 1"
    ):
        split_parked("b", rows, SALES, keys, {"dim_location": [15]})
