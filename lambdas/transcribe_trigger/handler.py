"""Lambda entry point for transcribe_trigger: parse the S3 event, hand the records to `core`."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from pipeline_common.clients import ClientCache
from pipeline_common.entry import handle_s3_event
from pipeline_common.settings import LazySettings
from transcribe_trigger.core import Settings, start_transcriptions

_AWS_CONFIG = Config(retries={"mode": "standard"})
# A bulk upload can outrun StartTranscriptionJob's request rate: adaptive mode slows down and
# retries LimitExceeded/throttling for longer before the event falls back on Lambda's retries.
_TRANSCRIBE_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 10})

SETTINGS: LazySettings[Settings] = LazySettings(Settings.from_env)
CLIENTS = ClientCache(
    s3=lambda: boto3.client("s3", config=_AWS_CONFIG),
    transcribe=lambda: boto3.client("transcribe", config=_TRANSCRIBE_CONFIG),
)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Start one Transcribe job per uploaded recording in the event."""
    settings = SETTINGS.get()
    return handle_s3_event(
        event,
        context,
        lambda records: start_transcriptions(
            records, settings=settings, s3=CLIENTS.get("s3"), transcribe=CLIENTS.get("transcribe")
        ),
    )
