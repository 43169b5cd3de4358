"""The metric catalogue, the freshness rule and the CloudWatch evaluator, without servers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from totes import freshness
from totes.freshness import Capture, LoadedMarker
from totes.observability import CATALOGUE, UnknownMetric, emit
from totes_tools.ops import cloudwatch
from totes_tools.ops.cloudwatch import Alarm, Query, Timeline, evaluate, parse_expression
from totes_tools.ops.metricstore import Datapoint

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


# -- the catalogue ----------------------------------------------------------------------------


def test_emit_refuses_a_name_outside_the_catalogue_and_other_dimensions():
    with pytest.raises(UnknownMetric, match="IngestRow"):
        emit("IngestRow", 1, table="design")
    with pytest.raises(UnknownMetric, match="dimensions"):
        emit("IngestRows", 1)  # a per-table metric without its table
    with pytest.raises(UnknownMetric, match="dimensions"):
        emit("IngestDurationSeconds", 1, table="design")
    with pytest.raises(UnknownMetric):
        emit("ColdStart", 1)  # Powertools' own: not ours to emit


def test_stages_emit_only_through_the_catalogue():
    """No module of the runtime but observability touches Powertools' metrics directly, and
    every metric name a stage passes to emit() or timed() is in the catalogue."""
    runtime = REPO / "shared" / "totes"
    direct = [
        str(p.relative_to(REPO))
        for p in runtime.rglob("*.py")
        if p.name != "observability.py"
        and re.search(r"add_metric\(|single_metric|metrics\.add|MetricUnit", p.read_text())
    ]
    assert direct == []
    named = {
        name
        for p in (*runtime.rglob("*.py"), *(REPO / "functions").rglob("*.py"))
        for name in re.findall(r'(?:emit|timed)\(\s*"(\w+)"', p.read_text())
    }
    emitted_in_loops = {"LoadRowsInserted", "LoadRowsUpdated", "LoadRowsSkipped",
                        "LoadRowsParked", "LoadRowsDeleted",
                        "IcebergRowsInserted", "IcebergRowsUpdated", "IcebergRowsParked",
                        "IcebergRowsDeleted", "IcebergFilesCompacted",
                        "IcebergSnapshotsExpired", "IcebergFilesRemoved"}  # fmt: skip
    assert named | emitted_in_loops == {n for n, s in CATALOGUE.items() if s.emitter == "totes"}


def test_every_catalogue_entry_is_described_with_a_unit_stages_and_service_dimension():
    for spec in CATALOGUE.values():
        assert spec.description
        assert spec.stages
        assert "service" in spec.dimensions
        assert set(spec.stages) <= {"ingest", "transform", "load", "iceberg"}


# -- the freshness rule -----------------------------------------------------------------------


def marker(batch: str, at: datetime) -> LoadedMarker:
    return LoadedMarker(batch, 1, at)


def test_a_quiet_caught_up_source_is_fresh_as_of_this_run():
    before = (T0 - timedelta(minutes=5)).isoformat()
    start = Capture("manifests/c0000000000000000100-000.json", before, True, quiet_run_at=T0)
    assert (
        freshness.held_by_warehouse(
            start, marker("c0000000000000000100-000", T0 - timedelta(hours=9))
        )
        == T0
    )


def test_new_batches_in_flight_hold_the_previous_capture_when_it_is_all_loaded():
    previous = T0 - timedelta(minutes=5)
    start = Capture("manifests/c0000000000000000100-000.json", previous.isoformat(), True)
    loaded = marker("c0000000000000000100-000", T0 - timedelta(hours=3))  # quiet for hours
    assert freshness.held_by_warehouse(start, loaded) == previous


def test_a_stall_holds_only_what_the_marker_says():
    start = Capture("manifests/c0000000000000000200-000.json", T0.isoformat(), True,
                    quiet_run_at=T0)  # fmt: skip
    loaded = marker("c0000000000000000100-000", T0 - timedelta(hours=2))
    assert freshness.held_by_warehouse(start, loaded) == T0 - timedelta(hours=2)
    assert freshness.held_by_warehouse(start, None) is None  # nothing loaded yet: unknown


def test_an_interrupted_split_run_is_not_taken_as_complete():
    start = Capture("manifests/c0000000000000000200-001.json", T0.isoformat(), False)
    loaded = marker("c0000000000000000200-001", T0 - timedelta(minutes=7))
    assert freshness.held_by_warehouse(start, loaded) == T0 - timedelta(minutes=7)


def test_a_first_run_over_an_empty_source_is_fresh_and_a_first_backlog_is_unknown():
    assert freshness.held_by_warehouse(Capture(None, None, True, quiet_run_at=T0), None) == T0
    assert freshness.held_by_warehouse(Capture(None, None, True), None) is None


def test_the_marker_round_trips_and_refuses_a_naive_time():
    m = marker("c0000000000000000100-000", T0)
    assert LoadedMarker.from_json(m.to_json()) == m
    with pytest.raises(ValueError, match="time zone"):
        LoadedMarker.from_json({"batch_id": "x", "capture_seq": 1, "hi_utc": "2026-11-29T12:00"})


# -- the evaluator ----------------------------------------------------------------------------


def point(name, value, cycle, **dims) -> Datapoint:
    return Datapoint("TerrificTotes", name, value, dims, cycle=cycle)


def test_search_matches_exact_dimension_names_and_sum_adds_the_series():
    points = [
        point("IngestRows", 3, 0, service="ingest", table="design"),
        point("IngestRows", 4, 0, service="ingest", table="staff"),
        point("IngestRows", 5, 1, service="ingest"),  # other dimensions: another metric
    ]
    timeline = Timeline(300)
    search = parse_expression(
        "SEARCH('{TerrificTotes,service,table} MetricName=\"IngestRows\"', 'Sum', 300)"
    )
    assert cloudwatch.series(search, points, 300, timeline) == {
        "design": {0: 3.0},
        "staff": {0: 4.0},
    }
    total = parse_expression(f"SUM({search.text})", label="all")
    assert cloudwatch.series(total, points, 300, timeline) == {"all": {0: 7.0}}
    insights = parse_expression(
        'SELECT MAX(IngestRows) FROM SCHEMA(TerrificTotes, "service", "table")'
    )
    assert cloudwatch.series(insights, points, 300, timeline) == {"IngestRows": {0: 4.0}}
    with pytest.raises(cloudwatch.UnsupportedMetric, match="SCHEMA"):
        parse_expression("SELECT SUM(IngestRows) FROM TerrificTotes")


def test_an_alarm_counts_missing_periods_as_its_treat_missing_data_says():
    query = Query("metric", "TerrificTotes", "F", "Maximum", ("service",), (("service", "ingest"),))
    heartbeat = Alarm("A", query, 600, 1, 1, 100.0, "GreaterThanThreshold", "breaching")
    timeline = Timeline(300)
    fresh = [point("F", 1.0, k, service="ingest") for k in range(4)]
    assert evaluate(heartbeat, fresh, timeline).state == "OK"
    silent = [*fresh, point("Other", 1.0, 5, service="ingest")]  # cycles 4, 5: no report
    assert evaluate(heartbeat, silent, timeline).state == "ALARM"
    stale = [*fresh, point("F", 101.0, 4, service="ingest")]
    assert evaluate(heartbeat, stale, timeline).state == "ALARM"
    quiet_ok = Alarm("B", query, 300, 1, 1, 100.0, "GreaterThanThreshold", "notBreaching")
    assert evaluate(quiet_ok, silent, timeline).state == "OK"


def test_a_marker_moves_forward_only_by_capture_sequence_then_batch_id():
    """The Iceberg function keeps its committed marker as load keeps the loaded one: a batch
    delivered late (older sequence, or an older part of the same run) never moves it back."""

    when = datetime(2026, 11, 1, tzinfo=UTC)
    newest = LoadedMarker("c0000000000000000812-001", 812, when)
    assert newest.newer_than(None)
    assert newest.newer_than(LoadedMarker("c0000000000000000812-000", 812, when))
    assert newest.newer_than(LoadedMarker("c0000000000000000811-004", 811, when))
    assert not newest.newer_than(newest)
    assert not LoadedMarker("c0000000000000000811-009", 811, when).newer_than(newest)
