"""The pipeline's wiring, defined once for the CDK stacks and the local runtime.

Which bucket notifies which handler for which suffixes, and which environment each
handler gets, live here and nowhere else: `InfraStack` and `local/` both read these
definitions, so the deployed and the local pipeline cannot drift apart. No aws_cdk
imports: local mode uses this without loading the CDK.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from infra.config import PipelineConfig

# Key layout shared by the handlers (they receive these through their environment).
TRANSCRIPT_PREFIX = "transcripts/"
IMAGE_PREFIX = "images/"
ERROR_PREFIX = "errors/"


class BucketRole(StrEnum):
    """The buckets every deployment has; the values are construct ids."""

    INPUT = "Input"
    TRANSCRIPTS = "Transcripts"
    OUTPUT = "Output"
    MODEL = "Model"


class Handler(StrEnum):
    """The Lambda functions; the values are their folders under `lambdas/`."""

    TRANSCRIBE_TRIGGER = "transcribe_trigger"
    INVOKE_SD = "invoke_sd"

    @property
    def entry_point(self) -> str:
        """The Lambda handler string, relative to the `lambdas/` asset root."""
        return f"{self.value}.handler.handler"


@dataclass(frozen=True)
class Route:
    """An S3 object-created notification from a bucket to a handler."""

    bucket: BucketRole
    handler: Handler
    prefix: str
    suffixes: tuple[str, ...]


def media_suffixes(config: PipelineConfig) -> tuple[str, ...]:
    """Suffix filters for uploads: S3 filters are case-sensitive, so both cases."""
    suffixes: list[str] = []
    for fmt in config.media_formats:
        suffixes += [f".{fmt}", f".{fmt.upper()}"]
    return tuple(suffixes)


def routes(config: PipelineConfig) -> tuple[Route, ...]:
    """All notifications; the output bucket has none, so results never re-trigger."""
    return (
        Route(BucketRole.INPUT, Handler.TRANSCRIBE_TRIGGER, "", media_suffixes(config)),
        Route(BucketRole.TRANSCRIPTS, Handler.INVOKE_SD, TRANSCRIPT_PREFIX, (".json",)),
    )


def handler_environment(handler: Handler, config: PipelineConfig, buckets: Mapping[BucketRole, str]) -> dict[str, str]:
    """The environment variables a handler runs with, given the real bucket names."""
    common = {
        "OUTPUT_BUCKET": buckets[BucketRole.OUTPUT],
        "TRANSCRIPT_PREFIX": TRANSCRIPT_PREFIX,
        "IMAGE_PREFIX": IMAGE_PREFIX,
        "ERROR_PREFIX": ERROR_PREFIX,
    }
    if handler is Handler.TRANSCRIBE_TRIGGER:
        return common | {
            "TRANSCRIPT_BUCKET": buckets[BucketRole.TRANSCRIPTS],
            "MEDIA_FORMATS": ",".join(config.media_formats),
            "MAX_MEDIA_BYTES": str(config.max_media_bytes),
            "LANGUAGE_CODE": config.language_code,
            "LANGUAGE_OPTIONS": ",".join(config.language_options),
        }
    return common | {
        "INPUT_BUCKET": buckets[BucketRole.INPUT],
        "ENDPOINT_NAME": config.endpoint_name,
        "IMAGE_PARAMETERS": json.dumps(config.image.as_dict(), sort_keys=True),
    }
