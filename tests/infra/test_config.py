"""PipelineConfig: one typed configuration from CDK context, with clear errors."""

from __future__ import annotations

import re

import pytest

from infra.config import ConfigError, ImageParameters, PipelineConfig
from infra.web_config import WebConfig

from .conftest import CDK_CONTEXT, REPO


def config_from(**context: object) -> PipelineConfig:
    return PipelineConfig.from_context(context.get)


def test_cdk_json_context_equals_the_documented_defaults() -> None:
    assert PipelineConfig.from_context(CDK_CONTEXT.get) == PipelineConfig()


def test_cli_strings_are_parsed_like_json_values() -> None:
    config = config_from(
        mediaFormats="MP3, wav",
        maxMediaMb="100",
        invokeSdConcurrency="8",
        transcribeTriggerConcurrency="1000",
        stuckAfterMinutes="10080",
        languageCode="auto",
        languageOptions='["en-US", "fr-FR"]',
        imageParameters='{"seed": 7, "guidance_scale": "9"}',
    )
    assert config.media_formats == ("mp3", "wav")
    assert config.max_media_bytes == 100 * 1024 * 1024
    assert (config.invoke_sd_concurrency, config.transcribe_trigger_concurrency) == (8, 1000)
    assert config.stuck_after_minutes == 7 * 24 * 60
    assert config.language_options == ("en-US", "fr-FR")
    assert config.image == ImageParameters(seed=7, guidance_scale=9.0)
    assert config.image.as_dict()["seed"] == 7
    assert config_from(minTranscriptConfidence="0.5", alarmEmail="ops@example.com").min_transcript_confidence == 0.5
    assert config_from(alarmEmail="ops@example.com").alarm_email == "ops@example.com"
    assert config_from(alarmEmail="").alarm_email is None, "cdk.json's empty default means no subscription"
    assert "seed" not in ImageParameters().as_dict(), "no fixed seed unless configured"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("removal", "delete", "choose one of"),
        ("mediaFormats", "mp3,aiff", "Amazon Transcribe accepts"),
        ("maxMediaMb", "0", "out of range"),
        ("maxMediaMb", "lots", "not a whole number"),
        ("logRetentionDays", "10", "choose one of"),
        ("endpointName", "bad_name!", "letters, digits and hyphens"),
        ("languageCode", "english", "Transcribe language code"),
        ("languageOptions", "en-US", "at least two"),
        ("imageParameters", '{"height": 500}', "multiple of 8"),
        ("imageParameters", '{"steps": 5}', "unknown keys"),
        ("imageParameters", "{not json", "not valid JSON"),
        ("modelDataKey", "model.zip", "ending in .tar.gz"),
        ("account", "12345", "12-digit"),
        ("invokeSdConcurrency", "0", "out of range"),
        # SQS event source mappings refuse MaximumConcurrency 1: the deploy would fail, not synth.
        ("invokeSdConcurrency", "1", "expected 2..1000"),
        ("invokeSdConcurrency", "1001", "expected 2..1000"),
        ("invokeSdConcurrency", "many", "not a whole number"),
        ("transcribeTriggerConcurrency", "1", "expected 2..1000"),
        ("transcribeTriggerConcurrency", "1001", "expected 2..1000"),
        ("stuckAfterMinutes", "14", "expected 15..10080"),
        ("stuckAfterMinutes", "10081", "expected 15..10080"),
        ("stuckAfterMinutes", "soon", "not a whole number"),
        ("minTranscriptConfidence", "1.5", "out of range"),
        ("minTranscriptConfidence", "-0.1", "out of range"),
        ("minTranscriptConfidence", "high", "not a number"),
        ("alarmEmail", "ops.example.com", "an e-mail address"),
        ("alarmEmail", "ops@example", "an e-mail address"),
    ],
)
def test_invalid_context_names_the_key_and_the_fix(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        config_from(**{key: value})
    assert key.split(".")[0] in str(error.value)


@pytest.mark.parametrize("value", ["none", "None", "off", "null"])
def test_switching_invoke_sd_concurrency_off_is_refused_with_the_reason(value: str) -> None:
    # The old "none" meant "reserve nothing"; now nothing is reserved anyway and the queue needs a bound.
    with pytest.raises(ConfigError) as error:
        config_from(invokeSdConcurrency=value)
    message = str(error.value)
    assert "invokeSdConcurrency" in message
    assert "reserves no concurrency" in message, "says why the old switch is gone"
    assert "2..1000" in message, "says what to give instead"


def test_readme_documents_every_context_key() -> None:
    readme = (REPO / "README.md").read_text()
    keys = [key for key in CDK_CONTEXT if not key.startswith("@")] + ["account", "region"]
    missing = [key for key in keys if f"`{key}`" not in readme]
    assert missing == []


def test_every_cdk_json_setting_is_read() -> None:
    asked: list[str] = []

    def get(key: str) -> object:
        asked.append(key)
        return CDK_CONTEXT.get(key)

    PipelineConfig.from_context(get)
    WebConfig.from_context(get, PipelineConfig())  # the web* keys (infra/web_config.py)
    settings = {key for key in CDK_CONTEXT if not key.startswith("@")}
    assert settings <= set(asked), f"cdk.json keys nobody reads: {settings - set(asked)}"


# --- endpoint mode and scaling ---------------------------------------------------------------


def test_the_default_is_an_async_endpoint_that_scales_between_zero_and_one() -> None:
    config = PipelineConfig.from_context(CDK_CONTEXT.get)
    assert (config.endpoint_mode, config.is_async) == ("async", True)
    assert (config.min_instances, config.min_instance_count, config.max_instances) == (None, 0, 1)
    assert (config.request_ttl_minutes, config.scale_in_idle_minutes) == (120, 15)


def test_realtime_mode_keeps_one_instance_by_default() -> None:
    config = config_from(endpointMode="realtime")
    assert (config.is_async, config.min_instance_count) == (False, 1)


def test_endpoint_scaling_keys_are_parsed_from_cli_strings() -> None:
    config = config_from(
        endpointMode="async", minInstances="1", maxInstances="4", requestTtlMinutes="360", scaleInIdleMinutes="5"
    )
    assert (config.min_instance_count, config.max_instances) == (1, 4)
    assert (config.request_ttl_minutes, config.scale_in_idle_minutes) == (360, 5)
    assert config_from(minInstances="none").min_instance_count == 0, "'none' restores the mode's default"
    assert config_from(endpointMode="realtime", minInstances="2", maxInstances="2").min_instance_count == 2


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("endpointMode", "serverless", "choose one of ['async', 'realtime']"),
        ("minInstances", "-1", "expected 0..10"),
        ("minInstances", "11", "expected 0..10"),
        ("minInstances", "one", "not a whole number"),
        ("maxInstances", "0", "expected 1..10"),
        ("maxInstances", "11", "expected 1..10"),
        # InvokeEndpointAsync's RequestTTLSeconds is 60..21600 s.
        ("requestTtlMinutes", "0", "expected 1..360"),
        ("requestTtlMinutes", "361", "expected 1..360"),
        ("scaleInIdleMinutes", "4", "expected 5..1440"),
        ("scaleInIdleMinutes", "1441", "expected 5..1440"),
    ],
)
def test_invalid_endpoint_scaling_values_name_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        config_from(**{key: value})
    assert key in str(error.value)


def test_a_realtime_endpoint_cannot_scale_to_zero() -> None:
    with pytest.raises(ConfigError, match="endpointMode=async") as error:
        config_from(endpointMode="realtime", minInstances="0")
    assert "minInstances" in str(error.value)
    assert config_from(endpointMode="async", minInstances="0").min_instance_count == 0


@pytest.mark.parametrize(
    "context",
    [
        {"minInstances": "2"},  # maxInstances defaults to 1
        {"minInstances": "3", "maxInstances": "2"},
        {"endpointMode": "realtime", "minInstances": "2"},
    ],
)
def test_min_instances_may_not_exceed_max_instances(context: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="more than 'maxInstances'"):
        config_from(**context)
