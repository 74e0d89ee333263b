"""transcribe_trigger: uploads become Transcribe jobs; bad uploads become error records."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from pipeline_common.batch import RecordsFailedError
from pipeline_common.keys import job_name, source_key_from_transcript_key
from pipeline_common.settings import SettingsError
from tests.lambdas.support import (
    AUDIO_HEADERS,
    INPUT_BUCKET,
    JOB_PREFIX,
    OUTPUT_BUCKET,
    TRANSCRIPT_BUCKET,
    Aws,
    FailingS3,
    audio_bytes,
    load_event,
)
from transcribe_trigger.core import detect_container

JOB_NAME_RE = re.compile(r"^[0-9a-zA-Z._-]{1,200}$")


def upload_event(aws: Aws, key: str, body: bytes, template: str = "s3_put_simple.json") -> dict[str, Any]:
    """Upload `body` and return the S3 event for it (URL-encoded key, real size and ETag)."""
    from urllib.parse import quote_plus

    etag = aws.put_upload(key, body)
    event = load_event(template)
    obj = event["Records"][0]["s3"]["object"]
    obj.update(key=quote_plus(key, safe="/"), size=len(body), eTag=etag)
    return event


def error_record(aws: Aws, source_key: str) -> dict[str, Any]:
    return aws.read_json(OUTPUT_BUCKET, f"errors/{source_key}.json")


def with_real_etags(aws: Aws, event: dict[str, Any]) -> dict[str, Any]:
    """Give each record of a committed event the ETag its object really has in moto's input bucket."""
    from urllib.parse import unquote_plus

    for raw in event["Records"]:
        obj = raw["s3"]["object"]
        obj["eTag"] = aws.s3.head_object(Bucket=INPUT_BUCKET, Key=unquote_plus(obj["key"]))["ETag"].strip('"')
    return event


def put_image_set(aws: Aws, source_key: str) -> list[str]:
    """An image set left by an earlier upload under `source_key`; returns its keys."""
    keys = [f"images/{source_key}.{suffix}" for suffix in ("png", "json", "html")]
    for key in keys:
        aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=key, Body=b"earlier result")
    return keys


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
def test_upload_starts_one_job_writing_to_the_contract_key(
    trigger: Any, aws: Aws, lambda_context: Any, event_file: str, key: str, container: str
) -> None:
    aws.put_upload(key, audio_bytes(container))
    event = with_real_etags(aws, load_event(event_file))

    result = trigger.handler(event, lambda_context)

    (call,) = aws.transcribe_calls
    etag = event["Records"][0]["s3"]["object"]["eTag"]
    assert call["TranscriptionJobName"] == job_name(key, etag, JOB_PREFIX)
    # The EventBridge rule for failed jobs matches this prefix only.
    assert call["TranscriptionJobName"].startswith("s2i-")
    assert JOB_NAME_RE.match(call["TranscriptionJobName"])
    assert call["Media"] == {"MediaFileUri": f"s3://{INPUT_BUCKET}/{key}"}
    assert call["MediaFormat"] == container
    assert call["OutputBucketName"] == TRANSCRIPT_BUCKET
    assert source_key_from_transcript_key("transcripts/", call["OutputKey"]) == key
    assert call["LanguageCode"] == "en-US"
    assert "IdentifyLanguage" not in call
    assert result["results"][0]["outcome"] == "started"
    assert aws.job_names() == [call["TranscriptionJobName"]]


def test_repeated_event_starts_one_job_and_is_not_an_error(
    trigger: Any, aws: Aws, lambda_context: Any, caplog: pytest.LogCaptureFixture
) -> None:
    event = upload_event(aws, "notes/my idea.mp3", audio_bytes("mp3"))

    first = trigger.handler(event, lambda_context)
    second = trigger.handler(event, lambda_context)

    assert [r["outcome"] for r in first["results"] + second["results"]] == ["started", "duplicate"]
    assert len(aws.job_names()) == 1
    assert aws.keys(OUTPUT_BUCKET) == []
    (logged,) = [r for r in caplog.records if "repeated event skipped" in r.getMessage()]
    assert (logged.key, logged.job_name) == ("notes/my idea.mp3", aws.job_names()[0])


