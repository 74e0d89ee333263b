"""HuggingFaceModelEndpoint: the GPU endpoint alone, so it can be destroyed to stop paying for it."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.components.sd_endpoint import StableDiffusionEndpoint
from infra.config import PipelineConfig


class HuggingFaceModelEndpoint(Stack):
    """The Stable Diffusion endpoint; it only reads the model bucket that InfraStack owns."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: PipelineConfig, model_bucket: s3.IBucket, **kwargs: Any
    ) -> None:
        super().__init__(
            scope, construct_id, description="speech-to-image: Stable Diffusion on a GPU endpoint", **kwargs
        )
        self.sd_endpoint = StableDiffusionEndpoint(self, "StableDiffusion", config=config, model_bucket=model_bucket)
        CfnOutput(self, "EndpointName", value=config.endpoint_name, description="SageMaker endpoint name")
        CfnOutput(self, "ModelDataUrl", value=self.sd_endpoint.model_data_url, description="Model archive it serves")
