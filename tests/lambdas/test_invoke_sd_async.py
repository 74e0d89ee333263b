"""invoke_sd with an asynchronous endpoint: the same checks, then one request staged in S3 and queued."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from botocore.stub import Stubber

from invoke_sd.async_request import NOTIFICATION_MARGIN_S
from invoke_sd.endpoint import derive_seed
from invoke_sd.settings import DEFAULT_INVOCATION_TIMEOUT_SECONDS
from pipeline_common.async_requests import upload_digest
from pipeline_common.ledger import TRANSCRIBING, WAITING
from pipeline_common.render import ImageRequest
from tests.lambdas.invoke_sd_support import (
    ENDPOINT,
    ERROR_KEY,
    EXPECTED_PROMPT,
    PARAMETERS,
    SOURCE_KEY,
    ledger,
    put_transcript,
    run,
    transcribing,
    transcript_doc,
)
from tests.lambdas.support import OUTPUT_BUCKET, TRANSCRIPT_BUCKET, Aws, sqs_batch

TTL = 1800
# The lease outlasts the queue's TTL, the time the GPU may then take, and the notification's way back.
WAIT_MARGIN_S = DEFAULT_INVOCATION_TIMEOUT_SECONDS + NOTIFICATION_MARGIN_S
ASYNC = {"endpoint_mode": "async", "transcript_bucket": TRANSCRIPT_BUCKET, "request_ttl_seconds": TTL}
PREFIX = "async/requests/"


def staged_keys(aws: Aws) -> list[str]:
    return aws.keys(TRANSCRIPT_BUCKET, PREFIX)


def expect_submission(stubber: Stubber, version_id: str) -> str:
    """Queue one InvokeEndpointAsync response, checking every argument; returns the request's key."""
    digest = upload_digest(SOURCE_KEY, version_id)
    key = f"{PREFIX}notes/my!20idea.mp3/{digest}.json"
    stubber.add_response(
        "invoke_endpoint_async",
        {"InferenceId": digest, "OutputLocation": f"s3://{TRANSCRIPT_BUCKET}/async/outputs/x.out"},
        expected_params={
            "EndpointName": ENDPOINT,
            "InputLocation": f"s3://{TRANSCRIPT_BUCKET}/{key}",
            "ContentType": "application/json",
            "Accept": "application/json",
            "InferenceId": digest,
            "RequestTTLSeconds": TTL,
            # Set explicitly: the endpoint's work budget assumes the same limit (SD_TIME_LIMIT_SECONDS).
            "InvocationTimeoutSeconds": DEFAULT_INVOCATION_TIMEOUT_SECONDS,
        },
    )
    return key


def async_error(stubber: Stubber, code: str, status: int, message: str = "") -> None:
    stubber.add_client_error(
        "invoke_endpoint_async", service_error_code=code, service_message=message or code, http_status_code=status
    )


