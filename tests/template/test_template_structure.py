"""What the expanded template deploys: triggers, schedule, functions, least-privilege roles,
bucket hygiene, alarms and dashboard. All offline (aws-sam-translator, no AWS calls)."""

from __future__ import annotations

import json
import re

import pytest
from sam_template import REPO_ROOT, as_list, grants, policies, render, resolve, resources_of

from totes.extract.keysets import KEYSET_PREFIX
from totes.lake import LOADED_KEY, MANIFEST_PREFIX, MANIFEST_SUFFIX, RAW_PREFIX, STATE_KEY
from totes.observability import CATALOGUE
from totes.settings import IngestSettings, LoadSettings, MigrateSettings, TransformSettings

RAW = "arn:aws:s3:::STACK-raw-ACCOUNT-REGION"
NO_VALUE = {"Ref": "AWS::NoValue"}
PROCESSED = "arn:aws:s3:::STACK-processed-ACCOUNT-REGION"
STAGES = ("Ingest", "Transform", "Load")
# The optional Iceberg target's resources (IcebergTarget=ENABLED) have their own tests
# (test_template_iceberg.py); the tests here enumerate the pipeline without them.
ICEBERG = "IcebergEnabled"


def pipeline(resources: dict[str, dict]) -> dict[str, dict]:
    return {n: r for n, r in resources.items() if r.get("Condition") != ICEBERG}


MANIFEST_FILTER = {
    "S3Key": {
        "Rules": [
            {"Name": "prefix", "Value": MANIFEST_PREFIX},
            {"Name": "suffix", "Value": MANIFEST_SUFFIX},
        ]
    }
}

# Lambda creates, describes and deletes a VPC function's network interfaces with the
# function's role; EC2 supports no resource-level restriction for these actions.
ENI_ACTIONS = (
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
)
VPC_ROLES = ("IngestRole", "LoadRole", "MigrateRole")

# (role, action) pairs allowed a "*" resource, with the reason. Metrics are EMF log lines (no
# cloudwatch:PutMetricData) and there is no X-Ray tracing; only the VPC ENI actions remain.
WILDCARD_RESOURCE_ALLOWED: dict[tuple[str, str], str] = {
    (role, action): "Lambda manages the function's VPC network interfaces; EC2 has no "
    "resource-level permission for these actions"
    for role in VPC_ROLES
    for action in ENI_ACTIONS
}


def test_raw_bucket_notifies_transform_and_processed_bucket_notifies_load_on_manifests_only(
    expanded,
):
    res = expanded["Resources"]
    for bucket, function in (
        ("RawBucket", "TransformFunction"),
        ("ProcessedBucket", "LoadFunction"),
    ):
        notification = res[bucket]["Properties"]["NotificationConfiguration"]
        assert resolve(notification, {ICEBERG: False}) == {
            "LambdaConfigurations": [
                {
                    "Event": "s3:ObjectCreated:*",
                    "Filter": MANIFEST_FILTER,
                    "Function": {"Fn::GetAtt": [function, "Arn"]},
                }
            ]
        }
    permissions = {
        render(p["Properties"]["FunctionName"]): p["Properties"]
        for p in pipeline(resources_of(expanded, "AWS::Lambda::Permission")).values()
    }
    assert {fn: (p["Principal"], p["Action"]) for fn, p in permissions.items()} == {
        "<TransformFunction>": ("s3.amazonaws.com", "lambda:InvokeFunction"),
        "<LoadFunction>": ("s3.amazonaws.com", "lambda:InvokeFunction"),
    }


def test_s3_may_invoke_transform_and_load_only_for_the_stacks_own_buckets(expanded):
    """SAM's S3 event source pins only the account; the explicit permissions pin the bucket
    too, named (not referenced) so no bucket -> permission -> bucket cycle forms."""
    res = expanded["Resources"]
    permissions = {
        render(p["Properties"]["FunctionName"]): (name, p["Properties"])
        for name, p in pipeline(resources_of(expanded, "AWS::Lambda::Permission")).items()
    }
    pinned = {
        fn: (render(p.get("SourceArn")), render(p.get("SourceAccount")))
        for fn, (_, p) in permissions.items()
    }
    assert pinned == {
        "<TransformFunction>": (RAW, "ACCOUNT"),
        "<LoadFunction>": (PROCESSED, "ACCOUNT"),
    }
    assert render(res["RawBucket"]["Properties"]["BucketName"]) == RAW.split(":::")[1]
    assert render(res["ProcessedBucket"]["Properties"]["BucketName"]) == PROCESSED.split(":::")[1]
    # S3 checks the permission when it stores the notification: the bucket waits for it
    assert as_list(res["RawBucket"]["DependsOn"]) == [permissions["<TransformFunction>"][0]]
    assert as_list(res["ProcessedBucket"]["DependsOn"]) == [permissions["<LoadFunction>"][0]]


