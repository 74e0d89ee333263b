"""invoke_sd's settings, read once from the environment that infra/pipeline.py defines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline_common.settings import CommonSettings, as_float, as_int, as_json_object, optional, require

DEFAULT_MAX_PROMPT_CHARS = 1000
DEFAULT_MIN_TRANSCRIPT_CONFIDENCE = 0.2


@dataclass(frozen=True)
class Settings(CommonSettings):
    """What invoke_sd needs from its environment."""

    transcript_prefix: str
    endpoint_name: str
    image_parameters: Mapping[str, Any] = field(default_factory=dict)
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    min_transcript_confidence: float = DEFAULT_MIN_TRANSCRIPT_CONFIDENCE

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and check the variables set by infra/pipeline.py; `SettingsError` names any bad one."""
        return cls(
            **cls.common_from_env(environ),
            transcript_prefix=require(environ, "TRANSCRIPT_PREFIX"),
            endpoint_name=require(environ, "ENDPOINT_NAME"),
            image_parameters=as_json_object("IMAGE_PARAMETERS", optional(environ, "IMAGE_PARAMETERS", "{}")),
            max_prompt_chars=as_int(
                "MAX_PROMPT_CHARS", optional(environ, "MAX_PROMPT_CHARS", str(DEFAULT_MAX_PROMPT_CHARS)), minimum=1
            ),
            min_transcript_confidence=as_float(
                "MIN_TRANSCRIPT_CONFIDENCE",
                optional(environ, "MIN_TRANSCRIPT_CONFIDENCE", str(DEFAULT_MIN_TRANSCRIPT_CONFIDENCE)),
                minimum=0.0,
                maximum=1.0,
            ),
        )
