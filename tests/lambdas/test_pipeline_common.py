"""pipeline_common: event parsing, the key layout of CONTRACTS.md, settings, batches, error records, metrics."""

from __future__ import annotations

import ast
import random
import re
import sys
from pathlib import Path

import pytest

from infra.config import TRANSCRIBE_MEDIA_FORMATS
from pipeline_common.batch import RecordsFailedError, process_each
from pipeline_common.clients import ClientCache
from pipeline_common.error_records import MAX_REASON_CHARS, build_error_record, redact
from pipeline_common.events import EventError, S3Record, parse_s3_event
from pipeline_common.keys import (
    KeyMappingError,
    error_key,
    escape_key,
    image_keys,
    job_name,
    source_key_from_transcript_key,
    transcript_key,
    unescape_key,
)
from pipeline_common.settings import (
    LazySettings,
    SettingsError,
    as_float,
    as_job_name_prefix,
    as_media_formats,
    require,
)
from tests.lambdas.support import INPUT_BUCKET, load_event

LAMBDAS = Path(__file__).resolve().parents[2] / "lambdas"
OUTPUT_KEY_RE = re.compile(r"^[a-zA-Z0-9\-_.!*'()/]{1,1024}$")
JOB_NAME_RE = re.compile(r"^[0-9a-zA-Z._-]+$")


@pytest.mark.parametrize(
    ("event_file", "expected_key"),
    [
        ("s3_put_simple.json", "recordings/hello.mp3"),
        ("s3_put_space.json", "notes/my idea.mp3"),
        ("s3_put_plus.json", "notes/C++ talk.wav"),
        ("s3_put_unicode.json", "notes/café 日本語.flac"),
        ("s3_put_deep_prefix.json", "users/42/2024/05/01/session-7/take 3.ogg"),
    ],
)
def test_event_keys_are_url_decoded(event_file: str, expected_key: str) -> None:
    (record,) = parse_s3_event(load_event(event_file))
    assert record.bucket == INPUT_BUCKET
    assert record.key == expected_key
    assert record.size == 4096
    assert record.etag and record.sequencer and record.version_id


def test_encoded_slash_is_decoded_too() -> None:
    event = load_event("s3_put_space.json")
    event["Records"][0]["s3"]["object"]["key"] = "notes%2Fmy+idea%21.mp3"
    assert parse_s3_event(event)[0].key == "notes/my idea!.mp3"


def test_every_record_of_an_event_is_returned_in_order() -> None:
    records = parse_s3_event(load_event("s3_put_multiple.json"))
    assert [record.key for record in records] == ["batch/first take.mp3", "batch/second+take.m4a", "batch/notes.txt"]


def test_s3_test_event_gives_no_records() -> None:
    assert parse_s3_event(load_event("s3_test_event.json")) == []


def test_sqs_wrapped_partial_records_are_tolerated() -> None:
    # moto's S3 -> SQS notifications: an s3:TestEvent first, then records without sequencer/userIdentity.
    records = parse_s3_event(load_event("sqs_s3_put_partial.json"))
    assert records == [
        S3Record(
            bucket=INPUT_BUCKET,
            key="local/sqs delivered.wav",
            size=4096,
            etag="9123456789abcdef0123456789abcdef",
            event_time="2024-05-01T12:00:00.000Z",
        )
    ]


def test_record_without_size_or_etag_is_kept() -> None:
    event = load_event("s3_put_space.json")
    del event["Records"][0]["s3"]["object"]["size"]
    del event["Records"][0]["s3"]["object"]["eTag"]
    (record,) = parse_s3_event(event)
    assert (record.key, record.size, record.etag) == ("notes/my idea.mp3", None, None)


def test_non_create_records_are_skipped() -> None:
    event = load_event("s3_put_multiple.json")
    event["Records"][1]["eventName"] = "ObjectRemoved:Delete"
    assert [record.key for record in parse_s3_event(event)] == ["batch/first take.mp3", "batch/notes.txt"]


@pytest.mark.parametrize(
    "event",
    [
        {"detail-type": "Object Created"},
        {"Records": [{"eventSource": "aws:sns", "Sns": {}}]},
        {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"}, "object": {}}}]},
        [],
    ],
)
def test_events_that_are_not_s3_notifications_fail_loudly(event: object) -> None:
    with pytest.raises(EventError):
        parse_s3_event(event)


TRICKY_KEYS = [
    "notes/my idea.mp3",
    "C++ talk.wav",
    "100% sure!.mp3",
    "!21.mp3",
    "!!!/!.json",
    "a//b/./../c.flac",
    "café/日本語/録音 1.m4a",
    "emoji 🎤🎧.ogg",
    "tab\tand\nnewline.mp3",
    "quotes \"double\" and 'single' (parens) *star*.mp3",
    "percent %20 plus + tilde ~ hash # amp & eq = q ? colon : semi ;.amr",
    "back\\slash.webm",
    "Ωmega-ä-ß-ç.mp4",
]


def _random_keys(count: int) -> list[str]:
    alphabet = "aZ09-_.!*'()/ +%~#&=?:;\\\"\t\x00\x7féßñ日本語🎤\u200b\ufeff"
    rng = random.Random(1234)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(count)]


