"""What the nothing-lost tests share: a whole local pipeline per endpoint mode, and checks of one upload's result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from infra.pipeline import ASYNC_RESULT_QUEUE, ERROR_PREFIX, IMAGE_PREFIX, BucketRole, Handler, routes
from local.runtime import LocalRuntime, UploadResult, load_config, local_config, tiny_model
from tests.local.runtime_support import AUDIO

IMAGE_SIZE = 64
STEPS = 2
# Small enough to test the size limit with a 1.2 MB file; every fixture is far below it.
MAX_MEDIA_MB = 1
SPEECH = AUDIO / "red-apple.mp3"
# An ID3 header passes transcribe_trigger's container sniffing; the decoder then finds no audio.
UNDECODABLE = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 8


def started_runtime(endpoint_mode: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """The whole local pipeline with the real handlers, small images, a 1 MB upload limit; stopped afterwards."""
    model = tiny_model()
    config = replace(
        local_config(load_config(), model, size=IMAGE_SIZE, steps=STEPS),
        max_media_mb=MAX_MEDIA_MB,
        endpoint_mode=endpoint_mode,
    )
    runtime = LocalRuntime(config, model, log_dir=tmp_path_factory.mktemp("logs"), sweep_interval_s=None)
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


def restore(runtime: LocalRuntime) -> None:
    """Working stand-ins and empty dead-letter queues again, whatever a test injected or left behind."""
    runtime.faults.clear()
    if runtime.endpoint.async_endpoint is not None:
        runtime.endpoint.async_endpoint.release()
    runtime.endpoint.limit_s = 60.0
    runtime.wait_until_idle(timeout_s=120)
    for handler in Handler:
        runtime.replay_dead_letters(handler)  # drain whatever a failing test left
    runtime.wait_until_idle(timeout_s=120)


def results_for(runtime: LocalRuntime, key: str) -> dict[str, bool]:
    """Which final results the output bucket holds for an upload."""
    s3 = runtime.aws.client("s3")
    bucket = runtime.bucket_names[BucketRole.OUTPUT]
    stored = {
        item["Key"]
        for prefix in (f"{IMAGE_PREFIX}{key}", f"{ERROR_PREFIX}{key}")
        for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    }
    return {
        "image": {f"{IMAGE_PREFIX}{key}{suffix}" for suffix in (".png", ".json", ".html")} <= stored,
        "any_image_part": any(k.startswith(f"{IMAGE_PREFIX}{key}.") for k in stored),
        "error": f"{ERROR_PREFIX}{key}.json" in stored,
    }


def run_one(runtime: LocalRuntime, path: Path | bytes, key: str, tmp_path: Path) -> UploadResult:
    """Upload one recording (a file, or bytes) under `key`, wait for the pipeline to settle, collect it."""
    if isinstance(path, bytes):
        file = tmp_path / "upload.bin"
        file.write_bytes(path)
        path = file
    runtime.upload(path, key=key)
    assert runtime.wait_until_idle(timeout_s=300), "the pipeline did not settle"
    return runtime.collect(key)


def assert_image(runtime: LocalRuntime, result: UploadResult) -> None:
    """Exactly one final result, and it is the image set."""
    assert result.status == "image", result.error
    assert results_for(runtime, result.key) == {"image": True, "any_image_part": True, "error": False}


def assert_error(runtime: LocalRuntime, result: UploadResult, stage: str, code: str) -> dict[str, Any]:
    """Exactly one final result, and it is an error record the handlers wrote, with a reason and an action."""
    assert result.status == "error"
    assert result.error_origin == "output bucket", f"no handler recorded it: {result.error}"
    assert results_for(runtime, result.key) == {"image": False, "any_image_part": False, "error": True}
    error = result.error or {}
    assert (error["stage"], error["error"]) == (stage, code), error
    assert error["reason"] and error["action"]
    assert error["source"]["bucket"] == runtime.bucket_names[BucketRole.INPUT]
    assert error["source"]["key"] == result.key
    assert error.get("request_id"), "the record names the invocation that wrote it"
    assert "Traceback" not in json.dumps(error)
    return error


def max_receive_count(runtime: LocalRuntime, handler: Handler) -> int:
    """How often the handler's queue delivers a message before SQS moves it to the dead-letter queue."""
    if handler is Handler.ASYNC_RESULT:
        return ASYNC_RESULT_QUEUE.max_receive_count
    return next(route.queue.max_receive_count for route in routes(runtime.config) if route.handler is handler)


def result_stage(runtime: LocalRuntime) -> Handler:
    """The handler that writes an upload's image: invoke_sd (real-time), async_result (async)."""
    return Handler.ASYNC_RESULT if runtime.config.is_async else Handler.INVOKE_SD


def outcomes(result_or_trace: Any, handler: Handler) -> list[str]:
    """Every per-record outcome a handler reported for an upload, in order."""
    trace = result_or_trace
    return [outcome for item in trace.invocations_of(handler.value) for outcome in item.outcomes]
