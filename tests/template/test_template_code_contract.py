"""The template gives each function what its code needs on AWS, derived from the code.

moto enforces no IAM and the suite imports every handler with all third-party packages
installed, and never reaches CloudWatch; so these are the checks that stand between a local
green run and a function that cannot start, is refused by IAM, or an alarm that watches a
metric nobody emits. Each compares what ``code_contract`` reads from the source with the
template (offline: aws-sam-translator)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from code_contract import (
    FUNCTION_DIRS,
    FUNCTIONS,
    aws_actions,
    cold_start_imports,
    emitted_metrics,
    environment_reads,
    missing_object_handled,
)
from sam_template import grants, render, resolve, resources_of

from totes.observability import CATALOGUE, NAMESPACE

# What each layer (or the runtime) puts on the function's path, by top-level module. The
# managed layers' contents are pinned in requirements/runtime.txt (README, "Pinned versions").
LAYER_MODULES = {
    "PandasLayerArn": {"pandas", "numpy", "pyarrow", "pg8000", "scramp"},
    "PowertoolsLayerArn": {"aws_lambda_powertools"},
    "TotesLayer": {"totes"},
    "AdbcLayer": {"adbc_driver_manager", "adbc_driver_postgresql"},
}
# The Lambda python3.13 runtime's own packages.
RUNTIME_MODULES = {"boto3", "botocore", "s3transfer", "jmespath", "urllib3", "dateutil"}
LOCAL_LAYERS = {"HasTotesLayerArn": False, "HasAdbcLayerArn": False}


def _own_package(function: str) -> set[str]:
    """What a function built by its Makefile ships itself (its requirements.in's pins)."""
    requirements = FUNCTIONS / FUNCTION_DIRS[function] / "requirements.in"
    if not requirements.exists():
        return set()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==", requirements.read_text(), re.M)
    return {p.lower().replace("-", "_") for p in pins}


def _layer_modules(props: dict) -> set[str]:
    out = set()
    for layer in resolve(props.get("Layers", []), LOCAL_LAYERS):
        (name,) = layer.values()
        out |= LAYER_MODULES[name]
    return out


def test_every_module_a_function_imports_at_cold_start_is_in_its_layers_or_package(template):
    """Lambda imports the handler on the function's own layers only (the suite imports it with
    everything installed): a function without the layer of a module its code imports at module
    level fails every invocation with Runtime.ImportModuleError (a custom resource's function
    then never answers, and the deploy hangs until its ServiceTimeout)."""
    functions = {
        n: r["Properties"]
        for n, r in template["Resources"].items()
        if r["Type"] == "AWS::Serverless::Function"
    }
    assert set(functions) == set(FUNCTION_DIRS)
    missing = {
        name: sorted(
            cold_start_imports(name) - _layer_modules(props) - _own_package(name) - RUNTIME_MODULES
        )
        for name, props in functions.items()
    }
    assert missing == {name: [] for name in functions}


# ------------------------------------------------------------------ IAM

RAW = "arn:aws:s3:::STACK-raw-ACCOUNT-REGION"
PROCESSED = "arn:aws:s3:::STACK-processed-ACCOUNT-REGION"
ICEBERG = "arn:aws:s3:::STACK-iceberg-ACCOUNT-REGION"

# Where a function reads objects that may not exist (yet), and must be told so by a 404:
# S3 answers a missing key with 404 NoSuchKey only to a principal allowed s3:ListBucket on
# the bucket, else 403 AccessDenied, which the code (rightly) treats as a fault. S3 does not
# document that a ListBucket conditioned on s3:prefix counts for a read (no list request, no
# prefix), and the template's own ingest grant is unconditioned for that reason: so the grant
# must be unconditioned (it reveals key names only).
READS_OBJECTS_THAT_MAY_BE_MISSING = {
    ("IngestFunction", RAW): "the capture state and key sets before their first run",
    ("TransformFunction", RAW): "a manifest or file removed before transform read it: the"
    " batch is recorded gone or quarantined, not retried into the failure queue",
    ("LoadFunction", PROCESSED): "a missing processed file is named NoSuchKey, not AccessDenied",
    ("IcebergFunction", ICEBERG): "the committed marker before the first batch"
    " (record_committed reads it, then writes it), and pyiceberg's check that a new metadata"
    " file does not exist yet (PyArrowFile.create, overwrite=False)",
}


def _role(expanded: dict, function: str) -> dict:
    role = expanded["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
    return expanded["Resources"][role]


def test_a_function_told_a_missing_object_by_its_404_may_list_that_bucket_unconditioned(
    expanded,
):
    """Every function whose code compares an S3 error with NoSuchKey/404 is listed above with
    the bucket it reads, and its role may list that bucket without a condition; moto answers
    NoSuchKey whatever the grants, so only this catches a 403 that AWS would answer."""
    functions = {n for n in FUNCTION_DIRS if missing_object_handled(n)}
    assert functions == {f for f, _ in READS_OBJECTS_THAT_MAY_BE_MISSING}
    refused = []
    for function, bucket in READS_OBJECTS_THAT_MAY_BE_MISSING:
        granted = grants(_role(expanded, function), has_vpc=True, iceberg=True)
        if ("s3:ListBucket", bucket, "null") not in granted:
            refused.append((function, bucket))
    assert refused == []


# Lambda itself acts with the function's role for these (not the code): its own log group
# (LoggingConfig), the on-failure destination (EventInvokeConfig), the VPC's network
# interfaces (VpcConfig).
LOG_ACTIONS = {"logs:CreateLogStream", "logs:PutLogEvents"}
ENI_ACTIONS = {
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}
# Actions the code can call that the role deliberately lacks, with the reason.
NOT_GRANTED = {
    ("IcebergFunction", "glue:CreateDatabase"): "ensure_tables creates the namespace only when"
    " it is missing (local runs); on AWS the stack creates the Glue database (IcebergDatabase)",
}


def _platform_actions(props: dict) -> set[str]:
    actions = set()
    if "LoggingConfig" in props:
        actions |= LOG_ACTIONS
    destination = props.get("EventInvokeConfig", {}).get("DestinationConfig", {})
    if destination.get("OnFailure", {}).get("Type") == "SQS":
        actions.add("sqs:SendMessage")
    if "VpcConfig" in props:
        actions |= ENI_ACTIONS
    return actions


def test_each_role_allows_every_aws_action_its_functions_code_can_call_and_no_other(
    template, expanded
):
    """Per function: the actions its reachable code calls (boto3 S3 methods, Powertools
    idempotency and Parameters, pyiceberg's Glue catalog and file IO, ListBucket for a 404)
    plus Lambda's own (logs, failure destination, ENIs) equal the actions its role allows
    (KMS apart: test_template_security). Missing would be refused on AWS (moto never
    refuses); extra is more than least privilege."""
    diff = {}
    for function in FUNCTION_DIRS:
        props = template["Resources"][function]["Properties"]
        needed = aws_actions(function) | _platform_actions(props)
        needed -= {a for (f, a) in NOT_GRANTED if f == function}
        role = _role(expanded, function)
        allowed = {a for a, _, _ in grants(role, has_vpc=True, iceberg=True)}
        missing, extra = sorted(needed - allowed), sorted(allowed - needed)
        if missing or extra:
            diff[function] = {"missing": missing, "extra": extra}
    assert diff == {}


# ------------------------------------------------------------------ environment

# Variables Powertools reads itself (a misspelt one would be ignored, silently).
POWERTOOLS_VARIABLES = {
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
    "POWERTOOLS_LOGGER_LOG_EVENT",
    "POWERTOOLS_LOGGER_SAMPLE_RATE",
    "POWERTOOLS_METRICS_DISABLED",
    "POWERTOOLS_IDEMPOTENCY_DISABLED",
    "POWERTOOLS_PARAMETERS_MAX_AGE",
}
DEPLOYED = {"IcebergEnabled": True, "HasLocalEndpointUrl": False}


def _environment(template: dict, function: str) -> dict:
    props = template["Resources"][function]["Properties"]
    variables = {
        **template["Globals"]["Function"].get("Environment", {}).get("Variables", {}),
        **props.get("Environment", {}).get("Variables", {}),
    }
    return resolve(variables, DEPLOYED)


def test_each_function_sets_every_variable_its_code_requires_and_only_ones_it_reads(template):
    """A required variable the template does not set fails the cold start only on AWS (the
    suite sets its own); a variable set under another name than the code reads (a typo, a
    rename on one side) is ignored silently and its default used: both are read from the code
    (code_contract.environment_reads), with the Iceberg target on and deployed defaults."""
    problems = {}
    for function in FUNCTION_DIRS:
        reads = environment_reads(function)
        given = set(_environment(template, function))
        required = {name for name, must in reads.items() if must}
        missing = sorted(required - given)
        unread = sorted(given - set(reads) - POWERTOOLS_VARIABLES)
        if missing or unread:
            problems[function] = {"missing": missing, "set but never read": unread}
    assert problems == {}


# ------------------------------------------------------------------ alarms and dashboards

# Parameters a dashboard body substitutes as numbers (thresholds drawn as annotations).
NUMERIC_PARAMETERS = {
    "FreshnessThresholdSeconds",
    "CaptureStallSeconds",
    "FailureMessageAgeSeconds",
}
SEARCH = re.compile(r"\{(\w+),([\w,]+)\} MetricName=\"(\w+)\"")
INSIGHTS = re.compile(r"SELECT \w+\((\w+)\) FROM SCHEMA\((\w+), ([^)]*)\)")


@dataclass(frozen=True)
class Watched:
    where: str
    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str | None], ...]  # value None: any (SEARCH, SCHEMA)
    unit: str | None = None


