"""One upload, one result, under every race: the issue's three scenarios and exhaustive interleavings.

Each test drives the real handler code (transcribe_trigger -> Transcribe stand-in -> invoke_sd, and for an
asynchronous endpoint -> SageMaker stand-in -> async_result) on moto S3, DynamoDB and Transcribe, and ends by
checking what a user would see in the output bucket. The interleavings run through both endpoint modes.
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import PipelineConfig
from infra.pipeline import Handler, handler_environment
from tests.lambdas.race_support import Pipeline, transient
from tests.lambdas.support import BUCKETS, LEDGER_TABLE, Aws

KEY = "notes/idea.mp3"


def make_pipeline(aws: Aws, mode: str) -> Pipeline:
    """The steps on moto, with injected clients, for a real-time or an asynchronous endpoint."""
    config = PipelineConfig(endpoint_mode=mode)
    return Pipeline(
        aws,
        trigger_env=handler_environment(Handler.TRANSCRIBE_TRIGGER, config, BUCKETS, LEDGER_TABLE),
        invoke_env=handler_environment(Handler.INVOKE_SD, config, BUCKETS, LEDGER_TABLE),
        result_env=handler_environment(Handler.ASYNC_RESULT, config, BUCKETS, LEDGER_TABLE),
    )


@pytest.fixture
def pipeline(aws: Aws) -> Pipeline:
    """The real-time path (the issue's scenarios; test_async_result.py has their asynchronous versions)."""
    return make_pipeline(aws, "realtime")


@pytest.fixture(params=["realtime", "async"])
def any_pipeline(aws: Aws, request: pytest.FixtureRequest) -> Pipeline:
    """The path through either endpoint mode."""
    return make_pipeline(aws, request.param)


def test_a_transient_error_of_an_older_upload_never_deletes_the_newer_image(pipeline: Pipeline) -> None:
    """Scenario 1: A's transcript event hits a 503 before any check; B's finished image set stays."""
    a = pipeline.upload(KEY)
    pipeline.trigger(a)
    b = pipeline.upload(KEY)
    pipeline.run(b)
    assert pipeline.result_of(KEY) == ("image", b.version_id)
    a_transcript = pipeline.transcribe(a)
    assert a_transcript is not None

    failed_once: list[int] = []

    def slow_down(index: int, service: str, operation: str) -> None:
        if not failed_once:
            failed_once.append(index)
            raise transient(operation)

    pipeline.calls.hook = slow_down
    with pytest.raises(Exception, match="reduce your request rate"):
        pipeline.invoke(a_transcript)
    assert pipeline.result_of(KEY) == ("image", b.version_id)
    # The queue's redelivery: now superseded, and still nothing of B's is touched.
    assert pipeline.invoke(a_transcript) == "superseded"
    assert pipeline.result_of(KEY) == ("image", b.version_id)


def test_a_re_upload_during_generation_wins_over_the_stale_image(pipeline: Pipeline) -> None:
    """Scenario 2: B is uploaded while A's image is being generated: A's image is never the key's result."""
    a = pipeline.upload(KEY)
    pipeline.trigger(a)
    a_transcript = pipeline.transcribe(a)
    assert a_transcript is not None
    uploads: dict[str, Any] = {}

    def re_upload(index: int, service: str, operation: str) -> None:
        if service == "sagemaker" and "b" not in uploads:
            uploads["b"] = pipeline.upload(KEY)
            pipeline.trigger(uploads["b"], wrapped=False)

    pipeline.calls.hook = re_upload
    assert pipeline.invoke(a_transcript) == "superseded"
    assert pipeline.result_of(KEY) == ("none", None)
    pipeline.calls.hook = None
    b = uploads["b"]
    b_transcript = pipeline.transcribe(b)
    assert b_transcript is not None
    assert pipeline.invoke(b_transcript) == "generated"
    assert pipeline.result_of(KEY) == ("image", b.version_id)


def test_re_uploading_earlier_bytes_is_a_new_upload(pipeline: Pipeline) -> None:
    """Scenario 3: A, B, then A's exact bytes again: the third upload gets its own job and the key's result."""
    first_bytes = b"ID3" + b"\x00" * 7 + b"\xff\xfb\x90\x64" * 300
    a = pipeline.upload(KEY, first_bytes)
    pipeline.run(a)
    b = pipeline.upload(KEY)
    pipeline.run(b)
    again = pipeline.upload(KEY, first_bytes)
    assert again.etag == a.etag and again.version_id != a.version_id
    assert pipeline.trigger(again) == "started"
    assert len({call["TranscriptionJobName"] for call in pipeline.aws.transcribe_calls}) == 3
    record = pipeline.transcribe(again)
    assert record is not None
    assert pipeline.invoke(record) == "generated"
    assert pipeline.result_of(KEY) == ("image", again.version_id)


def test_a_repeated_transcript_event_makes_no_second_gpu_call(pipeline: Pipeline) -> None:
    """At-least-once delivery: the same event twice, and once while the first is still generating."""
    a = pipeline.upload(KEY)
    pipeline.trigger(a)
    assert pipeline.trigger(a) == "duplicate"
    record = pipeline.transcribe(a)
    assert record is not None
    nested: list[str] = []

    def deliver_again(index: int, service: str, operation: str) -> None:
        if service == "sagemaker" and not nested:
            nested.append(pipeline.invoke(record, wrapped=False))

    pipeline.calls.hook = deliver_again
    assert pipeline.invoke(record) == "generated"
    assert nested == ["duplicate"]
    pipeline.calls.hook = None
    assert pipeline.invoke(record) == "duplicate"
    assert pipeline.endpoint.generated == 1
    assert len(pipeline.aws.transcribe_calls) == 1


def _steps_of_one_upload(pipeline: Pipeline) -> int:
    """How many client calls one upload's whole path makes (the positions to inject at)."""
    a = pipeline.upload("calibration.mp3")
    pipeline.run(a)
    assert pipeline.result_of("calibration.mp3") == ("image", a.version_id)
    return pipeline.calls.count


# Counted by test_the_path_makes_the_expected_calls; fixed so that the parametrised ids stay stable. The
# asynchronous path has more calls: staging the request (2 puts), then async_result's reads and clean-up.
_POSITIONS = {"realtime": 14, "async": 22}
_CASES = [(mode, position) for mode, count in _POSITIONS.items() for position in range(count)]


@pytest.mark.parametrize("mode", list(_POSITIONS))
def test_the_path_makes_the_expected_calls(aws: Aws, mode: str) -> None:
    """The interleaving tests below cover every call of the path: this keeps their count honest."""
    pipeline = make_pipeline(aws, mode)
    assert _steps_of_one_upload(pipeline) == _POSITIONS[mode], pipeline.calls.log


@pytest.mark.parametrize(("mode", "position"), _CASES)
def test_a_re_upload_between_any_two_calls_ends_with_the_last_uploads_result(
    aws: Aws, mode: str, position: int
) -> None:
    """B is uploaded (and its event handled) just before call `position` of A's path: B's result wins."""
    pipeline = make_pipeline(aws, mode)
    a = pipeline.upload(KEY)
    uploads: dict[str, Any] = {}

    def re_upload(index: int, service: str, operation: str) -> None:
        if index == position and "b" not in uploads:
            uploads["b"] = pipeline.upload(KEY)
            pipeline.trigger(uploads["b"], wrapped=False)

    pipeline.calls.hook = re_upload
    pipeline.run(a)
    pipeline.calls.hook = None
    b = uploads["b"]
    record = pipeline.transcribe(b)
    assert record is not None
    pipeline.generate(record)
    assert pipeline.result_of(KEY) == ("image", b.version_id), pipeline.calls.log
    assert pipeline.endpoint.generated <= 2


@pytest.mark.parametrize(("mode", "position"), _CASES)
def test_a_transient_error_at_any_call_still_ends_with_the_uploads_result(aws: Aws, mode: str, position: int) -> None:
    """Call `position` of the path fails once with a 503; the retries end with the image, generated once or twice."""
    pipeline = make_pipeline(aws, mode)
    a = pipeline.upload(KEY)

    def fail_once(index: int, service: str, operation: str) -> None:
        if index == position:
            raise transient(operation)

    pipeline.calls.hook = fail_once
    pipeline.run(a)
    assert pipeline.result_of(KEY) == ("image", a.version_id), pipeline.calls.log
    # Only a failure after the image was made (while writing it) costs a second generation.
    assert 1 <= pipeline.endpoint.generated <= 2
    entry = pipeline.aws.dynamodb.get_item(TableName=LEDGER_TABLE, Key={"upload_key": {"S": KEY}}, ConsistentRead=True)[
        "Item"
    ]
    assert entry["stage"]["S"] == "done"
    assert "writer_token" not in entry and "pending" not in entry
    if pipeline.asynchronous:
        # A failure before the request was queued gives the lease back; no request is queued twice.
        assert len(pipeline.endpoint.submitted) == 1, pipeline.calls.log


@pytest.mark.parametrize(("mode", "position"), _CASES)
def test_a_whole_newer_upload_finishing_inside_any_call_still_wins(aws: Aws, mode: str, position: int) -> None:
    """B is uploaded and runs its whole path just before call `position` of A's path; B's result stays.

    When A holds the key's writer lock at that moment, B's commit cannot finish inside the call: like a
    queue, the test delivers B's transcript again after A's path has ended.
    """
    pipeline = make_pipeline(aws, mode)
    a = pipeline.upload(KEY)
    uploads: dict[str, Any] = {}

    def newer_upload_runs(index: int, service: str, operation: str) -> None:
        if index == position and "b" not in uploads:
            uploads["b"] = pipeline.upload(KEY)
            try:
                # One attempt: a queue redelivers a failed message only after its visibility timeout.
                pipeline.run(uploads["b"], wrapped=False, attempts=1)
            except Exception as error:  # the lock A holds: B's message would wait in its queue
                uploads["b-failed"] = error

    pipeline.calls.hook = newer_upload_runs
    pipeline.run(a)
    pipeline.calls.hook = None
    b = uploads["b"]
    if "b-failed" in uploads:
        pipeline.run(b, wrapped=False)
    assert pipeline.result_of(KEY) == ("image", b.version_id), pipeline.calls.log
    assert pipeline.endpoint.generated <= 3
