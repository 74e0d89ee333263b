"""transcribe_failed: a FAILED Transcribe job of this pipeline becomes its upload's error record."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from pipeline_common.error_records import utc_now
from pipeline_common.events import EventError
from pipeline_common.keys import job_name
from pipeline_common.ledger import RECEIVED, TRANSCRIBING, DynamoLedger, Upload, normalise_sequencer
from tests.lambdas.support import INPUT_BUCKET, JOB_PREFIX, LEDGER_TABLE, OUTPUT_BUCKET, Aws, load_event
from transcribe_failed.core import failure_action, parse_job_state_change, parse_media_uri

KEY = "notes/my idea.mp3"
MEDIA_REASON = (
    "The media format provided does not match the detected media format. "
    "Check your media format and try your request again."
)


def failed_event(name: str, status: str = "FAILED") -> dict[str, Any]:
    event = load_event("transcribe_job_failed.json")
    event["detail"] = {"TranscriptionJobName": name, "TranscriptionJobStatus": status}
    return event


def expect_job(
    stubber: Stubber,
    name: str,
    uri: str,
    reason: str | None = MEDIA_REASON,
    media_format: str | None = "mp3",
    language_code: str | None = "en-US",
) -> None:
    job: dict[str, Any] = {
        "TranscriptionJobName": name,
        "TranscriptionJobStatus": "FAILED",
        "Media": {"MediaFileUri": uri},
    }
    optional = {"FailureReason": reason, "MediaFormat": media_format, "LanguageCode": language_code}
    job |= {field: value for field, value in optional.items() if value is not None}
    stubber.add_response("get_transcription_job", {"TranscriptionJob": job}, {"TranscriptionJobName": name})


def ledger(aws: Aws) -> DynamoLedger:
    return DynamoLedger(aws.dynamodb, LEDGER_TABLE)


def upload(aws: Aws, key: str = KEY, body: bytes = b"ID3 not really playable") -> str:
    """Upload to the input bucket and record it as the trigger does; the name of the job started for it."""
    uploaded = aws.upload(key, body)
    name = job_name(key, uploaded.version_id, JOB_PREFIX)
    upload_ = Upload(key, uploaded.version_id, normalise_sequencer(uploaded.sequencer), uploaded.etag)
    ledger(aws).claim(upload_, utc_now())
    ledger(aws).advance(key, uploaded.version_id, to=TRANSCRIBING, expect=(RECEIVED,), now=utc_now(), job_name=name)
    return name


@pytest.mark.parametrize(
    "key",
    [
        "notes/my idea.mp3",
        "notes/C++ talk.wav",
        "notes/café 日本語.flac",
        "users/42/2024/05/01/session-7/take 3.ogg",
        "100% sure!? #1.mp3",
    ],
)
def test_failed_job_becomes_the_upload_s_error_record(
    failed: Any, aws: Aws, transcribe_stub: tuple[Any, Stubber], lambda_context: Any, key: str
) -> None:
    name = upload(aws, key)
    # Transcribe keeps the MediaFileUri exactly as the trigger passed it: the key verbatim, not URL-encoded.
    expect_job(transcribe_stub[1], name, f"s3://{INPUT_BUCKET}/{key}")

    result = failed.handler(failed_event(name), lambda_context)

    transcribe_stub[1].assert_no_pending_responses()
    error_key = f"errors/{key}.json"
    assert result == {
        "results": [
            {"job_name": name, "outcome": "recorded", "bucket": INPUT_BUCKET, "key": key, "error_key": error_key}
        ]
    }
    assert aws.keys(OUTPUT_BUCKET) == [error_key]
    record = aws.read_json(OUTPUT_BUCKET, error_key)
    assert record["source"] == {"bucket": INPUT_BUCKET, "key": key}
    assert record["request_id"] == lambda_context.aws_request_id
    assert (record["stage"], record["error"], record["reason"]) == ("transcribe", "transcription-failed", MEDIA_REASON)
    assert record["action"].startswith("upload a playable recording in one of: mp3, mp4, m4a, wav, flac, ogg")
    assert record["details"] == {
        "job_name": name,
        "failure_reason": MEDIA_REASON,
        "media_format": "mp3",
        "language_code": "en-US",
    }
    entry = ledger(aws).get(key)
    assert entry is not None and entry.stage == "failed" and entry.result is not None
    assert entry.result["code"] == "transcription-failed"


def test_record_replaces_the_image_set_of_an_earlier_upload(
    failed: Any, aws: Aws, transcribe_stub: tuple[Any, Stubber], lambda_context: Any
) -> None:
    for suffix in ("png", "json", "html"):
        aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=f"images/{KEY}.{suffix}", Body=b"the previous upload's")
    name = upload(aws)
    expect_job(transcribe_stub[1], name, f"s3://{INPUT_BUCKET}/{KEY}")

    failed.handler(failed_event(name), lambda_context)

    assert aws.keys(OUTPUT_BUCKET) == [f"errors/{KEY}.json"]


@pytest.mark.parametrize(
    "uri",
    [
        f"https://s3.us-east-1.amazonaws.com/{INPUT_BUCKET}/{quote(KEY)}",
        f"https://{INPUT_BUCKET}.s3.us-east-1.amazonaws.com/{quote(KEY)}",
        f"https://{INPUT_BUCKET}.s3.amazonaws.com/{quote(KEY)}",
        f"https://s3-us-west-2.amazonaws.com/{INPUT_BUCKET}/{quote(KEY)}",
    ],
)
def test_https_media_uris_are_understood_too(
    failed: Any, aws: Aws, transcribe_stub: tuple[Any, Stubber], lambda_context: Any, uri: str
) -> None:
    name = upload(aws)
    expect_job(transcribe_stub[1], name, uri)

    result = failed.handler(failed_event(name), lambda_context)

    assert (result["results"][0]["outcome"], result["results"][0]["key"]) == ("recorded", KEY)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/a b/c+d%20e.mp3", ("bucket", "a b/c+d%20e.mp3")),  # verbatim: no decoding at all
        ("s3://bucket/日本/録音 1.m4a", ("bucket", "日本/録音 1.m4a")),
        ("https://my.dotted.bucket.s3.eu-west-1.amazonaws.com/a%20b%2Bc.mp3", ("my.dotted.bucket", "a b+c.mp3")),
        ("https://s3.cn-north-1.amazonaws.com.cn/bucket/k.mp3", ("bucket", "k.mp3")),
        ("s3://bucket", None),
        ("s3://bucket/", None),
        ("https://example.com/bucket/k.mp3", None),
        ("https://s3.us-east-1.amazonaws.com/bucket", None),
        ("http://s3.us-east-1.amazonaws.com/bucket/k.mp3", None),
        ("", None),
    ],
)
def test_media_uri_parsing(uri: str, expected: tuple[str, str] | None) -> None:
    assert parse_media_uri(uri) == expected


def test_job_that_did_not_fail_is_ignored(failed: Any, aws: Aws, lambda_context: Any) -> None:
    # The stubbed Transcribe client has no response queued: a GetTranscriptionJob call would fail the test.
    result = failed.handler(load_event("transcribe_job_completed.json"), lambda_context)

    assert result["results"][0]["outcome"] == "ignored"
    assert aws.keys(OUTPUT_BUCKET) == []


def test_job_of_another_application_is_foreign(failed: Any, aws: Aws, lambda_context: Any) -> None:
    result = failed.handler(failed_event("meeting-notes-2024-05-01"), lambda_context)

    assert result["results"][0]["outcome"] == "foreign"
    assert aws.keys(OUTPUT_BUCKET) == []


@pytest.mark.parametrize("uri", ["s3://another-bucket/notes/my idea.mp3", "https://example.com/my idea.mp3"])
def test_job_whose_media_is_elsewhere_is_foreign(
    failed: Any, aws: Aws, transcribe_stub: tuple[Any, Stubber], lambda_context: Any, uri: str
) -> None:
    name = upload(aws)
    expect_job(transcribe_stub[1], name, uri)

    result = failed.handler(failed_event(name), lambda_context)

    transcribe_stub[1].assert_no_pending_responses()
    assert result["results"][0]["outcome"] == "foreign"
    assert aws.keys(OUTPUT_BUCKET) == []


def test_job_the_ledger_never_saw_is_superseded(
    failed: Any, aws: Aws, transcribe_stub: tuple[Any, Stubber], lambda_context: Any
) -> None:
    # E.g. a job started by hand with the pipeline's prefix: no upload of the key is waiting for it.
    uploaded = aws.upload(KEY, b"ID3 uploaded, but never recorded")
    name = job_name(KEY, uploaded.version_id, JOB_PREFIX)
    expect_job(transcribe_stub[1], name, f"s3://{INPUT_BUCKET}/{KEY}")

    result = failed.handler(failed_event(name), lambda_context)

    assert result["results"][0]["outcome"] == "superseded"
    assert aws.keys(OUTPUT_BUCKET) == []


def test_repeated_event_is_a_duplicate_and_writes_nothing_again(
    failed: Any, aws: Aws, transcribe_stub: tuple[Any, Stubber], lambda_context: Any
) -> None:
    name = upload(aws)
    for _ in range(2):
        expect_job(transcribe_stub[1], name, f"s3://{INPUT_BUCKET}/{KEY}")
    failed.handler(failed_event(name), lambda_context)
    written = aws.read_json(OUTPUT_BUCKET, f"errors/{KEY}.json")

    result = failed.handler(failed_event(name), lambda_context)

    assert result["results"][0]["outcome"] == "duplicate"
    assert aws.read_json(OUTPUT_BUCKET, f"errors/{KEY}.json") == written


def test_job_of_a_replaced_upload_is_superseded(
    failed: Any, aws: Aws, transcribe_stub: tuple[Any, Stubber], lambda_context: Any
) -> None:
    old = upload(aws, body=b"a broken recording")
    upload(aws, body=b"ID3 the fixed recording")  # its own job decides the result
    newer_images = [f"images/{KEY}.{suffix}" for suffix in ("html", "json", "png")]
    for key in newer_images:
        aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=key, Body=b"the newer upload's")
    expect_job(transcribe_stub[1], old, f"s3://{INPUT_BUCKET}/{KEY}")

    result = failed.handler(failed_event(old), lambda_context)

    assert result["results"][0]["outcome"] == "superseded"
    assert aws.keys(OUTPUT_BUCKET) == newer_images


@pytest.mark.parametrize(
    ("reason", "hint"),
    [
        (MEDIA_REASON, "upload a playable recording in one of: mp3, wav"),
        ("Failed to parse audio file.", "upload a playable recording"),
        ("Invalid sample rate for audio file. Sample rate must be between 8000 and 48000.", "playable recording"),
        ("The media file couldn't be decoded as mp3 audio: ffmpeg ...", "playable recording"),
        (
            "Invalid file size: file size too large. Maximum audio duration is 4.000000 hours.",
            "upload a shorter recording",
        ),
        (
            "Your audio file must have a speech segment long enough in duration to perform automatic language "
            "identification.",
            "a few seconds of clear speech",
        ),
        ("Internal failure", "upload the recording again"),
        (
            "The S3 URI that you provided can't be accessed. Make sure that you have read permission.",
            "check the job in the Amazon Transcribe console",
        ),
    ],
)
def test_action_follows_the_failure_reason(reason: str, hint: str) -> None:
    assert hint in failure_action(reason, ("mp3", "wav"))


def test_fallback_advice_does_not_send_the_user_to_a_new_name(aws: Aws) -> None:
    first, second = aws.upload(KEY, b"ID3 same bytes"), aws.upload(KEY, b"ID3 same bytes")
    assert job_name(KEY, first.version_id, JOB_PREFIX) != job_name(KEY, second.version_id, JOB_PREFIX)

    assert "new name" not in failure_action("Internal failure", ("mp3",))


def test_job_without_a_reason_still_gets_a_record(
    failed: Any, aws: Aws, transcribe_stub: tuple[Any, Stubber], lambda_context: Any
) -> None:
    name = upload(aws)
    expect_job(transcribe_stub[1], name, f"s3://{INPUT_BUCKET}/{KEY}", reason=None, media_format=None)

    failed.handler(failed_event(name), lambda_context)

    record = aws.read_json(OUTPUT_BUCKET, f"errors/{KEY}.json")
    assert record["reason"] == "Amazon Transcribe reported the job as FAILED without a reason"
    assert "upload the recording again" in record["action"]
    assert record["details"] == {"job_name": name, "language_code": "en-US"}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("s3_put_space.json", "S3 notification"),
        ({"version": "1.0", "requestPayload": {}, "requestContext": {}}, "dead-letter record"),
        ({"source": "aws.transcribe", "detail-type": "Transcribe Job State Change"}, "no 'detail' object"),
        (
            {"source": "aws.transcribe", "detail-type": "Transcribe Job State Change", "detail": {"X": 1}},
            "TranscriptionJobName",
        ),
        ({"source": "aws.s3", "detail-type": "Object Created", "detail": {}}, "'aws.s3'"),
        ([], "got list"),
    ],
)
def test_events_of_another_kind_fail_loudly(event: Any, message: str) -> None:
    with pytest.raises(EventError, match=message):
        parse_job_state_change(load_event(event) if isinstance(event, str) else event)


def test_committed_event_parses() -> None:
    change = parse_job_state_change(load_event("transcribe_job_failed.json"))
    assert (change.job_name, change.status) == ("s2i-my_idea-5d0a3e0c1b9f2a6e4c7d", "FAILED")


class CommitRefused:
    """A DynamoDB client whose first ledger commit (the update that sets `result`) fails inside DynamoDB."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def update_item(self, **params: Any) -> Any:
        if "#result" in params["UpdateExpression"].split("REMOVE")[0] and not self.refused:
            self.refused += 1
            error = {"Code": "InternalServerError", "Message": "Internal server error"}
            raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 500}}, "UpdateItem")
        return self.client.update_item(**params)


