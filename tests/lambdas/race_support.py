"""A whole upload's path through the real handler code, with every AWS call countable and interruptible.

`Pipeline` runs transcribe_trigger, a stand-in for Amazon Transcribe (it writes the transcript a COMPLETED
job writes) and invoke_sd for an upload, with injected clients wrapped in `Calls`: a hook may run before
any call (inject a re-upload there) or fail it (inject a transient error there). With an asynchronous
endpoint (ENDPOINT_MODE=async) invoke_sd queues a request; the stand-in endpoint answers it like SageMaker
(output object + notification) and async_result turns the notification into the result.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from botocore.response import StreamingBody

from async_result.core import Dependencies as ResultDependencies
from async_result.core import handle_notification
from async_result.settings import Settings as ResultSettings
from invoke_sd.service import Dependencies, generate_image
from invoke_sd.settings import Settings as InvokeSettings
from pipeline_common.error_records import ResultStore
from pipeline_common.events import S3Record, parse_s3_event
from pipeline_common.keys import error_key, image_keys
from pipeline_common.ledger import DynamoLedger
from pipeline_common.metrics import Metrics
from pipeline_common.results import Results
from tests.lambdas.support import (
    INPUT_BUCKET,
    OUTPUT_BUCKET,
    TRANSCRIPT_BUCKET,
    Aws,
    Uploaded,
    audio_bytes,
    s3_event,
    tiny_png,
)
from transcribe_trigger.core import Settings as TriggerSettings
from transcribe_trigger.core import start_transcription

Hook = Callable[[int, str, str], None]


def transient(operation: str) -> ClientError:
    """A 503 as S3, DynamoDB or SageMaker send it when overloaded."""
    return ClientError(
        {
            "Error": {"Code": "ServiceUnavailable", "Message": "Please reduce your request rate."},
            "ResponseMetadata": {"HTTPStatusCode": 503},
        },
        operation,
    )


@dataclass
class Calls:
    """Counts every client call of the code under test and runs `hook(index, service, operation)` first."""

    hook: Hook | None = None
    count: int = 0
    log: list[tuple[str, str]] = field(default_factory=list)

    def wrap(self, service: str, client: Any) -> Any:
        """`client`, with each method call counted and hooked."""
        calls = self

        class Wrapped:
            def __getattr__(self, name: str) -> Any:
                method = getattr(client, name)
                if not callable(method) or name.startswith("_") or name in ("meta", "exceptions"):
                    return method

                def call(*args: Any, **kwargs: Any) -> Any:
                    index = calls.count
                    calls.count += 1
                    calls.log.append((service, name))
                    if calls.hook is not None:
                        calls.hook(index, service, name)
                    return method(*args, **kwargs)

                return call

        return Wrapped()


OUTPUT_PREFIX = "async/outputs/"


def answer(request_body: bytes) -> bytes:
    """What code/inference.py answers (docs/CONTRACTS.md): one PNG and the parameters used."""
    return json.dumps(
        {
            "images": [base64.b64encode(tiny_png()).decode("ascii")],
            "parameters": json.loads(request_body)["parameters"],
            "nsfw_content_detected": [False],
            "prompt_truncated": False,
            "timings": {"inference_s": 0.1},
            "model": {"name": "fake"},
        }
    ).encode("utf-8")


def completed(input_location: str, output_location: str, inference_id: str = "id") -> dict[str, Any]:
    """SageMaker's success notification (FACTS: the documented SNS message)."""
    return {
        "awsRegion": "us-east-1",
        "eventTime": "2026-12-02T03:00:00.000Z",
        "receivedTime": "2026-12-02T02:59:00.000Z",
        "invocationStatus": "Completed",
        "requestParameters": {"endpointName": "speech-to-image-sd", "inputLocation": input_location},
        "responseParameters": {"contentType": "application/json", "outputLocation": output_location},
        "inferenceId": inference_id,
        "eventVersion": "1.0",
        "eventSource": "aws:sagemaker",
        "eventName": "InferenceResult",
    }


