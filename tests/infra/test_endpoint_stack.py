"""HuggingFaceModelEndpoint: model, endpoint config and endpoint; scoped role; deployable alone."""

from __future__ import annotations

import json

import pytest

from infra.components.sd_endpoint import DLC_REPOSITORY, DLC_TAG
from infra.config import ConfigError
from infra.nag import render_intrinsic

from .conftest import REGION, Synth

# Cross-checked with the sagemaker SDK's offline catalogue (FACTS.md):
# image_uris.retrieve("huggingface", region="eu-west-1", version="4.49.0",
#   base_framework_version="pytorch2.6.0", py_version="py312", image_scope="inference",
#   instance_type="ml.g4dn.xlarge")
EXPECTED_IMAGE = (
    "763104351884.dkr.ecr.eu-west-1.<AWS::URLSuffix>/huggingface-pytorch-inference:"
    "2.6.0-transformers4.49.0-gpu-py312-cu124-ubuntu22.04"
)


def only(synth: Synth, resource_type: str) -> dict:
    found = synth.endpoint_template.find_resources(resource_type)
    assert len(found) == 1, f"expected one {resource_type}"
    return next(iter(found.values()))


def model_bucket_import(synth: Synth) -> dict:
    model = only(synth, "AWS::SageMaker::Model")
    return model["Properties"]["PrimaryContainer"]["ModelDataUrl"]["Fn::Join"][1][1]


def test_model_runs_the_hugging_face_pytorch_gpu_dlc_of_the_region(synth: Synth) -> None:
    container = only(synth, "AWS::SageMaker::Model")["Properties"]["PrimaryContainer"]
    assert render_intrinsic(container["Image"]) == EXPECTED_IMAGE
    assert f"{DLC_REPOSITORY}:{DLC_TAG}" in EXPECTED_IMAGE


def test_image_account_is_the_regions_own_without_a_hand_written_table(make_synth) -> None:
    # ap-east-1's DLC images live in a different AWS account than most regions'.
    other = make_synth(region="ap-east-1")
    container = only(other, "AWS::SageMaker::Model")["Properties"]["PrimaryContainer"]
    assert render_intrinsic(container["Image"]).startswith("871362719292.dkr.ecr.ap-east-1.")


def test_a_region_without_a_known_dlc_account_gets_a_clear_error(make_synth) -> None:
    with pytest.raises(ConfigError, match=r"af-south-1.*another region"):
        make_synth(region="af-south-1")


def test_model_data_is_the_archive_in_infra_stacks_model_bucket(synth: Synth, synth_variant: Synth) -> None:
    container = only(synth, "AWS::SageMaker::Model")["Properties"]["PrimaryContainer"]
    url = container["ModelDataUrl"]["Fn::Join"][1]
    assert url[0] == "s3://"
    assert "Fn::ImportValue" in url[1], "the bucket belongs to InfraStack"
    assert url[2] == "/models/stable-diffusion-v1-4/model.tar.gz"
    variant = only(synth_variant, "AWS::SageMaker::Model")["Properties"]["PrimaryContainer"]
    assert variant["ModelDataUrl"]["Fn::Join"][1][2] == "/models/custom/model.tar.gz"


