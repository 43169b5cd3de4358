"""Iceberg Lambda: a processed-batch manifest landed (an EventBridge "Object Created" event);
commit that batch into the Iceberg tables. Or the maintenance schedule fired."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes.iceberg.settings import IcebergSettings
from totes.observability import logger, metrics
from totes.stages import iceberg_batch, runtime

# A missing or malformed variable fails the cold start, naming it.
runtime.settings(IcebergSettings)


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict, context: LambdaContext) -> dict:
    return iceberg_batch.from_event(event, context)
