"""The local runtime's machinery, checked from outside: wiring, event delivery through the queues (SQS batch
events, partial batch failures, redrive to the dead-letter queue, concurrency), handler environment, the
local Transcribe engine and clean shutdown.

The handlers here are probes (tests/local/runtime_support.py) that record what they receive, so these
tests pin what the dispatcher delivers; test_e2e.py runs the real handlers.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus, urlparse

import pytest
from botocore.exceptions import ClientError

from infra.pipeline import BucketRole, Handler, event_routes, handler_environment, routes
from local.aws import FAKE_CREDENTIALS, LocalModeError
from local.runtime import LocalRuntime, load_config
from tests.local.runtime_support import AUDIO, s3_records, write_probe_lambdas

SQS_RECORD_FIELDS = (
    "messageId",
    "receiptHandle",
    "body",
    "attributes",
    "messageAttributes",
    "md5OfBody",
    "eventSource",
    "eventSourceARN",
    "awsRegion",
)

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
    # A failed message is received again at once (retry_delay_s=0): the redrive tests need not wait.
    runtime = LocalRuntime(
        load_config(),
        None,
        lambdas_dir=lambdas,
        log_dir=tmp_path_factory.mktemp("logs"),
        retry_delay_s=0,
        sweep_interval_s=None,
    )
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
        if any(unquote_plus(record["s3"]["object"]["key"]) == key for record in s3_records(probe["event"])):
            found.append(probe)
    return found


def _max_receive_count(runtime: LocalRuntime, handler: Handler) -> int:
    return next(route.queue.max_receive_count for route in routes(runtime.config) if route.handler is handler)


def _dead_lettered_bodies(runtime: LocalRuntime, handler: Handler) -> list[dict[str, Any]]:
    sqs = runtime.aws.client("sqs")
    messages = sqs.receive_message(
        QueueUrl=runtime.aws.dead_letter_queues[handler], MaxNumberOfMessages=10, VisibilityTimeout=0
    ).get("Messages", [])
    return [json.loads(message["Body"]) for message in messages]


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


def test_an_event_that_keeps_failing_is_redriven_to_the_dead_letter_queue_and_replays(runtime: LocalRuntime) -> None:
    key = "dead-letter-fail.mp3"
    handler = Handler.TRANSCRIBE_TRIGGER
    receives = _max_receive_count(runtime, handler)
    before = runtime.dead_letters(handler)
    _upload_bytes(runtime, key, b"ID3 probe")
    assert runtime.wait_until_idle(120)

    attempts = _events_for(runtime, handler, key)
    assert len(attempts) == receives, "one invocation per receive, until the queue's maxReceiveCount"
    counts = sorted(int(probe["event"]["Records"][0]["attributes"]["ApproximateReceiveCount"]) for probe in attempts)
    assert counts == list(range(1, receives + 1))
    assert runtime.dead_letters(handler) == before + 1
    # SQS moved the message itself: the dead-letter queue holds the S3 event exactly as S3 sent it.
    [body] = [item for item in _dead_lettered_bodies(runtime, handler) if key in json.dumps(item)]
    assert body == json.loads(attempts[0]["event"]["Records"][0]["body"])
    assert body["Records"][0]["eventSource"] == "aws:s3"

    [report] = runtime.replay_dead_letters(handler)
    assert runtime.wait_until_idle(120)
    assert len(report.replayed) == before + 1 and report.ok
    # The probe still fails: the replayed event goes round again and back to the dead-letter queue.
    assert len(_events_for(runtime, handler, key)) == 2 * receives
    assert runtime.dead_letters(handler) == before + 1


def test_a_batch_item_failure_is_received_again_then_dead_lettered(runtime: LocalRuntime) -> None:
    handler = Handler.TRANSCRIBE_TRIGGER
    receives = _max_receive_count(runtime, handler)
    before = runtime.dead_letters(handler)
    _upload_bytes(runtime, "partial-item.mp3", b"ID3 probe")
    _upload_bytes(runtime, "neighbour-item.wav", b"RIFF probe")
    assert runtime.wait_until_idle(120)

    failing = _events_for(runtime, handler, "partial-item.mp3")
    assert len(failing) == receives, "only the reported message returns to the queue, until maxReceiveCount"
    assert all(probe["event"]["Records"][0]["eventSource"] == "aws:sqs" for probe in failing)
    assert len(_events_for(runtime, handler, "neighbour-item.wav")) == 1, "the others are done"
    assert runtime.dead_letters(handler) == before + 1
    assert any("partial-item.mp3" in json.dumps(body) for body in _dead_lettered_bodies(runtime, handler))
    result = runtime.collect("partial-item.mp3")
    assert result.status == "error"
    assert result.error_origin == "local mode", "the handler reported the failure; it wrote no record"


def test_a_route_runs_up_to_its_max_concurrency(runtime: LocalRuntime) -> None:
    handler = Handler.TRANSCRIBE_TRIGGER
    limit = next(route.queue.max_concurrency for route in routes(runtime.config) if route.handler is handler)
    assert runtime.dispatcher is not None
    for index in range(3 * limit):
        _upload_bytes(runtime, f"slow/{index:02d}.mp3", b"ID3 probe")
        time.sleep(0.05)
    assert runtime.wait_until_idle(120)
    peak = runtime.dispatcher.concurrency.peak[handler]
    assert 2 <= peak <= limit
    assert 2 <= len(runtime.pools[handler].all()) <= limit
    for index in range(3 * limit):
        assert len(_events_for(runtime, handler, f"slow/{index:02d}.mp3")) == 1


def test_the_s3_event_arrives_in_an_sqs_batch_as_aws_sends_it(runtime: LocalRuntime) -> None:
    key = "notes/my idée+1.mp3"
    _upload_bytes(runtime, key, b"ID3 probe")
    assert runtime.wait_until_idle(30)

    deliveries = _events_for(runtime, Handler.TRANSCRIBE_TRIGGER, key)
    assert len(deliveries) == 1, "exactly one invocation per upload"
    [message] = deliveries[0]["event"]["Records"]
    for name in SQS_RECORD_FIELDS:
        assert name in message, name
    binding = runtime.aws.queue_for(Handler.TRANSCRIBE_TRIGGER)
    assert (message["eventSource"], message["eventSourceARN"]) == ("aws:sqs", binding.arn)
    assert message["attributes"]["ApproximateReceiveCount"] == "1"
    assert message["md5OfBody"] == hashlib.md5(message["body"].encode()).hexdigest()  # noqa: S324
    event = json.loads(message["body"])
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
    # The input bucket is versioned: the event names the version, the upload's identity.
    head = runtime.aws.client("s3").head_object(Bucket=runtime.bucket_names[BucketRole.INPUT], Key=key)
    assert obj["versionId"] == head["VersionId"]


def test_the_s3_test_event_reaches_the_handler_in_its_batch(runtime: LocalRuntime) -> None:
    tests = [
        json.loads(record["body"])
        for probe in _probes(runtime, Handler.TRANSCRIBE_TRIGGER)
        for record in probe["event"]["Records"]
        if "s3:TestEvent" in record["body"]
    ]
    assert tests and tests[0]["Event"] == "s3:TestEvent"


def test_each_handler_runs_with_exactly_its_environment(runtime: LocalRuntime) -> None:
    _upload_bytes(runtime, "env-check.wav", b"RIFF probe")
    assert runtime.wait_until_idle(30)
    [probe] = _events_for(runtime, Handler.TRANSCRIBE_TRIGGER, "env-check.wav")
    environ = probe["environ"]
    table = runtime.aws.ledger_table
    expected = handler_environment(Handler.TRANSCRIBE_TRIGGER, runtime.config, runtime.bucket_names, table)
    assert {name: environ.get(name) for name in expected} == expected
    other = handler_environment(Handler.INVOKE_SD, runtime.config, runtime.bucket_names, table)
    assert not (set(other) - set(expected)) & set(environ), "another handler's variables leaked in"
    # Local mode swaps endpoints, nothing else: moto for AWS, the local endpoint for SageMaker runtime.
    assert environ["AWS_ENDPOINT_URL"] == runtime.aws.endpoint_url
    assert environ["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"].startswith(runtime.endpoint.url + "/_caller/")
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
        for record in s3_records(probe["event"])
    ), "results never trigger anything"


def test_an_unhandled_error_is_received_again_until_the_redrive_then_reported(runtime: LocalRuntime) -> None:
    key = "please-fail.mp3"
    _upload_bytes(runtime, key, b"ID3 probe")
    assert runtime.wait_until_idle(120)
    attempts = _events_for(runtime, Handler.TRANSCRIBE_TRIGGER, key)
    assert len(attempts) == _max_receive_count(runtime, Handler.TRANSCRIBE_TRIGGER)
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
    assert runtime.wait_until_idle(180)
    result = runtime.collect("crash.mp3")
    assert result.error_origin == "handler"
    assert "Runtime.ExitError" in result.error["reason"]
    assert len(result.handler_errors) == 1
    # A fresh process (a new execution environment, as Lambda starts one) serves the next event.
    _upload_bytes(runtime, "the-next-one.mp3", b"ID3 probe")
    assert runtime.wait_until_idle(30)
    assert len(_events_for(runtime, Handler.TRANSCRIBE_TRIGGER, "the-next-one.mp3")) == 1


def test_transcribe_failed_keeps_asynchronous_retries_and_its_on_failure_record(runtime: LocalRuntime) -> None:
    handler = Handler.TRANSCRIBE_FAILED
    before = runtime.dead_letters(handler)
    # The probe fails for an event whose S3 records name a "fail" key: the async path's retries apply.
    event = {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "x"}, "object": {"key": "fail-async"}}}]}
    runtime.deliver(handler, event)
    assert runtime.wait_until_idle(60)
    assert runtime.dead_letters(handler) == before + 1
    records = [body for body in _dead_lettered_bodies(runtime, handler) if "fail-async" in json.dumps(body)]
    assert records[0]["requestContext"]["condition"] == "RetriesExhausted"
    assert records[0]["requestContext"]["approximateInvokeCount"] == 1 + runtime.max_retries
    assert records[0]["requestPayload"] == event
    runtime.replay_dead_letters(handler)
    assert runtime.wait_until_idle(60)
    assert runtime.dead_letters(handler) == before + 1, "replayed, failed again, recorded again"


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
    assert all(isinstance(item["start_time"], str) for item in document["results"]["items"])
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


def test_the_sweeper_runs_on_request_with_a_scheduled_event(runtime: LocalRuntime) -> None:
    before = len(_probes(runtime, Handler.SWEEPER))
    invocation = runtime.sweep()
    runtime.deliver(Handler.SWEEPER, {"detail-type": "Scheduled Event"})  # a replayed schedule: it just runs
    assert invocation.ok
    probes = _probes(runtime, Handler.SWEEPER)
    assert len(probes) == before + 2
    event = probes[-1]["event"]
    assert (event["source"], event["detail-type"], event["account"]) == (
        "aws.events",
        "Scheduled Event",
        runtime.aws.account,
    )
