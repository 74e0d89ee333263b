"""pipeline_common's entry point and metrics: SQS batches with partial failures, plain S3 events, EMF lines."""

from __future__ import annotations

import json

import pytest

from pipeline_common.batch import RecordsFailedError
from pipeline_common.entry import handle_s3_event, is_sqs_batch
from pipeline_common.events import S3Record
from pipeline_common.metrics import Metrics
from tests.lambdas.support import FakeLambdaContext, load_event, sqs_batch


def test_sqs_batches_are_told_apart_from_s3_events() -> None:
    assert is_sqs_batch(sqs_batch(load_event("s3_put_space.json")))
    assert is_sqs_batch(load_event("sqs_s3_put_partial.json"))
    assert not is_sqs_batch(load_event("s3_put_space.json"))
    assert not is_sqs_batch({"Records": []})
    assert not is_sqs_batch([])


class Done:
    def __init__(self, key: str) -> None:
        self.key = key

    def as_dict(self) -> dict[str, str]:
        return {"key": self.key}


def fail_on_m4a(record: S3Record) -> Done:
    if record.key.endswith(".m4a"):
        raise RuntimeError("boom")
    return Done(record.key)


def test_sqs_batch_returns_the_failed_message_ids_and_the_other_results() -> None:
    multiple, space = load_event("s3_put_multiple.json"), load_event("s3_put_space.json")
    batch = sqs_batch(space, multiple, load_event("s3_test_event.json"))

    response = handle_s3_event(batch, FakeLambdaContext(), fail_on_m4a)

    # message-1 holds the failing .m4a record: the whole message is retried, its other records too.
    assert response == {
        "batchItemFailures": [{"itemIdentifier": "message-1"}],
        "results": [{"key": "notes/my idea.mp3"}],
    }


def test_sqs_batch_whose_every_message_fails_is_reported_not_raised() -> None:
    batch = sqs_batch(load_event("s3_put_space.json"))
    batch["Records"][0]["body"] = "not json"

    response = handle_s3_event(batch, FakeLambdaContext(), fail_on_m4a)

    assert response == {"batchItemFailures": [{"itemIdentifier": "message-0"}], "results": []}


def test_plain_s3_event_raises_after_processing_every_record() -> None:
    seen: list[str] = []

    def process(record: S3Record) -> Done:
        seen.append(record.key)
        return fail_on_m4a(record)

    with pytest.raises(RecordsFailedError, match="1 of 3 records failed"):
        handle_s3_event(load_event("s3_put_multiple.json"), FakeLambdaContext(), process)
    assert len(seen) == 3


def test_metrics_are_emf_lines_with_their_own_dimensions(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = Metrics("invoke_sd", "TestNamespace")
    capsys.readouterr()

    metrics.outcome("generated")
    metrics.error_record("no-speech")
    metrics.stage_seconds("generate", 1.23456)

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    summary = []
    for line in lines:
        (directive,) = line["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "TestNamespace"
        assert isinstance(line["_aws"]["Timestamp"], int)
        (dimensions,) = directive["Dimensions"]
        (metric,) = directive["Metrics"]
        summary.append(
            (metric["Name"], metric["Unit"], {name: line[name] for name in dimensions}, line[metric["Name"]])
        )
    assert summary == [
        ("Outcomes", "Count", {"Function": "invoke_sd", "Outcome": "generated"}, [1.0]),
        ("ErrorRecords", "Count", {"Code": "no-speech"}, [1.0]),
        ("StageSeconds", "Seconds", {"Stage": "generate"}, [1.235]),
    ]
