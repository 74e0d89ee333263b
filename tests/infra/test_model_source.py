"""Model source in the endpoint stack: an S3 archive (network-isolated) or a pinned Hub revision (code-only archive)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cfnlint.api import lint

from infra.components.sd_endpoint import (
    HUB_MODEL_DOWNLOAD_TIMEOUT_S,
    HUB_STARTUP_HEALTH_CHECK_TIMEOUT_S,
    MODEL_DOWNLOAD_TIMEOUT_S,
    STARTUP_HEALTH_CHECK_TIMEOUT_S,
)
from infra.nag import render_intrinsic
from infra.pipeline import Handler

from .conftest import ACCOUNT, REGION, Synth
from .support import function

MODEL_ID = "stabilityai/sd-turbo"
REVISION = "b261bac6fd2cf515557d5d0707481eafa0485ec2"
SECRET = "speech-to-image/hf-token"
CODE_ONLY_KEY = "models/code-0123456789abcdef/model.tar.gz"
HUB = {"modelSource": "hub", "hfModelId": MODEL_ID, "hfModelRevision": REVISION, "modelDataKey": CODE_ONLY_KEY}
SECRET_ARN = f"arn:<AWS::Partition>:secretsmanager:{REGION}:{ACCOUNT}:secret:{SECRET}"


@pytest.fixture(scope="module")
def hub(make_synth: Callable[..., Synth]) -> Synth:
    """The hub source with a token secret, asynchronous endpoint."""
    return make_synth(**HUB, hfTokenSecretName=SECRET)


@pytest.fixture(scope="module")
def hub_realtime(make_synth: Callable[..., Synth]) -> Synth:
    """The hub source with no token (a public model), real-time endpoint."""
    return make_synth(**HUB, endpointMode="realtime")


def one(synth: Synth, resource_type: str) -> tuple[str, dict[str, Any]]:
    found = synth.endpoint_template.find_resources(resource_type)
    assert len(found) == 1, f"expected one {resource_type}"
    return next(iter(found.items()))


def container(synth: Synth) -> dict[str, Any]:
    return one(synth, "AWS::SageMaker::Model")[1]["Properties"]["PrimaryContainer"]


def variant(synth: Synth) -> dict[str, Any]:
    (production,) = one(synth, "AWS::SageMaker::EndpointConfig")[1]["Properties"]["ProductionVariants"]
    return production


def statements(synth: Synth) -> Iterator[dict[str, Any]]:
    """Every IAM statement of both stacks' policies."""
    for template in (synth.infra_template, synth.endpoint_template):
        for policy in template.find_resources("AWS::IAM::Policy").values():
            yield from policy["Properties"]["PolicyDocument"]["Statement"]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_an_s3_model_runs_network_isolated_and_offline(synth: Synth, synth_realtime: Synth) -> None:
    assert one(synth, "AWS::SageMaker::Model")[1]["Properties"]["EnableNetworkIsolation"] is True
    env = container(synth)["Environment"]
    assert env["SD_MODEL_SOURCE"] == "s3"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert not {key for key in env if key.startswith("SD_HUB_") or key.startswith("HF_MODEL")}
    assert (env["SD_INSTANCE_TYPE"], env["SD_TIME_LIMIT_SECONDS"]) == ("ml.g4dn.xlarge", "900")
    # SageMaker ends a real-time invocation at 60 s: that is the budget model_fn sizes requests to.
    assert container(synth_realtime)["Environment"]["SD_TIME_LIMIT_SECONDS"] == "60"


def test_a_hub_model_reaches_the_network_and_names_its_pinned_revision(hub: Synth, hub_realtime: Synth) -> None:
    assert one(hub, "AWS::SageMaker::Model")[1]["Properties"]["EnableNetworkIsolation"] is False
    env = container(hub)["Environment"]
    assert (env["SD_MODEL_SOURCE"], env["SD_HUB_MODEL_ID"], env["SD_HUB_REVISION"]) == ("hub", MODEL_ID, REVISION)
    assert "HF_HUB_OFFLINE" not in env, "model_fn downloads the weights when the container starts"
    # The toolkit would download the whole repository for HF_MODEL_ID (every variant and checkpoint).
    assert "HF_MODEL_ID" not in env
    assert render_intrinsic(env["SD_HUB_TOKEN_SECRET_ARN"]) == SECRET_ARN
    realtime_env = container(hub_realtime)["Environment"]
    assert "SD_HUB_TOKEN_SECRET_ARN" not in realtime_env, "a public model needs no token"
    assert (realtime_env["SD_TIME_LIMIT_SECONDS"], realtime_env["SD_INSTANCE_TYPE"]) == ("60", "ml.g4dn.xlarge")


def test_the_hub_source_serves_the_code_only_archive_under_model_data_key(hub: Synth) -> None:
    url = container(hub)["ModelDataUrl"]
    assert render_intrinsic(url).endswith(f"/{CODE_ONLY_KEY}")
    # SageMaker still downloads that archive with the role: read access to exactly that object, no wildcard.
    reads = [
        render_intrinsic(resource)
        for statement in statements(hub)
        if "s3:GetObject" in as_list(statement["Action"])
        for resource in as_list(statement["Resource"])
    ]
    model_reads = [resource for resource in reads if "/models/" in resource]
    assert len(model_reads) == 1 and model_reads[0].endswith(f"/{CODE_ONLY_KEY}"), model_reads