def test_transcript_becomes_one_queued_request(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    uploaded = transcribing(aws)
    key = expect_submission(stubber, uploaded.version_id)
    before = time.time()

    (result,) = run(aws, client, put_transcript(aws, of=uploaded), **ASYNC)

    stubber.assert_no_pending_responses()
    assert (result.outcome, result.image_key, result.error_key) == ("submitted", None, None)
    # The request body is exactly the real-time one; its context travels beside it.
    request = aws.read_json(TRANSCRIPT_BUCKET, key)
    assert request == {"inputs": EXPECTED_PROMPT, "parameters": PARAMETERS | {"seed": derive_seed(SOURCE_KEY)}}
    context_key = key.removesuffix(".json") + ".context.json"
    assert staged_keys(aws) == sorted([key, context_key])
    context = ImageRequest.from_json(aws.s3.get_object(Bucket=TRANSCRIPT_BUCKET, Key=context_key)["Body"].read())
    assert (context.source_key, context.upload_id, context.prompt) == (SOURCE_KEY, uploaded.version_id, EXPECTED_PROMPT)
    assert context.transcript.text == EXPECTED_PROMPT
    head = aws.s3.head_object(Bucket=TRANSCRIPT_BUCKET, Key=key)
    assert head["Metadata"] == {"upload-id": uploaded.version_id}
    # Waiting for the notification: nothing in the output bucket yet, and the lease outlasts the TTL.
    assert aws.keys(OUTPUT_BUCKET) == []
    entry = ledger(aws).get(SOURCE_KEY)
    assert entry is not None and entry.stage == WAITING and entry.lease_until is not None
    assert before + TTL + WAIT_MARGIN_S <= entry.lease_until <= time.time() + TTL + WAIT_MARGIN_S


def test_inference_id_is_deterministic_per_upload(aws: Aws) -> None:
    first, again = upload_digest(SOURCE_KEY, "v1"), upload_digest(SOURCE_KEY, "v1")
    assert first == again and 1 <= len(first) <= 64
    assert upload_digest(SOURCE_KEY, "v2") != first
    assert upload_digest("other.mp3", "v1") != first


def test_a_repeated_transcript_event_queues_no_second_request(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    uploaded = transcribing(aws)
    expect_submission(stubber, uploaded.version_id)
    event = put_transcript(aws, of=uploaded)
    assert run(aws, client, event, **ASYNC)[0].outcome == "submitted"

    # The Stubber has no second response queued: a second InvokeEndpointAsync would fail the test.
    assert run(aws, client, event, **ASYNC)[0].outcome == "duplicate"
    assert ledger(aws).get(SOURCE_KEY).stage == WAITING


def test_transient_errors_are_retried_then_the_request_is_queued(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    uploaded = transcribing(aws)
    async_error(stubber, "ThrottlingException", 400)
    async_error(stubber, "ServiceUnavailable", 503)
    expect_submission(stubber, uploaded.version_id)
    sleeps: list[float] = []

    assert run(aws, client, put_transcript(aws, of=uploaded), sleeps, **ASYNC)[0].outcome == "submitted"
    assert sleeps == [0.5, 1.0]


def test_an_endpoint_that_stays_overloaded_gives_the_lease_back(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    uploaded = transcribing(aws)
    for _ in range(4):
        async_error(stubber, "ServiceUnavailable", 503)
    event = put_transcript(aws, of=uploaded)

    with pytest.raises(Exception, match="endpoint-unavailable"):
        run(aws, client, event, **ASYNC)

    entry = ledger(aws).get(SOURCE_KEY)
    assert entry.stage == TRANSCRIBING and entry.lease_token is None
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["error"], record["details"]["retried"]) == ("endpoint-unavailable", True)
    # The queue's redelivery queues the request (the staged objects are simply written again).
    expect_submission(stubber, uploaded.version_id)
    assert run(aws, client, event, **ASYNC)[0].outcome == "submitted"


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("ValidationError", f"Endpoint {ENDPOINT} of account 123456789012 not found.", "endpoint-not-found"),
        ("ValidationError", "Endpoint is not configured for asynchronous inference.", "endpoint-error"),
    ],
)
def test_a_permanent_error_is_the_uploads_error_record(
    aws: Aws, sagemaker: tuple[Any, Stubber], code: str, message: str, expected: str
) -> None:
    client, stubber = sagemaker
    async_error(stubber, code, 400, message)

    (result,) = run(aws, client, put_transcript(aws), **ASYNC)

    assert result.outcome == "rejected"
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("generate", expected)
    assert "123456789012" not in json.dumps(record)
    assert ledger(aws).get(SOURCE_KEY).stage == "failed"
    # Nothing will read the request: it is taken back at once.
    assert staged_keys(aws) == []


def test_transcript_checks_come_first(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, _ = sagemaker
    (result,) = run(aws, client, put_transcript(aws, transcript_doc("")), **ASYNC)

    assert result.outcome == "rejected"
    assert aws.read_json(OUTPUT_BUCKET, ERROR_KEY)["error"] == "no-speech"
    assert staged_keys(aws) == []


def test_handler_queues_through_the_sqs_batch(invoke_async: Any, aws: Aws, lambda_context: Any) -> None:
    uploaded = transcribing(aws)
    event = put_transcript(aws, of=uploaded)

    response = invoke_async.handler(sqs_batch(event, event), lambda_context)

    assert response["batchItemFailures"] == []
    assert [item["outcome"] for item in response["results"]] == ["submitted", "duplicate"]
    endpoint = invoke_async.CLIENTS.get("sagemaker_runtime")
    (params,) = endpoint.submitted
    assert params["RequestTTLSeconds"] == 120 * 60  # PipelineConfig's requestTtlMinutes
    assert params["InputLocation"].startswith(f"s3://{TRANSCRIPT_BUCKET}/{PREFIX}notes/my!20idea.mp3/")
