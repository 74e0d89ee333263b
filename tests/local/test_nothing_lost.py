"""Nothing lost: every upload ends as exactly one final result, whatever fails in between.

The real handlers run against local mode's stand-ins, and `runtime.faults` makes a stand-in fail the way
its AWS service can: the endpoint down (503) and then back, a model error (500), an answer slower than
SageMaker's real-time limit, the recogniser crashing mid-job, a malformed transcript, an S3 write
failure. Events are also delivered twice and out of order. Each test checks the output bucket itself:
exactly one of the image set or `errors/<key>.json` per upload, and nothing left behind in a
dead-letter queue unless the test expects it there (and then replays it). Permanent failures become
error records at once; transient ones go back to the queue and, after the queue's maxReceiveCount, to
the dead-letter queue. Error records name the invocation (`request_id`) and never carry raw exception text.

The runtime runs once per endpoint mode, async (the default) and realtime; the async endpoint's own faults
are in test_async_faults.py. Tests marked `modes(...)` run only where their fault exists; the speech-side
tests run in async only.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.pipeline import IMAGE_PREFIX, JOB_NAME_PREFIX, BucketRole, Handler
from local.runtime import LocalRuntime
from local.wer import word_error_rate
from pipeline_common.keys import job_name
from tests.local.nothing_lost_support import (
    MAX_MEDIA_MB,
    SPEECH,
    UNDECODABLE,
    assert_error,
    assert_image,
    max_receive_count,
    outcomes,
    restore,
    result_stage,
    run_one,
    started_runtime,
)
from tests.local.runtime_support import AUDIO, MANIFEST

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["async", "realtime"])
def runtime(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """The whole local pipeline with the real handlers, started once per endpoint mode."""
    yield from started_runtime(request.param, tmp_path_factory)


@pytest.fixture(autouse=True)
def _no_faults_left(request: pytest.FixtureRequest, runtime: LocalRuntime) -> Iterator[None]:
    """Each test runs in its endpoint modes, and starts and ends with working stand-ins and empty dead-letter queues."""
    marker = request.node.get_closest_marker("modes")
    if marker is not None and runtime.config.endpoint_mode not in marker.args:
        pytest.skip(f"only with the {' or '.join(marker.args)} endpoint")
    yield
    restore(runtime)


# -- 4. faults ------------------------------------------------------------------------------------


def test_endpoint_down_then_back_is_retried_and_nothing_is_lost(runtime: LocalRuntime, tmp_path: Path) -> None:
    fault = runtime.faults.inject("endpoint", "unavailable", times=2)

    result = run_one(runtime, SPEECH, "outage/short.mp3", tmp_path)

    assert fault.fired == 2
    assert_image(runtime, result)
    invocations = runtime.traces.get(result.key).invocations_of(Handler.INVOKE_SD.value)
    assert [item.invocation.ok for item in invocations] == [True], "invoke_sd's own retries rode out the outage"
    if not runtime.config.is_async:
        assert result.metadata is not None and result.metadata["timings"]["endpoint_attempts"] == 3
    assert runtime.dead_letters(Handler.INVOKE_SD) == 0


@pytest.mark.modes("realtime")
def test_endpoint_500_until_fixed_ends_in_the_dead_letter_queue_and_replays(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    runtime.faults.inject("endpoint", "error", times=None, status=500)

    failed = run_one(runtime, SPEECH, "outage/model error.mp3", tmp_path)

    error = assert_error(runtime, failed, "generate", "endpoint-unavailable")
    assert "500" in error["reason"]
    assert "make replay" in error["action"] or "dead-letter" in error["action"]
    invocations = runtime.traces.get(failed.key).invocations_of(Handler.INVOKE_SD.value)
    receives = max_receive_count(runtime, Handler.INVOKE_SD)
    # A transient failure: the handler reports the message as failed, and the queue delivers it again.
    assert [len(item.invocation.result["batchItemFailures"]) for item in invocations] == [1] * receives
    assert runtime.dead_letters(Handler.INVOKE_SD) == 1

    runtime.faults.clear("endpoint")  # the cause is fixed
    [report] = runtime.replay_dead_letters(Handler.INVOKE_SD)
    assert runtime.wait_until_idle(timeout_s=120)

    assert len(report.replayed) == 1 and report.ok
    assert_image(runtime, runtime.collect(failed.key))
    assert runtime.dead_letters(Handler.INVOKE_SD) == 0


@pytest.mark.modes("realtime")
def test_an_endpoint_slower_than_the_realtime_limit_ends_as_a_timeout_error(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    runtime.endpoint.limit_s = 1.0  # SageMaker's 60 s, scaled down
    runtime.faults.inject("endpoint", "slow", times=None, seconds=2.0)

    result = run_one(runtime, SPEECH, "slow/too slow.mp3", tmp_path)

    error = assert_error(runtime, result, "generate", "endpoint-timeout")
    assert "timed out" in error["reason"]
    invocations = runtime.traces.get(result.key).invocations_of(Handler.INVOKE_SD.value)
    assert [item.invocation.ok for item in invocations] == [True], "a permanent failure is recorded, not retried"
    assert runtime.dead_letters(Handler.INVOKE_SD) == 0


@pytest.mark.modes("async")
def test_a_recogniser_crash_mid_job_is_survived(runtime: LocalRuntime, tmp_path: Path) -> None:
    restarts = runtime.engine.restarts
    runtime.faults.inject("transcriber", "crash", times=1)

    result = run_one(runtime, SPEECH, "crash/once.mp3", tmp_path)

    assert runtime.engine.restarts == restarts + 1
    assert_image(runtime, result)
    assert word_error_rate(MANIFEST["speech"]["red-apple.mp3"]["text"], result.transcript or "") <= 0.1


@pytest.mark.modes("async")
def test_a_recogniser_that_keeps_crashing_fails_the_job_with_a_clear_error(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    runtime.faults.inject("transcriber", "crash", times=2)

    result = run_one(runtime, SPEECH, "crash/twice.mp3", tmp_path)

    error = assert_error(runtime, result, "transcribe", "transcription-failed")
    assert "crashed" in error["reason"]
    assert outcomes(runtime.traces.get(result.key), Handler.TRANSCRIBE_FAILED) == ["recorded"]
    # The engine started a fresh recogniser: the next upload is transcribed.
    assert_image(runtime, run_one(runtime, SPEECH, "crash/after.mp3", tmp_path))


@pytest.mark.modes("async")
def test_a_failed_transcription_job_ends_as_an_error_record(runtime: LocalRuntime, tmp_path: Path) -> None:
    result = run_one(runtime, UNDECODABLE, "broken/truncated.mp3", tmp_path)

    error = assert_error(runtime, result, "transcribe", "transcription-failed")
    assert "couldn't be decoded" in error["reason"]
    # The record names the failed job: the one named after this upload's key and version. (Derived from the
    # upload rather than read from the engine's job table, whose lookup once came back empty in a full run.)
    version = runtime.aws.client("s3").head_object(Bucket=runtime.aws.bucket_names[BucketRole.INPUT], Key=result.key)
    assert error["details"]["job_name"] == job_name(result.key, version["VersionId"], JOB_NAME_PREFIX)


@pytest.mark.modes("async")
def test_a_malformed_transcript_ends_as_an_error_record(runtime: LocalRuntime, tmp_path: Path) -> None:
    runtime.faults.inject("transcript", "malformed", times=1)

    result = run_one(runtime, SPEECH, "malformed/transcript.mp3", tmp_path)

    assert_error(runtime, result, "transcript", "transcript-unreadable")


def test_an_s3_write_failure_is_recorded_and_replayed_once_fixed(runtime: LocalRuntime, tmp_path: Path) -> None:
    key = "s3/write failure.mp3"
    output = runtime.bucket_names[BucketRole.OUTPUT]
    runtime.faults.inject("s3-put", "denied", times=None, bucket=output, prefix=f"{IMAGE_PREFIX}{key}")

    failed = run_one(runtime, SPEECH, key, tmp_path)

    error = assert_error(runtime, failed, "generate", "internal-error")
    # The error type, never the exception's own text: that stays in the function's log.
    assert "AccessDenied" in error["reason"] and "fault injected" not in json.dumps(error)
    assert "retried" in error["reason"]
    writer = result_stage(runtime)
    assert runtime.dead_letters(writer) == 1
    trace = runtime.traces.get(key)
    # Real-time: each receive calls the endpoint again; async: one generation, its notification is retried.
    generations = 1 if runtime.config.is_async else max_receive_count(runtime, Handler.INVOKE_SD)
    assert len(trace.endpoint_calls) == generations
    assert len(trace.invocations_of(writer.value)) == max_receive_count(runtime, writer)

    runtime.faults.clear("s3-put")
    runtime.replay_dead_letters(writer)
    assert runtime.wait_until_idle(timeout_s=120)

    assert_image(runtime, runtime.collect(key))


def test_the_same_events_delivered_twice_change_nothing(runtime: LocalRuntime, tmp_path: Path) -> None:
    first = run_one(runtime, SPEECH, "twice/delivered.mp3", tmp_path)
    assert_image(runtime, first)
    trace = runtime.traces.get(first.key)
    stages = (Handler.TRANSCRIBE_TRIGGER, Handler.INVOKE_SD, result_stage(runtime))
    events = {handler: trace.invocations_of(handler.value)[0].event for handler in stages}
    png = first.png

    for handler, event in events.items():
        runtime.deliver(handler, event)
    assert runtime.wait_until_idle(timeout_s=120)

    assert outcomes(trace, Handler.TRANSCRIBE_TRIGGER) == ["started", "duplicate"]
    if runtime.config.is_async:
        assert outcomes(trace, Handler.INVOKE_SD) == ["submitted", "duplicate"]
        assert outcomes(trace, Handler.ASYNC_RESULT) == ["generated", "duplicate"]
    else:
        assert outcomes(trace, Handler.INVOKE_SD) == ["generated", "duplicate"]
    assert len(trace.endpoint_calls) == 1, "a repeated event costs no second generation"
    again = runtime.collect(first.key)
    assert_image(runtime, again)
    assert again.png == png


def test_events_out_of_order_never_let_an_older_upload_win(runtime: LocalRuntime, tmp_path: Path) -> None:
    key = "order/same name.mp3"
    old = run_one(runtime, SPEECH, key, tmp_path)
    assert_image(runtime, old)
    old_trace = runtime.traces.get(key)
    stages = (Handler.TRANSCRIBE_TRIGGER, Handler.INVOKE_SD, result_stage(runtime))
    old_events = {handler: old_trace.invocations_of(handler.value)[0].event for handler in stages}
    new = run_one(runtime, AUDIO / "castle at sunset.mp3", key, tmp_path)
    assert_image(runtime, new)
    assert "castle" in (new.transcript or "")

    # The older upload's events arrive late: after the newer upload's result exists.
    for handler, event in old_events.items():
        runtime.deliver(handler, event)
    assert runtime.wait_until_idle(timeout_s=120)

    new_trace = runtime.traces.get(key)
    assert outcomes(new_trace, Handler.TRANSCRIBE_TRIGGER)[-1] == "superseded"
    assert outcomes(new_trace, Handler.INVOKE_SD)[-1] == "superseded"
    assert outcomes(new_trace, result_stage(runtime))[-1] == "superseded"
    latest = runtime.collect(key)
    assert_image(runtime, latest)
    assert latest.transcript == new.transcript and latest.png == new.png


def test_a_late_failure_of_an_older_job_does_not_replace_a_newer_image(runtime: LocalRuntime, tmp_path: Path) -> None:
    key = "order/failed then fixed.mp3"
    broken = run_one(runtime, UNDECODABLE, key, tmp_path)
    assert_error(runtime, broken, "transcribe", "transcription-failed")
    failure_event = runtime.traces.get(key).invocations_of(Handler.TRANSCRIBE_FAILED.value)[0].event
    fixed = run_one(runtime, SPEECH, key, tmp_path)
    assert_image(runtime, fixed)

    runtime.deliver(Handler.TRANSCRIBE_FAILED, failure_event)
    assert runtime.wait_until_idle(timeout_s=120)

    assert outcomes(runtime.traces.get(key), Handler.TRANSCRIBE_FAILED)[-1] == "superseded"
    assert_image(runtime, runtime.collect(key))


# -- 5. bad input ---------------------------------------------------------------------------------


@pytest.mark.modes("async")
@pytest.mark.parametrize(
    ("fixture", "stage", "code"),
    [
        ("empty.mp3", "validate", "empty-file"),
        ("not-audio.mp3", "validate", "not-audio"),
        ("readme.txt", "validate", "unsupported-format"),
        ("silence.mp3", "transcript", "no-speech"),
        ("noise.mp3", "transcript", "no-speech"),
        ("noise-bursts.mp3", "transcript", "no-speech"),
    ],
)
def test_bad_input_ends_as_a_clear_error_and_the_upload_stays(
    runtime: LocalRuntime, tmp_path: Path, fixture: str, stage: str, code: str
) -> None:
    key = f"bad/{fixture}"
    result = run_one(runtime, AUDIO / fixture, key, tmp_path)

    error = assert_error(runtime, result, stage, code)
    if code == "no-speech":
        assert "no speech detected" in error["reason"]
    s3 = runtime.aws.client("s3")
    kept = s3.head_object(Bucket=runtime.bucket_names[BucketRole.INPUT], Key=key)
    assert kept["ContentLength"] == (AUDIO / fixture).stat().st_size, "the upload is never deleted"


@pytest.mark.modes("async")
def test_a_file_over_the_size_limit_is_refused_before_transcription(runtime: LocalRuntime, tmp_path: Path) -> None:
    big = tmp_path / "big.mp3"
    data = SPEECH.read_bytes()
    big.write_bytes(data * (int(1.2 * 2**20) // len(data) + 1))

    result = run_one(runtime, big, "bad/big.mp3", tmp_path)

    error = assert_error(runtime, result, "validate", "too-large")
    assert str(MAX_MEDIA_MB * 2**20) in error["reason"]
    assert result.job is None, "no Transcribe job was started"


@pytest.mark.modes("async")
def test_very_long_speech_is_truncated_with_a_notice(runtime: LocalRuntime, tmp_path: Path) -> None:
    result = run_one(runtime, AUDIO / "long-description.mp3", "long/description.mp3", tmp_path)

    assert_image(runtime, result)
    metadata = result.metadata or {}
    assert metadata["prompt_truncated"] is True
    assert metadata["notices"], "the metadata says the prompt was cut"
    assert "77" in metadata["notices"][0]
    assert metadata["notices"][0] in (result.html or b"").decode("utf-8")


@pytest.mark.parametrize(
    "key",
    [
        "my voice note.mp3",
        "a+b plus sign.mp3",
        "café ünïcödé 日本.mp3",
        "deep/er/and/deeper/prefix/note.mp3",
        "mixed Case.MP3",
    ],
)
def test_awkward_keys_end_as_images_under_their_own_names(runtime: LocalRuntime, tmp_path: Path, key: str) -> None:
    result = run_one(runtime, SPEECH, f"keys/{key}", tmp_path)

    assert_image(runtime, result)
    assert (result.metadata or {})["source"]["key"] == f"keys/{key}"


@pytest.mark.modes("realtime")
def test_the_cli_reports_notices_and_dead_letters(runtime: LocalRuntime, tmp_path: Path) -> None:
    from tests.local.test_e2e import run_cli

    runtime.faults.inject("endpoint", "error", times=None, status=500)
    long_copy = tmp_path / "long talk.mp3"
    shutil.copyfile(AUDIO / "long-description.mp3", long_copy)
    code, report = run_cli(runtime, tmp_path / "out", SPEECH)
    runtime.faults.clear()
    code_long, report_long = run_cli(runtime, tmp_path / "out", long_copy)

    assert code == 1
    assert report["dead_letters"][Handler.INVOKE_SD.value] == 1
    assert report["files"][0]["error"]["error"] == "endpoint-unavailable"
    assert code_long == 0
    assert report_long["files"][0]["notices"], json.dumps(report_long)
