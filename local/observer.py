"""What local mode sees of the running pipeline: each invocation and endpoint call, attributed to its upload.

The dispatcher reports every invocation (with the execution environment that ran it) and the local
endpoint every call (with the `/_caller/<id>` prefix of the process that made it): so each endpoint call
is attributed to the invocation running in that process, its upload and its Transcribe job, also when
several invocations run at once. `generations` counts successful endpoint calls per job (one per upload).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from infra.pipeline import BucketRole, Handler
from local.aws import EmbeddedAws
from local.endpoint import REALTIME_LIMIT_S
from local.functions import Invocation, LocalFunction
from local.results import InvocationRecord
from local.tracking import EndpointCall, Progress, Traces
from local.transcribe_engine import TranscribeEngine


def caller_id(function: LocalFunction) -> str:
    """The id an execution environment's endpoint calls carry (its `/_caller/<id>` prefix)."""
    return f"{function.handler.value}.{function.instance}"


class PipelineObserver:
    """Told about every invocation (by the dispatcher) and endpoint call (by the local endpoint)."""

    def __init__(
        self, aws: EmbeddedAws, engine: TranscribeEngine, traces: Traces, emit: Callable[[Progress], None]
    ) -> None:
        """Attribute what happens to uploads through `engine`'s jobs; report progress through `emit`."""
        self.aws = aws
        self.engine = engine
        self.traces = traces
        self._emit = emit
        # Caller id (`/_caller/<id>` of a handler process) -> the event it is running, for endpoint calls.
        self._running: dict[str, dict[str, Any]] = {}
        # An asynchronous request's inputLocation -> its upload, for the notification that answers it.
        self._requests: dict[str, str] = {}
        # Successful endpoint calls per Transcribe job name, i.e. per upload: more than one is a duplicate.
        self.generations: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._s3: Any = None

    def before_invoke(self, handler: Handler, event: dict[str, Any], function: LocalFunction) -> None:
        """Remember which event the function is working on (its endpoint calls are attributed to it)."""
        with self._lock:
            self._running[caller_id(function)] = event
        stage = {
            Handler.TRANSCRIBE_TRIGGER: "trigger",
            Handler.TRANSCRIBE_FAILED: "record-failure",
            Handler.SWEEPER: "sweep",
        }.get(handler, "invoke")
        for key in self._sources(event):
            self._emit(Progress(key, stage, f"{function.name} invoked"))

    def after_invoke(
        self, handler: Handler, event: dict[str, Any], invocation: Invocation, final: bool, function: LocalFunction
    ) -> None:
        """Record the invocation in the upload's trace and report failures."""
        with self._lock:
            self._running.pop(caller_id(function), None)
        for key in self._sources(event):
            self.traces.get(key).invocations.append(InvocationRecord(handler.value, invocation, final, event))
            if not invocation.ok:
                retry = "" if final else "; its event returns to the queue"
                self._emit(
                    Progress(
                        key,
                        "handler-error",
                        f"{function.name} raised {invocation.error_summary}{retry}",
                        {"error": invocation.error},
                    )
                )

    def endpoint_queued(self, call: EndpointCall, input_location: str) -> None:
        """InvokeEndpointAsync queued a request: attribute it now, while its caller still runs."""
        self._attribute(call)
        with self._lock:
            self._requests[input_location] = call.key
        self._emit(Progress(call.key, "waiting", f"queued at the endpoint ({call.inference_id}): waiting for the GPU"))

    def endpoint_received(self, call: EndpointCall, request: dict[str, Any]) -> None:
        """A call reached the model: attribute it to its upload and job."""
        self._attribute(call)
        parameters = request.get("parameters") or {}
        size = f"{parameters.get('width', '?')}x{parameters.get('height', '?')}"
        steps = parameters.get("num_inference_steps", "?")
        self._emit(Progress(call.key, "generate", f"generating {size}, {steps} steps: {request.get('inputs', '')!r}"))

    def endpoint_finished(self, call: EndpointCall) -> None:
        """A call was answered: count the generation and report it."""
        self._attribute(call)
        with self._lock:
            if call.status == 200 and call.job_name:
                self.generations[call.job_name] += 1
        if call.key:
            self.traces.get(call.key).endpoint_calls.append(call)
        seconds = call.finished_at - call.received_at
        note = ""
        if call.inference_id:
            note = " (time in the endpoint's queue included)"
        elif seconds > REALTIME_LIMIT_S:
            note = f" (over SageMaker's {REALTIME_LIMIT_S:.0f} s real-time limit: a deployed endpoint would time out)"
        self._emit(Progress(call.key, "generated", f"endpoint answered {call.status} in {seconds:.2f} s{note}"))

    def _attribute(self, call: EndpointCall) -> None:
        """Fill in the call's upload and job from the invocation running in the calling process (once)."""
        if call.key:
            return
        with self._lock:
            event = self._running.get(call.caller)
        if event is None:
            return
        sources = self._sources(event)
        call.key = sources[0] if sources else ""
        call.job_name = self._job_of_transcript(event) or ""

    def _s3_records(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The S3 records of an event: straight, or inside an SQS batch's message bodies."""
        records: list[dict[str, Any]] = []
        for record in event.get("Records", []):
            if record.get("eventSource") == "aws:sqs":
                try:
                    body = json.loads(record.get("body") or "{}")
                except ValueError:
                    continue
                records += self._s3_records(body) if isinstance(body, dict) else []
                records += self._request_records(body)
            elif isinstance(record.get("s3"), dict):
                records.append(record)
        return records

    def _request_records(self, body: Any) -> list[dict[str, Any]]:
        """An async notification as the S3 record of its upload (to attribute async_result's invocations)."""
        parameters = body.get("requestParameters") if isinstance(body, dict) else None
        location = parameters.get("inputLocation") if isinstance(parameters, dict) else None
        with self._lock:
            key = self._requests.get(location) if isinstance(location, str) else None
        if not key:
            return []
        return [
            {"s3": {"bucket": {"name": self.aws.bucket_names[BucketRole.INPUT]}, "object": {"key": quote_plus(key)}}}
        ]

    def _sources(self, event: dict[str, Any]) -> list[str]:
        """The uploads (input keys) an event is about."""
        input_bucket = self.aws.bucket_names[BucketRole.INPUT]
        detail = event.get("detail")
        if isinstance(detail, dict):
            # A Transcribe job state change: the job knows its media.
            job = self.engine.jobs.get(str(detail.get("TranscriptionJobName", "")))
            return [job.source_key] if job is not None else []
        keys = []
        records = self._s3_records(event) or self._request_records(event)
        for record in records:
            s3 = record["s3"]
            bucket = s3.get("bucket", {}).get("name", "")
            key = unquote_plus(s3.get("object", {}).get("key", ""))
            if bucket != input_bucket:
                job = self.engine.record_for_output(bucket, key)
                key = job.source_key if job is not None else key
            keys.append(key)
        return keys

    def _job_of_transcript(self, event: dict[str, Any]) -> str | None:
        """The Transcribe job that wrote the transcript version an invoke_sd event is about."""
        for record in self._s3_records(event):
            obj = record["s3"].get("object", {})
            version = {"VersionId": obj["versionId"]} if obj.get("versionId") else {}
            try:
                body = (
                    self._client()
                    .get_object(Bucket=record["s3"]["bucket"]["name"], Key=unquote_plus(obj.get("key", "")), **version)[
                        "Body"
                    ]
                    .read()
                )
                return str(json.loads(body).get("jobName") or "") or None
            except Exception:
                return None
        return None

    def _client(self) -> Any:
        if self._s3 is None:
            self._s3 = self.aws.client("s3")
        return self._s3
