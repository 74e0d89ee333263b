"""transcribe_trigger's checks of an upload: name, size, content and settings, before any job starts."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline_common.events import EventError, parse_s3_event
from pipeline_common.ledger import DynamoLedger
from pipeline_common.settings import SettingsError
from tests.lambdas.support import (
    AUDIO_HEADERS,
    INPUT_BUCKET,
    LEDGER_TABLE,
    OUTPUT_BUCKET,
    Aws,
    Uploaded,
    audio_bytes,
    load_event,
    s3_event,
)
from transcribe_trigger.core import detect_container, upload_of

KEY = "notes/my idea.mp3"


def upload(aws: Aws, key: str, body: bytes) -> tuple[Uploaded, dict[str, Any]]:
    """Upload `body` to the input bucket; the upload and its S3 event."""
    uploaded = aws.upload(key, body)
    return uploaded, s3_event(INPUT_BUCKET, uploaded)


def error_record(aws: Aws, source_key: str) -> dict[str, Any]:
    return aws.read_json(OUTPUT_BUCKET, f"errors/{source_key}.json")


def outcomes(result: dict[str, Any]) -> list[str]:
    return [item["outcome"] for item in result["results"]]


@pytest.fixture
def s3_reads(aws: Aws) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every HeadObject and GetObject request made during the test."""
    seen: list[tuple[str, dict[str, Any]]] = []
    hooks = {"HeadObject": "before-parameter-build.s3.HeadObject", "GetObject": "before-parameter-build.s3.GetObject"}
    for name, hook in hooks.items():
        aws.s3.meta.events.register(hook, lambda params, _n=name, **_: seen.append((_n, dict(params))), unique_id=name)
    yield seen
    for name, hook in hooks.items():
        aws.s3.meta.events.unregister(hook, unique_id=name)


def test_every_read_names_the_event_s_version(
    trigger: Any, aws: Aws, lambda_context: Any, s3_reads: list[tuple[str, dict[str, Any]]]
) -> None:
    uploaded, event = upload(aws, KEY, audio_bytes("mp3"))
    del event["Records"][0]["s3"]["object"]["size"]  # the size then comes from HeadObject

    assert outcomes(trigger.handler(event, lambda_context)) == ["started"]

    assert [(name, params["VersionId"]) for name, params in s3_reads] == [
        ("HeadObject", uploaded.version_id),
        ("GetObject", uploaded.version_id),
    ]
    # Only the first 64 bytes are read: a 500 MB upload costs no more to check than a small one.
    assert s3_reads[1][1]["Range"] == "bytes=0-63"
    assert "IfMatch" not in s3_reads[1][1]


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
    _, event = upload(aws, key, body)

    result = trigger.handler(event, lambda_context)

    assert outcomes(result) == ["rejected"]
    assert result["results"][0]["error_key"] == f"errors/{key}.json"
    assert aws.transcribe_calls == []
    record = error_record(aws, key)
    assert record["status"] == "error"
    assert record["source"] == {"bucket": INPUT_BUCKET, "key": key}
    assert record["stage"] == "validate"
    assert record["error"] == error
    assert record["reason"]
    assert action_hint in record["action"]
    assert record["request_id"] == lambda_context.aws_request_id
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", record["time"])
    # The upload itself is left exactly as it was, and the ledger holds its result.
    assert aws.s3.get_object(Bucket=INPUT_BUCKET, Key=key)["Body"].read() == body
    entry = DynamoLedger(aws.dynamodb, LEDGER_TABLE).get(key)
    assert entry is not None and entry.stage == "failed"
    assert entry.result == {"kind": "error", "key": f"errors/{key}.json", "code": error, "stage": "validate"}


