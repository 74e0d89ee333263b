"""invoke_sd's service with the ledger: one endpoint call per upload, and exactly one result, for the current upload."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from invoke_sd.endpoint import EndpointFailure
from pipeline_common.batch import RecordsFailedError
from pipeline_common.error_records import utc_now
from pipeline_common.ledger import TRANSCRIBING
from tests.lambdas.invoke_sd_support import (
    ENDPOINT,
    ERROR_KEY,
    EXPECTED_PROMPT,
    IMAGES,
    SOURCE_KEY,
    TRANSCRIPT_KEY,
    NoEndpoint,
    client_error,
    expect_call,
    ledger,
    put_transcript,
    run,
    transcribing,
    transcript_doc,
)
from tests.lambdas.support import OUTPUT_BUCKET, TRANSCRIPT_BUCKET, Aws, FailingS3, endpoint_response, tiny_png

ROLE_DENIED = (
    "User: arn:aws:sts::123456789012:assumed-role/InfraStack-InvokeSdRole-1A2B/invoke-sd is not authorized to "
    f"perform: sagemaker:InvokeEndpoint on resource: arn:aws:sagemaker:us-east-1:123456789012:endpoint/{ENDPOINT}"
)


def put_old_images(aws: Aws) -> None:
    """The image set of an earlier upload under SOURCE_KEY."""
    for key in IMAGES.values():
        aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=key, Body=b"earlier result")


def outcome(results: list[Any]) -> str:
    (result,) = results
    return result.outcome


def test_repeated_event_is_a_duplicate_without_an_endpoint_call(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    event = put_transcript(aws)
    expect_call(stubber, endpoint_response(tiny_png(2, 2)))
    assert outcome(run(aws, client, event)) == "generated"
    endpoint = NoEndpoint()

    again = run(aws, endpoint, event)

    assert outcome(again) == "duplicate"
    assert endpoint.calls == []
    assert aws.keys(OUTPUT_BUCKET) == sorted(IMAGES.values())
    assert aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["png"])["Body"].read() == tiny_png(2, 2)


def test_an_attempt_holding_the_generation_lease_makes_another_a_duplicate(aws: Aws) -> None:
    uploaded = transcribing(aws)
    event = put_transcript(aws, of=uploaded)
    # Another invocation for the same upload is calling the endpoint right now.
    ledger(aws).begin_generation(
        SOURCE_KEY, uploaded.version_id, token="other", until=4e9, now=utc_now(), clock=1_000_000.0
    )
    endpoint = NoEndpoint()

    assert outcome(run(aws, endpoint, event)) == "duplicate"
    assert endpoint.calls == []
    assert aws.keys(OUTPUT_BUCKET) == []


def test_new_upload_replaces_the_image_set_of_an_earlier_one(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    expect_call(stubber, endpoint_response(tiny_png(2, 2)))
    run(aws, client, put_transcript(aws))
    newer = transcribing(aws, b"ID3 a new recording under the same name")
    expect_call(stubber, endpoint_response(tiny_png(3, 3)))

    assert outcome(run(aws, client, put_transcript(aws, of=newer))) == "generated"

    stubber.assert_no_pending_responses()
    assert aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["png"])["Body"].read() == tiny_png(3, 3)
    assert aws.read_json(OUTPUT_BUCKET, IMAGES["json"])["source"]["upload_id"] == newer.version_id


def test_transcript_of_a_replaced_upload_is_superseded(aws: Aws) -> None:
    old = transcribing(aws)
    event = put_transcript(aws, of=old)
    transcribing(aws, b"ID3 a newer recording, whose own transcript event makes its result")
    put_old_images(aws)  # e.g. already written for the newer upload
    endpoint = NoEndpoint()

    assert outcome(run(aws, endpoint, event)) == "superseded"
    assert endpoint.calls == []
    assert aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["png"])["Body"].read() == b"earlier result"


def test_unusable_transcript_of_a_replaced_upload_is_superseded_too(aws: Aws) -> None:
    old = transcribing(aws)
    event = put_transcript(aws, transcript_doc("", status="FAILED"), of=old)
    transcribing(aws, b"ID3 newer")

    assert outcome(run(aws, NoEndpoint(), event)) == "superseded"
    assert aws.keys(OUTPUT_BUCKET) == []


def test_transcript_the_ledger_never_saw_is_superseded(aws: Aws) -> None:
    uploaded = aws.upload(SOURCE_KEY, b"ID3 never claimed by transcribe_trigger")

    assert outcome(run(aws, NoEndpoint(), put_transcript(aws, of=uploaded))) == "superseded"
    assert aws.keys(OUTPUT_BUCKET) == []


def test_a_transcript_version_that_expired_is_superseded(aws: Aws) -> None:
    # A replay days later: the newer job's transcript replaced this version, and the old one expired.
    event = put_transcript(aws)
    put_old_images(aws)
    event["Records"][0]["s3"]["object"]["versionId"] = "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"
    endpoint = NoEndpoint()

    assert outcome(run(aws, endpoint, event)) == "superseded"
    assert endpoint.calls == []
    assert aws.keys(OUTPUT_BUCKET) == sorted(IMAGES.values()), "the newer upload's images stay"


def test_the_event_s_transcript_version_is_read(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    # A quick re-upload: both jobs write the same transcript key; the bucket keeps both versions.
    first = put_transcript(aws)
    newer = transcribing(aws, b"ID3 the second take")
    second = put_transcript(aws, transcript_doc("a red bicycle"), of=newer)
    client, stubber = sagemaker
    expect_call(stubber, endpoint_response(tiny_png()), prompt="a red bicycle")

    # Reading the latest version instead would make the first event generate the second take's image.
    outcomes = [outcome(run(aws, client, event)) for event in (first, second)]

    assert outcomes == ["superseded", "generated"]
    stubber.assert_no_pending_responses()
    metadata = aws.read_json(OUTPUT_BUCKET, IMAGES["json"])
    assert metadata["transcript"] == "a red bicycle"
    assert metadata["transcript_source"]["version_id"] == second["Records"][0]["s3"]["object"]["versionId"]


def test_transcript_too_damaged_to_name_its_job_is_the_waiting_upload_s(aws: Aws) -> None:
    event = put_transcript(aws, b"{ not json")

    assert outcome(run(aws, NoEndpoint(), event)) == "rejected"
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("transcript", "transcript-unreadable")
    assert record["details"]["transcript"]["key"] == TRANSCRIPT_KEY
    # Once the upload has its result, a damaged transcript cannot be matched to it and changes nothing.
    assert outcome(run(aws, NoEndpoint(), event)) == "unattributable"
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]


def test_an_older_uploads_damaged_transcript_never_fails_the_newer_upload(aws: Aws) -> None:
    """A's nameless transcript, written before B was uploaded, arrives while B waits: B is untouched."""
    older = put_transcript(aws, b"{ not json")
    time.sleep(1.1)  # S3 times objects to the second: B is received in a later second than A's transcript
    transcribing(aws)

    assert outcome(run(aws, NoEndpoint(), older)) == "unattributable"
    assert aws.keys(OUTPUT_BUCKET) == []
    assert ledger(aws).get(SOURCE_KEY).stage == TRANSCRIBING


