"""Operations that tell the truth, checked on the local chain's real output.

Every metric a run emits is captured as the handlers printed it (EMF) plus what AWS would
publish about the run (Lambda errors and throttles, the failure queue's depth and oldest
message); the template's own alarms and dashboard are then evaluated over them
(``totes_tools.ops.cloudwatch``). A chain cycle stands for one scheduled run (300 s). Where a
condition needs time to pass (an hour of stall, a message waiting for two hours) the test makes
that time pass for the object that measures it: the capture state's or the loaded marker's
capture time, the failure message's SentTimestamp.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from ops_support import age_messages

from totes.db import connect
from totes.lake import ICEBERG_COMMITTED_KEY, LOADED_KEY, STATE_KEY, Lake, manifest_key
from totes.observability import CATALOGUE
from totes_tools.local.chain import LocalChain
from totes_tools.ops import cloudwatch, dashboard, metricstore
from totes_tools.ops.cloudwatch import MetricId, Timeline
from totes_tools.source.generator import generate

pytestmark = pytest.mark.slow

TIMELINE = Timeline(300)


@pytest.fixture
def source(fresh_db):
    creds = fresh_db("ops_src")
    con = connect(creds)
    try:
        generate(con, 60, seed=5)
    finally:
        con.close()
    return creds


@pytest.fixture(scope="module")
def template():
    return cloudwatch.load_template()


def names_of(chain: LocalChain) -> cloudwatch.LocalNames:
    return dashboard.names_from_record(chain.local_names())


def alarms_of(template, chain: LocalChain) -> dict[str, cloudwatch.Alarm]:
    return cloudwatch.alarms_from_template(template, names_of(chain))


def state(chain: LocalChain, alarm: cloudwatch.Alarm) -> str:
    """The alarm's state at the end of the last cycle, from everything the chain emitted."""
    return cloudwatch.evaluate(alarm, chain.datapoints, TIMELINE).state


def cycle_ok(chain: LocalChain):
    report = chain.run_cycle()
    assert report.ok, report.format()
    return report


def heartbeats(chain: LocalChain, cycle: int) -> list[float]:
    return [
        p.value
        for p in chain.datapoints
        if p.cycle == cycle
        and p.name == "WarehouseFreshnessSeconds"
        and p.dimensions == {"service": "ingest"}
    ]


def write_sql(creds, *statements: str) -> None:
    con = connect(creds)
    try:
        for sql in statements:
            con.run(sql)
    finally:
        con.close()


NEW_DESIGN = (
    "INSERT INTO design (design_name, file_location, file_name, created_at, last_updated)"
    " VALUES ('Ops', '/o', 'o.json', localtimestamp, localtimestamp)"
)


# -- freshness is a heartbeat -----------------------------------------------------------------


def test_a_quiet_source_reports_fresh_on_every_run_and_the_freshness_alarm_stays_ok(
    make_chain, source, template
):
    chain = make_chain(source)
    alarms = alarms_of(template, chain)
    cycle_ok(chain)  # the initial load

    for cycle in range(1, 7):  # half an hour of a source where nothing happens
        report = cycle_ok(chain)

        assert report.stages["ingest"].batches == []
        (fresh,) = heartbeats(chain, cycle)  # every run proves how current the warehouse is
        assert fresh < 60  # caught up to this run's snapshot, however long nothing changed
        assert state(chain, alarms["FreshnessAlarm"]) == "OK"
        assert state(chain, alarms["CaptureStalledAlarm"]) == "OK"
    assert {e.alarm for e in _all(template, chain) if e.in_alarm} == set()


def test_a_real_stall_breaches_freshness_while_a_quiet_one_never_does(make_chain, source, template):
    """Transform fails (a stuck stage): the source changes, nothing reaches the warehouse. The
    warehouse's last load is made an hour old; ingest's heartbeat reports it from then on."""
    chain = make_chain(source)
    alarms = alarms_of(template, chain)
    cycle_ok(chain)
    processed = chain.processed
    marker = json.loads(processed.get_bytes(LOADED_KEY))
    marker["hi_utc"] = (datetime.fromisoformat(marker["hi_utc"]) - timedelta(hours=1)).isoformat()
    processed.put_bytes(LOADED_KEY, json.dumps(marker).encode(), "application/json")

    def stuck(event, context):
        raise RuntimeError("transform stuck")

    chain._handlers["transform"] = stuck
    write_sql(chain.source, NEW_DESIGN)
    chain.run_cycle()  # a batch is captured, its transform fails
    chain.run_cycle()  # the next run: that batch is not in the warehouse

    (fresh,) = heartbeats(chain, chain.cycle - 1)
    assert fresh > 3600
    assert state(chain, alarms["FreshnessAlarm"]) == "ALARM"


