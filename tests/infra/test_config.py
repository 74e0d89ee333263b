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
        invokeSdConcurrency="none",
        languageCode="auto",
        languageOptions='["en-US", "fr-FR"]',
        imageParameters='{"seed": 7, "guidance_scale": "9"}',
    )
    assert config.media_formats == ("mp3", "wav")
    assert config.max_media_bytes == 100 * 1024 * 1024
    assert config.invoke_sd_concurrency is None
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
