"""modelSource, hfModelId, hfModelRevision, hfTokenSecretName and imageParameters: parsed once, clear errors."""

from __future__ import annotations

import re

import pytest

from infra.config import ConfigError, ImageParameters, PipelineConfig
from infra.model_config import ModelSource

SHA = "b261bac6fd2cf515557d5d0707481eafa0485ec2"


def config_from(**context: object) -> PipelineConfig:
    return PipelineConfig.from_context(context.get)


def test_the_default_source_is_the_s3_archive() -> None:
    assert config_from().model == ModelSource(source="s3")
    assert not config_from(modelSource="s3", hfModelId="", hfTokenSecretName="").model.is_hub


def test_a_hub_model_is_an_id_and_a_commit_with_an_optional_token_secret() -> None:
    model = config_from(modelSource="hub", hfModelId="stabilityai/sd-turbo", hfModelRevision=SHA).model
    assert (model.is_hub, model.hf_model_id, model.hf_model_revision, model.hf_token_secret_name) == (
        True,
        "stabilityai/sd-turbo",
        SHA,
        None,
    )
    gated = config_from(
        modelSource="hub", hfModelId="org/gated-model", hfModelRevision=SHA, hfTokenSecretName="speech-to-image/hf"
    )
    assert gated.model.hf_token_secret_name == "speech-to-image/hf"


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"modelSource": "huggingface"}, "choose one of ['s3', 'hub']"),
        ({"modelSource": "hub", "hfModelRevision": SHA}, "needs 'hfModelId'"),
        ({"modelSource": "hub", "hfModelId": "stabilityai/sd-turbo"}, "needs 'hfModelRevision'"),
        ({"modelSource": "hub", "hfModelId": "sd-turbo", "hfModelRevision": SHA}, "org/name"),
        ({"modelSource": "hub", "hfModelId": "a/b/c", "hfModelRevision": SHA}, "org/name"),
        ({"modelSource": "hub", "hfModelId": "org/x", "hfModelRevision": "main"}, "not a commit sha"),
        ({"modelSource": "hub", "hfModelId": "org/x", "hfModelRevision": SHA[:7]}, "full 40-character commit"),
        ({"hfModelId": "stabilityai/sd-turbo"}, "only apply to modelSource=hub"),
        ({"hfTokenSecretName": "hf-token"}, "'hfTokenSecretName' only apply to modelSource=hub"),
        (
            {"modelSource": "hub", "hfModelId": "org/x", "hfModelRevision": SHA, "hfTokenSecretName": "arn:aws:x"},
            "give the secret's NAME",
        ),
        (
            {"modelSource": "hub", "hfModelId": "org/x", "hfModelRevision": SHA, "hfTokenSecretName": "my token"},
            "1-512",
        ),
        (
            {"modelSource": "hub", "hfModelId": "org/x", "hfModelRevision": SHA, "hfTokenSecretName": "hf-secret"},
            "hyphen and six characters",
        ),
    ],
)
def test_bad_model_context_names_the_key_and_the_fix(context: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from(**context)


def test_a_missing_revision_says_where_to_find_the_commit() -> None:
    with pytest.raises(ConfigError, match=re.escape("https://huggingface.co/stabilityai/sd-turbo/commits/main")):
        config_from(modelSource="hub", hfModelId="stabilityai/sd-turbo")


def test_unset_image_parameters_are_left_to_the_model_family() -> None:
    # Nothing configured: the request carries no size, steps or guidance, so SDXL draws 1024x1024 and a
    # turbo model 1-4 steps at guidance 0 (the endpoint's per-family defaults).
    assert config_from().image == ImageParameters()
    assert ImageParameters().as_dict() == {}
    only_steps = config_from(imageParameters='{"num_inference_steps": 4}').image
    assert only_steps.as_dict() == {"num_inference_steps": 4}
    zero_guidance = config_from(imageParameters={"guidance_scale": 0}).image
    assert zero_guidance.as_dict() == {"guidance_scale": 0.0}, "guidance 0 (turbo) is a value, not 'unset'"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ('{"height": 500}', "multiple of 8"),
        ('{"width": 2048}', "64..1024"),
        ('{"num_inference_steps": 0}', "1..150"),
        ('{"guidance_scale": 31}', "0.0..30.0"),
    ],
)
def test_configured_image_parameters_are_still_checked(parameters: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from(imageParameters=parameters)


@pytest.mark.parametrize(("mode", "limit"), [("async", 900), ("realtime", 60)])
def test_the_time_limit_follows_the_endpoint_mode(mode: str, limit: int) -> None:
    assert config_from(endpointMode=mode).time_limit_seconds == limit
