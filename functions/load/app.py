"""Load Lambda: a processed-batch manifest landed; merge that batch into the warehouse."""

from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from totes.observability import logger, metrics
from totes.settings import LoadSettings
from totes.stages import load_batch, runtime

# A missing or malformed variable fails the cold start, naming it.
runtime.settings(LoadSettings)


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
@event_source(data_class=S3Event)
def handler(event: S3Event, context: LambdaContext) -> dict:
    return load_batch.from_s3_event(event, context)