def test_ingest_runs_on_the_schedule_at_the_rate_parameter_one_at_a_time(template, expanded):
    schedules = pipeline(resources_of(expanded, "AWS::Scheduler::Schedule"))
    assert len(schedules) == 1
    (schedule,) = schedules.values()
    props = schedule["Properties"]
    assert props["ScheduleExpression"] == {"Fn::Sub": "rate(${IngestScheduleRate})"}
    assert props["Target"]["Arn"] == {"Fn::GetAtt": ["IngestFunction", "Arn"]}
    assert props["State"] == {"Ref": "IngestScheduleState"}
    rate = template["Parameters"]["IngestScheduleRate"]
    assert rate["Default"] == "5 minutes"
    pattern = re.compile(rate["AllowedPattern"])
    accepted = ["5 minutes", "1 minute", "2 hours", "1 day", "15 minutes"]
    rejected = ["1 minutes", "0 minutes", "5 mins", "5", "rate(5 minutes)"]
    assert [bool(pattern.match(v)) for v in accepted + rejected] == [True] * 5 + [False] * 5
    assert (
        expanded["Resources"]["IngestFunction"]["Properties"]["ReservedConcurrentExecutions"] == 1
    )


def test_transform_and_load_reserve_the_warehouse_connection_budget(template, expanded):
    """Load holds one warehouse connection per concurrent invocation (up to 880 s while it waits
    on the load lock), so its reserved concurrency is the budget; transform, which feeds it,
    gets the same so a burst of raw manifests cannot outrun load. Ingest stays at one run."""
    budget = template["Parameters"]["WarehouseConnectionBudget"]
    assert (budget["Type"], budget["Default"], budget["MinValue"]) == ("Number", 3, 1)
    reserved = {
        stage: expanded["Resources"][f"{stage}Function"]["Properties"].get(
            "ReservedConcurrentExecutions"
        )
        for stage in STAGES
    }
    assert reserved == {
        "Ingest": 1,
        "Transform": {"Ref": "WarehouseConnectionBudget"},
        "Load": {"Ref": "WarehouseConnectionBudget"},
    }


def test_the_schedule_sends_the_event_shape_of_the_sam_ingest_event(expanded):
    (schedule,) = pipeline(resources_of(expanded, "AWS::Scheduler::Schedule")).values()
    sent = json.loads(schedule["Properties"]["Target"]["Input"])
    example = json.loads((REPO_ROOT / "sam" / "events" / "ingest_schedule.json").read_text())
    assert sorted(sent) == sorted(example)
    assert sent["source"] == example["source"] == "aws.scheduler"


def test_functions_run_python313_on_arm64_with_the_three_layers_and_their_own_log_group(
    template, expanded
):
    """As deployed (parameter defaults): arm64 and the TotesLayer; ingest also has the
    AdbcLayer, last (tests/template/test_template_adbc.py). Local runs pass another
    Architecture and local layer ARNs (tools/totes_tools/local/sam_local.py)."""
    res = expanded["Resources"]
    (layer_name,) = [
        n for n in resources_of(expanded, "AWS::Lambda::LayerVersion") if n.startswith("Totes")
    ]
    params = template["Parameters"]
    assert params["Architecture"]["Default"] == "arm64"
    assert params["TotesLayerArn"]["Default"] == ""
    assert expanded["Conditions"]["HasTotesLayerArn"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "TotesLayerArn"}, ""]}]
    }
    sizes = {}
    for stage in STAGES:
        props = res[f"{stage}Function"]["Properties"]
        assert (props["Runtime"], props["Architectures"], props["Handler"]) == (
            "python3.13",
            [{"Ref": "Architecture"}],
            "app.handler",
        )
        layers = props["Layers"][:-1] if stage == "Ingest" else props["Layers"]
        assert layers == [
            {"Ref": "PandasLayerArn"},
            {"Ref": "PowertoolsLayerArn"},
            {"Fn::If": ["HasTotesLayerArn", {"Ref": "TotesLayerArn"}, {"Ref": layer_name}]},
        ]
        assert props["Role"] == {"Fn::GetAtt": [f"{stage}Role", "Arn"]}
        assert props["LoggingConfig"] == {"LogGroup": {"Ref": f"{stage}LogGroup"}}
        log_group = res[f"{stage}LogGroup"]["Properties"]
        assert render(log_group["LogGroupName"]) == "/aws/lambda/" + render(props["FunctionName"])
        assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        sizes[stage] = (props["MemorySize"], props["Timeout"])
    assert sizes == {"Ingest": (1769, 900), "Transform": (1769, 300), "Load": (1024, 900)}
    for name in resources_of(expanded, "AWS::Lambda::LayerVersion"):
        layer = res[name]["Properties"]
        assert (layer["CompatibleRuntimes"], layer["CompatibleArchitectures"]) == (
            ["python3.13"],
            ["arm64"],
        ), name