def test_the_token_secret_is_read_by_the_endpoint_role_alone_and_only_that_secret(hub: Synth) -> None:
    granted = [s for s in statements(hub) if any(str(a).startswith("secretsmanager:") for a in as_list(s["Action"]))]
    assert len(granted) == 1, granted
    (statement,) = granted
    assert statement["Effect"] == "Allow"
    assert as_list(statement["Action"]) == ["secretsmanager:GetSecretValue"]
    # '-??????' is Secrets Manager's random ARN suffix of this one secret; nothing broader.
    assert [render_intrinsic(r) for r in as_list(statement["Resource"])] == [f"{SECRET_ARN}-??????"]
    role = one(hub, "AWS::IAM::Role")[0]
    policies = hub.endpoint_template.find_resources("AWS::IAM::Policy")
    holders = [p for p in policies.values() if statement in p["Properties"]["PolicyDocument"]["Statement"]]
    assert [holder["Properties"]["Roles"] for holder in holders] == [[{"Ref": role}]]


def test_the_token_never_enters_a_template(hub: Synth) -> None:
    for template in (hub.infra_template, hub.endpoint_template):
        text = json.dumps(template.to_json())
        assert "AWS::SecretsManager::Secret" not in text, "the secret is imported by name, not created"
        assert "{{resolve:secretsmanager" not in text, "no dynamic reference puts the value into a property"


def test_no_secret_grant_without_a_secret(synth: Synth, hub_realtime: Synth) -> None:
    for result in (synth, hub_realtime):
        assert not [s for s in statements(result) if any("secretsmanager" in str(a) for a in as_list(s["Action"]))]


def test_startup_timeouts_are_sized_for_where_the_weights_come_from(synth: Synth, hub: Synth) -> None:
    s3_variant, hub_variant = variant(synth), variant(hub)
    assert (
        s3_variant["ModelDataDownloadTimeoutInSeconds"],
        s3_variant["ContainerStartupHealthCheckTimeoutInSeconds"],
    ) == (MODEL_DOWNLOAD_TIMEOUT_S, STARTUP_HEALTH_CHECK_TIMEOUT_S)
    assert (
        hub_variant["ModelDataDownloadTimeoutInSeconds"],
        hub_variant["ContainerStartupHealthCheckTimeoutInSeconds"],
    ) == (HUB_MODEL_DOWNLOAD_TIMEOUT_S, HUB_STARTUP_HEALTH_CHECK_TIMEOUT_S)
    # The hub's weights download inside the health-check window, S3's before it.
    assert HUB_STARTUP_HEALTH_CHECK_TIMEOUT_S > STARTUP_HEALTH_CHECK_TIMEOUT_S
    for production in (s3_variant, hub_variant):
        for key in ("ModelDataDownloadTimeoutInSeconds", "ContainerStartupHealthCheckTimeoutInSeconds"):
            assert 60 <= production[key] <= 3600, "SageMaker's ProductionVariant allows 60..3600 s"


def test_the_endpoint_time_limit_is_the_async_invocation_timeout_invoke_sd_sends(
    synth: Synth, synth_realtime: Synth
) -> None:
    for result in (synth, synth_realtime):
        invoke_env = function(result, Handler.INVOKE_SD)[1]["Properties"]["Environment"]["Variables"]
        assert invoke_env["INVOCATION_TIMEOUT_SECONDS"] == container(result)["Environment"]["SD_TIME_LIMIT_SECONDS"]


def test_a_new_model_data_key_is_a_new_sagemaker_model_behind_a_new_endpoint_config(
    synth: Synth, make_synth: Callable[..., Synth]
) -> None:
    other = make_synth(modelDataKey="models/sdxl-fedcba9876543210/model.tar.gz")
    for result, key in (
        (synth, "models/stable-diffusion-v1-4/model.tar.gz"),
        (other, other.endpoint.config.model_data_key),
    ):
        model_id, model = one(result, "AWS::SageMaker::Model")
        assert render_intrinsic(model["Properties"]["PrimaryContainer"]["ModelDataUrl"]).endswith(f"/{key}")
        # No physical name: a changed container (ModelDataUrl) makes CloudFormation create a new model under a
        # new generated name rather than fail or swap the weights under the running endpoint.
        assert "ModelName" not in model["Properties"]
        config_id, config = one(result, "AWS::SageMaker::EndpointConfig")
        assert "EndpointConfigName" not in config["Properties"]
        (production,) = config["Properties"]["ProductionVariants"]
        # The new model's name is a new config (configs are immutable), which the endpoint then switches to.
        assert production["ModelName"] == {"Fn::GetAtt": [model_id, "ModelName"]}
        endpoint = one(result, "AWS::SageMaker::Endpoint")[1]["Properties"]
        assert endpoint["EndpointConfigName"] == {"Fn::GetAtt": [config_id, "EndpointConfigName"]}
    assert container(synth)["ModelDataUrl"] != container(other)["ModelDataUrl"]


def test_the_hub_source_passes_cdk_nag_and_cfn_lint(hub: Synth, hub_realtime: Synth) -> None:
    for result in (hub, hub_realtime):
        report = json.loads((result.assembly_dir / "validation-report.json").read_text())
        assert report["pluginReports"] == []
        template = (result.assembly_dir / "HuggingFaceModelEndpoint.template.json").read_text()
        errors = [f"{m.rule.id}: {m.message}" for m in lint(template, regions=[REGION]) if m.rule.severity == "error"]
        assert errors == []
