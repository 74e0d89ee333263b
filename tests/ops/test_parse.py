"""Reading dead-letter messages: Lambda records, EventBridge dead letters, redriven S3 events, malformed ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ops.dead_letters import MAX_ERROR_CHARS, REDRIVEN, DeadLetterError, parse_dead_letter
from tests.ops.support import (
    EVENTS_DIR,
    FAILED_ARN,
    INVOKE_SD_ARN,
    TRIGGER_ARN,
    endpoint_down_error,
    eventbridge_attributes,
    lambda_record,
    received,
    s3_event,
    transcribe_event,
)


def test_lambda_record_gives_the_original_event_for_the_unqualified_function() -> None:
    event = s3_event("notes/my idea.mp3")
    message = received(lambda_record(event, response_payload=endpoint_down_error()), message_id="abc")

    letter = parse_dead_letter(message)

    assert letter.message_id == "abc"
    assert letter.receipt_handle == "handle-abc"
    assert letter.function_arn == INVOKE_SD_ARN
    assert letter.payload == event
    assert letter.condition == "RetriesExhausted"
    assert letter.error == "ValidationError: Could not find endpoint speech-to-image-sd."
    assert letter.function_name == "InfraStack-InvokeSdFunction-Ef56Gh78"


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        (f"{TRIGGER_ARN}:$LATEST", TRIGGER_ARN),
        (f"{TRIGGER_ARN}:17", TRIGGER_ARN),  # an old version would run the unfixed code again
        (TRIGGER_ARN, TRIGGER_ARN),
        (f"{TRIGGER_ARN}:live", f"{TRIGGER_ARN}:live"),  # an alias is a route someone chose
    ],
)
def test_version_qualifiers_are_dropped_aliases_kept(recorded: str, expected: str) -> None:
    letter = parse_dead_letter(received(lambda_record(s3_event(), function_arn=recorded)))
    assert letter.function_arn == expected


@pytest.mark.parametrize(
    ("response_payload", "expected"),
    [
        ({"errorMessage": "RequestId: e4b4 Process exited before completing request"}, "RequestId: e4b4 Process"),
        ({"errorType": "Sandbox.Timedout"}, "Sandbox.Timedout"),
        ("Task timed out after 900.00 seconds", "Task timed out after 900.00 seconds"),
        ({"unexpected": 1}, '{"unexpected": 1}'),
    ],
)
def test_error_text_from_other_error_payloads(response_payload: Any, expected: str) -> None:
    letter = parse_dead_letter(received(lambda_record(s3_event(), response_payload=response_payload)))
    assert letter.error is not None
    assert letter.error.startswith(expected)


def test_event_age_exceeded_has_no_error_payload() -> None:
    letter = parse_dead_letter(received(lambda_record(s3_event(), condition="EventAgeExceeded")))
    assert letter.condition == "EventAgeExceeded"
    assert letter.error is None


def test_long_multiline_error_becomes_one_short_line() -> None:
    error = {"errorType": "ClientError", "errorMessage": "first line\n" + "x" * 5000}
    letter = parse_dead_letter(received(lambda_record(s3_event(), response_payload=error)))
    assert letter.error is not None
    assert "\n" not in letter.error
    assert len(letter.error) <= MAX_ERROR_CHARS
    assert letter.error.startswith("ClientError: first line x")


def test_eventbridge_dead_letter_replays_the_body_to_the_target() -> None:
    event = transcribe_event()
    message = received(event, eventbridge_attributes(code="NO_PERMISSIONS", message="not authorized"))

    letter = parse_dead_letter(message)

    assert letter.function_arn == FAILED_ARN
    assert letter.payload == event
    assert letter.condition == "NO_PERMISSIONS"
    assert letter.error == "not authorized"


def test_local_mode_record_is_read_like_lambdas() -> None:
    """Local mode writes the record the lead's dispatcher builds; the tool must read it unchanged."""
    from local.dispatcher import dead_letter_record
    from local.functions import Invocation

    invocation = Invocation(
        ok=False, error={"errorType": "EndpointError", "errorMessage": "endpoint down", "stackTrace": []}, attempt=3
    )
    event = s3_event()

    letter = parse_dead_letter(received(dead_letter_record(TRIGGER_ARN, event, invocation)))

    assert letter.function_arn == TRIGGER_ARN
    assert letter.payload == event
    assert letter.condition == "RetriesExhausted"
    assert letter.error == "EndpointError: endpoint down"


