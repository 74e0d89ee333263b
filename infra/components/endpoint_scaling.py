"""Scale an asynchronous endpoint with its queue: from zero when requests wait, back to min_instances when idle."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from infra.components.endpoint_metrics import VARIANT_NAME, endpoint_metric
from infra.config import PipelineConfig

SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
# Queued requests per instance that target tracking aims for: with one request at a time per instance
# (~5-8 s each), two waiting means ~15 s of work queued; more means add an instance (up to max_instances).
TARGET_BACKLOG_PER_INSTANCE = 2.0
# A new instance needs several minutes (download, load) before it takes work: adding another sooner only
# pays for a second cold start.
SCALE_OUT_COOLDOWN = Duration.minutes(10)
# HasBacklogWithoutCapacity is published every minute; two minutes in a row rules out a blip.
WAKE_PERIOD = Duration.minutes(1)
WAKE_DATAPOINTS = 2
# The role Application Auto Scaling uses for SageMaker variants (AWS creates it on first registration;
# a role of our own would be ignored for a service with a service-linked role).
SERVICE_LINKED_ROLE = (
    "aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
    "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
)


class EndpointAutoScaling(Construct):
    """ScalableTarget on the variant's instance count, a backlog target-tracking policy and a wake-from-zero step.

    Target tracking alone never leaves zero: with no instance there is no backlog PER instance, so
    an alarm on HasBacklogWithoutCapacity adds the first instance.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, config: PipelineConfig, endpoint: sagemaker.CfnEndpoint
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.target = appscaling.ScalableTarget(
            self,
            "Target",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"endpoint/{config.endpoint_name}/variant/{VARIANT_NAME}",
            scalable_dimension=SCALABLE_DIMENSION,
            min_capacity=config.min_instance_count,
            max_capacity=config.max_instances,
            role=iam.Role.from_role_arn(
                self,
                "ServiceLinkedRole",
                stack.format_arn(service="iam", region="", resource="role", resource_name=SERVICE_LINKED_ROLE),
            ),
        )
        # The resource id names the endpoint by its (physical) name: registration must wait for it.
        self.target.node.add_dependency(endpoint)
        self.target.scale_to_track_metric(
            "BacklogPerInstance",
            target_value=TARGET_BACKLOG_PER_INSTANCE,
            custom_metric=endpoint_metric(
                config.endpoint_name,
                "ApproximateBacklogSizePerInstance",
                statistic="Average",
                period=Duration.minutes(1),
            ),
            # How long the endpoint stays up after the last work before it may scale in (min_instances).
            scale_in_cooldown=Duration.minutes(config.scale_in_idle_minutes),
            scale_out_cooldown=SCALE_OUT_COOLDOWN,
        )
        self.wake = appscaling.StepScalingAction(
            self,
            "WakeFromZero",
            scaling_target=self.target,
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            # The alarm stays in ALARM while the first instance starts: do not add a second meanwhile.
            cooldown=SCALE_OUT_COOLDOWN,
            metric_aggregation_type=appscaling.MetricAggregationType.MAXIMUM,
        )
        self.wake.add_adjustment(adjustment=1, lower_bound=0)
        self.wake_alarm = cloudwatch.Alarm(
            self,
            "BacklogWithoutCapacity",
            metric=endpoint_metric(
                config.endpoint_name, "HasBacklogWithoutCapacity", statistic="Maximum", period=WAKE_PERIOD
            ),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=WAKE_DATAPOINTS,
            datapoints_to_alarm=WAKE_DATAPOINTS,
            # No data: the endpoint is idle or has instances; neither needs waking.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=f"Requests wait for the SageMaker endpoint {config.endpoint_name} while it has no "
            "instance: scales it out from zero (a scaling action, not a page).",
        )
        self.wake_alarm.add_alarm_action(cw_actions.ApplicationScalingAction(self.wake))
