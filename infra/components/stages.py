"""The pipeline stages: audio -> Transcribe job, transcript -> image, failed job -> error record, stuck -> swept."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from constructs import Construct

from infra.components.ledger import UploadLedger
from infra.components.stage_function import MAX_EVENT_AGE, StageFunction
from infra.components.storage import PipelineBuckets
from infra.config import PipelineConfig
from infra.pipeline import (
    ASYNC_REQUEST_PREFIX,
    ERROR_PREFIX,
    IMAGE_PREFIX,
    JOB_NAME_PREFIX,
    SWEEP_INTERVAL_MINUTES,
    TRANSCRIPT_PREFIX,
    BucketRole,
    Handler,
)

# EventBridge -> Lambda delivery only fails while Lambda refuses the invoke (throttled, mid-deploy); it
# retries with backoff, at most this often and within the age Lambda itself allows an event, then
# dead-letters the event.
EVENT_DELIVERY_RETRY_ATTEMPTS = 24

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


def event_target(stage: StageFunction) -> targets.LambdaFunction:
    """An EventBridge target for a stage: bounded retries, then the stage's dead-letter queue."""
    return targets.LambdaFunction(
        stage.function,
        dead_letter_queue=stage.dead_letter_queue,
        retry_attempts=EVENT_DELIVERY_RETRY_ATTEMPTS,
        max_event_age=MAX_EVENT_AGE,
    )


def _allow_error_records(stage: StageFunction, buckets: PipelineBuckets) -> None:
    """What every writer of an error record needs: write errors/<key>.json, remove the key's other result."""
    output = buckets[BucketRole.OUTPUT]
    stage.allow("s3:PutObject", output.arn_for_objects(f"{ERROR_PREFIX}*"), wildcard_reason=_KEYS_FROM_UPLOADS)
    # One result per upload: an error record removes the key's stale image set, and a fresh start
    # removes the stale error record of an earlier upload under the same key.
    stage.allow(
        "s3:DeleteObject",
        output.arn_for_objects(f"{IMAGE_PREFIX}*"),
        output.arn_for_objects(f"{ERROR_PREFIX}*"),
        wildcard_reason=_KEYS_FROM_UPLOADS,
    )


class TranscribeTrigger(Construct):
    """Starts one Amazon Transcribe job per uploaded recording (`lambdas/transcribe_trigger`)."""

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
        self.stage = StageFunction(
            self,
            "Stage",
            handler=Handler.TRANSCRIBE_TRIGGER,
            config=config,
            bucket_names=buckets.names,
            ledger_table=ledger.table_name,
            # Up to ten records per batch, each a 64-byte ranged read, a ledger claim and one StartTranscriptionJob.
            timeout=Duration.seconds(60),
            memory_mb=256,
            description="speech-to-image: checks an uploaded recording and starts its Transcribe job",
        )
        self.function = self.stage.function
        ledger.allow_claims(self.stage)
        self.stage.allow(
            "transcribe:StartTranscriptionJob", _pipeline_jobs_arn(self), wildcard_reason=_JOB_NAMES_FROM_UPLOADS
        )
        inputs = buckets[BucketRole.INPUT].arn_for_objects("*")
        uploads_reason = "Users upload recordings under keys of their choosing; read-only, one bucket."
        # Transcribe reads the media and writes the transcript with the caller's permissions.
        self.stage.allow("s3:GetObject", inputs, wildcard_reason=uploads_reason)
        # The input bucket is versioned: the handler reads exactly the upload (version) its event names.
        self.stage.allow("s3:GetObjectVersion", inputs, wildcard_reason=uploads_reason)
        # Without ListBucket a deleted upload reads as 403 instead of 404, and would be retried as a failure.
        self.stage.allow("s3:ListBucket", buckets[BucketRole.INPUT].bucket_arn)
        self.stage.allow(
            "s3:PutObject",
            buckets[BucketRole.TRANSCRIPTS].arn_for_objects(f"{TRANSCRIPT_PREFIX}*"),
            wildcard_reason=_KEYS_FROM_UPLOADS,
        )
        _allow_error_records(self.stage, buckets)