def test_record_without_etag_gets_the_same_job_name_via_head_object(
    trigger: Any, aws: Aws, lambda_context: Any
) -> None:
    event = upload_event(aws, "notes/my idea.mp3", audio_bytes("mp3"))
    trigger.handler(event, lambda_context)
    bare = load_event("s3_put_space.json")
    del bare["Records"][0]["s3"]["object"]["eTag"]
    del bare["Records"][0]["s3"]["object"]["size"]

    result = trigger.handler(bare, lambda_context)

    # HeadObject's quoted ETag names the job exactly as the event's bare one did.
    assert result["results"][0]["outcome"] == "duplicate"
    assert len(aws.job_names()) == 1


def test_every_record_of_an_event_is_handled(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    aws.put_upload("batch/first take.mp3", audio_bytes("mp3"))
    aws.put_upload("batch/second+take.m4a", audio_bytes("m4a"))
    aws.put_upload("batch/notes.txt", b"shopping list")

    result = trigger.handler(with_real_etags(aws, load_event("s3_put_multiple.json")), lambda_context)

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


@pytest.mark.parametrize(
    ("key", "body", "error", "action_hint"),
    [
        ("notes/empty.mp3", b"", "empty-file", "record again"),
        ("notes/random.mp3", random.Random(7).randbytes(4096), "not-audio", "audio recording"),
        ("notes/readme.txt", b"hello", "unsupported-format", "mp3, mp4, m4a, wav, flac, ogg, webm, amr"),
        ("notes/no-extension", audio_bytes("mp3"), "unsupported-format", "mp3"),
        ("notes/picture.mp3", b"\x89PNG\r\n\x1a\n" + bytes(100), "not-audio", "audio recording"),
    ],
)
def test_bad_upload_gets_an_error_record_and_no_job(
    trigger: Any, aws: Aws, lambda_context: Any, key: str, body: bytes, error: str, action_hint: str
) -> None:
    assert detect_container(body[:64]) is None or error == "unsupported-format"
    event = upload_event(aws, key, body)
    reads: list[str | None] = []
    hook = "before-parameter-build.s3.GetObject"
    aws.s3.meta.events.register(hook, lambda params, **_: reads.append(params.get("Range")), unique_id="reads")

    try:
        result = trigger.handler(event, lambda_context)
    finally:
        aws.s3.meta.events.unregister(hook, unique_id="reads")

    # Only the first 64 bytes are ever read: a 500 MB upload costs no more to check than a small one.
    assert reads == (["bytes=0-63"] if error == "not-audio" else [])

    assert result["results"][0]["outcome"] == "rejected"
    assert aws.transcribe_calls == []
    record = error_record(aws, key)
    assert record["status"] == "error"
    assert record["source"] == {"bucket": INPUT_BUCKET, "key": key}
    assert record["stage"] == "validate"
    assert record["error"] == error
    assert record["reason"]
    assert action_hint in record["action"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", record["time"])
    # The upload itself is left exactly as it was.
    assert aws.s3.get_object(Bucket=INPUT_BUCKET, Key=key)["Body"].read() == body


def test_too_large_upload_gets_an_error_record(
    trigger: Any, aws: Aws, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_MEDIA_BYTES", "2048")
    trigger.SETTINGS.reset()
    event = upload_event(aws, "notes/long talk.mp3", audio_bytes("mp3", 2049))

    trigger.handler(event, lambda_context)

    record = error_record(aws, "notes/long talk.mp3")
    assert record["error"] == "too-large"
    assert record["details"] == {"size": 2049, "max_media_bytes": 2048}
    assert aws.transcribe_calls == []
    assert aws.keys(INPUT_BUCKET) == ["notes/long talk.mp3"]


def test_key_too_long_for_a_transcript_gets_an_error_record(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    key = "録音" * 150 + ".mp3"  # 904 bytes: a valid S3 key, 2700+ characters once escaped
    event = upload_event(aws, key, audio_bytes("mp3"))

    trigger.handler(event, lambda_context)

    assert error_record(aws, key)["error"] == "key-too-long"
    assert aws.transcribe_calls == []


def test_key_at_the_s3_limit_still_gets_an_error_record(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    key = "n" * 1016 + ".mp3"  # 1020 bytes: "errors/" + key + ".json" would exceed S3's 1024
    event = upload_event(aws, key, audio_bytes("mp3"))

    trigger.handler(event, lambda_context)

    (record_key,) = aws.keys(OUTPUT_BUCKET)
    assert record_key.startswith("errors/nnn") and len(record_key) <= 1024
    record = aws.read_json(OUTPUT_BUCKET, record_key)
    assert (record["error"], record["source"]["key"]) == ("key-too-long", key)
    assert aws.keys(INPUT_BUCKET) == [key]


@pytest.mark.parametrize(
    ("key", "container", "media_format"),
    [
        ("notes/actually wav.mp3", "wav", "wav"),
        ("notes/no id3 tag.mp3", "mp3-frame", "mp3"),
        ("notes/voice memo.m4a", "m4a", "m4a"),
        ("notes/voice memo.mp4", "m4a", "mp4"),
        ("notes/browser.webm", "webm", "webm"),
        ("notes/phone.amr", "amr", "amr"),
        ("notes/shouty.MP3", "mp3", "mp3"),
    ],
)
def test_media_format_comes_from_the_content(
    trigger: Any, aws: Aws, lambda_context: Any, key: str, container: str, media_format: str
) -> None:
    trigger.handler(upload_event(aws, key, audio_bytes(container)), lambda_context)

    assert [call["MediaFormat"] for call in aws.transcribe_calls] == [media_format]


def test_content_in_a_format_that_is_not_enabled_is_refused(
    trigger: Any, aws: Aws, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIA_FORMATS", "mp3,m4a")
    trigger.SETTINGS.reset()

    trigger.handler(upload_event(aws, "notes/renamed.mp3", audio_bytes("flac")), lambda_context)

    record = error_record(aws, "notes/renamed.mp3")
    assert (record["error"], record["details"]["container"]) == ("unsupported-format", "flac")
    assert aws.transcribe_calls == []


def test_automatic_language_identification(
    trigger: Any, aws: Aws, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANGUAGE_CODE", "auto")
    monkeypatch.setenv("LANGUAGE_OPTIONS", "en-US,de-DE,fr-FR")
    trigger.SETTINGS.reset()

    trigger.handler(upload_event(aws, "notes/hallo.mp3", audio_bytes("mp3")), lambda_context)

    (call,) = aws.transcribe_calls
    assert call["IdentifyLanguage"] is True
    assert call["LanguageOptions"] == ["en-US", "de-DE", "fr-FR"]
    assert "LanguageCode" not in call
    job = aws.transcribe.get_transcription_job(TranscriptionJobName=call["TranscriptionJobName"])
    assert job["TranscriptionJob"]["IdentifyLanguage"] is True


def test_auto_language_without_options_is_a_settings_error(
    trigger: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANGUAGE_CODE", "auto")
    monkeypatch.setenv("LANGUAGE_OPTIONS", "en-US")
    trigger.SETTINGS.reset()
    with pytest.raises(SettingsError, match="LANGUAGE_OPTIONS"):
        trigger.handler(load_event("s3_put_simple.json"), lambda_context)


def test_upload_deleted_before_processing_is_skipped_without_error_record(
    trigger: Any, aws: Aws, lambda_context: Any
) -> None:
    result = trigger.handler(load_event("s3_put_simple.json"), lambda_context)

    assert result["results"][0]["outcome"] == "gone"
    assert aws.transcribe_calls == []
    assert aws.keys(OUTPUT_BUCKET) == []


class FailingFor:
    """Delegates to the moto Transcribe client but fails one key with an unexpected AWS error."""

    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.key = key

    def start_transcription_job(self, **params: Any) -> Any:
        if params["Media"]["MediaFileUri"].endswith(self.key):
            raise ClientError(
                {"Error": {"Code": "LimitExceededException", "Message": "too many jobs"}}, "StartTranscriptionJob"
            )
        return self.client.start_transcription_job(**params)


def test_unexpected_aws_error_fails_the_event_after_the_other_records(
    trigger: Any, aws: Aws, lambda_context: Any
) -> None:
    aws.put_upload("batch/first take.mp3", audio_bytes("mp3"))
    aws.put_upload("batch/second+take.m4a", audio_bytes("m4a"))
    aws.put_upload("batch/notes.txt", b"shopping list")
    trigger.CLIENTS.inject(transcribe=FailingFor(aws.transcribe, "first take.mp3"))

    with pytest.raises(RecordsFailedError) as caught:
        trigger.handler(with_real_etags(aws, load_event("s3_put_multiple.json")), lambda_context)

    message = str(caught.value)
    assert "1 of 3 records failed" in message
    assert "batch/first take.mp3" in message and "LimitExceededException" in message
    assert isinstance(caught.value.__cause__, ClientError)
    # The records after the failure were still handled.
    assert len(aws.job_names()) == 1
    assert aws.keys(OUTPUT_BUCKET) == ["errors/batch/first take.mp3.json", "errors/batch/notes.txt.json"]
    # The unexpected error is recorded for the user, and still raised so Lambda retries.
    record = error_record(aws, "batch/first take.mp3")
    assert (record["stage"], record["error"]) == ("validate", "internal-error")
    assert "LimitExceededException" in record["reason"] and "too many jobs" in record["reason"]
    assert "retries automatically" in record["action"] and "make replay" in record["action"]
    assert "transcribe_trigger" in record["action"]
    assert record["details"]["error_type"] == "ClientError"


def test_missing_environment_variable_is_named(
    trigger: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRANSCRIPT_BUCKET")
    trigger.SETTINGS.reset()
    with pytest.raises(SettingsError, match="TRANSCRIPT_BUCKET"):
        trigger.handler(load_event("s3_put_simple.json"), lambda_context)


@pytest.mark.parametrize("container", sorted(AUDIO_HEADERS))
def test_container_signatures_are_recognised(container: str) -> None:
    assert detect_container(AUDIO_HEADERS[container][:64]) == {"mp3-frame": "mp3", "m4a": "mp4"}.get(
        container, container
    )


@pytest.mark.parametrize(
    "head",
    [
        b"\xff\xff\xff\xff",  # sync, but bitrate index 1111 is invalid
        b"\xff\xe9\x90\x64",  # sync, but MPEG version 01 is reserved
        b"\xff\xf1\x50\x80",  # ADTS AAC (layer 00), not MP3
        b"\xff\xfb\x9c\x64",  # sample-rate index 11 is reserved
        b"RIFF\x00\x00\x00\x00AVI LIST",  # RIFF, but video
        b"\x00\x00\x00\x18stypmsdh",  # an mp4 fragment without 'ftyp'
        b"",
    ],
)
def test_lookalikes_are_not_audio(head: bytes) -> None:
    assert detect_container(head + bytes(60)) is None


@pytest.fixture
def sniffs(aws: Aws) -> Iterator[list[dict[str, Any]]]:
    """Every GetObject request made during the test."""
    seen: list[dict[str, Any]] = []
    hook = "before-parameter-build.s3.GetObject"
    aws.s3.meta.events.register(hook, lambda params, **_: seen.append(dict(params)), unique_id="sniffs")
    yield seen
    aws.s3.meta.events.unregister(hook, unique_id="sniffs")


def test_sniffing_read_is_conditional_on_the_event_etag(
    trigger: Any, aws: Aws, lambda_context: Any, sniffs: list[dict[str, Any]]
) -> None:
    event = upload_event(aws, "notes/my idea.mp3", audio_bytes("mp3"))

    trigger.handler(event, lambda_context)

    etag = event["Records"][0]["s3"]["object"]["eTag"]
    assert [(r["Range"], r["IfMatch"]) for r in sniffs] == [("bytes=0-63", f'"{etag}"')]


def test_event_for_a_replaced_upload_is_superseded_and_writes_nothing(
    trigger: Any, aws: Aws, lambda_context: Any
) -> None:
    key = "notes/my idea.mp3"
    old = upload_event(aws, key, audio_bytes("mp3"))
    new = upload_event(aws, key, audio_bytes("wav"))  # the user replaced the file before the first event ran
    put_image_set(aws, key)

    first = trigger.handler(old, lambda_context)
    second = trigger.handler(new, lambda_context)

    assert [r["outcome"] for r in first["results"] + second["results"]] == ["superseded", "started"]
    # Only the current object got a job, and the older event touched no result.
    (call,) = aws.transcribe_calls
    assert call["TranscriptionJobName"] == job_name(key, new["Records"][0]["s3"]["object"]["eTag"], JOB_PREFIX)
    assert call["MediaFormat"] == "wav"
    assert aws.keys(OUTPUT_BUCKET) == [f"images/{key}.html", f"images/{key}.json", f"images/{key}.png"]


def test_replaced_bad_upload_is_superseded_not_rejected(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    # Verdicts from the event's own size (empty, too large) are checked against the object now under the key.
    key = "notes/retry.mp3"
    empty = upload_event(aws, key, b"")
    upload_event(aws, key, audio_bytes("mp3"))
    images = put_image_set(aws, key)

    result = trigger.handler(empty, lambda_context)

    assert result["results"][0]["outcome"] == "superseded"
    assert aws.keys(OUTPUT_BUCKET) == sorted(images)


def test_deleted_empty_upload_is_gone_not_rejected(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    event = upload_event(aws, "notes/empty.mp3", b"")
    aws.s3.delete_object(Bucket=INPUT_BUCKET, Key="notes/empty.mp3")

    result = trigger.handler(event, lambda_context)

    assert result["results"][0]["outcome"] == "gone"
    assert aws.keys(OUTPUT_BUCKET) == []


def test_rejection_removes_the_image_set_of_an_earlier_upload(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    key = "notes/my idea.mp3"
    put_image_set(aws, key)
    event = upload_event(aws, key, random.Random(3).randbytes(4096))  # replaced by something that is not audio

    result = trigger.handler(event, lambda_context)

    assert result["results"][0]["outcome"] == "rejected"
    assert aws.keys(OUTPUT_BUCKET) == [f"errors/{key}.json"]
    assert error_record(aws, key)["error"] == "not-audio"


def test_record_is_not_written_when_the_old_images_cannot_be_removed(
    trigger: Any, aws: Aws, lambda_context: Any
) -> None:
    key = "notes/my idea.mp3"
    images = put_image_set(aws, key)
    event = upload_event(aws, key, b"")
    trigger.CLIENTS.inject(s3=FailingS3(aws.s3, "delete_objects"))

    with pytest.raises(RecordsFailedError, match="AccessDenied"):
        trigger.handler(event, lambda_context)

    # Neither the rejection nor the internal-error record: an error record next to images would be two results.
    assert aws.keys(OUTPUT_BUCKET) == sorted(images)


def test_unexpected_s3_error_writes_internal_error_record_and_raises(
    trigger: Any, aws: Aws, lambda_context: Any
) -> None:
    key = "notes/my idea.mp3"
    event = upload_event(aws, key, audio_bytes("mp3"))
    put_image_set(aws, key)
    failing = FailingS3(aws.s3, "get_object", prefix="notes/")
    trigger.CLIENTS.inject(s3=failing)

    with pytest.raises(RecordsFailedError) as caught:
        trigger.handler(event, lambda_context)

    assert isinstance(caught.value.__cause__, ClientError)
    assert failing.refused == [("get_object", key)]
    assert aws.keys(OUTPUT_BUCKET) == [f"errors/{key}.json"]
    record = error_record(aws, key)
    assert (record["stage"], record["error"]) == ("validate", "internal-error")
    assert record["reason"].startswith("ClientError: ") and "AccessDenied" in record["reason"]
    assert record["details"]["etag"] == event["Records"][0]["s3"]["object"]["eTag"]
    assert aws.transcribe_calls == []

    # Lambda's retry succeeds: the job starts and the record of the failed attempt goes.
    trigger.CLIENTS.inject(s3=aws.s3)
    assert trigger.handler(event, lambda_context)["results"][0]["outcome"] == "started"
    assert aws.keys(OUTPUT_BUCKET) == []


def test_failure_to_write_the_internal_error_record_still_raises_the_original_error(
    trigger: Any, aws: Aws, lambda_context: Any, caplog: pytest.LogCaptureFixture
) -> None:
    event = upload_event(aws, "notes/my idea.mp3", audio_bytes("mp3"))
    trigger.CLIENTS.inject(transcribe=FailingFor(aws.transcribe, "my idea.mp3"), s3=FailingS3(aws.s3, "put_object"))

    with pytest.raises(RecordsFailedError) as caught:
        trigger.handler(event, lambda_context)

    # The cause is StartTranscriptionJob's error, not the AccessDenied of the record write.
    assert "LimitExceededException" in str(caught.value.__cause__)
    assert aws.keys(OUTPUT_BUCKET) == []
    assert any("internal-error record could not be written" in r.getMessage() for r in caplog.records)


def test_event_from_another_bucket_is_foreign(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    event = upload_event(aws, "notes/my idea.mp3", audio_bytes("mp3"))
    event["Records"][0]["s3"]["bucket"]["name"] = "someone-elses-bucket"

    result = trigger.handler(event, lambda_context)

    assert result["results"][0]["outcome"] == "foreign"
    assert aws.transcribe_calls == []
    assert aws.keys(OUTPUT_BUCKET) == []
