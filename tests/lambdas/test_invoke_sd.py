"""invoke_sd: a transcript becomes image, metadata and page; failures become error records."""

from __future__ import annotations

import base64
import html
import json
import socket
import time
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.stub import Stubber

from invoke_sd.core import (
    EndpointFailure,
    RetryPolicy,
    Settings,
    TranscriptError,
    derive_seed,
    generate_images,
    is_transient,
    make_prompt,
    parse_transcript,
)
from pipeline_common.batch import RecordsFailedError
from pipeline_common.events import parse_s3_event
from pipeline_common.keys import job_name
from pipeline_common.settings import SettingsError
from pipeline_common.uploads import current_etag
from tests.lambdas.support import (
    EVENTS_DIR,
    INPUT_BUCKET,
    JOB_PREFIX,
    OUTPUT_BUCKET,
    TRANSCRIPT_BUCKET,
    Aws,
    FailingS3,
    endpoint_response,
    load_event,
    tiny_png,
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


class JsonBody:
    """Matches a request body by its parsed JSON, so Stubber can check what was sent."""

    def __init__(self, expected: Any) -> None:
        self.expected = expected

    def __eq__(self, other: object) -> bool:
        return isinstance(other, bytes | str) and json.loads(other) == self.expected

    def __hash__(self) -> int:
        return 0


def put_transcript(
    aws: Aws, document: bytes | dict[str, Any] | str = "transcribe_output.json", *, etag: str | None = None
) -> dict[str, Any]:
    """Store a Transcribe output document where the transcript event points; returns the PutObject response.

    Its jobName (where it has one) becomes the job of the upload with `etag`, by default the upload now
    under SOURCE_KEY, which is made first if there is none: the transcript is then about the current upload.
    """
    if etag is None:
        etag = current_etag(aws.s3, INPUT_BUCKET, SOURCE_KEY) or aws.put_upload(SOURCE_KEY, SOURCE_BODY)
    body = (EVENTS_DIR / document).read_bytes() if isinstance(document, str) else document
    if not isinstance(body, dict):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or "jobName" not in parsed:
            return aws.s3.put_object(Bucket=TRANSCRIPT_BUCKET, Key=TRANSCRIPT_KEY, Body=body)
        body = parsed
    named = body | {"jobName": job_name(SOURCE_KEY, etag, JOB_PREFIX)} if "jobName" in body else body
    return aws.s3.put_object(Bucket=TRANSCRIPT_BUCKET, Key=TRANSCRIPT_KEY, Body=json.dumps(named).encode("utf-8"))


def transcript_job(aws: Aws) -> str:
    """The jobName of the stored transcript."""
    return aws.read_json(TRANSCRIPT_BUCKET, TRANSCRIPT_KEY)["jobName"]


def transcript_doc(text: str, status: str = "COMPLETED") -> dict[str, Any]:
    return {
        "jobName": "j",
        "accountId": "1",
        "results": {"transcripts": [{"transcript": text}], "items": []},
        "status": status,
    }


def expect_call(stubber: Stubber, response: dict[str, Any], prompt: str = EXPECTED_PROMPT) -> None:
    parameters = {
        "num_inference_steps": 25,
        "guidance_scale": 7.5,
        "height": 512,
        "width": 512,
        "seed": derive_seed(SOURCE_KEY),
    }
    stubber.add_response(
        "invoke_endpoint",
        response,
        expected_params={
            "EndpointName": ENDPOINT,
            "ContentType": "application/json",
            "Accept": "application/json",
            "Body": JsonBody({"inputs": prompt, "parameters": parameters}),
        },
    )


def client_error(stubber: Stubber, code: str, status: int, message: str = "", **modeled: Any) -> None:
    stubber.add_client_error(
        "invoke_endpoint",
        service_error_code=code,
        service_message=message or code,
        http_status_code=status,
        modeled_fields=modeled or None,
    )


def settings() -> Settings:
    return Settings(
        input_bucket=INPUT_BUCKET,
        output_bucket=OUTPUT_BUCKET,
        transcript_prefix="transcripts/",
        image_prefix="images/",
        error_prefix="errors/",
        endpoint_name=ENDPOINT,
        job_name_prefix=JOB_PREFIX,
        image_parameters={"num_inference_steps": 25, "guidance_scale": 7.5, "height": 512, "width": 512},
    )


def run_core(aws: Aws, client: Any, sleeps: list[float], event: dict[str, Any] | None = None, **changes: Any) -> Any:
    """generate_images with an instant, recorded sleep and a fixed jitter."""
    from dataclasses import replace

    return generate_images(
        parse_s3_event(event or load_event("s3_put_transcript.json")),
        settings=replace(settings(), **changes),
        s3=aws.s3,
        sagemaker=client,
        policy=RetryPolicy(max_attempts=4, base_delay_s=1.0, max_delay_s=16.0),
        sleep=sleeps.append,
        rand=lambda: 0.5,
    )


def test_transcript_becomes_image_metadata_and_page(
    invoke: Any, aws: Aws, sagemaker: tuple[Any, Stubber], lambda_context: Any
) -> None:
    _, stubber = sagemaker
    png = tiny_png()
    put_transcript(aws)
    aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=ERROR_KEY, Body=b"{}")  # left by an earlier failed attempt
    expect_call(stubber, endpoint_response(png, nsfw_content_detected=[False], prompt_truncated=True))

    result = invoke.handler(load_event("s3_put_transcript.json"), lambda_context)

    stubber.assert_no_pending_responses()
    assert result == {
        "results": [{"source_key": SOURCE_KEY, "outcome": "generated", "image_key": IMAGES["png"], "error_key": None}]
    }
    assert aws.keys(OUTPUT_BUCKET) == sorted(IMAGES.values())  # and the stale error record is gone

    image = aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["png"])
    assert image["ContentType"] == "image/png"
    assert image["Body"].read() == png

    metadata = aws.read_json(OUTPUT_BUCKET, IMAGES["json"])
    assert metadata["source"] == {"bucket": INPUT_BUCKET, "key": SOURCE_KEY}
    assert metadata["transcript"] == EXPECTED_PROMPT
    assert metadata["transcript_source"]["key"] == TRANSCRIPT_KEY
    assert metadata["transcript_source"]["job_name"] == transcript_job(aws)
    # 11 words; the two punctuation items (confidence "0.0") are left out.
    assert metadata["transcript_source"]["mean_confidence"] == pytest.approx(10.846 / 11, abs=1e-4)
    assert metadata["prompt"] == EXPECTED_PROMPT
    assert metadata["prompt_truncated"] is True
    assert metadata["transcript_truncated"] is False
    assert metadata["notices"] == [
        "the transcript was longer than the model reads (77 tokens): only the start was used"
    ]
    assert metadata["parameters"]["seed"] == 7  # as returned by the endpoint
    assert metadata["nsfw_content_detected"] is False
    assert metadata["model"] == {"name": "stable-diffusion-v1-4", "endpoint_name": ENDPOINT}
    assert metadata["timings"]["endpoint"] == {"inference_s": 1.25}
    assert metadata["timings"]["endpoint_attempts"] == 1
    assert {"transcript_read_s", "endpoint_call_s", "writes_s"} <= set(metadata["timings"])
    assert metadata["created"].endswith("Z")

    page_object = aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["html"])
    assert page_object["ContentType"] == "text/html; charset=utf-8"
    page = page_object["Body"].read().decode("utf-8")
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert html.escape(EXPECTED_PROMPT) in page
    assert (
        '<p class="notice" role="note">Note: the transcript was longer than the model reads (77 tokens): '
        "only the start was used</p>" in page
    )


