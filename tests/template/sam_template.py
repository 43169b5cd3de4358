"""The SAM template, offline: parsed as written, and expanded by aws-sam-translator into the
plain CloudFormation that AWS would deploy (no AWS calls), plus a small renderer that turns
intrinsic functions into comparable strings so tests can compare whole policies."""

from __future__ import annotations

import copy
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


def resources_of(template: dict, type_: str) -> dict[str, dict]:
    return {n: r for n, r in template["Resources"].items() if r["Type"] == type_}


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


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
