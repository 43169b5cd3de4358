"""The ingest Lambda: EventBridge Scheduler -> one incremental extraction into the raw lake."""

from totes.observability import logger, metrics
from totes.stages import ingest_batch

ingest_batch.settings()  # a missing or malformed variable fails the cold start, naming it


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict, context) -> dict:
    return ingest_batch.from_schedule_event(event, context)
