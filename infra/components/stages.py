"""The pipeline stages: audio -> Transcribe job, transcript -> Stable Diffusion image, failed job -> error record."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from constructs import Construct

from infra.components.stage_function import StageFunction
from infra.components.storage import PipelineBuckets
from infra.config import PipelineConfig
from infra.pipeline import (
    ERROR_PREFIX,
    IMAGE_PREFIX,
    JOB_NAME_PREFIX,
    TRANSCRIPT_PREFIX,
    BucketRole,
    Handler,
)

_KEYS_FROM_UPLOADS = (
    "Object keys mirror the uploaded recording's key, chosen by the user at run time; the pattern is "
    "limited to one prefix of one pipeline bucket."
)
_JOB_NAMES_FROM_UPLOADS = (
    f"Job names are derived from each upload at run time, so they cannot be listed in advance; the pattern "
    f"covers only this account's and region's transcription jobs named '{JOB_NAME_PREFIX}...' (this pipeline's)."
)


def _pipeline_jobs_arn(scope: Construct) -> str:
    """ARN pattern of every Transcribe job this pipeline starts (all named `s2i-...`)."""
    return Stack.of(scope).format_arn(
        service="transcribe", resource="transcription-job", resource_name=f"{JOB_NAME_PREFIX}*"
    )


class TranscribeTrigger(Construct):
    """Starts one Amazon Transcribe job per uploaded recording (`lambdas/transcribe_trigger`)."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: PipelineConfig, buckets: PipelineBuckets
    ) -> None:
        super().__init__(scope, construct_id)
        output = buckets[BucketRole.OUTPUT]
        self.stage = StageFunction(
            self,
            "Stage",
            handler=Handler.TRANSCRIBE_TRIGGER,
            config=config,
            bucket_names=buckets.names,
            # One StartTranscriptionJob call and a 64-byte ranged read per record.
            timeout=Duration.seconds(60),
            memory_mb=256,
            description="speech-to-image: checks an uploaded recording and starts its Transcribe job",
        )
        self.function = self.stage.function
        self.stage.allow(
            "transcribe:StartTranscriptionJob", _pipeline_jobs_arn(self), wildcard_reason=_JOB_NAMES_FROM_UPLOADS
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
        self.stage.allow("s3:PutObject", output.arn_for_objects(f"{ERROR_PREFIX}*"), wildcard_reason=_KEYS_FROM_UPLOADS)
        # An error record removes the key's stale image set first, and a started job removes the stale
        # error record of a failed earlier attempt: each upload has exactly one result.
        self.stage.allow(
            "s3:DeleteObject",
            output.arn_for_objects(f"{IMAGE_PREFIX}*"),
            output.arn_for_objects(f"{ERROR_PREFIX}*"),
            wildcard_reason=_KEYS_FROM_UPLOADS,
        )


class ImageGenerator(Construct):
    """Turns a finished transcript into an image via the SageMaker endpoint (`lambdas/invoke_sd`)."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: PipelineConfig, buckets: PipelineBuckets
    ) -> None:
        super().__init__(scope, construct_id)
        output = buckets[BucketRole.OUTPUT]
        transcripts = buckets[BucketRole.TRANSCRIPTS].arn_for_objects(f"{TRANSCRIPT_PREFIX}*")
        self.stage = StageFunction(
            self,
            "Stage",
            handler=Handler.INVOKE_SD,
            config=config,
            bucket_names=buckets.names,
            # Up to 4 endpoint attempts of at most 70 s read + 10 s connect each, plus backoff.
            timeout=Duration.minutes(6),
            memory_mb=512,
            description="speech-to-image: sends a transcript to Stable Diffusion and stores the image",
            # The endpoint has one GPU; more parallel calls would only queue and time out.
            reserved_concurrency=config.invoke_sd_concurrency,
        )
        self.function = self.stage.function
        self.stage.allow("s3:GetObject", transcripts, wildcard_reason=_KEYS_FROM_UPLOADS)
        # The transcripts bucket is versioned: the handler reads exactly the version its S3 event names.
        self.stage.allow("s3:GetObjectVersion", transcripts, wildcard_reason=_KEYS_FROM_UPLOADS)
        # The current upload's ETag (ListObjectsV2) tells whether this transcript is superseded or gone.
        self.stage.allow("s3:ListBucket", buckets[BucketRole.INPUT].bucket_arn)
        # The repeat check reads images/<key>.json; ListBucket makes a missing one a 404, not a 403.
        self.stage.allow("s3:GetObject", output.arn_for_objects(f"{IMAGE_PREFIX}*"), wildcard_reason=_KEYS_FROM_UPLOADS)
        self.stage.allow("s3:ListBucket", output.bucket_arn)
        self.stage.allow(
            "s3:PutObject",
            output.arn_for_objects(f"{IMAGE_PREFIX}*"),
            output.arn_for_objects(f"{ERROR_PREFIX}*"),
            wildcard_reason=_KEYS_FROM_UPLOADS,
        )
        # An image set removes the key's error record; an error record removes the key's image set.
        self.stage.allow(
            "s3:DeleteObject",
            output.arn_for_objects(f"{IMAGE_PREFIX}*"),
            output.arn_for_objects(f"{ERROR_PREFIX}*"),
            wildcard_reason=_KEYS_FROM_UPLOADS,
        )
        # SageMaker lower-cases endpoint names in ARNs.
        endpoint_arn = Stack.of(self).format_arn(
            service="sagemaker", resource="endpoint", resource_name=config.endpoint_name.lower()
        )
        self.stage.allow("sagemaker:InvokeEndpoint", endpoint_arn)


class TranscribeFailureRecorder(Construct):
    """Turns a FAILED Transcribe job of this pipeline into an error record (`lambdas/transcribe_failed`)."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: PipelineConfig, buckets: PipelineBuckets
    ) -> None:
        super().__init__(scope, construct_id)
        output = buckets[BucketRole.OUTPUT]
        self.stage = StageFunction(
            self,
            "Stage",
            handler=Handler.TRANSCRIBE_FAILED,
            config=config,
            bucket_names=buckets.names,
            # One GetTranscriptionJob, one ListObjectsV2 and a few small S3 writes per event.
            timeout=Duration.seconds(60),
            memory_mb=256,
            description="speech-to-image: writes the error record of a failed Transcribe job",
        )
        self.function = self.stage.function
        # The EventBridge event names only the job: its media URI and failure reason come from the job.
        self.stage.allow(
            "transcribe:GetTranscriptionJob", _pipeline_jobs_arn(self), wildcard_reason=_JOB_NAMES_FROM_UPLOADS
        )
        # The current upload's ETag (ListObjectsV2) tells whether the failed job is superseded or gone.
        self.stage.allow("s3:ListBucket", buckets[BucketRole.INPUT].bucket_arn)
        self.stage.allow("s3:PutObject", output.arn_for_objects(f"{ERROR_PREFIX}*"), wildcard_reason=_KEYS_FROM_UPLOADS)
        # An error record removes the key's stale image set first, so each upload has exactly one result.
        self.stage.allow(
            "s3:DeleteObject", output.arn_for_objects(f"{IMAGE_PREFIX}*"), wildcard_reason=_KEYS_FROM_UPLOADS
        )
