"""CloudWatch as the template defines it, evaluated over metrics recorded locally.

The alarms and the dashboard body of ``template.yaml`` are read as written (no second
definition): intrinsics resolved with local names (:class:`LocalNames`), each metric reference
parsed into a query (:func:`parse_widget_metric`, :func:`alarm_from_template`), and evaluated over
:class:`~totes_tools.ops.metricstore.Datapoint` records the way CloudWatch evaluates them:

- a metric is identified by namespace, name and its exact set of dimensions;
- ``SEARCH('{Namespace,dim1,dim2} MetricName="X"', 'Stat', period)`` matches the metrics
  with exactly those dimension names, one series each; ``SUM(SEARCH(...))`` adds them up;
- a Metrics Insights alarm ``SELECT FUNC(X) FROM SCHEMA(Namespace, "dim1", ...)`` aggregates
  every datapoint of the matching metrics;
- an alarm compares the last ``EvaluationPeriods`` period values with its threshold, a period
  without data counting as ``TreatMissingData`` says, and is in ALARM when at least
  ``DatapointsToAlarm`` of them breach.

Only the subset the template uses is understood; anything else raises
:class:`UnsupportedMetric`, so a new kind of widget or alarm cannot be drawn or evaluated
silently wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from totes_tools.ops.metricstore import Datapoint

STATS = ("Sum", "Maximum", "Minimum", "Average", "SampleCount")
INSIGHTS_FUNCTIONS = {"SUM": "Sum", "MAX": "Maximum", "MIN": "Minimum", "AVG": "Average",
                      "COUNT": "SampleCount"}  # fmt: skip


class UnsupportedMetric(ValueError):
    """A metric reference, expression or alarm shape this evaluator does not understand."""


# -- the template -----------------------------------------------------------------------------


def load_template(path: Path | None = None) -> dict[str, Any]:
    """``template.yaml`` parsed with its intrinsics as dicts (``{"Ref": ...}``)."""
    from samtranslator.yaml_helper import yaml_parse

    from totes_tools.repository import repository_root

    path = path or repository_root() / "template.yaml"
    parsed: dict[str, Any] = yaml_parse(path.read_text())
    return parsed


@dataclass
class LocalNames:
    """What the template's references mean for a local stack: physical names of the
    functions and the failure queue, pseudo parameters, and parameter values (the template's
    defaults unless given)."""

    functions: Mapping[str, str]  # "IngestFunction" -> the function name metrics carry
    failure_queue: str
    region: str = "eu-west-2"
    stack: str = "totes-local"
    account: str = "123456789012"
    parameters: dict[str, Any] = field(default_factory=dict)
    # Other queues ("IcebergFailureQueue" -> its name), other resources a ``!Ref`` names (a
    # dashboard's title), and the template's conditions that hold here ({"IcebergEnabled":
    # True} when the local chain runs the Iceberg target). A resource whose condition is not
    # given as true does not exist locally, as it would not on AWS.
    queues: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, str] = field(default_factory=dict)
    conditions: Mapping[str, bool] = field(default_factory=dict)

    def exists(self, resource: Mapping[str, Any]) -> bool:
        """Whether a template resource is deployed under these conditions."""
        condition = resource.get("Condition")
        return condition is None or bool(self.conditions.get(condition, False))

    def value(self, name: str, template: Mapping[str, Any]) -> Any:
        """The value of ``${name}`` (a parameter, pseudo parameter, resource or attribute)."""
        pseudo = {
            "AWS::Region": self.region,
            "AWS::StackName": self.stack,
            "AWS::AccountId": self.account,
            "AWS::Partition": "aws",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        params = template.get("Parameters", {})
        if name in params:
            if "Default" not in params[name]:
                raise UnsupportedMetric(f"parameter {name} has no default; give its value")
            return params[name]["Default"]
        if name in self.functions:
            return self.functions[name]
        if name == "FailureQueue.QueueName":
            return self.failure_queue
        if name.endswith(".QueueName") and name.removesuffix(".QueueName") in self.queues:
            return self.queues[name.removesuffix(".QueueName")]
        if name in self.resources:
            return self.resources[name]
        resource, _, attribute = name.partition(".")
        if attribute == "Arn" and resource in template.get("Resources", {}):
            return f"arn:aws:cloudwatch:{self.region}:{self.account}:alarm:{resource}"
        raise UnsupportedMetric(f"no local value for ${{{name}}}")

    def resolve(self, value: Any, template: Mapping[str, Any]) -> Any:
        """Intrinsics (Ref, GetAtt, one-argument Sub) replaced by local values."""
        if isinstance(value, list):
            return [self.resolve(v, template) for v in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Ref"}:
            return self.value(value["Ref"], template)
        if set(value) == {"Fn::GetAtt"}:
            target = value["Fn::GetAtt"]
            return self.value(".".join(target) if isinstance(target, list) else target, template)
        if set(value) == {"Fn::Sub"}:
            text = value["Fn::Sub"]
            if not isinstance(text, str):
                raise UnsupportedMetric("only the one-argument form of !Sub is resolved")
            return re.sub(r"\$\{([^}!]+)\}", lambda m: str(self.value(m[1], template)), text)
        return {k: self.resolve(v, template) for k, v in value.items()}


def dashboard_body(template: Mapping[str, Any], names: LocalNames) -> dict[str, Any]:
    """The dashboard's JSON body exactly as the template writes it, resolved locally. With an
    optional target's dashboard deployed too (``IcebergDashboard``), its widgets follow the
    pipeline's, below them, as one body (one page locally; two dashboards on AWS)."""
    dashboards = [
        r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Dashboard" and names.exists(r)
    ]
    main = [r for r in dashboards if "Condition" not in r]
    if len(main) != 1:
        raise UnsupportedMetric(f"expected one unconditional dashboard, found {len(main)}")
    parsed: dict[str, Any] = {}
    below = 0
    for resource in main + [r for r in dashboards if "Condition" in r]:
        body = json.loads(names.resolve(resource["Properties"]["DashboardBody"], template))
        widgets = body.get("widgets", [])
        for widget in widgets:
            widget["y"] = int(widget.get("y", 0)) + below
        below = max([below, *(int(w["y"]) + int(w.get("height", 6)) for w in widgets)])
        if not parsed:
            parsed = body
        else:
            parsed["widgets"].extend(widgets)
    return parsed