def test_layer_defaults_are_the_pinned_managed_layers(template):
    params = template["Parameters"]
    assert {
        p: (params[p]["Type"], params[p]["Default"])
        for p in ("PandasLayerArn", "PowertoolsLayerArn")
    } == {
        "PandasLayerArn": (
            "AWS::SSM::Parameter::Value<String>",
            "/aws/service/aws-sdk-pandas/3.16.1/py3.13/arm64/layer-arn",
        ),
        "PowertoolsLayerArn": (
            "AWS::SSM::Parameter::Value<String>",
            "/aws/service/powertools/python/arm64/python3.13/3.37.0",
        ),
    }


LOCAL_ENDPOINT = {"Fn::If": ["HasLocalEndpointUrl", {"Ref": "LocalEndpointUrl"}, NO_VALUE]}


def deployed_variables(variables: dict, iceberg: bool = False) -> dict:
    """A function's variables as deployed with the default LocalEndpointUrl (empty): the
    emulator endpoint every function declares for local runs is AWS::NoValue, i.e. absent;
    ``iceberg``: with IcebergTarget=ENABLED (ingest then also reads the target's marker)."""
    assert variables.get("AWS_ENDPOINT_URL") == LOCAL_ENDPOINT
    rest = {k: v for k, v in variables.items() if k != "AWS_ENDPOINT_URL"}
    return resolve(rest, {ICEBERG: iceberg})


@pytest.mark.parametrize("iceberg", [False, True], ids=["pipeline", "with-iceberg-target"])
def test_each_function_gets_exactly_the_environment_its_settings_read(expanded, iceberg):
    res = expanded["Resources"]
    env = {
        stage: render(
            deployed_variables(
                res[f"{stage}Function"]["Properties"]["Environment"]["Variables"], iceberg
            )
        )
        for stage in STAGES
    }
    raw_name = render(res["RawBucket"]["Properties"]["BucketName"])
    processed_name = render(res["ProcessedBucket"]["Properties"]["BucketName"])
    iceberg_name = render(res["IcebergBucket"]["Properties"]["BucketName"])
    common = {"POWERTOOLS_METRICS_NAMESPACE": "TerrificTotes"}
    assert env == {
        "Ingest": {
            **common,
            "POWERTOOLS_SERVICE_NAME": "ingest",
            "RAW_BUCKET": raw_name,
            "SOURCE_SECRET_ID": "<SourceSecretArn>",
            "INGEST_MAX_BATCH_ROWS": "<IngestMaxBatchRows>",
            "PROCESSED_BUCKET": processed_name,
            "RAW_RETENTION_DAYS": "<RawRetentionDays>",
            **({"ICEBERG_BUCKET": iceberg_name} if iceberg else {}),
        },
        "Transform": {
            **common,
            "POWERTOOLS_SERVICE_NAME": "transform",
            "RAW_BUCKET": raw_name,
            "PROCESSED_BUCKET": processed_name,
            "IDEMPOTENCY_TABLE": "<IdempotencyTable>",
        },
        "Load": {
            **common,
            "POWERTOOLS_SERVICE_NAME": "load",
            "PROCESSED_BUCKET": processed_name,
            "IDEMPOTENCY_TABLE": "<IdempotencyTable>",
            "WAREHOUSE_SECRET_ID": "<WarehouseSecretArn>",
            "WAREHOUSE_SCHEMA": "<WarehouseSchema>",
        },
    }
    migrate = res["MigrateFunction"]["Properties"]["Environment"]["Variables"]
    assert render(deployed_variables(migrate)) == {
        "POWERTOOLS_SERVICE_NAME": "migrate",
        # the OWNER's secret, never the loader's
        "WAREHOUSE_OWNER_SECRET_ID": "<WarehouseOwnerSecretArn>",
        "WAREHOUSE_SCHEMA": "<WarehouseSchema>",
        "WAREHOUSE_LOADER_ROLE": "<WarehouseLoaderRole>",
    }


