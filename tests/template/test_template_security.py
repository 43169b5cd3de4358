"""The template's security boundaries (issue 14): who may write where in the lake (bucket
policies), what the optional KMS key encrypts and which grants the roles get for it, optional
S3 access logging, and the IaC scanner (checkov) finding nothing it was not told about."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from sam_template import REPO_ROOT, TEMPLATE, as_list, grants, render, resolve, resources_of

RAW = "arn:aws:s3:::STACK-raw-ACCOUNT-REGION"
PROCESSED = "arn:aws:s3:::STACK-processed-ACCOUNT-REGION"
KEY = "<KmsKeyArn>"
ADMIN = "arn:aws:iam::ACCOUNT:role/Admin"
BREAK_GLASS = "<BreakGlassRoleArn>"
PRINCIPALS = ("<IngestRole.Arn>", "<TransformRole.Arn>", "<LoadRole.Arn>", ADMIN, BREAK_GLASS)
WRITES = ("s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion")

CHECKOV = REPO_ROOT / ".venv-checkov" / "bin" / "checkov"
REQUIRE_CHECKOV_ENV = "TOTES_REQUIRE_CHECKOV"


# ------------------------------------------------------------------ who may write where


def bucket_policy(expanded: dict, bucket: str, break_glass: bool) -> list[dict]:
    (policy,) = [
        p["Properties"]["PolicyDocument"]["Statement"]
        for p in resources_of(expanded, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": bucket}
    ]
    return render(resolve(policy, {"HasBreakGlassRole": break_glass}))


def _matches(patterns, value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in as_list(patterns))


def denied(statements: list[dict], principal: str, action: str, resource: str) -> bool:
    """Whether an explicit Deny of the bucket policy applies (over TLS). Understands what the
    lake policies use: Action, Resource/NotResource, and ArnNotEquals on aws:PrincipalArn."""
    for stmt in statements:
        if stmt["Effect"] != "Deny" or not _matches(stmt["Action"], action):
            continue
        if "Resource" in stmt and not _matches(stmt["Resource"], resource):
            continue
        if "NotResource" in stmt and _matches(stmt["NotResource"], resource):
            continue
        condition = dict(stmt.get("Condition", {}))
        if condition.pop("Bool", None) == {"aws:SecureTransport": "false"}:
            continue  # only plain HTTP; these requests use TLS
        exempt = condition.pop("ArnNotEquals", {}).get("aws:PrincipalArn", [])
        assert condition == {}, f"unmodelled condition {condition}"
        if principal not in as_list(exempt):
            return True
    return False


def writers(expanded: dict, bucket: str, key: str, break_glass: bool) -> set[str]:
    statements = bucket_policy(expanded, bucket, break_glass)
    arn = f"<{bucket}.Arn>/{key}"
    allowed = {
        principal: {not denied(statements, principal, a, arn) for a in WRITES}
        for principal in PRINCIPALS
    }
    assert all(len(v) == 1 for v in allowed.values()), "put and delete must agree"
    return {principal for principal, (ok,) in allowed.items() if ok}


LAKE_KEYS = {
    ("RawBucket", "raw/address/20261129T101500Z-0001/part-0000.parquet"): {"<IngestRole.Arn>"},
    ("RawBucket", "manifests/20261129T101500Z-0001.json"): {"<IngestRole.Arn>"},
    ("RawBucket", "state/latest.json"): {"<IngestRole.Arn>"},
    ("RawBucket", "state/keys/address/20261129T101500Z-0001.parquet"): {"<IngestRole.Arn>"},
    ("RawBucket", "quarantine/20261129T101500Z-0001/reason.json"): {"<TransformRole.Arn>"},
    ("RawBucket", "quarantine/rows/20261129T101500Z-0001.jsonl"): {"<TransformRole.Arn>"},
    ("RawBucket", "statefoo/x.json"): set(),
    ("RawBucket", "elsewhere/manifests/x.json"): set(),
    ("RawBucket", "x.json"): set(),
    ("ProcessedBucket", "processed/fact_sales_order/20261129T101500Z-0001/part-0000.parquet"): {
        "<TransformRole.Arn>"
    },
    ("ProcessedBucket", "manifests/20261129T101500Z-0001.json"): {"<TransformRole.Arn>"},
    ("ProcessedBucket", "raw/address/x.parquet"): set(),
    # the loaded marker (issue 15's freshness heartbeat): one object, load's alone
    ("ProcessedBucket", "state/loaded.json"): {"<LoadRole.Arn>"},
    ("ProcessedBucket", "state/other.json"): set(),
}
# Keys granted as themselves, not by their prefix.
SINGLE_OBJECTS = {("ProcessedBucket", "state/loaded.json")}


@pytest.mark.parametrize("break_glass", [False, True], ids=["no-break-glass", "break-glass"])
def test_each_lake_prefix_is_written_only_by_the_role_that_owns_it(expanded, break_glass):
    """A principal of the account with s3:PutObject (an admin, another workload) cannot forge
    a manifest or a batch: the bucket policy denies every writer but the owning pipeline role,
    plus the break-glass role when one is named."""
    found = {place: writers(expanded, *place, break_glass) for place in LAKE_KEYS}

    expected = {
        place: owners | ({BREAK_GLASS} if break_glass else set())
        for place, owners in LAKE_KEYS.items()
    }
    assert found == expected


def test_reads_and_listing_stay_governed_by_the_roles_policies(expanded):
    for bucket in ("RawBucket", "ProcessedBucket"):
        statements = bucket_policy(expanded, bucket, break_glass=False)
        for principal in PRINCIPALS:
            assert not denied(statements, principal, "s3:GetObject", f"<{bucket}.Arn>/manifests/x")
            assert not denied(statements, principal, "s3:ListBucket", f"<{bucket}.Arn>")


def test_the_write_rules_match_what_each_role_is_granted(expanded):
    """The bucket policies and the roles agree: every prefix a role may write by IAM is one the
    bucket policy lets it write, and vice versa."""
    res = expanded["Resources"]
    by_iam = {
        (f"<{role}.Arn>", resource)
        for role in ("IngestRole", "TransformRole", "LoadRole")
        for action, resource, _ in grants(res[role])
        if action == "s3:PutObject"
    }
    arn_of = {"RawBucket": RAW, "ProcessedBucket": PROCESSED}
    by_policy = set()
    for (bucket, key), owners in LAKE_KEYS.items():
        prefix = key.split("/")[0]
        if "/" in key and owners:
            granted = key if (bucket, key) in SINGLE_OBJECTS else f"{prefix}/*"
            by_policy |= {(owner, f"{arn_of[bucket]}/{granted}") for owner in owners}
    assert by_iam == by_policy


def test_the_break_glass_role_is_optional_and_must_be_a_role_arn(template):
    param = template["Parameters"]["BreakGlassRoleArn"]
    pattern = re.compile(param["AllowedPattern"])
    assert param["Default"] == ""
    assert [
        bool(pattern.match(v))
        for v in (
            "",
            "arn:aws:iam::123456789012:role/lake-break-glass",
            "arn:aws:iam::123456789012:role/ops/LakeRepair",
            "arn:aws:iam::123456789012:user/alice",
            "*",
            "arn:aws:iam::123456789012:role/*",
        )
    ] == [True, True, True, False, False, False]


# ------------------------------------------------------------------ keys and encryption


def _props(expanded: dict, name: str, has_kms: bool) -> dict:
    conditions = {"HasKmsKey": has_kms, "HasAccessLogs": False, "IcebergEnabled": False}
    return resolve(expanded["Resources"][name]["Properties"], conditions)


def test_without_a_kms_key_everything_is_still_encrypted(expanded):
    """Empty KmsKeyArn: AWS-managed encryption everywhere, and the alarm topic under a key of
    the stack's own (CloudWatch alarms cannot publish to a topic under alias/aws/sns)."""
    for bucket in ("RawBucket", "ProcessedBucket"):
        assert _props(expanded, bucket, False)["BucketEncryption"] == {
            "ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
            ]
        }
    assert _props(expanded, "IdempotencyTable", False)["SSESpecification"] == {"SSEEnabled": True}
    queue = _props(expanded, "FailureQueue", False)
    assert (queue.get("SqsManagedSseEnabled"), "KmsMasterKeyId" in queue) == (True, False)
    assert _props(expanded, "AlarmTopic", False)["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}
    for stage in ("Ingest", "Transform", "Load"):
        assert "KmsKeyId" not in _props(expanded, f"{stage}LogGroup", False)


def test_the_alarm_topics_own_key_rotates_and_lets_only_this_accounts_alarms_publish(expanded):
    key = expanded["Resources"]["AlarmTopicKey"]
    assert key["Condition"] == "NoKmsKey"
    assert expanded["Conditions"]["NoKmsKey"] == {"Fn::Equals": [{"Ref": "KmsKeyArn"}, ""]}
    props = key["Properties"]
    assert props["EnableKeyRotation"] is True
    statements = render(props["KeyPolicy"]["Statement"])
    assert statements == [
        {
            "Sid": "AccountAdministersTheKeyThroughIam",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::ACCOUNT:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "CloudWatchAlarmsOfThisAccountPublish",
            "Effect": "Allow",
            "Principal": {"Service": "cloudwatch.amazonaws.com"},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": "ACCOUNT"},
                "ArnLike": {"aws:SourceArn": "arn:aws:cloudwatch:REGION:ACCOUNT:alarm:*"},
            },
        },
    ]


