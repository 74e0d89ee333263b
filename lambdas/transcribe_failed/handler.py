"""Lambda entry point for transcribe_failed: hand the EventBridge job state event to `core`."""

from __future__ import annotations

import logging
from typing import Any

import boto3
from botocore.config import Config

from pipeline_common.clients import ClientCache
from pipeline_common.results import Results
from pipeline_common.settings import LazySettings
from transcribe_failed.core import FUNCTION, Settings, handle_job_state_change

logger = logging.getLogger(__name__)

# One GetTranscriptionJob per failed job: standard retries cover its throttling; no burst to pace.
_AWS_CONFIG = Config(retries={"mode": "standard"})

SETTINGS: LazySettings[Settings] = LazySettings(Settings.from_env)
CLIENTS = ClientCache(
    s3=lambda: boto3.client("s3", config=_AWS_CONFIG),
    transcribe=lambda: boto3.client("transcribe", config=_AWS_CONFIG),
    dynamodb=lambda: boto3.client("dynamodb", config=_AWS_CONFIG),
)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Record why a Transcribe job of this pipeline failed, as the upload's error record."""
    settings = SETTINGS.get()
    logger.info("event received", extra={"request_id": getattr(context, "aws_request_id", None)})
    results = Results.for_invocation(
        FUNCTION, settings, s3=CLIENTS.get("s3"), dynamodb=CLIENTS.get("dynamodb"), context=context
    )
    result = handle_job_state_change(event, settings=settings, transcribe=CLIENTS.get("transcribe"), results=results)
    return {"results": [result.as_dict()]}
