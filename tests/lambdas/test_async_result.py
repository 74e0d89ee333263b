"""async_result: SageMaker's notification becomes the upload's one result, exactly like the real-time path's."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from pipeline_common.ledger import DONE, FAILED, WAITING
from tests.lambdas.async_support import (
    CLIENT_ERROR_REASON,
    MODEL_MESSAGE,
    PREFIX,
    failed,
    queued,
    sns_envelope,
)
from tests.lambdas.invoke_sd_support import ERROR_KEY, IMAGES, SOURCE_KEY, ledger, put_transcript, run, transcribing
from tests.lambdas.race_support import Calls, FakeEndpoint, completed
from tests.lambdas.support import LEDGER_TABLE, OUTPUT_BUCKET, TRANSCRIPT_BUCKET, Aws, sqs_batch


def deliver(async_result: Any, context: Any, *bodies: Any) -> list[dict[str, Any]]:
    """The handler on an SQS batch of raw notifications; every message must succeed."""
    response = async_result.handler(sqs_batch(*bodies), context)
    assert response["batchItemFailures"] == []
    return response["results"]


def outcome_of(async_result: Any, context: Any, body: Any) -> str:
    (result,) = deliver(async_result, context, body)
    return result["outcome"]


def test_completed_notification_commits_the_same_image_set_as_real_time(
    async_result: Any, aws: Aws, lambda_context: Any
) -> None:
    endpoint = FakeEndpoint(aws.s3)
    # The real-time path first, for the same recording: its page and metadata are the reference.
    assert run(aws, endpoint, put_transcript(aws))[0].outcome == "generated"
    realtime_page = aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["html"])["Body"].read()
    realtime = aws.read_json(OUTPUT_BUCKET, IMAGES["json"])
    uploaded = queued(aws, endpoint)
    (notification,) = endpoint.process()

    (result,) = deliver(async_result, lambda_context, notification)

    assert result["outcome"] == "generated" and result["image_key"] == IMAGES["png"]
    assert aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["html"])["Body"].read() == realtime_page
    metadata = aws.read_json(OUTPUT_BUCKET, IMAGES["json"])
    assert metadata["source"]["upload_id"] == uploaded.version_id
    assert set(metadata) == set(realtime)
    for field in ("transcript", "prompt", "parameters", "notices", "model", "outputs", "nsfw_content_detected"):
        assert metadata[field] == realtime[field], field
    assert metadata["timings"]["endpoint"] == {"inference_s": 0.1}
    assert "transcript_read_s" in metadata["timings"] and "endpoint_wait_s" in metadata["timings"]
    assert ledger(aws).get(SOURCE_KEY).stage == DONE
    # The staged request, its context and the output object are gone.
    assert aws.keys(TRANSCRIPT_BUCKET, "async/") == []


def test_failed_notification_unwraps_the_models_message(async_result: Any, aws: Aws, lambda_context: Any) -> None:
    endpoint = FakeEndpoint(aws.s3)
    queued(aws, endpoint)
    (notification,) = endpoint.process()

    (result,) = deliver(async_result, lambda_context, failed(notification, CLIENT_ERROR_REASON))

    assert result["outcome"] == "rejected" and result["error_key"] == ERROR_KEY
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"], record["reason"]) == ("generate", "endpoint-rejected", MODEL_MESSAGE)
    assert "imageParameters" in record["action"]
    assert "123456789012" not in json.dumps(record)
    assert record["details"]["inference_id"] == notification["inferenceId"]
    assert ledger(aws).get(SOURCE_KEY).stage == FAILED
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]


def test_failure_object_gives_the_models_words(async_result: Any, aws: Aws, lambda_context: Any) -> None:
    endpoint = FakeEndpoint(aws.s3)
    queued(aws, endpoint)
    (notification,) = endpoint.process()
    body = {"code": 400, "type": "InternalServerException", "message": json.dumps({"error": "bad scheduler 'x'"})}
    aws.s3.put_object(Bucket=TRANSCRIPT_BUCKET, Key="async/failures/f.out", Body=json.dumps(body).encode())
    reason = "ClientError: Received client error (400) from primary. See the logs."

    deliver(
        async_result, lambda_context, failed(notification, reason, f"s3://{TRANSCRIPT_BUCKET}/async/failures/f.out")
    )

    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["error"], record["reason"]) == ("endpoint-rejected", "bad scheduler 'x'")
    assert aws.keys(TRANSCRIPT_BUCKET, PREFIX) == aws.keys(TRANSCRIPT_BUCKET, "async/failures/") == []


def test_test_notification_is_ignored(async_result: Any, aws: Aws, lambda_context: Any) -> None:
    assert outcome_of(async_result, lambda_context, {"eventName": "TestNotification"}) == "test-notification"
    assert aws.keys(OUTPUT_BUCKET) == []


def test_unknown_fields_and_an_sns_envelope_are_accepted(async_result: Any, aws: Aws, lambda_context: Any) -> None:
    endpoint = FakeEndpoint(aws.s3)
    queued(aws, endpoint)
    (notification,) = endpoint.process()
    notification["eventVersion"] = "2.0"
    notification["somethingNew"] = {"nested": [1, 2]}
    notification["responseParameters"]["alsoNew"] = "x"

    assert outcome_of(async_result, lambda_context, sns_envelope(notification)) == "generated"
    assert ledger(aws).get(SOURCE_KEY).stage == DONE


def test_a_repeated_notification_writes_nothing_twice(async_result: Any, aws: Aws, lambda_context: Any) -> None:
    endpoint = FakeEndpoint(aws.s3)
    queued(aws, endpoint)
    (notification,) = endpoint.process()
    assert outcome_of(async_result, lambda_context, notification) == "generated"
    calls = Calls()
    async_result.CLIENTS.inject(s3=calls.wrap("s3", aws.s3))

    assert outcome_of(async_result, lambda_context, notification) == "duplicate"
    assert outcome_of(async_result, lambda_context, failed(notification, CLIENT_ERROR_REASON)) == "duplicate"

    assert not [op for service, op in calls.log if op.startswith("put")], calls.log
    assert sorted(aws.keys(OUTPUT_BUCKET)) == sorted(IMAGES.values())


def test_a_notification_for_a_superseded_upload_writes_nothing(
    async_result: Any, aws: Aws, lambda_context: Any
) -> None:
    endpoint = FakeEndpoint(aws.s3)
    queued(aws, endpoint)
    (old,) = endpoint.process()
    # Re-uploaded between the submission and the notification.
    newer = queued(aws, endpoint)
    (new,) = endpoint.process()

    assert outcome_of(async_result, lambda_context, old) == "superseded"
    assert aws.keys(OUTPUT_BUCKET) == []
    # Only the newer upload's request is left waiting.
    assert [key.rsplit("/", 1)[1] for key in aws.keys(TRANSCRIPT_BUCKET, PREFIX)] == [
        f"{new['inferenceId']}.context.json",
        f"{new['inferenceId']}.json",
    ]
    assert outcome_of(async_result, lambda_context, new) == "generated"
    assert aws.read_json(OUTPUT_BUCKET, IMAGES["json"])["source"]["upload_id"] == newer.version_id


def test_a_missing_output_object_is_a_bad_endpoint_response(async_result: Any, aws: Aws, lambda_context: Any) -> None:
    endpoint = FakeEndpoint(aws.s3)
    queued(aws, endpoint)
    (notification,) = endpoint.process()
    output = notification["responseParameters"]["outputLocation"]
    aws.s3.delete_object(Bucket=TRANSCRIPT_BUCKET, Key=output.split("/", 3)[3])

    assert outcome_of(async_result, lambda_context, notification) == "rejected"
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["error"], record["reason"]) == (
        "bad-endpoint-response",
        "the endpoint's output object does not exist",
    )


@pytest.mark.parametrize("body", [b"not json", b'{"images": []}', b'{"images": ["aGVsbG8="]}'])
def test_malformed_output_is_a_bad_endpoint_response(
    async_result: Any, aws: Aws, lambda_context: Any, body: bytes
) -> None:
    endpoint = FakeEndpoint(aws.s3)
    queued(aws, endpoint)
    (notification,) = endpoint.process()
    aws.s3.put_object(
        Bucket=TRANSCRIPT_BUCKET, Key=notification["responseParameters"]["outputLocation"].split("/", 3)[3], Body=body
    )

    assert outcome_of(async_result, lambda_context, notification) == "rejected"
    assert aws.read_json(OUTPUT_BUCKET, ERROR_KEY)["error"] == "bad-endpoint-response"
    assert ledger(aws).get(SOURCE_KEY).stage == FAILED


def test_nsfw_output_is_not_kept(async_result: Any, aws: Aws, lambda_context: Any) -> None:
    endpoint = FakeEndpoint(aws.s3)
    queued(aws, endpoint)
    (notification,) = endpoint.process()
    key = notification["responseParameters"]["outputLocation"].split("/", 3)[3]
    output = aws.read_json(TRANSCRIPT_BUCKET, key) | {"nsfw_content_detected": [True]}
    aws.s3.put_object(Bucket=TRANSCRIPT_BUCKET, Key=key, Body=json.dumps(output).encode())

    assert outcome_of(async_result, lambda_context, notification) == "rejected"
    assert aws.read_json(OUTPUT_BUCKET, ERROR_KEY)["error"] == "nsfw-filtered"
    assert IMAGES["png"] not in aws.keys(OUTPUT_BUCKET)


def test_objects_outside_the_endpoints_prefixes_are_neither_read_nor_deleted(
    async_result: Any, aws: Aws, lambda_context: Any
) -> None:
    """A notification naming some other object (a mistake, or a forgery) cannot make this stage read or delete it."""
    endpoint = FakeEndpoint(aws.s3)
    queued(aws, endpoint)
    (notification,) = endpoint.process()
    aws.s3.put_object(Bucket=TRANSCRIPT_BUCKET, Key="transcripts/precious.json", Body=b'{"images": []}')
    aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key="images/other.mp3.png", Body=b"png")
    notification["responseParameters"]["outputLocation"] = f"s3://{TRANSCRIPT_BUCKET}/transcripts/precious.json"
    notification["responseParameters"]["failureLocation"] = f"s3://{OUTPUT_BUCKET}/images/other.mp3.png"

    assert outcome_of(async_result, lambda_context, notification) == "rejected"
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert record["error"] == "bad-endpoint-response" and "where the endpoint writes" in record["reason"]
    assert "transcripts/precious.json" in aws.keys(TRANSCRIPT_BUCKET)
    assert "images/other.mp3.png" in aws.keys(OUTPUT_BUCKET)


def test_a_request_of_another_application_is_ignored(async_result: Any, aws: Aws, lambda_context: Any) -> None:
    notification = completed("s3://someone-else/requests/1.json", "s3://someone-else/outputs/1.out")
    assert outcome_of(async_result, lambda_context, notification) == "foreign"
    assert aws.keys(OUTPUT_BUCKET) == []


def test_a_message_that_is_no_notification_goes_back_to_the_queue(
    async_result: Any, aws: Aws, lambda_context: Any
) -> None:
    endpoint = FakeEndpoint(aws.s3)
    queued(aws, endpoint)
    (notification,) = endpoint.process()
    batch = sqs_batch({"no": "inputLocation"}, notification)
    batch["Records"].insert(0, {**batch["Records"][0], "messageId": "garbage", "body": "not json"})

    response = async_result.handler(batch, lambda_context)

    assert response["batchItemFailures"] == [{"itemIdentifier": "garbage"}, {"itemIdentifier": "message-0"}]
    assert [item["outcome"] for item in response["results"]] == ["generated"]


def test_an_unreadable_output_is_retried_with_a_retry_record(async_result: Any, aws: Aws, lambda_context: Any) -> None:
    from tests.lambdas.support import FailingS3

    endpoint = FakeEndpoint(aws.s3)
    queued(aws, endpoint)
    (notification,) = endpoint.process()
    async_result.CLIENTS.inject(s3=FailingS3(aws.s3, "get_object", prefix="async/outputs/"))

    response = async_result.handler(sqs_batch(notification), lambda_context)

    assert response["batchItemFailures"] == [{"itemIdentifier": "message-0"}]
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["error"], record["details"]["retried"]) == ("internal-error", True)
    # The redelivery, once S3 answers, replaces the retry record with the image.
    async_result.CLIENTS.inject(s3=aws.s3)
    assert outcome_of(async_result, lambda_context, notification) == "generated"
    assert ERROR_KEY not in aws.keys(OUTPUT_BUCKET)


def test_a_direct_invocation_is_one_notification(async_result: Any, aws: Aws, lambda_context: Any) -> None:
    endpoint = FakeEndpoint(aws.s3)
    uploaded = transcribing(aws)
    queued(aws, endpoint, uploaded)
    (notification,) = endpoint.process()

    assert async_result.handler(notification, lambda_context)["results"][0]["outcome"] == "generated"


def _waiting_since(aws: Aws, hours: float, lease_left_s: float) -> None:
    """Move the waiting upload's clock: it started waiting `hours` ago and its lease has `lease_left_s` left."""
    from datetime import UTC, datetime, timedelta

    from sweeper.core import iso

    aws.dynamodb.update_item(
        TableName=LEDGER_TABLE,
        Key={"upload_key": {"S": SOURCE_KEY}},
        UpdateExpression="SET updated_at = :u, lease_until = :l",
        ExpressionAttributeValues={
            ":u": {"S": iso(datetime.now(UTC) - timedelta(hours=hours))},
            ":l": {"N": str(time.time() + lease_left_s)},
        },
    )


