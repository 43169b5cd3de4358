"""``python -m totes sam-local events``: the events it writes name the newest manifest of the
local stack's raw and processed buckets (key, size, eTag) and do what they say when handed
to the handlers, the way ``sam local invoke -e`` hands them over."""

from __future__ import annotations

import json
from urllib.parse import unquote_plus

from totes_tools.local.aws import environment
from totes_tools.local.chain import LocalChain, context_for
from totes_tools.local.sam_commands import write_events
from totes_tools.source.generator import generate


def invoke(chain: LocalChain, stage: str, event: dict):
    with environment(chain.function_env(stage)):
        return chain.handler(stage)(event, context_for(stage))


def test_the_events_name_the_newest_manifests_and_drive_transform_then_load(
    aws, source_db, warehouse_db, pg_connect, new_stack_names, tmp_path
):
    generate(pg_connect(source_db), scale=50, seed=3)
    chain = LocalChain(aws, new_stack_names("events"), source_db, warehouse_db)
    chain.prepare()

    written = write_events(aws, chain.names, tmp_path)
    assert (written["transform"], written["load"]) == (None, None)  # no manifest yet
    ingest = json.loads(written["ingest"].read_text())
    (batch_id,) = invoke(chain, "ingest", ingest)["batches"]

    written = write_events(aws, chain.names, tmp_path)
    assert written["load"] is None
    transform = json.loads(written["transform"].read_text())
    (obj,) = [r["s3"] for r in transform["Records"]]
    key = unquote_plus(obj["object"]["key"])
    head = chain.s3.head_object(Bucket=chain.names.raw_bucket, Key=key)
    assert obj["bucket"]["name"] == chain.names.raw_bucket
    assert key == chain.raw.manifest_keys()[-1]
    assert (obj["object"]["size"], obj["object"]["eTag"]) == (
        head["ContentLength"],
        head["ETag"].strip('"'),
    )
    (transformed,) = invoke(chain, "transform", transform)["results"]
    assert (transformed["status"], transformed["batch_id"]) == ("processed", batch_id)

    load = json.loads(write_events(aws, chain.names, tmp_path)["load"].read_text())
    assert load["Records"][0]["s3"]["bucket"]["name"] == chain.names.processed_bucket
    (loaded,) = invoke(chain, "load", load)["results"]
    assert (loaded["status"], loaded["batch_id"]) == ("loaded", batch_id)