def test_too_large_upload_gets_an_error_record(
    trigger: Any, aws: Aws, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_MEDIA_BYTES", "2048")
    trigger.SETTINGS.reset()
    _, event = upload(aws, "notes/long talk.mp3", audio_bytes("mp3", 2049))

    trigger.handler(event, lambda_context)

    record = error_record(aws, "notes/long talk.mp3")
    assert record["error"] == "too-large"
    assert record["details"] == {"size": 2049, "max_media_bytes": 2048}
    assert aws.transcribe_calls == []


def test_key_too_long_for_a_transcript_gets_an_error_record(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    key = "録音" * 150 + ".mp3"  # 904 bytes: a valid S3 key, 2700+ characters once escaped
    trigger.handler(upload(aws, key, audio_bytes("mp3"))[1], lambda_context)

    assert error_record(aws, key)["error"] == "key-too-long"
    assert aws.transcribe_calls == []


def test_key_at_the_s3_limit_still_gets_an_error_record(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    key = "n" * 1016 + ".mp3"  # 1020 bytes: "errors/" + key + ".json" would exceed S3's 1024
    trigger.handler(upload(aws, key, audio_bytes("mp3"))[1], lambda_context)

    (record_key,) = aws.keys(OUTPUT_BUCKET)
    assert record_key.startswith("errors/nnn") and len(record_key) <= 1024
    record = aws.read_json(OUTPUT_BUCKET, record_key)
    assert (record["error"], record["source"]["key"]) == ("key-too-long", key)


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
    trigger.handler(upload(aws, key, audio_bytes(container))[1], lambda_context)

    assert [call["MediaFormat"] for call in aws.transcribe_calls] == [media_format]


def test_content_in_a_format_that_is_not_enabled_is_refused(
    trigger: Any, aws: Aws, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIA_FORMATS", "mp3,m4a")
    trigger.SETTINGS.reset()

    trigger.handler(upload(aws, "notes/renamed.mp3", audio_bytes("flac"))[1], lambda_context)

    record = error_record(aws, "notes/renamed.mp3")
    assert (record["error"], record["details"]["container"]) == ("unsupported-format", "flac")
    assert aws.transcribe_calls == []


def test_automatic_language_identification(
    trigger: Any, aws: Aws, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANGUAGE_CODE", "auto")
    monkeypatch.setenv("LANGUAGE_OPTIONS", "en-US,de-DE,fr-FR")
    trigger.SETTINGS.reset()

    trigger.handler(upload(aws, "notes/hallo.mp3", audio_bytes("mp3"))[1], lambda_context)

    (call,) = aws.transcribe_calls
    assert call["IdentifyLanguage"] is True
    assert call["LanguageOptions"] == ["en-US", "de-DE", "fr-FR"]
    assert "LanguageCode" not in call


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"LANGUAGE_CODE": "auto", "LANGUAGE_OPTIONS": "en-US"}, "LANGUAGE_OPTIONS"),
        ({"TRANSCRIPT_BUCKET": None}, "TRANSCRIPT_BUCKET"),
        ({"LEDGER_TABLE": None}, "LEDGER_TABLE"),
    ],
)
def test_bad_environment_is_named(
    trigger: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, changes: dict[str, str | None], name: str
) -> None:
    for variable, value in changes.items():
        if value is None:
            monkeypatch.delenv(variable)
        else:
            monkeypatch.setenv(variable, value)
    trigger.SETTINGS.reset()
    with pytest.raises(SettingsError, match=name):
        trigger.handler(load_event("s3_put_simple.json"), lambda_context)


def test_event_without_a_sequencer_fails_loudly(trigger: Any, aws: Aws, lambda_context: Any) -> None:
    # moto's S3 -> SQS notifications lack it (local mode adds it); S3 always sends one, and the ledger orders by it.
    batch = load_event("sqs_s3_put_partial.json")
    aws.upload("local/sqs delivered.wav", audio_bytes("wav"))

    result = trigger.handler(batch, lambda_context)

    assert result["batchItemFailures"] == [{"itemIdentifier": batch["Records"][1]["messageId"]}]
    assert aws.transcribe_calls == []
    assert aws.keys(OUTPUT_BUCKET) == []
    with pytest.raises(EventError, match="sequencer"):
        upload_of(parse_s3_event(json.loads(batch["Records"][1]["body"]))[0])


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