def test_the_iceberg_targets_heartbeat_stays_fresh_when_quiet_and_breaches_when_it_stalls(
    make_chain, source, template
):
    """With the target on, every ingest run also reports how current the Iceberg tables are,
    from the target's committed marker, by the warehouse's rule. Quiet: both fresh. The
    Iceberg function stalls (its commits fail) while the warehouse keeps loading: only the
    Iceberg freshness alarm breaches once its marker is an hour old."""
    chain = make_chain(source, iceberg=True)
    alarms = alarms_of(template, chain)
    cycle_ok(chain)  # the initial load, into both targets

    def iceberg_heartbeats(cycle: int) -> list[float]:
        return [
            p.value
            for p in chain.datapoints
            if p.cycle == cycle
            and p.name == "IcebergFreshnessSeconds"
            and p.dimensions == {"service": "ingest"}
        ]

    for cycle in (1, 2):  # a source where nothing happens
        report = cycle_ok(chain)
        assert report.stages["ingest"].batches == []
        (fresh,) = iceberg_heartbeats(cycle)
        assert fresh < 60  # caught up to this run's snapshot
        assert state(chain, alarms["IcebergFreshnessAlarm"]) == "OK"
    assert {e.alarm for e in _all(template, chain) if e.in_alarm} == set()

    iceberg = Lake(chain.s3, chain.iceberg.bucket)
    marker = json.loads(iceberg.get_bytes(ICEBERG_COMMITTED_KEY))
    assert marker["batch_id"] == json.loads(chain.processed.get_bytes(LOADED_KEY))["batch_id"]
    marker["hi_utc"] = (datetime.fromisoformat(marker["hi_utc"]) - timedelta(hours=1)).isoformat()
    iceberg.put_bytes(ICEBERG_COMMITTED_KEY, json.dumps(marker).encode(), "application/json")

    def stuck(event, context):
        raise RuntimeError("the Iceberg function is stuck")

    chain._handlers["iceberg"] = stuck
    write_sql(chain.source, NEW_DESIGN)
    chain.run_cycle()  # a batch is captured; the warehouse loads it, the Iceberg target fails
    chain.run_cycle()  # the next run: that batch is not in the Iceberg tables

    (fresh,) = iceberg_heartbeats(chain.cycle - 1)
    assert fresh > 3600
    assert state(chain, alarms["IcebergFreshnessAlarm"]) == "ALARM"
    assert state(chain, alarms["FreshnessAlarm"]) == "OK"  # the warehouse is current


# -- a stuck pipeline looks stuck -------------------------------------------------------------


def test_a_capture_that_does_not_advance_while_runs_succeed_trips_its_alarm(
    make_chain, source, template, monkeypatch
):
    chain = make_chain(source)
    alarms = alarms_of(template, chain)
    cycle_ok(chain)
    cycle_ok(chain)
    assert state(chain, alarms["CaptureStalledAlarm"]) == "OK"
    # The capture stops advancing: its state was last moved an hour ago (twelve runs at the
    # 5-minute rate) and no run can move it any more, though every run answers success.
    pointer = json.loads(chain.raw.get_bytes(STATE_KEY))
    then = datetime.fromisoformat(pointer["capture"]["captured_at"]) - timedelta(hours=1)
    pointer["capture"]["captured_at"] = then.isoformat()
    chain.raw.put_bytes(STATE_KEY, json.dumps(pointer).encode(), "application/json")
    monkeypatch.setattr(Lake, "put_state", lambda lake, key, capture: None)

    for _ in range(2):
        report = cycle_ok(chain)  # success, as the issue says: nothing looks wrong

        assert report.stages["ingest"].invocations == 1
    lags = [p.value for p in chain.datapoints if p.name == "IngestCaptureLagSeconds"]
    assert lags[-1] > 3600
    assert state(chain, alarms["CaptureStalledAlarm"]) == "ALARM"