def test_unexpected_error_after_the_upload_is_known_is_recorded_and_raised(
    failed: Any, aws: Aws, transcribe_stub: tuple[Any, Stubber], lambda_context: Any
) -> None:
    name = upload(aws)
    expect_job(transcribe_stub[1], name, f"s3://{INPUT_BUCKET}/{KEY}")
    dynamodb = CommitRefused(aws.dynamodb)
    failed.CLIENTS.inject(dynamodb=dynamodb)

    with pytest.raises(ClientError, match="InternalServerError"):
        failed.handler(failed_event(name), lambda_context)

    assert dynamodb.refused == 1
    record = aws.read_json(OUTPUT_BUCKET, f"errors/{KEY}.json")
    assert (record["stage"], record["error"]) == ("transcribe", "internal-error")
    assert record["reason"] == "an unexpected ClientError interrupted transcribe_failed; it is retried automatically"
    assert "transcribe_failed's dead-letter queue" in record["action"]
    assert record["request_id"] == lambda_context.aws_request_id

    # The retry gives the upload its real result.
    expect_job(transcribe_stub[1], name, f"s3://{INPUT_BUCKET}/{KEY}")
    assert failed.handler(failed_event(name), lambda_context)["results"][0]["outcome"] == "recorded"
    assert aws.read_json(OUTPUT_BUCKET, f"errors/{KEY}.json")["error"] == "transcription-failed"


