"""One upload, one result: `Results` writes a result only for the current upload, once, under the key's lock."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from pipeline_common.error_records import ImageSetNotRemovedError, ResultStore, utc_now
from pipeline_common.ledger import DynamoLedger, Entry, Upload, normalise_sequencer
from pipeline_common.metrics import Metrics
from pipeline_common.results import ImageSet, LedgerBusyError, Results
from tests.lambdas.support import INPUT_BUCKET, LEDGER_TABLE, OUTPUT_BUCKET, Aws, FailingS3

KEY = "notes/my idea.mp3"
IMAGES = [f"images/{KEY}.html", f"images/{KEY}.json", f"images/{KEY}.png"]
ERROR_KEY = f"errors/{KEY}.json"
IMAGE_SET = ImageSet(png=b"\x89PNG new", html="<p>new</p>", metadata=b'{"status": "ok"}')


def store(s3: Any) -> ResultStore:
    return ResultStore(s3, INPUT_BUCKET, OUTPUT_BUCKET, "images/", "errors/")


def write(s3: Any, source_key: str = KEY, **overrides: Any) -> str:
    arguments = {"stage": "validate", "error": "not-audio", "reason": "r", "action": "a"} | overrides
    return store(s3).write_error(source_key, **arguments)


def put_images(aws: Aws, source_key: str = KEY) -> None:
    for suffix in ("png", "json", "html"):
        aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=f"images/{source_key}.{suffix}", Body=b"old")


def claim(aws: Aws, key: str = KEY) -> Entry:
    """A new upload under `key`, now the key's current upload in the ledger."""
    uploaded = aws.upload(key, b"ID3 audio")
    upload = Upload(key, uploaded.version_id, normalise_sequencer(uploaded.sequencer), uploaded.etag)
    return DynamoLedger(aws.dynamodb, LEDGER_TABLE).claim(upload, utc_now()).entry


class Clock:
    """A settable clock whose sleep moves it on, so waiting for a lock takes no real time."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def results(aws: Aws, s3: Any = None, clock: Clock | None = None) -> Results:
    clock = clock or Clock()
    return Results(
        DynamoLedger(aws.dynamodb, LEDGER_TABLE),
        store(s3 or aws.s3),
        function="invoke_sd",
        metrics=Metrics("invoke_sd"),
        request_id="req-1",
        remaining_s=lambda: 60.0,
        clock=clock,
        sleep=clock.sleep,
    )


def metric_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The EMF lines printed since the last call."""
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]


def commit_error(committer: Results, entry: Entry, **overrides: Any) -> Any:
    arguments = {"stage": "transcript", "code": "no-speech", "reason": "nothing heard", "action": "record again"}
    return committer.commit_error(entry, **(arguments | overrides))


def test_error_record_becomes_the_current_upload_s_result(aws: Aws, capsys: pytest.CaptureFixture[str]) -> None:
    put_images(aws)  # an earlier upload's images
    entry = claim(aws)
    committer = results(aws)

    committed = commit_error(committer, entry)

    assert (committed.outcome, committed.key) == ("committed", ERROR_KEY)
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["error"], record["reason"], record["request_id"]) == ("no-speech", "nothing heard", "req-1")
    after = committer.ledger.get(KEY)
    assert after is not None and after.final and after.stage == "failed"
    assert after.result == {"kind": "error", "key": ERROR_KEY, "code": "no-speech", "stage": "transcript"}
    assert after.writer_token is None  # unlocked
    (line,) = metric_lines(capsys)
    assert (line["Code"], line["ErrorRecords"]) == ("no-speech", [1.0])


def test_image_set_becomes_the_result_and_removes_the_error_record(aws: Aws) -> None:
    entry = claim(aws)
    committer = results(aws)
    assert committer.record_retry(entry, stage="generate", failure=TimeoutError("slow")) == ERROR_KEY

    committed = committer.commit_images(entry, IMAGE_SET)

    assert (committed.outcome, committed.key) == ("committed", f"images/{KEY}.png")
    assert aws.keys(OUTPUT_BUCKET) == IMAGES
    assert aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=f"images/{KEY}.png")["Body"].read() == IMAGE_SET.png
    after = committer.ledger.get(KEY)
    assert after is not None and after.stage == "done" and after.internal_error is None


def test_an_upload_with_its_result_is_a_duplicate(aws: Aws) -> None:
    entry = claim(aws)
    committer = results(aws)
    committer.commit_images(entry, IMAGE_SET)

    again = commit_error(committer, entry)

    assert (again.outcome, again.key) == ("duplicate", f"images/{KEY}.png")
    assert aws.keys(OUTPUT_BUCKET) == IMAGES  # the result stands


