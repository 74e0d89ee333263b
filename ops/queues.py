"""Which dead-letter queues `make replay` works on, and the source queue each one's S3 events go back to.

The stack's outputs name each stage's dead-letter queue (`<Stage>DeadLetterQueueUrl`) and, for the stages
S3 notifies, its source queue (`<Stage>QueueUrl`); a queue given by URL finds its source queue through SQS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ops.stack import stack_outputs

OUTPUT_SUFFIX = "DeadLetterQueueUrl"
# `<Stage>QueueUrl`: the queue S3 notifies for that stage (note `<Stage>DeadLetterQueueUrl` ends the same way).
SOURCE_SUFFIX = "QueueUrl"
QUEUE_MISSING_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


class QueueNotFoundError(LookupError):
    """A queue URL (given or from the stack) names no queue in this account and region."""


def raise_if_missing(exc: ClientError, url: str) -> None:
    """Turn SQS's "no such queue" into QueueNotFoundError naming the URL."""
    if exc.response.get("Error", {}).get("Code") in QUEUE_MISSING_CODES:
        raise QueueNotFoundError(url) from exc


@dataclass(frozen=True)
class StageQueues:
    """One stage's dead-letter queue and, for a stage S3 notifies, the source queue its S3 events go back to."""

    label: str  # the output name, or the URL given with --queue-url
    dead_letter_url: str
    source_url: str | None


def stack_queues(cloudformation: Any, stack_name: str) -> list[StageQueues]:
    """Each `<Stage>DeadLetterQueueUrl` output of the stack, paired with its `<Stage>QueueUrl` output if any."""
    outputs = stack_outputs(cloudformation, stack_name)
    return [
        StageQueues(name, url, outputs.get(name.removesuffix(OUTPUT_SUFFIX) + SOURCE_SUFFIX))
        for name, url in sorted(outputs.items())
        if name.endswith(OUTPUT_SUFFIX)
    ]


def source_queue_of(sqs: Any, dead_letter_url: str) -> str | None:
    """The one queue whose redrive policy names this dead-letter queue (for --queue-url), or None."""
    urls = sqs.list_dead_letter_source_queues(QueueUrl=dead_letter_url).get("queueUrls", [])
    return urls[0] if len(urls) == 1 else None


def given_queues(sqs: Any, urls: list[str]) -> list[StageQueues]:
    """The queues given with --queue-url, each with the source queue SQS names for it."""
    queues = []
    for url in urls:
        try:
            queues.append(StageQueues(url, url, source_queue_of(sqs, url)))
        except ClientError as exc:
            raise_if_missing(exc, url)
            raise
    return queues
