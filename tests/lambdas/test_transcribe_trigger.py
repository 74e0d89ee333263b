"""transcribe_trigger: each upload (an object version) becomes one Transcribe job; bad uploads become error records."""

from __future__ import annotations

import json
import random
import re
from typing import Any
from urllib.parse import unquote_plus

import pytest
from botocore.exceptions import ClientError

from pipeline_common.batch import RecordsFailedError
from pipeline_common.keys import job_name, source_key_from_transcript_key
from pipeline_common.ledger import DynamoLedger
from tests.lambdas.support import (
    INPUT_BUCKET,
    JOB_PREFIX,
    LEDGER_TABLE,
    OUTPUT_BUCKET,
    TRANSCRIPT_BUCKET,
    Aws,
    FailingS3,
    Uploaded,
    audio_bytes,
    load_event,
    s3_event,
    sqs_batch,
)

JOB_NAME_RE = re.compile(r"^[0-9a-zA-Z._-]{1,200}$")
KEY = "notes/my idea.mp3"
# What IAM really says when a role may not read an object: the role's ARN and the account id.
DENIED = (
    "User: arn:aws:sts::123456789012:assumed-role/InfraStack-TriggerRole-1A2B/transcribe-trigger is not "
    "authorized to perform: s3:GetObject because no identity-based policy allows the s3:GetObject action"
)


def upload(aws: Aws, key: str, body: bytes) -> tuple[Uploaded, dict[str, Any]]:
    """Upload `body` to the input bucket; the upload and its S3 event."""
    uploaded = aws.upload(key, body)
    return uploaded, s3_event(INPUT_BUCKET, uploaded)


def with_real_uploads(aws: Aws, event: dict[str, Any], *bodies: bytes) -> dict[str, Any]:
    """Upload each record's key of a committed event and give the record that upload's ETag, version and order."""
    for raw, body in zip(event["Records"], bodies, strict=True):
        obj = raw["s3"]["object"]
        uploaded = aws.upload(unquote_plus(obj["key"]), body)
        obj.update(size=uploaded.size, eTag=uploaded.etag, versionId=uploaded.version_id, sequencer=uploaded.sequencer)
    return event


def error_record(aws: Aws, source_key: str) -> dict[str, Any]:
    return aws.read_json(OUTPUT_BUCKET, f"errors/{source_key}.json")


def put_image_set(aws: Aws, source_key: str) -> list[str]:
    """An image set left by an earlier upload under `source_key`; returns its keys, sorted."""
    keys = sorted(f"images/{source_key}.{suffix}" for suffix in ("png", "json", "html"))
    for key in keys:
        aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=key, Body=b"earlier result")
    return keys


def ledger(aws: Aws) -> DynamoLedger:
    return DynamoLedger(aws.dynamodb, LEDGER_TABLE)


def outcomes(result: dict[str, Any]) -> list[str]:
    return [item["outcome"] for item in result["results"]]


@pytest.mark.parametrize(
    ("event_file", "key", "container"),
    [
        ("s3_put_simple.json", "recordings/hello.mp3", "mp3"),
        ("s3_put_space.json", "notes/my idea.mp3", "mp3"),
        ("s3_put_plus.json", "notes/C++ talk.wav", "wav"),
        ("s3_put_unicode.json", "notes/café 日本語.flac", "flac"),
        ("s3_put_deep_prefix.json", "users/42/2024/05/01/session-7/take 3.ogg", "ogg"),
    ],
)
def test_upload_starts_one_job_named_after_its_version(
    trigger: Any, aws: Aws, lambda_context: Any, event_file: str, key: str, container: str
) -> None:
    event = with_real_uploads(aws, load_event(event_file), audio_bytes(container))
    version = event["Records"][0]["s3"]["object"]["versionId"]

    result = trigger.handler(event, lambda_context)

    (call,) = aws.transcribe_calls
    assert call["TranscriptionJobName"] == job_name(key, version, JOB_PREFIX)
    # The EventBridge rule for failed jobs matches this prefix only.
    assert call["TranscriptionJobName"].startswith("s2i-")
    assert JOB_NAME_RE.match(call["TranscriptionJobName"])
    assert call["Media"] == {"MediaFileUri": f"s3://{INPUT_BUCKET}/{key}"}
    assert call["MediaFormat"] == container
    assert call["OutputBucketName"] == TRANSCRIPT_BUCKET
    assert source_key_from_transcript_key("transcripts/", call["OutputKey"]) == key
    assert call["LanguageCode"] == "en-US"
    assert "IdentifyLanguage" not in call
    assert outcomes(result) == ["started"]
    assert result["results"][0]["job_name"] == call["TranscriptionJobName"]
    entry = ledger(aws).get(key)
    assert entry is not None
    assert (entry.upload_id, entry.stage, entry.job_name) == (version, "transcribing", call["TranscriptionJobName"])


