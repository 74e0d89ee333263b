"""transcribe_trigger: uploads become Transcribe jobs; bad uploads become error records."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from botocore.exceptions import ClientError

from pipeline_common.batch import RecordsFailedError
from pipeline_common.keys import job_name, source_key_from_transcript_key
from pipeline_common.settings import SettingsError
from tests.lambdas.support import (
    AUDIO_HEADERS,
    INPUT_BUCKET,
    OUTPUT_BUCKET,
    TRANSCRIPT_BUCKET,
    Aws,
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
    event = load_event(event_file)

    result = trigger.handler(event, lambda_context)

    (call,) = aws.transcribe_calls
    etag = event["Records"][0]["s3"]["object"]["eTag"]
    assert call["TranscriptionJobName"] == job_name(key, etag)
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

    result = trigger.handler(load_event("s3_put_multiple.json"), lambda_context)

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
        trigger.handler(load_event("s3_put_multiple.json"), lambda_context)

    message = str(caught.value)
    assert "1 of 3 records failed" in message
    assert "batch/first take.mp3" in message and "LimitExceededException" in message
    assert isinstance(caught.value.__cause__, ClientError)
    # The records after the failure were still handled.
    assert len(aws.job_names()) == 1
    assert aws.keys(OUTPUT_BUCKET) == ["errors/batch/notes.txt.json"]
    # An unexpected error is retried by Lambda, not turned into an error record.
    assert "errors/batch/first take.mp3.json" not in aws.keys(OUTPUT_BUCKET)


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
