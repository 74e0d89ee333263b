"""The two pipeline stages: audio -> Transcribe job, transcript -> Stable Diffusion image."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from constructs import Construct

from infra.components.stage_function import StageFunction
from infra.components.storage import PipelineBuckets
from infra.config import PipelineConfig
from infra.pipeline import ERROR_PREFIX, IMAGE_PREFIX, TRANSCRIPT_PREFIX, BucketRole, Handler, handler_environment

_KEYS_FROM_UPLOADS = (
    "Object keys mirror the uploaded recording's key, chosen by the user at run time; the pattern is "
    "limited to one prefix of one pipeline bucket."
)


class TranscribeTrigger(Construct):
    """Starts one Amazon Transcribe job per uploaded recording (`lambdas/transcribe_trigger`)."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: PipelineConfig, buckets: PipelineBuckets
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.stage = StageFunction(
            self,
            "Stage",
            handler=Handler.TRANSCRIBE_TRIGGER,
            config=config,
            environment=handler_environment(Handler.TRANSCRIBE_TRIGGER, config, buckets.names),
            # One StartTranscriptionJob call and a 64-byte ranged read per record.
            timeout=Duration.seconds(60),
            memory_mb=256,
            description="speech-to-image: checks an uploaded recording and starts its Transcribe job",
        )
        self.function = self.stage.function
        self.stage.allow(
            "transcribe:StartTranscriptionJob",
            stack.format_arn(service="transcribe", resource="transcription-job", resource_name="*"),
            wildcard_reason="Job names are derived from each upload at run time, so they cannot be listed in "
            "advance; the pattern covers only this account's and region's transcription jobs.",
        )
        # Transcribe reads the media and writes the transcript with the caller's permissions.
        self.stage.allow(
            "s3:GetObject",
            buckets[BucketRole.INPUT].arn_for_objects("*"),
            wildcard_reason="Users upload recordings under keys of their choosing; read-only, one bucket.",
        )
        # Without ListBucket a deleted upload reads as 403 instead of 404, and would be retried as a failure.
        self.stage.allow("s3:ListBucket", buckets[BucketRole.INPUT].bucket_arn)
        self.stage.allow(
            "s3:PutObject",
            buckets[BucketRole.TRANSCRIPTS].arn_for_objects(f"{TRANSCRIPT_PREFIX}*"),
            wildcard_reason=_KEYS_FROM_UPLOADS,
        )
        self.stage.allow(
            "s3:PutObject",
            buckets[BucketRole.OUTPUT].arn_for_objects(f"{ERROR_PREFIX}*"),
            wildcard_reason=_KEYS_FROM_UPLOADS,
        )


class ImageGenerator(Construct):
    """Turns a finished transcript into an image via the SageMaker endpoint (`lambdas/invoke_sd`)."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: PipelineConfig, buckets: PipelineBuckets
    ) -> None:
        super().__init__(scope, construct_id)
        output = buckets[BucketRole.OUTPUT]
        self.stage = StageFunction(
            self,
            "Stage",
            handler=Handler.INVOKE_SD,
            config=config,
            environment=handler_environment(Handler.INVOKE_SD, config, buckets.names),
            # Up to 4 endpoint attempts of at most 70 s read + 10 s connect each, plus backoff.
            timeout=Duration.minutes(6),
            memory_mb=512,
            description="speech-to-image: sends a transcript to Stable Diffusion and stores the image",
            # The endpoint has one GPU; more parallel calls would only queue and time out.
            reserved_concurrency=config.invoke_sd_concurrency,
        )
        self.function = self.stage.function
        self.stage.allow(
            "s3:GetObject",
            buckets[BucketRole.TRANSCRIPTS].arn_for_objects(f"{TRANSCRIPT_PREFIX}*"),
            wildcard_reason=_KEYS_FROM_UPLOADS,
        )
        self.stage.allow(
            "s3:PutObject",
            output.arn_for_objects(f"{IMAGE_PREFIX}*"),
            output.arn_for_objects(f"{ERROR_PREFIX}*"),
            wildcard_reason=_KEYS_FROM_UPLOADS,
        )
        # A success removes a stale error record, so each upload has exactly one result.
        self.stage.allow(
            "s3:DeleteObject", output.arn_for_objects(f"{ERROR_PREFIX}*"), wildcard_reason=_KEYS_FROM_UPLOADS
        )
        # SageMaker lower-cases endpoint names in ARNs.
        endpoint_arn = Stack.of(self).format_arn(
            service="sagemaker", resource="endpoint", resource_name=config.endpoint_name.lower()
        )
        self.stage.allow("sagemaker:InvokeEndpoint", endpoint_arn)