def test_an_event_waiting_on_the_failure_queue_trips_the_age_alarm_until_it_is_redriven(
    make_chain, source, template, pg_cluster
):
    chain = make_chain(source)
    alarms = alarms_of(template, chain)
    cycle_ok(chain)
    write_sql(chain.source, NEW_DESIGN)

    with pg_cluster.refusing_connections(chain.warehouse):
        down = chain.run_cycle()  # load fails three times: the event goes to the queue
        assert [(f.stage, f.attempts) for f in down.failures] == [("load", 3)]
        assert state(chain, alarms["FailureQueueAgeAlarm"]) == "OK"  # seconds old
        age_messages(chain.names.failure_queue, 2 * 3600)  # two hours pass
        still = chain.run_cycle()  # redriven, fails again: the same record stays

    assert [f.stage for f in still.failures] == ["load"]
    assert still.failure_queue_oldest_seconds > 2 * 3600  # since when, not since the retry
    assert state(chain, alarms["FailureQueueAgeAlarm"]) == "ALARM"
    assert state(chain, alarms["FailureQueueDepthAlarm"]) == "ALARM"

    healed = cycle_ok(chain)  # the warehouse is back: the redrive succeeds

    assert healed.replayed == 1
    assert state(chain, alarms["FailureQueueAgeAlarm"]) == "OK"


def test_a_quarantined_batch_and_a_row_set_aside_trip_their_alarms(make_chain, source, template):
    corrupt = []

    def damage(stage, deliveries):
        if stage == "transform" and corrupt:
            for delivery in deliveries:
                for key in delivery.keys:
                    manifest = chain.raw.get_manifest(key)
                    part = manifest.files[0].key
                    chain.raw.put_bytes(part, b"PAR1 not parquet", "application/octet-stream")
            corrupt.clear()
        return deliveries

    chain = make_chain(source, deliver=damage)
    alarms = alarms_of(template, chain)
    cycle_ok(chain)
    assert state(chain, alarms["QuarantineAlarm"]) == "OK"

    write_sql(chain.source, NEW_DESIGN)
    corrupt.append(True)
    report = cycle_ok(chain)
    assert len(report.stages["transform"].quarantined) == 1
    assert state(chain, alarms["QuarantineAlarm"]) == "ALARM"

    write_sql(
        chain.source,
        "UPDATE sales_order SET created_at = 'infinity', last_updated = localtimestamp"
        " WHERE sales_order_id = 1",
    )
    report = cycle_ok(chain)
    assert report.stages["transform"].rows_set_aside == 1
    assert state(chain, alarms["RowQuarantineAlarm"]) == "ALARM"
    assert state(chain, alarms["QuarantineAlarm"]) == "OK"  # that batch was the last cycle's

    cycle_ok(chain)
    assert state(chain, alarms["RowQuarantineAlarm"]) == "OK"


# -- the catalogue, the template and the dashboard agree with what runs -----------------------


def _all(template, chain: LocalChain) -> list[cloudwatch.Evaluation]:
    return [
        cloudwatch.evaluate(alarm, chain.datapoints, TIMELINE)
        for alarm in alarms_of(template, chain).values()
    ]