def test_page_escapes_the_transcript(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    text = 'Draw <script>alert("x")</script> & a "cat"'
    put_transcript(aws, transcript_doc(text))
    expect_call(stubber, endpoint_response(tiny_png()), prompt=text)

    run_core(aws, client, [])

    page = aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["html"])["Body"].read().decode()
    assert "<script>" not in page
    assert "Draw &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; a &quot;cat&quot;" in page


class NoEndpoint:
    """A sagemaker-runtime stand-in that records any call and fails it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def invoke_endpoint(self, **params: Any) -> Any:
        self.calls.append(params)
        raise AssertionError("the endpoint must not be called")


def test_repeated_event_is_a_duplicate_without_an_endpoint_call(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    put_transcript(aws)
    expect_call(stubber, endpoint_response(tiny_png(2, 2)))
    first = run_core(aws, client, [])
    aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=ERROR_KEY, Body=b"{}")  # left by a failed attempt of the repeat
    endpoint = NoEndpoint()

    second = run_core(aws, endpoint, [])

    assert [r.outcome for r in first + second] == ["generated", "duplicate"]
    assert second[0].image_key == IMAGES["png"]
    assert endpoint.calls == []
    assert aws.keys(OUTPUT_BUCKET) == sorted(IMAGES.values())
    assert aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["png"])["Body"].read() == tiny_png(2, 2)


def test_image_set_of_an_earlier_upload_is_replaced(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    put_transcript(aws)
    expect_call(stubber, endpoint_response(tiny_png(2, 2)))
    run_core(aws, client, [])
    aws.put_upload(SOURCE_KEY, b"ID3 a new recording under the same name")
    put_transcript(aws)  # the new upload's transcript: another job name
    expect_call(stubber, endpoint_response(tiny_png(3, 3)))

    (result,) = run_core(aws, client, [])

    assert result.outcome == "generated"
    stubber.assert_no_pending_responses()
    assert aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["png"])["Body"].read() == tiny_png(3, 3)
    assert aws.read_json(OUTPUT_BUCKET, IMAGES["json"])["transcript_source"]["job_name"] == transcript_job(aws)


@pytest.mark.parametrize("metadata", [b"not json", b'{"transcript_source": {}}', b"[]"])
def test_unreadable_earlier_metadata_is_no_duplicate(aws: Aws, sagemaker: tuple[Any, Stubber], metadata: bytes) -> None:
    client, stubber = sagemaker
    put_transcript(aws)
    aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["json"], Body=metadata)
    expect_call(stubber, endpoint_response(tiny_png()))

    assert run_core(aws, client, [])[0].outcome == "generated"


def test_seed_is_derived_from_the_source_key_unless_configured() -> None:
    seed = derive_seed(SOURCE_KEY)
    assert seed == derive_seed(SOURCE_KEY)
    assert 0 <= seed <= 2**32 - 1
    assert len({derive_seed(f"notes/take {n}.mp3") for n in range(200)}) == 200
    from invoke_sd.core import request_parameters

    assert request_parameters({"height": 512}, SOURCE_KEY) == {"height": 512, "seed": seed}
    assert request_parameters({"seed": 42}, SOURCE_KEY)["seed"] == 42


def test_prompt_collapses_whitespace_and_is_capped_at_a_word_boundary() -> None:
    assert make_prompt("  a\n\tcat   on\u00a0a mat ", 100) == ("a cat on a mat", False)
    prompt, truncated = make_prompt("word " * 300, 1000)
    assert truncated and len(prompt) <= 1000 and prompt.endswith("word")
    assert make_prompt("x" * 1500, 1000) == ("x" * 1000, True)
    assert make_prompt("a " + "x" * 1500, 1000) == ("a " + "x" * 998, True)


def test_throttling_is_retried_with_backoff_then_succeeds(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    put_transcript(aws)
    client_error(stubber, "ThrottlingException", 400, "Rate exceeded")
    client_error(
        stubber, "ModelError", 424, "Received server error (503)", OriginalStatusCode=503, OriginalMessage="busy"
    )
    expect_call(stubber, endpoint_response(tiny_png()))
    sleeps: list[float] = []

    started = time.perf_counter()
    results = run_core(aws, client, sleeps)

    assert time.perf_counter() - started < 1.0  # no real sleeping
    stubber.assert_no_pending_responses()  # exactly three calls
    assert sleeps == [0.5, 1.0]  # full jitter (rand=0.5) of 1 s, then 2 s
    assert results[0].outcome == "generated"
    assert aws.read_json(OUTPUT_BUCKET, IMAGES["json"])["timings"]["endpoint_attempts"] == 3


def test_still_failing_after_all_attempts_writes_error_record_and_raises(
    aws: Aws, sagemaker: tuple[Any, Stubber]
) -> None:
    client, stubber = sagemaker
    put_transcript(aws)
    for _ in range(4):
        client_error(stubber, "ServiceUnavailable", 503, "Service is unavailable")
    sleeps: list[float] = []

    with pytest.raises(RecordsFailedError) as caught:
        run_core(aws, client, sleeps)

    stubber.assert_no_pending_responses()
    assert len(sleeps) == 3
    assert isinstance(caught.value.__cause__, EndpointFailure)
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("generate", "endpoint-unavailable")
    assert "Service is unavailable" in record["reason"]
    assert record["details"]["attempts"] == 4
    assert record["source"] == {"bucket": INPUT_BUCKET, "key": SOURCE_KEY}
    assert not any(key.startswith("images/") for key in aws.keys(OUTPUT_BUCKET))


def test_missing_endpoint_is_not_retried_and_says_how_to_fix_it(
    invoke: Any, aws: Aws, sagemaker: tuple[Any, Stubber], lambda_context: Any
) -> None:
    _, stubber = sagemaker
    put_transcript(aws)
    client_error(stubber, "ValidationError", 400, f"Endpoint {ENDPOINT} of account 123456789012 not found.")

    with pytest.raises(RecordsFailedError, match="endpoint-not-found"):
        invoke.handler(load_event("s3_put_transcript.json"), lambda_context)

    stubber.assert_no_pending_responses()
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("generate", "endpoint-not-found")
    assert f"Endpoint {ENDPOINT} of account 123456789012 not found." in record["reason"]
    assert f"the endpoint {ENDPOINT} does not exist: deploy HuggingFaceModelEndpoint" in record["action"]


def test_model_rejecting_the_request_reports_its_message(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    put_transcript(aws)
    client_error(
        stubber,
        "ModelError",
        424,
        "Received client error (400) from primary",
        OriginalStatusCode=400,
        # What the DLC's Multi Model Server really sends: the model's JSON inside an MMS envelope.
        OriginalMessage=json.dumps(
            {
                "code": 400,
                "type": "InternalServerException",
                "message": json.dumps({"error": "height must be a multiple of 8"}),
            }
        ),
        LogStreamArn="arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/sd",
    )
    sleeps: list[float] = []

    with pytest.raises(RecordsFailedError):
        run_core(aws, client, sleeps)

    assert sleeps == []
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["error"], record["reason"]) == ("endpoint-rejected", "height must be a multiple of 8")
    assert "/aws/sagemaker/Endpoints/sd" in record["action"]


def test_response_without_a_png_is_an_error(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    put_transcript(aws)
    expect_call(stubber, endpoint_response(b"GIF89a not a png"))

    with pytest.raises(RecordsFailedError, match="bad-endpoint-response"):
        run_core(aws, client, [])

    assert aws.read_json(OUTPUT_BUCKET, ERROR_KEY)["error"] == "bad-endpoint-response"


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ("transcribe_output_empty.json", "no-speech"),
        (transcript_doc(" \n\t "), "no-speech"),
        ("transcribe_output_malformed.json", "transcript-unreadable"),
        (b"\xff\xfe not utf-8", "transcript-unreadable"),
        (transcript_doc("hello", status="FAILED"), "transcription-failed"),
        ({"jobName": "j", "status": "COMPLETED", "results": {"items": []}}, "transcript-invalid"),
        ({"results": {"transcripts": [{"transcript": "hi"}]}}, "transcript-invalid"),
        ([1, 2, 3], "transcript-invalid"),
    ],
)
def test_unusable_transcript_gets_an_error_record_and_no_endpoint_call(
    invoke: Any, aws: Aws, sagemaker: tuple[Any, Stubber], lambda_context: Any, document: Any, error: str
) -> None:
    # `sagemaker` has no responses queued: an endpoint call would raise and fail this test.
    put_transcript(aws, json.dumps(document).encode() if isinstance(document, list) else document)

    result = invoke.handler(load_event("s3_put_transcript.json"), lambda_context)

    assert result["results"][0]["outcome"] == "rejected"
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("transcript", error)
    assert record["source"] == {"bucket": INPUT_BUCKET, "key": SOURCE_KEY}
    assert record["details"]["transcript"] == {"bucket": TRANSCRIPT_BUCKET, "key": TRANSCRIPT_KEY}
    if error == "no-speech":
        assert record["reason"].startswith("no speech detected")
        assert "record again" in record["action"] and "speak clearly" in record["action"]
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]


def test_documented_transcript_example_parses() -> None:
    transcript = parse_transcript((EVENTS_DIR / "transcribe_output.json").read_bytes())
    assert transcript.text == EXPECTED_PROMPT
    with pytest.raises(TranscriptError):
        parse_transcript((EVENTS_DIR / "transcribe_output_malformed.json").read_bytes())


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ReadTimeoutError(endpoint_url="https://runtime.sagemaker"), True),
        (ConnectTimeoutError(endpoint_url="https://runtime.sagemaker"), True),
        (EndpointConnectionError(endpoint_url="https://runtime.sagemaker"), True),
        (ConnectionClosedError(endpoint_url="https://runtime.sagemaker"), True),
        (
            ClientError(
                {"Error": {"Code": "ModelNotReadyException"}, "ResponseMetadata": {"HTTPStatusCode": 429}}, "x"
            ),
            True,
        ),
        (ClientError({"Error": {"Code": "InternalFailure"}, "ResponseMetadata": {"HTTPStatusCode": 500}}, "x"), True),
        (ClientError({"Error": {"Code": "Weird"}, "ResponseMetadata": {"HTTPStatusCode": 502}}, "x"), True),
        (ClientError({"Error": {"Code": "ModelError"}, "OriginalStatusCode": 500}, "x"), True),
        (ClientError({"Error": {"Code": "ModelError"}, "OriginalStatusCode": 400}, "x"), False),
        (ClientError({"Error": {"Code": "ValidationError"}, "ResponseMetadata": {"HTTPStatusCode": 400}}, "x"), False),
        (
            ClientError({"Error": {"Code": "AccessDeniedException"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "x"),
            False,
        ),
        (ValueError("not an AWS error"), False),
    ],
)
def test_transient_errors_are_told_apart(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_errors_are_retried_by_our_loop_only(aws: Aws) -> None:
    from invoke_sd.handler import CLIENTS

    # The production client factory, pointed at a closed loopback port: connection refused at once.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", f"http://127.0.0.1:{_closed_port()}")
        CLIENTS.clear()
        client = CLIENTS.get("sagemaker_runtime")
        CLIENTS.clear()
    # botocore's `max_attempts` counts retries; `total_max_attempts` counts calls.
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert client.meta.config.read_timeout == 70
    sends: list[str] = []
    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", lambda **_: sends.append("send"))
    put_transcript(aws)
    sleeps: list[float] = []

    with pytest.raises(RecordsFailedError, match="endpoint-unavailable"):
        run_core(aws, client, sleeps)

    # Four attempts in all: botocore added none of its own.
    assert (len(sends), len(sleeps)) == (4, 3)
    assert aws.read_json(OUTPUT_BUCKET, ERROR_KEY)["details"]["attempts"] == 4


def test_missing_environment_variable_is_named(
    invoke: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENDPOINT_NAME")
    invoke.SETTINGS.reset()
    with pytest.raises(SettingsError, match="ENDPOINT_NAME"):
        invoke.handler(load_event("s3_put_transcript.json"), lambda_context)


def test_image_parameters_must_be_a_json_object(
    invoke: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGE_PARAMETERS", "[1, 2]")
    invoke.SETTINGS.reset()
    with pytest.raises(SettingsError, match="IMAGE_PARAMETERS"):
        invoke.handler(load_event("s3_put_transcript.json"), lambda_context)


def test_transcript_key_outside_the_layout_fails_loudly(
    invoke: Any, aws: Aws, sagemaker: tuple[Any, Stubber], lambda_context: Any
) -> None:
    event = load_event("s3_put_transcript.json")
    event["Records"][0]["s3"]["object"]["key"] = "transcripts/bad%20escape.json"

    with pytest.raises(RecordsFailedError, match="cannot occur in an escaped key"):
        invoke.handler(event, lambda_context)
    assert aws.keys(OUTPUT_BUCKET) == []


def test_handlers_import_without_environment_or_region(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    lambdas = Path(__file__).resolve().parents[2] / "lambdas"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(lambdas),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    # Creating a client here would raise NoRegionError; reading settings would raise SettingsError.
    code = "import transcribe_trigger.handler, invoke_sd.handler, transcribe_failed.handler"
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True, timeout=60)


def put_old_images(aws: Aws) -> None:
    """The image set of an earlier upload under SOURCE_KEY."""
    for key in IMAGES.values():
        aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=key, Body=b"earlier result")


def test_transcript_of_a_deleted_upload_is_gone(invoke: Any, aws: Aws, lambda_context: Any) -> None:
    put_transcript(aws)
    aws.s3.delete_object(Bucket=INPUT_BUCKET, Key=SOURCE_KEY)
    invoke.CLIENTS.inject(sagemaker_runtime=NoEndpoint())

    result = invoke.handler(load_event("s3_put_transcript.json"), lambda_context)

    assert result["results"][0]["outcome"] == "gone"
    assert aws.keys(OUTPUT_BUCKET) == []


def test_transcript_of_a_replaced_upload_is_superseded(invoke: Any, aws: Aws, lambda_context: Any) -> None:
    old = aws.put_upload(SOURCE_KEY, SOURCE_BODY)
    put_transcript(aws, etag=old)
    aws.put_upload(SOURCE_KEY, b"ID3 a newer recording, whose own transcript event makes its result")
    put_old_images(aws)  # e.g. already written for the newer upload
    endpoint = NoEndpoint()
    invoke.CLIENTS.inject(sagemaker_runtime=endpoint)

    result = invoke.handler(load_event("s3_put_transcript.json"), lambda_context)

    assert result["results"][0]["outcome"] == "superseded"
    assert endpoint.calls == []
    assert aws.keys(OUTPUT_BUCKET) == sorted(IMAGES.values())
    assert aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["png"])["Body"].read() == b"earlier result"


def test_unusable_transcript_of_a_replaced_upload_is_superseded_too(aws: Aws) -> None:
    old = aws.put_upload(SOURCE_KEY, SOURCE_BODY)
    put_transcript(aws, transcript_doc("", status="FAILED"), etag=old)
    aws.put_upload(SOURCE_KEY, b"ID3 newer")

    assert run_core(aws, NoEndpoint(), [])[0].outcome == "superseded"
    assert aws.keys(OUTPUT_BUCKET) == []


def test_a_transcript_version_that_expired_is_superseded(invoke: Any, aws: Aws, lambda_context: Any) -> None:
    # A replay days later: the newer job's transcript replaced this version, and the old one expired.
    aws.s3.put_bucket_versioning(Bucket=TRANSCRIPT_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    put_transcript(aws)
    put_old_images(aws)
    endpoint = NoEndpoint()
    invoke.CLIENTS.inject(sagemaker_runtime=endpoint)
    event = load_event("s3_put_transcript.json")
    event["Records"][0]["s3"]["object"]["versionId"] = "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"

    result = invoke.handler(event, lambda_context)

    assert result["results"][0]["outcome"] == "superseded"
    assert endpoint.calls == []
    assert aws.keys(OUTPUT_BUCKET) == sorted(IMAGES.values()), "the newer upload's images stay"


def versioned_event(version_id: str) -> dict[str, Any]:
    event = load_event("s3_put_transcript.json")
    event["Records"][0]["s3"]["object"]["versionId"] = version_id
    return event


def test_the_event_s_transcript_version_is_read(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    # A quick re-upload: both jobs write the same transcript key; the bucket keeps both versions.
    aws.s3.put_bucket_versioning(Bucket=TRANSCRIPT_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    old = aws.put_upload(SOURCE_KEY, SOURCE_BODY)
    first = put_transcript(aws, etag=old)["VersionId"]
    new = aws.put_upload(SOURCE_KEY, b"ID3 the second take")
    second = put_transcript(aws, transcript_doc("a red bicycle") | {"jobName": "set below"}, etag=new)["VersionId"]
    client, stubber = sagemaker
    expect_call(stubber, endpoint_response(tiny_png()), prompt="a red bicycle")

    # Reading the latest version instead would make the first event generate the second take's image.
    outcomes = [run_core(aws, client, [], versioned_event(v))[0].outcome for v in (first, second)]

    assert outcomes == ["superseded", "generated"]
    stubber.assert_no_pending_responses()
    metadata = aws.read_json(OUTPUT_BUCKET, IMAGES["json"])
    assert metadata["transcript"] == "a red bicycle"
    assert metadata["transcript_source"]["version_id"] == second


def test_transcript_without_job_name_skips_only_the_superseded_check(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    document = transcript_doc(EXPECTED_PROMPT)
    del document["jobName"]
    put_transcript(aws, document)
    expect_call(stubber, endpoint_response(tiny_png()))

    assert run_core(aws, client, [])[0].outcome == "generated"
    assert aws.read_json(OUTPUT_BUCKET, IMAGES["json"])["transcript_source"]["job_name"] is None
    # Without a job name there is nothing to compare: a second event is generated again, not a duplicate.
    expect_call(stubber, endpoint_response(tiny_png()))
    assert run_core(aws, client, [])[0].outcome == "generated"
    aws.s3.delete_object(Bucket=INPUT_BUCKET, Key=SOURCE_KEY)
    assert run_core(aws, NoEndpoint(), [])[0].outcome == "gone"


def test_low_confidence_transcript_is_no_speech(invoke: Any, aws: Aws, lambda_context: Any) -> None:
    put_transcript(aws, "transcribe_output_low_confidence.json")
    put_old_images(aws)
    endpoint = NoEndpoint()
    invoke.CLIENTS.inject(sagemaker_runtime=endpoint)

    result = invoke.handler(load_event("s3_put_transcript.json"), lambda_context)

    assert result["results"][0]["outcome"] == "rejected"
    assert endpoint.calls == []
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]  # the earlier upload's images went with it
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("transcript", "no-speech")
    assert record["reason"].startswith("no speech detected")
    assert "0.12" in record["reason"] and "MIN_TRANSCRIPT_CONFIDENCE" in record["reason"]
    assert "record again" in record["action"]
    details = record["details"]
    assert details["mean_confidence"] == pytest.approx(0.12)
    assert details["heard"] == "Uh, the hm."
    assert (details["words"], details["min_transcript_confidence"]) == (3, 0.2)


def test_confidence_threshold_comes_from_the_environment(
    invoke: Any, aws: Aws, sagemaker: tuple[Any, Stubber], lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_transcript(aws, "transcribe_output_low_confidence.json")
    monkeypatch.setenv("MIN_TRANSCRIPT_CONFIDENCE", "0.1")
    invoke.SETTINGS.reset()
    expect_call(sagemaker[1], endpoint_response(tiny_png()), prompt="Uh, the hm.")

    result = invoke.handler(load_event("s3_put_transcript.json"), lambda_context)

    assert result["results"][0]["outcome"] == "generated"


def test_transcript_without_confidences_is_not_judged(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    document = transcript_doc(EXPECTED_PROMPT)
    document["results"]["items"] = [
        {"type": "pronunciation", "alternatives": [{"content": "An"}]},
        {"type": "punctuation", "alternatives": [{"confidence": "0.0", "content": "."}]},
    ]
    put_transcript(aws, document)
    expect_call(stubber, endpoint_response(tiny_png()))

    assert run_core(aws, client, [])[0].outcome == "generated"
    assert aws.read_json(OUTPUT_BUCKET, IMAGES["json"])["transcript_source"]["mean_confidence"] is None


def test_word_confidences_are_read_from_strings() -> None:
    transcript = parse_transcript((EVENTS_DIR / "transcribe_output_low_confidence.json").read_bytes())
    assert transcript.mean_confidence == pytest.approx((0.1021 + 0.2113 + 0.0466) / 3)
    assert transcript.scored_words == 3
    odd = transcript_doc("x")
    odd["results"]["items"] = [
        {"type": "pronunciation", "alternatives": [{"confidence": "n/a"}]},
        {"type": "pronunciation", "alternatives": []},
        {"type": "pronunciation", "alternatives": [{"confidence": "0.5"}]},
        "not an item",
    ]
    assert parse_transcript(json.dumps(odd).encode()).mean_confidence == 0.5


TIMEOUT_MESSAGE = (
    "Your invocation timed out while waiting for a response from container primary. Review the latency metrics "
    "for each container in Amazon CloudWatch, resolve the issue, and try again."
)


def test_endpoint_timeout_is_not_retried_and_says_what_to_change(
    invoke: Any, aws: Aws, sagemaker: tuple[Any, Stubber], lambda_context: Any
) -> None:
    _, stubber = sagemaker
    put_transcript(aws)
    client_error(stubber, "ModelError", 424, TIMEOUT_MESSAGE)

    with pytest.raises(RecordsFailedError, match="endpoint-timeout"):
        invoke.handler(load_event("s3_put_transcript.json"), lambda_context)

    stubber.assert_no_pending_responses()  # one call: a retry would wait another 60 s for the same answer
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("generate", "endpoint-timeout")
    assert record["reason"] == TIMEOUT_MESSAGE
    for hint in ("60 s", "num_inference_steps", "height/width", "faster instance type"):
        assert hint in record["action"]
    assert record["details"]["attempts"] == 1


def test_timeout_is_told_apart_from_other_model_errors() -> None:
    timeout = ClientError({"Error": {"Code": "ModelError", "Message": TIMEOUT_MESSAGE}, "OriginalStatusCode": 500}, "x")
    assert is_transient(timeout) is False
    busy = ClientError({"Error": {"Code": "ModelError", "Message": "server error"}, "OriginalStatusCode": 500}, "x")
    assert is_transient(busy) is True


def test_image_write_failure_records_internal_error_and_raises(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    put_transcript(aws)
    expect_call(stubber, endpoint_response(tiny_png()))
    failing = FailingS3(aws.s3, "put_object", prefix=IMAGES["html"])

    with pytest.raises(RecordsFailedError) as caught:
        generate_images(
            parse_s3_event(load_event("s3_put_transcript.json")), settings=settings(), s3=failing, sagemaker=client
        )

    assert isinstance(caught.value.__cause__, ClientError)
    assert failing.refused == [("put_object", IMAGES["html"])]
    # The PNG already written goes with the record: never an incomplete image set next to an error record.
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("generate", "internal-error")
    assert "AccessDenied" in record["reason"] and "PutObject" in record["reason"]
    assert "invoke_sd" in record["action"] and "make replay" in record["action"]
    assert record["details"]["transcript"] == {"bucket": TRANSCRIPT_BUCKET, "key": TRANSCRIPT_KEY}


def test_failure_before_the_endpoint_call_is_recorded_at_the_transcript_stage(aws: Aws) -> None:
    put_transcript(aws)
    failing = FailingS3(aws.s3, "get_object", prefix="transcripts/")
    endpoint = NoEndpoint()

    with pytest.raises(RecordsFailedError, match="AccessDenied"):
        generate_images(
            parse_s3_event(load_event("s3_put_transcript.json")), settings=settings(), s3=failing, sagemaker=endpoint
        )

    assert endpoint.calls == []
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("transcript", "internal-error")


def test_transcript_cut_by_max_prompt_chars_gets_a_notice(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    text = "a castle on a hill at dawn " * 10
    put_transcript(aws, transcript_doc(text))
    prompt, _ = make_prompt(text, 100)
    expect_call(stubber, endpoint_response(tiny_png()), prompt=prompt)

    run_core(aws, client, [], max_prompt_chars=100)

    notice = (
        "the transcript was longer than 100 characters (MAX_PROMPT_CHARS): "
        f"only its first {len(prompt)} characters were sent to the model"
    )
    metadata = aws.read_json(OUTPUT_BUCKET, IMAGES["json"])
    assert (metadata["transcript_truncated"], metadata["notices"]) == (True, [notice])
    page = aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["html"])["Body"].read().decode()
    assert f'<p class="notice" role="note">Note: {html.escape(notice)}</p>' in page


def test_untruncated_prompt_has_no_notice(aws: Aws, sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    put_transcript(aws)
    expect_call(stubber, endpoint_response(tiny_png()))

    run_core(aws, client, [])

    assert aws.read_json(OUTPUT_BUCKET, IMAGES["json"])["notices"] == []
    page = aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["html"])["Body"].read().decode()
    assert 'class="notice"' not in page


def test_confidence_setting_is_checked(invoke: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIN_TRANSCRIPT_CONFIDENCE", "80%")
    invoke.SETTINGS.reset()
    with pytest.raises(SettingsError, match="MIN_TRANSCRIPT_CONFIDENCE"):
        invoke.handler(load_event("s3_put_transcript.json"), lambda_context)
