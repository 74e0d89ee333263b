"""Reading the messages in the pipeline's dead-letter queues: which event failed, where it goes back to, and why.

A stage's dead-letter queue holds three shapes (see "Dead-letter records" in docs/CONTRACTS.md):
- a Lambda on-failure destination record: the event is its `requestPayload`, the function its
  `requestContext.functionArn` (functions invoked asynchronously: EventBridge, the schedule, local mode);
- an EventBridge target dead letter: the body is the event, the `TARGET_ARN` attribute names the function;
- a message SQS moved from the stage's source queue after too many receives: the body is the S3 event
  notification itself (`{"Records": [{"eventSource": "aws:s3", ...}]}`), or for async_result the SageMaker
  asynchronous inference notification (`{"eventSource": "aws:sagemaker", ...}`, raw SNS delivery), and it
  goes back to that queue.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Longer error texts are cut: the report prints one line per message.
MAX_ERROR_CHARS = 300

FUNCTION_ARN = re.compile(
    r"^(?P<function>arn:[\w-]+:lambda:[\w-]+:\d{12}:function:[\w-]+)(?::(?P<qualifier>[\w$.-]+))?$",
    re.ASCII,
)
EVENTBRIDGE_ATTRIBUTES = ("RULE_ARN", "TARGET_ARN", "ERROR_CODE", "ERROR_MESSAGE")
# The condition shown for a message SQS moved here: it carries no error of its own (the upload's error
# record and the function's log say what went wrong).
REDRIVEN = "MaxReceiveCountExceeded"


class DeadLetterError(ValueError):
    """A message this tool cannot replay; the message says why."""


@dataclass(frozen=True)
class DeadLetter:
    """One failed event read from a dead-letter queue."""

    message_id: str
    receipt_handle: str
    # The function to invoke again, without a version qualifier such as :$LATEST; None for a message
    # redriven from the stage's source queue, which goes back to that queue instead.
    function_arn: str | None
    payload: dict[str, Any]  # the original event
    condition: str | None  # RetriesExhausted / EventAgeExceeded, the EventBridge ERROR_CODE, or REDRIVEN
    error: str | None  # short text of the last error
    # The exact message body to send back to the source queue (redriven messages only): sent as received.
    body: str | None = None

    @property
    def redriven(self) -> bool:
        """True for a raw S3 event notification that SQS moved here from the stage's source queue."""
        return self.function_arn is None

    @property
    def function_name(self) -> str | None:
        """The function's name, the last part of its ARN (None for a redriven message)."""
        return self.function_arn.split(":")[6] if self.function_arn else None

    @property
    def label(self) -> str:
        """What the report calls this event: the function it failed in, or the objects it is about."""
        if self.function_name is not None:
            return self.function_name
        if _is_sagemaker_notification(self.payload):
            return f"SageMaker notification (inference {self.payload.get('inferenceId') or '?'})"
        objects = [
            f"s3://{record['s3']['bucket']['name']}/{record['s3']['object']['key']}"
            for record in self.payload.get("Records", [])
            if _has_object(record)
        ]
        return f"S3 event ({', '.join(objects) or 'no object'})"


def unqualified_function_arn(arn: str) -> str:
    """The function ARN without a version (`:$LATEST`, `:7`); an alias stays, it is a deliberate route."""
    match = FUNCTION_ARN.match(arn)
    if match is None:
        raise DeadLetterError(f"not a Lambda function ARN: {arn!r}")
    qualifier = match["qualifier"]
    # A replay must reach the fixed code: a recorded version number would run the old code again.
    if qualifier is None or qualifier.startswith("$") or qualifier.isdigit():
        return match["function"]
    return arn


