"""invoke_sd's settings, read once from the environment that infra/pipeline.py defines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline_common.settings import (
    REALTIME,
    CommonSettings,
    SettingsError,
    as_float,
    as_int,
    endpoint_from_env,
    optional,
    require,
)

DEFAULT_MAX_PROMPT_CHARS = 1000
DEFAULT_MIN_TRANSCRIPT_CONFIDENCE = 0.2
DEFAULT_REQUEST_TTL_SECONDS = 7200
# InvokeEndpointAsync's RequestTTLSeconds allows 60..21600 s.
MIN_REQUEST_TTL_SECONDS = 60
MAX_REQUEST_TTL_SECONDS = 21600
# InvokeEndpointAsync's InvocationTimeoutSeconds allows 1..3600 s (900 by default); infra sets it explicitly.
DEFAULT_INVOCATION_TIMEOUT_SECONDS = 900
MAX_INVOCATION_TIMEOUT_SECONDS = 3600


@dataclass(frozen=True)
class Settings(CommonSettings):
    """What invoke_sd needs from its environment."""

    transcript_prefix: str
    endpoint_name: str
    image_parameters: Mapping[str, Any] = field(default_factory=dict)
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    min_transcript_confidence: float = DEFAULT_MIN_TRANSCRIPT_CONFIDENCE
    # "realtime": InvokeEndpoint and the image at once; "async": a request queued at the endpoint (async_request).
    endpoint_mode: str = REALTIME
    transcript_bucket: str = ""
    async_request_prefix: str = "async/requests/"
    request_ttl_seconds: int = DEFAULT_REQUEST_TTL_SECONDS
    # How long the endpoint may work on one async request (the same limit its model_fn budgets against).
    invocation_timeout_seconds: int = DEFAULT_INVOCATION_TIMEOUT_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and check the variables set by infra/pipeline.py; `SettingsError` names any bad one."""
        request_ttl_seconds = as_int(
            "REQUEST_TTL_SECONDS",
            optional(environ, "REQUEST_TTL_SECONDS", str(DEFAULT_REQUEST_TTL_SECONDS)),
            minimum=MIN_REQUEST_TTL_SECONDS,
        )
        if request_ttl_seconds > MAX_REQUEST_TTL_SECONDS:
            raise SettingsError(f"environment variable REQUEST_TTL_SECONDS must be at most {MAX_REQUEST_TTL_SECONDS}")
        invocation_timeout_seconds = as_int(
            "INVOCATION_TIMEOUT_SECONDS",
            optional(environ, "INVOCATION_TIMEOUT_SECONDS", str(DEFAULT_INVOCATION_TIMEOUT_SECONDS)),
            minimum=1,
        )
        if invocation_timeout_seconds > MAX_INVOCATION_TIMEOUT_SECONDS:
            raise SettingsError(
                f"environment variable INVOCATION_TIMEOUT_SECONDS must be at most {MAX_INVOCATION_TIMEOUT_SECONDS}"
            )
        return cls(
            **cls.common_from_env(environ),
            **endpoint_from_env(environ),
            transcript_prefix=require(environ, "TRANSCRIPT_PREFIX"),
            max_prompt_chars=as_int(
                "MAX_PROMPT_CHARS", optional(environ, "MAX_PROMPT_CHARS", str(DEFAULT_MAX_PROMPT_CHARS)), minimum=1
            ),
            min_transcript_confidence=as_float(
                "MIN_TRANSCRIPT_CONFIDENCE",
                optional(environ, "MIN_TRANSCRIPT_CONFIDENCE", str(DEFAULT_MIN_TRANSCRIPT_CONFIDENCE)),
                minimum=0.0,
                maximum=1.0,
            ),
            request_ttl_seconds=request_ttl_seconds,
            invocation_timeout_seconds=invocation_timeout_seconds,
        )
