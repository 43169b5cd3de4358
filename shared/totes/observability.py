"""The one Logger and Metrics every stage shares (Powertools), so log keys and the metric
namespace are configured in a single place, and the one way a per-table metric is emitted."""

import os

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric

NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "TerrificTotes")

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "totes"))
metrics = Metrics(namespace=NAMESPACE)


def add_table_metric(name: str, unit: MetricUnit, value: float, table: str) -> None:
    """One value of ``name`` with a ``table`` dimension, flushed as its own EMF blob: the
    function's other metrics keep no table dimension, and one blob has one dimension set."""
    with single_metric(name=name, unit=unit, value=value, namespace=NAMESPACE) as metric:
        metric.add_dimension(name="table", value=table)
