"""Transform Lambda: a raw-batch manifest landed; remodel that batch into the star schema."""

from aws_lambda_powertools.utilities.data_classes import S3Event, event_source

from totes.observability import logger, metrics
from totes.stages import transform_batch

transform_batch.settings()  # a missing or malformed variable fails the cold start, naming it


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
@event_source(data_class=S3Event)
def handler(event: S3Event, context) -> dict:
    return transform_batch.from_s3_event(event, context)
