"""What the web API reads from its environment (docs/API.md "Deployment"), checked once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline_common.settings import CommonSettings, SettingsError, as_int, as_media_formats, optional, require

DEFAULT_UPLOAD_PREFIX = "web/"
DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_RECORDING_SECONDS = 60
DEFAULT_URL_TTL_SECONDS = 300
# SigV4 presigned URLs live at most 7 days.
MAX_URL_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Settings(CommonSettings):
    """The pipeline's common block, the accepted formats and the web limits."""

    media_formats: tuple[str, ...]
    upload_prefix: str
    max_upload_bytes: int
    max_recording_seconds: int
    url_ttl_seconds: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and check the variables; `SettingsError` names any bad one."""
        prefix = optional(environ, "WEB_UPLOAD_PREFIX", DEFAULT_UPLOAD_PREFIX)
        if not prefix.endswith("/") or prefix.startswith("/"):
            raise SettingsError(f"environment variable WEB_UPLOAD_PREFIX={prefix!r} must end (and not start) with '/'")
        ttl = as_int(
            "WEB_URL_TTL_SECONDS", optional(environ, "WEB_URL_TTL_SECONDS", str(DEFAULT_URL_TTL_SECONDS)), minimum=1
        )
        if ttl > MAX_URL_TTL_SECONDS:
            raise SettingsError(f"environment variable WEB_URL_TTL_SECONDS={ttl} must be at most {MAX_URL_TTL_SECONDS}")
        return cls(
            **cls.common_from_env(environ),
            media_formats=as_media_formats("MEDIA_FORMATS", require(environ, "MEDIA_FORMATS")),
            upload_prefix=prefix,
            max_upload_bytes=as_int(
                "WEB_MAX_UPLOAD_BYTES",
                optional(environ, "WEB_MAX_UPLOAD_BYTES", str(DEFAULT_MAX_UPLOAD_BYTES)),
                minimum=1,
            ),
            max_recording_seconds=as_int(
                "WEB_MAX_RECORDING_SECONDS",
                optional(environ, "WEB_MAX_RECORDING_SECONDS", str(DEFAULT_MAX_RECORDING_SECONDS)),
                minimum=1,
            ),
            url_ttl_seconds=ttl,
        )
