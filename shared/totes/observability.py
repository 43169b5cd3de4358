"""The one Logger and Metrics every stage shares (Powertools), so log keys and the metric
namespace are configured in a single place."""

import os

from aws_lambda_powertools import Logger, Metrics

NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "TerrificTotes")

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "totes"))
metrics = Metrics(namespace=NAMESPACE)
