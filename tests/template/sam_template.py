"""The SAM template, offline: parsed as written, and expanded by aws-sam-translator into the
plain CloudFormation that AWS would deploy (no AWS calls), plus a small renderer that turns
intrinsic functions into comparable strings so tests can compare whole policies."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import boto3
import pytest
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "template.yaml"
SAM_BIN = REPO_ROOT / ".venv-sam" / "bin" / "sam"
REQUIRE_SAM_ENV = "TOTES_REQUIRE_SAM"

# Lambda's limit for a function and all its layers, unzipped (262,144,000 bytes).
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
# The AWS SDK for pandas 3.16.1 layer for python3.13, unzipped, as measured by its users
# (aws/aws-sdk-pandas issue #3331: 204 MiB, about 214 MB, up from 167; it names no
# architecture). An estimate: the real layer is not downloadable without AWS credentials.
PANDAS_LAYER_BYTES = 204 * 1024 * 1024
# The Powertools v3 (3.37.0) layer for python3.13 on arm64, unzipped, estimated from its wheels:
# `pip install --target` of aws-lambda-powertools[all]==3.37.0 for manylinux aarch64 cp313,
# without what the runtime provides (boto3, botocore, s3transfer, urllib3, python-dateutil,
# six, jmespath), measured 28,905,038 bytes (2026-11-30). Not the real layer (needs AWS).
POWERTOOLS_LAYER_BYTES = 29_000_000

PSEUDO = {
    "AWS::StackName": "STACK",
    "AWS::AccountId": "ACCOUNT",
    "AWS::Region": "REGION",
    "AWS::Partition": "aws",
}


def load_template(path: Path = TEMPLATE) -> dict:
    return yaml_parse(path.read_text())


def expand(template: dict) -> dict:
    """The template as CloudFormation, the way ``sam deploy`` has it transformed.

    Local CodeUri/ContentUri are replaced by S3 URIs first, as ``sam package`` would; the
    managed-policy map is empty (our roles name no managed policies by name) and the region
    is fixed, so nothing here reaches AWS.
    """
    template = copy.deepcopy(template)
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):
                props[key] = f"s3://packaged-artifacts/{name}.zip"
    translator = Translator({}, Parser(), boto_session=boto3.Session(region_name="eu-west-2"))
    return translator.translate(template, parameter_values={}, get_managed_policy_map=dict)


def render(value):
    """Intrinsics as strings: ``!Ref X`` -> ``<X>``, ``!GetAtt X.A`` -> ``<X.A>``, ``!Sub`` with
    pseudo parameters as STACK/ACCOUNT/REGION/aws; lists and plain values pass through."""
    if isinstance(value, list):
        return [render(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "Ref" in value:
        return PSEUDO.get(value["Ref"], f"<{value['Ref']}>")
    if "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        return f"<{'.'.join(target) if isinstance(target, list) else target}>"
    if "Fn::Sub" in value:
        text = value["Fn::Sub"]
        assert isinstance(text, str), "render() handles the one-argument form of !Sub"
        return re.sub(r"\$\{([^}!]+)\}", lambda m: PSEUDO.get(m[1], f"<{m[1]}>"), text)
    return {k: render(v) for k, v in value.items()}


NO_VALUE = {"Ref": "AWS::NoValue"}


def resolve(value, conditions: dict[str, bool]):
    """``value`` as deployed when the named template conditions hold the given values:
    ``Fn::If`` takes its branch, ``AWS::NoValue`` drops the key or list item it stands for.
    A condition the dict does not name is an error, so a test says what it assumes."""
    if isinstance(value, list):
        items = [resolve(v, conditions) for v in value]
        return [v for v in items if v is not NO_VALUE]
    if not isinstance(value, dict):
        return value
    if value == NO_VALUE:
        return NO_VALUE
    if "Fn::If" in value:
        condition, when_true, when_false = value["Fn::If"]
        return resolve(when_true if conditions[condition] else when_false, conditions)
    out = {k: resolve(v, conditions) for k, v in value.items()}
    return {k: v for k, v in out.items() if v is not NO_VALUE}


def resources_of(template: dict, type_: str) -> dict[str, dict]:
    return {n: r for n, r in template["Resources"].items() if r["Type"] == type_}


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def policies(role: dict, has_kms: bool) -> list[dict]:
    """A role's inline policies as deployed with or without KmsKeyArn: a whole policy may be
    ``!If [HasKmsKey, policy, NoValue]`` (the role's use of the key)."""
    out = []
    for policy in role["Properties"].get("Policies", []):
        if "Fn::If" in policy:
            condition, when_true, when_false = policy["Fn::If"]
            assert condition == "HasKmsKey"
            policy = when_true if has_kms else when_false
            if policy == NO_VALUE:
                continue
        out.append(policy)
    return out


def statements(policy: dict, has_vpc: bool, iceberg: bool = False) -> list[dict]:
    """A policy's statements as deployed with or without SubnetIds and the Iceberg target:
    ``!If [HasVpc, s, NoValue]`` and ``!If [IcebergEnabled, s, NoValue]`` resolved (the only
    conditions a statement may carry)."""
    out = []
    holds = {"HasVpc": has_vpc, "IcebergEnabled": iceberg}
    for stmt in as_list(policy["PolicyDocument"]["Statement"]):
        if "Fn::If" in stmt:
            condition, when_true, when_false = stmt["Fn::If"]
            assert condition in holds, condition
            stmt = when_true if holds[condition] else when_false
            if stmt == NO_VALUE:
                continue
        out.append(stmt)
    return out


def grants(
    role: dict, has_vpc: bool = False, has_kms: bool = False, iceberg: bool = False
) -> set[tuple]:
    """Every (action, resource, condition) an IAM role's inline policies allow, rendered
    (``iceberg``: with IcebergTarget=ENABLED)."""
    out = set()
    for policy in policies(role, has_kms):
        for stmt in statements(policy, has_vpc, iceberg):
            assert stmt["Effect"] == "Allow"
            condition = json.dumps(render(stmt.get("Condition")), sort_keys=True)
            for action in as_list(stmt["Action"]):
                for resource in as_list(render(stmt["Resource"])):
                    out.add((action, resource, condition))
    return out


def sam_required() -> bool:
    return os.environ.get(REQUIRE_SAM_ENV) == "1"


def need_sam() -> Path:
    """The SAM CLI from .venv-sam (``make build`` creates it); skipped when absent, unless CI
    requires it."""
    if SAM_BIN.exists():
        return SAM_BIN
    if sam_required():
        pytest.fail(f"{SAM_BIN} is missing but {REQUIRE_SAM_ENV}=1 (run `make build` first)")
    pytest.skip(f"SAM CLI not installed at {SAM_BIN}; `make build` creates it")
