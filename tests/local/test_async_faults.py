"""Nothing lost with the asynchronous endpoint's own faults: every upload still ends as exactly one result.

The local async endpoint fails the way SageMaker's can: a Failed notification, a duplicate or a test
notification, a re-upload while the request waits for the GPU, a missing or malformed output object, a
request that outlives its TTL (with a Failed notification, or silently, left to the sweeper).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.pipeline import Handler
from local.runtime import LocalRuntime
from tests.local.nothing_lost_support import (
    SPEECH,
    assert_error,
    assert_image,
    outcomes,
    restore,
    results_for,
    run_one,
    started_runtime,
)
from tests.local.runtime_support import AUDIO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """The whole local pipeline with the asynchronous endpoint, started once for this module."""
    yield from started_runtime("async", tmp_path_factory)


@pytest.fixture(autouse=True)
def _no_faults_left(runtime: LocalRuntime) -> Iterator[None]:
    """Each test starts and ends with working stand-ins and empty dead-letter queues."""
    yield
    restore(runtime)


def wait_for_backlog(runtime: LocalRuntime, count: int, timeout_s: float = 120) -> None:
    """Wait until `count` requests wait in the (held) async endpoint's queue."""
    assert runtime.endpoint.async_endpoint is not None
    deadline = time.monotonic() + timeout_s
    while runtime.endpoint.async_endpoint.backlog < count:
        assert time.monotonic() < deadline, f"{count} request(s) never reached the endpoint's queue"
        time.sleep(0.05)


def test_a_failed_notification_ends_as_the_models_rejection(runtime: LocalRuntime, tmp_path: Path) -> None:
    fault = runtime.faults.inject("async", "error", status=400)

    result = run_one(runtime, SPEECH, "async/rejected.mp3", tmp_path)

    assert fault.fired == 1
    error = assert_error(runtime, result, "generate", "endpoint-rejected")
    assert "fault injected by local mode" in error["reason"], "the model's own words, unwrapped"
    assert "imageParameters" in error["action"]
    assert outcomes(runtime.traces.get(result.key), Handler.ASYNC_RESULT) == ["rejected"]
    assert runtime.dead_letters(Handler.ASYNC_RESULT) == 0


def test_a_duplicate_notification_changes_nothing(runtime: LocalRuntime, tmp_path: Path) -> None:
    runtime.faults.inject("async", "duplicate-notification")

    result = run_one(runtime, SPEECH, "async/twice notified.mp3", tmp_path)

    assert_image(runtime, result)
    trace = runtime.traces.get(result.key)
    assert sorted(outcomes(trace, Handler.ASYNC_RESULT)) == ["duplicate", "generated"]
    assert len(trace.endpoint_calls) == 1
    assert runtime.dead_letters(Handler.ASYNC_RESULT) == 0


def test_a_notification_for_a_superseded_upload_writes_nothing(runtime: LocalRuntime, tmp_path: Path) -> None:
    key = "async/uploaded again while waiting.mp3"
    assert runtime.endpoint.async_endpoint is not None
    runtime.endpoint.async_endpoint.hold()  # the GPU is busy: requests wait in the endpoint's queue
    runtime.upload(SPEECH, key=key)
    wait_for_backlog(runtime, 1)
    runtime.upload(AUDIO / "castle at sunset.mp3", key=key)
    wait_for_backlog(runtime, 2)
    runtime.endpoint.async_endpoint.release()
    assert runtime.wait_until_idle(timeout_s=300)

    result = runtime.collect(key)
    assert_image(runtime, result)
    assert "castle" in (result.transcript or ""), "the newer upload's image, whichever notification came first"
    trace = runtime.traces.get(key)
    assert sorted(outcomes(trace, Handler.ASYNC_RESULT)) == ["generated", "superseded"]
    assert len(trace.endpoint_calls) == 2, "SageMaker ran both requests: only the current one became the result"


@pytest.mark.parametrize("kind", ["missing-output", "malformed-output"])
def test_a_bad_output_object_ends_as_an_error_record(runtime: LocalRuntime, tmp_path: Path, kind: str) -> None:
    runtime.faults.inject("async", kind)

    result = run_one(runtime, SPEECH, f"async/{kind}.mp3", tmp_path)

    error = assert_error(runtime, result, "generate", "bad-endpoint-response")
    if kind == "missing-output":
        assert "does not exist" in error["reason"]
    assert runtime.dead_letters(Handler.ASYNC_RESULT) == 0, "a bad output is recorded, not retried"


def test_a_test_notification_is_ignored(runtime: LocalRuntime, tmp_path: Path) -> None:
    fault = runtime.faults.inject("async", "test-notification")

    result = run_one(runtime, SPEECH, "async/after a test notification.mp3", tmp_path)

    assert fault.fired == 1
    assert_image(runtime, result)
    assert runtime.dead_letters(Handler.ASYNC_RESULT) == 0, "the test message was handled, not retried"


def test_a_request_that_outlives_its_ttl_with_a_failed_notification_is_an_error(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    runtime.faults.inject("async", "expire", notify=True)

    result = run_one(runtime, SPEECH, "async/expired notified.mp3", tmp_path)

    error = assert_error(runtime, result, "generate", "endpoint-error")
    assert "expired" in error["reason"]
    assert "requestTtlMinutes" in error["action"]
    assert not runtime.traces.get(result.key).endpoint_calls, "an expired request never runs"


def test_a_request_that_expires_silently_waits_for_the_sweeper(runtime: LocalRuntime, tmp_path: Path) -> None:
    key = "async/expired silently.mp3"
    runtime.faults.inject("async", "expire", notify=False)

    result = run_one(runtime, SPEECH, key, tmp_path)

    # No notification: nothing is written, and the ledger holds the upload in "waiting" for the sweeper,
    # which records it as stuck after STUCK_AFTER_MINUTES (tests/lambdas covers that record).
    assert results_for(runtime, key) == {"image": False, "any_image_part": False, "error": False}
    assert result.error_origin == "local mode"
    item = runtime.ledger_item(key) or {}
    assert item.get("stage", {}).get("S") == "waiting", item
    assert runtime.dead_letters(Handler.ASYNC_RESULT) == 0