# -- metric queries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricId:
    """One metric: namespace, name and its exact dimensions."""

    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, point: Datapoint) -> MetricId:
        return cls(point.namespace, point.name, tuple(sorted(point.dimensions.items())))

    @property
    def dimension_names(self) -> tuple[str, ...]:
        return tuple(sorted(k for k, _ in self.dimensions))


@dataclass(frozen=True)
class Query:
    """One metric reference of a widget or alarm.

    ``kind``: "metric" (one metric, exact dimensions), "search" (every metric of a namespace
    and name with exactly ``dimension_names``, one series each), "sum_search" (those added
    up), "insights" (a Metrics Insights aggregate over them)."""

    kind: str
    namespace: str
    name: str
    stat: str
    dimension_names: tuple[str, ...]
    dimensions: tuple[tuple[str, str], ...] = ()
    label: str = ""
    period: int | None = None
    y_axis: str = "left"
    text: str = ""

    def matches(self, metric: MetricId) -> bool:
        if (metric.namespace, metric.name) != (self.namespace, self.name):
            return False
        if self.kind == "metric":
            return metric.dimensions == self.dimensions
        return metric.dimension_names == self.dimension_names


_SEARCH = re.compile(
    r"""^SEARCH\(\s*'\{(?P<schema>[^}]*)\}\s+MetricName="(?P<name>[^"]+)"\s*'\s*,"""
    r"""\s*'(?P<stat>\w+)'\s*,\s*(?P<period>\d+)\s*\)$"""
)
_SUM = re.compile(r"^SUM\((?P<inner>SEARCH\(.*\))\)$")
_INSIGHTS = re.compile(
    r"""^SELECT\s+(?P<fn>[A-Z]+)\((?P<name>\w+)\)\s+FROM\s+"""
    r"""(?:SCHEMA\((?P<schema>[^)]*)\)|(?P<ns>[\w/"]+))\s*$"""
)


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) > 1 and text[0] == text[-1] == '"' else text


def parse_expression(expression: str, label: str = "", y_axis: str = "left") -> Query:
    """A widget or alarm expression of the supported subset, as a :class:`Query`."""
    text = expression.strip()
    summed = _SUM.match(text)
    inner = summed["inner"] if summed else text
    found = _SEARCH.match(inner)
    if found:
        parts = [p.strip() for p in found["schema"].split(",")]
        if found["stat"] not in STATS:
            raise UnsupportedMetric(f"statistic {found['stat']!r} in {expression!r}")
        return Query(
            "sum_search" if summed else "search",
            parts[0],
            found["name"],
            found["stat"],
            tuple(sorted(parts[1:])),
            label=label,
            period=int(found["period"]),
            y_axis=y_axis,
            text=expression,
        )
    found = _INSIGHTS.match(text)
    if found and found["fn"] in INSIGHTS_FUNCTIONS:
        if found["schema"] is None:
            raise UnsupportedMetric(
                f"{expression!r}: FROM a bare namespace matches every dimension set; use"
                " SCHEMA(namespace, dimension names...) so the alarm reads exactly one shape"
            )
        parts = [_unquote(p) for p in found["schema"].split(",")]
        return Query(
            "insights",
            parts[0],
            found["name"],
            INSIGHTS_FUNCTIONS[found["fn"]],
            tuple(sorted(parts[1:])),
            label=label,
            y_axis=y_axis,
            text=expression,
        )
    raise UnsupportedMetric(f"expression not understood: {expression!r}")


