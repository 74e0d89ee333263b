"""Fixtures for the ops tests: an in-process moto SQS with empty dead-letter queues (and source queues)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.ops.support import REGION


@dataclass
class Queue:
    """One moto SQS queue and a client for it."""

    sqs: Any
    url: str

    def send(self, body: Any, attributes: dict[str, Any] | None = None) -> str:
        """Put a message in the queue; its message id."""
        kwargs: dict[str, Any] = {"QueueUrl": self.url, "MessageBody": json.dumps(body)}
        if isinstance(body, str):
            kwargs["MessageBody"] = body
        if attributes:
            kwargs["MessageAttributes"] = attributes
        return self.sqs.send_message(**kwargs)["MessageId"]

    def counts(self) -> tuple[int, int]:
        """(visible, in flight) messages."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def visible_ids(self) -> set[str]:
        """The ids of the messages a receive gets right now (hides them for a minute: call last)."""
        ids: set[str] = set()
        while True:
            messages = self.sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60
            ).get("Messages", [])
            if not messages:
                return ids
            ids.update(message["MessageId"] for message in messages)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto in-process, with fake credentials; no real AWS is reachable."""
    for name in ["AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield


def make_queue(name: str) -> Queue:
    """A new standard queue in moto."""
    sqs = boto3.client("sqs", region_name=REGION)
    return Queue(sqs=sqs, url=sqs.create_queue(QueueName=name)["QueueUrl"])


@pytest.fixture
def queue(aws: None) -> Queue:
    """An empty dead-letter queue."""
    return make_queue("InfraStack-InvokeSdDeadLetterQueue")


@dataclass
class StageQueues:
    """A stage's source queue and its dead-letter queue, joined by a redrive policy as InfraStack joins them."""

    source: Queue
    dead_letters: Queue

    def redrive(self, body: Any) -> str:
        """Put `body` in the source queue and fail it until SQS itself moves it to the dead-letter queue."""
        message_id = self.source.send(body)
        # maxReceiveCount is 1: the first receive counts, the second moves the message (moto, as SQS does).
        for _ in range(2):
            self.source.sqs.receive_message(QueueUrl=self.source.url, VisibilityTimeout=0, WaitTimeSeconds=0)
        assert self.source.counts() == (0, 0) and self.dead_letters.counts() == (1, 0), "not redriven"
        return message_id


def make_stage_queues(name: str) -> StageQueues:
    """A source queue whose messages move to its dead-letter queue after one failed receive."""
    dead_letters = make_queue(f"{name}-dlq")
    arn = dead_letters.sqs.get_queue_attributes(QueueUrl=dead_letters.url, AttributeNames=["QueueArn"])
    policy = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": 1}
    url = dead_letters.sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": json.dumps(policy)})["QueueUrl"]
    return StageQueues(source=Queue(sqs=dead_letters.sqs, url=url), dead_letters=dead_letters)


@pytest.fixture
def stage_queues(aws: None) -> StageQueues:
    """invoke_sd's source queue and dead-letter queue, both empty."""
    return make_stage_queues("InfraStack-InvokeSdQueue")