def test_with_a_kms_key_buckets_queue_table_topic_and_log_groups_use_it(template, expanded):
    ref = {"Ref": "KmsKeyArn"}
    for bucket in ("RawBucket", "ProcessedBucket"):
        assert _props(expanded, bucket, True)["BucketEncryption"] == {
            "ServerSideEncryptionConfiguration": [
                {
                    "ServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": ref,
                    },
                    "BucketKeyEnabled": True,
                }
            ]
        }
    assert _props(expanded, "IdempotencyTable", True)["SSESpecification"] == {
        "SSEEnabled": True,
        "SSEType": "KMS",
        "KMSMasterKeyId": ref,
    }
    queue = _props(expanded, "FailureQueue", True)
    assert (queue["KmsMasterKeyId"], "SqsManagedSseEnabled" in queue) == (ref, False)
    assert _props(expanded, "AlarmTopic", True)["KmsMasterKeyId"] == ref
    for stage in ("Ingest", "Transform", "Load"):
        assert _props(expanded, f"{stage}LogGroup", True)["KmsKeyId"] == ref
    param = template["Parameters"]["KmsKeyArn"]
    pattern = re.compile(param["AllowedPattern"])
    assert param["Default"] == ""
    assert [
        bool(pattern.match(v))
        for v in (
            "",
            "arn:aws:kms:eu-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:eu-west-2:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            "arn:aws:kms:eu-west-2:123456789012:alias/totes",
            "alias/aws/s3",
        )
    ] == [True, True, True, False, False]