def parse_widget_metric(entry: Sequence[Any], widget: Mapping[str, Any]) -> Query:
    """One entry of a metric widget's ``metrics`` list."""
    options = entry[-1] if entry and isinstance(entry[-1], dict) else {}
    label = str(options.get("label", ""))
    y_axis = str(options.get("yAxis", "left"))
    if "expression" in options:
        if len(entry) != 1:
            raise UnsupportedMetric(f"an expression entry holds only its options: {entry!r}")
        return parse_expression(options["expression"], label, y_axis)
    plain = [p for p in entry if not isinstance(p, dict)]
    if len(plain) < 2 or len(plain) % 2 or any(not isinstance(p, str) for p in plain):
        raise UnsupportedMetric(f"metric entry not understood: {entry!r}")
    if "..." in plain:
        raise UnsupportedMetric("the '...' shorthand is not supported; repeat the names")
    namespace, name, *pairs = plain
    dims = tuple(sorted(zip(pairs[::2], pairs[1::2], strict=True)))
    stat = str(options.get("stat", widget.get("stat", "Average")))
    if stat not in STATS:
        raise UnsupportedMetric(f"statistic {stat!r} in {entry!r}")
    return Query(
        "metric",
        namespace,
        name,
        stat,
        tuple(k for k, _ in dims),
        dims,
        label=label,
        period=int(options.get("period", widget.get("period", 300))),
        y_axis=y_axis,
    )


def widget_queries(widget: Mapping[str, Any]) -> list[Query]:
    props = widget.get("properties", {})
    return [parse_widget_metric(entry, props) for entry in props.get("metrics", [])]


# -- aggregation ------------------------------------------------------------------------------


def aggregate(values: Sequence[float], stat: str) -> float | None:
    if not values:
        return None
    if stat == "Sum":
        return float(sum(values))
    if stat == "Maximum":
        return float(max(values))
    if stat == "Minimum":
        return float(min(values))
    if stat == "Average":
        return float(sum(values) / len(values))
    if stat == "SampleCount":
        return float(len(values))
    raise UnsupportedMetric(f"statistic {stat!r}")


@dataclass(frozen=True)
class Timeline:
    """Where a datapoint falls in time. Locally a chain cycle stands for one scheduled run:
    cycle ``k`` is drawn and evaluated as the interval ``[k * rate, (k + 1) * rate)`` seconds
    (``rate`` the template's schedule, 300 s), whatever its wall time was."""

    rate: int = 300

    def at(self, point: Datapoint) -> float:
        return point.cycle * self.rate + self.rate / 2

    def end(self, points: Iterable[Datapoint]) -> float:
        """The end of the last cycle recorded (0 when none)."""
        return max(((p.cycle + 1) * self.rate for p in points), default=0)


def series(
    query: Query, points: Iterable[Datapoint], period: int, timeline: Timeline
) -> dict[str, dict[float, float]]:
    """The query's time series: label -> {period start: value}."""
    grouped: dict[MetricId, list[Datapoint]] = {}
    for point in points:
        metric = MetricId.of(point)
        if query.matches(metric):
            grouped.setdefault(metric, []).append(point)
    if query.kind == "metric":
        return {query.label or query.name: _bucket(grouped.get(_only(query), []), query.stat,
                                                    period, timeline)}  # fmt: skip
    if query.kind == "search":
        out = {}
        for metric, pts in sorted(grouped.items(), key=lambda kv: kv[0].dimensions):
            label = ", ".join(v for k, v in metric.dimensions if k != "service") or query.name
            out[label] = _bucket(pts, query.stat, period, timeline)
        return out
    if query.kind == "sum_search":
        total: dict[float, float] = {}
        for pts in grouped.values():
            for start, value in _bucket(pts, query.stat, period, timeline).items():
                total[start] = total.get(start, 0.0) + value
        return {query.label or query.name: total}
    if query.kind == "insights":
        everything = [p for pts in grouped.values() for p in pts]
        return {query.label or query.name: _bucket(everything, query.stat, period, timeline)}
    raise UnsupportedMetric(query.kind)


