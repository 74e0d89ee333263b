"""Replaying a dead-letter queue (moto SQS): function events to a recording invoke, S3 events to their queue."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ops import replay as module
from ops.replay import NO_SOURCE_QUEUE, ReplayReport, replay_dead_letters
from tests.ops.conftest import Queue, StageQueues
from tests.ops.support import (
    FAILED_ARN,
    INVOKE_SD_ARN,
    TRIGGER_ARN,
    RecordingInvoke,
    endpoint_down_error,
    eventbridge_attributes,
    lambda_record,
    s3_event,
    transcribe_event,
)


def _fill(queue: Queue, count: int, function_arn: str = f"{INVOKE_SD_ARN}:$LATEST") -> dict[str, dict[str, Any]]:
    """`count` Lambda records, each with its own event; message id -> event."""
    sent = {}
    for index in range(count):
        event = s3_event(f"recordings/{index}.mp3")
        sent[queue.send(lambda_record(event, function_arn=function_arn, response_payload=endpoint_down_error()))] = (
            event
        )
    return sent


def test_every_event_is_sent_again_and_its_message_deleted(queue: Queue) -> None:
    events = _fill(queue, 12)  # more than one receive batch
    bridge_event = transcribe_event()
    queue.send(bridge_event, eventbridge_attributes())
    invoke = RecordingInvoke()

    report = replay_dead_letters(queue.sqs, queue.url, invoke, wait_s=0)

    assert report.ok
    assert len(report.replayed) == 13
    assert sorted(invoke.calls, key=str) == sorted(
        [(INVOKE_SD_ARN, event) for event in events.values()] + [(FAILED_ARN, bridge_event)], key=str
    )
    assert queue.counts() == (0, 0)


def test_a_failed_invoke_keeps_its_message_visible_and_is_reported(queue: Queue) -> None:
    kept = _fill(queue, 2, function_arn=TRIGGER_ARN)
    _fill(queue, 3)
    invoke = RecordingInvoke(failing={TRIGGER_ARN})

    report = replay_dead_letters(queue.sqs, queue.url, invoke, wait_s=0)

    assert not report.ok
    assert len(report.replayed) == 3
    assert {letter.message_id for letter, _ in report.failed} == set(kept)
    assert all("TooManyRequestsException" in why for _, why in report.failed)
    # Visible at once, not only after the visibility timeout: the next run (or a retry) finds them.
    assert queue.counts() == (2, 0)
    assert queue.visible_ids() == set(kept)


def test_unreadable_messages_are_kept_and_reported(queue: Queue) -> None:
    garbage = queue.send("this is not a dead letter")
    foreign = queue.send({"hello": "world"})
    _fill(queue, 1)
    invoke = RecordingInvoke()

    report = replay_dead_letters(queue.sqs, queue.url, invoke, wait_s=0)

    assert not report.ok
    assert len(report.replayed) == 1
    assert len(invoke.calls) == 1
    assert dict(report.unreadable).keys() == {garbage, foreign}
    assert "not JSON" in dict(report.unreadable)[garbage]
    assert queue.visible_ids() == {garbage, foreign}


def test_dry_run_sends_and_deletes_nothing(queue: Queue) -> None:
    events = _fill(queue, 3)
    garbage = queue.send("garbage")
    invoke = RecordingInvoke()

    report = replay_dead_letters(queue.sqs, queue.url, invoke, dry_run=True, wait_s=0)

    assert report.dry_run
    assert invoke.calls == []
    assert {letter.message_id for letter in report.replayed} == set(events)
    assert [message_id for message_id, _ in report.unreadable] == [garbage]
    assert queue.counts() == (4, 0)


@pytest.mark.parametrize("limit", [1, 12])
def test_limit_bounds_the_messages_received(queue: Queue, limit: int) -> None:
    _fill(queue, 15)
    invoke = RecordingInvoke()

    report = replay_dead_letters(queue.sqs, queue.url, invoke, limit=limit, wait_s=0)

    assert len(invoke.calls) == len(report.replayed) == limit
    # The rest were never received, so none of them is hidden.
    assert queue.counts() == (15 - limit, 0)


def test_limit_below_one_is_refused(queue: Queue) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        replay_dead_letters(queue.sqs, queue.url, RecordingInvoke(), limit=0)


def test_an_always_failing_invoke_tries_each_message_once_and_ends(queue: Queue) -> None:
    events = _fill(queue, 15)
    invoke = RecordingInvoke(fail_all=True)

    report = replay_dead_letters(queue.sqs, queue.url, invoke, wait_s=0)

    assert sorted(invoke.calls, key=str) == sorted([(INVOKE_SD_ARN, event) for event in events.values()], key=str)
    assert len(report.failed) == 15
    assert queue.counts() == (15, 0)


def test_messages_coming_back_during_a_long_run_are_not_sent_twice(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held message reappears when its visibility timeout runs out while the run goes on."""
    monkeypatch.setattr(module, "VISIBILITY_TIMEOUT_S", 1)
    failing = _fill(queue, 1, function_arn=TRIGGER_ARN)
    _fill(queue, 1)
    invoke = RecordingInvoke(failing={TRIGGER_ARN})
    reports: list[ReplayReport] = []

    def slow_invoke(function_arn: str, payload: dict[str, Any]) -> None:
        invoke(function_arn, payload)
        time.sleep(1.2)  # longer than the visibility timeout: the failed message is visible again

    real_receive = queue.sqs.receive_message
    receives = []

    def bounded_receive(**kwargs: Any) -> Any:
        # Ends a runaway loop with an error instead of a hung test.
        receives.append(kwargs)
        if len(receives) > 8:
            raise RuntimeError("still receiving")
        return real_receive(**kwargs)

    monkeypatch.setattr(queue.sqs, "receive_message", bounded_receive)
    # A long poll that outlasts the visibility timeout would hand the failed message back on every receive.
    worker = threading.Thread(
        target=lambda: reports.append(replay_dead_letters(queue.sqs, queue.url, slow_invoke, wait_s=2)), daemon=True
    )
    worker.start()
    worker.join(timeout=20)

    assert not worker.is_alive(), "the replay did not end"
    assert reports, "the replay did not end normally"
    monkeypatch.setattr(queue.sqs, "receive_message", real_receive)
    assert len(invoke.calls) == 2
    assert [letter.message_id for letter, _ in reports[0].failed] == list(failing)
    # Made visible with its newest receipt handle: an older one would leave it hidden.
    assert queue.visible_ids() == set(failing)