def test_an_upload_that_is_no_longer_current_writes_nothing(aws: Aws) -> None:
    old = claim(aws)
    claim(aws)  # a newer upload under the same key
    put_images(aws)
    committer = results(aws)

    assert commit_error(committer, old).outcome == "superseded"
    assert committer.commit_images(old, IMAGE_SET).outcome == "superseded"
    assert committer.record_retry(old, stage="generate") is None
    assert aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=f"images/{KEY}.png")["Body"].read() == b"old"
    assert aws.keys(OUTPUT_BUCKET) == IMAGES


class NewerUploadMidWrite:
    """An S3 client under which a newer upload of the key is claimed as soon as the first object is written."""

    def __init__(self, aws: Aws) -> None:
        self.aws = aws
        self.newer: Entry | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.aws.s3, name)

    def put_object(self, **params: Any) -> Any:
        response = self.aws.s3.put_object(**params)
        if self.newer is None:
            self.newer = claim(self.aws)
        return response


@pytest.mark.parametrize(
    "commit",
    [lambda c, e: commit_error(c, e), lambda c, e: c.commit_images(e, IMAGE_SET)],
    ids=["error record", "image set"],
)
def test_result_of_an_upload_superseded_while_it_is_written_is_undone(
    aws: Aws, commit: Callable[[Results, Entry], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    entry = claim(aws)
    s3 = NewerUploadMidWrite(aws)
    committer = results(aws, s3=s3)

    assert commit(committer, entry).outcome == "superseded"

    # Nothing of the older upload's result is left for the newer one to compete with, and the lock is free.
    assert aws.keys(OUTPUT_BUCKET) == []
    current = committer.ledger.get(KEY)
    assert current is not None and s3.newer is not None
    assert (current.upload_id, current.stage, current.writer_token) == (s3.newer.upload_id, "received", None)
    assert metric_lines(capsys) == []  # no error record counted
    assert commit_error(committer, current).outcome == "committed"


def test_a_held_lock_is_waited_for_then_the_event_is_retried(aws: Aws) -> None:
    entry = claim(aws)
    clock = Clock()
    committer = results(aws, clock=clock)
    committer.ledger.acquire_writer(KEY, entry.upload_id, token="other", until=clock.now + 600, clock=clock.now)

    with pytest.raises(LedgerBusyError, match="being written by another invocation"):
        commit_error(committer, entry)

    assert 5.0 <= sum(clock.slept) <= 7.0
    assert aws.keys(OUTPUT_BUCKET) == []


def test_an_expired_lock_is_taken_over(aws: Aws) -> None:
    entry = claim(aws)
    clock = Clock()
    committer = results(aws, clock=clock)
    # A writer that crashed: its lock ran out a second ago.
    committer.ledger.acquire_writer(KEY, entry.upload_id, token="crashed", until=clock.now - 1, clock=clock.now - 60)

    assert commit_error(committer, entry).outcome == "committed"
    assert clock.slept == []


def test_a_failed_write_releases_the_lock_and_raises(aws: Aws) -> None:
    entry = claim(aws)
    committer = results(aws, s3=FailingS3(aws.s3, "put_object", prefix="images/"))

    with pytest.raises(Exception, match="AccessDenied"):
        committer.commit_images(entry, IMAGE_SET)

    current = committer.ledger.get(KEY)
    assert current is not None and current.writer_token is None and not current.final
    healthy = results(aws)
    assert healthy.commit_images(entry, IMAGE_SET).outcome == "committed"


def test_retry_record_is_not_final_and_says_what_happened_plainly(
    aws: Aws, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = claim(aws)
    put_images(aws)
    committer = results(aws)

    key = committer.record_retry(entry, stage="generate", failure=TimeoutError("internal detail " * 10))

    assert key == ERROR_KEY
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY]
    record = aws.read_json(OUTPUT_BUCKET, ERROR_KEY)
    assert (record["stage"], record["error"]) == ("generate", "internal-error")
    assert record["reason"] == "an unexpected TimeoutError interrupted invoke_sd; it is retried automatically"
    assert "invoke_sd's dead-letter queue" in record["action"] and "make replay" in record["action"]
    assert record["details"] == {"error_type": "TimeoutError", "retried": True}
    # The exception itself goes to the log, for the operator.
    assert "internal detail" in caplog.text
    after = committer.ledger.get(KEY)
    assert after is not None and after.stage == entry.stage and not after.final
    assert after.internal_error == {"key": ERROR_KEY, "code": "internal-error", "function": "invoke_sd",
                                    "request_id": "req-1"}  # fmt: skip
    assert after.writer_token is None
    # A retry counts as an outcome, and its record as an error record.
    assert [(line.get("Outcome"), line.get("Code")) for line in metric_lines(capsys)] == [
        ("internal-error", None),
        (None, "internal-error"),
    ]


@pytest.mark.parametrize("code", ["ThrottlingException", "ProvisionedThroughputExceededException", "SlowDown"])
def test_throttling_is_retried_without_a_record(aws: Aws, code: str) -> None:
    entry = claim(aws)
    committer = results(aws)
    throttled = ClientError({"Error": {"Code": code, "Message": "slow down"}}, "PutObject")

    assert committer.record_retry(entry, stage="generate", failure=throttled) is None
    assert committer.record_retry(entry, stage="generate", failure=LedgerBusyError("busy")) is None

    # Over in minutes: the queue retries without telling the user anything went wrong.
    assert aws.keys(OUTPUT_BUCKET) == []


def test_retry_record_never_replaces_a_result(aws: Aws) -> None:
    entry = claim(aws)
    committer = results(aws)
    committer.commit_images(entry, IMAGE_SET)

    assert committer.record_retry(entry, stage="generate", failure=RuntimeError("late")) is None
    assert aws.keys(OUTPUT_BUCKET) == IMAGES


def test_retry_record_is_best_effort(aws: Aws, caplog: pytest.LogCaptureFixture) -> None:
    entry = claim(aws)
    committer = results(aws, s3=FailingS3(aws.s3, "put_object"))

    assert committer.record_retry(entry, stage="generate", failure=RuntimeError("boom")) is None

    assert aws.keys(OUTPUT_BUCKET) == []
    assert any(r.getMessage() == "retry record could not be written" for r in caplog.records)
    current = committer.ledger.get(KEY)
    assert current is not None and current.writer_token is None


def test_error_record_replaces_the_image_set_deleting_first(aws: Aws) -> None:
    put_images(aws)
    aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key="images/notes/my idea.mp3.extra.png", Body=b"another upload's")
    calls: list[tuple[str, dict[str, str]]] = []

    def seen(event_name: str, request: Any, **_: Any) -> None:
        calls.append((event_name.rsplit(".", 1)[-1], dict(request.headers)))

    aws.s3.meta.events.register("before-send.s3", seen, unique_id="order")
    try:
        key = write(aws.s3)
    finally:
        aws.s3.meta.events.unregister("before-send.s3", unique_id="order")

    assert key == ERROR_KEY
    assert aws.keys(OUTPUT_BUCKET) == [ERROR_KEY, "images/notes/my idea.mp3.extra.png"]
    assert [name for name, _ in calls] == ["DeleteObjects", "PutObject"]
    # S3 refuses a DeleteObjects request without an integrity header; botocore must have added one.
    headers = {name.lower() for name in calls[0][1]}
    assert "content-md5" in headers or any(name.startswith("x-amz-checksum-") for name in headers)


class PartlyRefusingDeletes:
    """DeleteObjects that reports one key as not deleted (S3 answers 200 with an Errors list)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def delete_objects(self, **params: Any) -> dict[str, Any]:
        first, *rest = params["Delete"]["Objects"]
        self.client.delete_objects(Bucket=params["Bucket"], Delete={"Objects": rest, "Quiet": True})
        return {"Errors": [{"Key": first["Key"], "Code": "AccessDenied", "Message": "Access Denied"}]}


def test_image_set_that_cannot_be_removed_stops_the_record(aws: Aws) -> None:
    put_images(aws)

    with pytest.raises(ImageSetNotRemovedError, match=r"images/notes/my idea\.mp3\.png: AccessDenied"):
        write(PartlyRefusingDeletes(aws.s3))

    assert aws.keys(OUTPUT_BUCKET) == [f"images/{KEY}.png"]


def test_key_too_long_for_images_needs_no_delete(aws: Aws) -> None:
    key = "n" * 1016 + ".mp3"  # no images/<key>.html fits in S3's 1024 bytes, so none can exist
    failing = FailingS3(aws.s3, "delete_objects")

    record_key = write(failing, source_key=key)

    assert failing.refused == []
    assert aws.keys(OUTPUT_BUCKET) == [record_key]


def test_remove_error_record_is_idempotent(aws: Aws) -> None:
    write(aws.s3)
    store(aws.s3).remove_error_record(KEY)
    store(aws.s3).remove_error_record(KEY)
    assert aws.keys(OUTPUT_BUCKET) == []
