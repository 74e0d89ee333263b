"""Lambda entry point for async_result: SageMaker's notifications from the queue, each to `core`."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from async_result.core import FUNCTION, Dependencies, handle_notification
from async_result.settings import Settings
from pipeline_common.clients import ClientCache
from pipeline_common.entry import handle_sqs_batch, is_sqs_batch
from pipeline_common.results import Results
from pipeline_common.settings import LazySettings

_AWS_CONFIG = Config(retries={"mode": "standard"})

SETTINGS: LazySettings[Settings] = LazySettings(Settings.from_env)
CLIENTS = ClientCache(
    s3=lambda: boto3.client("s3", config=_AWS_CONFIG),
    dynamodb=lambda: boto3.client("dynamodb", config=_AWS_CONFIG),
)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Turn each notification into its upload's result; a direct event (a replay, local mode) is one notification."""
    settings = SETTINGS.get()
    s3 = CLIENTS.get("s3")
    results = Results.for_invocation(FUNCTION, settings, s3=s3, dynamodb=CLIENTS.get("dynamodb"), context=context)
    deps = Dependencies(settings=settings, s3=s3, results=results)
    if is_sqs_batch(event):
        return handle_sqs_batch(event, context, lambda body: [handle_notification(body, deps).as_dict()])
    return {"results": [handle_notification(event, deps).as_dict()]}
