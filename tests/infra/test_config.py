"""PipelineConfig: one typed configuration from CDK context, with clear errors."""

from __future__ import annotations

import re

import pytest

from infra.config import ConfigError, ImageParameters, PipelineConfig

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
    settings = {key for key in CDK_CONTEXT if not key.startswith("@")}
    assert settings <= set(asked), f"cdk.json keys nobody reads: {settings - set(asked)}"
