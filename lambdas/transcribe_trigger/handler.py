"""Lambda entry point for transcribe_trigger: parse the queued S3 events, hand each upload to `core`."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from pipeline_common.clients import ClientCache
from pipeline_common.entry import handle_s3_event
from pipeline_common.results import Results
from pipeline_common.settings import LazySettings
from transcribe_trigger.core import FUNCTION, Settings, start_transcription

_AWS_CONFIG = Config(retries={"mode": "standard"})
# A bulk upload can outrun StartTranscriptionJob's request rate: adaptive mode slows down and retries
# throttling for longer before the message goes back to the queue.
_TRANSCRIBE_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 10})

SETTINGS: LazySettings[Settings] = LazySettings(Settings.from_env)
CLIENTS = ClientCache(
    s3=lambda: boto3.client("s3", config=_AWS_CONFIG),
    transcribe=lambda: boto3.client("transcribe", config=_TRANSCRIBE_CONFIG),
    dynamodb=lambda: boto3.client("dynamodb", config=_AWS_CONFIG),
)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Start one Transcribe job per uploaded recording in the event."""
    settings = SETTINGS.get()
    s3 = CLIENTS.get("s3")
    results = Results.for_invocation(FUNCTION, settings, s3=s3, dynamodb=CLIENTS.get("dynamodb"), context=context)
    transcribe = CLIENTS.get("transcribe")
    return handle_s3_event(
        event,
        context,
        lambda record: start_transcription(record, settings=settings, s3=s3, transcribe=transcribe, results=results),
    )