def short(text: str) -> str:
    """One line, at most MAX_ERROR_CHARS characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _error_text(response_payload: Any) -> str | None:
    """`errorType: errorMessage` from a Lambda error payload (either part alone when the other is missing)."""
    if response_payload is None:
        return None
    if isinstance(response_payload, Mapping):
        parts = [response_payload.get("errorType"), response_payload.get("errorMessage")]
        text = ": ".join(str(part) for part in parts if part)
        return short(text) if text else short(json.dumps(response_payload))
    return short(response_payload if isinstance(response_payload, str) else json.dumps(response_payload))


def _attribute(message: Mapping[str, Any], name: str) -> str | None:
    """A string message attribute, or None."""
    value = (message.get("MessageAttributes") or {}).get(name)
    return value.get("StringValue") if isinstance(value, Mapping) else None


def _has_object(record: Any) -> bool:
    """True for an S3 event record that names a bucket and a key."""
    try:
        return isinstance(record["s3"]["bucket"]["name"], str) and isinstance(record["s3"]["object"]["key"], str)
    except (KeyError, TypeError):
        return False


def _is_s3_notification(body: Mapping[str, Any]) -> bool:
    """True for an S3 event notification as S3 sends it to SQS: records from aws:s3, or S3's test event."""
    if body.get("Service") == "Amazon S3" and body.get("Event") == "s3:TestEvent":
        return True
    records = body.get("Records")
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(record, dict) and record.get("eventSource") == "aws:s3" for record in records)
    )


def _is_sagemaker_notification(body: Mapping[str, Any]) -> bool:
    """True for an asynchronous inference notification, raw or in its SNS envelope (async_result's queue)."""
    if body.get("Type") == "Notification" and isinstance(body.get("Message"), str):
        return '"aws:sagemaker"' in body["Message"] or "TestNotification" in body["Message"]
    return body.get("eventSource") == "aws:sagemaker" or body.get("eventName") == "TestNotification"


def parse_dead_letter(message: Mapping[str, Any]) -> DeadLetter:
    """Read one SQS message (as ReceiveMessage returns it, with MessageAttributes) as a dead letter."""
    message_id = message.get("MessageId")
    receipt_handle = message.get("ReceiptHandle")
    if not message_id or not receipt_handle:
        raise DeadLetterError("not a received SQS message (no MessageId or ReceiptHandle)")
    raw_body = message.get("Body", "")
    try:
        body = json.loads(raw_body)
    except (TypeError, ValueError) as exc:
        raise DeadLetterError(f"the body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise DeadLetterError(f"the body is JSON {type(body).__name__}, not an object")

    target_arn = _attribute(message, "TARGET_ARN")
    if target_arn is not None:
        # EventBridge could not deliver to its target: the body is the event itself.
        return DeadLetter(
            message_id=message_id,
            receipt_handle=receipt_handle,
            function_arn=unqualified_function_arn(target_arn),
            payload=body,
            condition=_attribute(message, "ERROR_CODE"),
            error=short(text) if (text := _attribute(message, "ERROR_MESSAGE")) else None,
        )

    context = body.get("requestContext")
    if context is None and (_is_s3_notification(body) or _is_sagemaker_notification(body)):
        # SQS moved it here from the stage's source queue after maxReceiveCount receives: it goes back there.
        return DeadLetter(
            message_id=message_id,
            receipt_handle=receipt_handle,
            function_arn=None,
            payload=body,
            condition=REDRIVEN,
            error=None,
            body=raw_body,
        )
    if not isinstance(context, dict) or not isinstance(context.get("functionArn"), str):
        raise DeadLetterError(
            "neither a Lambda on-failure record (no requestContext.functionArn), "
            "an EventBridge dead letter (no TARGET_ARN attribute), "
            "nor a notification from a source queue (no aws:s3 Records, no aws:sagemaker eventSource)"
        )
    if "requestPayload" not in body:
        raise DeadLetterError("Lambda on-failure record without requestPayload: the event is not in it")
    payload = body["requestPayload"]
    if not isinstance(payload, dict):
        raise DeadLetterError(f"requestPayload is {type(payload).__name__}, not an event object")
    condition = context.get("condition")
    return DeadLetter(
        message_id=message_id,
        receipt_handle=receipt_handle,
        function_arn=unqualified_function_arn(context["functionArn"]),
        payload=payload,
        condition=condition if isinstance(condition, str) else None,
        error=_error_text(body.get("responsePayload")),
    )
