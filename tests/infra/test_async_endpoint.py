"""The endpoint stack in async mode: S3 in and out, SNS notifications, and scaling to zero and back."""

from __future__ import annotations

import json
from typing import Any

from infra.nag import render_intrinsic

from .conftest import ACCOUNT, Synth
from .test_alarms import alarms_on, assert_notifies, description, topic_id
from .test_endpoint_stack import only, realtime_role_statements, role_statements


def export_of(synth: Synth, construct: Any, attribute: str = "Ref") -> dict[str, str]:
    """The `Fn::ImportValue` by which the endpoint stack reads an InfraStack value (Ref or Arn)."""
    resource_id = synth.infra.get_logical_id(construct.node.default_child)
    value = {"Ref": resource_id} if attribute == "Ref" else {"Fn::GetAtt": [resource_id, attribute]}
    (name,) = [
        output["Export"]["Name"]
        for output in synth.infra_template.find_outputs("*").values()
        if output.get("Export") and output["Value"] == value
    ]
    return {"Fn::ImportValue": name}


def transcripts_arn(synth: Synth) -> str:
    """The transcripts bucket's ARN as the endpoint stack's statements render it (an export name)."""
    return render_intrinsic(export_of(synth, synth.infra.transcript_bucket, "Arn"))


# --- endpoint configuration ----------------------------------------------------------------


def test_endpoint_config_is_asynchronous_with_s3_paths_and_both_topics(synth: Synth) -> None:
    props = only(synth, "AWS::SageMaker::EndpointConfig")["Properties"]
    topics = synth.infra.async_topics
    assert topics is not None
    bucket = export_of(synth, synth.infra.transcript_bucket)
    assert props["AsyncInferenceConfig"] == {
        "OutputConfig": {
            "S3OutputPath": {"Fn::Join": ["", ["s3://", bucket, "/async/outputs/"]]},
            "S3FailurePath": {"Fn::Join": ["", ["s3://", bucket, "/async/failures/"]]},
            "NotificationConfig": {
                "SuccessTopic": export_of(synth, topics.success),
                "ErrorTopic": export_of(synth, topics.error),
            },
        },
        # One request at a time per GPU.
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 1},
    }
    (variant,) = props["ProductionVariants"]
    assert variant["InitialInstanceCount"] == 1, "SageMaker requires >= 1; scaling takes it to zero"


def test_an_async_endpoint_with_a_warm_minimum_starts_with_it(make_synth) -> None:
    warm = make_synth(minInstances="2", maxInstances="3")
    (variant,) = only(warm, "AWS::SageMaker::EndpointConfig")["Properties"]["ProductionVariants"]
    assert variant["InitialInstanceCount"] == 2
    target = only(warm, "AWS::ApplicationAutoScaling::ScalableTarget")["Properties"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 3)


def test_execution_role_adds_exactly_the_async_statements(synth: Synth) -> None:
    topics = synth.infra.async_topics
    assert topics is not None
    bucket = transcripts_arn(synth)
    key = render_intrinsic(export_of(synth, topics.key, "Arn"))
    assert role_statements(synth) == realtime_role_statements(synth) | {
        ("s3:GetObject", f"{bucket}/async/requests/*"),
        ("s3:PutObject", f"{bucket}/async/outputs/*"),
        ("s3:PutObject", f"{bucket}/async/failures/*"),
        ("s3:AbortMultipartUpload", f"{bucket}/async/outputs/*"),
        ("s3:AbortMultipartUpload", f"{bucket}/async/failures/*"),
        ("sns:Publish", render_intrinsic(export_of(synth, topics.success))),
        ("sns:Publish", render_intrinsic(export_of(synth, topics.error))),
        # SageMaker publishes with this role: the encrypted topics need their key.
        ("kms:GenerateDataKey*", key),
        ("kms:Decrypt", key),
    }


def test_model_and_endpoint_wait_for_the_roles_policy(synth: Synth, synth_realtime: Synth) -> None:
    # CreateEndpoint publishes a TestNotification with the role: it fails if the policy is not attached yet.
    for result in (synth, synth_realtime):
        policy_id = result.endpoint.get_logical_id(
            result.endpoint.sd_endpoint.role.node.find_child("DefaultPolicy").node.default_child
        )
        for resource_type in ("AWS::SageMaker::Model", "AWS::SageMaker::Endpoint"):
            assert policy_id in only(result, resource_type)["DependsOn"], resource_type


def test_endpoint_keeps_its_scaled_instance_count_across_updates(synth: Synth, synth_realtime: Synth) -> None:
    assert only(synth, "AWS::SageMaker::Endpoint")["Properties"]["RetainAllVariantProperties"] is True
    assert "RetainAllVariantProperties" not in only(synth_realtime, "AWS::SageMaker::Endpoint")["Properties"]


# --- scaling -------------------------------------------------------------------------------