def test_transcript_key_escaping_round_trips_and_is_transcribe_safe() -> None:
    keys = TRICKY_KEYS + _random_keys(2000)
    escaped = {key: escape_key(key) for key in keys}
    for key, value in escaped.items():
        assert unescape_key(value) == key
        output_key = transcript_key("transcripts/", key)
        assert OUTPUT_KEY_RE.match(output_key), output_key
        assert source_key_from_transcript_key("transcripts/", output_key) == key
    # Injective: no two keys share a transcript.
    assert len(set(escaped.values())) == len(escaped)


def test_escaping_matches_the_contract() -> None:
    assert escape_key("notes/my idea!.mp3") == "notes/my!20idea!21.mp3"
    assert escape_key("café") == "caf!C3!A9"
    assert transcript_key("transcripts/", "a b.mp3") == "transcripts/a!20b.mp3.json"


@pytest.mark.parametrize("bad", ["a b", "!2", "!zz", "!41", "!c3!a9", "!FF", "a%20b"])
def test_unescape_rejects_text_escape_key_cannot_produce(bad: str) -> None:
    with pytest.raises(KeyMappingError):
        unescape_key(bad)


def test_transcript_key_longer_than_transcribe_allows_is_refused() -> None:
    key = "日" * 300  # 900 bytes, a valid S3 key, but 2700 characters once escaped
    with pytest.raises(KeyMappingError, match="1024"):
        transcript_key("transcripts/", key)
    assert len(transcript_key("transcripts/", "a" * 1007)) == 1024


@pytest.mark.parametrize("key", ["notes/no-prefix.mp3.json", "transcripts/a.mp3.txt", "transcripts/.json"])
def test_keys_outside_the_transcript_layout_are_refused(key: str) -> None:
    with pytest.raises(KeyMappingError):
        source_key_from_transcript_key("transcripts/", key)


@pytest.mark.parametrize("prefix", ["s2i-", "", "a-much-longer.prefix_for-another-deployment-"])
def test_job_name_is_deterministic_valid_and_short_for_a_long_unicode_key(prefix: str) -> None:
    key = "notes/" + "the plan for café Zürich " * 36 + "日本.mp3"
    assert len(key) >= 900 and len(key.encode()) <= 1024
    name = job_name(key, "d41d8cd98f00b204e9800998ecf8427e", prefix)
    assert name == job_name(key, '"d41d8cd98f00b204e9800998ecf8427e"', prefix)  # HeadObject quotes the ETag
    assert JOB_NAME_RE.match(name) and len(name) == 200  # the stem is cut to fit, the hash kept whole
    assert name.startswith(prefix + "the_plan_for_caf")
    assert name != job_name(key, "0cc175b9c0f1b6a831c399e269772661", prefix)


def test_job_name_follows_the_contract() -> None:
    import hashlib

    digest = hashlib.sha256(b"notes/my idea.mp3\nabc").hexdigest()[:20]
    assert job_name("notes/my idea.mp3", "abc", "s2i-") == f"s2i-my_idea-{digest}"
    # Keys that sanitise to the same stem still get different names.
    assert job_name("a/take 1.mp3", "abc", "s2i-") != job_name("b/take 1.mp3", "abc", "s2i-")
    assert JOB_NAME_RE.match(job_name("日本語.mp3", "abc", "s2i-"))
    assert job_name("日本語.mp3", "abc", "s2i-").startswith("s2i-audio-")


@pytest.mark.parametrize("prefix", ["s2i/", "s2i ", "ü-", "x" * 179])
def test_job_name_prefix_that_cannot_start_a_job_name_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="job name prefix"):
        job_name("a.mp3", "abc", prefix)
    with pytest.raises(SettingsError, match="JOB_NAME_PREFIX"):
        as_job_name_prefix("JOB_NAME_PREFIX", prefix)
    assert len(job_name("a.mp3", "abc", "x" * 178)) <= 200


def test_output_keys_follow_the_contract() -> None:
    assert tuple(image_keys("images/", "notes/my idea.mp3")) == (
        "images/notes/my idea.mp3.png",
        "images/notes/my idea.mp3.json",
        "images/notes/my idea.mp3.html",
    )
    assert error_key("errors/", "notes/my idea.mp3") == "errors/notes/my idea.mp3.json"
    # Near S3's limit the record key is shortened but stays unique and valid.
    long_keys = ["a" * 1020, "a" * 1019 + "b", "é" * 511]
    records = [error_key("errors/", key) for key in long_keys]
    assert len(set(records)) == 3
    for record in records:
        assert record.startswith("errors/") and record.endswith(".json")
        assert len(record.encode("utf-8")) <= 1024


def test_error_record_has_the_contract_fields() -> None:
    record = build_error_record(
        source_bucket="in",
        source_key="k.mp3",
        stage="validate",
        error="empty-file",
        reason="r",
        action="a",
        request_id="req-1",
        now=lambda: "2024-05-01T12:00:00.000Z",
    )
    assert record == {
        "status": "error",
        "source": {"bucket": "in", "key": "k.mp3"},
        "stage": "validate",
        "error": "empty-file",
        "reason": "r",
        "action": "a",
        "time": "2024-05-01T12:00:00.000Z",
        "request_id": "req-1",
        "details": {},
    }
    with pytest.raises(ValueError, match="stage"):
        build_error_record(source_bucket="in", source_key="k", stage="upload", error="e", reason="r", action="a")


