"""Asynchronous inference results: SageMaker's two SNS topics, their queue, and the stage that records each result."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from infra.components.ledger import UploadLedger
from infra.components.stage_function import StageFunction
from infra.components.storage import PipelineBuckets
from infra.config import PipelineConfig
from infra.pipeline import (
    ASYNC_FAILURE_PREFIX,
    ASYNC_OUTPUT_PREFIX,
    ASYNC_REQUEST_PREFIX,
    ASYNC_RESULT_QUEUE,
    ERROR_PREFIX,
    IMAGE_PREFIX,
    BucketRole,
    Handler,
)

_KEYS_FROM_UPLOADS = (
    "Object keys are derived from each upload at run time (the user's key, or SageMaker's inference id); "
    "the pattern is limited to one prefix of one pipeline bucket."
)


class AsyncResultTopics(Construct):
    """The success and error topics the async endpoint notifies, encrypted with their own rotating key.

    SageMaker publishes with the endpoint's EXECUTION ROLE's credentials (not as a service principal),
    so `grant_publish(role)` on each topic is all it needs: the key policy keeps its default statement
    that lets this account's IAM policies use the key, and no service principal is named here.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: PipelineConfig) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self,
            "Key",
            description="speech-to-image: encrypts the asynchronous inference notification topics",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY if config.destroy_on_removal else RemovalPolicy.RETAIN,
        )
        # No display names or topic names: both are generated, so two deployments never collide.
        self.success = sns.Topic(self, "Success", master_key=self.key, enforce_ssl=True)
        self.error = sns.Topic(self, "Error", master_key=self.key, enforce_ssl=True)

    @property
    def topics(self) -> tuple[sns.Topic, sns.Topic]:
        """Both topics, success first."""
        return (self.success, self.error)


class AsyncResultRecorder(Construct):
    """Turns each SageMaker async notification into the upload's image set or error record (`lambdas/async_result`).

    Both topics deliver raw (the SageMaker JSON itself, no SNS envelope) into one SSE-SQS queue that the
    stage reads in batches with partial failures; what fails `max_receive_count` times waits in the
    stage's dead-letter queue for `make replay`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PipelineConfig,
        buckets: PipelineBuckets,
        ledger: UploadLedger,
    ) -> None:
        super().__init__(scope, construct_id)
        self.topics = AsyncResultTopics(self, "Topics", config=config)
        self.stage = StageFunction(
            self,
            "Stage",
            handler=Handler.ASYNC_RESULT,
            config=config,
            bucket_names=buckets.names,
            ledger_table=ledger.table_name,
            # Up to ten notifications per batch, each one S3 read of the output and a few small writes.
            timeout=Duration.seconds(60),
            # The output object holds the image (base64, ~0.5-1 MB per 512x512 PNG) until it is decoded.
            memory_mb=512,
            description="speech-to-image: records the result of an asynchronous Stable Diffusion request",
        )
        self.function = self.stage.function
        self.queue = self.stage.add_source_queue(ASYNC_RESULT_QUEUE)
        for topic in self.topics.topics:
            # Raw delivery: the handler parses SageMaker's own JSON, the same body in the queue and in replays.
            topic.add_subscription(subscriptions.SqsSubscription(self.queue, raw_message_delivery=True))

        # The ledger says whether the notification is still about the current upload.
        ledger.allow_claims(self.stage)
        transcripts = buckets[BucketRole.TRANSCRIPTS]
        results = (
            transcripts.arn_for_objects(f"{ASYNC_OUTPUT_PREFIX}*"),
            transcripts.arn_for_objects(f"{ASYNC_FAILURE_PREFIX}*"),
        )
        # Read the output (or failure) object SageMaker wrote, then remove it once recorded.
        self.stage.allow("s3:GetObject", *results, wildcard_reason=_KEYS_FROM_UPLOADS)
        self.stage.allow("s3:DeleteObject", *results, wildcard_reason=_KEYS_FROM_UPLOADS)
        requests = transcripts.arn_for_objects(f"{ASYNC_REQUEST_PREFIX}*")
        # invoke_sd stages the request's context (source key, upload, prompt, parameters) beside the request:
        # async_result reads it to write the image set, and removes both once the result is recorded.
        self.stage.allow("s3:GetObject", requests, wildcard_reason=_KEYS_FROM_UPLOADS)
        self.stage.allow("s3:DeleteObject", requests, wildcard_reason=_KEYS_FROM_UPLOADS)
        # Without ListBucket S3 answers a missing object with 403, not 404: an expired output would be
        # retried as a failure until it is dead-lettered, instead of ending as the upload's error record.
        self.stage.allow("s3:ListBucket", transcripts.bucket_arn)
        output = buckets[BucketRole.OUTPUT]
        final = (output.arn_for_objects(f"{IMAGE_PREFIX}*"), output.arn_for_objects(f"{ERROR_PREFIX}*"))
        # One result per upload: an image set removes the key's error record and vice versa.
        self.stage.allow("s3:PutObject", *final, wildcard_reason=_KEYS_FROM_UPLOADS)
        self.stage.allow("s3:DeleteObject", *final, wildcard_reason=_KEYS_FROM_UPLOADS)
