"""Lambda entry point for invoke_sd: parse the queued S3 events, hand each transcript to `service`."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from invoke_sd.service import FUNCTION, Dependencies, generate_image
from invoke_sd.settings import Settings
from pipeline_common.clients import ClientCache
from pipeline_common.entry import handle_s3_event
from pipeline_common.results import Results
from pipeline_common.settings import LazySettings

# endpoint.invoke_endpoint retries with backoff itself; botocore retrying too would multiply the attempts.
# total_max_attempts=1 is one call in all (botocore's `max_attempts` key counts retries, so 1 would mean 2 calls).
# Real-time endpoints answer within 60 s, so a 70 s read timeout never cuts off a good response.
SAGEMAKER_RUNTIME_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=10, read_timeout=70, tcp_keepalive=True
)
_AWS_CONFIG = Config(retries={"mode": "standard"})

SETTINGS: LazySettings[Settings] = LazySettings(Settings.from_env)
CLIENTS = ClientCache(
    s3=lambda: boto3.client("s3", config=_AWS_CONFIG),
    sagemaker_runtime=lambda: boto3.client("sagemaker-runtime", config=SAGEMAKER_RUNTIME_CONFIG),
    dynamodb=lambda: boto3.client("dynamodb", config=_AWS_CONFIG),
)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Generate one image per transcript in the event."""
    settings = SETTINGS.get()
    s3 = CLIENTS.get("s3")
    results = Results.for_invocation(FUNCTION, settings, s3=s3, dynamodb=CLIENTS.get("dynamodb"), context=context)
    deps = Dependencies(settings=settings, s3=s3, sagemaker=CLIENTS.get("sagemaker_runtime"), results=results)
    return handle_s3_event(event, context, lambda record: generate_image(record, deps))