def test_failure_reason_with_an_arn_is_redacted_everywhere_in_the_record(
    failed: Any, aws: Aws, transcribe_stub: tuple[Any, Stubber], lambda_context: Any
) -> None:
    name = upload(aws)
    reason = "Access denied to KMS key arn:aws:kms:us-east-1:123456789012:key/1a2b3c4d of account 123456789012."
    expect_job(transcribe_stub[1], name, f"s3://{INPUT_BUCKET}/{KEY}", reason=reason)

    failed.handler(failed_event(name), lambda_context)

    record = aws.read_json(OUTPUT_BUCKET, f"errors/{KEY}.json")
    assert "123456789012" not in record["reason"] and "arn:aws" not in record["reason"]
    assert "123456789012" not in json.dumps(record)


def test_failing_get_transcription_job_raises_without_a_record(
    failed: Any, aws: Aws, transcribe_stub: tuple[Any, Stubber], lambda_context: Any
) -> None:
    transcribe_stub[1].add_client_error(
        "get_transcription_job", service_error_code="LimitExceededException", http_status_code=400
    )

    with pytest.raises(ClientError, match="LimitExceededException"):
        failed.handler(failed_event(upload(aws)), lambda_context)

    # No source key is known yet: there is nothing to put a record on; the dead-letter queue keeps the event.
    assert aws.keys(OUTPUT_BUCKET) == []


def test_transcribe_client_uses_standard_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from transcribe_failed.handler import CLIENTS

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    CLIENTS.clear()
    try:
        config = CLIENTS.get("transcribe").meta.config
    finally:
        CLIENTS.clear()
    assert config.retries == {"mode": "standard"}