def test_a_second_copy_of_a_replayed_message_is_deleted_not_sent_again() -> None:
    """SQS may deliver a message twice; the copy of an event already sent goes away with it."""
    message = {"MessageId": "m-1", "ReceiptHandle": "h-1", "Body": json.dumps(lambda_record(s3_event()))}
    copy = {**message, "ReceiptHandle": "h-2"}
    sqs = _ScriptedSqs([[message], [copy], []])
    invoke = RecordingInvoke()

    report = replay_dead_letters(sqs, "url", invoke, wait_s=0)

    assert len(invoke.calls) == 1
    assert [letter.message_id for letter in report.replayed] == ["m-1"]
    assert sqs.deleted == ["h-1", "h-2"]


def test_a_message_that_came_back_is_released_with_its_newest_receipt_handle() -> None:
    """SQS accepts only the latest receipt handle of a message received twice."""
    message = {"MessageId": "m-1", "ReceiptHandle": "h-1", "Body": json.dumps(lambda_record(s3_event()))}
    sqs = _ScriptedSqs([[message], [{**message, "ReceiptHandle": "h-2"}], []])
    invoke = RecordingInvoke(fail_all=True)

    report = replay_dead_letters(sqs, "url", invoke, wait_s=0)

    assert len(invoke.calls) == 1
    assert len(report.failed) == 1
    assert sqs.released == [[{"Id": "0", "ReceiptHandle": "h-2", "VisibilityTimeout": 0}]]


def test_a_message_not_deleted_after_its_invoke_is_reported() -> None:
    """The event went through but will come back: the user must hear that a later replay repeats it."""
    message = {"MessageId": "m-1", "ReceiptHandle": "h-1", "Body": json.dumps(lambda_record(s3_event()))}
    sqs = _ScriptedSqs([[message], []], delete_fails=True)
    invoke = RecordingInvoke()

    report = replay_dead_letters(sqs, "url", invoke, wait_s=0)

    assert len(invoke.calls) == 1
    assert not report.ok
    assert "not deleted" in report.failed[0][1]


