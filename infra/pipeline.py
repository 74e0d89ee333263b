"""The pipeline's wiring, defined once for the CDK stacks and the local runtime.

Which bucket notifies which handler for which suffixes, which EventBridge events reach
which handler, and which environment each handler gets, live here and nowhere else:
`InfraStack` and `local/` both read these definitions, so the deployed and the local
pipeline cannot drift apart. No aws_cdk imports: local mode uses this without loading the CDK.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from infra.config import PipelineConfig

# Key layout shared by the handlers (they receive these through their environment).
TRANSCRIPT_PREFIX = "transcripts/"
IMAGE_PREFIX = "images/"
ERROR_PREFIX = "errors/"
# Every Transcribe job the pipeline starts is named `s2i-...`: the EventBridge rule matches only
# these, so other applications' jobs in the account never invoke transcribe_failed.
JOB_NAME_PREFIX = "s2i-"
# CloudWatch namespace of the handlers' EMF metrics (outcomes, error codes, stage times) and the dashboard.
METRICS_NAMESPACE = "SpeechToImage"

# The upload ledger (DynamoDB): one item per input key, `lambdas/pipeline_common/ledger.py` owns its protocol.
# Partition key: the upload's key in the input bucket. Items of uploads still in flight carry LEDGER_PENDING
# (a constant), so the sparse index LEDGER_PENDING_INDEX (partition LEDGER_PENDING, sort LEDGER_UPDATED_AT,
# an ISO-8601 UTC string) lists exactly the uploads the sweeper must watch, oldest first.
LEDGER_PARTITION_KEY = "upload_key"
LEDGER_PENDING = "pending"
LEDGER_UPDATED_AT = "updated_at"
LEDGER_PENDING_INDEX = "pending-by-age"
# Asynchronous inference (endpointMode=async) keeps its traffic under this private prefix of the transcripts
# bucket: the request invoke_sd stages, and the output or failure object SageMaker writes. The bucket's
# notification covers only TRANSCRIPT_PREFIX, so none of these reaches a handler; a lifecycle rule expires
# what the async_result stage did not remove.
ASYNC_REQUEST_PREFIX = "async/requests/"
ASYNC_OUTPUT_PREFIX = "async/outputs/"
ASYNC_FAILURE_PREFIX = "async/failures/"
ASYNC_OBJECT_RETENTION_DAYS = 2


def ledger_table_schema() -> dict[str, Any]:
    """The ledger's keys and index as DynamoDB's CreateTable takes them (local mode and tests create it so)."""
    return {
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": "S"}
            for name in (LEDGER_PARTITION_KEY, LEDGER_PENDING, LEDGER_UPDATED_AT)
        ],
        "KeySchema": [{"AttributeName": LEDGER_PARTITION_KEY, "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": LEDGER_PENDING_INDEX,
                "KeySchema": [
                    {"AttributeName": LEDGER_PENDING, "KeyType": "HASH"},
                    {"AttributeName": LEDGER_UPDATED_AT, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }


# The sweeper runs this often and gives every upload stuck past `stuck_after_minutes` an error record.
SWEEP_INTERVAL_MINUTES = 10


class BucketRole(StrEnum):
    """The buckets every deployment has; the values are construct ids."""

    INPUT = "Input"
    TRANSCRIPTS = "Transcripts"
    OUTPUT = "Output"
    MODEL = "Model"


class Handler(StrEnum):
    """The Lambda functions; the values are their folders under `lambdas/`."""

    TRANSCRIBE_TRIGGER = "transcribe_trigger"
    INVOKE_SD = "invoke_sd"
    TRANSCRIBE_FAILED = "transcribe_failed"
    SWEEPER = "sweeper"
    ASYNC_RESULT = "async_result"

    @property
    def entry_point(self) -> str:
        """The Lambda handler string, relative to the `lambdas/` asset root."""
        return f"{self.value}.handler.handler"


@dataclass(frozen=True)
class QueueSettings:
    """How a route's SQS queue feeds its handler (an event source mapping with partial batch responses)."""

    # Messages per invocation; the handler reports the failed ones (ReportBatchItemFailures).
    batch_size: int
    # MaximumConcurrency of the event source mapping (SQS allows 2..1000).
    max_concurrency: int
    # Receives before SQS moves a message to the dead-letter queue (AWS recommends at least 5).
    max_receive_count: int


# SageMaker publishes each async result to one of two SNS topics (raw message delivery); both feed the
# async_result stage's queue. Ten notifications per invocation: each is an S3 read and a few small writes.
ASYNC_RESULT_QUEUE = QueueSettings(batch_size=10, max_concurrency=2, max_receive_count=5)


@dataclass(frozen=True)
class Route:
    """An S3 object-created notification from a bucket to a handler, buffered by an SQS queue."""

    bucket: BucketRole
    handler: Handler
    prefix: str
    suffixes: tuple[str, ...]
    queue: QueueSettings


# Input: an upload's identity is its version id, so re-uploading earlier bytes under a key is a new upload
# (a new Transcribe job), and every handler can read exactly the upload its event is about.
# Transcripts: two jobs for the same key (a quick re-upload) write the same transcript key: versioning
# keeps each job's transcript, and invoke_sd reads the exact version its S3 event names.
VERSIONED_BUCKETS = frozenset({BucketRole.INPUT, BucketRole.TRANSCRIPTS})


