"""One upload, one final result: error records replace image sets, and events about older objects are spotted."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline_common.error_records import ImageSetNotRemovedError, ResultStore
from pipeline_common.keys import job_name
from pipeline_common.uploads import current_etag, staleness
from tests.lambdas.support import INPUT_BUCKET, JOB_PREFIX, OUTPUT_BUCKET, Aws, FailingS3

KEY = "notes/my idea.mp3"
IMAGES = [f"images/{KEY}.html", f"images/{KEY}.json", f"images/{KEY}.png"]


def store(s3: Any) -> ResultStore:
    return ResultStore(s3, INPUT_BUCKET, OUTPUT_BUCKET, "images/", "errors/")


def write(s3: Any, source_key: str = KEY, **overrides: Any) -> str:
    arguments = {"stage": "validate", "error": "not-audio", "reason": "r", "action": "a"} | overrides
    return store(s3).write_error(source_key, **arguments)


def put_images(aws: Aws, source_key: str = KEY) -> None:
    for suffix in ("png", "json", "html"):
        aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=f"images/{source_key}.{suffix}", Body=b"old")


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

    assert key == f"errors/{KEY}.json"
    assert aws.keys(OUTPUT_BUCKET) == ["errors/notes/my idea.mp3.json", "images/notes/my idea.mp3.extra.png"]
    assert [name for name, _ in calls] == ["DeleteObjects", "PutObject"]
    # S3 refuses a DeleteObjects request without an integrity header; botocore must have added one.
    headers = {name.lower() for name in calls[0][1]}
    assert "content-md5" in headers or any(name.startswith("x-amz-checksum-") for name in headers)


def test_error_record_without_images_to_remove(aws: Aws) -> None:
    write(aws.s3)
    assert aws.keys(OUTPUT_BUCKET) == [f"errors/{KEY}.json"]


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


def internal(s3: Any, failure: BaseException) -> str | None:
    return store(s3).record_internal_error(
        KEY,
        stage="generate",
        failure=failure,
        function="invoke_sd",
        details={"job_name": "s2i-x"},
    )


def test_internal_error_record(aws: Aws) -> None:
    put_images(aws)

    key = internal(aws.s3, TimeoutError("x" * 5000))

    assert aws.keys(OUTPUT_BUCKET) == [key]
    record = aws.read_json(OUTPUT_BUCKET, key)
    assert (record["stage"], record["error"]) == ("generate", "internal-error")
    assert record["reason"].startswith("TimeoutError: xxx") and len(record["reason"]) == 1000
    assert "invoke_sd retries automatically" in record["action"]
    assert "invoke_sd's dead-letter queue" in record["action"] and "make replay" in record["action"]
    assert record["details"] == {"error_type": "TimeoutError", "job_name": "s2i-x"}


def test_internal_error_record_is_best_effort(aws: Aws, caplog: pytest.LogCaptureFixture) -> None:
    assert internal(FailingS3(aws.s3, "put_object"), RuntimeError("boom")) is None
    assert aws.keys(OUTPUT_BUCKET) == []
    (logged,) = [r for r in caplog.records if r.getMessage() == "internal-error record could not be written"]
    assert (logged.key, logged.original_error_type, logged.error_type) == (KEY, "RuntimeError", "ClientError")


@pytest.mark.parametrize("key", [KEY, "notes/C++ talk.wav", "notes/café 日本語.flac", "a/b/c/d/e/f/take 3.ogg"])
def test_current_etag_is_for_the_exact_key(aws: Aws, key: str) -> None:
    sibling = aws.put_upload(key + ".bak", b"another object whose key starts with this one")
    assert current_etag(aws.s3, INPUT_BUCKET, key) is None
    etag = aws.put_upload(key, b"audio")
    assert etag != sibling
    assert current_etag(aws.s3, INPUT_BUCKET, key) == etag  # unquoted, as events carry it


def test_staleness_tells_gone_superseded_and_current_apart(aws: Aws) -> None:
    def check(job: str | None) -> str | None:
        return staleness(aws.s3, bucket=INPUT_BUCKET, key=KEY, job=job, prefix=JOB_PREFIX)

    assert check(None) == "gone"
    old = aws.put_upload(KEY, b"first take")
    new = aws.put_upload(KEY, b"second take")
    assert check(job_name(KEY, new, JOB_PREFIX)) is None
    assert check(job_name(KEY, old, JOB_PREFIX)) == "superseded"
    assert check(None) is None  # without a job name only `gone` can be told
    aws.s3.delete_object(Bucket=INPUT_BUCKET, Key=KEY)
    assert check(job_name(KEY, new, JOB_PREFIX)) == "gone"
