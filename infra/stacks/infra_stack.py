"""InfraStack: buckets, the two pipeline stages and the S3 notifications between them."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from constructs import Construct

from infra.components.stages import ImageGenerator, TranscribeTrigger
from infra.components.storage import PipelineBuckets
from infra.config import PipelineConfig
from infra.nag import acknowledge
from infra.pipeline import BucketRole, Handler, routes


class InfraStack(Stack):
    """Everything except the GPU endpoint: it deploys before any model exists."""

    def __init__(self, scope: Construct, construct_id: str, *, config: PipelineConfig, **kwargs: Any) -> None:
        super().__init__(
            scope, construct_id, description="speech-to-image: buckets and the event-driven pipeline", **kwargs
        )
        self.buckets = PipelineBuckets(self, "Buckets", config=config)
        self.transcribe_trigger = TranscribeTrigger(self, "TranscribeTrigger", config=config, buckets=self.buckets)
        self.image_generator = ImageGenerator(self, "ImageGenerator", config=config, buckets=self.buckets)
        functions = {
            Handler.TRANSCRIBE_TRIGGER: self.transcribe_trigger.function,
            Handler.INVOKE_SD: self.image_generator.function,
        }
        for route in routes(config):
            destination = s3n.LambdaDestination(functions[route.handler])
            for suffix in route.suffixes:
                key_filter = s3.NotificationKeyFilter(prefix=route.prefix or None, suffix=suffix)
                self.buckets[route.bucket].add_event_notification(s3.EventType.OBJECT_CREATED, destination, key_filter)

        self._acknowledge_cdk_internals()
        self.model_bucket = self.buckets[BucketRole.MODEL]
        outputs = {
            "InputBucketName": (self.buckets[BucketRole.INPUT].bucket_name, "Upload recordings here"),
            "TranscriptBucketName": (self.buckets[BucketRole.TRANSCRIPTS].bucket_name, "Amazon Transcribe output"),
            "OutputBucketName": (self.buckets[BucketRole.OUTPUT].bucket_name, "Images, metadata, pages, error records"),
            "ModelBucketName": (self.model_bucket.bucket_name, "Upload model.tar.gz here (make upload-model)"),
            "AccessLogBucketName": (self.buckets.access_logs.bucket_name, "S3 server access logs (kept on destroy)"),
            "ModelDataKey": (config.model_data_key, "Key of the model archive in the model bucket"),
            "EndpointName": (config.endpoint_name, "SageMaker endpoint invoke_sd calls"),
            "TranscribeTriggerDeadLetterQueueUrl": (
                self.transcribe_trigger.stage.dead_letter_queue.queue_url,
                "Events transcribe_trigger failed on",
            ),
            "InvokeSdDeadLetterQueueUrl": (
                self.image_generator.stage.dead_letter_queue.queue_url,
                "Events invoke_sd failed on",
            ),
        }
        for output_id, (value, description) in outputs.items():
            CfnOutput(self, output_id, value=value, description=description)

    def _acknowledge_cdk_internals(self) -> None:
        """The CDK's own singleton that writes the bucket notification configuration."""
        for child in self.node.children:
            if child.node.id.startswith("BucketNotificationsHandler"):
                acknowledge(
                    child,
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
                    "The CDK's own deploy-time handler that writes the S3 notification configuration; it runs "
                    "only during deployments; its role (logs, plus PutBucketNotification) is created by the CDK.",
                )
