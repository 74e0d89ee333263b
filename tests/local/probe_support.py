"""The probe runtime the runtime-machinery tests share, and how they read what the probes received."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus

import pytest

from infra.pipeline import BucketRole, Handler, routes
from local.runtime import LocalRuntime, load_config
from tests.local.runtime_support import s3_records, write_probe_lambdas


def probe_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """A runtime whose handlers are probes; no model is deployed (the endpoint answers "not found")."""
    lambdas = write_probe_lambdas(tmp_path_factory.mktemp("lambdas"))
    # A failed message is received again at once (retry_delay_s=0): the redrive tests need not wait.
    runtime = LocalRuntime(
        load_config(),
        None,
        lambdas_dir=lambdas,
        log_dir=tmp_path_factory.mktemp("logs"),
        retry_delay_s=0,
        sweep_interval_s=None,
    )
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


def probes(runtime: LocalRuntime, handler: Handler) -> list[dict[str, Any]]:
    s3 = runtime.aws.client("s3")
    bucket = runtime.bucket_names[BucketRole.OUTPUT]
    prefix = f"probe/{runtime.functions[handler].name}/"
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return [json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()) for item in listing]


def upload_bytes(runtime: LocalRuntime, key: str, data: bytes) -> None:
    runtime.aws.client("s3").put_object(Bucket=runtime.bucket_names[BucketRole.INPUT], Key=key, Body=data)


def events_for(runtime: LocalRuntime, handler: Handler, key: str) -> list[dict[str, Any]]:
    found = []
    for probe in probes(runtime, handler):
        if any(unquote_plus(record["s3"]["object"]["key"]) == key for record in s3_records(probe["event"])):
            found.append(probe)
    return found


def max_receive_count(runtime: LocalRuntime, handler: Handler) -> int:
    return next(route.queue.max_receive_count for route in routes(runtime.config) if route.handler is handler)


def dead_lettered_bodies(runtime: LocalRuntime, handler: Handler) -> list[dict[str, Any]]:
    sqs = runtime.aws.client("sqs")
    messages = sqs.receive_message(
        QueueUrl=runtime.aws.dead_letter_queues[handler], MaxNumberOfMessages=10, VisibilityTimeout=0
    ).get("Messages", [])
    return [json.loads(message["Body"]) for message in messages]
