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

import pytest
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
    """The same `sam build` as `make build`, into a scratch directory: no Docker or python3.13
    needed (only the Makefiles of the optional Iceberg function and of the ADBC layer run pip,
    for pinned arm64 wheels: test_template_iceberg.py, test_template_adbc.py), and the
    artifacts hold each handler and the whole totes package."""
    build_dir = sam_build

    def files(root: Path) -> set[str]:
        return {
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        }

    for stage in ("ingest", "transform", "load", "migrate"):
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
        "MigrateFunction": "MigrateFunction",
        "IcebergFunction": "IcebergFunction",
        "TotesLayer": "TotesLayer",
        "AdbcLayer": "AdbcLayer",
    }


def test_no_function_or_layer_directory_has_a_requirements_file():
    """A requirements.txt would make sam build run pip, which needs a local python3.13."""
    dirs = [
        REPO_ROOT / "shared",
        *(REPO_ROOT / "functions").iterdir(),
        REPO_ROOT / "layers" / "adbc",
    ]
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
            {
                "SourceSecretArn",
                "WarehouseSecretArn",
                "WarehouseOwnerSecretArn",
                "AlarmEmail",
                "SubnetIds",
                "SecurityGroupIds",
                "KmsKeyArn",
                "BreakGlassRoleArn",
            }
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
        "WAREHOUSE_OWNER_SECRET_ARN": (
            "arn:aws:secretsmanager:eu-west-2:123456789012:secret:owner-AbCdEf"
        ),
        "SUBNET_IDS": "subnet-1,subnet-2",
        "SECURITY_GROUP_IDS": "sg-1",
        "KMS_KEY_ARN": "arn:aws:kms:eu-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-12345678",
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
        f'WarehouseOwnerSecretArn="{env["WAREHOUSE_OWNER_SECRET_ARN"]}"',
        'AlarmEmail=""',
        'SubnetIds="subnet-1,subnet-2"',
        'SecurityGroupIds="sg-1"',
        f'KmsKeyArn="{env["KMS_KEY_ARN"]}"',
        'BreakGlassRoleArn=""',
    ]


def test_prod_is_private_the_stack_and_the_deploy_script_refuse_it_without_subnets(tmp_path):
    """samconfig's prod sets RequireVpc (the template's VpcRequired rule then fails a deploy
    without SubnetIds before any resource changes), and sam/deploy.sh refuses prod without
    SUBNET_IDS and SECURITY_GROUP_IDS before it packages anything. dev and the sandbox may
    still run outside a VPC."""
    requires = {
        name: _overrides(env["deploy"]["parameters"]["parameter_overrides"]).get("RequireVpc")
        for name, env in _samconfig().items()
        if name != "version"
    }
    assert requires == {"default": None, "dev": None, "prod": "true"}
    assert load_template()["Parameters"]["RequireVpc"]["AllowedValues"] == ["false", "true"]

    fake = tmp_path / "sam"
    fake.write_text("#!/bin/sh\necho deployed\n")
    fake.chmod(0o755)
    secrets = {
        "PATH": os.environ["PATH"],
        "SAM": str(fake),
        "SOURCE_SECRET_ARN": "arn:aws:secretsmanager:eu-west-2:123456789012:secret:src-AbCdEf",
        "WAREHOUSE_SECRET_ARN": "arn:aws:secretsmanager:eu-west-2:123456789012:secret:wh-AbCdEf",
        "WAREHOUSE_OWNER_SECRET_ARN": (
            "arn:aws:secretsmanager:eu-west-2:123456789012:secret:owner-AbCdEf"
        ),
    }

    def deploy(env_name, **extra):
        return subprocess.run(
            ["bash", str(REPO_ROOT / "sam" / "deploy.sh"), env_name],
            capture_output=True,
            text=True,
            env={**secrets, **extra},
            timeout=30,
        )

    no_subnets = deploy("prod")
    no_groups = deploy("prod", SUBNET_IDS="subnet-1")
    private = deploy("prod", SUBNET_IDS="subnet-1", SECURITY_GROUP_IDS="sg-1")
    dev = deploy("dev")
    assert no_subnets.returncode != 0
    assert no_groups.returncode != 0
    assert "SUBNET_IDS is required for prod" in no_subnets.stderr
    assert "SECURITY_GROUP_IDS is required for prod" in no_groups.stderr
    assert (private.stdout, dev.stdout) == ("deployed\n", "deployed\n")


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
        "deploy-dev": (["build"], "dev", oidc),
        "deploy-prod": (["build", "deploy-dev"], "prod", oidc),
    }
    for name in deploys:
        uses = [s.get("uses", "") for s in jobs[name]["steps"]]
        assert any(u.startswith("aws-actions/configure-aws-credentials@") for u in uses)
        creds = next(
            s for s in jobs[name]["steps"] if "configure-aws-credentials" in s.get("uses", "")
        )
        assert set(creds["with"]) == {"role-to-assume", "role-session-name", "aws-region"}
    assert "aws-access-key-id" not in WORKFLOW.read_text()


