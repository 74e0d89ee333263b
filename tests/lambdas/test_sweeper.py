"""sweeper: an upload whose ledger stage has not moved for STUCK_AFTER_MINUTES gets a `stuck` error record."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline_common.error_records import ResultStore, utc_now
from pipeline_common.keys import job_name
from pipeline_common.ledger import GENERATING, RECEIVED, TRANSCRIBING, DynamoLedger, Entry, Upload, normalise_sequencer
from pipeline_common.metrics import Metrics
from pipeline_common.results import ImageSet, Results
from pipeline_common.settings import SettingsError
from sweeper.core import iso
from tests.lambdas.invoke_sd_support import NoEndpoint, put_transcript, run
from tests.lambdas.support import INPUT_BUCKET, JOB_PREFIX, LEDGER_TABLE, OUTPUT_BUCKET, Aws, FailingS3

STUCK_AFTER = timedelta(minutes=180)  # PipelineConfig's default stuck_after_minutes
KEY = "notes/my idea.mp3"


def ago(delta: timedelta) -> str:
    return iso(datetime.now(UTC) - delta)


def ledger(aws: Aws) -> DynamoLedger:
    return DynamoLedger(aws.dynamodb, LEDGER_TABLE)


def in_stage(aws: Aws, stage: str, since: str, key: str = KEY) -> Entry:
    """An upload that reached `stage` at `since` and has not moved since."""
    uploaded = aws.upload(key, b"ID3 audio")
    version = uploaded.version_id
    entry = ledger(aws).claim(Upload(key, version, normalise_sequencer(uploaded.sequencer)), since).entry
    if stage in (TRANSCRIBING, GENERATING):
        name = job_name(key, version, JOB_PREFIX)
        entry = ledger(aws).advance(key, version, to=TRANSCRIBING, expect=(RECEIVED,), now=since, job_name=name)
    if stage == GENERATING:
        # The invocation that took the lease crashed; its lease ran out long ago.
        before = time.time() - STUCK_AFTER.total_seconds()
        entry = ledger(aws).begin_generation(key, version, token="gone", until=before, now=since, clock=before)
    assert (entry.stage, entry.updated_at) == (stage, since)
    return entry


def results(aws: Aws) -> Results:
    store = ResultStore(aws.s3, INPUT_BUCKET, OUTPUT_BUCKET, "images/", "errors/")
    return Results(ledger(aws), store, function="test", metrics=Metrics("test"))


def sweep(sweeper: Any, lambda_context: Any) -> list[dict[str, Any]]:
    return sweeper.handler({"source": "aws.events", "detail-type": "Scheduled Event"}, lambda_context)["results"]


@pytest.mark.parametrize(
    ("stage", "record_stage", "what"),
    [
        (RECEIVED, "validate", "its transcription never started"),
        (TRANSCRIBING, "transcribe", "never delivered a transcript"),
        (GENERATING, "generate", "the image generation never finished"),
    ],
)
def test_upload_stuck_past_the_deadline_gets_a_stuck_record(
    sweeper: Any, aws: Aws, lambda_context: Any, stage: str, record_stage: str, what: str
) -> None:
    since = ago(STUCK_AFTER + timedelta(minutes=1))
    entry = in_stage(aws, stage, since)

    swept = sweep(sweeper, lambda_context)

    error_key = f"errors/{KEY}.json"
    assert swept == [{"key": KEY, "stage": stage, "outcome": "stuck", "error_key": error_key}]
    record = aws.read_json(OUTPUT_BUCKET, error_key)
    assert (record["stage"], record["error"], record["source"]["key"]) == (record_stage, "stuck", KEY)
    assert what in record["reason"] and "within 180 minutes" in record["reason"] and since in record["reason"]
    assert record["action"].startswith("upload the recording again")
    assert record["details"] == {"ledger_stage": stage, "since": since, "job_name": entry.job_name}
    assert record["request_id"] == lambda_context.aws_request_id
    after = ledger(aws).get(KEY)
    assert after is not None and after.stage == "failed" and after.result is not None
    assert after.result["code"] == "stuck"
    # Final: the pending index no longer lists it, so the next sweep leaves it alone.
    assert sweep(sweeper, lambda_context) == []


def test_fresh_upload_is_left_alone(sweeper: Any, aws: Aws, lambda_context: Any) -> None:
    before = in_stage(aws, TRANSCRIBING, ago(STUCK_AFTER - timedelta(minutes=5)))

    assert sweep(sweeper, lambda_context) == []

    assert aws.keys(OUTPUT_BUCKET) == []
    assert ledger(aws).get(KEY) == before


def test_only_uploads_past_the_deadline_are_recorded_oldest_first(sweeper: Any, aws: Aws, lambda_context: Any) -> None:
    in_stage(aws, TRANSCRIBING, ago(STUCK_AFTER + timedelta(hours=2)), key="b/older.mp3")
    in_stage(aws, RECEIVED, ago(STUCK_AFTER - timedelta(minutes=1)), key="c/fresh.mp3")
    in_stage(aws, GENERATING, ago(STUCK_AFTER + timedelta(hours=1)), key="a/newer.mp3")

    swept = sweep(sweeper, lambda_context)

    assert [(item["key"], item["outcome"]) for item in swept] == [("b/older.mp3", "stuck"), ("a/newer.mp3", "stuck")]
    assert aws.keys(OUTPUT_BUCKET) == ["errors/a/newer.mp3.json", "errors/b/older.mp3.json"]


def test_upload_with_a_result_is_never_touched(sweeper: Any, aws: Aws, lambda_context: Any) -> None:
    entry = in_stage(aws, GENERATING, ago(STUCK_AFTER + timedelta(days=1)))
    results(aws).commit_images(entry, ImageSet(png=b"png", html="<p>", metadata=b"{}"))
    # Even were its last change older than the deadline, a finished upload is no longer pending.
    aws.dynamodb.update_item(
        TableName=LEDGER_TABLE,
        Key={"upload_key": {"S": KEY}},
        UpdateExpression="SET updated_at = :old",
        ExpressionAttributeValues={":old": {"S": ago(timedelta(days=30))}},
    )
    images = aws.keys(OUTPUT_BUCKET)

    assert sweep(sweeper, lambda_context) == []

    assert aws.keys(OUTPUT_BUCKET) == images
    assert ledger(aws).get(KEY).stage == "done"  # type: ignore[union-attr]


def moved_on(aws: Aws, entry: Entry) -> None:
    """A late event moves the upload on: its transcript arrived and generation started."""
    ledger(aws).begin_generation(entry.key, entry.upload_id, token="late", until=4e9, now=utc_now(), clock=time.time())


def finished(aws: Aws, entry: Entry) -> None:
    """A late event gives the upload its image."""
    results(aws).commit_images(entry, ImageSet(png=b"png", html="<p>", metadata=b"{}"))


@pytest.mark.parametrize(("late", "outcome"), [(moved_on, "superseded"), (finished, "duplicate")])
def test_upload_that_moves_between_query_and_commit_is_skipped(
    sweeper: Any, aws: Aws, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, late: Any, outcome: str
) -> None:
    in_stage(aws, TRANSCRIBING, ago(STUCK_AFTER + timedelta(minutes=30)))
    query = DynamoLedger.pending_before

    def then_a_late_event(self: DynamoLedger, cutoff: str, **index: str) -> Iterator[Entry]:
        for entry in query(self, cutoff, **index):
            late(aws, entry)
            yield entry  # as the index returned it: older than the item now is

    monkeypatch.setattr(DynamoLedger, "pending_before", then_a_late_event)

    swept = sweep(sweeper, lambda_context)

    assert [(item["key"], item["outcome"], item["error_key"]) for item in swept] == [(KEY, outcome, None)]
    assert not any(key.startswith("errors/") for key in aws.keys(OUTPUT_BUCKET))
    assert ledger(aws).get(KEY).stage in ("generating", "done")  # type: ignore[union-attr]


def test_transcript_arriving_after_the_stuck_record_changes_nothing(
    sweeper: Any, aws: Aws, lambda_context: Any
) -> None:
    uploaded = aws.upload(KEY, b"ID3 audio")
    since = ago(STUCK_AFTER + timedelta(minutes=1))
    ledger(aws).claim(Upload(KEY, uploaded.version_id, normalise_sequencer(uploaded.sequencer)), since)
    name = job_name(KEY, uploaded.version_id, JOB_PREFIX)
    ledger(aws).advance(KEY, uploaded.version_id, to=TRANSCRIBING, expect=(RECEIVED,), now=since, job_name=name)
    sweep(sweeper, lambda_context)
    record = aws.read_json(OUTPUT_BUCKET, f"errors/{KEY}.json")
    endpoint = NoEndpoint()

    (result,) = run(aws, endpoint, put_transcript(aws, of=uploaded))

    # The user was told to upload again; a result appearing later would be a second one.
    assert (result.outcome, endpoint.calls) == ("duplicate", [])
    assert aws.read_json(OUTPUT_BUCKET, f"errors/{KEY}.json") == record


def test_deadline_comes_from_the_environment(
    sweeper: Any, aws: Aws, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUCK_AFTER_MINUTES", "15")
    sweeper.SETTINGS.reset()
    in_stage(aws, RECEIVED, ago(timedelta(minutes=16)))

    (swept,) = sweep(sweeper, lambda_context)

    assert swept["outcome"] == "stuck"
    assert "within 15 minutes" in aws.read_json(OUTPUT_BUCKET, f"errors/{KEY}.json")["reason"]


@pytest.mark.parametrize("value", [None, "0", "soon"])
def test_bad_deadline_is_named(
    sweeper: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("STUCK_AFTER_MINUTES")
    else:
        monkeypatch.setenv("STUCK_AFTER_MINUTES", value)
    sweeper.SETTINGS.reset()
    with pytest.raises(SettingsError, match="STUCK_AFTER_MINUTES"):
        sweep(sweeper, lambda_context)


def test_each_stuck_upload_is_an_emf_metric(
    sweeper: Any, aws: Aws, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    in_stage(aws, TRANSCRIBING, ago(STUCK_AFTER + timedelta(minutes=1)))
    capsys.readouterr()

    sweep(sweeper, lambda_context)

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    found = []
    for line in lines:
        (directive,) = line["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "SpeechToImage"
        (dimensions,) = directive["Dimensions"]
        (metric,) = directive["Metrics"]
        found.append((metric["Name"], {name: line[name] for name in dimensions}, line[metric["Name"]]))
    assert found == [
        ("ErrorRecords", {"Code": "stuck"}, [1.0]),
        ("Outcomes", {"Function": "sweeper", "Outcome": "stuck"}, [1.0]),
    ]


def test_one_upload_that_cannot_be_recorded_does_not_stop_the_sweep(
    sweeper: Any, aws: Aws, lambda_context: Any
) -> None:
    in_stage(aws, TRANSCRIBING, ago(STUCK_AFTER + timedelta(hours=2)), key="a/older.mp3")
    in_stage(aws, TRANSCRIBING, ago(STUCK_AFTER + timedelta(hours=1)), key="b/newer.mp3")
    # The older upload's record cannot be written (say a bucket policy refuses that prefix).
    sweeper.CLIENTS.inject(s3=FailingS3(aws.s3, "put_object", prefix="errors/a/"))

    # Whether the handler raises at the end is its choice; what matters is that the other upload was swept.
    with contextlib.suppress(Exception):
        sweep(sweeper, lambda_context)

    assert aws.keys(OUTPUT_BUCKET) == ["errors/b/newer.mp3.json"]
