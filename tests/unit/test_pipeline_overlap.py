"""How the bench reads a pipelined run (``totes_tools.local.pipeline.overlap``): each stage's
busy seconds from its invocations' wall-clock spans, and how much of that work ran while
another stage was busy too; and the check that every batch went through each stage once."""

from __future__ import annotations

import pytest

from totes_tools.local.bench import _every_batch_once
from totes_tools.local.pipeline import combined, load_worker, overlap, projected


def test_stages_one_after_another_overlap_by_nothing():
    spans = {
        "ingest": [(0.0, 10.0)],
        "transform": [(11.0, 13.0), (13.0, 15.0)],
        "load": [(16.0, 20.0)],
    }

    got = overlap(spans)

    assert got["busy_s"] == {"ingest": 10.0, "transform": 4.0, "load": 4.0}
    assert got["span_s"] == 20.0
    assert got["any_busy_s"] == 18.0  # the gaps between the processes are nobody's work
    assert got["overlap_s"] == 0.0
    assert got["started_after_s"] == {"ingest": 0.0, "transform": 11.0, "load": 16.0}
    assert got["tail_after_ingest_s"] == 10.0


def test_stages_running_at_once_count_their_shared_seconds_as_overlap():
    # ingest writes three batches over 9 s; each is transformed (2 s) and loaded (3 s) as
    # soon as it lands; the second load waits for the first (the load lock)
    spans = {
        "ingest": [(0.0, 9.0)],
        "transform": [(3.0, 5.0), (6.0, 8.0), (9.0, 11.0)],
        "load": [(5.0, 8.0), (8.0, 11.0), (11.0, 14.0)],
    }

    got = overlap(spans)

    assert got["busy_s"] == {"ingest": 9.0, "transform": 6.0, "load": 9.0}
    assert got["span_s"] == 14.0
    assert got["any_busy_s"] == 14.0
    assert got["overlap_s"] == pytest.approx(24.0 - 14.0)
    assert got["started_after_s"] == {"ingest": 0.0, "transform": 3.0, "load": 5.0}
    assert got["tail_after_ingest_s"] == 5.0


def _load_report(batches, spans, rows, cpu, rss, exited):
    return {
        "stage": "load",
        "invocations": len(batches),
        "handler_seconds": sum(e - s for s, e in spans),
        "batches": len(batches),
        "batch_ids": batches,
        "rows": sum(rows.values()),
        "rows_by_table": rows,
        "seconds": exited,
        "rows_per_s": None,
        "rss_before_mb": 100.0,
        "peak_rss_mb": rss,
        "client_cpu_s": cpu,
        "spans": spans,
        "deliveries": [[b, None, s, e] for b, (s, e) in zip(batches, spans, strict=True)],
        "failures": [],
        "exited_after_s": exited,
    }


def test_load_processes_report_as_one_stage_whose_concurrent_loads_count_as_overlap():
    first = _load_report(["b1", "b3"], [[5.0, 8.0], [9.0, 10.0]], {"dim_staff": 2}, 1.5, 240, 10.0)
    second = _load_report(["b2"], [[6.0, 9.0]], {"dim_staff": 1, "fact_payment": 4}, 0.5, 250, 9.0)

    load = combined([first, second])

    assert load["processes"] == 2
    assert (load["invocations"], load["batches"]) == (3, 3)
    assert sorted(load["batch_ids"]) == ["b1", "b2", "b3"]
    assert load["rows_by_table"] == {"dim_staff": 3, "fact_payment": 4}
    assert (load["rows"], load["rows_per_s"]) == (7, 1)  # over the longest process
    assert (load["client_cpu_s"], load["peak_rss_mb"], load["exited_after_s"]) == (2.0, 250, 10.0)
    assert load["spans"] == [[5.0, 8.0], [6.0, 9.0], [9.0, 10.0]]
    assert [d[0] for d in load["deliveries"]] == ["b1", "b2", "b3"]  # by start
    got = overlap({"ingest": [(0.0, 6.0)], "transform": [], "load": load["spans"]})
    assert got["busy_s"]["load"] == 7.0  # summed over the processes
    assert got["overlap_s"] == pytest.approx(13.0 - 10.0)  # 1 s with ingest, 2 s load with load
    assert combined([first]) is first
    assert [load_worker(i) for i in range(3)] == ["load", "load-2", "load-3"]


def test_no_invocation_at_all_is_no_work_and_no_overlap():
    assert overlap({"ingest": [], "transform": [], "load": []})["overlap_s"] == 0.0


def _stages(ingested, transformed, loaded):
    return {
        "ingest": {"batch_ids": ingested},
        "transform": {"batch_ids": transformed},
        "load": {"batch_ids": loaded},
    }


def test_every_batch_once_in_any_order():
    assert _every_batch_once(_stages(["a", "b", "c"], ["b", "a", "c"], ["c", "a", "b"]))
    # a batch with nothing to load publishes no processed manifest: not loaded is fine
    assert _every_batch_once(_stages(["a", "b"], ["a", "b"], ["b"]))


@pytest.mark.parametrize(
    ("transformed", "loaded"),
    [
        (["a", "b"], ["a", "b", "c"]),  # one batch never transformed
        (["a", "b", "c", "c"], ["a", "b", "c"]),  # transformed twice
        (["a", "b", "c"], ["a", "b", "b"]),  # loaded twice
        (["a", "b", "c"], ["a", "x"]),  # loaded what was never transformed
    ],
)
def test_a_batch_missed_or_repeated_is_caught(transformed, loaded):
    assert not _every_batch_once(_stages(["a", "b", "c"], transformed, loaded))


def _sequential(load_seconds: float) -> dict:
    """A sequential run: ingest 0-9 s writing batches a, b, c at 3, 6 and 9 s; then each
    transformed in 1 s (10-13 s); then each loaded in ``load_seconds``."""
    loads, t = [], 14.0
    for batch in "abc":
        loads.append((batch, None, t, t + load_seconds))
        t += load_seconds
    return {
        "ingest": {"spans": [(0.0, 9.0)]},
        "transform": {
            "deliveries": [("c", 9.0, 12.0, 13.0), ("a", 3.0, 10.0, 11.0), ("b", 6.0, 11.0, 12.0)]
        },
        "load": {"deliveries": loads},
    }


def test_the_projection_replays_a_sequential_run_as_a_pipeline_of_uncontended_stages():
    # each batch transformed as it lands (3-4, 6-7, 9-10 s) and loaded after it (4-7,
    # 7-10, 10-13 s): the last load ends 4 s after ingest
    assert projected(_sequential(3.0)) == 13.0
    # loads slower than ingest: they queue behind each other (4-9, 9-14, 14-19 s)
    assert projected(_sequential(5.0)) == 19.0


def test_no_projection_without_the_timeline():
    stages = _sequential(3.0)
    stages["transform"]["deliveries"][0] = ("c", None, 12.0, 13.0)  # no landing time
    assert projected(stages) is None
    assert projected({**stages, "ingest": {"spans": []}}) is None
