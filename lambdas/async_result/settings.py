"""async_result's settings, read once from the environment that infra/pipeline.py defines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline_common.settings import ASYNC, CommonSettings, endpoint_from_env, require


@dataclass(frozen=True)
class Settings(CommonSettings):
    """What async_result needs: the common block, the endpoint, and where requests are staged."""

    endpoint_name: str
    transcript_bucket: str
    async_request_prefix: str
    async_output_prefix: str = "async/outputs/"
    async_failure_prefix: str = "async/failures/"
    endpoint_mode: str = ASYNC
    # The requested parameters travel with each request; these only fill in for a response that omits them.
    image_parameters: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and check the variables set by infra/pipeline.py; `SettingsError` names any bad one."""
        # This stage exists only for an asynchronous endpoint: its requests' bucket is always required.
        return cls(
            **cls.common_from_env(environ),
            **{**endpoint_from_env(environ), "transcript_bucket": require(environ, "TRANSCRIPT_BUCKET")},
            async_output_prefix=require(environ, "ASYNC_OUTPUT_PREFIX"),
            async_failure_prefix=require(environ, "ASYNC_FAILURE_PREFIX"),
        )
