"""Helpers for the invoke_sd tests: an upload waiting for its transcript, the transcript event, the stubbed endpoint."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from typing import Any

from botocore.stub import Stubber

from invoke_sd.endpoint import RetryPolicy, derive_seed
from invoke_sd.service import Dependencies, Result, generate_images
from invoke_sd.settings import Settings
from pipeline_common.error_records import ResultStore, utc_now
from pipeline_common.events import parse_s3_event
from pipeline_common.keys import job_name
from pipeline_common.ledger import RECEIVED, TRANSCRIBING, DynamoLedger, Upload, normalise_sequencer
from pipeline_common.metrics import Metrics
from pipeline_common.results import Results
from tests.lambdas.support import (
    EVENTS_DIR,
    INPUT_BUCKET,
    JOB_PREFIX,
    LEDGER_TABLE,
    OUTPUT_BUCKET,
    TRANSCRIPT_BUCKET,
    Aws,
    Uploaded,
    s3_event,
)

SOURCE_KEY = "notes/my idea.mp3"
TRANSCRIPT_KEY = "transcripts/notes/my!20idea.mp3.json"
ENDPOINT = "speech-to-image-sd"
IMAGES = {
    "png": f"images/{SOURCE_KEY}.png",
    "json": f"images/{SOURCE_KEY}.json",
    "html": f"images/{SOURCE_KEY}.html",
}
ERROR_KEY = f"errors/{SOURCE_KEY}.json"
EXPECTED_PROMPT = "An astronaut riding a horse, in the style of Van Gogh."
SOURCE_BODY = b"ID3 the recording the transcript was made from"
PARAMETERS = {"num_inference_steps": 25, "guidance_scale": 7.5, "height": 512, "width": 512}


class JsonBody:
    """Matches a request body by its parsed JSON, so Stubber can check what was sent."""

    def __init__(self, expected: Any) -> None:
        self.expected = expected

    def __eq__(self, other: object) -> bool:
        return isinstance(other, bytes | str) and json.loads(other) == self.expected

    def __hash__(self) -> int:
        return 0


class NoEndpoint:
    """A sagemaker-runtime stand-in that records any call and fails it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def invoke_endpoint(self, **params: Any) -> Any:
        self.calls.append(params)
        raise AssertionError("the endpoint must not be called")


def ledger(aws: Aws) -> DynamoLedger:
    return DynamoLedger(aws.dynamodb, LEDGER_TABLE)


def transcribing(aws: Aws, body: bytes = SOURCE_BODY, key: str = SOURCE_KEY) -> Uploaded:
    """An upload whose Transcribe job runs, as transcribe_trigger leaves it in the ledger."""
    uploaded = aws.upload(key, body)
    upload = Upload(key, uploaded.version_id, normalise_sequencer(uploaded.sequencer), uploaded.etag)
    ledger(aws).claim(upload, utc_now())
    name = job_name(key, uploaded.version_id, JOB_PREFIX)
    ledger(aws).advance(key, uploaded.version_id, to=TRANSCRIBING, expect=(RECEIVED,), now=utc_now(), job_name=name)
    return uploaded


def transcript_doc(text: str, status: str = "COMPLETED") -> dict[str, Any]:
    return {
        "jobName": "set by put_transcript",
        "accountId": "1",
        "results": {"transcripts": [{"transcript": text}], "items": []},
        "status": status,
    }


def put_transcript(
    aws: Aws,
    document: bytes | dict[str, Any] | list[Any] | str = "transcribe_output.json",
    *,
    of: Uploaded | None = None,
) -> dict[str, Any]:
    """Store a transcript as the job of upload `of` writes it (by default a new upload waiting for it); its event.

    `document` is a file in tests/events, a JSON document or raw bytes. A document with a jobName gets the job name
    of that upload; bytes and documents without one are stored as given.
    """
    if of is None:
        of = transcribing(aws)
    body = (EVENTS_DIR / document).read_bytes() if isinstance(document, str) else document
    if isinstance(body, bytes):
        with contextlib.suppress(ValueError):  # a damaged transcript is stored as given
            body = json.loads(body)
    if isinstance(body, dict) and "jobName" in body:
        body = body | {"jobName": job_name(of.key, of.version_id, JOB_PREFIX)}
    if not isinstance(body, bytes):
        body = json.dumps(body).encode("utf-8")
    response = aws.s3.put_object(Bucket=TRANSCRIPT_BUCKET, Key=TRANSCRIPT_KEY, Body=body)
    aws.sequence += 1
    written = Uploaded(
        key=TRANSCRIPT_KEY,
        etag=response["ETag"].strip('"'),
        version_id=response["VersionId"],
        sequencer=f"{aws.sequence:016X}",
        size=len(body),
    )
    return s3_event(TRANSCRIPT_BUCKET, written)


def transcript_job(aws: Aws) -> str:
    """The jobName of the stored transcript."""
    return aws.read_json(TRANSCRIPT_BUCKET, TRANSCRIPT_KEY)["jobName"]


def expect_call(stubber: Stubber, response: dict[str, Any], prompt: str = EXPECTED_PROMPT) -> None:
    """Queue one InvokeEndpoint response, checking the request the contract describes."""
    stubber.add_response(
        "invoke_endpoint",
        response,
        expected_params={
            "EndpointName": ENDPOINT,
            "ContentType": "application/json",
            "Accept": "application/json",
            "Body": JsonBody({"inputs": prompt, "parameters": PARAMETERS | {"seed": derive_seed(SOURCE_KEY)}}),
        },
    )


def client_error(stubber: Stubber, code: str, status: int, message: str = "", **modeled: Any) -> None:
    """Queue one InvokeEndpoint error."""
    stubber.add_client_error(
        "invoke_endpoint",
        service_error_code=code,
        service_message=message or code,
        http_status_code=status,
        modeled_fields=modeled or None,
    )


def settings(**changes: Any) -> Settings:
    base = Settings(
        input_bucket=INPUT_BUCKET,
        output_bucket=OUTPUT_BUCKET,
        image_prefix="images/",
        error_prefix="errors/",
        job_name_prefix=JOB_PREFIX,
        ledger_table=LEDGER_TABLE,
        metrics_namespace="SpeechToImage",
        transcript_prefix="transcripts/",
        endpoint_name=ENDPOINT,
        image_parameters=PARAMETERS,
    )
    return replace(base, **changes)


def run(
    aws: Aws, client: Any, event: dict[str, Any], sleeps: list[float] | None = None, s3: Any = None, **changes: Any
) -> list[Result]:
    """invoke_sd's service on a direct event, with an instant, recorded sleep and a fixed jitter."""
    chosen = settings(**changes)
    results = Results(
        ledger(aws), ResultStore.of(s3 or aws.s3, chosen), function="invoke_sd", metrics=Metrics("invoke_sd")
    )
    deps = Dependencies(
        settings=chosen,
        s3=s3 or aws.s3,
        sagemaker=client,
        results=results,
        policy=RetryPolicy(max_attempts=4, base_delay_s=1.0, max_delay_s=16.0),
        sleep=(sleeps if sleeps is not None else []).append,
        rand=lambda: 0.5,
    )
    return generate_images(parse_s3_event(event), deps)