def test_missing_variable_is_named() -> None:
    with pytest.raises(SettingsError, match="OUTPUT_BUCKET"):
        require({"OUTPUT_BUCKET": "  "}, "OUTPUT_BUCKET")


def test_lazy_settings_read_the_environment_once_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    monkeypatch.setenv("STI_TEST_VALUE", "first")
    settings = LazySettings(lambda environ: reads.append(environ["STI_TEST_VALUE"]) or environ["STI_TEST_VALUE"])
    assert reads == []
    monkeypatch.setenv("STI_TEST_VALUE", "second")
    assert settings.get() == "second"
    monkeypatch.setenv("STI_TEST_VALUE", "third")
    assert settings.get() == "second"
    assert reads == ["second"]


def test_client_cache_creates_each_client_once_and_only_when_asked() -> None:
    made: list[str] = []
    cache = ClientCache(s3=lambda: made.append("s3") or object())
    assert made == []
    assert cache.get("s3") is cache.get("s3")
    assert made == ["s3"]
    with pytest.raises(KeyError):
        cache.inject(sqs=object())


def test_one_failing_record_does_not_stop_the_others() -> None:
    records = parse_s3_event(load_event("s3_put_multiple.json"))
    seen: list[str] = []

    def process(record: S3Record) -> str:
        seen.append(record.key)
        if record.key.endswith(".m4a"):
            raise RuntimeError("boom")
        return record.key

    with pytest.raises(RecordsFailedError) as caught:
        process_each(records, process)
    assert seen == [record.key for record in records]
    assert "1 of 3 records failed" in str(caught.value)
    assert "batch/second+take.m4a: RuntimeError: boom" in str(caught.value)


def test_media_formats_match_infra() -> None:
    from pipeline_common.settings import TRANSCRIBE_MEDIA_FORMATS as LAMBDA_FORMATS

    assert LAMBDA_FORMATS == TRANSCRIBE_MEDIA_FORMATS


def test_media_formats_setting_is_checked() -> None:
    assert as_media_formats("MEDIA_FORMATS", "mp3, .WAV,,flac") == ("mp3", "wav", "flac")
    for bad in ("mp3,aiff", " , "):
        with pytest.raises(SettingsError, match="MEDIA_FORMATS"):
            as_media_formats("MEDIA_FORMATS", bad)


@pytest.mark.parametrize(("value", "expected"), [("0.2", 0.2), ("0", 0.0), ("1", 1.0)])
def test_float_setting_in_range(value: str, expected: float) -> None:
    assert as_float("MIN_TRANSCRIPT_CONFIDENCE", value, minimum=0.0, maximum=1.0) == expected


@pytest.mark.parametrize("value", ["high", "1.5", "-0.1", "nan"])
def test_float_setting_out_of_range_is_named(value: str) -> None:
    with pytest.raises(SettingsError, match="MIN_TRANSCRIPT_CONFIDENCE"):
        as_float("MIN_TRANSCRIPT_CONFIDENCE", value, minimum=0.0, maximum=1.0)


def test_lambda_code_imports_only_stdlib_boto3_powertools_and_pipeline_common() -> None:
    # What the Lambda runtime (boto3) and the Powertools layer provide: the asset is the lambdas/ folder alone.
    allowed = set(sys.stdlib_module_names) | {"boto3", "botocore", "aws_lambda_powertools", "pipeline_common"}
    for path in LAMBDAS.rglob("*.py"):
        package = path.relative_to(LAMBDAS).parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in allowed | {package}, f"{path}: imports {name}"


def test_error_record_reason_hides_arns_and_account_ids() -> None:
    reason = (
        "User: arn:aws:sts::123456789012:assumed-role/Trigger-Role/fn is not authorized to perform: "
        "sagemaker:InvokeEndpoint on resource: arn:aws-cn:sagemaker:cn-north-1:123456789012:endpoint/sd "
        "(account 210987654321)"
    )
    record = build_error_record(
        source_bucket="in", source_key="k.mp3", stage="generate", error="endpoint-error", reason=reason, action="a"
    )
    assert record["reason"] == (
        "User: <arn> is not authorized to perform: sagemaker:InvokeEndpoint on resource: <arn> (account <account>)"
    )
    # Longer numbers (timestamps, sizes) are no account ids.
    assert redact("took 1714564800000 ms for 4096 bytes") == "took 1714564800000 ms for 4096 bytes"


def test_error_record_reason_is_cut_to_a_readable_length() -> None:
    reason = redact("x" * 5000)
    assert len(reason) == MAX_REASON_CHARS and reason.endswith("...")
    assert redact("short") == "short"


def test_s3_arns_are_redacted_too() -> None:
    assert "arn:" not in redact('not authorized to perform: s3:GetObject on resource: "arn:aws:s3:::private/key.mp3"')
