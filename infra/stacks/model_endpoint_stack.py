"""HuggingFaceModelEndpoint: the GPU endpoint alone, so it can be destroyed to stop paying for it."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra.components.alarms import ALARM_PERIOD, notify_alarm
from infra.components.sd_endpoint import StableDiffusionEndpoint
from infra.config import PipelineConfig

# SageMaker ends a real-time invocation after 60 s; a model this slow is about to start timing out.
SLOW_MODEL_LATENCY_S = 50
MICROSECONDS = 1_000_000


class HuggingFaceModelEndpoint(Stack):
    """The Stable Diffusion endpoint; it only reads the model bucket that InfraStack owns."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PipelineConfig,
        model_bucket: s3.IBucket,
        alarm_topic: sns.ITopic,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            scope, construct_id, description="speech-to-image: Stable Diffusion on a GPU endpoint", **kwargs
        )
        self.sd_endpoint = StableDiffusionEndpoint(self, "StableDiffusion", config=config, model_bucket=model_bucket)
        name = config.endpoint_name
        notify_alarm(
            self,
            "ServerErrorsAlarm",
            metric=self.sd_endpoint.metric_server_errors(ALARM_PERIOD),
            threshold=1,
            description=f"The SageMaker endpoint {name} answered invoke_sd with a 5xx error at least once in 5 "
            "minutes (invoke_sd retries; uploads it gives up on get an errors/<key>.json record and their events "
            "wait in its dead-letter queue). Find the cause (model load failure, out of GPU memory) in the log "
            f"group {self.sd_endpoint.log_group.log_group_name}, fix it and redeploy (make deploy-endpoint), "
            "then run `make replay`.",
            topic=alarm_topic,
        )
        notify_alarm(
            self,
            "SlowModelAlarm",
            metric=self.sd_endpoint.metric_model_latency(ALARM_PERIOD),
            threshold=SLOW_MODEL_LATENCY_S * MICROSECONDS,
            description=f"The SageMaker endpoint {name} took {SLOW_MODEL_LATENCY_S} s or more for one image in "
            "the last 5 minutes; SageMaker ends a real-time invocation at 60 s, so images are about to fail with "
            "endpoint-timeout. Lower imageParameters (num_inference_steps, height, width) or use a faster "
            "instanceType, then redeploy.",
            topic=alarm_topic,
        )
        CfnOutput(self, "EndpointName", value=config.endpoint_name, description="SageMaker endpoint name")
        CfnOutput(self, "ModelDataUrl", value=self.sd_endpoint.model_data_url, description="Model archive it serves")