# ------------------------------------------------------------------ deploy pipeline hardening

MAIN_PUSH = "github.event_name == 'push' && github.ref == 'refs/heads/main'"
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$")
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40}$")
TAG_COMMENT = re.compile(r"^\s+#\s+v\d+(?:\.\d+){0,2}\s*$")
LOCKS = ("pip", "sam", "checkov")


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(job: str) -> list[dict]:
    return _workflow()["jobs"][job]["steps"]


def _index(steps: list[dict], predicate) -> int:
    (index,) = [i for i, step in enumerate(steps) if predicate(step)]
    return index


def _make_dry_run(*targets: str) -> list[str]:
    """The commands `make` would run for these targets (forced, not run)."""
    result = subprocess.run(
        ["make", "-n", "-B", *targets],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


def _hashed_pip_installs_only(commands: list[str]) -> list[str]:
    """Commands that install with pip but not from a hash-pinned lock (empty when all are)."""
    bad = []
    for command in commands:
        if re.search(r"\bpip3?\b.*\binstall\b", command) and not (
            "--require-hashes" in command
            and "--only-binary :all:" in command
            and re.search(r"-r requirements/\w+\.lock\b", command)
        ):
            bad.append(command)
    return bad


def test_every_action_is_pinned_by_a_full_commit_sha_with_its_release_tag_in_a_comment():
    lines = [USES.match(line) for line in WORKFLOW.read_text().splitlines()]
    used = [(m[1], m[2]) for m in lines if m]
    in_yaml = [
        s["uses"] for job in _workflow()["jobs"].values() for s in job["steps"] if "uses" in s
    ]
    assert [ref for ref, _ in used] == in_yaml  # the text scan sees every step the YAML has
    assert [ref for ref, _ in used if not PINNED.match(ref)] == []
    assert [ref for ref, comment in used if not TAG_COMMENT.match(comment)] == []
    # one SHA per action across the file, so an update cannot leave a job on the old commit
    by_action: dict[str, set[str]] = {}
    for ref, comment in used:
        action, sha = ref.split("@")
        by_action.setdefault(action, set()).add((sha, comment.strip()))
    assert {action: len(pins) for action, pins in by_action.items()} == dict.fromkeys(by_action, 1)


def test_checkouts_do_not_leave_the_job_token_in_the_git_config():
    for name, job in _workflow()["jobs"].items():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step.get("with", {}).get("persist-credentials") is False, name


def test_build_and_deploy_jobs_install_tools_only_from_hash_pinned_locks():
    jobs = _workflow()["jobs"]
    runs = {
        name: [step["run"] for step in jobs[name]["steps"] if "run" in step]
        for name in ("build", "deploy-dev", "deploy-prod")
    }
    assert [c for commands in runs.values() for c in _hashed_pip_installs_only(commands)] == []
    targets = {
        m[1] for commands in runs.values() for c in commands for m in re.finditer(r"make (\S+)", c)
    }
    assert targets == {"sam-venv", "rds-ca", "build"}
    commands = _make_dry_run(*sorted(targets))
    installs = [c for c in commands if "pip install" in c]
    assert installs, commands
    assert _hashed_pip_installs_only(commands) == []
    assert [c.split("-r ")[-1] for c in installs] == [
        "requirements/pip.lock",
        "requirements/sam.lock",
    ]
    assert not any("--upgrade" in c or " -U " in c for c in commands)
    assert _hashed_pip_installs_only(_make_dry_run("checkov-venv")) == []


def test_the_guard_would_catch_an_unhashed_install():
    assert _hashed_pip_installs_only(
        [
            ".venv-sam/bin/python -m pip install --quiet --upgrade pip",
            ".venv-sam/bin/python -m pip install -r requirements/sam.in",
            "pip install --require-hashes --only-binary :all: -r requirements/sam.lock",
        ]
    ) == [
        ".venv-sam/bin/python -m pip install --quiet --upgrade pip",
        ".venv-sam/bin/python -m pip install -r requirements/sam.in",
    ]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_tool_lock_pins_every_package_with_hashes_and_covers_its_input(lock):
    text = (REPO_ROOT / "requirements" / f"{lock}.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z])", text.split("\n", 2)[2] if text.startswith("#") else text)
    entries = [e for e in entries if e.strip() and not e.startswith("#")]
    assert entries
    for entry in entries:
        head = entry.splitlines()[0]
        assert re.match(r"^[A-Za-z0-9._-]+(\[[^]]+\])?==[^ ;]+( ;.*)? \\$", head), head
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), head
    pinned = {
        re.split(r"[\[=]", e)[0].lower().replace("_", "-"): e.split("==")[1].split()[0]
        for e in entries
    }
    inputs = [
        line.split("==")
        for line in (REPO_ROOT / "requirements" / f"{lock}.in").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert inputs
    assert {name: pinned.get(name) for name, _ in inputs} == dict(inputs)


def test_deploy_jobs_install_and_check_everything_before_they_hold_credentials():
    for name in ("deploy-dev", "deploy-prod"):
        steps = _steps(name)
        creds = _index(steps, lambda s: "configure-aws-credentials" in s.get("uses", ""))
        install = _index(steps, lambda s: s.get("run") == "make sam-venv")
        download = _index(steps, lambda s: "download-artifact" in s.get("uses", ""))
        verify = _index(steps, lambda s: "sam/artifact.sh verify" in s.get("run", ""))
        assert install < creds, name
        assert download < verify < creds, name
        after = steps[creds + 1 :]
        assert [s.get("run") for s in after] == [f"sam/deploy.sh {name.split('-')[1]}"], name
        assert not any("uses" in s for s in after), name


def test_only_the_deploy_jobs_get_an_identity_token_and_only_for_pushes_to_main():
    workflow = _workflow()
    assert workflow["permissions"] == {"contents": "read"}
    jobs = workflow["jobs"]
    with_token = {
        name for name, job in jobs.items() if job.get("permissions", {}).get("id-token") == "write"
    }
    with_environment = {name for name, job in jobs.items() if "environment" in job}
    assert with_token == with_environment == {"deploy-dev", "deploy-prod"}
    assert {name: jobs[name].get("if") for name in ("build", *sorted(with_token))} == dict.fromkeys(
        ("build", "deploy-dev", "deploy-prod"), MAIN_PUSH
    )


def test_both_environments_deploy_the_build_jobs_tarball_checked_against_its_digest():
    jobs = _workflow()["jobs"]
    build = jobs["build"]
    assert build["outputs"] == {"digest": "${{ steps.pack.outputs.digest }}"}
    pack = next(s for s in build["steps"] if s.get("id") == "pack")
    assert "sam/artifact.sh pack .aws-sam/build sam-build.tar.gz" in pack["run"]
    assert 'echo "digest=${digest}" >> "$GITHUB_OUTPUT"' in pack["run"]
    upload = next(s for s in build["steps"] if "upload-artifact" in s.get("uses", ""))
    assert (upload["with"]["name"], upload["with"]["path"]) == ("sam-build", "sam-build.tar.gz")
    runs = [s.get("run", "") for s in build["steps"]]
    assert runs.index("make rds-ca") < runs.index("make build")
    rds = next(s for s in build["steps"] if s.get("run") == "make rds-ca")
    assert rds["env"] == {"RDS_CA_SHA256": "${{ vars.RDS_CA_SHA256 }}"}
    for name in ("deploy-dev", "deploy-prod"):
        assert "build" in jobs[name]["needs"]
        download = next(s for s in jobs[name]["steps"] if "download-artifact" in s.get("uses", ""))
        assert download["with"] == {"name": "sam-build", "path": "dist"}
        verify = next(s for s in jobs[name]["steps"] if "artifact.sh verify" in s.get("run", ""))
        assert verify["env"] == {"DIGEST": "${{ needs.build.outputs.digest }}"}
        assert verify["run"] == (
            'sam/artifact.sh verify dist/sam-build.tar.gz "$DIGEST" .aws-sam/build'
        )