def test_redriven_s3_event_goes_back_to_its_queue_exactly_as_s3_sent_it() -> None:
    event = s3_event("notes/my idea.mp3")
    body = json.dumps(event, indent=1)  # S3's own formatting, not ours: it must go back byte for byte
    letter = parse_dead_letter(received(body, message_id="xyz"))

    assert letter.redriven
    assert (letter.function_arn, letter.function_name) == (None, None)
    assert letter.body == body
    assert letter.payload == event
    assert (letter.condition, letter.error) == (REDRIVEN, None)
    assert letter.label == "S3 event (s3://speech-to-image-input/notes/my idea.mp3)"


def test_s3_test_event_in_a_dead_letter_queue_is_a_redriven_message() -> None:
    body = (EVENTS_DIR / "s3_test_event.json").read_text()
    letter = parse_dead_letter(received(body))

    assert letter.redriven
    assert letter.body == body
    assert letter.label == "S3 event (no object)"


SAGEMAKER_SUCCESS = {
    "awsRegion": "us-east-1",
    "eventTime": "2026-12-02T10:00:00.000Z",
    "receivedTime": "2026-12-02T09:59:00.000Z",
    "invocationStatus": "Completed",
    "requestParameters": {"endpointName": "speech-to-image-sd", "inputLocation": "s3://t/async/requests/k/1.json"},
    "responseParameters": {"contentType": "application/json", "outputLocation": "s3://t/async/outputs/1.out"},
    "inferenceId": "1",
    "eventVersion": "1.0",
    "eventSource": "aws:sagemaker",
    "eventName": "InferenceResult",
}


@pytest.mark.parametrize(
    "body",
    [
        SAGEMAKER_SUCCESS,
        {"eventName": "TestNotification"},
        {"Type": "Notification", "MessageId": "m", "Message": json.dumps(SAGEMAKER_SUCCESS)},
    ],
    ids=["raw", "test-notification", "sns-envelope"],
)
def test_redriven_sagemaker_notification_goes_back_to_async_results_queue_unchanged(body: dict[str, Any]) -> None:
    """async_result's dead letters are the notifications themselves: sent back byte for byte."""
    message = received(body)
    letter = parse_dead_letter(message)
    assert letter.redriven and letter.body == message["Body"]
    assert (letter.condition, letter.error) == (REDRIVEN, None)
    if body is SAGEMAKER_SUCCESS:
        assert letter.label == "SageMaker notification (inference 1)"


def test_function_records_are_not_redriven() -> None:
    assert not parse_dead_letter(received(lambda_record(s3_event()))).redriven
    assert not parse_dead_letter(received(s3_event(), eventbridge_attributes())).redriven


def _without(record: dict[str, Any], *path: str) -> dict[str, Any]:
    """The record with one (nested) field removed."""
    inner = record
    for name in path[:-1]:
        inner = inner[name]
    del inner[path[-1]]
    return record


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (received("{not json"), "not JSON"),
        (received(""), "not JSON"),
        (received([1, 2]), "JSON list, not an object"),
        (received({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}), "neither a Lambda on-failure record"),
        (received({"Records": []}), "nor a notification from a source queue"),
        (received({"Records": [*s3_event()["Records"], {"eventSource": "aws:sns"}]}), "neither"),
        (received(_without(lambda_record(s3_event()), "requestContext", "functionArn")), "neither"),
        (received({**lambda_record(s3_event()), "requestContext": "oops"}), "neither"),
        (received(_without(lambda_record(s3_event()), "requestPayload")), "without requestPayload"),
        (received(lambda_record("just a string")), "requestPayload is str"),
        (received(lambda_record(s3_event(), function_arn="arn:aws:sqs:eu-west-1:123456789012:q")), "not a Lambda"),
        (received(transcribe_event(), eventbridge_attributes(target_arn="arn:aws:sqs:eu-west-1:1:q")), "not a Lambda"),
        (received([], eventbridge_attributes()), "not an object"),
        ({"Body": "{}"}, "no MessageId"),
    ],
)
def test_malformed_messages_say_why(message: dict[str, Any], why: str) -> None:
    with pytest.raises(DeadLetterError, match=why):
        parse_dead_letter(message)


def test_dead_letter_error_is_a_value_error() -> None:
    """Callers that only know ValueError still catch it."""
    with pytest.raises(ValueError, match="not JSON"):
        parse_dead_letter(received("nope"))