def _watched(expanded: dict) -> list[Watched]:
    """Every metric an alarm or a dashboard widget of the template reads."""
    out = []
    for name, alarm in resources_of(expanded, "AWS::CloudWatch::Alarm").items():
        props = alarm["Properties"]
        if "MetricName" in props:
            dims = tuple((d["Name"], render(d["Value"])) for d in props.get("Dimensions", []))
            out.append(
                Watched(name, props["Namespace"], props["MetricName"], dims, props.get("Unit"))
            )
        for query in props.get("Metrics", []):
            for metric, namespace, keys in INSIGHTS.findall(query.get("Expression", "")):
                dims = tuple((k.strip().strip('"'), None) for k in keys.split(","))
                out.append(Watched(name, namespace, metric, dims))
            assert "MetricStat" not in query, name  # not used; add it here when it is
    for name, board in resources_of(expanded, "AWS::CloudWatch::Dashboard").items():
        body = re.sub(
            r"\$\{([^}]+)\}",
            lambda m: "0" if m[1] in NUMERIC_PARAMETERS else f"<{m[1]}>",
            board["Properties"]["DashboardBody"]["Fn::Sub"],
        )
        for widget in json.loads(body)["widgets"]:
            for row in widget["properties"].get("metrics", []):
                values = [v for v in row if not isinstance(v, dict)]
                if values:
                    namespace, metric, *pairs = values
                    dims = tuple(zip(pairs[::2], pairs[1::2], strict=True))
                    out.append(Watched(name, namespace, metric, dims))
                for option in (v for v in row if isinstance(v, dict) and "expression" in v):
                    for namespace, keys, metric in SEARCH.findall(option["expression"]):
                        dims = tuple((k, None) for k in keys.split(","))
                        out.append(Watched(name, namespace, metric, dims))
    return out


