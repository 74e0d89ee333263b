"""One upload, one result, through the upload ledger: local mode runs the same ledger (moto DynamoDB), queues
and sweeper as AWS, with the real handlers.

Each test checks what a user would see (the output bucket) and what the ledger says about the upload.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.pipeline import LEDGER_PENDING_INDEX, BucketRole, Handler
from local.runtime import LocalRuntime, load_config, local_config, tiny_model
from tests.local.runtime_support import AUDIO

pytestmark = pytest.mark.slow

SPEECH = AUDIO / "red-apple.mp3"
OTHER = AUDIO / "castle at sunset.mp3"
STUCK_AFTER_MINUTES = 15


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """The whole local pipeline with the real handlers; the sweeper runs only when a test calls `sweep()`."""
    model = tiny_model()
    config = replace(local_config(load_config(), model, size=64, steps=2), stuck_after_minutes=STUCK_AFTER_MINUTES)
    runtime = LocalRuntime(config, model, log_dir=tmp_path_factory.mktemp("logs"), sweep_interval_s=None)
    runtime.start()
    yield runtime
    runtime.stop()


def _text(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name)
    return value.get("S") if isinstance(value, dict) else None


def _wait_for(condition: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _output_keys(runtime: LocalRuntime, key: str) -> set[str]:
    s3 = runtime.aws.client("s3")
    bucket = runtime.bucket_names[BucketRole.OUTPUT]
    return {
        item["Key"]
        for prefix in (f"images/{key}", f"errors/{key}")
        for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    }


def test_the_ledger_table_is_infra_stacks_and_every_upload_leaves_its_item(runtime: LocalRuntime) -> None:
    table = runtime.aws.client("dynamodb").describe_table(TableName=runtime.aws.ledger_table)["Table"]
    assert [index["IndexName"] for index in table["GlobalSecondaryIndexes"]] == [LEDGER_PENDING_INDEX]
    for handler in Handler:
        assert runtime.function_environment(handler)["LEDGER_TABLE"] == runtime.aws.ledger_table

    good = runtime.upload(SPEECH, key="ledger/good.mp3")
    bad = runtime.upload(AUDIO / "not-audio.mp3", key="ledger/bad.mp3")
    assert runtime.wait_until_idle(timeout_s=300)

    item = runtime.ledger_item("ledger/good.mp3") or {}
    assert _text(item, "stage") == "done"
    assert _text(item, "upload_id") == good.version_id
    assert item["result"]["M"] == {"kind": {"S": "image"}, "key": {"S": "images/ledger/good.mp3.png"}}
    assert "pending" not in item, "a finished upload leaves the sweeper's index"
    item = runtime.ledger_item("ledger/bad.mp3") or {}
    assert _text(item, "stage") == "failed"
    assert _text(item, "upload_id") == bad.version_id
    assert item["result"]["M"]["key"] == {"S": "errors/ledger/bad.mp3.json"}
    assert item["result"]["M"]["code"] == {"S": "not-audio"}


def test_a_same_key_race_ends_with_the_last_uploads_result(runtime: LocalRuntime) -> None:
    key = "race/a-b-a.mp3"
    first = runtime.upload(SPEECH, key=key)
    second = runtime.upload(OTHER, key=key)
    third = runtime.upload(SPEECH, key=key)  # A's bytes again: a new upload, a new version
    assert len({first.version_id, second.version_id, third.version_id}) == 3
    assert runtime.wait_until_idle(timeout_s=300)

    result = runtime.collect(key)
    assert result.status == "image", result.error
    assert (result.metadata or {})["source"]["upload_id"] == third.version_id
    assert "apple" in (result.transcript or "")
    assert _output_keys(runtime, key) == {f"images/{key}{suffix}" for suffix in (".png", ".json", ".html")}
    assert _text(runtime.ledger_item(key) or {}, "upload_id") == third.version_id
    # No upload was generated twice; superseded uploads may have been skipped before their generation.
    assert all(count == 1 for count in runtime.generations.values())


def test_an_upload_deleted_before_its_transcription_is_an_upload_deleted_record(runtime: LocalRuntime) -> None:
    key = "deleted/early.mp3"
    s3 = runtime.aws.client("s3")
    with runtime.holding(Handler.TRANSCRIBE_TRIGGER):
        trace = runtime.upload(SPEECH, key=key)
        s3.delete_object(Bucket=runtime.bucket_names[BucketRole.INPUT], Key=key, VersionId=trace.version_id)
    assert runtime.wait_until_idle(timeout_s=120)

    result = runtime.collect(key)
    assert result.status == "error" and result.error_origin == "output bucket", result.error
    error = result.error or {}
    assert (error["stage"], error["error"]) == ("validate", "upload-deleted")
    assert error["request_id"], "the record names the invocation that wrote it"
    assert result.job is None, "no Transcribe job for a deleted recording"


def test_the_sweeper_turns_an_upload_whose_transcript_never_arrives_into_a_stuck_record(
    runtime: LocalRuntime,
) -> None:
    key = "stuck/lost transcript.mp3"
    sqs = runtime.aws.client("sqs")
    queue = runtime.aws.queue_for(Handler.INVOKE_SD).url
    dynamodb = runtime.aws.client("dynamodb")
    with runtime.holding(Handler.INVOKE_SD):
        runtime.upload(SPEECH, key=key)
        _wait_for(lambda: runtime.engine.record_for_source(runtime.bucket_names[BucketRole.INPUT], key) is not None)
        _wait_for(
            lambda: (
                int(
                    sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])[
                        "Attributes"
                    ]["ApproximateNumberOfMessages"]
                )
                >= 1
            )
        )
        # The transcript's notification is lost: nothing will ever move this upload on.
        sqs.purge_queue(QueueUrl=queue)
    assert runtime.wait_until_idle(timeout_s=120)
    assert _text(runtime.ledger_item(key) or {}, "stage") == "transcribing"

    runtime.sweep()
    assert _output_keys(runtime, key) == set(), "not stuck yet: the upload moved within the deadline"

    # Make the upload's last move older than the deadline, as time passing would.
    past = (datetime.now(UTC) - timedelta(minutes=STUCK_AFTER_MINUTES + 1)).isoformat(timespec="milliseconds")
    dynamodb.update_item(
        TableName=runtime.aws.ledger_table,
        Key={"upload_key": {"S": key}},
        UpdateExpression="SET updated_at = :t",
        ExpressionAttributeValues={":t": {"S": past.replace("+00:00", "Z")}},
    )
    invocation = runtime.sweep()
    assert invocation.ok, invocation.error_summary
    assert [item["outcome"] for item in invocation.result["results"] if item["key"] == key] == ["stuck"]

    result = runtime.collect(key)
    assert result.status == "error" and result.error_origin == "output bucket"
    error = result.error or {}
    assert (error["stage"], error["error"]) == ("transcribe", "stuck")
    assert str(STUCK_AFTER_MINUTES) in error["reason"]
    assert _text(runtime.ledger_item(key) or {}, "stage") == "failed"
    # A second sweep finds nothing: the upload has its result.
    again = runtime.sweep()
    assert [item for item in again.result["results"] if item["key"] == key] == []