def test_the_template_environment_satisfies_each_stage_settings_at_cold_start(template, expanded):
    """Parameters take their defaults (secret ARNs a sample), so a cold start would not fail."""
    values = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    values["SourceSecretArn"] = "arn:aws:secretsmanager:eu-west-2:123456789012:secret:src-AbCdEf"
    values["WarehouseSecretArn"] = "arn:aws:secretsmanager:eu-west-2:123456789012:secret:wh-AbCdEf"
    values["IdempotencyTable"] = "STACK-IdempotencyTable-XYZ"

    def env_of(stage):
        variables = render(
            deployed_variables(
                expanded["Resources"][f"{stage}Function"]["Properties"]["Environment"]["Variables"]
            )
        )
        return {k: re.sub(r"<(\w+)>", lambda m: values[m[1]], v) for k, v in variables.items()}

    assert IngestSettings.from_env(env_of("Ingest")) == IngestSettings(
        raw_bucket="STACK-raw-ACCOUNT-REGION",
        source_secret_id=values["SourceSecretArn"],
        max_batch_rows=500_000,
        processed_bucket="STACK-processed-ACCOUNT-REGION",
        raw_retention_days=30,
    )
    assert TransformSettings.from_env(env_of("Transform")) == TransformSettings(
        raw_bucket="STACK-raw-ACCOUNT-REGION",
        processed_bucket="STACK-processed-ACCOUNT-REGION",
        idempotency_table="STACK-IdempotencyTable-XYZ",
    )
    assert LoadSettings.from_env(env_of("Load")) == LoadSettings(
        processed_bucket="STACK-processed-ACCOUNT-REGION",
        idempotency_table="STACK-IdempotencyTable-XYZ",
        warehouse_secret_id=values["WarehouseSecretArn"],
        warehouse_schema="public",
    )
    values["WarehouseOwnerSecretArn"] = (
        "arn:aws:secretsmanager:eu-west-2:123456789012:secret:owner-AbCdEf"
    )
    assert MigrateSettings.from_env(env_of("Migrate")) == MigrateSettings(
        owner_secret_id=values["WarehouseOwnerSecretArn"],
        warehouse_schema="public",
        loader_role="totes_loader",
    )


def test_failed_async_events_are_retried_twice_then_sent_to_the_failure_queue(expanded):
    configs = {
        render(c["Properties"]["FunctionName"]): c["Properties"]
        for c in pipeline(resources_of(expanded, "AWS::Lambda::EventInvokeConfig")).values()
    }
    expected = {
        "DestinationConfig": {
            "OnFailure": {"Destination": {"Fn::GetAtt": ["FailureQueue", "Arn"]}}
        },
        "MaximumEventAgeInSeconds": 3600,
        "MaximumRetryAttempts": 2,
        "Qualifier": "$LATEST",
    }
    assert configs == {
        f"<{stage}Function>": {**expected, "FunctionName": {"Ref": f"{stage}Function"}}
        for stage in STAGES
    }


def test_the_local_chain_retries_like_the_template(expanded):
    chain = pytest.importorskip("totes_tools.local.chain")
    retries = {
        c["Properties"]["MaximumRetryAttempts"]
        for c in resources_of(expanded, "AWS::Lambda::EventInvokeConfig").values()
    }
    assert {r + 1 for r in retries} == {chain.MAX_ATTEMPTS}


def test_each_role_reaches_only_its_own_buckets_prefixes_secret_table_and_log_group(expanded):
    res = expanded["Resources"]
    no_condition = "null"
    logs = lambda stage: {  # noqa: E731
        ("logs:CreateLogStream", f"<{stage}LogGroup.Arn>", no_condition),
        ("logs:PutLogEvents", f"<{stage}LogGroup.Arn>", no_condition),
    }
    failure = {("sqs:SendMessage", "<FailureQueue.Arn>", no_condition)}
    idempotency = {
        (a, "<IdempotencyTable.Arn>", no_condition)
        for a in (
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
        )
    }
    assert grants(res["IngestRole"]) == logs("Ingest") | failure | {
        ("s3:ListBucket", RAW, no_condition),
        ("s3:GetObject", f"{RAW}/manifests/*", no_condition),
        ("s3:GetObject", f"{RAW}/state/*", no_condition),
        ("s3:PutObject", f"{RAW}/raw/*", no_condition),
        ("s3:PutObject", f"{RAW}/manifests/*", no_condition),
        ("s3:PutObject", f"{RAW}/state/*", no_condition),
        # the freshness heartbeat reads one object of the processed bucket
        ("s3:GetObject", f"{PROCESSED}/{LOADED_KEY}", no_condition),
        ("secretsmanager:GetSecretValue", "<SourceSecretArn>", no_condition),
    }
    assert grants(res["TransformRole"]) == logs("Transform") | failure | idempotency | {
        ("s3:ListBucket", RAW, no_condition),
        ("s3:GetObject", f"{RAW}/raw/*", no_condition),
        ("s3:GetObject", f"{RAW}/manifests/*", no_condition),
        ("s3:PutObject", f"{RAW}/quarantine/*", no_condition),
        ("s3:PutObject", f"{PROCESSED}/processed/*", no_condition),
        ("s3:PutObject", f"{PROCESSED}/manifests/*", no_condition),
    }
    assert grants(res["LoadRole"]) == logs("Load") | failure | idempotency | {
        ("s3:ListBucket", PROCESSED, no_condition),
        ("s3:GetObject", f"{PROCESSED}/processed/*", no_condition),
        ("s3:GetObject", f"{PROCESSED}/manifests/*", no_condition),
        ("s3:PutObject", f"{PROCESSED}/{LOADED_KEY}", no_condition),
        ("secretsmanager:GetSecretValue", "<WarehouseSecretArn>", no_condition),
    }
    # The deploy's migration step: its logs and the OWNER's secret, nothing else.
    assert grants(res["MigrateRole"]) == logs("Migrate") | {
        ("secretsmanager:GetSecretValue", "<WarehouseOwnerSecretArn>", no_condition),
    }
    assert grants(res["IngestFunctionScheduleRole"]) == {
        ("lambda:InvokeFunction", "<IngestFunction.Arn>", no_condition)
    }