def _services(template: dict) -> dict[str, str]:
    """Function by its POWERTOOLS_SERVICE_NAME (the ``service`` dimension it emits)."""
    return {
        _environment(template, f)["POWERTOOLS_SERVICE_NAME"]: f
        for f in FUNCTION_DIRS
        if "POWERTOOLS_SERVICE_NAME" in _environment(template, f)
    }


def _namespace(template: dict, function: str) -> str:
    return _environment(template, function).get("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE)


def test_the_catalogue_names_the_functions_whose_code_emits_each_metric(template):
    """``CATALOGUE``'s stages (what the e2e checks and the docs describe) are the services of
    the functions whose reachable code emits the metric."""
    services = {f: s for s, f in _services(template).items()}
    emitted = {f: emitted_metrics(f, set(CATALOGUE)) for f in FUNCTION_DIRS}
    derived = {
        name: tuple(sorted(services[f] for f in FUNCTION_DIRS if name in emitted[f]))
        for name in CATALOGUE
    }
    assert derived == {name: tuple(sorted(spec.stages)) for name, spec in CATALOGUE.items()}


def test_every_alarm_and_widget_reads_a_metric_that_some_function_emits_as_it_is_read(
    template, expanded
):
    """Every alarm and dashboard metric of our namespace is one the code emits, with the
    catalogue's dimensions (no more, no fewer: CloudWatch matches the exact set), in the
    namespace of the function whose ``service`` it names, and that function's reachable code
    emits it; an alarm gives no Unit other than the metric's. AWS metrics name a function or a
    queue of the stack that is some function's failure destination. Otherwise the alarm
    watches nothing and never fires (TreatMissingData notBreaching), which no local run
    shows."""
    services = _services(template)
    emitted = {f: emitted_metrics(f, set(CATALOGUE)) for f in FUNCTION_DIRS}
    functions = {f"<{f}>" for f in FUNCTION_DIRS}
    queues = set()
    for resource in template["Resources"].values():
        config = resource.get("Properties", {}).get("EventInvokeConfig", {})
        target = config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
        if target:
            queues.add(f"<{target['Fn::GetAtt'][0]}.QueueName>")
    watched = _watched(expanded)
    assert len(watched) > 40  # the parser found the alarms and widgets
    wrong = []
    for w in watched:
        dims = dict(w.dimensions)
        if w.namespace == "AWS/Lambda":
            ok = set(dims) == {"FunctionName"} and dims["FunctionName"] in functions
        elif w.namespace == "AWS/SQS":
            ok = set(dims) == {"QueueName"} and dims["QueueName"] in queues
        else:
            spec = CATALOGUE.get(w.metric)
            service = dims.get("service")
            if service is not None:  # the function whose POWERTOOLS_SERVICE_NAME it names
                emitters = [services[service]] if service in services else []
            else:  # a SEARCH or SCHEMA over every service
                emitters = [services[s] for s in spec.stages] if spec else []
            ok = (
                spec is not None
                and sorted(dims) == sorted(spec.dimensions)
                and w.unit in (None, spec.unit.value)
                and any(
                    w.metric in emitted[f] and _namespace(template, f) == w.namespace
                    for f in emitters
                )
            )
        if not ok:
            wrong.append((w.where, w.namespace, w.metric, dims))
    assert wrong == [], "\n".join(map(str, wrong))
