"""Bounded reads of the lake's state, and a lifecycle that can never remove it.

Ingest finds its state with O(1) requests however old the lake: a lake holding 100,000 old
manifests (about a year at the 5-minute schedule, injected straight into the emulator) costs an
ingest run exactly the requests it cost before, counted per S3 operation with a botocore event
hook; nothing lists the lake, neither ingest nor the local chain around it.

Old raw manifests, raw data and superseded key sets expire by lifecycle after
``RawRetentionDays``; the state pointer has no rule, and every key set the state references is
renewed by ingest before it is half that old, so a table unchanged for months keeps its key
set. The rules applied here are the template's own.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from ops_support import age_objects, apply_lifecycle, counted_s3_requests, forget, inject

from totes.db import connect
from totes.lake import MANIFEST_PREFIX, RAW_PREFIX, STATE_KEY, manifest_key
from totes.stages import ingest_batch
from totes_tools.ops import cloudwatch
from totes_tools.source.generator import generate

pytestmark = pytest.mark.slow

OLD_MANIFESTS = 100_000


@pytest.fixture
def source(fresh_db):
    creds = fresh_db("reads_src")
    con = connect(creds)
    try:
        generate(con, 40, seed=9)
    finally:
        con.close()
    return creds


def quiet_ingest(chain, monkeypatch):
    """The S3 requests of one ingest run over a source where nothing changed, by operation."""
    with counted_s3_requests(monkeypatch, chain.s3) as counted:
        report = chain.ingest()
    assert report.ok, report.format()
    assert report.stages["ingest"].batches == []
    return dict(counted)


def test_an_ingest_run_costs_the_same_requests_with_100000_old_manifests_in_the_lake(
    make_chain, source, monkeypatch
):
    chain = make_chain(source)
    assert chain.run_cycle().ok
    chain.run_cycle()  # the first quiet run may renew nothing; the second is the steady state
    before = quiet_ingest(chain, monkeypatch)

    old = [manifest_key(f"c{n:019d}-000") for n in range(1, OLD_MANIFESTS + 1)]
    inject(chain.raw.bucket, old, b'{"batch_id": "old"}')
    try:
        after = quiet_ingest(chain, monkeypatch)
        con = connect(chain.source)
        try:
            con.run(
                "INSERT INTO design (design_name, file_location, file_name, created_at,"
                " last_updated) VALUES ('Year', '/y', 'y.json', localtimestamp, localtimestamp)"
            )
        finally:
            con.close()
        with counted_s3_requests(monkeypatch, chain.s3) as changed:
            report = chain.run_cycle()  # ingest, transform and load of a new batch
        assert report.ok, report.format()
    finally:
        forget(chain.raw.bucket, MANIFEST_PREFIX + "c00000000")

    assert before["GetObject"] >= 1  # the state pointer: the counter sees the stages' client
    assert after == before  # the same requests, operation by operation
    assert set(before) <= {"GetObject", "PutObject", "CopyObject"}
    assert sum(before.values()) <= 4  # state pointer, loaded marker, the advanced state
    assert "ListObjectsV2" not in changed  # neither ingest nor the chain lists the lake
    assert "ListObjects" not in changed
    assert report.stages["load"].batches == report.stages["ingest"].batches


def test_lifecycle_removes_old_batches_but_never_the_state_or_a_key_set_it_needs(
    make_chain, source, monkeypatch
):
    template = cloudwatch.load_template()
    rules = template["Resources"]["RawBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    params = {
        name: int(p["Default"])
        for name, p in template["Parameters"].items()
        if name.endswith("RetentionDays")
    }
    retention = params["RawRetentionDays"]
    chain = make_chain(source)
    con = connect(chain.source)
    try:
        [[design]] = con.run(
            "INSERT INTO design (design_name, file_location, file_name, created_at,"
            " last_updated) VALUES ('Kept', '/k', 'k.json', localtimestamp, localtimestamp)"
            " RETURNING design_id"
        )
    finally:
        con.close()
    assert chain.run_cycle().ok
    first_manifests = chain.raw.keys(MANIFEST_PREFIX)

    def days_pass(days: float) -> None:
        """``days`` pass for every object of the raw lake and for the state's own record of
        when its key sets were written."""
        age_objects(chain.raw.bucket, days)
        pointer = json.loads(chain.raw.get_bytes(STATE_KEY))
        for keyset in pointer["capture"]["keysets"].values():
            written = datetime.fromisoformat(keyset["written_at"]) - timedelta(days=days)
            keyset["written_at"] = written.isoformat()
        chain.raw.put_bytes(STATE_KEY, json.dumps(pointer).encode(), "application/json")
        age_objects(chain.raw.bucket, days, STATE_KEY)

    def referenced() -> set[str]:
        pointer = json.loads(chain.raw.get_bytes(STATE_KEY))
        return {k["key"] for k in pointer["capture"]["keysets"].values()}

    days_pass(retention * 2 / 3)
    with counted_s3_requests(monkeypatch, chain.s3) as renewed:
        assert chain.run_cycle().ok  # a quiet run: the key sets in use are renewed
    assert renewed["CopyObject"] == len(referenced())
    days_pass(retention * 2 / 3)  # 40 days after the first batch, 20 after the renewal

    removed = apply_lifecycle(chain.raw.bucket, rules, params)

    assert set(first_manifests) <= set(removed)  # old manifests and data expired
    assert [k for k in removed if k.startswith(f"{RAW_PREFIX}/")]
    assert STATE_KEY not in removed
    assert referenced() & set(removed) == set()
    assert chain.raw.keys(STATE_KEY) == [STATE_KEY]

    # The capture goes on from the surviving state: a deletion is still found.
    con = connect(chain.source)
    try:
        con.run("DELETE FROM design WHERE design_id = :d", d=design)
    finally:
        con.close()
    report = chain.run_cycle()
    assert report.ok, report.format()
    (batch,) = report.stages["ingest"].batches
    assert chain.raw.get_manifest(manifest_key(batch)).extra["deleted_rows"] == {"design": 1}


def test_without_the_renewal_the_lifecycle_would_take_the_key_sets_in_use(
    make_chain, source, monkeypatch
):
    """The control: the same 40 days with the renewal switched off lose the state's key sets."""
    template = cloudwatch.load_template()
    rules = template["Resources"]["RawBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    params = {n: int(p["Default"]) for n, p in template["Parameters"].items() if "Days" in n}
    monkeypatch.setattr(ingest_batch, "keysets_refresh", lambda lake, keysets, now, days: keysets)
    chain = make_chain(source)
    assert chain.run_cycle().ok
    age_objects(chain.raw.bucket, params["RawRetentionDays"] * 2 / 3)
    assert chain.run_cycle().ok
    age_objects(chain.raw.bucket, params["RawRetentionDays"] * 2 / 3)

    removed = apply_lifecycle(chain.raw.bucket, rules, params)

    pointer = json.loads(chain.raw.get_bytes(STATE_KEY))
    in_use = {k["key"] for k in pointer["capture"]["keysets"].values()}
    assert in_use <= set(removed)