def test_no_role_allows_wildcard_actions_or_resources(expanded):
    found = []
    for name, role in resources_of(expanded, "AWS::IAM::Role").items():
        every = set().union(*(grants(role, vpc, kms) for vpc in (0, 1) for kms in (0, 1)))
        for action, resource, _ in every:
            if action == "*" or action.endswith(":*"):
                found.append((name, action, resource))
            if resource == "*" and (name, action) not in WILDCARD_RESOURCE_ALLOWED:
                found.append((name, action, resource))
    assert found == []
    assert not resources_of(expanded, "AWS::IAM::Policy")
    assert not resources_of(expanded, "AWS::IAM::ManagedPolicy")


def test_in_a_vpc_roles_gain_only_the_eni_actions_and_no_managed_policy(expanded):
    """AWSLambdaVPCAccessExecutionRole would also allow logs on every log group, undoing the
    own-log-group-only grants; the roles carry a conditional ENI statement instead."""
    roles = resources_of(expanded, "AWS::IAM::Role")
    managed = {name: role["Properties"].get("ManagedPolicyArns") for name, role in roles.items()}
    assert managed == dict.fromkeys(roles)
    eni = {(action, "*", "null") for action in ENI_ACTIONS}
    assert {
        name: grants(role, has_vpc=True) - grants(role, has_vpc=False)
        for name, role in roles.items()
    } == {name: eni if name in VPC_ROLES else set() for name in roles}
    for name in VPC_ROLES:
        conditional = [
            stmt
            for policy in policies(roles[name], has_kms=True)
            for stmt in as_list(policy["PolicyDocument"]["Statement"])
            if "Fn::If" in stmt and stmt["Fn::If"][0] == "HasVpc"
        ]
        assert conditional == [
            {
                "Fn::If": [
                    "HasVpc",
                    {
                        "Sid": "VpcNetworkInterfaces",
                        "Effect": "Allow",
                        "Action": list(ENI_ACTIONS),
                        "Resource": "*",
                    },
                    {"Ref": "AWS::NoValue"},
                ]
            }
        ]
    assert all(
        not action.startswith("logs:") or resource != "*"
        for role in roles.values()
        for action, resource, _ in grants(role, has_vpc=True)
    )


def test_functions_join_the_vpc_only_when_subnets_are_given(expanded):
    vpc_config = {
        stage: expanded["Resources"][f"{stage}Function"]["Properties"].get("VpcConfig")
        for stage in STAGES
    }
    in_vpc = {
        "Fn::If": [
            "HasVpc",
            {"SubnetIds": {"Ref": "SubnetIds"}, "SecurityGroupIds": {"Ref": "SecurityGroupIds"}},
            {"Ref": "AWS::NoValue"},
        ]
    }
    assert vpc_config == {"Ingest": in_vpc, "Transform": None, "Load": in_vpc}


def test_a_deploy_with_subnets_but_no_security_groups_is_refused_before_any_resource(expanded):
    """Lambda would reject the VpcConfig mid-deploy; the template Rule fails the stack first.
    An empty CommaDelimitedList parameter is the list [""]."""
    assert expanded["Rules"]["VpcNeedsSecurityGroups"] == {
        "RuleCondition": {"Fn::Not": [{"Fn::EachMemberEquals": [{"Ref": "SubnetIds"}, ""]}]},
        "Assertions": [
            {
                "Assert": {
                    "Fn::Not": [{"Fn::EachMemberEquals": [{"Ref": "SecurityGroupIds"}, ""]}]
                },
                "AssertDescription": "SecurityGroupIds must name at least one security group "
                "when SubnetIds is set.",
            }
        ],
    }
    assert expanded["Conditions"]["HasVpc"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "SubnetIds"}]}, ""]}]
    }


