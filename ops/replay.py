"""The replay loop: receive every dead letter of one queue once, send its event on again, delete it once sent.

A Lambda on-failure record or an EventBridge dead letter goes back to its function (`invoke`); a raw S3
event notification that SQS redrove from the stage's source queue goes back to that queue, as it was.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ops.dead_letters import DeadLetter, DeadLetterError, parse_dead_letter, short

log = logging.getLogger(__name__)

# Hides a received message while its event is sent again; an Event invoke or SendMessage returns in well under a
# second, so this only has to outlast botocore's own retries. A run that takes longer is still safe: a message that
# reappears is recognised by its id and not replayed twice.
VISIBILITY_TIMEOUT_S = 120
# SQS hands out at most 10 messages per ReceiveMessage and takes at most 10 entries per batch call.
SQS_BATCH = 10
# Long polling (any wait above 0) asks every SQS server, so an empty answer means an empty queue; short
# polling samples some servers and may answer empty while messages wait.
RECEIVE_WAIT_S = 1
NO_SOURCE_QUEUE = (
    "an S3 event redriven from the stage's queue, but no source queue is known for this dead-letter queue "
    "(the stack has no matching *QueueUrl output)"
)

Invoke = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Destinations:
    """Where the events of one dead-letter queue go back to."""

    invoke: Invoke  # a function's event: an asynchronous invocation
    source_queue_url: str | None  # a redriven S3 event: the stage's source queue (None: not known)


@dataclass
class ReplayReport:
    """What one run over one queue did; in a dry run `replayed` lists what would have been replayed."""

    replayed: list[DeadLetter] = field(default_factory=list)
    failed: list[tuple[DeadLetter, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (message id, why)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """True when nothing failed and every message could be read."""
        return not self.failed and not self.unreadable

    @property
    def handled(self) -> int:
        """How many messages this run looked at."""
        return len(self.replayed) + len(self.failed) + len(self.unreadable)


def describe(exc: BaseException) -> str:
    """An exception as one short line."""
    text = str(exc)
    return short(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def replay_dead_letters(
    sqs: Any,
    queue_url: str,
    invoke: Invoke,
    *,
    source_queue_url: str | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    wait_s: int = RECEIVE_WAIT_S,
) -> ReplayReport:
    """Send each dead-lettered event in the queue on again; delete its message once sent.

    Function events go to `invoke`; raw S3 events redriven from the stage's queue go back to
    `source_queue_url`. Receives until the queue gives nothing new (or `limit` messages were handled);
    no message is sent twice. A message whose send fails, an unreadable one, and every message of a dry run
    stay in the queue: they are kept invisible until the run ends, so that this run does not receive them
    again, then made visible.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    report = ReplayReport(dry_run=dry_run)
    held: dict[str, str] = {}  # message id -> newest receipt handle, to make visible again at the end
    sent: dict[str, str] = {}  # message id -> receipt handle, for messages whose event was sent again
    destinations = Destinations(invoke, source_queue_url)
    try:
        while limit is None or len(held) + len(sent) < limit:
            wanted = SQS_BATCH if limit is None else min(SQS_BATCH, limit - len(held) - len(sent))
            messages = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=wanted,
                WaitTimeSeconds=wait_s,
                VisibilityTimeout=VISIBILITY_TIMEOUT_S,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            new = 0
            for message in messages:
                message_id = str(message.get("MessageId", "?"))
                handle = message.get("ReceiptHandle", "")
                if message_id in held:
                    # Its visibility timeout ran out during this run; only the newest receipt handle works.
                    held[message_id] = handle
                elif message_id in sent:
                    # SQS delivers at least once: a second copy of an event already sent again goes too.
                    _delete(sqs, queue_url, handle)
                else:
                    new += 1
                    _replay_one(sqs, queue_url, destinations, message, dry_run, report, held, sent)
            # Only messages this run already handled came back (their visibility timeout ran out during a long
            # run): receiving on would hand out the same ones for ever. Anything left waits for the next run.
            if not new:
                break
    finally:
        _release(sqs, queue_url, held)
    return report


def _send(sqs: Any, destinations: Destinations, letter: DeadLetter) -> None:
    """Hand one event on: to its function, or (redriven) back to its source queue; raises when that fails."""
    if letter.function_arn is not None:
        destinations.invoke(letter.function_arn, letter.payload)
        return
    assert destinations.source_queue_url is not None  # _replay_one reports the unknown queue first
    # The body exactly as S3 sent it: the handler parses it as it parses any notification.
    sqs.send_message(QueueUrl=destinations.source_queue_url, MessageBody=letter.body or json.dumps(letter.payload))


def _release(sqs: Any, queue_url: str, held: Mapping[str, str]) -> None:
    """Make the held messages visible again at once, instead of when their visibility timeout ends."""
    handles = list(held.values())
    for start in range(0, len(handles), SQS_BATCH):
        entries = [
            {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": 0}
            for index, handle in enumerate(handles[start : start + SQS_BATCH])
        ]
        try:
            response = sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
        except (BotoCoreError, ClientError) as exc:
            # Nothing is lost: the messages reappear by themselves when their visibility timeout ends.
            log.warning("could not make %d message(s) visible again: %s", len(entries), exc)
            continue
        for failure in response.get("Failed", []):
            log.warning("could not make a message visible again: %s", failure.get("Message", failure))


def _delete(sqs: Any, queue_url: str, handle: str) -> str | None:
    """Delete one message; the error text when that failed."""
    try:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=handle)
    except (BotoCoreError, ClientError) as exc:
        return describe(exc)
    return None


def _replay_one(
    sqs: Any,
    queue_url: str,
    destinations: Destinations,
    message: Mapping[str, Any],
    dry_run: bool,
    report: ReplayReport,
    held: dict[str, str],
    sent: dict[str, str],
) -> None:
    """Parse, send again and delete one message, recording the outcome in the report."""
    message_id = str(message.get("MessageId", "?"))
    handle = message.get("ReceiptHandle", "")
    try:
        letter = parse_dead_letter(message)
    except DeadLetterError as exc:
        report.unreadable.append((message_id, str(exc)))
        held[message_id] = handle
        return
    if letter.redriven and destinations.source_queue_url is None:
        report.failed.append((letter, NO_SOURCE_QUEUE))
        held[message_id] = handle
        return
    if dry_run:
        report.replayed.append(letter)
        held[message_id] = handle
        return
    try:
        _send(sqs, destinations, letter)
    except Exception as exc:  # whatever stops this one event, the others still get their turn
        report.failed.append((letter, describe(exc)))
        held[message_id] = handle
        return
    sent[message_id] = handle
    problem = _delete(sqs, queue_url, handle)
    if problem is None:
        report.replayed.append(letter)
    else:
        # The event went through, but the message comes back: the user must know a later run repeats it.
        report.failed.append(
            (letter, f"sent again, but not deleted from the queue ({problem}); a later replay repeats it")
        )


def lambda_invoker(lambda_client: Any) -> Invoke:
    """An `invoke` that sends the event to the function asynchronously, as EventBridge does."""

    def invoke(function_arn: str, payload: dict[str, Any]) -> None:
        """Queue one asynchronous invocation; raises when Lambda does not accept it."""
        response = lambda_client.invoke(
            FunctionName=function_arn, InvocationType="Event", Payload=json.dumps(payload).encode()
        )
        # An accepted asynchronous invocation is 202; anything else means the event was not queued.
        if response.get("StatusCode") != 202:
            raise RuntimeError(f"Lambda answered {response.get('StatusCode')} instead of 202 Accepted")

    return invoke