def test_repeated_event_starts_no_second_job(
    trigger: Any, aws: Aws, lambda_context: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, event = upload(aws, KEY, audio_bytes("mp3"))

    first = trigger.handler(event, lambda_context)
    second = trigger.handler(event, lambda_context)

    assert outcomes(first) + outcomes(second) == ["started", "duplicate"]
    # The ledger says so: no second StartTranscriptionJob request is even sent.
    assert len(aws.transcribe_calls) == 1
    assert second["results"][0]["job_name"] == aws.job_names()[0]
    assert aws.keys(OUTPUT_BUCKET) == []
    (logged,) = [r for r in caplog.records if "repeated event skipped" in r.getMessage()]
    assert (logged.key, logged.stage) == (KEY, "transcribing")


def test_repeated_event_of_a_rejected_upload_writes_nothing_again(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    _, event = upload(aws, "notes/empty.mp3", b"")
    trigger.handler(event, lambda_context)
    written = error_record(aws, "notes/empty.mp3")

    result = trigger.handler(event, lambda_context)

    assert outcomes(result) == ["duplicate"]
    assert error_record(aws, "notes/empty.mp3") == written


def test_re_upload_of_identical_bytes_is_a_new_upload_with_a_new_job(
    trigger: Any, aws: Aws, lambda_context: Any
) -> None:
    first, first_event = upload(aws, KEY, audio_bytes("mp3"))
    trigger.handler(first_event, lambda_context)
    second, second_event = upload(aws, KEY, audio_bytes("mp3"))

    result = trigger.handler(second_event, lambda_context)

    # Same bytes, same ETag: only the version id tells the uploads apart.
    assert first.etag == second.etag and first.version_id != second.version_id
    assert outcomes(result) == ["started"]
    names = [call["TranscriptionJobName"] for call in aws.transcribe_calls]
    assert names == [job_name(KEY, first.version_id, JOB_PREFIX), job_name(KEY, second.version_id, JOB_PREFIX)]
    assert names[0] != names[1]
    assert ledger(aws).get(KEY).upload_id == second.version_id  # type: ignore[union-attr]


def test_every_record_of_an_event_is_handled(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    event = with_real_uploads(
        aws, load_event("s3_put_multiple.json"), audio_bytes("mp3"), audio_bytes("m4a"), b"shopping list"
    )

    result = trigger.handler(event, lambda_context)

    assert [(r["key"], r["outcome"]) for r in result["results"]] == [
        ("batch/first take.mp3", "started"),
        ("batch/second+take.m4a", "started"),
        ("batch/notes.txt", "rejected"),
    ]
    assert [call["MediaFormat"] for call in aws.transcribe_calls] == ["mp3", "m4a"]
    assert error_record(aws, "batch/notes.txt")["error"] == "unsupported-format"


def test_s3_test_event_does_nothing(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    assert trigger.handler(load_event("s3_test_event.json"), lambda_context) == {"results": []}
    assert aws.transcribe_calls == []


def test_upload_deleted_before_processing_gets_an_upload_deleted_record(
    trigger: Any, aws: Aws, lambda_context: Any
) -> None:
    uploaded, event = upload(aws, KEY, audio_bytes("mp3"))
    aws.s3.delete_object(Bucket=INPUT_BUCKET, Key=KEY, VersionId=uploaded.version_id)

    result = trigger.handler(event, lambda_context)

    assert outcomes(result) == ["rejected"]
    assert aws.transcribe_calls == []
    record = error_record(aws, KEY)
    assert (record["stage"], record["error"]) == ("validate", "upload-deleted")
    assert record["action"] == "upload the recording again if you still want its picture"


def test_event_of_an_older_upload_after_a_newer_one_is_superseded(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    _, old = upload(aws, KEY, audio_bytes("mp3"))
    new_upload, new = upload(aws, KEY, audio_bytes("wav"))  # the user replaced the file at once
    assert outcomes(trigger.handler(new, lambda_context)) == ["started"]
    images = put_image_set(aws, KEY)  # the newer upload's result, by now

    result = trigger.handler(old, lambda_context)  # S3 does not promise delivery in order

    assert outcomes(result) == ["superseded"]
    (call,) = aws.transcribe_calls
    assert call["TranscriptionJobName"] == job_name(KEY, new_upload.version_id, JOB_PREFIX)
    assert aws.keys(OUTPUT_BUCKET) == images
    assert ledger(aws).get(KEY).upload_id == new_upload.version_id  # type: ignore[union-attr]


def test_replaced_bad_upload_is_superseded_not_rejected(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    _, empty = upload(aws, KEY, b"")
    _, good = upload(aws, KEY, audio_bytes("mp3"))
    trigger.handler(good, lambda_context)
    images = put_image_set(aws, KEY)

    result = trigger.handler(empty, lambda_context)

    assert outcomes(result) == ["superseded"]
    assert aws.keys(OUTPUT_BUCKET) == images


def test_rejection_removes_the_image_set_of_an_earlier_upload(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    put_image_set(aws, KEY)
    _, event = upload(aws, KEY, random.Random(3).randbytes(4096))  # replaced by something that is not audio

    assert outcomes(trigger.handler(event, lambda_context)) == ["rejected"]

    assert aws.keys(OUTPUT_BUCKET) == [f"errors/{KEY}.json"]
    assert error_record(aws, KEY)["error"] == "not-audio"


def test_record_is_not_written_when_the_old_images_cannot_be_removed(
    trigger: Any, aws: Aws, lambda_context: Any
) -> None:
    images = put_image_set(aws, KEY)
    _, event = upload(aws, KEY, b"")
    trigger.CLIENTS.inject(s3=FailingS3(aws.s3, "delete_objects"))

    with pytest.raises(RecordsFailedError, match="AccessDenied"):
        trigger.handler(event, lambda_context)

    # Neither the rejection nor a retry record: an error record next to images would be two results.
    assert aws.keys(OUTPUT_BUCKET) == images


class DeniedS3:
    """An S3 client whose GetObject is refused with IAM's real wording (role ARN, account id)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def get_object(self, **params: Any) -> Any:
        error = {"Code": "AccessDenied", "Message": DENIED}
        raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")


def test_unexpected_error_writes_a_plain_retry_record_and_raises(
    trigger: Any, aws: Aws, lambda_context: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, event = upload(aws, KEY, audio_bytes("mp3"))
    put_image_set(aws, KEY)
    trigger.CLIENTS.inject(s3=DeniedS3(aws.s3))

    with pytest.raises(RecordsFailedError) as caught:
        trigger.handler(event, lambda_context)

    assert isinstance(caught.value.__cause__, ClientError)
    assert aws.keys(OUTPUT_BUCKET) == [f"errors/{KEY}.json"]
    record = error_record(aws, KEY)
    assert (record["stage"], record["error"]) == ("validate", "internal-error")
    assert record["reason"] == "an unexpected ClientError interrupted transcribe_trigger; it is retried automatically"
    assert "retries automatically" in record["action"] and "make replay" in record["action"]
    assert record["details"] == {"error_type": "ClientError", "retried": True}
    assert record["request_id"] == lambda_context.aws_request_id
    # The role ARN and account id never reach the user's record; the operator finds them in the log.
    text = json.dumps(record)
    assert "arn:aws" not in text and "123456789012" not in text
    assert DENIED in caplog.text
    assert aws.transcribe_calls == []

    # The retry succeeds: the job starts. The record of the failed attempt stays until the upload's result
    # (image set or error record) replaces it.
    trigger.CLIENTS.inject(s3=aws.s3)
    assert outcomes(trigger.handler(event, lambda_context)) == ["started"]
    assert len(aws.job_names()) == 1
    entry = ledger(aws).get(KEY)
    assert entry is not None and entry.stage == "transcribing"
    assert entry.internal_error is not None and entry.internal_error["code"] == "internal-error"


class FailingFor:
    """Delegates to the moto Transcribe client but fails one key with an AWS error (by default an unexpected one)."""

    def __init__(self, client: Any, key: str, code: str = "InternalFailureException") -> None:
        self.client = client
        self.key = key
        self.code = code

    def start_transcription_job(self, **params: Any) -> Any:
        if params["Media"]["MediaFileUri"].endswith(self.key):
            raise ClientError({"Error": {"Code": self.code, "Message": "it failed"}}, "StartTranscriptionJob")
        return self.client.start_transcription_job(**params)


def test_throttled_start_is_retried_without_a_record(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    _, event = upload(aws, KEY, audio_bytes("mp3"))
    trigger.CLIENTS.inject(transcribe=FailingFor(aws.transcribe, "my idea.mp3", "LimitExceededException"))

    result = trigger.handler(sqs_batch(event), lambda_context)

    # A burst of uploads outruns Transcribe's quota for minutes: the queue retries, the user sees nothing amiss.
    assert result["batchItemFailures"] == [{"itemIdentifier": "message-0"}]
    assert aws.keys(OUTPUT_BUCKET) == []
    trigger.CLIENTS.inject(transcribe=aws.transcribe)
    assert outcomes(trigger.handler(sqs_batch(event), lambda_context)) == ["started"]


def test_failure_to_write_the_retry_record_still_raises_the_original_error(
    trigger: Any, aws: Aws, lambda_context: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, event = upload(aws, KEY, audio_bytes("mp3"))
    trigger.CLIENTS.inject(transcribe=FailingFor(aws.transcribe, "my idea.mp3"), s3=FailingS3(aws.s3, "put_object"))

    with pytest.raises(RecordsFailedError) as caught:
        trigger.handler(event, lambda_context)

    # The cause is StartTranscriptionJob's error, not the AccessDenied of the record write.
    assert "InternalFailureException" in str(caught.value.__cause__)
    assert aws.keys(OUTPUT_BUCKET) == []
    assert any("retry record could not be written" in r.getMessage() for r in caplog.records)


def test_plain_s3_event_fails_after_the_other_records(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    event = with_real_uploads(
        aws, load_event("s3_put_multiple.json"), audio_bytes("mp3"), audio_bytes("m4a"), b"shopping list"
    )
    trigger.CLIENTS.inject(transcribe=FailingFor(aws.transcribe, "first take.mp3"))

    with pytest.raises(RecordsFailedError) as caught:
        trigger.handler(event, lambda_context)

    assert "1 of 3 records failed" in str(caught.value)
    assert "batch/first take.mp3" in str(caught.value)
    # The records after the failure were still handled.
    assert len(aws.job_names()) == 1
    assert aws.keys(OUTPUT_BUCKET) == ["errors/batch/first take.mp3.json", "errors/batch/notes.txt.json"]
    assert error_record(aws, "batch/first take.mp3")["error"] == "internal-error"


def test_sqs_batch_reports_only_the_failed_messages(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    bodies = [upload(aws, f"batch/take {n}.mp3", audio_bytes("mp3"))[1] for n in range(3)]
    batch = sqs_batch(*bodies, load_event("s3_test_event.json"))
    batch["Records"].append(dict(batch["Records"][0], messageId="message-garbled", body="{not json"))
    trigger.CLIENTS.inject(transcribe=FailingFor(aws.transcribe, "take 1.mp3"))

    result = trigger.handler(batch, lambda_context)  # no raise: the queue retries only what failed

    assert result["batchItemFailures"] == [{"itemIdentifier": "message-1"}, {"itemIdentifier": "message-garbled"}]
    assert [(r["key"], r["outcome"]) for r in result["results"]] == [
        ("batch/take 0.mp3", "started"),
        ("batch/take 2.mp3", "started"),
    ]
    assert error_record(aws, "batch/take 1.mp3")["error"] == "internal-error"

    # The queue delivers the failed message again: it starts its job; the others are not repeated.
    trigger.CLIENTS.inject(transcribe=aws.transcribe)
    again = trigger.handler(sqs_batch(*bodies), lambda_context)
    assert again["batchItemFailures"] == []
    assert outcomes(again) == ["duplicate", "started", "duplicate"]
    assert len(aws.job_names()) == 3


def test_event_from_another_bucket_is_foreign(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    _, event = upload(aws, KEY, audio_bytes("mp3"))
    event["Records"][0]["s3"]["bucket"]["name"] = "someone-elses-bucket"

    assert outcomes(trigger.handler(event, lambda_context)) == ["foreign"]
    assert aws.transcribe_calls == []
    assert aws.keys(OUTPUT_BUCKET) == []
    assert ledger(aws).get(KEY) is None


def emf_lines(text: str) -> list[dict[str, Any]]:
    return [document for line in text.splitlines() if "_aws" in (document := json.loads(line))]


def test_outcomes_and_error_codes_are_emf_metrics(
    trigger: Any, aws: Aws, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    event = with_real_uploads(
        aws, load_event("s3_put_multiple.json"), audio_bytes("mp3"), audio_bytes("m4a"), b"shopping list"
    )
    capsys.readouterr()

    trigger.handler(event, lambda_context)

    lines = emf_lines(capsys.readouterr().out)
    for line in lines:
        (directive,) = line["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "SpeechToImage"
        assert isinstance(line["_aws"]["Timestamp"], int)
        (dimensions,) = directive["Dimensions"]
        (metric,) = directive["Metrics"]
        # Every dimension and the metric itself are top-level members of the same line.
        assert all(name in line for name in dimensions) and line[metric["Name"]] == [1.0]
    assert [(line.get("Outcome"), line.get("Code")) for line in lines] == [
        ("started", None),
        ("started", None),
        (None, "unsupported-format"),
        ("rejected", None),
    ]
    assert {line.get("Function") for line in lines if "Outcome" in line} == {"transcribe_trigger"}
