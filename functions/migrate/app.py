"""Migrate Lambda: the stack's WarehouseMigration custom resource (the owner's deploy step).

Unlike the pipeline's functions it reads its settings inside the handler, not at import: a
custom resource that fails before answering leaves its stack waiting for an hour, so even a
missing variable must become a FAILED answer naming it."""

from aws_lambda_powertools.utilities.data_classes import (
    CloudFormationCustomResourceEvent,
    event_source,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from totes.observability import logger
from totes.stages import migrate_warehouse


@logger.inject_lambda_context
@event_source(data_class=CloudFormationCustomResourceEvent)
def handler(event: CloudFormationCustomResourceEvent, context: LambdaContext) -> dict:
    return migrate_warehouse.handle(event)