@dataclass(frozen=True)
class EventRoute:
    """An EventBridge rule (on the default bus) that invokes a handler; `pattern` is the rule's event pattern."""

    name: str
    handler: Handler
    pattern: Mapping[str, Any]


def routes(config: PipelineConfig) -> tuple[Route, ...]:
    """All notifications; the output bucket has none, so results never re-trigger.

    Every upload reaches transcribe_trigger, whatever its name: a suffix filter would drop a `.txt`
    or a `.Mp3` (S3 filters are case-sensitive) without a word, where the trigger answers each
    unsupported file with an error record (`mediaFormats` is enforced there).
    """
    return (
        # Ten uploads per invocation: each is a ranged read and one StartTranscriptionJob. Throttled starts
        # (LimitExceeded) go back to the queue, so allow more receives than AWS's minimum.
        Route(
            BucketRole.INPUT,
            Handler.TRANSCRIBE_TRIGGER,
            "",
            (),
            QueueSettings(batch_size=10, max_concurrency=config.transcribe_trigger_concurrency, max_receive_count=10),
        ),
        # One transcript per invocation: each holds the GPU for seconds, and a batch would share one timeout.
        Route(
            BucketRole.TRANSCRIPTS,
            Handler.INVOKE_SD,
            TRANSCRIPT_PREFIX,
            (".json",),
            QueueSettings(batch_size=1, max_concurrency=config.invoke_sd_concurrency, max_receive_count=5),
        ),
    )


def event_routes(config: PipelineConfig) -> tuple[EventRoute, ...]:
    """EventBridge rules: a FAILED Transcribe job of this pipeline becomes an error record."""
    return (
        EventRoute(
            "TranscribeJobFailed",
            Handler.TRANSCRIBE_FAILED,
            {
                "source": ["aws.transcribe"],
                "detail-type": ["Transcribe Job State Change"],
                "detail": {
                    "TranscriptionJobStatus": ["FAILED"],
                    "TranscriptionJobName": [{"prefix": JOB_NAME_PREFIX}],
                },
            },
        ),
    )


def common_environment(buckets: Mapping[BucketRole, str], ledger_table: str) -> dict[str, str]:
    """What every function that reads uploads, results or the ledger gets (pipeline_common's settings base)."""
    return {
        "INPUT_BUCKET": buckets[BucketRole.INPUT],
        "OUTPUT_BUCKET": buckets[BucketRole.OUTPUT],
        "IMAGE_PREFIX": IMAGE_PREFIX,
        "ERROR_PREFIX": ERROR_PREFIX,
        "JOB_NAME_PREFIX": JOB_NAME_PREFIX,
        "LEDGER_TABLE": ledger_table,
        "METRICS_NAMESPACE": METRICS_NAMESPACE,
    }


def handler_environment(
    handler: Handler, config: PipelineConfig, buckets: Mapping[BucketRole, str], ledger_table: str
) -> dict[str, str]:
    """The environment variables a handler runs with, given the real bucket and ledger table names."""
    common = common_environment(buckets, ledger_table)
    if handler is Handler.TRANSCRIBE_TRIGGER:
        return common | {
            "TRANSCRIPT_BUCKET": buckets[BucketRole.TRANSCRIPTS],
            "TRANSCRIPT_PREFIX": TRANSCRIPT_PREFIX,
            "MEDIA_FORMATS": ",".join(config.media_formats),
            "MAX_MEDIA_BYTES": str(config.max_media_bytes),
            "LANGUAGE_CODE": config.language_code,
            "LANGUAGE_OPTIONS": ",".join(config.language_options),
        }
    if handler is Handler.TRANSCRIBE_FAILED:
        return common | {"MEDIA_FORMATS": ",".join(config.media_formats)}
    if handler is Handler.SWEEPER:
        return common | {
            "LEDGER_PENDING_INDEX": LEDGER_PENDING_INDEX,
            "STUCK_AFTER_MINUTES": str(config.stuck_after_minutes),
        }
    endpoint = {
        "ENDPOINT_NAME": config.endpoint_name,
        "ENDPOINT_MODE": config.endpoint_mode,
        "IMAGE_PARAMETERS": json.dumps(config.image.as_dict(), sort_keys=True),
    }
    if handler is Handler.ASYNC_RESULT:
        return (
            common
            | endpoint
            | {
                "TRANSCRIPT_BUCKET": buckets[BucketRole.TRANSCRIPTS],
                "ASYNC_REQUEST_PREFIX": ASYNC_REQUEST_PREFIX,
                # Only objects under these are read or removed, whatever a notification names.
                "ASYNC_OUTPUT_PREFIX": ASYNC_OUTPUT_PREFIX,
                "ASYNC_FAILURE_PREFIX": ASYNC_FAILURE_PREFIX,
            }
        )
    return (
        common
        | endpoint
        | {
            "TRANSCRIPT_PREFIX": TRANSCRIPT_PREFIX,
            "MIN_TRANSCRIPT_CONFIDENCE": str(config.min_transcript_confidence),
            "TRANSCRIPT_BUCKET": buckets[BucketRole.TRANSCRIPTS],
            "ASYNC_REQUEST_PREFIX": ASYNC_REQUEST_PREFIX,
            "REQUEST_TTL_SECONDS": str(config.request_ttl_minutes * 60),
            # The same limit the endpoint's model_fn budgets its work against (SD_TIME_LIMIT_SECONDS).
            "INVOCATION_TIMEOUT_SECONDS": str(config.time_limit_seconds),
        }
    )
