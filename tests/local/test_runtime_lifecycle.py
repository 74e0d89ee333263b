"""Starting and stopping local mode: nothing left running, clear errors when it cannot start."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from infra.pipeline import BucketRole, Handler
from local.runtime import LocalRuntime, load_config
from tests.local.runtime_support import child_processes, local_threads, write_probe_lambdas


def test_stop_leaves_nothing_running(tmp_path: Path) -> None:
    before_env = {name: os.environ.get(name) for name in ("MOTO_ACCOUNT_ID", "AWS_ACCESS_KEY_ID", "AWS_REGION")}
    threads_before = local_threads()
    children_before = child_processes()
    lambdas = write_probe_lambdas(tmp_path / "lambdas")
    runtime = LocalRuntime(load_config(), None, lambdas_dir=lambdas, log_dir=tmp_path / "logs")
    runtime.start()
    try:
        processes = [function._process for function in runtime.functions.values()]
        host, port = urlparse(runtime.aws.endpoint_url).hostname, urlparse(runtime.aws.endpoint_url).port
        endpoint_port = urlparse(runtime.endpoint.url).port
        assert local_threads() != threads_before
        if Path("/proc/self/task").is_dir():
            assert len(child_processes() - children_before) >= 3, "two handler processes and the recogniser"
        started = time.perf_counter()
        runtime.stop()
        assert time.perf_counter() - started < 30, "stop() must not hang"
        assert local_threads() == threads_before
        assert child_processes() == children_before, "handler and recogniser processes must have ended"
        assert all(process is not None and process.poll() is not None for process in processes)
        for closed_port in (port, endpoint_port):
            with pytest.raises(OSError), socket.create_connection((host, closed_port), timeout=1):
                pass
        assert {name: os.environ.get(name) for name in before_env} == before_env
    finally:
        runtime.stop()  # idempotent: a second stop is harmless


def test_a_missing_handler_fails_start_clearly(tmp_path: Path) -> None:
    empty = tmp_path / "lambdas"
    empty.mkdir()
    children_before = child_processes()
    runtime = LocalRuntime(load_config(), None, lambdas_dir=empty, log_dir=tmp_path / "logs")
    with pytest.raises(RuntimeError, match=r"transcribe_trigger.*does not exist"):
        runtime.start()
    assert local_threads() == []
    assert child_processes() == children_before


def test_the_sweeper_runs_on_its_timer(tmp_path: Path) -> None:
    lambdas = write_probe_lambdas(tmp_path / "lambdas")
    runtime = LocalRuntime(load_config(), None, lambdas_dir=lambdas, log_dir=tmp_path / "logs", sweep_interval_s=0.2)
    runtime.start()
    try:
        s3 = runtime.aws.client("s3")
        bucket = runtime.bucket_names[BucketRole.OUTPUT]
        prefix = f"probe/{runtime.functions[Handler.SWEEPER].name}/"
        deadline = time.monotonic() + 30
        while len(s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])) < 2:
            assert time.monotonic() < deadline, "the sweeper did not run twice on its 0.2 s timer"
            time.sleep(0.1)
        [first, *_] = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        event = json.loads(s3.get_object(Bucket=bucket, Key=first["Key"])["Body"].read())["event"]
        assert (event["source"], event["detail-type"]) == ("aws.events", "Scheduled Event")
    finally:
        runtime.stop()