def _via(service: str, context_key: str, value: str) -> str:
    return json.dumps(
        {
            "StringEquals": {
                "kms:ViaService": f"{service}.REGION.amazonaws.com",
                f"kms:EncryptionContext:{context_key}": value,
            }
        },
        sort_keys=True,
    )


def test_with_a_kms_key_each_role_may_use_it_only_through_its_services_for_its_own_things(
    expanded,
):
    res = expanded["Resources"]
    added = {
        role: grants(res[role], has_kms=True) - grants(res[role], has_kms=False)
        for role in ("IngestRole", "TransformRole", "LoadRole", "MigrateRole")
    }
    write_read = ("kms:GenerateDataKey", "kms:Decrypt")
    queue = {(a, KEY, _via("sqs", "aws:sqs:arn", "<FailureQueue.Arn>")) for a in write_read}
    table = {
        (a, KEY, _via("dynamodb", "aws:dynamodb:tableName", "<IdempotencyTable>"))
        for a in ("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey")
    }
    assert added == {
        "IngestRole": queue
        | {(a, KEY, _via("s3", "aws:s3:arn", RAW)) for a in write_read}
        # the loaded marker, read only (issue 15: the freshness heartbeat)
        | {("kms:Decrypt", KEY, _via("s3", "aws:s3:arn", PROCESSED))}
        | {("kms:Decrypt", KEY, _via("secretsmanager", "SecretARN", "<SourceSecretArn>"))},
        "TransformRole": queue
        | table
        | {(a, KEY, _via("s3", "aws:s3:arn", RAW)) for a in write_read}
        | {(a, KEY, _via("s3", "aws:s3:arn", PROCESSED)) for a in write_read},
        "LoadRole": queue
        | table
        # reads batches, writes the loaded marker (issue 15)
        | {(a, KEY, _via("s3", "aws:s3:arn", PROCESSED)) for a in write_read}
        | {("kms:Decrypt", KEY, _via("secretsmanager", "SecretARN", "<WarehouseSecretArn>"))},
        # the deploy's migration step: only to read the owner's secret
        "MigrateRole": {
            ("kms:Decrypt", KEY, _via("secretsmanager", "SecretARN", "<WarehouseOwnerSecretArn>"))
        },
    }
    # without a key the roles name no KMS action at all
    for role in added:
        assert not any(a.startswith("kms:") for a, _, _ in grants(res[role], has_kms=False))


