"""The web app's typed configuration (WebStack) and the environment of its API handler.

Built in `infra/app.py` from CDK context, like `PipelineConfig`; no aws_cdk imports, so local mode can
give the API handler exactly the environment the deployed function gets (`web_api_environment`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from infra.config import ConfigError, PipelineConfig, _float, _int, _str
from infra.pipeline import BucketRole, common_environment

# Every upload from the web page goes under this prefix of the input bucket, as `web/<sub>/<upload id>.<ext>`:
# the API function's IAM is scoped to it (its results under the output prefixes, its ledger items by key).
WEB_UPLOAD_PREFIX = "web/"
# Hosted sign-in domain prefix (https://<prefix>.auth.<region>.amazoncognito.com): lower-case letters, digits
# and hyphens, 1-63 characters, not starting or ending with a hyphen; Cognito refuses "aws", "amazon", "cognito".
AUTH_DOMAIN_PREFIX_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
RESERVED_DOMAIN_WORDS = ("aws", "amazon", "cognito")
# Without a configured prefix: this plus the account id (unique per account, and Cognito prefixes need only be
# unique within a region), resolved at deploy time, so two deployers never collide.
DEFAULT_AUTH_DOMAIN_STEM = "speech-to-image-"
# The keys of the page's config.json (docs/WEB-DEPLOY.md): WebStack writes them on AWS, `local serve` locally.
SITE_CONFIG_KEYS = ("apiUrl", "region", "auth", "maxRecordingSeconds", "maxUploadBytes")
AUTH_CONFIG_KEYS = ("domain", "clientId", "redirectUri", "scopes")
AUTH_SCOPES = ("openid", "email")
# How long the temporary password in an invitation (`make add-user`) stays valid.
TEMPORARY_PASSWORD_DAYS = 7


@dataclass(frozen=True)
class WebConfig:
    """What the web page, its API and its sign-in allow."""

    # A recording or file larger than this is refused before it is uploaded (the presigned POST's size limit).
    max_upload_mb: int = 25
    # The page stops recording after this long (a 2-minute prompt is already far longer than CLIP reads).
    max_recording_seconds: int = 120
    # The API's stage throttling for all callers together: steady requests per second, and the burst above it.
    # The page polls one upload every few seconds, so a handful of people stay far below it.
    throttle_rate_limit: float = 10.0
    throttle_burst_limit: int = 20
    # How long presigned upload forms and result links stay valid.
    url_ttl_seconds: int = 900
    # Empty: DEFAULT_AUTH_DOMAIN_STEM + the account id.
    auth_domain_prefix: str = ""

    @property
    def max_upload_bytes(self) -> int:
        """The upload size limit in bytes."""
        return self.max_upload_mb * 1024 * 1024

    @classmethod
    def from_context(cls, get: Callable[[str], Any], pipeline: PipelineConfig) -> WebConfig:
        """Build from a context getter; `pipeline` bounds the upload size by what the pipeline accepts."""
        default = cls()
        config = cls(
            max_upload_mb=_int(get("webMaxUploadMb"), "webMaxUploadMb", default.max_upload_mb, 1, 2048),
            max_recording_seconds=_int(
                get("webMaxRecordingSeconds"), "webMaxRecordingSeconds", default.max_recording_seconds, 5, 3600
            ),
            throttle_rate_limit=_float(
                get("webThrottleRateLimit"), "webThrottleRateLimit", default.throttle_rate_limit, 1.0, 10_000.0
            ),
            throttle_burst_limit=_int(
                get("webThrottleBurstLimit"), "webThrottleBurstLimit", default.throttle_burst_limit, 1, 5000
            ),
            # S3 presigned URLs made with a role's temporary credentials stop working when those expire anyway.
            url_ttl_seconds=_int(get("webUrlTtlSeconds"), "webUrlTtlSeconds", default.url_ttl_seconds, 60, 3600),
            auth_domain_prefix=_auth_domain_prefix(get("webAuthDomainPrefix")),
        )
        if config.max_upload_mb > pipeline.max_media_mb:
            raise ConfigError(
                f"context 'webMaxUploadMb'={config.max_upload_mb} is more than 'maxMediaMb'={pipeline.max_media_mb}: "
                "the pipeline would refuse such an upload after it was stored; lower webMaxUploadMb or raise maxMediaMb"
            )
        if config.throttle_burst_limit < config.throttle_rate_limit:
            raise ConfigError(
                f"context 'webThrottleBurstLimit'={config.throttle_burst_limit} is below 'webThrottleRateLimit'="
                f"{config.throttle_rate_limit:g}: the burst must hold at least one second of the steady rate"
            )
        return config


def _auth_domain_prefix(value: Any) -> str:
    text = _str(value, "webAuthDomainPrefix", "", AUTH_DOMAIN_PREFIX_RE, "1-63 lower-case letters, digits, hyphens")
    assert text is not None
    reserved = [word for word in RESERVED_DOMAIN_WORDS if word in text]
    if reserved:
        raise ConfigError(
            f"context 'webAuthDomainPrefix'={text!r} contains {reserved[0]!r}, which Cognito refuses in a domain "
            "prefix; choose another (cdk -c webAuthDomainPrefix=...)"
        )
    return text


def web_api_environment(
    config: PipelineConfig, web: WebConfig, buckets: Mapping[BucketRole, str], ledger_table: str
) -> dict[str, str]:
    """The environment of the web API handler (lambdas/web_api, docs/API.md "Deployment"), given real names.

    The pipeline handlers' common block (lambdas/pipeline_common's settings base reads it), the media formats
    transcribe_trigger accepts, and the web limits.
    """
    return common_environment(buckets, ledger_table) | {
        "WEB_UPLOAD_PREFIX": WEB_UPLOAD_PREFIX,
        "WEB_MAX_UPLOAD_BYTES": str(web.max_upload_bytes),
        "WEB_MAX_RECORDING_SECONDS": str(web.max_recording_seconds),
        "WEB_URL_TTL_SECONDS": str(web.url_ttl_seconds),
        # The formats the pipeline transcribes: anything else is refused before it is uploaded.
        "MEDIA_FORMATS": ",".join(config.media_formats),
    }
