"""The ingest Lambda: EventBridge Scheduler -> one incremental extraction into the raw lake."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes.observability import logger, metrics
from totes.settings import IngestSettings
from totes.stages import ingest_batch, runtime

# A missing or malformed variable fails the cold start, naming it.
runtime.settings(IngestSettings)


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict, context: LambdaContext) -> dict:
    return ingest_batch.from_schedule_event(event, context)