def test_scalable_target_is_the_variants_instance_count_from_min_to_max(
    synth: Synth, synth_async_variant: Synth
) -> None:
    for result, name, bounds in (
        (synth, "speech-to-image-sd", (0, 1)),
        (synth_async_variant, "My-SD-Endpoint", (1, 4)),
    ):
        target = only(result, "AWS::ApplicationAutoScaling::ScalableTarget")
        props = target["Properties"]
        assert props["ServiceNamespace"] == "sagemaker"
        assert props["ResourceId"] == f"endpoint/{name}/variant/AllTraffic"
        assert props["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
        assert (props["MinCapacity"], props["MaxCapacity"]) == bounds
        endpoint_id = result.endpoint.get_logical_id(result.endpoint.sd_endpoint.endpoint)
        assert endpoint_id in target["DependsOn"], "registers only once the endpoint exists"
        assert render_intrinsic(props["RoleARN"]).endswith(
            f":iam::{ACCOUNT}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
            "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
        )


def policies(synth: Synth, policy_type: str) -> list[dict[str, Any]]:
    found = synth.endpoint_template.find_resources(
        "AWS::ApplicationAutoScaling::ScalingPolicy", {"Properties": {"PolicyType": policy_type}}
    )
    return [policy["Properties"] for policy in found.values()]


def target_id(synth: Synth) -> str:
    return synth.endpoint.get_logical_id(synth.endpoint.scaling.target.node.default_child)


def test_target_tracking_follows_the_backlog_per_instance_by_endpoint_name_only(
    synth: Synth, synth_async_variant: Synth
) -> None:
    for result, name, idle in ((synth, "speech-to-image-sd", 15), (synth_async_variant, "My-SD-Endpoint", 30)):
        (props,) = policies(result, "TargetTrackingScaling")
        assert props["ScalingTargetId"] == {"Ref": target_id(result)}
        config = props["TargetTrackingScalingPolicyConfiguration"]
        assert config["CustomizedMetricSpecification"] == {
            "Namespace": "AWS/SageMaker",
            "MetricName": "ApproximateBacklogSizePerInstance",
            # EndpointName ONLY: with a VariantName (or `Endpoint`) the metric has no data and nothing scales.
            "Dimensions": [{"Name": "EndpointName", "Value": name}],
            "Statistic": "Average",
        }
        assert 0 < config["TargetValue"] <= 5
        assert config["ScaleInCooldown"] == idle * 60


def test_a_step_policy_wakes_the_endpoint_from_zero(synth: Synth) -> None:
    (props,) = policies(synth, "StepScaling")
    assert props["ScalingTargetId"] == {"Ref": target_id(synth)}
    step = props["StepScalingPolicyConfiguration"]
    assert step["AdjustmentType"] == "ChangeInCapacity"
    assert step["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    (alarm_id,) = synth.endpoint_template.find_resources(
        "AWS::CloudWatch::Alarm", {"Properties": {"MetricName": "HasBacklogWithoutCapacity"}}
    )
    alarm = synth.endpoint_template.find_resources("AWS::CloudWatch::Alarm")[alarm_id]["Properties"]
    assert alarm["Namespace"] == "AWS/SageMaker"
    assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": "speech-to-image-sd"}]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
    assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (60, 2, 2)
    policy_id = next(
        iter(
            synth.endpoint_template.find_resources(
                "AWS::ApplicationAutoScaling::ScalingPolicy", {"Properties": {"PolicyType": "StepScaling"}}
            )
        )
    )
    # Its action is the scaling policy, not a page.
    assert alarm["AlarmActions"] == [{"Ref": policy_id}]


# --- alarms --------------------------------------------------------------------------------


def async_alarm(synth: Synth, metric_name: str) -> dict[str, Any]:
    (props,) = alarms_on(synth.endpoint_template, metric_name)
    assert props["Namespace"] == "AWS/SageMaker"
    export = synth.infra_template.find_outputs("*", {"Value": {"Ref": topic_id(synth)}})
    (export_name,) = [output["Export"]["Name"] for output in export.values() if "Export" in output]
    assert_notifies(props, {"Fn::ImportValue": export_name})
    return props


def test_failed_invocations_and_notifications_page_someone(synth: Synth) -> None:
    for metric_name in ("InvocationFailures", "NotificationFailures"):
        props = async_alarm(synth, metric_name)
        assert (props["Statistic"], props["Threshold"]) == ("Sum", 1)
        assert props["Dimensions"] == [
            {"Name": "EndpointName", "Value": "speech-to-image-sd"},
            {"Name": "VariantName", "Value": "AllTraffic"},
        ]
    assert "sns:Publish" in description(async_alarm(synth, "NotificationFailures"))


def test_a_request_half_way_to_expiry_pages_someone(synth: Synth, synth_async_variant: Synth) -> None:
    for result, ttl in ((synth, 120), (synth_async_variant, 60)):
        props = async_alarm(result, "ApproximateAgeOfOldestRequest")
        assert props["Statistic"] == "Maximum"
        assert props["Threshold"] == ttl * 60 / 2, "seconds: half the request TTL"
        assert props["Dimensions"][0]["Name"] == "EndpointName" and len(props["Dimensions"]) == 1
        assert f"{ttl} minutes" in description(props)


# --- the stack as a whole ------------------------------------------------------------------


def test_async_endpoint_stack_can_still_be_destroyed_alone(synth: Synth) -> None:
    types = {r["Type"] for r in synth.endpoint_template.to_json()["Resources"].values()}
    assert types == {
        "AWS::IAM::Role",
        "AWS::IAM::Policy",
        "AWS::Logs::LogGroup",
        "AWS::SageMaker::Model",
        "AWS::SageMaker::EndpointConfig",
        "AWS::SageMaker::Endpoint",
        "AWS::CloudWatch::Alarm",
        "AWS::ApplicationAutoScaling::ScalableTarget",
        "AWS::ApplicationAutoScaling::ScalingPolicy",
    }
    assert synth.endpoint.dependencies == [synth.infra]
    assert synth.infra.dependencies == []


def test_realtime_endpoint_has_no_async_config_and_no_scaling(synth_realtime: Synth) -> None:
    template = synth_realtime.endpoint_template
    assert "AsyncInferenceConfig" not in only(synth_realtime, "AWS::SageMaker::EndpointConfig")["Properties"]
    assert template.find_resources("AWS::ApplicationAutoScaling::ScalableTarget") == {}
    for metric_name in ("InvocationFailures", "NotificationFailures", "ApproximateAgeOfOldestRequest"):
        assert alarms_on(template, metric_name) == []
    assert "sns:Publish" not in json.dumps(template.to_json())
