"""WebConfig: the web app's limits and sign-in domain from CDK context, with errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.config import ConfigError, PipelineConfig
from infra.pipeline import BucketRole
from infra.web_config import WebConfig, web_api_environment

from .conftest import CDK_CONTEXT
from .web_support import synth_web


def web_from(pipeline: PipelineConfig | None = None, **context: object) -> WebConfig:
    return WebConfig.from_context(context.get, pipeline or PipelineConfig())


def test_cdk_json_context_equals_the_documented_defaults() -> None:
    assert WebConfig.from_context(CDK_CONTEXT.get, PipelineConfig()) == WebConfig()


def test_cli_strings_are_parsed() -> None:
    web = web_from(
        webMaxUploadMb="10",
        webMaxRecordingSeconds="30",
        webThrottleRateLimit="2.5",
        webThrottleBurstLimit="5",
        webUrlTtlSeconds="300",
        webAuthDomainPrefix="my-pictures-2026",
    )
    assert web == WebConfig(
        max_upload_mb=10,
        max_recording_seconds=30,
        throttle_rate_limit=2.5,
        throttle_burst_limit=5,
        url_ttl_seconds=300,
        auth_domain_prefix="my-pictures-2026",
    )
    assert web.max_upload_bytes == 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"webMaxUploadMb": "0"}, r"'webMaxUploadMb'='0' is out of range"),
        ({"webMaxUploadMb": "600"}, r"more than 'maxMediaMb'=500.*lower webMaxUploadMb or raise maxMediaMb"),
        ({"webMaxRecordingSeconds": "long"}, r"'webMaxRecordingSeconds'='long' is not a whole number"),
        ({"webThrottleRateLimit": "0"}, r"'webThrottleRateLimit'='0' is out of range"),
        ({"webThrottleRateLimit": "50", "webThrottleBurstLimit": "10"}, r"burst must hold at least one second"),
        ({"webUrlTtlSeconds": "86400"}, r"'webUrlTtlSeconds'='86400' is out of range: expected 60..3600"),
        ({"webAuthDomainPrefix": "My_Pictures"}, r"'webAuthDomainPrefix'='My_Pictures' is invalid.*cdk -c"),
        ({"webAuthDomainPrefix": "-pictures"}, r"is invalid"),
        ({"webAuthDomainPrefix": "my-aws-pictures"}, r"contains 'aws', which Cognito refuses"),
        ({"webAuthDomainPrefix": "cognito-login"}, r"contains 'cognito'"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(context: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        web_from(**context)


def test_the_upload_limit_follows_the_pipelines_own_limit() -> None:
    assert web_from(PipelineConfig(max_media_mb=1000), webMaxUploadMb="600").max_upload_mb == 600


def test_the_handler_environment_names_buckets_table_and_limits() -> None:
    environment = web_api_environment(
        PipelineConfig(media_formats=("mp3", "webm")),
        WebConfig(max_upload_mb=2, max_recording_seconds=60, url_ttl_seconds=120),
        {BucketRole.INPUT: "in", BucketRole.OUTPUT: "out"},
        "ledger",
    )
    assert environment == {
        "INPUT_BUCKET": "in",
        "OUTPUT_BUCKET": "out",
        "LEDGER_TABLE": "ledger",
        "IMAGE_PREFIX": "images/",
        "ERROR_PREFIX": "errors/",
        "JOB_NAME_PREFIX": "s2i-",
        "METRICS_NAMESPACE": "SpeechToImage",
        "WEB_UPLOAD_PREFIX": "web/",
        "WEB_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
        "WEB_MAX_RECORDING_SECONDS": "60",
        "WEB_URL_TTL_SECONDS": "120",
        "MEDIA_FORMATS": "mp3,webm",
    }


def test_the_sign_in_domain_is_the_configured_prefix_or_one_per_account(tmp_path: Path) -> None:
    default = synth_web(tmp_path / "default")
    _, domain = default.one("AWS::Cognito::UserPoolDomain")
    # Unique per account (Cognito prefixes must be unique per region), resolved at deploy time.
    assert domain["Properties"]["Domain"] == {"Fn::Join": ["", ["speech-to-image-", {"Ref": "AWS::AccountId"}]]}
    configured = synth_web(tmp_path / "configured", webAuthDomainPrefix="my-pictures-2026")
    _, domain = configured.one("AWS::Cognito::UserPoolDomain")
    assert domain["Properties"]["Domain"] == "my-pictures-2026"
