"""The local chain runs the functions as the template deploys them: the same memory and
timeout per function (the context handlers see) and the same async retry rule; and load's
statement timeout ends before Lambda's, so a stuck statement fails with load's own error."""

from __future__ import annotations

import pytest
from sam_template import render, resources_of

chain = pytest.importorskip("totes_tools.local.chain")
load_batch = pytest.importorskip("totes.stages.load_batch")

FUNCTIONS = {
    "ingest": "IngestFunction",
    "transform": "TransformFunction",
    "load": "LoadFunction",
    "iceberg": "IcebergFunction",
}


def function_properties(template: dict, stage: str) -> dict:
    """A function's properties with the template's Globals applied (as SAM applies them)."""
    globals_ = template.get("Globals", {}).get("Function", {})
    return {**globals_, **template["Resources"][FUNCTIONS[stage]]["Properties"]}


def test_the_chain_gives_each_handler_the_templates_memory_and_timeout(template):
    deployed = {
        stage: (
            function_properties(template, stage)["MemorySize"],
            function_properties(template, stage)["Timeout"],
        )
        for stage in FUNCTIONS
    }

    local = {
        stage: (chain.FUNCTION_MEMORY_MB[stage], chain.FUNCTION_TIMEOUT_SECONDS[stage])
        for stage in FUNCTIONS
    }

    assert local == deployed
    assert {stage: chain.context_for(stage).memory_limit_in_mb for stage in FUNCTIONS} == {
        stage: memory for stage, (memory, _) in deployed.items()
    }


def test_the_chain_retries_each_function_as_its_event_invoke_config_does(expanded):
    stage_of = {f"<{logical}>": stage for stage, logical in FUNCTIONS.items()}
    retries = {
        stage_of[render(c["Properties"]["FunctionName"])]: c["Properties"]["MaximumRetryAttempts"]
        for c in resources_of(expanded, "AWS::Lambda::EventInvokeConfig").values()
    }

    assert retries == dict.fromkeys(FUNCTIONS, chain.MAX_RETRY_ATTEMPTS)
    assert chain.MAX_ATTEMPTS == chain.MAX_RETRY_ATTEMPTS + 1


def test_load_statements_time_out_before_the_load_function_does(template):
    timeout = function_properties(template, "load")["Timeout"]

    assert timeout > load_batch.SOCKET_TIMEOUT_SECONDS
    assert timeout - load_batch.SOCKET_TIMEOUT_SECONDS >= 10  # time to roll back and report


def test_a_queued_event_stays_invisible_longer_than_any_function_runs(template):
    longest = max(function_properties(template, stage)["Timeout"] for stage in FUNCTIONS)

    assert longest <= chain.VISIBILITY_TIMEOUT_SECONDS
