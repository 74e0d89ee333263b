"""Fixtures for the Lambda handler tests: moto-backed AWS, handler environments, a LambdaContext."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from infra.config import ImageParameters, PipelineConfig
from infra.pipeline import Handler, handler_environment
from tests.lambdas.invoke_sd_support import PARAMETERS
from tests.lambdas.support import (
    BUCKETS,
    INPUT_BUCKET,
    LEDGER_TABLE,
    OUTPUT_BUCKET,
    REGION,
    TRANSCRIPT_BUCKET,
    Aws,
    FakeLambdaContext,
    create_ledger_table,
)


@pytest.fixture(autouse=True)
def _build_every_log_record(caplog: pytest.LogCaptureFixture) -> None:
    """Log the Lambda packages at DEBUG: an `extra=` key that LogRecord already has then fails a test."""
    for name in ("pipeline_common", "transcribe_trigger", "invoke_sd", "transcribe_failed", "sweeper", "async_result"):
        caplog.set_level(logging.DEBUG, logger=name)


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    """A LambdaContext stand-in."""
    return FakeLambdaContext()


@pytest.fixture(scope="module")
def _moto() -> Iterator[tuple[Any, Aws]]:
    """One moto mock per test module: clients take ~60 ms each to create, a backend reset ~1 ms.

    Module scope, not session scope: moto patches botocore for the whole process while active,
    which must not leak into other test folders (local mode talks to a real moto server).
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in [
            "AWS_PROFILE",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ENDPOINT_URL_TRANSCRIBE",
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
        ]:
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        mock = mock_aws()
        mock.start()
        try:
            state = Aws(
                s3=boto3.client("s3", region_name=REGION),
                transcribe=boto3.client("transcribe", region_name=REGION),
                dynamodb=boto3.client("dynamodb", region_name=REGION),
            )
            state.transcribe.meta.events.register(
                "before-parameter-build.transcribe.StartTranscriptionJob",
                lambda params, **_: state.transcribe_calls.append(dict(params)),
            )
            yield mock, state
        finally:
            mock.stop()


@pytest.fixture
def aws(_moto: tuple[Any, Aws]) -> Aws:
    """moto for S3 and Transcribe, emptied, with the three pipeline buckets; no real AWS is reachable."""
    mock, state = _moto
    mock.reset()
    state.transcribe_calls.clear()
    state.sequence = 0
    for bucket in (INPUT_BUCKET, TRANSCRIPT_BUCKET, OUTPUT_BUCKET):
        state.s3.create_bucket(Bucket=bucket)
    # As InfraStack: uploads and transcripts are versioned (an upload's identity is its version id).
    for bucket in (INPUT_BUCKET, TRANSCRIPT_BUCKET):
        state.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    create_ledger_table(state.dynamodb)
    return state


def _set_environment(monkeypatch: pytest.MonkeyPatch, handler: Handler, config: PipelineConfig) -> dict[str, str]:
    environment = handler_environment(handler, config, BUCKETS, LEDGER_TABLE)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return environment


@contextmanager
def _wired(
    module: Any, monkeypatch: pytest.MonkeyPatch, handler: Handler, config: PipelineConfig, **clients: Any
) -> Iterator[Any]:
    """A handler module with infra's environment for `config` and the given clients; reset afterwards."""
    _set_environment(monkeypatch, handler, config)
    module.SETTINGS.reset()
    module.CLIENTS.clear()
    module.CLIENTS.inject(**clients)
    try:
        yield module
    finally:
        module.SETTINGS.reset()
        module.CLIENTS.clear()


@pytest.fixture
def trigger(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The transcribe_trigger handler module with infra's environment and the moto clients."""
    from transcribe_trigger import handler

    with _wired(
        handler,
        monkeypatch,
        Handler.TRANSCRIBE_TRIGGER,
        PipelineConfig(),
        s3=aws.s3,
        transcribe=aws.transcribe,
        dynamodb=aws.dynamodb,
    ) as wired:
        yield wired


@pytest.fixture(scope="module")
def _sagemaker_client() -> Any:
    """A sagemaker-runtime client configured as in production (created once per module)."""
    from invoke_sd.handler import SAGEMAKER_RUNTIME_CONFIG

    return boto3.client(
        "sagemaker-runtime",
        region_name=REGION,
        config=SAGEMAKER_RUNTIME_CONFIG,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def sagemaker(aws: Aws, _sagemaker_client: Any) -> Iterator[tuple[Any, Stubber]]:
    """The sagemaker-runtime client with a Stubber active: no request leaves the process."""
    client = _sagemaker_client
    with Stubber(client) as stubber:
        yield client, stubber


@pytest.fixture
def invoke(aws: Aws, sagemaker: tuple[Any, Stubber], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The invoke_sd handler module with a real-time endpoint's environment, moto S3 and the stubbed endpoint client."""
    from invoke_sd import handler

    with _wired(
        handler,
        monkeypatch,
        Handler.INVOKE_SD,
        # imageParameters configured (cdk.json's default configures none): every one of them is sent.
        PipelineConfig(endpoint_mode="realtime", image=ImageParameters(**PARAMETERS)),
        s3=aws.s3,
        sagemaker_runtime=sagemaker[0],
        dynamodb=aws.dynamodb,
    ) as wired:
        yield wired


@pytest.fixture(scope="module")
def _transcribe_client() -> Any:
    """A Transcribe client for Stubber (created once per module); moto cannot make a job FAIL."""
    return boto3.client("transcribe", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def transcribe_stub(aws: Aws, _transcribe_client: Any) -> Iterator[tuple[Any, Stubber]]:
    """The Transcribe client with a Stubber active: no request leaves the process."""
    with Stubber(_transcribe_client) as stubber:
        yield _transcribe_client, stubber


@pytest.fixture
def failed(aws: Aws, transcribe_stub: tuple[Any, Stubber], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The transcribe_failed handler module with infra's environment, moto S3 and the stubbed Transcribe client."""
    from transcribe_failed import handler

    with _wired(
        handler,
        monkeypatch,
        Handler.TRANSCRIBE_FAILED,
        PipelineConfig(),
        s3=aws.s3,
        transcribe=transcribe_stub[0],
        dynamodb=aws.dynamodb,
    ) as wired:
        yield wired


@pytest.fixture
def sweeper(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The sweeper handler module with infra's environment and the moto clients."""
    from sweeper import handler

    with _wired(handler, monkeypatch, Handler.SWEEPER, PipelineConfig(), s3=aws.s3, dynamodb=aws.dynamodb) as wired:
        yield wired


@pytest.fixture
def async_result(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The async_result handler module with infra's (asynchronous) environment and the moto clients."""
    from async_result import handler

    with _wired(
        handler,
        monkeypatch,
        Handler.ASYNC_RESULT,
        PipelineConfig(endpoint_mode="async"),
        s3=aws.s3,
        dynamodb=aws.dynamodb,
    ) as wired:
        yield wired


@pytest.fixture
def invoke_async(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The invoke_sd handler module with infra's asynchronous-endpoint environment and a stand-in endpoint."""
    from invoke_sd import handler
    from tests.lambdas.race_support import FakeEndpoint

    with _wired(
        handler,
        monkeypatch,
        Handler.INVOKE_SD,
        PipelineConfig(endpoint_mode="async"),
        s3=aws.s3,
        sagemaker_runtime=FakeEndpoint(aws.s3),
        dynamodb=aws.dynamodb,
    ) as wired:
        yield wired