def _only(query: Query) -> MetricId:
    return MetricId(query.namespace, query.name, query.dimensions)


def _bucket(
    points: Iterable[Datapoint], stat: str, period: int, timeline: Timeline
) -> dict[float, float]:
    values: dict[float, list[float]] = {}
    for point in points:
        start = math.floor(timeline.at(point) / period) * period
        values.setdefault(start, []).append(point.value)
    out: dict[float, float] = {}
    for start, vals in sorted(values.items()):
        value = aggregate(vals, stat)
        if value is not None:
            out[start] = value
    return out


# -- alarms -----------------------------------------------------------------------------------

COMPARISONS = {
    "GreaterThanThreshold": lambda v, t: v > t,
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


@dataclass(frozen=True)
class Alarm:
    name: str
    query: Query
    period: int
    evaluation_periods: int
    datapoints_to_alarm: int
    threshold: float
    comparison: str
    treat_missing: str
    description: str = ""


def alarms_from_template(template: Mapping[str, Any], names: LocalNames) -> dict[str, Alarm]:
    return {
        name: alarm_from_template(name, resource, template, names)
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::CloudWatch::Alarm" and names.exists(resource)
    }


def alarm_from_template(
    name: str, resource: Mapping[str, Any], template: Mapping[str, Any], names: LocalNames
) -> Alarm:
    wanted = {k: v for k, v in resource["Properties"].items() if not k.endswith("Actions")}
    props = names.resolve(wanted, template)
    if "Metrics" in props:
        returned = [m for m in props["Metrics"] if m.get("ReturnData", True)]
        if len(props["Metrics"]) != 1 or len(returned) != 1 or "Expression" not in returned[0]:
            raise UnsupportedMetric(f"{name}: only one Metrics Insights expression is supported")
        query = parse_expression(returned[0]["Expression"])
        if query.kind != "insights":
            raise UnsupportedMetric(f"{name}: an alarm expression must be a Metrics Insights one")
        period = int(returned[0]["Period"])
    else:
        dims = tuple(sorted((d["Name"], str(d["Value"])) for d in props.get("Dimensions", [])))
        if props.get("Statistic") not in STATS:
            raise UnsupportedMetric(f"{name}: statistic {props.get('Statistic')!r}")
        query = Query(
            "metric",
            props["Namespace"],
            props["MetricName"],
            props["Statistic"],
            tuple(k for k, _ in dims),
            dims,
        )
        period = int(props["Period"])
    evaluation = int(props["EvaluationPeriods"])
    if props["ComparisonOperator"] not in COMPARISONS:
        raise UnsupportedMetric(f"{name}: comparison {props['ComparisonOperator']!r}")
    return Alarm(
        name,
        query,
        period,
        evaluation,
        int(props.get("DatapointsToAlarm", evaluation)),
        float(props["Threshold"]),
        props["ComparisonOperator"],
        props.get("TreatMissingData", "missing"),
        str(props.get("AlarmDescription", "")),
    )


@dataclass(frozen=True)
class Evaluation:
    """An alarm's state at ``at``: each evaluated period's value (None: no data) and whether
    it breached."""

    alarm: str
    state: str  # ALARM, OK or INSUFFICIENT_DATA
    at: float
    periods: tuple[tuple[float, float | None, bool | None], ...]

    @property
    def in_alarm(self) -> bool:
        return self.state == "ALARM"


def evaluate(
    alarm: Alarm,
    points: Iterable[Datapoint],
    timeline: Timeline,
    at: float | None = None,
) -> Evaluation:
    """The alarm's condition over the last ``EvaluationPeriods`` whole periods before ``at``
    (default: the end of the last recorded cycle)."""
    points = list(points)
    end = timeline.end(points) if at is None else at
    (values,) = series(alarm.query, points, alarm.period, timeline).values()
    last = math.floor(end / alarm.period) * alarm.period
    if last >= end:
        last -= alarm.period  # the period ending at ``end`` is the last whole one
    starts = [last - i * alarm.period for i in range(alarm.evaluation_periods)][::-1]
    compare = COMPARISONS[alarm.comparison]
    periods = []
    breaches = counted = 0
    for start in starts:
        value = values.get(start)
        if value is None:
            breached: bool | None = {"breaching": True, "notBreaching": False}.get(
                alarm.treat_missing
            )
        else:
            breached = compare(value, alarm.threshold)
        periods.append((start, value, breached))
        if breached is not None:
            counted += 1
            breaches += breached
    if breaches >= alarm.datapoints_to_alarm:
        state = "ALARM"
    elif counted:
        state = "OK"
    else:
        state = "INSUFFICIENT_DATA"
    return Evaluation(alarm.name, state, end, tuple(periods))
