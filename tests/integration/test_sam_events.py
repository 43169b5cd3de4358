"""Each ``sam/events`` file, fed to its handler against the local stack, does what it says.

The files are the ones ``sam local invoke -e`` takes. Only what differs between a deployed
stack and this one is swapped in: the bucket name, and the key and eTag of the manifest the
previous stage really wrote. Everything else of the event reaches the handler as written.
"""

from __future__ import annotations

import copy
import json

import pytest

from totes.identifiers import quote
from totes.lake import Manifest, manifest_key
from totes.star.model import STAR_TABLES
from totes_tools.local.aws import environment
from totes_tools.local.chain import LocalChain, context_for
from totes_tools.repository import sam_dir
from totes_tools.source.generator import generate

EVENTS = sam_dir() / "events"


def event_file(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def s3_event_for(name: str, bucket: str, key: str, etag: str) -> dict:
    """The event file with this stack's bucket and the real manifest's key and eTag."""
    event = copy.deepcopy(event_file(name))
    (record,) = event["Records"]
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    record["s3"]["object"]["key"] = key
    record["s3"]["object"]["eTag"] = etag
    return event


def invoke(chain: LocalChain, stage: str, event: dict):
    with environment(chain.function_env(stage)):
        return chain.handler(stage)(event, context_for(stage))


def etag(chain: LocalChain, bucket: str, key: str) -> str:
    return chain.s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


@pytest.fixture
def source_rows(source_db, pg_connect) -> dict[str, int]:
    rows = generate(pg_connect(source_db), scale=200)
    return {table: n for table, n in rows.items() if n}


@pytest.fixture
def chain(aws, source_db, warehouse_db, source_rows, new_stack_names) -> LocalChain:
    names = new_stack_names("events")
    made = LocalChain(aws, names, source_db, warehouse_db)
    made.prepare()
    return made


def run_ingest(chain: LocalChain) -> dict:
    return invoke(chain, "ingest", event_file("ingest_schedule.json"))


def run_transform(chain: LocalChain, batch_id: str) -> dict:
    key = manifest_key(batch_id)
    bucket = chain.names.raw_bucket
    return invoke(
        chain,
        "transform",
        s3_event_for("transform_s3_put.json", bucket, key, etag(chain, bucket, key)),
    )


def test_the_schedule_event_ingests_every_source_row_into_one_raw_batch(chain, source_rows):
    result = run_ingest(chain)

    (batch_id,) = result["batches"]
    assert result == {"batches": [batch_id], "rows": source_rows}
    assert chain.raw.manifest_keys() == [manifest_key(batch_id)]
    assert chain.raw.get_manifest(manifest_key(batch_id)).row_counts == source_rows


def test_the_raw_put_event_transforms_that_batch_into_the_processed_lake(chain):
    (batch_id,) = run_ingest(chain)["batches"]

    result = run_transform(chain, batch_id)

    processed = chain.processed.get_manifest(manifest_key(batch_id))
    assert result == {
        "results": [
            {
                "status": "processed",
                "batch_id": batch_id,
                "manifest_key": manifest_key(batch_id),
                "rows": processed.row_counts,
                "quarantined_rows": 0,
                "quarantined_rows_key": None,
            }
        ]
    }
    assert chain.processed.manifest_keys() == [manifest_key(batch_id)]
    assert sorted(processed.row_counts) == sorted(t.name for t in STAR_TABLES)


def test_the_processed_put_event_loads_that_batch_into_the_warehouse(chain, pg_connect):
    (batch_id,) = run_ingest(chain)["batches"]
    run_transform(chain, batch_id)
    key = manifest_key(batch_id)
    bucket = chain.names.processed_bucket
    processed: Manifest = chain.processed.get_manifest(key)

    result = invoke(
        chain, "load", s3_event_for("load_s3_put.json", bucket, key, etag(chain, bucket, key))
    )

    (loaded,) = result["results"]
    assert (loaded["status"], loaded["batch_id"]) == ("loaded", batch_id)
    assert {t: r["inserted"] for t, r in loaded["rows"].items()} == processed.row_counts
    con = pg_connect(chain.warehouse)
    in_warehouse = {
        t.name: con.run(f"SELECT count(*) FROM {quote(t.name)}")[0][0]  # noqa: S608 - model names
        for t in STAR_TABLES
    }
    assert in_warehouse == processed.row_counts


def test_the_event_files_name_a_manifest_in_the_stack_naming_of_the_template():
    """As written (for `sam local invoke` against a deployed stack): the template's bucket
    names and a key the manifest filter admits."""
    for name, bucket in (("transform_s3_put.json", "raw"), ("load_s3_put.json", "processed")):
        (record,) = event_file(name)["Records"]
        assert record["eventName"].startswith("ObjectCreated:")
        assert (
            record["s3"]["bucket"]["name"] == f"terrific-totes-dev-{bucket}-123456789012-eu-west-2"
        )
        key = record["s3"]["object"]["key"]
        assert manifest_key(key.removeprefix("manifests/").removesuffix(".json")) == key
