"""Batch ids: deterministic, sortable by capture sequence then part, recognisable, and the
limit of three part digits."""

from __future__ import annotations

from totes.lake import BATCH_ID, batch_id_for


def test_batch_ids_sort_by_capture_sequence_then_part():
    ids = [batch_id_for(seq, part) for seq in (9, 10, 1_234_567) for part in (0, 1, 999)]

    assert ids == sorted(ids)
    assert batch_id_for(10, 2) == "c0000000000000000010-002"
    assert all(BATCH_ID.match(i) for i in ids)
    assert BATCH_ID.match("20241115T101500000000-000")  # a batch from before capture by commit
    assert sorted(["20241115T101500000000-000", batch_id_for(1)])[-1] == batch_id_for(1)
    # The edge of the known limit: a 1000th part sorts before the 999th.
    assert batch_id_for(5, 1000) < batch_id_for(5, 999)
    assert not BATCH_ID.match(batch_id_for(5, 1000))
    for forged in ("../x", "c1-000", "c0000000000000000010-000.json", ""):
        assert not BATCH_ID.match(forged)
