"""How the bench reads a pipelined run (``totes_tools.local.pipeline.overlap``): each stage's
busy seconds from its invocations' wall-clock spans, and how much of that work ran while
another stage was busy too; and the check that every batch went through each stage once."""

from __future__ import annotations

import pytest

from totes_tools.local.bench import _every_batch_once
from totes_tools.local.pipeline import overlap


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
