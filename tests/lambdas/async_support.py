"""Helpers for the async_result tests: an upload whose request is queued, and SageMaker's notifications."""

from __future__ import annotations

import json
from typing import Any

from tests.lambdas.invoke_sd_support import put_transcript, run, transcribing
from tests.lambdas.race_support import FakeEndpoint
from tests.lambdas.support import TRANSCRIPT_BUCKET, Aws, Uploaded

ASYNC = {"endpoint_mode": "async", "transcript_bucket": TRANSCRIPT_BUCKET, "request_ttl_seconds": 1800}
PREFIX = "async/requests/"
# What SageMaker reports when the model's input_fn/predict_fn raises: the toolkit answers 400 with its own
# {"code", "type", "message"} body around the model's {"error": ...}.
MODEL_MESSAGE = "height and width must be multiples of 8"
CLIENT_ERROR_REASON = (
    'ClientError: Received client error (400) from primary with message "{\n  "code": 400,\n'
    '  "type": "InternalServerException",\n  "message": "{\\"error\\": \\"' + MODEL_MESSAGE + '\\"}"\n}\n". '
    "See https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#logEventViewer:"
    "group=/aws/sagemaker/Endpoints/speech-to-image-sd in account 123456789012 for more information."
)


def queued(aws: Aws, endpoint: FakeEndpoint, uploaded: Uploaded | None = None) -> Uploaded:
    """An upload whose transcript invoke_sd read and whose request it queued at `endpoint`."""
    uploaded = uploaded or transcribing(aws)
    (result,) = run(aws, endpoint, put_transcript(aws, of=uploaded), **ASYNC)
    assert result.outcome == "submitted"
    return uploaded


def failed(notification: dict[str, Any], reason: str, failure_location: str | None = None) -> dict[str, Any]:
    """The error notification for the same request: invocationStatus Failed and a failureReason."""
    response = {"failureLocation": failure_location} if failure_location else {}
    return notification | {"invocationStatus": "Failed", "failureReason": reason, "responseParameters": response}


def sns_envelope(notification: dict[str, Any]) -> dict[str, Any]:
    """The notification as SNS delivers it without raw message delivery."""
    return {
        "Type": "Notification",
        "MessageId": "5e1b7f9a-0000-4000-8000-000000000000",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:speech-to-image-async-success",
        "Message": json.dumps(notification),
        "Timestamp": "2026-12-02T03:00:00.000Z",
        "SignatureVersion": "1",
    }
