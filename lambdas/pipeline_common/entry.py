"""The shared shape of the queue-fed entry points: SQS batches with partial failures, S3 notifications in them."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

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

    An SQS batch (the queue in front of each function) answers with `batchItemFailures` (Powertools'
    BatchProcessor): the messages with a failed record go back to the queue, the others are done. A plain
    S3 event (a replay, a test) raises at the end if any record failed, so Lambda's retries and
    dead-letter queue apply.
    """
    request_id = getattr(context, "aws_request_id", None)
    if not is_sqs_batch(event):
        records = parse_s3_event(event)
        logger.info("event received", extra={"records": len(records), "request_id": request_id})
        return {"results": [result.as_dict() for result in process_each(records, process)]}

    def process_message(body: str) -> list[dict[str, Any]]:
        # A message that never parses fails every receive and ends in the dead-letter queue, where it is seen.
        return [result.as_dict() for result in process_each(parse_s3_event(json.loads(body)), process)]

    return handle_sqs_batch(event, context, process_message)


def handle_sqs_batch(event: Any, context: Any, process: Callable[[str], list[dict[str, Any]]]) -> dict[str, Any]:
    """Run `process` on the body of every message of an SQS batch; report the failed ones for redelivery.

    Powertools' BatchProcessor answers with `batchItemFailures`: the messages whose `process` raised go back
    to the queue (and after `maxReceiveCount` receives to its dead-letter queue), the others are done.
    `results` lists what `process` returned for the successful messages.
    """
    request_id = getattr(context, "aws_request_id", None)
    logger.info("batch received", extra={"messages": len(event["Records"]), "request_id": request_id})

    def process_message(record: SQSRecord) -> list[dict[str, Any]]:
        # BatchProcessor passes the message as `record=`.
        return process(record.body)

    # An all-failed batch is reported like any other, not raised: the same messages are retried either way.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    with processor(records=event["Records"], handler=process_message):
        outcomes = processor.process()
    results = [item for status, value, _ in outcomes if status == "success" for item in value]
    return {**processor.response(), "results": results}


def remaining_seconds(context: Any) -> Callable[[], float] | None:
    """The invocation's time left, in seconds, when the context can tell it."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return (lambda: remaining() / 1000) if callable(remaining) else None
