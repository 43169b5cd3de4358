"""The template passes the tools that would reject it at deploy time, builds offline, and the
deploy configuration (samconfig, workflow, deploy script) is complete and keeps secrets out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from cfnlint.api import lint
from sam_template import REPO_ROOT, TEMPLATE, expand, load_template, need_sam
from samtranslator.yaml_helper import yaml_parse

SAM_ENV = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
LINT_REGIONS = ["eu-west-2", "us-east-1"]


def test_sam_validate_lint_is_clean():
    sam = need_sam()
    result = subprocess.run(
        [str(sam), "validate", "--lint", "--template-file", str(TEMPLATE)],
        capture_output=True,
        text=True,
        env=SAM_ENV,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert (result.returncode, (result.stdout + result.stderr).strip().splitlines()[-1:]) == (
        0,
        [f"{TEMPLATE} is a valid SAM Template"],
    ), result.stdout + result.stderr


def _lint(cfn: dict) -> list[tuple[str, str]]:
    matches = lint(json.dumps(cfn), regions=LINT_REGIONS)
    return [(m.rule.id, m.message) for m in matches]


def test_the_expanded_template_passes_cfn_lint_with_no_errors_or_warnings(expanded):
    assert _lint(expanded) == []


def test_cfn_lint_on_the_expanded_template_would_catch_a_bucket_function_cycle():
    """The guard works: naming the raw bucket by !Ref in transform's environment closes the
    bucket -> notification -> function -> bucket loop, which only the expanded lint sees."""
    text = TEMPLATE.read_text()
    by_name = "RAW_BUCKET: !Sub ${AWS::StackName}-raw-${AWS::AccountId}-${AWS::Region}"
    assert by_name in text
    cyclic = yaml_parse(text.replace(by_name, "RAW_BUCKET: !Ref RawBucket"))
    rules = {rule for rule, _ in _lint(expand(cyclic))}
    assert "E3004" in rules


def test_sam_build_succeeds_offline_with_the_handlers_and_the_totes_layer(sam_build):
    """The same `sam build` as `make build`, into a scratch directory: no pip, Docker or
    python3.13 needed, and the artifacts hold each handler and the whole totes package."""
    build_dir = sam_build

    def files(root: Path) -> set[str]:
        return {
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        }

    for stage in ("ingest", "transform", "load"):
        built = build_dir / f"{stage.capitalize()}Function"
        assert files(built) == files(REPO_ROOT / "functions" / stage)
        assert (built / "app.py").read_text() == (
            REPO_ROOT / "functions" / stage / "app.py"
        ).read_text()
    layer = build_dir / "TotesLayer" / "python" / "totes"
    assert files(layer) == files(REPO_ROOT / "shared" / "totes")
    built_template = load_template(build_dir / "template.yaml")
    code = {
        name: r["Properties"].get("CodeUri") or r["Properties"].get("ContentUri")
        for name, r in built_template["Resources"].items()
        if r["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::LayerVersion")
    }
    assert code == {
        "IngestFunction": "IngestFunction",
        "TransformFunction": "TransformFunction",
        "LoadFunction": "LoadFunction",
        "TotesLayer": "TotesLayer",
    }


def test_no_function_or_layer_directory_has_a_requirements_file():
    """A requirements.txt would make sam build run pip, which needs a local python3.13."""
    dirs = [REPO_ROOT / "shared", *(REPO_ROOT / "functions").iterdir()]
    assert [str(d) for d in dirs if (d / "requirements.txt").exists()] == []


# ------------------------------------------------------------------ samconfig


def _samconfig() -> dict:
    with open(REPO_ROOT / "samconfig.toml", "rb") as f:
        return tomllib.load(f)


def _overrides(text: str) -> dict[str, str]:
    pairs = re.findall(r'(\w+)="([^"]*)"', text)
    assert " ".join(f'{k}="{v}"' for k, v in pairs) == text.strip()
    return dict(pairs)


def test_samconfig_environments_are_each_complete_and_differ_only_in_values():
    config = _samconfig()
    envs = {name: value for name, value in config.items() if name != "version"}
    assert sorted(envs) == ["default", "dev", "prod"]
    shape = {
        name: {cmd: sorted(section["parameters"]) for cmd, section in env.items()}
        for name, env in envs.items()
    }
    assert shape["dev"] == shape["prod"] == shape["default"]
    assert shape["dev"]["deploy"] == sorted(
        [
            "template_file",
            "region",
            "capabilities",
            "resolve_s3",
            "s3_prefix",
            "confirm_changeset",
            "fail_on_empty_changeset",
            "tags",
            "parameter_overrides",
        ]
    )
    stacks = {n: e["global"]["parameters"]["stack_name"] for n, e in envs.items()}
    assert len(set(stacks.values())) == 3
    assert {n: e["deploy"]["parameters"]["confirm_changeset"] for n, e in envs.items()} == {
        "default": True,
        "dev": False,
        "prod": False,
    }


def test_samconfig_overrides_name_template_parameters_and_carry_no_secrets_or_network_ids():
    parameters = load_template()["Parameters"]
    text = (REPO_ROOT / "samconfig.toml").read_text()
    assert not re.search(r"arn:aws|secretsmanager|subnet-|sg-|@", text.split("version = 0.1")[1])
    for name, env in _samconfig().items():
        if name == "version":
            continue
        overrides = _overrides(env["deploy"]["parameters"]["parameter_overrides"])
        assert set(overrides) <= set(parameters), name
        assert set(overrides).isdisjoint(
            {"SourceSecretArn", "WarehouseSecretArn", "AlarmEmail", "SubnetIds", "SecurityGroupIds"}
        )
        rate = re.compile(parameters["IngestScheduleRate"]["AllowedPattern"])
        assert rate.match(overrides["IngestScheduleRate"])


def test_deploy_script_passes_samconfig_overrides_plus_the_environment_secrets(tmp_path):
    """Run sam/deploy.sh with a stand-in `sam` that prints its arguments."""
    fake = tmp_path / "sam"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "SAM": str(fake),
        "SOURCE_SECRET_ARN": "arn:aws:secretsmanager:eu-west-2:123456789012:secret:src-AbCdEf",
        "WAREHOUSE_SECRET_ARN": "arn:aws:secretsmanager:eu-west-2:123456789012:secret:wh-AbCdEf",
        "SUBNET_IDS": "subnet-1,subnet-2",
    }
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "sam" / "deploy.sh"), "prod"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "deploy",
        "--config-env",
        "prod",
        "--no-confirm-changeset",
        "--no-fail-on-empty-changeset",
        "--parameter-overrides",
        _samconfig()["prod"]["deploy"]["parameters"]["parameter_overrides"],
        f'SourceSecretArn="{env["SOURCE_SECRET_ARN"]}"',
        f'WarehouseSecretArn="{env["WAREHOUSE_SECRET_ARN"]}"',
        'AlarmEmail=""',
        'SubnetIds="subnet-1,subnet-2"',
        'SecurityGroupIds=""',
    ]


def test_deploy_script_refuses_to_run_without_the_secret_arns(tmp_path):
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "sam" / "deploy.sh"), "dev"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "SAM": "/bin/false"},
        timeout=30,
    )
    assert result.returncode != 0
    assert "SOURCE_SECRET_ARN is required" in result.stderr


# ------------------------------------------------------------------ workflow

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"


def test_the_workflow_validates_against_the_github_workflow_schema():
    checker = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_workflow_checks_every_push_and_deploys_main_to_dev_then_approved_prod():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    on = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as True
    assert "push" in on
    jobs = workflow["jobs"]
    assert workflow["permissions"] == {"contents": "read"}
    for check in ("lint", "security", "test"):
        assert ("if" in jobs[check], "environment" in jobs[check]) == (False, False)
    assert [s["run"] for s in jobs["security"]["steps"] if "run" in s] == ["make security"]
    assert jobs["build"]["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert jobs["build"]["needs"] == ["lint", "security", "test"]
    deploys = {
        name: (job["needs"], job["environment"], job["permissions"])
        for name, job in jobs.items()
        if name.startswith("deploy")
    }
    oidc = {"id-token": "write", "contents": "read"}
    assert deploys == {
        "deploy-dev": ("build", "dev", oidc),
        "deploy-prod": ("deploy-dev", "prod", oidc),
    }
    for name in deploys:
        uses = [s.get("uses", "") for s in jobs[name]["steps"]]
        assert any(u.startswith("aws-actions/configure-aws-credentials@") for u in uses)
        creds = next(
            s for s in jobs[name]["steps"] if "configure-aws-credentials" in s.get("uses", "")
        )
        assert set(creds["with"]) == {"role-to-assume", "role-session-name", "aws-region"}
    assert "aws-access-key-id" not in WORKFLOW.read_text()
