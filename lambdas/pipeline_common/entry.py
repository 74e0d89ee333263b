"""The shared shape of the S3-fed entry points: S3 notifications, straight or in an SQS batch, to `process`."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pipeline_common.batch import process_each
from pipeline_common.events import S3Record, parse_s3_event

logger = logging.getLogger(__name__)


class Reportable(Protocol):
    """A per-record result that can describe itself as JSON."""

    def as_dict(self) -> dict[str, Any]: ...


def is_sqs_batch(event: Any) -> bool:
    """True for an event source mapping's batch of SQS messages."""
    records = event.get("Records") if isinstance(event, Mapping) else None
    return bool(records) and all(isinstance(item, Mapping) and item.get("eventSource") == "aws:sqs" for item in records)


def handle_s3_event(event: Any, context: Any, process: Callable[[S3Record], Reportable]) -> dict[str, Any]:
    """Run `process` on every object-created record; test events give no results.

    An SQS batch (the queue in front of each function) answers with `batchItemFailures`: the messages
    with a failed record go back to the queue, the others are done. A plain S3 event (a replay, a test)
    raises at the end if any record failed, so Lambda's retries and dead-letter queue apply.
    """
    request_id = getattr(context, "aws_request_id", None)
    if is_sqs_batch(event):
        messages = event["Records"]
        logger.info("batch received", extra={"messages": len(messages), "request_id": request_id})
        results: list[dict[str, Any]] = []
        failures: list[dict[str, str]] = []
        for message in messages:
            try:
                records = parse_s3_event(json.loads(message["body"]))
                results += [result.as_dict() for result in process_each(records, process)]
            except Exception:
                # Only this message is retried; a message that never parses ends in the dead-letter queue.
                logger.exception(
                    "message failed; it returns to the queue", extra={"message_id": message.get("messageId")}
                )
                failures.append({"itemIdentifier": str(message.get("messageId"))})
        return {"batchItemFailures": failures, "results": results}
    records = parse_s3_event(event)
    logger.info("event received", extra={"records": len(records), "request_id": request_id})
    return {"results": [result.as_dict() for result in process_each(records, process)]}


def remaining_seconds(context: Any) -> Callable[[], float] | None:
    """The invocation's time left, in seconds, when the context can tell it."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return (lambda: remaining() / 1000) if callable(remaining) else None
