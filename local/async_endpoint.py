"""Local SageMaker asynchronous inference: InvokeEndpointAsync's queue, its one GPU worker and its notifications.

`POST /endpoints/{name}/async-invocations` (local.endpoint) hands each request to `AsyncEndpoint.submit`,
which answers 202 at once. One worker thread takes the requests in order, one at a time (what
`max_concurrent_invocations_per_instance=1` on one instance gives): it reads the input object from local
S3, runs the same model call as `/invocations`, writes the body to `<ASYNC_OUTPUT_PREFIX><id>.out` (or the
model's error to `<ASYNC_FAILURE_PREFIX><id>-error.out`) in the transcripts bucket, and sends SageMaker's
notification as a RAW message to the async_result stage's queue, which stands in for the two SNS topics
and their raw-delivery subscriptions (moto's SNS could deliver it, but adds nothing the handler sees).

A request still queued past its RequestTTLSeconds is dropped without running. Whether SageMaker then
publishes to the error topic is not documented (FACTS.md lists no such message), so by default no
notification is sent and the upload waits for the sweeper, the path the pipeline must survive anyway;
`expired_notification=True` (or the fault's `notify=True`) sends a Failed one instead.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from infra.pipeline import ASYNC_FAILURE_PREFIX, ASYNC_OUTPUT_PREFIX
from local.faults import Fault, Faults
from local.tracking import Activity, EndpointCall, Progress

if TYPE_CHECKING:
    from local.runtime import LocalRuntime

log = logging.getLogger(__name__)

# InvokeEndpointAsync's defaults: a request may wait 6 h, and run 15 min once a GPU takes it.
DEFAULT_TTL_S = 21600
DEFAULT_INVOCATION_TIMEOUT_S = 900


def iso_now(at: float | None = None) -> str:
    """A timestamp as SageMaker's notifications write it (UTC, milliseconds, Z)."""
    moment = datetime.fromtimestamp(at if at is not None else time.time(), UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class AsyncRequest:
    """One queued InvokeEndpointAsync request."""

    endpoint_name: str
    inference_id: str
    input_location: str
    content_type: str
    accept: str
    ttl_s: int
    timeout_s: int
    call: EndpointCall
    output_location: str
    failure_location: str


class AsyncEndpoint:
    """The queue and worker behind a local async endpoint; `submit` is InvokeEndpointAsync."""

    def __init__(
        self,
        *,
        run_model: Callable[[EndpointCall, bytes, str, str, Any, float], Any],
        s3: Callable[[], Any],
        send_notification: Callable[[str], None],
        notification_queue_url: str = "",
        bucket: str,
        region: str,
        log_stream_arn: str,
        activity: Activity,
        faults: Faults,
        emit: Callable[[Progress], None],
        cold_start_s: float = 0.0,
        scale_in_idle_s: float = 15 * 60.0,
        expired_notification: bool = False,
    ) -> None:
        """`run_model(call, body, content_type, accept, fault, limit_s)` is the endpoint's model call."""
        self._run_model = run_model
        self._s3_factory = s3
        self._send = send_notification
        # Where `send_notification` delivers (the queue that stands in for the topics' subscription).
        self.notification_queue_url = notification_queue_url
        self.bucket = bucket
        self.region = region
        self.log_stream_arn = log_stream_arn
        self.activity = activity
        self.faults = faults
        self._emit = emit
        # Scaling from zero: the first request of a run, and any after `scale_in_idle_s` without work, waits.
        self.cold_start_s = cold_start_s
        self.scale_in_idle_s = scale_in_idle_s
        self.expired_notification = expired_notification
        self.cold_starts = 0
        self._queue: queue.Queue[AsyncRequest | None] = queue.Queue()
        self._last_done: float | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._waiting = 0
        self._held = threading.Event()
        self._held.set()
        self._s3: Any = None

    def start(self) -> None:
        """Start the worker (one instance, one request at a time)."""
        self._thread = threading.Thread(target=self._work, daemon=True, name="local-sagemaker-async")
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker after the request it is running; requests still queued are dropped."""
        if self._thread is None:
            return
        self._held.set()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.activity.end()
        self._queue.put(None)
        self._thread.join(timeout=60)
        self._thread = None

    def hold(self) -> None:
        """Keep requests queued (as a GPU busy elsewhere or still starting would) until `release`."""
        self._held.clear()

    def release(self) -> None:
        """Let the worker take requests again."""
        self._held.set()

    @property
    def backlog(self) -> int:
        """Requests waiting for the worker (ApproximateBacklogSize), a held one included."""
        with self._lock:
            return self._waiting

    def submit(self, request: AsyncRequest) -> tuple[int, dict[str, str], bytes]:
        """Queue the request; the 202 answer InvokeEndpointAsync gives, locations in body and headers."""
        # Counted before the 202: the pipeline is never idle between invoke_sd's call and the notification.
        self.activity.begin()
        with self._lock:
            self._waiting += 1
        self._queue.put(request)
        document = {
            "InferenceId": request.inference_id,
            "OutputLocation": request.output_location,
            "FailureLocation": request.failure_location,
        }
        headers = {
            "Content-Type": "application/json",
            "X-Amzn-SageMaker-OutputLocation": request.output_location,
            "X-Amzn-SageMaker-FailureLocation": request.failure_location,
        }
        return 202, headers, json.dumps(document).encode("utf-8")

    def locations(self, inference_id: str) -> tuple[str, str]:
        """Where the output and the failure object of a request go (the endpoint config's S3 paths)."""
        return (
            f"s3://{self.bucket}/{ASYNC_OUTPUT_PREFIX}{inference_id}.out",
            f"s3://{self.bucket}/{ASYNC_FAILURE_PREFIX}{inference_id}-error.out",
        )

    # -- the worker --------------------------------------------------------------------------------

    def _work(self) -> None:
        while (request := self._queue.get()) is not None:
            self._held.wait()
            with self._lock:
                self._waiting -= 1
            try:
                self._process(request)
            except Exception:
                # SageMaker itself failing is not something the pipeline sees; the sweeper would catch it.
                log.exception("the local async endpoint failed on %s", request.inference_id)
            finally:
                self._last_done = time.monotonic()
                self.activity.end()

    def _process(self, request: AsyncRequest) -> None:
        fault = self.faults.take("async")
        kind = fault.kind if fault is not None else ""
        if kind == "test-notification":
            self._send(json.dumps({"eventName": "TestNotification"}))
        if kind == "expire" or time.time() - request.call.received_at > request.ttl_s:
            self._expire(request, fault if kind == "expire" else None)
            return
        self._cold_start(request.call.key)
        body = self._read_input(request)
        if body is None:
            reason = f"ClientError: Could not read the input object {request.input_location}."
            self._send(json.dumps(self._notification(request, failure_reason=reason)))
            return
        model_fault = self.faults.take("endpoint", kinds=("error", "slow"))
        if fault is not None and kind == "error":
            model_fault = Fault("endpoint", "error", 1, {"status": int(fault.options.get("status", 400))})
        result = self._run_model(
            request.call, body, request.content_type, request.accept, model_fault, request.timeout_s
        )
        message = json.dumps(self._answer(request, result, kind))
        self._send(message)
        if kind == "duplicate-notification":
            # SNS and SQS deliver at least once: the same notification may arrive twice.
            self._send(message)

    def _expire(self, request: AsyncRequest, fault: Fault | None) -> None:
        """Drop a request that waited past its TTL; notify only when told to (see the module docstring)."""
        notify = bool(fault.options.get("notify", self.expired_notification)) if fault else self.expired_notification
        self._emit(Progress(request.call.key, "expired", f"request {request.inference_id} expired in the queue"))
        if notify:
            reason = f"Request expired: it waited longer than its RequestTTLSeconds ({request.ttl_s} s)."
            self._send(json.dumps(self._notification(request, failure_reason=reason)))

    def _answer(self, request: AsyncRequest, result: Any, kind: str) -> dict[str, Any]:
        """Write the output (or failure) object for the model's answer; the notification that says so."""
        if result is None:
            reason = (
                f"ServerError: The invocation timed out after {request.timeout_s} s (InvocationTimeoutSeconds). "
                f"See {self.log_stream_arn} for more information."
            )
            return self._notification(request, failure_reason=reason)
        if 200 <= result.status < 300:
            if kind != "missing-output":
                payload = b"{not json" if kind == "malformed-output" else result.body
                self._put(request.output_location, payload, result.content_type)
            return self._notification(request, content_type=result.content_type)
        self._put(request.failure_location, result.body, "application/json")
        side = "client" if 400 <= result.status < 500 else "server"
        original = result.body.decode("utf-8", errors="replace")
        reason = (
            f"{side.capitalize()}Error: Received {side} error ({result.status}) from model with message "
            f'"{original}". See {self.log_stream_arn} for more information.'
        )
        return self._notification(request, failure_reason=reason, failure_object=True)

    def _cold_start(self, key: str) -> None:
        """Wait as a GPU instance starting from zero would: before the first request, and after idling."""
        idle = self._last_done is None or time.monotonic() - self._last_done >= self.scale_in_idle_s
        if self.cold_start_s <= 0 or not idle:
            return
        self.cold_starts += 1
        self._emit(Progress(key, "cold-start", f"starting the GPU (cold start, {self.cold_start_s:g} s)"))
        time.sleep(self.cold_start_s)

    def _client(self) -> Any:
        if self._s3 is None:
            self._s3 = self._s3_factory()
        return self._s3

    def _read_input(self, request: AsyncRequest) -> bytes | None:
        bucket, _, key = request.input_location.removeprefix("s3://").partition("/")
        try:
            return self._client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception:
            log.warning("the async request's input %s cannot be read", request.input_location, exc_info=True)
            return None

    def _put(self, location: str, body: bytes, content_type: str) -> None:
        bucket, _, key = location.removeprefix("s3://").partition("/")
        self._client().put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)

    def _notification(
        self, request: AsyncRequest, *, content_type: str = "", failure_reason: str = "", failure_object: bool = False
    ) -> dict[str, Any]:
        """SageMaker's notification: Completed with the output's location, or Failed with the reason."""
        response: dict[str, Any] = (
            {"contentType": content_type, "outputLocation": request.output_location}
            if not failure_reason
            else {"failureLocation": request.failure_location}
            if failure_object
            else {}
        )
        document: dict[str, Any] = {
            "awsRegion": self.region,
            "eventTime": iso_now(),
            "receivedTime": iso_now(request.call.received_at),
            "invocationStatus": "Failed" if failure_reason else "Completed",
            "requestParameters": {"endpointName": request.endpoint_name, "inputLocation": request.input_location},
            "responseParameters": response,
            "inferenceId": request.inference_id,
            "eventVersion": "1.0",
            "eventSource": "aws:sagemaker",
            "eventName": "InferenceResult",
        }
        if failure_reason:
            document["failureReason"] = failure_reason
        return document


def async_endpoint_for(runtime: LocalRuntime, cold_start_s: float = 0.0) -> AsyncEndpoint:
    """The async endpoint a started runtime serves: its model call, its S3, its async_result queue."""
    from infra.pipeline import BucketRole, Handler

    aws, server = runtime.aws, runtime.endpoint
    queue_url = aws.queue_for(Handler.ASYNC_RESULT).url
    sqs = aws.client("sqs")

    def send(message: str) -> None:
        """Deliver as SNS's raw-delivery subscription would: the notification itself is the message body."""
        sqs.send_message(QueueUrl=queue_url, MessageBody=message)

    return AsyncEndpoint(
        run_model=server.run_model,
        s3=lambda: aws.client("s3"),
        send_notification=send,
        notification_queue_url=queue_url,
        bucket=aws.bucket_names[BucketRole.TRANSCRIPTS],
        region=aws.region,
        log_stream_arn=server.log_stream_arn(),
        activity=runtime.activity,
        faults=runtime.faults,
        emit=runtime._emit,
        cold_start_s=cold_start_s,
        scale_in_idle_s=runtime.config.scale_in_idle_minutes * 60.0,
    )