def test_a_stack_that_requires_a_vpc_refuses_to_deploy_without_subnets(template, expanded):
    """RequireVpc=true (samconfig's prod) makes a missing SubnetIds fail before any resource
    changes, so production never reaches its databases over the internet by omission."""
    assert sorted(expanded["Rules"]) == ["VpcNeedsSecurityGroups", "VpcRequired"]
    assert expanded["Rules"]["VpcRequired"] == {
        "RuleCondition": {"Fn::Equals": [{"Ref": "RequireVpc"}, "true"]},
        "Assertions": [
            {
                "Assert": {"Fn::Not": [{"Fn::EachMemberEquals": [{"Ref": "SubnetIds"}, ""]}]},
                "AssertDescription": "RequireVpc is true, so SubnetIds (and SecurityGroupIds) "
                "must name the private subnets ingest and load run in.",
            }
        ],
    }
    require = template["Parameters"]["RequireVpc"]
    assert (require["Default"], require["AllowedValues"]) == ("false", ["false", "true"])


def test_every_bucket_blocks_public_access_encrypts_versions_and_denies_plain_http(expanded):
    policies = {
        p["Properties"]["Bucket"]["Ref"]: p["Properties"]["PolicyDocument"]["Statement"]
        for p in resources_of(expanded, "AWS::S3::BucketPolicy").values()
    }
    buckets = resources_of(expanded, "AWS::S3::Bucket")
    assert sorted(buckets) == ["AccessLogBucket", "IcebergBucket", "ProcessedBucket", "RawBucket"]
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == dict.fromkeys(
            ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"),
            True,
        )
        assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        assert render(policies[name][0]) == {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [f"<{name}.Arn>", f"<{name}.Arn>/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }


def test_lifecycle_expires_old_raw_batches_but_never_the_state_and_keeps_the_processed_lake(
    expanded,
):
    rules = {
        name: expanded["Resources"][name]["Properties"]["LifecycleConfiguration"]["Rules"]
        for name in ("RawBucket", "ProcessedBucket")
    }
    noncurrent = {
        "Id": "ExpireNoncurrentVersions",
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {
            "NoncurrentDays": {"Ref": "NoncurrentVersionRetentionDays"}
        },
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }

    def expire(rule_id, prefix, days):
        return {"Id": rule_id, "Status": "Enabled", "Prefix": prefix, "ExpirationInDays": days}

    retention = {"Ref": "RawRetentionDays"}
    assert rules == {
        "RawBucket": [
            expire("ExpireQuarantine", "quarantine/", {"Ref": "QuarantineRetentionDays"}),
            expire("ExpireRawManifests", MANIFEST_PREFIX, retention),
            expire("ExpireRawBatches", f"{RAW_PREFIX}/", retention),
            expire("ExpireSupersededKeySets", f"{KEYSET_PREFIX}/", retention),
            noncurrent,
        ],
        # `warehouse rebuild` replays the processed lake: nothing current expires there.
        "ProcessedBucket": [noncurrent],
    }
    expiring = [r["Prefix"] for r in rules["RawBucket"] if "Prefix" in r]
    assert not [p for p in expiring if STATE_KEY.startswith(p) or LOADED_KEY.startswith(p)]


# What a lifecycle rule may not do to objects a warehouse rebuild reads (current versions).
_REMOVES_CURRENT = ("ExpirationInDays", "ExpirationDate", "Transitions", "Transition")


def test_no_lifecycle_rule_expires_what_a_rebuild_reads(expanded):
    """``warehouse rebuild`` loads every batch of the processed lake: no rule may expire or
    archive current objects under ``processed/`` or ``manifests/`` there (docs/deploy.md)."""
    rules = expanded["Resources"]["ProcessedBucket"]["Properties"]["LifecycleConfiguration"]
    offending = []
    for rule in rules["Rules"]:
        prefix = rule.get("Prefix", (rule.get("Filter") or {}).get("Prefix", ""))
        covers = any(
            p.startswith(prefix) or prefix.startswith(p) for p in ("processed/", MANIFEST_PREFIX)
        )
        if covers and any(k in rule for k in _REMOVES_CURRENT):
            offending.append(rule["Id"])

    assert [r["Id"] for r in rules["Rules"]] == ["ExpireNoncurrentVersions"]
    assert offending == []


def test_the_idempotency_table_is_keyed_on_id_with_ttl_on_demand(expanded):
    (table,) = resources_of(expanded, "AWS::DynamoDB::Table").values()
    props = resolve(table["Properties"], {"HasKmsKey": False})
    assert props == {
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
        "TimeToLiveSpecification": {"AttributeName": "expiration", "Enabled": True},
        "SSESpecification": {"SSEEnabled": True},
    }


def _watched(alarm: dict) -> tuple:
    props = alarm["Properties"]
    if "Metrics" in props:
        return ("insights", props["Metrics"][0]["Expression"])
    dims = tuple(render(d["Value"]) for d in props["Dimensions"])
    return (props["Namespace"], props["MetricName"], *dims)


def test_every_alarm_notifies_the_topic_and_the_set_covers_the_pipeline(expanded):
    alarms = resources_of(expanded, "AWS::CloudWatch::Alarm")
    actions = {n: a["Properties"]["AlarmActions"] for n, a in alarms.items()}
    assert actions == {n: [{"Ref": "AlarmTopic"}] for n in alarms}
    alarms = pipeline(alarms)
    assert {_watched(a) for a in alarms.values()} == {
        *(("AWS/Lambda", m, f"<{s}Function>") for s in STAGES for m in ("Errors", "Throttles")),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "<FailureQueue.QueueName>"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage", "<FailureQueue.QueueName>"),
        ("TerrificTotes", "QuarantinedBatches", "transform"),
        ("insights", 'SELECT SUM(QuarantinedRows) FROM SCHEMA(TerrificTotes, "service", "table")'),
        ("TerrificTotes", "WarehouseFreshnessSeconds", "ingest"),
        ("TerrificTotes", "IngestCaptureLagSeconds", "ingest"),
        ("TerrificTotes", "IngestStatesSetAside", "ingest"),
    }


def test_ingest_passing_over_a_capture_state_alarms_at_once(expanded):
    """A forged or damaged capture state (a manifest dated ahead of the source, issue 14 M4)
    is passed over and counted by ingest; one is enough to alarm. The dimensions are exactly
    what ingest emits (tests/integration/test_ingest_handler.py checks the EMF)."""
    props = expanded["Resources"]["CaptureStateSetAsideAlarm"]["Properties"]
    assert {k: props[k] for k in props if k != "AlarmDescription"} == {
        "Namespace": "TerrificTotes",
        "MetricName": "IngestStatesSetAside",
        "Dimensions": [{"Name": "service", "Value": "ingest"}],
        "Statistic": "Sum",
        "Period": 300,
        "EvaluationPeriods": 1,
        "Threshold": 0,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
        "AlarmActions": [{"Ref": "AlarmTopic"}],
        "OKActions": [{"Ref": "AlarmTopic"}],
    }


def test_the_freshness_alarm_reads_the_ingest_heartbeat_over_one_threshold_long_window(
    template, expanded
):
    """Every ingest run reports freshness, so a window of FreshnessThresholdSeconds with no
    report at all means ingest stopped (breaching), and any report above the threshold means
    captures stopped reaching the warehouse. Period and threshold are the one parameter."""
    props = expanded["Resources"]["FreshnessAlarm"]["Properties"]
    threshold = {"Ref": "FreshnessThresholdSeconds"}
    assert {k: props[k] for k in (
        "Namespace", "MetricName", "Dimensions", "Statistic", "Period", "EvaluationPeriods",
        "DatapointsToAlarm", "Threshold", "ComparisonOperator", "TreatMissingData",
    )} == {
        "Namespace": "TerrificTotes",
        "MetricName": "WarehouseFreshnessSeconds",
        "Dimensions": [{"Name": "service", "Value": "ingest"}],
        "Statistic": "Maximum",
        "Period": threshold,
        "EvaluationPeriods": 1,
        "DatapointsToAlarm": 1,
        "Threshold": threshold,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "breaching",
    }  # fmt: skip
    param = template["Parameters"]["FreshnessThresholdSeconds"]
    assert param["Default"] == 1800
    # each value is a valid alarm period, at least the default schedule rate, at most a day
    assert all(v % 60 == 0 and 300 <= v <= 86400 for v in param["AllowedValues"])
    for name in ("QuarantineAlarm", "RowQuarantineAlarm"):  # any batch or row at all
        quarantine = expanded["Resources"][name]["Properties"]
        assert (quarantine["Threshold"], quarantine["ComparisonOperator"]) == (
            0,
            "GreaterThanThreshold",
        )


def test_the_email_subscription_exists_only_when_an_address_is_given(template, expanded):
    (name, sub) = next(iter(resources_of(expanded, "AWS::SNS::Subscription").items()))
    assert (name, sub["Condition"], sub["Properties"]) == (
        "AlarmEmailSubscription",
        "HasAlarmEmail",
        {"TopicArn": {"Ref": "AlarmTopic"}, "Protocol": "email", "Endpoint": {"Ref": "AlarmEmail"}},
    )
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""


def _dashboard(expanded, name: str = "Dashboard") -> dict:
    body = expanded["Resources"][name]["Properties"]["DashboardBody"]["Fn::Sub"]
    samples = {"FreshnessThresholdSeconds": "1800", "CaptureStallSeconds": "1050",
               "FailureMessageAgeSeconds": "3600"}  # fmt: skip
    return json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: samples.get(m[1], "x"), body))