def test_a_request_that_outlives_its_ttl_is_recorded_stuck(
    sweeper: Any, async_result: Any, aws: Aws, lambda_context: Any
) -> None:
    endpoint = FakeEndpoint(aws.s3)
    queued(aws, endpoint)
    # No notification ever came (the request expired and its error notification was lost).
    _waiting_since(aws, hours=4, lease_left_s=-60)

    swept = sweeper.handler({"source": "aws.events"}, lambda_context)["results"]

    assert swept == [{"key": SOURCE_KEY, "stage": WAITING, "outcome": "stuck", "error_key": ERROR_KEY}]
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("generate", "stuck")
    assert "never answered the queued request" in record["reason"]
    # A notification after all that finds the upload final: nothing is overwritten.
    (late,) = endpoint.process()
    assert outcome_of(async_result, lambda_context, late) == "duplicate"
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]


def test_a_request_within_its_ttl_is_not_stuck_yet(sweeper: Any, aws: Aws, lambda_context: Any) -> None:
    queued(aws, FakeEndpoint(aws.s3))
    # Waiting longer than stuckAfterMinutes, but requestTtlMinutes is longer still.
    _waiting_since(aws, hours=4, lease_left_s=600)

    swept = sweeper.handler({"source": "aws.events"}, lambda_context)["results"]

    assert swept == [{"key": SOURCE_KEY, "stage": WAITING, "outcome": "waiting", "error_key": None}]
    assert aws.keys(OUTPUT_BUCKET) == []
    assert ledger(aws).get(SOURCE_KEY).stage == WAITING
