"""The local runtime's machinery, checked from outside: wiring, event delivery, handler environment,
retries, the local Transcribe engine and clean shutdown.

The handlers here are probes (tests/local/runtime_support.py) that record what they receive, so these
tests pin what the dispatcher delivers; test_e2e.py runs the real handlers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus, urlparse

import pytest
from botocore.exceptions import ClientError

from infra.pipeline import BucketRole, Handler, event_routes, handler_environment, routes
from local.aws import FAKE_CREDENTIALS, LocalModeError
from local.runtime import LocalRuntime, load_config
from tests.local.runtime_support import AUDIO, write_probe_lambdas

DOCUMENTED_RECORD_FIELDS = (
    "eventVersion",
    "eventSource",
    "awsRegion",
    "eventTime",
    "eventName",
    "userIdentity",
    "requestParameters",
    "responseElements",
    "s3",
)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """A runtime whose handlers are probes; no model is deployed (the endpoint answers "not found")."""
    lambdas = write_probe_lambdas(tmp_path_factory.mktemp("lambdas"))
    runtime = LocalRuntime(load_config(), None, lambdas_dir=lambdas, log_dir=tmp_path_factory.mktemp("logs"))
    runtime.start()
    yield runtime
    runtime.stop()


def _probes(runtime: LocalRuntime, handler: Handler) -> list[dict[str, Any]]:
    s3 = runtime.aws.client("s3")
    bucket = runtime.bucket_names[BucketRole.OUTPUT]
    prefix = f"probe/{runtime.functions[handler].name}/"
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return [json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()) for item in listing]


def _upload_bytes(runtime: LocalRuntime, key: str, data: bytes) -> None:
    runtime.aws.client("s3").put_object(Bucket=runtime.bucket_names[BucketRole.INPUT], Key=key, Body=data)


def _events_for(runtime: LocalRuntime, handler: Handler, key: str) -> list[dict[str, Any]]:
    found = []
    for probe in _probes(runtime, handler):
        for record in probe["event"]["Records"]:
            if unquote_plus(record["s3"]["object"]["key"]) == key:
                found.append(probe)
    return found


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
        for probe in _probes(runtime, Handler.TRANSCRIBE_FAILED)
        if "detail" in probe["event"]
    ]
    assert delivered == ["s2i-probe-failed"]
    [probe] = [p for p in _probes(runtime, Handler.TRANSCRIBE_FAILED) if "detail" in p["event"]]
    assert probe["event"]["detail-type"] == "Transcribe Job State Change"
    assert probe["event"]["account"] == runtime.aws.account


def test_an_event_that_keeps_failing_lands_in_the_dead_letter_queue_and_replays(runtime: LocalRuntime) -> None:
    key = "dead-letter-fail.mp3"
    before = runtime.dead_letters(Handler.TRANSCRIBE_TRIGGER)
    _upload_bytes(runtime, key, b"ID3 probe")
    assert runtime.wait_until_idle(60)
    assert runtime.dead_letters(Handler.TRANSCRIBE_TRIGGER) == before + 1
    sqs = runtime.aws.client("sqs")
    messages = sqs.receive_message(
        QueueUrl=runtime.aws.dead_letter_queues[Handler.TRANSCRIBE_TRIGGER], MaxNumberOfMessages=10, VisibilityTimeout=0
    )["Messages"]
    [record] = [
        json.loads(message["Body"])
        for message in messages
        if key in json.loads(message["Body"])["requestPayload"]["Records"][0]["s3"]["object"]["key"]
    ]
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["functionArn"] == runtime.functions[Handler.TRANSCRIBE_TRIGGER].arn + ":$LATEST"
    assert record["requestContext"]["approximateInvokeCount"] == 1 + runtime.max_retries
    assert unquote_plus(record["requestPayload"]["Records"][0]["s3"]["object"]["key"]) == key
    assert "probe asked to fail" in record["responsePayload"]["errorMessage"]

    [report] = runtime.replay_dead_letters(Handler.TRANSCRIBE_TRIGGER)
    assert runtime.wait_until_idle(60)
    assert len(report.replayed) == before + 1
    # The probe still fails: the replayed event is retried and returns to the queue, nothing is lost.
    assert len(_events_for(runtime, Handler.TRANSCRIBE_TRIGGER, key)) == 2 * (1 + runtime.max_retries)
    assert runtime.dead_letters(Handler.TRANSCRIBE_TRIGGER) == before + 1


def test_the_s3_event_arrives_as_s3_sends_it(runtime: LocalRuntime) -> None:
    key = "notes/my idée+1.mp3"
    _upload_bytes(runtime, key, b"ID3 probe")
    assert runtime.wait_until_idle(30)

    deliveries = _events_for(runtime, Handler.TRANSCRIBE_TRIGGER, key)
    assert len(deliveries) == 1, "exactly one invocation per upload; the s3:TestEvent is not delivered"
    event = deliveries[0]["event"]
    assert "Event" not in event
    [record] = event["Records"]
    for name in DOCUMENTED_RECORD_FIELDS:
        assert name in record, name
    assert record["eventSource"] == "aws:s3"
    assert record["eventName"].startswith("ObjectCreated:")
    assert record["awsRegion"] == runtime.config.region
    assert record["s3"]["bucket"]["name"] == runtime.bucket_names[BucketRole.INPUT]
    assert "ownerIdentity" in record["s3"]["bucket"]
    obj = record["s3"]["object"]
    # Form-encoded like S3: a space is '+', a literal '+' is %2B, non-ASCII is percent-encoded UTF-8.
    assert "+" in obj["key"] and "%2B" in obj["key"] and " " not in obj["key"] and "%C3%A9" in obj["key"]
    assert unquote_plus(obj["key"]) == key
    assert obj["size"] == len(b"ID3 probe")
    assert obj["eTag"] and obj["sequencer"]


def test_each_handler_runs_with_exactly_its_environment(runtime: LocalRuntime) -> None:
    _upload_bytes(runtime, "env-check.wav", b"RIFF probe")
    assert runtime.wait_until_idle(30)
    [probe] = _events_for(runtime, Handler.TRANSCRIBE_TRIGGER, "env-check.wav")
    environ = probe["environ"]
    expected = handler_environment(Handler.TRANSCRIBE_TRIGGER, runtime.config, runtime.bucket_names)
    assert {name: environ.get(name) for name in expected} == expected
    other = handler_environment(Handler.INVOKE_SD, runtime.config, runtime.bucket_names)
    assert not (set(other) - set(expected)) & set(environ), "another handler's variables leaked in"
    # Local mode swaps endpoints, nothing else: moto for AWS, the local endpoint for SageMaker runtime.
    assert environ["AWS_ENDPOINT_URL"] == runtime.aws.endpoint_url
    assert environ["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] == runtime.endpoint.url
    assert urlparse(environ["AWS_ENDPOINT_URL"]).hostname == "127.0.0.1"
    assert environ["AWS_ACCESS_KEY_ID"] == FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]
    assert environ["AWS_REGION"] == runtime.config.region
    assert "AWS_PROFILE" not in environ
    context = probe["context"]
    assert context["function_name"] == runtime.functions[Handler.TRANSCRIBE_TRIGGER].name
    assert context["invoked_function_arn"].endswith(f":function:{context['function_name']}")
    assert context["remaining_ms"] > 0
    assert context["aws_request_id"]


def test_every_upload_reaches_the_trigger_whatever_its_name(runtime: LocalRuntime) -> None:
    # The trigger, not a suffix filter, decides what is audio: nothing uploaded goes unanswered.
    for key in ("SHOUTING.MP3", "Mixed.Mp3", "notes.txt"):
        _upload_bytes(runtime, key, b"ID3 probe")
    assert runtime.wait_until_idle(30)
    for key in ("SHOUTING.MP3", "Mixed.Mp3", "notes.txt"):
        assert len(_events_for(runtime, Handler.TRANSCRIBE_TRIGGER, key)) == 1, key
    output = runtime.bucket_names[BucketRole.OUTPUT]
    _upload_bytes(runtime, "ignored.mp3", b"not the input bucket")
    runtime.aws.client("s3").put_object(Bucket=output, Key="images/x.mp3.json", Body=b"{}")
    assert runtime.wait_until_idle(30)
    assert not any(
        unquote_plus(record["s3"]["object"]["key"]) == "images/x.mp3.json"
        for handler in Handler
        for probe in _probes(runtime, handler)
        for record in probe["event"].get("Records", [])
    ), "results never trigger anything"


def test_an_unhandled_error_is_retried_twice_then_reported(runtime: LocalRuntime) -> None:
    key = "please-fail.mp3"
    _upload_bytes(runtime, key, b"ID3 probe")
    assert runtime.wait_until_idle(60)
    attempts = _events_for(runtime, Handler.TRANSCRIBE_TRIGGER, key)
    assert len(attempts) == 1 + runtime.max_retries
    result = runtime.collect(key)
    assert result.status == "error"
    assert result.error_origin == "handler"
    assert "probe asked to fail" in result.error["reason"]
    assert result.error["error"] == "handler-error"
    # The run goes on: the function still answers the next event.
    _upload_bytes(runtime, "next-one.mp3", b"ID3 probe")
    assert runtime.wait_until_idle(30)
    assert len(_events_for(runtime, Handler.TRANSCRIBE_TRIGGER, "next-one.mp3")) == 1


def test_a_crashed_handler_process_is_replaced(runtime: LocalRuntime) -> None:
    _upload_bytes(runtime, "crash.mp3", b"ID3 probe")
    assert runtime.wait_until_idle(60)
    result = runtime.collect("crash.mp3")
    assert result.error_origin == "handler"
    assert "Runtime.ExitError" in result.error["reason"]
    assert len(result.handler_errors) == 1
    # A fresh process (a new execution environment, as Lambda starts one) serves the next event.
    _upload_bytes(runtime, "the-next-one.mp3", b"ID3 probe")
    assert runtime.wait_until_idle(30)
    assert len(_events_for(runtime, Handler.TRANSCRIBE_TRIGGER, "the-next-one.mp3")) == 1


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
    _upload_bytes(runtime, "still-alive.mp3", b"ID3 probe")
    assert runtime.wait_until_idle(30)
    assert len(_events_for(runtime, Handler.TRANSCRIBE_TRIGGER, "still-alive.mp3")) == 1