# The Iceberg target's metrics (emitted only by its function) are on its own dashboard, which
# exists with IcebergTarget=ENABLED; every other catalogue metric is on the pipeline's.
ICEBERG_METRICS = {n for n in CATALOGUE if n.startswith("Iceberg")}


@pytest.mark.parametrize(
    ("dashboard_name", "metrics", "condition"),
    [
        ("Dashboard", set(CATALOGUE) - ICEBERG_METRICS, None),
        ("IcebergDashboard", ICEBERG_METRICS, ICEBERG),
    ],
)
def test_the_dashboards_show_every_catalogue_metric_and_list_every_alarm(
    expanded, dashboard_name, metrics, condition
):
    """The metrics named on the dashboards are exactly the catalogue's (tests/e2e checks the
    dimensions against a real run's EMF); each alarm widget lists every alarm that exists
    with its dashboard (the pipeline's, or the Iceberg target's)."""
    assert ICEBERG_METRICS
    dashboard = _dashboard(expanded, dashboard_name)
    assert expanded["Resources"][dashboard_name].get("Condition") == condition
    text = json.dumps(dashboard)
    shown = set(re.findall(r'MetricName=\\"(\w+)\\"', text)) | {
        m[1]
        for w in dashboard["widgets"]
        for m in w["properties"].get("metrics", [])
        if isinstance(m[0], str) and m[0] == "TerrificTotes"
    }
    assert shown == metrics
    (alarm_widget,) = [w for w in dashboard["widgets"] if w["type"] == "alarm"]
    alarms = {
        n: r
        for n, r in resources_of(expanded, "AWS::CloudWatch::Alarm").items()
        if r.get("Condition") == condition
    }
    assert sorted(alarm_widget["properties"]["alarms"]) == sorted("x" for _ in alarms)
    body = expanded["Resources"][dashboard_name]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert sorted(re.findall(r"\$\{(\w+)\.Arn\}", body)) == sorted(alarms)