# ------------------------------------------------------------------ access logging


def test_s3_access_logging_is_optional_into_a_bucket_only_s3_logging_may_write(template, expanded):
    res = expanded["Resources"]
    assert template["Parameters"]["AccessLogging"]["Default"] == "DISABLED"
    assert expanded["Conditions"]["HasAccessLogs"] == {
        "Fn::Equals": [{"Ref": "AccessLogging"}, "ENABLED"]
    }
    assert (res["AccessLogBucket"]["Condition"], res["AccessLogBucketPolicy"]["Condition"]) == (
        "HasAccessLogs",
        "HasAccessLogs",
    )
    for bucket, prefix in (("RawBucket", "raw-bucket/"), ("ProcessedBucket", "processed-bucket/")):
        props = res[bucket]["Properties"]
        off = {"HasKmsKey": False, "IcebergEnabled": False}
        assert resolve(props, {"HasAccessLogs": True, **off})["LoggingConfiguration"] == {
            "DestinationBucketName": {"Ref": "AccessLogBucket"},
            "LogFilePrefix": prefix,
        }
        assert "LoggingConfiguration" not in resolve(props, {"HasAccessLogs": False, **off})
    log_bucket = res["AccessLogBucket"]["Properties"]
    assert log_bucket["BucketEncryption"] == {
        "ServerSideEncryptionConfiguration": [
            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
        ]
    }
    (delivery,) = [
        s
        for s in render(res["AccessLogBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"])
        if s["Effect"] == "Allow"
    ]
    assert delivery == {
        "Sid": "S3ServerAccessLogsOfTheLakeBuckets",
        "Effect": "Allow",
        "Principal": {"Service": "logging.s3.amazonaws.com"},
        "Action": "s3:PutObject",
        "Resource": "<AccessLogBucket.Arn>/*",
        "Condition": {
            "StringEquals": {"aws:SourceAccount": "ACCOUNT"},
            "ArnLike": {"aws:SourceArn": [RAW, PROCESSED]},
        },
    }


# ------------------------------------------------------------------ checkov

