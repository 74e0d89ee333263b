"""The asynchronous request key scheme and the reading of a failed request's failureReason."""

from __future__ import annotations

import pytest

from async_result.core import NotificationError, parse_notification
from async_result.failures import describe_failure, model_message
from pipeline_common.async_requests import parse_input_location, staged_request, upload_digest
from pipeline_common.keys import KeyMappingError
from tests.lambdas.async_support import CLIENT_ERROR_REASON, MODEL_MESSAGE

BUCKET = "transcripts"
PREFIX = "async/requests/"


@pytest.mark.parametrize("key", ["a.mp3", "notes/my idea.mp3", "ünï/cödé 🎤.mp3", "x!y+z%20.mp3", "a/b/c/d.ogg"])
def test_the_input_location_gives_back_the_source_key_and_the_upload(key: str) -> None:
    staged = staged_request(BUCKET, PREFIX, key, "version-1")

    parsed = parse_input_location(staged.input_location, bucket=BUCKET, prefix=PREFIX)

    assert parsed == staged
    assert parsed.source_key == key
    assert parsed.is_for("version-1") and not parsed.is_for("version-2")
    assert parsed.inference_id == upload_digest(key, "version-1")
    assert parsed.context_key.endswith(".context.json") and parsed.request_key.endswith(".json")


@pytest.mark.parametrize(
    "location",
    [
        "s3://other-bucket/async/requests/a.mp3/" + "0" * 40 + ".json",
        "s3://transcripts/transcripts/a.mp3.json",
        "s3://transcripts/async/requests/a.mp3/not-a-digest.json",
        "s3://transcripts/async/requests/a.mp3/" + "0" * 40 + ".context.json",
        "s3://transcripts/async/requests/" + "0" * 40 + ".json",
        "s3://transcripts/async/requests/bad%key/" + "0" * 40 + ".json",
    ],
)
def test_other_locations_are_not_requests(location: str) -> None:
    with pytest.raises(KeyMappingError):
        parse_input_location(location, bucket=BUCKET, prefix=PREFIX)


def test_a_key_too_long_for_a_request_is_refused() -> None:
    with pytest.raises(KeyMappingError, match="asynchronous request key"):
        staged_request(BUCKET, PREFIX, "é" * 330, "v")


def test_the_mms_wrapped_message_is_unwrapped() -> None:
    assert model_message(CLIENT_ERROR_REASON) == MODEL_MESSAGE


@pytest.mark.parametrize(
    ("reason", "code", "in_action"),
    [
        (CLIENT_ERROR_REASON, "endpoint-rejected", "imageParameters"),
        ('ClientError: Received client error (413) from primary with message "too big".', "endpoint-rejected", ""),
        (
            "ServerError: Invocation timed out while waiting for a response from container primary.",
            "endpoint-timeout",
            "",
        ),
        (
            "InternalServerError: Request expired: it waited longer than RequestTTLSeconds.",
            "endpoint-error",
            "requestTtlMinutes",
        ),
        (
            'ServerError: Received server error (500) from primary with message "CUDA out of memory".',
            "endpoint-error",
            "",
        ),
        ("", "endpoint-error", "CloudWatch"),
    ],
)
def test_failure_reasons_get_a_code_and_an_action(reason: str, code: str, in_action: str) -> None:
    failure = describe_failure(reason, None, "sd")

    assert failure.code == code
    assert in_action in failure.action
    assert "See https" not in failure.reason and "123456789012" not in failure.reason


def test_a_server_errors_message_is_the_quoted_text() -> None:
    reason = 'ServerError: Received server error (500) from primary with message "CUDA out of memory". See https://x.'
    assert describe_failure(reason, None, "sd").reason == "CUDA out of memory"


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"Type": "Notification", "Message": "{broken"}', b"\xff"])
def test_bodies_that_are_no_notification_raise(body: str | bytes) -> None:
    with pytest.raises(NotificationError):
        parse_notification(body)