def test_the_owner_migrates_in_the_deploy_before_load_or_its_event_source_goes_live(expanded):
    """The load never migrates (its role has no DDL rights): the WarehouseMigration custom
    resource (MigrateFunction, the owner's secret) runs first on every deploy that changes
    the code layer, and both the load function and S3's permission to invoke it wait for it
    (so the processed bucket's notification, which needs that permission, does too)."""
    res = expanded["Resources"]
    migration = res["WarehouseMigration"]
    assert migration["Type"] == "Custom::WarehouseMigration"
    # SAM names the layer version by a hash of its content: a changed shared/ is a new ARN.
    [layer] = [name for name in res if name.startswith("TotesLayer") and name != "TotesLayer"]
    code = {"Fn::If": ["HasTotesLayerArn", {"Ref": "TotesLayerArn"}, {"Ref": layer}]}
    assert code in res["LoadFunction"]["Properties"]["Layers"]
    assert migration["Properties"] == {
        "ServiceToken": {"Fn::GetAtt": ["MigrateFunction", "Arn"]},
        "ServiceTimeout": 960,
        "Code": code,
        "Schema": {"Ref": "WarehouseSchema"},
        "LoaderRole": {"Ref": "WarehouseLoaderRole"},
    }
    assert "WarehouseMigration" in as_list(res["LoadFunction"]["DependsOn"])
    assert "WarehouseMigration" in as_list(
        res["LoadFunctionProcessedManifestPermission"]["DependsOn"]
    )
    assert "LoadFunctionProcessedManifestPermission" in as_list(res["ProcessedBucket"]["DependsOn"])
    migrate = res["MigrateFunction"]["Properties"]
    assert migrate["Timeout"] < migration["Properties"]["ServiceTimeout"]
    assert migrate["ReservedConcurrentExecutions"] == 1
    assert migrate["VpcConfig"] == res["LoadFunction"]["Properties"]["VpcConfig"]