class ImageGenerator(Construct):
    """Turns a finished transcript into an image via the SageMaker endpoint (`lambdas/invoke_sd`)."""

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
        output = buckets[BucketRole.OUTPUT]
        transcripts = buckets[BucketRole.TRANSCRIPTS].arn_for_objects(f"{TRANSCRIPT_PREFIX}*")
        self.stage = StageFunction(
            self,
            "Stage",
            handler=Handler.INVOKE_SD,
            config=config,
            bucket_names=buckets.names,
            ledger_table=ledger.table_name,
            # Up to 4 endpoint attempts of at most 70 s read + 10 s connect each, plus backoff.
            timeout=Duration.minutes(6),
            memory_mb=512,
            description="speech-to-image: sends a transcript to Stable Diffusion and stores the image",
        )
        self.function = self.stage.function
        # The ledger, not the output bucket, says whether this upload is current and already has its result.
        ledger.allow_claims(self.stage)
        self.stage.allow("s3:GetObject", transcripts, wildcard_reason=_KEYS_FROM_UPLOADS)
        # The transcripts bucket is versioned: the handler reads exactly the version its S3 event names.
        self.stage.allow("s3:GetObjectVersion", transcripts, wildcard_reason=_KEYS_FROM_UPLOADS)
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
        if not config.is_async:
            self.stage.allow("sagemaker:InvokeEndpoint", endpoint_arn)
            return
        # Async: stage the request in S3 (SageMaker reads it with the endpoint's role), then queue it there;
        # a request the endpoint refuses for good is taken back at once instead of waiting for the lifecycle rule.
        requests = buckets[BucketRole.TRANSCRIPTS].arn_for_objects(f"{ASYNC_REQUEST_PREFIX}*")
        self.stage.allow("s3:PutObject", requests, wildcard_reason=_KEYS_FROM_UPLOADS)
        self.stage.allow("s3:DeleteObject", requests, wildcard_reason=_KEYS_FROM_UPLOADS)
        self.stage.allow("sagemaker:InvokeEndpointAsync", endpoint_arn)


class TranscribeFailureRecorder(Construct):
    """Turns a FAILED Transcribe job of this pipeline into an error record (`lambdas/transcribe_failed`)."""

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
        self.stage = StageFunction(
            self,
            "Stage",
            handler=Handler.TRANSCRIBE_FAILED,
            config=config,
            bucket_names=buckets.names,
            ledger_table=ledger.table_name,
            # One GetTranscriptionJob, a ledger read and write, and a few small S3 writes per event.
            timeout=Duration.seconds(60),
            memory_mb=256,
            description="speech-to-image: writes the error record of a failed Transcribe job",
        )
        self.function = self.stage.function
        # The EventBridge event names only the job: its media URI and failure reason come from the job.
        self.stage.allow(
            "transcribe:GetTranscriptionJob", _pipeline_jobs_arn(self), wildcard_reason=_JOB_NAMES_FROM_UPLOADS
        )
        # The ledger says whether the failed job still belongs to the current upload.
        ledger.allow_claims(self.stage)
        _allow_error_records(self.stage, buckets)


class DeadlineSweeper(Construct):
    """Gives every upload stuck in flight past `stuckAfterMinutes` an error record (`lambdas/sweeper`).

    Runs on a schedule: a lost event (a Transcribe job that never reports, an endpoint that never
    answers) must still end as exactly one result, and nothing but the clock notices it.
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
        self.stage = StageFunction(
            self,
            "Stage",
            handler=Handler.SWEEPER,
            config=config,
            bucket_names=buckets.names,
            ledger_table=ledger.table_name,
            # Pages through the pending index and writes one error record per stuck upload.
            timeout=Duration.minutes(5),
            memory_mb=256,
            description="speech-to-image: gives uploads stuck in flight an error record",
        )
        self.function = self.stage.function
        ledger.allow_pending_query(self.stage)
        ledger.allow_claims(self.stage)
        _allow_error_records(self.stage, buckets)
        # A missed or failed run is harmless: the next one finds the same uploads, which stay pending.
        self.schedule = events.Rule(
            self,
            "Schedule",
            description=f"speech-to-image: sweep stuck uploads every {SWEEP_INTERVAL_MINUTES} minutes",
            schedule=events.Schedule.rate(Duration.minutes(SWEEP_INTERVAL_MINUTES)),
            targets=[event_target(self.stage)],
        )
