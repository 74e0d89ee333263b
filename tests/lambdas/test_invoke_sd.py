"""invoke_sd's handler: a transcript event (plain or in an SQS batch) becomes image, metadata and page."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import pytest
from botocore.stub import Stubber

from pipeline_common.batch import RecordsFailedError
from pipeline_common.settings import SettingsError
from tests.lambdas.invoke_sd_support import (
    ENDPOINT,
    ERROR_KEY,
    EXPECTED_PROMPT,
    IMAGES,
    SOURCE_KEY,
    TRANSCRIPT_KEY,
    NoEndpoint,
    expect_call,
    ledger,
    put_transcript,
    transcribing,
    transcript_doc,
    transcript_job,
)
from tests.lambdas.support import (
    INPUT_BUCKET,
    OUTPUT_BUCKET,
    TRANSCRIPT_BUCKET,
    Aws,
    endpoint_response,
    load_event,
    sqs_batch,
    tiny_png,
)


def test_transcript_becomes_image_metadata_and_page(
    invoke: Any, aws: Aws, sagemaker: tuple[Any, Stubber], lambda_context: Any
) -> None:
    _, stubber = sagemaker
    png = tiny_png()
    uploaded = transcribing(aws)
    event = put_transcript(aws, of=uploaded)
    expect_call(stubber, endpoint_response(png, nsfw_content_detected=[False], prompt_truncated=True))

    result = invoke.handler(event, lambda_context)

    stubber.assert_no_pending_responses()
    assert result == {
        "results": [{"source_key": SOURCE_KEY, "outcome": "generated", "image_key": IMAGES["png"], "error_key": None}]
    }
    assert aws.keys(OUTPUT_BUCKET) == sorted(IMAGES.values())

    image = aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=IMAGES["png"])
    assert image["ContentType"] == "image/png"
    assert image["Body"].read() == png

    metadata = aws.read_json(OUTPUT_BUCKET, IMAGES["json"])
    assert metadata["source"] == {"bucket": INPUT_BUCKET, "key": SOURCE_KEY, "upload_id": uploaded.version_id}
    assert metadata["transcript"] == EXPECTED_PROMPT
    assert metadata["transcript_source"]["key"] == TRANSCRIPT_KEY
    assert metadata["transcript_source"]["version_id"] == event["Records"][0]["s3"]["object"]["versionId"]
    assert metadata["transcript_source"]["job_name"] == transcript_job(aws)
    assert metadata["transcript_source"]["mean_confidence"] == pytest.approx(10.846 / 11, abs=1e-4)
    assert metadata["prompt"] == EXPECTED_PROMPT
    assert (metadata["prompt_truncated"], metadata["transcript_truncated"]) == (True, False)
    assert metadata["notices"] == [
        "the transcript was longer than the model reads (77 tokens): only the start was used"
    ]
    assert metadata["parameters"]["seed"] == 7  # as returned by the endpoint
    assert metadata["nsfw_content_detected"] is False
    assert metadata["model"] == {"name": "stable-diffusion-v1-4", "endpoint_name": ENDPOINT}
    assert metadata["timings"]["endpoint"] == {"inference_s": 1.25}
    assert metadata["timings"]["endpoint_attempts"] == 1
    assert {"transcript_read_s", "endpoint_call_s"} <= set(metadata["timings"])
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
    entry = ledger(aws).get(SOURCE_KEY)
    assert entry is not None and entry.stage == "done"
    assert entry.result == {"kind": "image", "key": IMAGES["png"]}


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
        (b"[1, 2, 3]", "transcript-invalid"),
    ],
)
def test_unusable_transcript_gets_an_error_record_and_no_endpoint_call(
    invoke: Any, aws: Aws, lambda_context: Any, document: Any, error: str
) -> None:
    endpoint = NoEndpoint()
    invoke.CLIENTS.inject(sagemaker_runtime=endpoint)
    event = put_transcript(aws, document)

    result = invoke.handler(event, lambda_context)

    assert result["results"][0]["outcome"] == "rejected"
    assert result["results"][0]["error_key"] == ERROR_KEY
    assert endpoint.calls == []
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("transcript", error)
    assert record["source"] == {"bucket": INPUT_BUCKET, "key": SOURCE_KEY}
    assert record["details"]["transcript"]["bucket"] == TRANSCRIPT_BUCKET
    assert record["details"]["transcript"]["key"] == TRANSCRIPT_KEY
    assert record["request_id"] == lambda_context.aws_request_id
    if error == "no-speech":
        assert record["reason"].startswith("no speech detected")
        assert "record again" in record["action"] and "speak clearly" in record["action"]
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]


def test_duplicate_delivery_in_the_queue_calls_the_endpoint_once(
    invoke: Any, aws: Aws, sagemaker: tuple[Any, Stubber], lambda_context: Any
) -> None:
    event = put_transcript(aws)
    expect_call(sagemaker[1], endpoint_response(tiny_png()))  # one response only: a second call would fail

    first = invoke.handler(sqs_batch(event), lambda_context)
    second = invoke.handler(sqs_batch(event), lambda_context)

    assert [r["outcome"] for r in first["results"] + second["results"]] == ["generated", "duplicate"]
    assert first["batchItemFailures"] == second["batchItemFailures"] == []
    sagemaker[1].assert_no_pending_responses()


def test_sqs_batch_reports_only_the_failed_messages(
    invoke: Any, aws: Aws, sagemaker: tuple[Any, Stubber], lambda_context: Any
) -> None:
    good = put_transcript(aws)
    outside = load_event("s3_put_transcript.json")
    outside["Records"][0]["s3"]["object"]["key"] = "transcripts/bad%20escape.json"
    expect_call(sagemaker[1], endpoint_response(tiny_png()))

    result = invoke.handler(sqs_batch(outside, good), lambda_context)

    assert result["batchItemFailures"] == [{"itemIdentifier": "message-0"}]
    assert [r["outcome"] for r in result["results"]] == ["generated"]
    assert aws.keys(OUTPUT_BUCKET) == sorted(IMAGES.values())


def test_transcript_key_outside_the_layout_fails_loudly(invoke: Any, aws: Aws, lambda_context: Any) -> None:
    event = load_event("s3_put_transcript.json")
    event["Records"][0]["s3"]["object"]["key"] = "transcripts/bad%20escape.json"

    with pytest.raises(RecordsFailedError, match="cannot occur in an escaped key"):
        invoke.handler(event, lambda_context)
    assert aws.keys(OUTPUT_BUCKET) == []


def test_confidence_threshold_comes_from_the_environment(
    invoke: Any, aws: Aws, sagemaker: tuple[Any, Stubber], lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = put_transcript(aws, "transcribe_output_low_confidence.json")
    monkeypatch.setenv("MIN_TRANSCRIPT_CONFIDENCE", "0.1")
    invoke.SETTINGS.reset()
    expect_call(sagemaker[1], endpoint_response(tiny_png()), prompt="Uh, the hm.")

    result = invoke.handler(event, lambda_context)

    assert result["results"][0]["outcome"] == "generated"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ENDPOINT_NAME", None),
        ("LEDGER_TABLE", None),
        ("IMAGE_PARAMETERS", "[1, 2]"),
        ("IMAGE_PARAMETERS", "{not json"),
        ("MIN_TRANSCRIPT_CONFIDENCE", "80%"),
        ("MAX_PROMPT_CHARS", "0"),
    ],
)
def test_bad_environment_is_named(
    invoke: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, variable: str, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(variable)
    else:
        monkeypatch.setenv(variable, value)
    invoke.SETTINGS.reset()
    with pytest.raises(SettingsError, match=variable):
        invoke.handler(load_event("s3_put_transcript.json"), lambda_context)


def test_outcome_and_stage_times_are_emf_metrics(
    invoke: Any, aws: Aws, sagemaker: tuple[Any, Stubber], lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    event = put_transcript(aws)
    expect_call(sagemaker[1], endpoint_response(tiny_png()))
    capsys.readouterr()

    invoke.handler(event, lambda_context)

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    metrics = {}
    for line in lines:
        (directive,) = line["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "SpeechToImage"
        ((dimension, *others),) = directive["Dimensions"]
        (metric,) = directive["Metrics"]
        metrics[(metric["Name"], line[dimension], *(line[name] for name in others))] = (metric["Unit"], line)
    assert set(metrics) == {
        ("StageSeconds", "transcribe"),
        ("StageSeconds", "generate"),
        ("StageSeconds", "total"),
        ("Outcomes", "invoke_sd", "generated"),
    }
    assert metrics[("StageSeconds", "total")][0] == "Seconds"
    (seconds,) = metrics[("StageSeconds", "total")][1]["StageSeconds"]
    assert 0 <= seconds < 60


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
    code = "import transcribe_trigger.handler, invoke_sd.handler, transcribe_failed.handler, sweeper.handler"
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True, timeout=60)