def test_low_confidence_transcript_is_no_speech(aws: Aws) -> None:
    event = put_transcript(aws, "transcribe_output_low_confidence.json")
    put_old_images(aws)
    endpoint = NoEndpoint()

    assert outcome(run(aws, endpoint, event)) == "rejected"

    assert endpoint.calls == []
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]  # the earlier upload's images went with it
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("transcript", "no-speech")
    assert record["reason"].startswith("no speech detected")
    assert "0.12" in record["reason"] and "MIN_TRANSCRIPT_CONFIDENCE" in record["reason"]
    assert "record again" in record["action"]
    details = record["details"]
    assert details["mean_confidence"] == pytest.approx(0.12)
    assert details["heard"] == "Uh, the hm."
    assert (details["words"], details["min_transcript_confidence"]) == (3, 0.2)


def test_transcript_without_confidences_is_not_judged(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    document = transcript_doc(EXPECTED_PROMPT)
    document["results"]["items"] = [{"type": "pronunciation", "alternatives": [{"content": "An"}]}]
    expect_call(stubber, endpoint_response(tiny_png()))

    assert outcome(run(aws, client, put_transcript(aws, document))) == "generated"
    assert aws.read_json(OUTPUT_BUCKET, IMAGES["json"])["transcript_source"]["mean_confidence"] is None


@pytest.mark.parametrize(
    ("code", "status", "message", "modeled", "error"),
    [
        ("ValidationError", 400, f"Endpoint {ENDPOINT} of account 123456789012 not found.", {}, "endpoint-not-found"),
        ("ModelError", 424, "x", {"OriginalStatusCode": 400, "OriginalMessage": "bad size"}, "endpoint-rejected"),
        ("ModelError", 424, "Your invocation timed out while waiting for a response", {}, "endpoint-timeout"),
        ("AccessDeniedException", 403, ROLE_DENIED, {}, "endpoint-error"),
    ],
)
def test_permanent_endpoint_failure_becomes_the_record_without_raising(
    aws: Aws, sagemaker: tuple[Any, Stubber], code: str, status: int, message: str, modeled: Any, error: str
) -> None:
    client, stubber = sagemaker
    client_error(stubber, code, status, message, **modeled)
    put_old_images(aws)

    results = run(aws, client, put_transcript(aws))  # no raise: a retry would fail the same way

    assert outcome(results) == "rejected"
    stubber.assert_no_pending_responses()  # one call, no retry
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"], record["details"]["attempts"]) == ("generate", error, 1)
    assert "123456789012" not in record["reason"] and "arn:aws" not in record["reason"]
    entry = ledger(aws).get(SOURCE_KEY)
    assert entry is not None and entry.stage == "failed" and entry.lease_token is None


def test_missing_endpoint_record_names_the_endpoint_but_not_the_account(
    aws: Aws, sagemaker: tuple[Any, Stubber]
) -> None:
    client, stubber = sagemaker
    client_error(stubber, "ValidationError", 400, f"Endpoint {ENDPOINT} of account 123456789012 not found.")

    run(aws, client, put_transcript(aws))

    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert record["reason"] == f"Endpoint {ENDPOINT} of account <account> not found."
    assert f"the endpoint {ENDPOINT} does not exist: deploy HuggingFaceModelEndpoint" in record["action"]


def test_rejected_request_record_shows_no_account_id(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    client_error(
        stubber,
        "ModelError",
        424,
        "Received client error (400) from primary",
        OriginalStatusCode=400,
        OriginalMessage=json.dumps({"error": "height must be a multiple of 8"}),
        LogStreamArn="arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/sd",
    )

    run(aws, client, put_transcript(aws))

    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert record["reason"] == "height must be a multiple of 8"
    assert "123456789012" not in json.dumps(record)


def test_permanent_failure_message_is_logged_for_the_operator(
    aws: Aws, sagemaker: tuple[Any, Stubber], caplog: pytest.LogCaptureFixture
) -> None:
    client, stubber = sagemaker
    client_error(stubber, "AccessDeniedException", 403, ROLE_DENIED)

    run(aws, client, put_transcript(aws))

    assert "arn:aws" not in json.dumps(aws.read_json(OUTPUT_BUCKET, ERROR_KEY))
    assert "InfraStack-InvokeSdRole-1A2B" in caplog.text


def test_nsfw_image_is_not_kept(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    expect_call(stubber, endpoint_response(tiny_png(), nsfw_content_detected=[True]))

    assert outcome(run(aws, client, put_transcript(aws))) == "rejected"

    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]  # no PNG, no page
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("generate", "nsfw-filtered")
    assert "rephrase the prompt" in record["action"]
    assert record["details"]["prompt"] == EXPECTED_PROMPT


def test_response_without_a_png_is_a_bad_endpoint_response(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    expect_call(stubber, endpoint_response(b"GIF89a not a png"))

    assert outcome(run(aws, client, put_transcript(aws))) == "rejected"

    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["error"], record["details"]["attempts"]) == ("bad-endpoint-response", 1)
    assert f"check that {ENDPOINT} serves this project's code/inference.py" == record["action"]


def test_transient_failure_raises_with_a_retry_record_and_the_retry_succeeds(
    aws: Aws, sagemaker: tuple[Any, Stubber]
) -> None:
    client, stubber = sagemaker
    for _ in range(4):
        client_error(stubber, "ServiceUnavailable", 503, "Service is unavailable")
    event = put_transcript(aws)
    sleeps: list[float] = []

    with pytest.raises(RecordsFailedError) as caught:
        run(aws, client, event, sleeps)

    assert isinstance(caught.value.__cause__, EndpointFailure) and len(sleeps) == 3
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("generate", "endpoint-unavailable")
    assert "Service is unavailable" in record["reason"] and record["details"]["retried"] is True
    assert not any(key.startswith("images/") for key in aws.keys(OUTPUT_BUCKET))
    # Not final, and the lease is given back: the queue's retry need not wait for it to run out.
    entry = ledger(aws).get(SOURCE_KEY)
    assert entry is not None and not entry.final and entry.lease_token is None

    expect_call(stubber, endpoint_response(tiny_png()))
    assert outcome(run(aws, client, event)) == "generated"
    assert aws.keys(OUTPUT_BUCKET) == sorted(IMAGES.values())  # the retry record went


def test_image_write_failure_records_a_retry_and_the_retry_succeeds(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    event = put_transcript(aws)
    expect_call(stubber, endpoint_response(tiny_png()))
    failing = FailingS3(aws.s3, "put_object", prefix=IMAGES["html"])

    with pytest.raises(RecordsFailedError) as caught:
        run(aws, client, event, s3=failing)

    assert isinstance(caught.value.__cause__, ClientError)
    assert failing.refused == [("put_object", IMAGES["html"])]
    # The PNG already written went with the record: never an incomplete image set next to an error record.
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert record["error"] == "internal-error"
    assert record["reason"] == "an unexpected ClientError interrupted invoke_sd; it is retried automatically"

    expect_call(stubber, endpoint_response(tiny_png()))
    assert outcome(run(aws, client, event)) == "generated"
    assert aws.keys(OUTPUT_BUCKET) == sorted(IMAGES.values())


def test_image_write_failure_is_recorded_at_the_generate_stage(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    expect_call(stubber, endpoint_response(tiny_png()))

    with pytest.raises(RecordsFailedError):
        run(aws, client, put_transcript(aws), s3=FailingS3(aws.s3, "put_object", prefix=IMAGES["html"]))

    assert aws.read_json(OUTPUT_BUCKET, ERROR_KEY)["stage"] == "generate"


def test_failure_reading_the_transcript_is_recorded_at_the_transcript_stage(aws: Aws) -> None:
    event = put_transcript(aws)
    endpoint = NoEndpoint()

    with pytest.raises(RecordsFailedError, match="AccessDenied"):
        run(aws, endpoint, event, s3=FailingS3(aws.s3, "get_object", prefix="transcripts/"))

    # The transcript was never read, so its job is unknown: no record can be tied to an upload yet.
    assert endpoint.calls == []
    assert aws.keys(OUTPUT_BUCKET) == []
    assert aws.read_json(TRANSCRIPT_BUCKET, TRANSCRIPT_KEY)["jobName"].startswith("s2i-")
