"""The local runtime's event delivery, checked from outside: SQS batch events as AWS sends them, partial batch
failures, redrive to the dead-letter queue and replay, concurrency, handler environments, crashed handlers.

The handlers here are probes (tests/local/runtime_support.py) that record what they receive, so these
tests pin what the dispatcher delivers; test_e2e.py runs the real handlers.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from urllib.parse import unquote_plus, urlparse

import pytest

from infra.pipeline import BucketRole, Handler, handler_environment, routes
from local.aws import FAKE_CREDENTIALS
from local.dispatcher import LONG_POLL_S, RETURN_GRACE_S
from local.runtime import LocalRuntime
from tests.local.probe_support import (
    dead_lettered_bodies,
    events_for,
    max_receive_count,
    probe_runtime,
    probes,
    upload_bytes,
)
from tests.local.runtime_support import s3_records

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
    yield from probe_runtime(tmp_path_factory)


def test_an_event_that_keeps_failing_is_redriven_to_the_dead_letter_queue_and_replays(runtime: LocalRuntime) -> None:
    key = "dead-letter-fail.mp3"
    handler = Handler.TRANSCRIBE_TRIGGER
    receives = max_receive_count(runtime, handler)
    before = runtime.dead_letters(handler)
    upload_bytes(runtime, key, b"ID3 probe")
    assert runtime.wait_until_idle(120)

    attempts = events_for(runtime, handler, key)
    assert len(attempts) == receives, "one invocation per receive, until the queue's maxReceiveCount"
    counts = sorted(int(probe["event"]["Records"][0]["attributes"]["ApproximateReceiveCount"]) for probe in attempts)
    assert counts == list(range(1, receives + 1))
    assert runtime.dead_letters(handler) == before + 1
    # SQS moved the message itself: the dead-letter queue holds the S3 event exactly as S3 sent it.
    [body] = [item for item in dead_lettered_bodies(runtime, handler) if key in json.dumps(item)]
    assert body == json.loads(attempts[0]["event"]["Records"][0]["body"])
    assert body["Records"][0]["eventSource"] == "aws:s3"

    [report] = runtime.replay_dead_letters(handler)
    assert runtime.wait_until_idle(120)
    assert len(report.replayed) == before + 1 and report.ok
    # The probe still fails: the replayed event goes round again and back to the dead-letter queue.
    assert len(events_for(runtime, handler, key)) == 2 * receives
    assert runtime.dead_letters(handler) == before + 1


def test_a_batch_item_failure_is_received_again_then_dead_lettered(runtime: LocalRuntime) -> None:
    handler = Handler.TRANSCRIBE_TRIGGER
    receives = max_receive_count(runtime, handler)
    before = runtime.dead_letters(handler)
    upload_bytes(runtime, "partial-item.mp3", b"ID3 probe")
    upload_bytes(runtime, "neighbour-item.wav", b"RIFF probe")
    assert runtime.wait_until_idle(120)

    failing = events_for(runtime, handler, "partial-item.mp3")
    assert len(failing) == receives, "only the reported message returns to the queue, until maxReceiveCount"
    assert all(probe["event"]["Records"][0]["eventSource"] == "aws:sqs" for probe in failing)
    assert len(events_for(runtime, handler, "neighbour-item.wav")) == 1, "the others are done"
    assert runtime.dead_letters(handler) == before + 1
    assert any("partial-item.mp3" in json.dumps(body) for body in dead_lettered_bodies(runtime, handler))
    result = runtime.collect("partial-item.mp3")
    assert result.status == "error"
    assert result.error_origin == "local mode", "the handler reported the failure; it wrote no record"


def test_a_route_runs_up_to_its_max_concurrency(runtime: LocalRuntime) -> None:
    handler = Handler.TRANSCRIBE_TRIGGER
    limit = next(route.queue.max_concurrency for route in routes(runtime.config) if route.handler is handler)
    assert runtime.dispatcher is not None
    for index in range(3 * limit):
        upload_bytes(runtime, f"slow/{index:02d}.mp3", b"ID3 probe")
        time.sleep(0.05)
    assert runtime.wait_until_idle(120)
    peak = runtime.dispatcher.concurrency.peak[handler]
    assert 2 <= peak <= limit
    assert 2 <= len(runtime.pools[handler].all()) <= limit
    for index in range(3 * limit):
        assert len(events_for(runtime, handler, f"slow/{index:02d}.mp3")) == 1


def test_the_s3_event_arrives_in_an_sqs_batch_as_aws_sends_it(runtime: LocalRuntime) -> None:
    key = "notes/my idée+1.mp3"
    upload_bytes(runtime, key, b"ID3 probe")
    assert runtime.wait_until_idle(30)

    deliveries = events_for(runtime, Handler.TRANSCRIBE_TRIGGER, key)
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
        for probe in probes(runtime, Handler.TRANSCRIBE_TRIGGER)
        for record in probe["event"]["Records"]
        if "s3:TestEvent" in record["body"]
    ]
    assert tests and tests[0]["Event"] == "s3:TestEvent"


def test_each_handler_runs_with_exactly_its_environment(runtime: LocalRuntime) -> None:
    upload_bytes(runtime, "env-check.wav", b"RIFF probe")
    assert runtime.wait_until_idle(30)
    [probe] = events_for(runtime, Handler.TRANSCRIBE_TRIGGER, "env-check.wav")
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
        upload_bytes(runtime, key, b"ID3 probe")
    assert runtime.wait_until_idle(30)
    for key in ("SHOUTING.MP3", "Mixed.Mp3", "notes.txt"):
        assert len(events_for(runtime, Handler.TRANSCRIBE_TRIGGER, key)) == 1, key
    output = runtime.bucket_names[BucketRole.OUTPUT]
    upload_bytes(runtime, "ignored.mp3", b"not the input bucket")
    runtime.aws.client("s3").put_object(Bucket=output, Key="images/x.mp3.json", Body=b"{}")
    assert runtime.wait_until_idle(30)
    assert not any(
        unquote_plus(record["s3"]["object"]["key"]) == "images/x.mp3.json"
        for handler in Handler
        for probe in probes(runtime, handler)
        for record in s3_records(probe["event"])
    ), "results never trigger anything"


def test_an_unhandled_error_is_received_again_until_the_redrive_then_reported(runtime: LocalRuntime) -> None:
    key = "please-fail.mp3"
    upload_bytes(runtime, key, b"ID3 probe")
    assert runtime.wait_until_idle(120)
    attempts = events_for(runtime, Handler.TRANSCRIBE_TRIGGER, key)
    assert len(attempts) == max_receive_count(runtime, Handler.TRANSCRIBE_TRIGGER)
    result = runtime.collect(key)
    assert result.status == "error"
    assert result.error_origin == "handler"
    assert "probe asked to fail" in result.error["reason"]
    assert result.error["error"] == "handler-error"
    # The run goes on: the function still answers the next event.
    upload_bytes(runtime, "next-one.mp3", b"ID3 probe")
    assert runtime.wait_until_idle(30)
    assert len(events_for(runtime, Handler.TRANSCRIBE_TRIGGER, "next-one.mp3")) == 1


def test_a_crashed_handler_process_is_replaced(runtime: LocalRuntime) -> None:
    upload_bytes(runtime, "crash.mp3", b"ID3 probe")
    assert runtime.wait_until_idle(180)
    result = runtime.collect("crash.mp3")
    assert result.error_origin == "handler"
    assert "Runtime.ExitError" in result.error["reason"]
    assert len(result.handler_errors) == 1
    # A fresh process (a new execution environment, as Lambda starts one) serves the next event.
    upload_bytes(runtime, "the-next-one.mp3", b"ID3 probe")
    assert runtime.wait_until_idle(30)
    assert len(events_for(runtime, Handler.TRANSCRIBE_TRIGGER, "the-next-one.mp3")) == 1


def test_transcribe_failed_keeps_asynchronous_retries_and_its_on_failure_record(runtime: LocalRuntime) -> None:
    handler = Handler.TRANSCRIBE_FAILED
    before = runtime.dead_letters(handler)
    # The probe fails for an event whose S3 records name a "fail" key: the async path's retries apply.
    event = {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "x"}, "object": {"key": "fail-async"}}}]}
    runtime.deliver(handler, event)
    assert runtime.wait_until_idle(60)
    assert runtime.dead_letters(handler) == before + 1
    records = [body for body in dead_lettered_bodies(runtime, handler) if "fail-async" in json.dumps(body)]
    assert records[0]["requestContext"]["condition"] == "RetriesExhausted"
    assert records[0]["requestContext"]["approximateInvokeCount"] == 1 + runtime.max_retries
    assert records[0]["requestPayload"] == event
    runtime.replay_dead_letters(handler)
    assert runtime.wait_until_idle(60)
    assert runtime.dead_letters(handler) == before + 1, "replayed, failed again, recorded again"


def test_transcribes_write_probe_object_reaches_no_handler(runtime: LocalRuntime) -> None:
    # Amazon Transcribe writes this object under the output prefix to test its access; it fires ObjectCreated.
    # The transcript route's `.json` filter (infra/pipeline.py, shared with InfraStack) must drop it.
    s3 = runtime.aws.client("s3")
    bucket = runtime.bucket_names[BucketRole.TRANSCRIPTS]
    probe, control = "transcripts/.write_access_check_file.temp", "transcripts/probe-filter-control.json"
    s3.put_object(Bucket=bucket, Key=probe, Body=b"")
    s3.put_object(Bucket=bucket, Key=control, Body=b"{}")
    assert runtime.wait_until_idle(60)
    assert events_for(runtime, Handler.INVOKE_SD, probe) == []
    assert events_for(runtime, Handler.INVOKE_SD, control), "the same bucket and prefix still deliver transcripts"


def test_a_message_returned_for_a_retry_keeps_the_pipeline_busy_through_its_retry_delay(runtime: LocalRuntime) -> None:
    # The failure this guards against: `local run` and the tests saw "idle" while a failed message waited out
    # its retry delay, so they stopped before its next receive (and before its dead-letter queue).
    assert runtime.dispatcher is not None and runtime.wait_until_idle(120)
    handler = Handler.TRANSCRIBE_TRIGGER
    binding = next(binding for binding in runtime.aws.queues if binding.handler == handler)
    sqs = runtime.aws.client("sqs")
    runtime.dispatcher.hold(handler)
    time.sleep(LONG_POLL_S + 0.5)  # a poll already waiting when the hold began has ended: the message is ours
    try:
        sqs.send_message(QueueUrl=binding.url, MessageBody=json.dumps({"probe": "retry"}))
        [message] = sqs.receive_message(QueueUrl=binding.url, WaitTimeSeconds=5)["Messages"]
        window = runtime.dispatcher.retry_delay_s + RETURN_GRACE_S  # by then a waiting poll has taken it again
        started = time.monotonic()
        runtime.dispatcher._return(sqs, binding, [message])
        # Take the queue's view out of the picture: only the dispatcher's own count can keep it busy now.
        sqs.delete_message(QueueUrl=binding.url, ReceiptHandle=message["ReceiptHandle"])
        assert not runtime.wait_until_idle(window / 2), "idle inside the retry delay"
        assert runtime.wait_until_idle(10)
        assert time.monotonic() - started >= window
    finally:
        runtime.dispatcher.release(handler)