class FakeEndpoint:
    """A SageMaker runtime client that answers with a PNG and counts the images it made.

    Real-time: `invoke_endpoint` answers at once. Asynchronous: `invoke_endpoint_async` queues the request;
    `process` reads each queued request from S3, writes the output object and returns the notifications.
    """

    def __init__(self, s3: Any = None) -> None:
        self.generated = 0
        self.s3 = s3
        self.queued: list[dict[str, Any]] = []
        self.submitted: list[dict[str, Any]] = []

    def invoke_endpoint(self, **params: Any) -> dict[str, Any]:
        """Answer like code/inference.py (docs/CONTRACTS.md)."""
        self.generated += 1
        body = answer(params["Body"])
        return {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": "application/json"}

    def invoke_endpoint_async(self, **params: Any) -> dict[str, Any]:
        """Queue the request, as InvokeEndpointAsync does (HTTP 202)."""
        self.submitted.append(params)
        self.queued.append(params)
        name = f"{params['InferenceId']}-{len(self.submitted)}"
        return {
            "InferenceId": params["InferenceId"],
            "OutputLocation": f"s3://{TRANSCRIPT_BUCKET}/{OUTPUT_PREFIX}{name}.out",
        }

    def process(self) -> list[dict[str, Any]]:
        """Run every queued request: read its input, write its output, and return the notifications."""
        notifications = []
        while self.queued:
            params = self.queued.pop(0)
            bucket, _, key = params["InputLocation"][len("s3://") :].partition("/")
            self.generated += 1
            name = f"{params['InferenceId']}-{self.generated}"
            output_key = f"{OUTPUT_PREFIX}{name}.out"
            self.s3.put_object(
                Bucket=bucket, Key=output_key, Body=answer(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            )
            notifications.append(
                completed(params["InputLocation"], f"s3://{bucket}/{output_key}", params["InferenceId"])
            )
        return notifications


@dataclass
class Pipeline:
    """transcribe_trigger -> Transcribe -> invoke_sd for uploads under one key, on moto."""

    aws: Aws
    trigger_env: dict[str, str]
    invoke_env: dict[str, str]
    result_env: dict[str, str] = field(default_factory=dict)
    # Notifications not yet handled successfully (an SQS queue in front of async_result).
    inbox: list[dict[str, Any]] = field(default_factory=list)
    calls: Calls = field(default_factory=Calls)
    endpoint: FakeEndpoint = field(default_factory=FakeEndpoint)

    def __post_init__(self) -> None:
        self.endpoint.s3 = self.aws.s3

    @property
    def asynchronous(self) -> bool:
        """True when invoke_sd queues requests at an asynchronous endpoint."""
        return self.invoke_env.get("ENDPOINT_MODE") == "async"

    def results(self, function: str, *, wrapped: bool) -> tuple[Results, Any]:
        """A `Results` for one invocation, and the S3 client it writes with."""
        s3, dynamodb = self.clients(wrapped, "s3", "dynamodb")
        settings = TriggerSettings.from_env(self.trigger_env)
        results = Results(
            DynamoLedger(dynamodb, settings.ledger_table),
            ResultStore.of(s3, settings),
            function=function,
            metrics=Metrics(function),
            request_id=f"request-{function}",
            sleep=lambda _s: None,
        )
        return results, s3

    def clients(self, wrapped: bool, *names: str) -> list[Any]:
        """Real moto clients, or the counted and hooked ones."""
        raw = {
            "s3": self.aws.s3,
            "dynamodb": self.aws.dynamodb,
            "transcribe": self.aws.transcribe,
            "sagemaker": self.endpoint,
        }
        return [self.calls.wrap(name, raw[name]) if wrapped else raw[name] for name in names]

    def upload(self, key: str, body: bytes | None = None) -> Uploaded:
        """Put a recording (distinct bytes each time unless `body` is given)."""
        return self.aws.upload(key, body if body is not None else audio_bytes("mp3", 4096 + self.aws.sequence))

    def trigger(self, uploaded: Uploaded, *, wrapped: bool = True) -> str:
        """transcribe_trigger on the upload's S3 event; returns its outcome."""
        results, s3 = self.results("transcribe_trigger", wrapped=wrapped)
        (transcribe,) = self.clients(wrapped, "transcribe")
        (record,) = parse_s3_event(s3_event(INPUT_BUCKET, uploaded))
        settings = TriggerSettings.from_env(self.trigger_env)
        return start_transcription(record, settings=settings, s3=s3, transcribe=transcribe, results=results).outcome

    def transcribe(self, uploaded: Uploaded, text: str = "a red apple on a table") -> S3Record | None:
        """What Amazon Transcribe does for the upload's job, if it was started: write the transcript."""
        started = [call for call in self.aws.transcribe_calls if call["Media"]["MediaFileUri"].endswith(uploaded.key)]
        from pipeline_common.keys import job_name

        name = job_name(uploaded.key, uploaded.version_id, "s2i-")
        call = next((call for call in started if call["TranscriptionJobName"] == name), None)
        if call is None:
            return None
        document = {
            "jobName": name,
            "status": "COMPLETED",
            "results": {
                "transcripts": [{"transcript": text}],
                "items": [
                    {"type": "pronunciation", "alternatives": [{"confidence": "0.99", "content": word}]}
                    for word in text.split()
                ],
            },
        }
        response = self.aws.s3.put_object(
            Bucket=TRANSCRIPT_BUCKET, Key=call["OutputKey"], Body=json.dumps(document).encode("utf-8")
        )
        self.aws.sequence += 1
        return S3Record(
            bucket=TRANSCRIPT_BUCKET,
            key=call["OutputKey"],
            size=0,
            etag=response["ETag"].strip('"'),
            version_id=response["VersionId"],
            sequencer=f"{self.aws.sequence:016X}",
        )

    def invoke(self, record: S3Record, *, wrapped: bool = True) -> str:
        """invoke_sd on a transcript's S3 event; returns its outcome."""
        results, s3 = self.results("invoke_sd", wrapped=wrapped)
        (sagemaker,) = self.clients(wrapped, "sagemaker")
        deps = Dependencies(
            settings=InvokeSettings.from_env(self.invoke_env),
            s3=s3,
            sagemaker=sagemaker,
            results=results,
            sleep=lambda _s: None,
        )
        return generate_image(record, deps).outcome

    def notify(self, notification: dict[str, Any], *, wrapped: bool = True) -> str:
        """async_result on one notification (the body of its queue message); returns its outcome."""
        results, s3 = self.results("async_result", wrapped=wrapped)
        deps = ResultDependencies(settings=ResultSettings.from_env(self.result_env), s3=s3, results=results)
        return handle_notification(json.dumps(notification), deps).outcome

    def deliver(self, *, wrapped: bool = True, attempts: int = 5) -> list[str]:
        """The asynchronous endpoint runs what is queued; each notification is handled, retried like a queue.

        A notification that still fails stays in `inbox`, as an SQS message does, for the next `deliver`.
        """
        self.inbox += self.endpoint.process()
        outcomes = []
        while self.inbox:
            note = self.inbox.pop(0)
            try:
                outcomes.append(retry(lambda note=note: self.notify(note, wrapped=wrapped), attempts))
            except Exception:
                self.inbox.insert(0, note)
                raise
        return outcomes

    def generate(self, record: S3Record, *, wrapped: bool = True, attempts: int = 5) -> list[str]:
        """invoke_sd on the transcript (retried), then, for an asynchronous endpoint, the notifications."""
        outcomes = [retry(lambda: self.invoke(record, wrapped=wrapped), attempts)]
        if self.asynchronous or self.inbox:
            outcomes += self.deliver(wrapped=wrapped, attempts=attempts)
        return outcomes

    def run(self, uploaded: Uploaded, *, wrapped: bool = True, attempts: int = 5) -> None:
        """The whole path for one upload, each step retried (as the queues do) up to `attempts` times."""
        retry(lambda: self.trigger(uploaded, wrapped=wrapped), attempts)
        record = self.transcribe(uploaded)
        if record is not None:
            self.generate(record, wrapped=wrapped, attempts=attempts)

    def result_of(self, key: str) -> tuple[str, str | None]:
        """('image', the metadata's upload id) or ('error', its code) or ('none', None); never both kinds."""
        keys = image_keys("images/", key)
        present = set(self.aws.keys(OUTPUT_BUCKET))
        images = [k for k in keys if k in present]
        has_error = error_key("errors/", key) in present
        assert not (images and has_error), f"both an image set and an error record for {key}: {sorted(present)}"
        if images:
            assert len(images) == 3, f"incomplete image set for {key}: {images}"
            return "image", self.aws.read_json(OUTPUT_BUCKET, keys.metadata)["source"]["upload_id"]
        if has_error:
            return "error", self.aws.read_json(OUTPUT_BUCKET, error_key("errors/", key))["error"]
        return "none", None


def retry(step: Callable[[], Any], attempts: int = 5) -> Any:
    """Run `step` again after a failure, like a queue redelivering a message; the last failure propagates."""
    for attempt in range(attempts):
        try:
            return step()
        except Exception:
            if attempt == attempts - 1:
                raise
    return None