# Every check the template tells checkov to skip, by resource: each must say why in its
# comment. A new skip is a decision; it belongs here too.
EXPECTED_SKIPS = {
    "IngestFunction": {"CKV_AWS_116", "CKV_AWS_173"},
    "TransformFunction": {"CKV_AWS_116", "CKV_AWS_117", "CKV_AWS_173"},
    "LoadFunction": {"CKV_AWS_116", "CKV_AWS_173"},
    "MigrateFunction": {"CKV_AWS_116", "CKV_AWS_173"},
    "RawBucket": {"CKV_AWS_18"},
    "ProcessedBucket": {"CKV_AWS_18"},
    "AccessLogBucket": {"CKV_AWS_18"},
    "IdempotencyTable": {"CKV_AWS_28", "CKV_AWS_119"},
    # The optional Iceberg target (IcebergTarget=ENABLED, test_template_iceberg.py).
    "IcebergFunction": {"CKV_AWS_116", "CKV_AWS_117", "CKV_AWS_173"},
    "IcebergBucket": {"CKV_AWS_18"},
}
# Resources checkov sees only in the variant with the optional features on.
OPTIONAL = {"AccessLogBucket", "IcebergFunction", "IcebergBucket"}


def test_every_checkov_skip_is_a_named_check_with_its_reason(template):
    skips = {
        name: {s["id"]: s["comment"] for s in r["Metadata"]["checkov"]["skip"]}
        for name, r in template["Resources"].items()
        if "checkov" in r.get("Metadata", {})
    }
    assert {name: set(s) for name, s in skips.items()} == EXPECTED_SKIPS
    for name, by_id in skips.items():
        for check, comment in by_id.items():
            assert re.fullmatch(r"CKV_AWS_\d+", check), (name, check)
            assert len(comment.split()) >= 8, (name, check, comment)


def _variant(tmp_path: Path) -> Path:
    """The template with the optional features on by default (a key, access logging, the
    Iceberg target), so checkov, which evaluates conditions with the parameters' defaults, sees
    those resources."""
    text = TEMPLATE.read_text()
    key = "arn:aws:kms:eu-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    for old, new in (
        (
            '  KmsKeyArn:\n    Type: String\n    Default: ""',
            f'  KmsKeyArn:\n    Type: String\n    Default: "{key}"',
        ),
        (
            "  AccessLogging:\n    Type: String\n    Default: DISABLED",
            "  AccessLogging:\n    Type: String\n    Default: ENABLED",
        ),
        (
            "  IcebergTarget:\n    Type: String\n    Default: DISABLED",
            "  IcebergTarget:\n    Type: String\n    Default: ENABLED",
        ),
    ):
        assert text.count(old) == 1
        text = text.replace(old, new)
    path = tmp_path / "template.yaml"
    path.write_text(text)
    return path


def _checkov(path: Path) -> dict:
    if not CHECKOV.exists():
        if os.environ.get(REQUIRE_CHECKOV_ENV) == "1":
            pytest.fail(f"{CHECKOV} is missing but {REQUIRE_CHECKOV_ENV}=1 (make checkov-venv)")
        pytest.skip(f"checkov not installed at {CHECKOV}; `make checkov-venv` creates it")
    result = subprocess.run(
        [
            str(CHECKOV),
            "--file",
            str(path),
            "--framework",
            "cloudformation",
            "--skip-download",
            "--compact",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"},
        timeout=300,
    )
    report = json.loads(result.stdout)
    return report


@pytest.mark.parametrize("variant", ["defaults", "key-access-logs-and-iceberg"])
def test_checkov_finds_no_failed_check(tmp_path, variant):
    path = TEMPLATE if variant == "defaults" else _variant(tmp_path)

    report = _checkov(path)

    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    skipped = {}
    for c in report["results"]["skipped_checks"]:
        skipped.setdefault(c["resource"].split(".")[-1], set()).add(c["check_id"])
    expected = {
        name: ids
        for name, ids in EXPECTED_SKIPS.items()
        if variant != "defaults" or name not in OPTIONAL
    }
    assert skipped == expected
    assert report["summary"]["passed"] >= 50