def test_held_messages_are_released_when_receiving_fails(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error mid-run must not leave failed messages hidden for the whole visibility timeout."""
    failing = _fill(queue, 1, function_arn=TRIGGER_ARN)
    calls = {"receive": 0}
    real_receive = queue.sqs.receive_message

    def receive_then_break(**kwargs: Any) -> Any:
        calls["receive"] += 1
        if calls["receive"] > 1:
            raise ConnectionError("network went away")
        return real_receive(**kwargs)

    monkeypatch.setattr(queue.sqs, "receive_message", receive_then_break)
    with pytest.raises(ConnectionError):
        replay_dead_letters(queue.sqs, queue.url, RecordingInvoke(failing={TRIGGER_ARN}), wait_s=0)
    monkeypatch.setattr(queue.sqs, "receive_message", real_receive)
    assert queue.visible_ids() == set(failing)


# --- S3 events redriven from a source queue -----------------------------------------------------------------------


def test_a_redriven_s3_event_goes_back_to_its_source_queue_as_it_was(stage_queues: StageQueues) -> None:
    body = json.dumps(s3_event("recordings/late.mp3"), indent=1)
    message_id = stage_queues.redrive(body)
    invoke = RecordingInvoke()

    report = replay_dead_letters(
        stage_queues.source.sqs,
        stage_queues.dead_letters.url,
        invoke,
        source_queue_url=stage_queues.source.url,
        wait_s=0,
    )

    assert report.ok
    assert [letter.message_id for letter in report.replayed] == [message_id]
    assert invoke.calls == [], "the S3 event is not a function's event: nothing is invoked"
    assert stage_queues.dead_letters.counts() == (0, 0)
    (back,) = stage_queues.source.sqs.receive_message(QueueUrl=stage_queues.source.url)["Messages"]
    assert back["Body"] == body, "byte for byte what S3 sent"


def test_a_queue_holding_every_shape_sends_each_where_it_belongs(stage_queues: StageQueues) -> None:
    redriven = s3_event("recordings/queued.mp3")
    stage_queues.redrive(redriven)
    function_event = s3_event("recordings/async.mp3")
    stage_queues.dead_letters.send(lambda_record(function_event))
    stage_queues.dead_letters.send(transcribe_event(), eventbridge_attributes())
    invoke = RecordingInvoke()

    report = replay_dead_letters(
        stage_queues.source.sqs,
        stage_queues.dead_letters.url,
        invoke,
        source_queue_url=stage_queues.source.url,
        wait_s=0,
    )

    assert (len(report.replayed), report.ok) == (3, True)
    assert sorted(invoke.calls, key=str) == sorted(
        [(INVOKE_SD_ARN, function_event), (FAILED_ARN, transcribe_event())], key=str
    )
    (back,) = stage_queues.source.sqs.receive_message(QueueUrl=stage_queues.source.url)["Messages"]
    assert json.loads(back["Body"]) == redriven
    assert stage_queues.dead_letters.counts() == (0, 0)


def test_a_redriven_event_without_a_known_source_queue_stays_and_says_why(stage_queues: StageQueues) -> None:
    stage_queues.redrive(s3_event())

    report = replay_dead_letters(stage_queues.source.sqs, stage_queues.dead_letters.url, RecordingInvoke(), wait_s=0)

    assert not report.ok
    ((letter, why),) = report.failed
    assert letter.redriven and why == NO_SOURCE_QUEUE
    assert stage_queues.dead_letters.counts() == (1, 0), "kept, visible again"
    assert stage_queues.source.counts() == (0, 0)


def test_a_dry_run_sends_no_s3_event_back(stage_queues: StageQueues) -> None:
    stage_queues.redrive(s3_event())

    report = replay_dead_letters(
        stage_queues.source.sqs,
        stage_queues.dead_letters.url,
        RecordingInvoke(),
        source_queue_url=stage_queues.source.url,
        dry_run=True,
        wait_s=0,
    )

    assert [letter.redriven for letter in report.replayed] == [True]
    assert stage_queues.source.counts() == (0, 0)
    assert stage_queues.dead_letters.counts() == (1, 0)


def test_a_redriven_event_is_deleted_only_after_send_message_succeeded() -> None:
    message = {"MessageId": "m-1", "ReceiptHandle": "h-1", "Body": json.dumps(s3_event())}
    refused = _ScriptedSqs([[message], []], send_fails=True)

    report = replay_dead_letters(refused, "dlq", RecordingInvoke(), source_queue_url="source", wait_s=0)

    assert refused.deleted == [], "a refused SendMessage keeps the dead letter"
    assert "AccessDenied" in report.failed[0][1]
    assert refused.released == [[{"Id": "0", "ReceiptHandle": "h-1", "VisibilityTimeout": 0}]]

    accepted = _ScriptedSqs([[message], []])
    assert replay_dead_letters(accepted, "dlq", RecordingInvoke(), source_queue_url="source", wait_s=0).ok
    assert accepted.calls == [("send", "source", message["Body"]), ("delete", "h-1")]


class _ScriptedSqs:
    """An SQS client that answers ReceiveMessage from a script and records deletes."""

    def __init__(
        self, batches: list[list[dict[str, Any]]], delete_fails: bool = False, send_fails: bool = False
    ) -> None:
        self.batches = batches
        self.delete_fails = delete_fails
        self.send_fails = send_fails
        self.deleted: list[str] = []
        self.released: list[list[dict[str, Any]]] = []
        self.calls: list[tuple[str, ...]] = []

    def receive_message(self, **_: Any) -> dict[str, Any]:
        return {"Messages": self.batches.pop(0)} if self.batches else {}

    def send_message(self, QueueUrl: str, MessageBody: str) -> dict[str, Any]:
        if self.send_fails:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not allowed"}}, "SendMessage")
        self.calls.append(("send", QueueUrl, MessageBody))
        return {"MessageId": "new"}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> None:
        if self.delete_fails:
            raise ClientError({"Error": {"Code": "ReceiptHandleIsInvalid", "Message": "expired"}}, "DeleteMessage")
        self.calls.append(("delete", ReceiptHandle))
        self.deleted.append(ReceiptHandle)

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.released.append(Entries)
        return {"Successful": [{"Id": entry["Id"]} for entry in Entries], "Failed": []}
