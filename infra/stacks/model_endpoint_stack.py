"""HuggingFaceModelEndpoint: the GPU endpoint alone, so it can be destroyed to stop paying for it."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra.components.alarms import ALARM_PERIOD, notify_alarm
from infra.components.endpoint_metrics import endpoint_metric
from infra.components.endpoint_scaling import EndpointAutoScaling
from infra.components.sd_endpoint import AsyncInference, StableDiffusionEndpoint
from infra.config import PipelineConfig

# SageMaker ends a real-time invocation after 60 s; a model this slow is about to start timing out.
SLOW_MODEL_LATENCY_S = 50
MICROSECONDS = 1_000_000


class HuggingFaceModelEndpoint(Stack):
    """The Stable Diffusion endpoint; it only uses what InfraStack owns (model bucket, alarm and async topics)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PipelineConfig,
        model_bucket: s3.IBucket,
        alarm_topic: sns.ITopic,
        async_inference: AsyncInference | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            scope, construct_id, description="speech-to-image: Stable Diffusion on a GPU endpoint", **kwargs
        )
        if config.is_async != (async_inference is not None):
            raise ValueError("endpointMode=async needs the async topics and bucket, realtime must not get them")
        self.config = config
        self.alarm_topic = alarm_topic
        self.sd_endpoint = StableDiffusionEndpoint(
            self, "StableDiffusion", config=config, model_bucket=model_bucket, async_inference=async_inference
        )
        name = config.endpoint_name
        caller = "SageMaker retries" if config.is_async else "invoke_sd retries"
        notify_alarm(
            self,
            "ServerErrorsAlarm",
            metric=self.sd_endpoint.metric_server_errors(ALARM_PERIOD),
            threshold=1,
            description=f"The SageMaker endpoint {name} answered with a 5xx error at least once in 5 minutes "
            f"({caller}; uploads it gives up on get an errors/<key>.json record and their events wait in a "
            "dead-letter queue). Find the cause (model load failure, out of GPU memory) in the log "
            f"group {self.sd_endpoint.log_group.log_group_name}, fix it and redeploy (make deploy-endpoint), "
            "then run `make replay`.",
            topic=alarm_topic,
        )
        if config.is_async:
            self.scaling = EndpointAutoScaling(self, "Scaling", config=config, endpoint=self.sd_endpoint.endpoint)
            self._alarm_on_async_failures()
        else:
            notify_alarm(
                self,
                "SlowModelAlarm",
                metric=self.sd_endpoint.metric_model_latency(ALARM_PERIOD),
                threshold=SLOW_MODEL_LATENCY_S * MICROSECONDS,
                description=f"The SageMaker endpoint {name} took {SLOW_MODEL_LATENCY_S} s or more for one image "
                "in the last 5 minutes; SageMaker ends a real-time invocation at 60 s, so images are about to fail "
                "with endpoint-timeout. Lower imageParameters (num_inference_steps, height, width) or use a "
                "faster instanceType, then redeploy.",
                topic=alarm_topic,
            )
        CfnOutput(self, "EndpointName", value=config.endpoint_name, description="SageMaker endpoint name")
        CfnOutput(self, "ModelDataUrl", value=self.sd_endpoint.model_data_url, description="Model archive it serves")

    def _alarm_on_async_failures(self) -> None:
        """Failed async requests, lost notifications, and requests about to expire in the queue."""
        name = self.config.endpoint_name
        logs = self.sd_endpoint.log_group.log_group_name
        ttl_minutes = self.config.request_ttl_minutes
        notify_alarm(
            self,
            "InvocationFailuresAlarm",
            metric=endpoint_metric(name, "InvocationFailures", statistic="Sum", period=ALARM_PERIOD),
            threshold=1,
            description=f"An asynchronous request to the SageMaker endpoint {name} failed in the last 5 minutes; "
            f"its upload gets an errors/<key>.json record from async_result. Find the cause in the log group {logs}.",
            topic=self.alarm_topic,
        )
        notify_alarm(
            self,
            "NotificationFailuresAlarm",
            metric=endpoint_metric(name, "NotificationFailures", statistic="Sum", period=ALARM_PERIOD),
            threshold=1,
            description=f"The SageMaker endpoint {name} could not publish a result to its SNS topics (role or key "
            "permissions, a deleted topic): those uploads get no image until the sweeper marks them stuck. Check "
            "the endpoint role's sns:Publish and KMS grants, and the objects under async/outputs/.",
            topic=self.alarm_topic,
        )
        notify_alarm(
            self,
            "OldestRequestAlarm",
            metric=endpoint_metric(name, "ApproximateAgeOfOldestRequest", statistic="Maximum", period=ALARM_PERIOD),
            threshold=ttl_minutes * 60 / 2,
            description=f"A request has waited half its time to live ({ttl_minutes} minutes) for the SageMaker "
            f"endpoint {name}: it is not scaling out (see the BacklogWithoutCapacity alarm and the scaling "
            f"activities) or cannot keep up (raise maxInstances). Requests that expire end as errors.",
            topic=self.alarm_topic,
            # No data while nothing waits: healthy.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