def test_container_environment_serves_code_inference_py_with_one_worker(synth: Synth) -> None:
    env = only(synth, "AWS::SageMaker::Model")["Properties"]["PrimaryContainer"]["Environment"]
    assert env["SAGEMAKER_PROGRAM"] == "inference.py"
    assert env["SAGEMAKER_MODEL_SERVER_WORKERS"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["SAGEMAKER_REGION"] == REGION


def test_endpoint_config_sizes_instance_and_timeouts_for_a_4_gb_model(synth: Synth, synth_variant: Synth) -> None:
    (variant,) = only(synth, "AWS::SageMaker::EndpointConfig")["Properties"]["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g4dn.xlarge"
    assert variant["InitialInstanceCount"] == 1
    assert variant["ModelDataDownloadTimeoutInSeconds"] >= 900
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] >= 600
    (other,) = only(synth_variant, "AWS::SageMaker::EndpointConfig")["Properties"]["ProductionVariants"]
    assert other["InstanceType"] == "ml.g5.xlarge"


def test_a_realtime_endpoint_runs_min_instances(make_synth) -> None:
    two = make_synth(endpointMode="realtime", minInstances="2", maxInstances="2")
    (variant,) = only(two, "AWS::SageMaker::EndpointConfig")["Properties"]["ProductionVariants"]
    assert variant["InitialInstanceCount"] == 2
    # No auto scaling in realtime mode: the count is what the endpoint config says.
    assert two.endpoint_template.find_resources("AWS::ApplicationAutoScaling::ScalableTarget") == {}


def test_endpoint_has_the_configured_name(synth: Synth, synth_variant: Synth) -> None:
    assert only(synth, "AWS::SageMaker::Endpoint")["Properties"]["EndpointName"] == "speech-to-image-sd"
    assert only(synth_variant, "AWS::SageMaker::Endpoint")["Properties"]["EndpointName"] == "My-SD-Endpoint"


def role_statements(synth: Synth) -> set[tuple[str, str]]:
    """(action, resource) pairs of the execution role's policy; the model object (imported) reads as MODEL."""
    policy = only(synth, "AWS::IAM::Policy")
    granted = set()
    for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for resource in resources:
            text = json.dumps(resource)
            # The model bucket is imported from InfraStack; its exact key is checked below.
            name = "MODEL" if "BucketsModel" in text else render_intrinsic(resource)
            granted |= {(action, name) for action in actions}
    return granted


def realtime_role_statements(synth: Synth) -> set[tuple[str, str]]:
    """Read the one model archive, pull the DLC, write its own log group: all a real-time endpoint's role may do."""
    endpoint = synth.endpoint
    log_group = f"<{endpoint.get_logical_id(endpoint.sd_endpoint.log_group.node.default_child)}.Arn>"
    repo = f"arn:<AWS::Partition>:ecr:{REGION}:763104351884:repository/{DLC_REPOSITORY}"
    return {
        ("s3:GetObject", "MODEL"),
        ("ecr:BatchCheckLayerAvailability", repo),
        ("ecr:GetDownloadUrlForLayer", repo),
        ("ecr:BatchGetImage", repo),
        ("ecr:GetAuthorizationToken", "*"),
        ("logs:CreateLogStream", log_group),
        ("logs:PutLogEvents", log_group),
        ("logs:CreateLogGroup", log_group),
        ("logs:DescribeLogStreams", log_group),
        # AWS's documented execution-role set (docs/DEPLOY-CHECKLIST.md); the action takes no resource ARN.
        ("cloudwatch:PutMetricData", "*"),
    }


def test_execution_role_reads_one_object_pulls_the_dlc_and_writes_its_logs(synth_realtime: Synth) -> None:
    synth = synth_realtime
    role = only(synth, "AWS::IAM::Role")
    assert "ManagedPolicyArns" not in role["Properties"]
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "sagemaker.amazonaws.com"
    }
    assert role_statements(synth) == realtime_role_statements(synth)
    policy = only(synth, "AWS::IAM::Policy")
    model_statement = next(
        s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Action"] == "s3:GetObject"
    )
    resource = model_statement["Resource"]["Fn::Join"][1]
    assert resource[-1] == "/models/stable-diffusion-v1-4/model.tar.gz", "exactly the model object, no wildcard"


def test_endpoint_log_group_has_retention_and_goes_with_the_stack(synth: Synth) -> None:
    group = only(synth, "AWS::Logs::LogGroup")
    assert group["Properties"]["LogGroupName"] == "/aws/sagemaker/Endpoints/speech-to-image-sd"
    assert group["Properties"]["RetentionInDays"] == 14
    assert group["DeletionPolicy"] == "Delete"


def test_endpoint_stack_can_be_destroyed_without_touching_data(synth_realtime: Synth) -> None:
    synth = synth_realtime
    types = {r["Type"] for r in synth.endpoint_template.to_json()["Resources"].values()}
    assert types == {
        "AWS::IAM::Role",
        "AWS::IAM::Policy",
        "AWS::Logs::LogGroup",
        "AWS::SageMaker::Model",
        "AWS::SageMaker::EndpointConfig",
        "AWS::SageMaker::Endpoint",
        "AWS::CloudWatch::Alarm",
    }
    # InfraStack deploys first and alone: it depends on nothing in the endpoint stack.
    assert synth.endpoint.dependencies == [synth.infra]
    assert synth.infra.dependencies == []
