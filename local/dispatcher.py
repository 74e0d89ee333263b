"""Delivers events from the routes' queues to the routes' handlers, as S3 / EventBridge -> Lambda would.

One thread per route long-polls its queue (moto wakes a waiting ReceiveMessage the moment a message
arrives, so there is no polling interval in the pipeline's latency), drops `s3:TestEvent`, completes
the fields moto leaves out, and invokes the handler with the event. An unhandled error is retried
twice, like an asynchronous Lambda invocation; then the event goes to the handler's dead-letter queue
in the record shape of Lambda's on-failure destination, where `ops.replay_dead_letters` finds it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from infra.pipeline import Handler
from local.aws import EmbeddedAws, QueueBinding
from local.functions import Invocation, LocalFunction
from local.tracking import Activity

log = logging.getLogger(__name__)

# Asynchronous Lambda invocations are retried twice after an unhandled error.
DEFAULT_MAX_RETRIES = 2
# Long-poll wait: a message wakes the poll at once; this only bounds how long `stop()` takes.
LONG_POLL_S = 1


class DispatchObserver(Protocol):
    """Told about every invocation, for progress and timing."""

    def before_invoke(self, handler: Handler, event: dict[str, Any]) -> None:
        """An invocation is about to start."""

    def after_invoke(self, handler: Handler, event: dict[str, Any], invocation: Invocation, final: bool) -> None:
        """An invocation ended; `final` is False when it will be retried."""


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


def complete_s3_event(event: dict[str, Any], sequencer: Callable[[], str]) -> dict[str, Any]:
    """Add the documented S3 event fields moto leaves out; keys stay exactly as S3 encoded them."""
    for record in event.get("Records", []):
        record.setdefault("userIdentity", {"principalId": "AWS:LOCALMODE"})
        record.setdefault("requestParameters", {"sourceIPAddress": "127.0.0.1"})
        record.setdefault(
            "responseElements",
            {"x-amz-request-id": uuid.uuid4().hex[:16].upper(), "x-amz-id-2": uuid.uuid4().hex},
        )
        s3 = record.get("s3", {})
        s3.get("bucket", {}).setdefault("ownerIdentity", {"principalId": "LOCALMODE"})
        s3.get("object", {}).setdefault("sequencer", sequencer())
    return event


class Dispatcher:
    """Polls each route's queue on its own thread and invokes the route's function."""

    def __init__(
        self,
        aws: EmbeddedAws,
        functions: dict[Handler, LocalFunction],
        activity: Activity,
        observer: DispatchObserver,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self.aws = aws
        self.functions = functions
        self.activity = activity
        self.observer = observer
        self.max_retries = max_retries
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sequence = 0
        self._sequence_lock = threading.Lock()

    def start(self) -> None:
        """Start one polling thread per route."""
        for binding in self.aws.queues:
            thread = threading.Thread(
                target=self._poll, args=(binding,), daemon=True, name=f"local-dispatch-{binding.handler.value}"
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop polling; an invocation in progress finishes first."""
        self._stopping.set()
        if self._threads:
            # Wake the long polls now instead of waiting for them to time out; the message is never delivered.
            sqs = self.aws.client("sqs")
            for binding in self.aws.queues:
                try:
                    sqs.send_message(QueueUrl=binding.url, MessageBody=json.dumps({"local-runtime": "stop"}))
                except Exception:
                    log.debug("could not wake the poller of %s", binding.url, exc_info=True)
        for thread in self._threads:
            thread.join(timeout=LONG_POLL_S + 30)
        self._threads.clear()

    def _sequencer(self) -> str:
        # S3's sequencer: a hex value that grows with every event, compared as a string of equal length.
        with self._sequence_lock:
            self._sequence += 1
            return f"{time.time_ns():016X}{self._sequence:08X}"

    def _poll(self, binding: QueueBinding) -> None:
        sqs = self.aws.client("sqs")
        while not self._stopping.is_set():
            try:
                response = sqs.receive_message(
                    QueueUrl=binding.url, MaxNumberOfMessages=10, WaitTimeSeconds=LONG_POLL_S
                )
            except Exception:
                if self._stopping.is_set():
                    return
                log.exception("receiving from %s failed", binding.url)
                time.sleep(0.1)
                continue
            if self._stopping.is_set():
                return
            for message in response.get("Messages", []):
                # Counted before the message leaves the queue, so the pipeline is never seen idle in between.
                self.activity.begin()
                try:
                    self._deliver(binding.handler, message["Body"])
                finally:
                    try:
                        sqs.delete_message(QueueUrl=binding.url, ReceiptHandle=message["ReceiptHandle"])
                    finally:
                        self.activity.end()

    def _deliver(self, handler: Handler, raw_body: str) -> None:
        try:
            body = json.loads(raw_body)
        except json.JSONDecodeError:
            log.error("dropped a message that is not JSON from the %s queue: %.200s", handler.value, raw_body)
            return
        if is_test_event(body):
            return
        if isinstance(body, dict) and "Records" in body:
            event = complete_s3_event(body, self._sequencer)
        else:
            event = body
            if isinstance(event, dict) and "detail-type" in event:
                # moto's EventBridge leaves out the account; AWS always sends it.
                event.setdefault("account", self.aws.account)
        function = self.functions[handler]
        for attempt in range(1, self.max_retries + 2):
            self.observer.before_invoke(handler, event)
            try:
                invocation = function.invoke(event, attempt=attempt)
            except Exception as error:
                invocation = Invocation(
                    ok=False,
                    error={"errorType": type(error).__name__, "errorMessage": str(error)},
                    started_at=time.time(),
                    ended_at=time.time(),
                    attempt=attempt,
                )
            final = invocation.ok or attempt > self.max_retries
            self.observer.after_invoke(handler, event, invocation, final)
            if invocation.ok:
                return
            if final:
                log.error("%s failed %d times: %s", function.name, attempt, invocation.error_summary)
                self._dead_letter(handler, function.arn, event, invocation)

    def _dead_letter(self, handler: Handler, function_arn: str, event: Any, invocation: Invocation) -> None:
        record = dead_letter_record(function_arn, event, invocation)
        try:
            self.aws.client("sqs").send_message(
                QueueUrl=self.aws.dead_letter_queues[handler], MessageBody=json.dumps(record)
            )
        except Exception:
            log.exception("could not send the failed event to %s's dead-letter queue", function_arn)