@pytest.mark.parametrize("iceberg", [False, True], ids=["pipeline", "with-iceberg-target"])
def test_every_alarm_and_widget_reads_a_metric_the_chain_emitted_and_every_one_is_shown(
    make_chain, source, template, tmp_path, iceberg
):
    """A run that exercises every metric: an initial load, a batch quarantined whole, a row set
    aside, quiet runs (and with the Iceberg target on, its commits and a maintenance run, as
    IcebergTarget=ENABLED deploys them). Its real EMF output (kept in the run's JSON-lines
    file) is checked against the catalogue, and every alarm and dashboard widget of
    template.yaml that exists in that configuration against it."""
    corrupt = []

    def damage(stage, deliveries):
        if stage == "transform" and corrupt:
            corrupt.clear()
            key = deliveries[0].keys[0]
            part = chain.raw.get_manifest(key).files[0].key
            chain.raw.put_bytes(part, b"PAR1 not parquet", "application/octet-stream")
        return deliveries

    path = tmp_path / "metrics.jsonl"
    chain = make_chain(source, deliver=damage, metrics_path=path, iceberg=iceberg)
    cycle_ok(chain)
    write_sql(chain.source, NEW_DESIGN)
    corrupt.append(True)
    cycle_ok(chain)
    write_sql(
        chain.source,
        "UPDATE sales_order SET created_at = 'infinity', last_updated = localtimestamp"
        " WHERE sales_order_id = 2",
    )
    cycle_ok(chain)
    if iceberg:  # the maintenance schedule fires between two runs
        maintenance = chain.maintain_iceberg()
        assert maintenance.ok, maintenance.format()
        chain.end_cycle(maintenance)
    cycle_ok(chain)

    points, recorded = metricstore.read(path)
    assert points == chain.datapoints  # what was kept is what was emitted
    emitted = {MetricId.of(p) for p in points}
    ours = [p for p in points if p.namespace == "TerrificTotes"]
    for p in ours:  # the code emits only catalogue metrics, with the catalogue's dimensions
        spec = CATALOGUE[p.name]
        assert tuple(sorted(p.dimensions)) == tuple(sorted(spec.dimensions)), p
        assert p.dimensions["service"] in spec.stages, p
    expected = {n for n in CATALOGUE if iceberg or not n.startswith("Iceberg")}
    assert {p.name for p in ours} == expected  # and every one of them
    if iceberg:
        cold = {p.dimensions["service"] for p in ours if p.name == "ColdStart"}
        assert cold == {"ingest", "transform", "load", "iceberg"}

    names = dashboard.names_from_record(recorded)
    alarms = cloudwatch.alarms_from_template(template, names)
    optional = {
        n for n, r in template["Resources"].items() if r.get("Condition") == "IcebergEnabled"
    }
    assert bool(set(alarms) & optional) == iceberg  # the target's alarms exist only with it
    for name, alarm in alarms.items():
        assert any(alarm.query.matches(m) for m in emitted), f"{name} reads nothing emitted"
    body = cloudwatch.dashboard_body(template, names)
    queries = [q for w in body["widgets"] for q in cloudwatch.widget_queries(w)]
    for query in queries:
        assert any(query.matches(m) for m in emitted), f"widget reads nothing: {query}"
    unseen = {m for m in emitted if not any(q.matches(m) for q in queries)}
    assert unseen == set()

    png, page, drawn = dashboard.write(template, names, points, tmp_path / "out")
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert "http://" not in text
    assert "https://" not in text
    assert text.count("data:image/png;base64,") == sum(p.kind == "metric" for p in drawn)
    assert [p.title for p in drawn if p.kind != "text" and not p.points] == []
    for alarm in cloudwatch.alarms_from_template(template, names).values():
        shown = [p for p in drawn if p.kind == "metric" and p.series]
        on = [
            p
            for p in shown
            if any(q.namespace == alarm.query.namespace and q.name == alarm.query.name
                   for q in cloudwatch.widget_queries(p.widget))
        ]  # fmt: skip
        assert on, f"{alarm.name}: its metric is on no widget"
        assert any(value == alarm.threshold for p in on for _, value, _ in p.thresholds), (
            f"{alarm.name}: threshold {alarm.threshold} not drawn"
        )


def test_the_processed_manifest_key_is_not_needed_to_know_freshness(make_chain, source):
    """The marker is the ledger's newest batch: after the initial load it names it."""
    chain = make_chain(source)
    report = cycle_ok(chain)
    marker = json.loads(chain.processed.get_bytes(LOADED_KEY))
    (batch,) = report.stages["load"].batches
    assert marker["batch_id"] == batch
    assert chain.processed.get_manifest(manifest_key(batch)).extra["hi_utc"] == marker["hi_utc"]
    assert datetime.fromisoformat(marker["hi_utc"]) <= datetime.now(UTC)


