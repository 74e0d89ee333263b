"""Delivers events from the routes' queues to the routes' handlers, as Lambda's event sources would.

S3 routes and async_result's queue (SageMaker's notifications): an SQS event source mapping. Up to
`route.queue.max_concurrency` pollers per queue each
receive up to `route.queue.batch_size` messages and invoke their own execution environment of the
handler with the SQS batch event (`{"Records": [{"messageId", "receiptHandle", "body", ...}]}`), the
`s3:TestEvent` included, as AWS delivers it. Messages the handler reports in `batchItemFailures`, or
every message of an invocation that failed, stay in the queue and come back after a short local
visibility timeout; after `max_receive_count` receives the queue's redrive policy (SQS itself, moto
here) moves the raw message to the handler's dead-letter queue.

EventBridge routes: an asynchronous invocation. An unhandled error is retried twice; then the event goes
to the handler's dead-letter queue in the record shape of Lambda's on-failure destination, where
`ops.replay_dead_letters` finds it.

moto wakes a waiting ReceiveMessage the moment a message arrives, so polling adds no latency.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from infra.pipeline import EventRoute, Handler
from local.aws import EmbeddedAws, QueueBinding
from local.functions import FunctionPool, Invocation, LocalFunction
from local.tracking import Activity

log = logging.getLogger(__name__)

# Asynchronous Lambda invocations are retried twice after an unhandled error.
DEFAULT_MAX_RETRIES = 2
# Seconds a failed message stays invisible before it is received again. On AWS that is the queue's
# visibility timeout (at least the function's timeout); locally a failed message is retried at once.
DEFAULT_RETRY_DELAY_S = 1
# Long-poll wait: a message wakes the poll at once; this only bounds how long `stop()` takes.
LONG_POLL_S = 1
# How long after its retry delay a returned message still counts as in flight (a waiting poll takes it sooner).
RETURN_GRACE_S = 0.5


class DispatchObserver(Protocol):
    """Told about every invocation, for progress and timing."""

    def before_invoke(self, handler: Handler, event: dict[str, Any], function: LocalFunction) -> None:
        """An invocation is about to start in `function` (one execution environment)."""

    def after_invoke(
        self, handler: Handler, event: dict[str, Any], invocation: Invocation, final: bool, function: LocalFunction
    ) -> None:
        """An invocation ended; `final` is False when its event(s) will be delivered again."""


def is_test_event(body: Any) -> bool:
    """The message S3 sends when a notification configuration is saved."""
    return isinstance(body, dict) and body.get("Event") == "s3:TestEvent"


def dead_letter_record(function_arn: str, event: Any, invocation: Invocation) -> dict[str, Any]:
    """What Lambda's on-failure destination sends after the retries: the event, and the last error."""
    return {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "requestContext": {
            "requestId": invocation.request_id or str(uuid.uuid4()),
            "functionArn": f"{function_arn}:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": invocation.attempt,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {key: value for key, value in (invocation.error or {}).items() if key != "stackTrace"},
    }


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One message of an SQS event source mapping's batch event, as Lambda builds it."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": dict(message.get("MessageAttributes") or {}),
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(message["Body"].encode()).hexdigest(),  # noqa: S324
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def failed_message_ids(invocation: Invocation, message_ids: list[str]) -> set[str]:
    """The messages that return to the queue: all of a failed invocation, else those in `batchItemFailures`.

    As Lambda does, a response that names a message not in the batch (or none) fails the whole batch.
    """
    if not invocation.ok:
        return set(message_ids)
    result = invocation.result if isinstance(invocation.result, dict) else {}
    failures = result.get("batchItemFailures") or []
    ids = {item.get("itemIdentifier") if isinstance(item, dict) else None for item in failures}
    if not ids <= set(message_ids):
        log.error("batchItemFailures names messages that are not in the batch: the whole batch fails")
        return set(message_ids)
    return {str(item) for item in ids}


class Concurrency:
    """Invocations running now and at most so far, per handler."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running: dict[Handler, int] = {}
        self.peak: dict[Handler, int] = {}

    def enter(self, handler: Handler) -> None:
        """One more invocation of `handler` runs."""
        with self._lock:
            self.running[handler] = self.running.get(handler, 0) + 1
            self.peak[handler] = max(self.peak.get(handler, 0), self.running[handler])

    def leave(self, handler: Handler) -> None:
        """One invocation of `handler` ended."""
        with self._lock:
            self.running[handler] -= 1


class Dispatcher:
    """Polls each route's queue and invokes the route's function: SQS batches, or asynchronous invocations."""

    def __init__(
        self,
        aws: EmbeddedAws,
        pools: dict[Handler, FunctionPool],
        activity: Activity,
        observer: DispatchObserver,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_delay_s: int = DEFAULT_RETRY_DELAY_S,
    ) -> None:
        self.aws = aws
        self.pools = pools
        self.activity = activity
        self.observer = observer
        self.max_retries = max_retries
        self.retry_delay_s = retry_delay_s
        self.concurrency = Concurrency()
        self._held: set[Handler] = set()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the pollers: `max_concurrency` per S3 route, one per EventBridge route."""
        for binding in self.aws.queues:
            route = binding.route
            if not isinstance(route, EventRoute):
                targets = [(self._poll_batches, index) for index in range(route.queue.max_concurrency)]
            else:
                targets = [(self._poll_async, 0)]
            for target, index in targets:
                thread = threading.Thread(
                    target=target,
                    args=(binding, index),
                    daemon=True,
                    name=f"local-dispatch-{binding.handler.value}-{index}",
                )
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        """Stop polling; an invocation in progress finishes first (a poll ends within LONG_POLL_S)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=LONG_POLL_S + 30)
        self._threads.clear()

    def hold(self, handler: Handler) -> None:
        """Stop delivering to `handler` (its events wait in its queue), as disabling its event source would."""
        self._held.add(handler)

    def release(self, handler: Handler) -> None:
        """Deliver to `handler` again."""
        self._held.discard(handler)

    def _receive(self, sqs: Any, binding: QueueBinding, count: int) -> list[dict[str, Any]] | None:
        while binding.handler in self._held:
            if self._stopping.wait(0.05):
                return None
        try:
            response = sqs.receive_message(
                QueueUrl=binding.url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=LONG_POLL_S,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
        except Exception:
            if self._stopping.is_set():
                return None
            log.exception("receiving from %s failed", binding.url)
            time.sleep(0.1)
            return []
        messages = response.get("Messages", [])
        if binding.handler in self._held:
            # Held while this poll waited: the messages go back to the queue, untouched by any handler.
            for message in messages:
                sqs.change_message_visibility(
                    QueueUrl=binding.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
            return []
        return None if self._stopping.is_set() else messages

    # -- SQS event source mapping -----------------------------------------------------------------

    def _poll_batches(self, binding: QueueBinding, index: int) -> None:
        assert not isinstance(binding.route, EventRoute)
        settings = binding.route.queue
        sqs = self.aws.client("sqs")
        while (messages := self._receive(sqs, binding, settings.batch_size)) is not None:
            if not messages:
                continue
            # Counted while the messages are still in flight, so the pipeline is never seen idle in between.
            self.activity.begin()
            try:
                self._invoke_batch(sqs, binding, index, messages)
            except Exception:
                log.exception("delivering a batch from %s failed; its messages return to the queue", binding.url)
                self._return(sqs, binding, messages)
            finally:
                self.activity.end()

    def _invoke_batch(self, sqs: Any, binding: QueueBinding, index: int, messages: list[dict[str, Any]]) -> None:
        assert not isinstance(binding.route, EventRoute)
        handler = binding.handler
        event = {"Records": [sqs_record(message, binding.arn, self.aws.region) for message in messages]}
        function = self.pools[handler].instance(index)
        self.observer.before_invoke(handler, event, function)
        invocation = self._invoke(handler, function, event, attempt=1)
        failed = failed_message_ids(invocation, [message["MessageId"] for message in messages])
        receives = [int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1")) for message in messages]
        # A failed message is final once its queue will move it to the dead-letter queue instead of delivering it.
        final = not failed or min(receives) >= binding.route.queue.max_receive_count
        self.observer.after_invoke(handler, event, invocation, final, function)
        self._return(sqs, binding, [message for message in messages if message["MessageId"] in failed])
        for message in messages:
            if message["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=binding.url, ReceiptHandle=message["ReceiptHandle"])

    def _return(self, sqs: Any, binding: QueueBinding, messages: list[dict[str, Any]]) -> None:
        """Make failed messages visible again after the local retry delay (on AWS: the visibility timeout)."""
        if messages:
            # A returned message is still the pipeline's work: count it in flight until a poll has had time to
            # take it again, so "idle" never falls inside its retry delay (the queue's counts alone once let a
            # waiter through there, in a loaded full test run).
            self.activity.begin()
            timer = threading.Timer(self.retry_delay_s + RETURN_GRACE_S, self.activity.end)
            timer.daemon = True
            timer.start()
        for message in messages:
            try:
                sqs.change_message_visibility(
                    QueueUrl=binding.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=self.retry_delay_s
                )
            except Exception:
                log.exception("could not return a message to %s; it reappears after the queue's timeout", binding.url)

    # -- asynchronous invocation (EventBridge) -----------------------------------------------------

    def _poll_async(self, binding: QueueBinding, index: int) -> None:
        sqs = self.aws.client("sqs")
        while (messages := self._receive(sqs, binding, 10)) is not None:
            for message in messages:
                self.activity.begin()
                try:
                    self._deliver_async(binding.handler, message["Body"])
                finally:
                    try:
                        sqs.delete_message(QueueUrl=binding.url, ReceiptHandle=message["ReceiptHandle"])
                    finally:
                        self.activity.end()

    def _deliver_async(self, handler: Handler, raw_body: str) -> None:
        try:
            event = json.loads(raw_body)
        except json.JSONDecodeError:
            log.error("dropped a message that is not JSON from the %s queue: %.200s", handler.value, raw_body)
            return
        if isinstance(event, dict) and "detail-type" in event:
            # moto's EventBridge leaves out the account; AWS always sends it.
            event.setdefault("account", self.aws.account)
        function = self.pools[handler].instance(0)
        for attempt in range(1, self.max_retries + 2):
            self.observer.before_invoke(handler, event, function)
            invocation = self._invoke(handler, function, event, attempt=attempt)
            final = invocation.ok or attempt > self.max_retries
            self.observer.after_invoke(handler, event, invocation, final, function)
            if invocation.ok:
                return
            if final:
                log.error("%s failed %d times: %s", function.name, attempt, invocation.error_summary)
                self._dead_letter(handler, function.arn, event, invocation)

    def _invoke(self, handler: Handler, function: LocalFunction, event: dict[str, Any], attempt: int) -> Invocation:
        self.concurrency.enter(handler)
        try:
            return function.invoke(event, attempt=attempt)
        except Exception as error:
            return Invocation(
                ok=False,
                error={"errorType": type(error).__name__, "errorMessage": str(error)},
                started_at=time.time(),
                ended_at=time.time(),
                attempt=attempt,
            )
        finally:
            self.concurrency.leave(handler)

    def _dead_letter(self, handler: Handler, function_arn: str, event: Any, invocation: Invocation) -> None:
        record = dead_letter_record(function_arn, event, invocation)
        try:
            self.aws.client("sqs").send_message(
                QueueUrl=self.aws.dead_letter_queues[handler], MessageBody=json.dumps(record)
            )
        except Exception:
            log.exception("could not send the failed event to %s's dead-letter queue", function_arn)
