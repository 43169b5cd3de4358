"""The optional Iceberg target in the template (issue 17): off by default, every resource of it
conditional; fed by EventBridge without touching load's notification; least-privilege role;
the bucket's write boundary; encryption with and without the stack's key; its alarms and
dashboard watch metrics the code emits; and the built function fits Lambda's size limit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sam_template import (
    LAMBDA_UNZIPPED_LIMIT,
    PANDAS_LAYER_BYTES,
    REPO_ROOT,
    grants,
    render,
    resolve,
    resources_of,
)

from totes.iceberg.settings import IcebergSettings
from totes.lake import MANIFEST_PREFIX, MANIFEST_SUFFIX
from totes.observability import CATALOGUE

PROCESSED = "arn:aws:s3:::STACK-processed-ACCOUNT-REGION"
ICEBERG = "arn:aws:s3:::STACK-iceberg-ACCOUNT-REGION"
NULL = "null"
ITEM_ACTIONS = ("Get", "Put", "Update", "Delete")


def iceberg_resources(expanded: dict) -> dict[str, dict]:
    return {
        n: r for n, r in expanded["Resources"].items() if r.get("Condition") == "IcebergEnabled"
    }


def test_the_target_is_off_by_default_and_every_resource_of_it_is_conditional(template, expanded):
    param = template["Parameters"]["IcebergTarget"]
    assert (param["Default"], param["AllowedValues"]) == ("DISABLED", ["ENABLED", "DISABLED"])
    assert expanded["Conditions"]["IcebergEnabled"] == {
        "Fn::Equals": [{"Ref": "IcebergTarget"}, "ENABLED"]
    }
    names = set(iceberg_resources(expanded))
    assert {
        "IcebergFunction",
        "IcebergFunctionEventInvokeConfig",
        "IcebergFunctionMaintenance",
        "IcebergFunctionMaintenanceRole",
        "IcebergManifestRule",
        "IcebergFunctionManifestRulePermission",
        "IcebergRole",
        "IcebergLogGroup",
        "IcebergBucket",
        "IcebergBucketPolicy",
        "IcebergDatabase",
        "AthenaWorkGroup",
        "IcebergFailureQueue",
        "IcebergFailureQueuePolicy",
        "IcebergErrorsAlarm",
        "IcebergThrottlesAlarm",
        "IcebergFailureQueueDepthAlarm",
        "IcebergFailureQueueAgeAlarm",
        "IcebergFreshnessAlarm",
        "IcebergDashboard",
    } == names
    unconditional = [
        n for n, r in expanded["Resources"].items() if n.startswith(("Iceberg", "Athena"))
        and n not in names
    ]  # fmt: skip
    assert unconditional == []
    outputs = {n: o for n, o in template["Outputs"].items() if n.startswith(("Iceberg", "Athena"))}
    assert outputs
    assert all(o["Condition"] == "IcebergEnabled" for o in outputs.values())


def test_the_processed_bucket_also_sends_its_events_to_eventbridge_only_with_the_target(expanded):
    config = expanded["Resources"]["ProcessedBucket"]["Properties"]["NotificationConfiguration"]
    on, off = (resolve(config, {"IcebergEnabled": v}) for v in (True, False))
    assert on["EventBridgeConfiguration"] == {"EventBridgeEnabled": True}
    assert "EventBridgeConfiguration" not in off
    assert on["LambdaConfigurations"] == off["LambdaConfigurations"]  # load's, untouched


def test_the_rule_sends_every_processed_manifest_and_nothing_else_to_the_function(expanded):
    from totes_tools.local.iceberg import manifest_pattern

    rule = expanded["Resources"]["IcebergManifestRule"]["Properties"]
    pattern = render(rule["EventPattern"])
    assert pattern == manifest_pattern("STACK-processed-ACCOUNT-REGION")
    assert pattern["detail"]["object"]["key"] == [
        {"wildcard": f"{MANIFEST_PREFIX}*{MANIFEST_SUFFIX}"}
    ]
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["IcebergFunction", "Arn"]}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["IcebergFailureQueue", "Arn"]}}
    permission = expanded["Resources"]["IcebergFunctionManifestRulePermission"]["Properties"]
    assert (permission["Principal"], permission["SourceArn"]) == (
        "events.amazonaws.com",
        {"Fn::GetAtt": ["IcebergManifestRule", "Arn"]},
    )


def test_the_function_runs_alone_on_arm64_with_the_pandas_and_totes_layers_only(expanded):
    props = expanded["Resources"]["IcebergFunction"]["Properties"]
    assert (props["Runtime"], props["Architectures"], props["Handler"]) == (
        "python3.13",
        [{"Ref": "Architecture"}],
        "app.handler",
    )
    assert props["Layers"] == [
        {"Ref": "PandasLayerArn"},
        {
            "Fn::If": [
                "HasTotesLayerArn",
                {"Ref": "TotesLayerArn"},
                {"Ref": props["Layers"][1]["Fn::If"][2]["Ref"]},
            ]
        },
    ]
    assert props["ReservedConcurrentExecutions"] == 1
    (config,) = [
        c["Properties"]
        for c in resources_of(expanded, "AWS::Lambda::EventInvokeConfig").values()
        if c["Properties"]["FunctionName"] == {"Ref": "IcebergFunction"}
    ]
    assert config["MaximumRetryAttempts"] == 2
    assert config["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["IcebergFailureQueue", "Arn"]
    }
    schedule = expanded["Resources"]["IcebergFunctionMaintenance"]["Properties"]
    assert json.loads(schedule["Target"]["Input"]) == {"action": "maintain"}
    assert schedule["ScheduleExpression"] == {"Fn::Sub": "rate(${IcebergMaintenanceRate})"}
    # Hourly by default: commits slow down with the commits since the last compaction
    # (docs/iceberg.md, iceberg-bench with and without --maintain-every 12).
    assert expanded["Parameters"]["IcebergMaintenanceRate"]["Default"] == "1 hour"


def test_the_function_environment_satisfies_its_settings_at_cold_start(template, expanded):
    variables = expanded["Resources"]["IcebergFunction"]["Properties"]["Environment"]["Variables"]
    env = render({k: v for k, v in variables.items() if k != "AWS_ENDPOINT_URL"})
    values = {"IdempotencyTable": "STACK-IdempotencyTable-XYZ", "IcebergDatabase": "stack_star"}
    values["IcebergSnapshotRetentionHours"] = str(
        template["Parameters"]["IcebergSnapshotRetentionHours"]["Default"]
    )
    env = {k: re.sub(r"<(\w+)>", lambda m: values[m[1]], v) for k, v in env.items()}

    assert IcebergSettings.from_env(env) == IcebergSettings(
        processed_bucket="STACK-processed-ACCOUNT-REGION",
        idempotency_table="STACK-IdempotencyTable-XYZ",
        warehouse="s3://STACK-iceberg-ACCOUNT-REGION/warehouse",
        database="stack_star",
        snapshot_retention_hours=72,
    )
    database = expanded["Resources"]["IcebergDatabase"]["Properties"]["DatabaseInput"]
    assert database["Name"] == {
        "Fn::Join": ["_", {"Fn::Split": ["-", {"Fn::Sub": "${AWS::StackName}_star"}]}]
    }


def test_the_role_reaches_only_what_the_target_needs(expanded):
    res = expanded["Resources"]
    glue = "arn:aws:glue:REGION:ACCOUNT"
    expected = {
        ("logs:CreateLogStream", "<IcebergLogGroup.Arn>", NULL),
        ("logs:PutLogEvents", "<IcebergLogGroup.Arn>", NULL),
        ("s3:ListBucket", PROCESSED, NULL),
        ("s3:GetObject", f"{PROCESSED}/processed/*", NULL),
        ("s3:GetObject", f"{PROCESSED}/manifests/*", NULL),
        # unconditioned: a missing marker or metadata file must read as 404, not 403
        ("s3:ListBucket", ICEBERG, NULL),
        *{
            (a, f"{ICEBERG}/warehouse/*", NULL)
            for a in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")
        },
        # the committed marker ingest reads (the target's freshness heartbeat)
        ("s3:GetObject", f"{ICEBERG}/state/iceberg-committed.json", NULL),
        ("s3:PutObject", f"{ICEBERG}/state/iceberg-committed.json", NULL),
        *{
            (a, r, NULL)
            for a in (
                "glue:GetDatabase", "glue:GetTable", "glue:CreateTable", "glue:UpdateTable",
            )
            for r in (
                f"{glue}:catalog",
                f"{glue}:database/<IcebergDatabase>",
                f"{glue}:table/<IcebergDatabase>/*",
            )
        },
        *{(f"dynamodb:{a}Item", "<IdempotencyTable.Arn>", NULL) for a in ITEM_ACTIONS},
        ("sqs:SendMessage", "<IcebergFailureQueue.Arn>", NULL),
    }  # fmt: skip
    assert grants(res["IcebergRole"]) == expected
    added = grants(res["IcebergRole"], has_kms=True) - expected
    assert {(a, r) for a, r, _ in added} == {
        ("kms:Decrypt", "<KmsKeyArn>"),
        ("kms:GenerateDataKey", "<KmsKeyArn>"),
        ("kms:Encrypt", "<KmsKeyArn>"),
    }
    assert all("kms:ViaService" in condition for _, _, condition in added)
    assert not any(a.startswith(("glue:Delete", "s3:DeleteBucket")) for a, _, _ in expected)


def test_only_the_iceberg_role_writes_the_tables_and_the_bucket_is_closed_and_encrypted(expanded):
    res = expanded["Resources"]
    statements = render(
        resolve(
            res["IcebergBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"],
            {"HasBreakGlassRole": False},
        )
    )
    assert statements[0]["Sid"] == "DenyInsecureTransport"
    assert statements[1] == {
        "Sid": "OnlyTheIcebergFunctionWritesTables",
        "Effect": "Deny",
        "Principal": "*",
        "Action": ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"],
        "Resource": ["<IcebergBucket.Arn>/warehouse/*", "<IcebergBucket.Arn>/state/*"],
        "Condition": {"ArnNotEquals": {"aws:PrincipalArn": ["<IcebergRole.Arn>"]}},
    }
    bucket = res["IcebergBucket"]["Properties"]
    for has_kms, expected in (
        (False, {"SSEAlgorithm": "AES256"}),
        (True, {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"Ref": "KmsKeyArn"}}),
    ):
        sse = resolve(bucket["BucketEncryption"], {"HasKmsKey": has_kms})
        assert sse["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == (
            expected
        )
    workgroup = res["AthenaWorkGroup"]["Properties"]["WorkGroupConfiguration"]
    assert workgroup["EnforceWorkGroupConfiguration"] is True
    results = workgroup["ResultConfiguration"]
    assert render(results["OutputLocation"]) == "s3://STACK-iceberg-ACCOUNT-REGION/athena-results/"
    assert resolve(results["EncryptionConfiguration"], {"HasKmsKey": False}) == {
        "EncryptionOption": "SSE_S3"
    }
    assert resolve(results["EncryptionConfiguration"], {"HasKmsKey": True}) == {
        "EncryptionOption": "SSE_KMS",
        "KmsKey": {"Ref": "KmsKeyArn"},
    }
    for name in ("IcebergLogGroup", "IcebergFailureQueue"):
        props = resolve(res[name]["Properties"], {"HasKmsKey": True})
        assert {"KmsKeyId", "KmsMasterKeyId"} & set(props), name


def test_no_lifecycle_rule_expires_or_archives_the_tables_data_or_metadata(expanded):
    """Iceberg's data and metadata files under ``warehouse/`` are deleted by maintenance only,
    once no kept snapshot references them: a rule expiring or archiving a current object
    there would break the tables. Only Athena's query results expire, and the noncurrent
    versions of what maintenance deleted."""
    rules = expanded["Resources"]["IcebergBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    removes_current = ("ExpirationInDays", "ExpirationDate", "Transitions", "Transition")
    for rule in rules:
        prefix = rule.get("Prefix", (rule.get("Filter") or {}).get("Prefix", ""))
        if any(k in rule for k in removes_current):
            assert prefix == "athena-results/", rule["Id"]
    assert {r["Id"] for r in rules} == {"ExpireNoncurrentVersions", "ExpireAthenaResults"}
    noncurrent = next(r for r in rules if r["Id"] == "ExpireNoncurrentVersions")
    assert set(noncurrent) == {
        "Id", "Status", "NoncurrentVersionExpiration", "AbortIncompleteMultipartUpload"
    }  # fmt: skip
    workgroup = expanded["Resources"]["AthenaWorkGroup"]["Properties"]
    output = render(workgroup["WorkGroupConfiguration"]["ResultConfiguration"]["OutputLocation"])
    assert output.endswith("/athena-results/")


def test_ingest_reads_the_targets_committed_marker_only_with_the_target(expanded):
    """The Iceberg target's heartbeat: with it on, ingest may read its committed marker (one
    object) and, with KmsKeyArn, decrypt objects of the Iceberg bucket through S3; nothing
    else of the bucket, and nothing at all without the target."""
    role = expanded["Resources"]["IngestRole"]
    marker = f"{ICEBERG}/state/iceberg-committed.json"
    assert grants(role, iceberg=True) - grants(role) == {("s3:GetObject", marker, NULL)}
    added = grants(role, has_kms=True, iceberg=True) - grants(role, has_kms=True)
    assert {(a, r) for a, r, _ in added} == {
        ("s3:GetObject", marker),
        ("kms:Decrypt", "<KmsKeyArn>"),
    }
    (kms,) = [c for a, _, c in added if a == "kms:Decrypt"]
    assert json.loads(kms) == {
        "StringEquals": {
            "kms:ViaService": "s3.REGION.amazonaws.com",
            "kms:EncryptionContext:aws:s3:arn": ICEBERG,
        }
    }
    assert not [g for g in grants(role, has_kms=True) if "iceberg" in g[1] or "iceberg" in g[2]]


def test_the_iceberg_alarms_read_the_catalogues_metrics_with_their_exact_dimensions(expanded):
    """The alarms read what the code emits (tests/e2e/test_operations.py checks every alarm
    and widget against a local run's real EMF with the target on). The freshness alarm is the
    pipeline's FreshnessAlarm over the target's own heartbeat: every ingest run reports it, so
    a quiet source reads about 0 and a window with no report at all breaches."""
    res = iceberg_resources(expanded)
    fresh = res["IcebergFreshnessAlarm"]["Properties"]
    threshold = {"Ref": "FreshnessThresholdSeconds"}
    assert {k: v for k, v in fresh.items() if k != "AlarmDescription"} == {
        "Namespace": "TerrificTotes",
        "MetricName": "IcebergFreshnessSeconds",
        "Dimensions": [{"Name": "service", "Value": "ingest"}],
        "Statistic": "Maximum",
        "Period": threshold,
        "EvaluationPeriods": 1,
        "DatapointsToAlarm": 1,
        "Threshold": threshold,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "breaching",
        "AlarmActions": [{"Ref": "AlarmTopic"}],
        "OKActions": [{"Ref": "AlarmTopic"}],
    }
    spec = CATALOGUE["IcebergFreshnessSeconds"]
    assert (spec.dimensions, spec.stages) == (("service",), ("ingest", "iceberg"))
    age = res["IcebergFailureQueueAgeAlarm"]["Properties"]
    assert (age["MetricName"], age["Dimensions"], age["Threshold"]) == (
        "ApproximateAgeOfOldestMessage",
        [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["IcebergFailureQueue", "QueueName"]}}],
        {"Ref": "FailureMessageAgeSeconds"},
    )
    body = res["IcebergDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    alarms = [n for n, r in res.items() if r["Type"] == "AWS::CloudWatch::Alarm"]
    for name in alarms:
        assert f"${{{name}.Arn}}" in body
        assert res[name]["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_the_built_function_and_its_layers_fit_lambdas_unzipped_limit(sam_build):
    """The function ships pyiceberg, its dependencies (stripped) and the Powertools core; it
    does without the Powertools layer so that, with the pandas layer, it stays under 250 MB."""
    function = sam_build / "IcebergFunction"
    shipped = {p.name for p in function.iterdir()}

    assert {"app.py", "pyiceberg", "pydantic", "aws_lambda_powertools"} <= shipped
    assert not shipped & {"pyarrow", "numpy", "pandas", "boto3", "botocore", "hive_metastore"}
    total = _size(function) + _size(sam_build / "TotesLayer") + PANDAS_LAYER_BYTES
    assert _size(function) < 40 * 1024 * 1024, _size(function)
    assert total < LAMBDA_UNZIPPED_LIMIT - 10 * 1024 * 1024  # 10 MB to spare


@pytest.mark.parametrize("name", ["requirements.in", "requirements.lock"])
def test_the_functions_packages_are_pinned_with_hashes(name):
    text = (REPO_ROOT / "functions" / "iceberg" / name).read_text()
    if name == "requirements.in":
        assert "pyiceberg==0.12.0" in text
        assert "aws-lambda-powertools==3.37.0" in text
        return
    entries = re.split(r"\n(?=[A-Za-z])", text)
    entries = [e for e in entries if e.strip() and not e.startswith("#")]
    assert {e.split("==")[0] for e in entries} >= {"pyiceberg", "aws-lambda-powertools"}
    for entry in entries:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), entry.splitlines()[0]
    assert not {e.split("==")[0] for e in entries} & {"pyarrow", "numpy", "boto3", "botocore"}