def test_a_failing_ingest_trips_its_errors_alarm_and_still_reports_freshness(
    make_chain, source, template, pg_cluster
):
    chain = make_chain(source)
    alarms = alarms_of(template, chain)
    cycle_ok(chain)
    cycle_ok(chain)

    with pg_cluster.refusing_connections(chain.source):
        down = chain.run_cycle()

    assert [(f.stage, f.attempts) for f in down.failures] == [("ingest", 3)]
    assert state(chain, alarms["IngestErrorsAlarm"]) == "ALARM"
    # each failed attempt still told how current the warehouse is (from the lake's state)
    assert len(heartbeats(chain, chain.cycle - 1)) == 3
    assert state(chain, alarms["FreshnessAlarm"]) == "OK"  # not stale yet: minutes, not hours
    durations = [
        p for p in chain.datapoints if p.cycle == chain.cycle - 1 and p.name.endswith("Seconds")
    ]
    assert {p.name for p in durations} >= {"IngestDurationSeconds"}  # failed runs are timed

    cycle_ok(chain)
    assert state(chain, alarms["IngestErrorsAlarm"]) == "OK"


def test_every_stage_reports_its_duration_when_it_fails_too(
    make_chain, source, pg_cluster, monkeypatch
):
    from totes.stages import transform_batch

    chain = make_chain(source)
    cycle_ok(chain)

    def timed(cycle: int, name: str) -> int:
        return sum(1 for p in chain.datapoints if p.cycle == cycle and p.name == name)

    gate = transform_batch.quality.gate

    def failing_gate(*args, **kwargs):
        raise RuntimeError("transform fails inside the stage")

    monkeypatch.setattr(transform_batch.quality, "gate", failing_gate)
    write_sql(chain.source, NEW_DESIGN)
    failed = chain.run_cycle()
    assert [(f.stage, f.attempts) for f in failed.failures] == [("transform", 3)]
    assert timed(chain.cycle - 1, "TransformDurationSeconds") == 3

    monkeypatch.setattr(transform_batch.quality, "gate", gate)
    with pg_cluster.refusing_connections(chain.warehouse):
        down = chain.run_cycle()  # the redriven transform passes; its load fails
    assert [(f.stage, f.attempts) for f in down.failures] == [("load", 3)]
    assert timed(chain.cycle - 1, "LoadDurationSeconds") == 3


def test_the_iceberg_stage_reports_its_durations_when_it_fails_and_trips_its_own_alarms(
    make_chain, source, template, monkeypatch
):
    """With the target on, a failing Iceberg commit is timed on each attempt and trips the
    Iceberg errors and failure queue alarms, not the pipeline's; a failing maintenance run is
    timed too. The warehouse load of the same batch is untouched."""
    from totes.stages import iceberg_batch

    chain = make_chain(source, iceberg=True)
    alarms = alarms_of(template, chain)
    cycle_ok(chain)

    def timed(cycle: int, name: str) -> int:
        return sum(
            1
            for p in chain.datapoints
            if p.cycle == cycle and p.name == name and p.dimensions == {"service": "iceberg"}
        )

    def failing(*args, **kwargs):
        raise RuntimeError("the Iceberg commit fails inside the stage")

    monkeypatch.setattr(iceberg_batch, "apply_batch", failing)
    monkeypatch.setattr(iceberg_batch, "maintain", failing)
    write_sql(chain.source, NEW_DESIGN)
    failed = chain.run_cycle()
    assert [(f.stage, f.attempts) for f in failed.failures] == [("iceberg", 3)]
    assert len(failed.stages["load"].batches) == 1  # the warehouse took the batch
    assert timed(chain.cycle - 1, "IcebergDurationSeconds") == 3
    assert state(chain, alarms["IcebergErrorsAlarm"]) == "ALARM"
    assert state(chain, alarms["IcebergFailureQueueDepthAlarm"]) == "ALARM"
    assert state(chain, alarms["LoadErrorsAlarm"]) == "OK"
    assert state(chain, alarms["FailureQueueDepthAlarm"]) == "OK"

    maintenance = chain.maintain_iceberg()
    chain.end_cycle(maintenance)
    assert [(f.stage, f.attempts) for f in maintenance.failures] == [("iceberg", 3)]
    assert timed(chain.cycle - 1, "IcebergMaintenanceSeconds") == 3

    monkeypatch.undo()
    redriven = chain.run_cycle()  # the failure queue's record goes to the Iceberg stage again
    assert redriven.ok, redriven.format()
    assert redriven.replayed == 1
    assert state(chain, alarms["IcebergFailureQueueDepthAlarm"]) == "OK"
