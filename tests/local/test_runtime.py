"""The local runtime's machinery, checked from outside: wiring, the local Transcribe engine, the endpoint, the
sweeper and clean shutdown (event delivery through the queues is in test_runtime_delivery.py).

The handlers here are probes (tests/local/runtime_support.py) that record what they receive, so these
tests pin what the dispatcher delivers; test_e2e.py runs the real handlers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from infra.pipeline import BucketRole, Handler, event_routes, routes
from local.aws import LocalModeError
from local.runtime import LocalRuntime, load_config
from tests.local.probe_support import (
    events_for,
    probe_runtime,
    probes,
    upload_bytes,
)
from tests.local.runtime_support import AUDIO


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """A runtime whose handlers are probes; no model is deployed (the endpoint answers "not found")."""
    yield from probe_runtime(tmp_path_factory)


def test_buckets_and_notifications_follow_the_routes(runtime: LocalRuntime) -> None:
    config = runtime.config
    listed = {bucket["Name"] for bucket in runtime.aws.client("s3").list_buckets()["Buckets"]}
    assert listed == set(runtime.bucket_names.values())
    assert set(runtime.bucket_names) == set(BucketRole)
    for route in routes(config):
        configured = runtime.read_notification_configuration(route.bucket)["QueueConfigurations"]
        filters = {
            tuple(
                sorted(
                    (rule["Name"].lower(), rule["Value"])
                    for rule in item.get("Filter", {}).get("Key", {}).get("FilterRules", [])
                )
            )
            for item in configured
            if runtime.aws.handler_for_queue_arn(item["QueueArn"]) is route.handler
        }
        expected = {
            tuple(
                sorted(([("suffix", suffix)] if suffix else []) + ([("prefix", route.prefix)] if route.prefix else []))
            )
            for suffix in route.suffixes or (None,)
        }
        assert filters == expected
    output = runtime.read_notification_configuration(BucketRole.OUTPUT)
    assert not output.get("QueueConfigurations"), "results must never re-trigger the pipeline"


def test_transcribe_job_events_follow_the_event_routes(runtime: LocalRuntime) -> None:
    events = runtime.aws.client("events")
    for route in event_routes(runtime.config):
        rule = events.describe_rule(Name=f"s2i-local-{route.name}")
        assert json.loads(rule["EventPattern"]) == route.pattern
        [target] = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        assert runtime.aws.handler_for_queue_arn(target["Arn"]) is route.handler


def test_only_failed_jobs_of_the_pipeline_reach_transcribe_failed(runtime: LocalRuntime) -> None:
    events = runtime.aws.client("events")
    for name, status in [("s2i-probe-failed", "FAILED"), ("s2i-probe-done", "COMPLETED"), ("other-app", "FAILED")]:
        events.put_events(
            Entries=[
                {
                    "Source": "aws.transcribe",
                    "DetailType": "Transcribe Job State Change",
                    "Detail": json.dumps({"TranscriptionJobName": name, "TranscriptionJobStatus": status}),
                }
            ]
        )
    assert runtime.wait_until_idle(30)
    delivered = [
        probe["event"]["detail"]["TranscriptionJobName"]
        for probe in probes(runtime, Handler.TRANSCRIBE_FAILED)
        if "detail" in probe["event"]
    ]
    assert delivered == ["s2i-probe-failed"]
    [probe] = [p for p in probes(runtime, Handler.TRANSCRIBE_FAILED) if "detail" in p["event"]]
    assert probe["event"]["detail-type"] == "Transcribe Job State Change"
    assert probe["event"]["account"] == runtime.aws.account


def test_transcribe_engine_completes_a_job_like_transcribe(runtime: LocalRuntime) -> None:
    # The model bucket has no notifications, so only the engine acts on this job.
    model_bucket = runtime.bucket_names[BucketRole.MODEL]
    output_bucket = runtime.bucket_names[BucketRole.OUTPUT]
    s3 = runtime.aws.client("s3")
    s3.put_object(Bucket=model_bucket, Key="media/red apple.mp3", Body=(AUDIO / "red-apple.mp3").read_bytes())
    events: list[dict[str, Any]] = []
    runtime.engine.on_state_change(events.append)
    transcribe = runtime.aws.client("transcribe")
    started = transcribe.start_transcription_job(
        TranscriptionJobName="engine-check",
        Media={"MediaFileUri": f"s3://{model_bucket}/media/red apple.mp3"},
        MediaFormat="mp3",
        LanguageCode="en-US",
        OutputBucketName=output_bucket,
        OutputKey="engine/red-apple.json",
    )
    assert started["TranscriptionJob"]["TranscriptionJobStatus"] in ("QUEUED", "IN_PROGRESS")
    assert runtime.wait_until_idle(60)

    job = transcribe.get_transcription_job(TranscriptionJobName="engine-check")["TranscriptionJob"]
    assert job["TranscriptionJobStatus"] == "COMPLETED"
    assert job["Transcript"]["TranscriptFileUri"].endswith(f"/{output_bucket}/engine/red-apple.json")
    document = json.loads(s3.get_object(Bucket=output_bucket, Key="engine/red-apple.json")["Body"].read())
    assert document["jobName"] == "engine-check"
    assert document["accountId"] == runtime.config.account
    assert document["status"] == "COMPLETED"
    text = document["results"]["transcripts"][0]["transcript"]
    assert {"red", "apple"} <= set(text.split())
    words = [item for item in document["results"]["items"] if item["type"] == "pronunciation"]
    assert words and all(isinstance(item["start_time"], str) for item in words)
    assert [event["detail"] for event in events] == [
        {"TranscriptionJobName": "engine-check", "TranscriptionJobStatus": "COMPLETED"}
    ]
    assert events[0]["source"] == "aws.transcribe"
    assert events[0]["detail-type"] == "Transcribe Job State Change"

    with pytest.raises(ClientError) as conflict:
        transcribe.start_transcription_job(
            TranscriptionJobName="engine-check",
            Media={"MediaFileUri": f"s3://{model_bucket}/media/red apple.mp3"},
            LanguageCode="en-US",
        )
    assert conflict.value.response["Error"]["Code"] == "ConflictException"


def test_a_job_that_asks_to_identify_the_language_gets_it_in_the_job_and_the_transcript(runtime: LocalRuntime) -> None:
    # languageCode=auto in cdk.json: the handler starts the job with IdentifyLanguage and LanguageOptions.
    model_bucket = runtime.bucket_names[BucketRole.MODEL]
    output_bucket = runtime.bucket_names[BucketRole.OUTPUT]
    s3 = runtime.aws.client("s3")
    s3.put_object(Bucket=model_bucket, Key="media/lake.flac", Body=(AUDIO / "mountain-lake.flac").read_bytes())
    transcribe = runtime.aws.client("transcribe")
    transcribe.start_transcription_job(
        TranscriptionJobName="identify-check",
        Media={"MediaFileUri": f"s3://{model_bucket}/media/lake.flac"},
        IdentifyLanguage=True,
        LanguageOptions=["de-DE", "en-GB", "fr-FR"],
        OutputBucketName=output_bucket,
        OutputKey="engine/lake.json",
    )
    assert runtime.wait_until_idle(60)

    job = transcribe.get_transcription_job(TranscriptionJobName="identify-check")["TranscriptionJob"]
    assert job["TranscriptionJobStatus"] == "COMPLETED"
    assert job["LanguageCode"] == "en-GB", "the English candidate: the default model hears English only"
    results = json.loads(s3.get_object(Bucket=output_bucket, Key="engine/lake.json")["Body"].read())["results"]
    assert results["language_code"] == "en-GB"
    assert results["language_identification"] == [{"score": "1.0", "code": "en-GB"}]
    assert "mountain lake" in results["transcripts"][0]["transcript"].lower()


@pytest.mark.parametrize(
    ("name", "uri_key", "reason"),
    [
        ("engine-not-audio", "media/not-audio.mp3", "couldn't be decoded"),
        ("engine-missing", "media/missing.mp3", "can't be accessed"),
    ],
)
def test_transcribe_engine_fails_a_job_like_transcribe(
    runtime: LocalRuntime, name: str, uri_key: str, reason: str
) -> None:
    model_bucket = runtime.bucket_names[BucketRole.MODEL]
    runtime.aws.client("s3").put_object(
        Bucket=model_bucket, Key="media/not-audio.mp3", Body=(AUDIO / "not-audio.mp3").read_bytes()
    )
    events: list[dict[str, Any]] = []
    runtime.engine.on_state_change(events.append)
    transcribe = runtime.aws.client("transcribe")
    transcribe.start_transcription_job(
        TranscriptionJobName=name,
        Media={"MediaFileUri": f"s3://{model_bucket}/{uri_key}"},
        LanguageCode="en-US",
        OutputBucketName=runtime.bucket_names[BucketRole.OUTPUT],
        OutputKey=f"engine/{name}.json",
    )
    assert runtime.wait_until_idle(60)
    job = transcribe.get_transcription_job(TranscriptionJobName=name)["TranscriptionJob"]
    assert job["TranscriptionJobStatus"] == "FAILED"
    assert reason in job["FailureReason"]
    assert {"TranscriptionJobName": name, "TranscriptionJobStatus": "FAILED"} in [event["detail"] for event in events]
    listed = transcribe.list_transcription_jobs(JobNameContains=name)["TranscriptionJobSummaries"]
    assert listed[0]["TranscriptionJobStatus"] == "FAILED"


def test_unknown_endpoint_is_a_validation_error(runtime: LocalRuntime) -> None:
    import boto3

    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=runtime.endpoint.url,
        region_name=runtime.config.region,
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    with pytest.raises(ClientError) as error:
        client.invoke_endpoint(EndpointName="no-such-endpoint", Body=b"{}", ContentType="application/json")
    assert error.value.response["Error"]["Code"] == "ValidationError"
    assert "no-such-endpoint" in error.value.response["Error"]["Message"]
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_only_one_runtime_per_process(runtime: LocalRuntime) -> None:
    second = LocalRuntime(load_config(), None)
    with pytest.raises(LocalModeError, match="already running"):
        second.start()
    # The failed start must not have disturbed the running one.
    upload_bytes(runtime, "still-alive.mp3", b"ID3 probe")
    assert runtime.wait_until_idle(30)
    assert len(events_for(runtime, Handler.TRANSCRIBE_TRIGGER, "still-alive.mp3")) == 1


def test_the_sweeper_runs_on_request_with_a_scheduled_event(runtime: LocalRuntime) -> None:
    before = len(probes(runtime, Handler.SWEEPER))
    invocation = runtime.sweep()
    runtime.deliver(Handler.SWEEPER, {"detail-type": "Scheduled Event"})  # a replayed schedule: it just runs
    assert invocation.ok
    received = probes(runtime, Handler.SWEEPER)
    assert len(received) == before + 2
    event = received[-1]["event"]
    assert (event["source"], event["detail-type"], event["account"]) == (
        "aws.events",
        "Scheduled Event",
        runtime.aws.account,
    )
